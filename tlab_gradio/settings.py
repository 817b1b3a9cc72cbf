"""Settings read from the environment.

Read at call time, not import time, so tests and scripts can point the core at
another workspace by setting TLAB_HOME before they call it.
"""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
MANIFEST_DIR = REPO_DIR / "plugin_manifests"
SAMPLES_DIR = REPO_DIR / "samples"
TRAINERS_DIR = PACKAGE_DIR / "trainers"


def home() -> Path:
    """The workspace: job folders, the job database, the embedded model cache."""
    path = Path(os.environ.get("TLAB_HOME", "workspace")).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def manifest_dirs() -> list[Path]:
    """The plugin manifest folders: TLAB_MANIFEST_DIR, several separated by os.pathsep (e.g. ours and a
    Transformer Lab plugins folder); the first one's plugins win a uniqueId both have."""
    raw = os.environ.get("TLAB_MANIFEST_DIR", "")
    return [Path(p).expanduser() for p in raw.split(os.pathsep) if p.strip()] or [MANIFEST_DIR]


def stop_grace_seconds() -> float:
    """How long Stop waits after SIGTERM before it sends SIGKILL to the job's group."""
    return float(os.environ.get("TLAB_STOP_GRACE", "10"))


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def hosted() -> bool:
    """Hosted demo: no local-path inputs, no server paths shown (uploads only)."""
    return _flag("TLAB_HOSTED")


def auth() -> list[tuple[str, str]] | None:
    """TLAB_AUTH=user:pass[,user2:pass2] turns on the page's login."""
    raw = os.environ.get("TLAB_AUTH", "").strip()
    if not raw:
        return None
    pairs = []
    for item in raw.split(","):
        user, sep, password = item.strip().partition(":")
        if not sep or not user or not password:
            raise ValueError("TLAB_AUTH must be user:password (several separated by commas)")
        pairs.append((user, password))
    return pairs


def _positive(name: str, kind=int):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    value = kind(raw)
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {raw}")
    return value


def max_concurrent_jobs() -> int | None:
    """TLAB_MAX_CONCURRENT_JOBS: at most this many jobs run at once; the rest wait QUEUED."""
    return _positive("TLAB_MAX_CONCURRENT_JOBS")


def max_job_seconds() -> float | None:
    """TLAB_MAX_JOB_SECONDS: a job running longer is stopped, with that reason."""
    return _positive("TLAB_MAX_JOB_SECONDS", float)


def stall_seconds() -> float | None:
    """TLAB_STALL_SECONDS: a running job whose training step has not advanced for this long (progress.json and
    metrics.jsonl unchanged; before the first step, since it started) is FAILED as hung and all its processes
    ended. 0 turns the watchdog off. Default 1800 s: far longer than any real step or checkpoint save of a
    fine-tune (and than torch's default timeout for a collective over gloo), so only a hang trips it, and a hung
    job holding GPUs is ended within half an hour instead of never. Model loading counts: on a slow link, a first
    download of a very large model can need more."""
    raw = os.environ.get("TLAB_STALL_SECONDS", "").strip()
    value = float(raw) if raw else 1800.0
    if not value >= 0:  # NaN too
        raise ValueError(f"TLAB_STALL_SECONDS must be 0 (off) or positive, got {raw}")
    return value or None


def uploads_dir() -> Path:
    path = home() / "uploads"
    path.mkdir(parents=True, exist_ok=True)
    return path


def hosted_max_jobs_per_visitor() -> int:
    """TLAB_HOSTED_MAX_JOBS_PER_VISITOR (default 2): in hosted mode, how many unfinished jobs (queued, running or
    stopping) one visitor may have; a further Start is refused until one ends, so no visitor fills the queue."""
    return _positive("TLAB_HOSTED_MAX_JOBS_PER_VISITOR") or 2


def hosted_max_upload_mb() -> float:
    """TLAB_HOSTED_MAX_UPLOAD_MB (default 20): in hosted mode, the largest file a visitor may upload."""
    return _positive("TLAB_HOSTED_MAX_UPLOAD_MB", float) or 20.0


def hosted_max_running_per_visitor() -> int:
    """TLAB_HOSTED_MAX_RUNNING_PER_VISITOR (default 1): in hosted mode, how many of one visitor's jobs may run (or
    be stopping) at once; the scheduler leaves that visitor's other jobs QUEUED and starts other visitors' jobs
    before them, so no visitor takes every slot of the machine."""
    return _positive("TLAB_HOSTED_MAX_RUNNING_PER_VISITOR") or 1


def slurm() -> bool:
    """TLAB_SLURM: `1` hands jobs to a Slurm cluster on request (the form's Run on); `0` never; unset: on when
    `sbatch` is on PATH and a cluster is configured (SLURM_CONF, or /etc/slurm/slurm.conf). Off, the choice is not
    shown and every job runs on this machine, as before."""
    import shutil

    raw = os.environ.get("TLAB_SLURM", "").strip().lower()
    if raw in ("0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw:
        raise ValueError(f"TLAB_SLURM must be 1 or 0, got {raw!r}")
    configured = os.environ.get("SLURM_CONF") or Path("/etc/slurm/slurm.conf").is_file()
    return bool(configured) and shutil.which("sbatch") is not None


def slurm_workspace() -> Path | None:
    """TLAB_SLURM_WORKSPACE: a folder every node of the Slurm cluster mounts at this path; Slurm jobs' folders are
    written under it (jobs/<id>) and the nodes' processes write their logs, metrics and checkpoints there. None
    (unset): the app's workspace (TLAB_HOME), which must then be on a shared filesystem."""
    raw = os.environ.get("TLAB_SLURM_WORKSPACE", "").strip()
    return Path(raw).expanduser().resolve() if raw else None


def slurm_account() -> str | None:
    """TLAB_SLURM_ACCOUNT: passed to sbatch as --account."""
    return os.environ.get("TLAB_SLURM_ACCOUNT", "").strip() or None


def slurm_qos() -> str | None:
    """TLAB_SLURM_QOS: passed to sbatch as --qos."""
    return os.environ.get("TLAB_SLURM_QOS", "").strip() or None
