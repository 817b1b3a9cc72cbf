"""Turn a job into an `accelerate launch` command, start it in its own process group, stop it.

The command is an argv list (never a shell string). Every launch passes a config
file written into the job folder, so a user's own accelerate default config can
never override what the form says, and the stored command reruns the job by hand.
"""
from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from .gpus import Placement


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def mixed_precision_for(placement: Placement, requested: str | None) -> str:
    """`auto`: bf16 where every chosen GPU has it, fp16 on older GPUs, none on CPU."""
    requested = (requested or "auto").lower()
    if requested == "auto":
        if placement.device == "cpu":
            return "no"
        return "bf16" if all(g.supports_bf16 for g in placement.gpus) else "fp16"
    return requested


def accelerate_config(placement: Placement, mixed_precision: str, port: int) -> dict:
    multi = placement.num_processes > 1
    return {
        "compute_environment": "LOCAL_MACHINE",
        # Several CPU processes go through the multi-GPU launcher too: torch's elastic
        # launcher starts N ranks and the trainer (use_cpu=True) joins them over gloo.
        "distributed_type": "MULTI_GPU" if multi else "NO",
        "num_processes": placement.num_processes,
        "num_machines": 1,
        "machine_rank": 0,
        "gpu_ids": ",".join(placement.physical_ids) if placement.gpus else "all",
        "mixed_precision": mixed_precision,
        "use_cpu": placement.device == "cpu",
        "main_process_port": port,
        "rdzv_backend": "static",
        "same_network": True,
        "main_training_function": "main",
        "downcast_bf16": "no",
        "debug": False,
    }


def accelerate_executable(python: str | None = None) -> list[str]:
    """`accelerate` beside the interpreter when it is there (what a user types), else `python -m`."""
    python = python or sys.executable
    script = Path(python).parent / "accelerate"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script), "launch"]
    return [python, "-m", "accelerate.commands.launch"]


def build_argv(
    placement: Placement,
    trainer: Path,
    job_dir: Path,
    mixed_precision: str,
    port: int,
    python: str | None = None,
) -> list[str]:
    argv = accelerate_executable(python) + ["--config_file", str(job_dir / "accelerate.yaml")]
    if placement.num_processes > 1:
        argv.append("--multi_gpu")
    elif placement.device == "cpu":
        argv.append("--cpu")
    argv += ["--num_processes", str(placement.num_processes), "--num_machines", "1"]
    if placement.gpus:
        argv += ["--gpu_ids", ",".join(placement.physical_ids)]
    argv += ["--mixed_precision", mixed_precision, "--main_process_port", str(port)]
    argv += [str(trainer), "--job-dir", str(job_dir)]
    return argv


def write_launch_files(job_dir: Path, placement: Placement, mixed_precision: str, trainer: Path, python=None):
    """Write accelerate.yaml and command.txt; return the argv."""
    port = free_port()
    (job_dir / "accelerate.yaml").write_text(yaml.safe_dump(accelerate_config(placement, mixed_precision, port)))
    argv = build_argv(placement, trainer, job_dir, mixed_precision, port, python)
    (job_dir / "command.txt").write_text(shlex.join(argv) + "\n")
    return argv


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    env["PYTHONUNBUFFERED"] = "1"  # the log is tailed live
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # \r-redrawn bars make an unreadable log
    return env


def spawn(argv: list[str], job_dir: Path, log_path: Path) -> subprocess.Popen:
    """Start the job in a new session: its pid is its process group id, so Stop reaches every rank."""
    with open(log_path, "ab", buffering=0) as log:
        return subprocess.Popen(
            argv,
            cwd=job_dir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env(),
            start_new_session=True,
        )


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def terminate_group(pgid: int, grace: float) -> bool:
    """SIGTERM the whole group, SIGKILL what is left after `grace` seconds. True if it had to kill."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return False
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def kill_group(pgid: int) -> None:
    """Remove what is left of a group whose leader has ended (orphaned ranks)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
