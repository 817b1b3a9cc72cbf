"""Handing a job to a Slurm cluster: the batch script, `sbatch`, the job's state from `squeue`/`sacct`, `scancel`.

Every call is an argv list (never a shell string). The batch script is written into the job's folder (on the
workspace every node shares) and is the only shell involved: its lines are the app's own, every value in them
quoted (shlex), and what differs per node comes from Slurm's environment (SLURM_NODEID, SLURM_JOB_NODELIST,
SLURM_JOB_NUM_NODES). It runs one task per node with `srun`; each task runs the job's `accelerate launch` with its
machine rank, the first node as the main process and the GPUs Slurm gave it (CUDA_VISIBLE_DEVICES).

States: PENDING (and CONFIGURING, REQUEUED, ...) -> QUEUED; RUNNING, COMPLETING -> RUNNING; at the end sacct's
state and exit code: COMPLETED -> COMPLETE, CANCELLED -> STOPPED, FAILED, NODE_FAIL, TIMEOUT, OUT_OF_MEMORY, ...
-> FAILED with that state. `sacct -c` reads the job completion file (JobCompType=jobcomp/filetxt), so a cluster
without slurmdbd still reports finished jobs; with slurmdbd plain `sacct` is asked first.
"""
from __future__ import annotations

import shlex
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .job_spec import Launch
from .jobfiles import LOG
from .launcher import build_argv, child_env

SCRIPT = "slurm.sbatch"  # in the job folder
NODE_SCRIPT = "slurm-node.sh"  # what srun runs on each node
TIMEOUT = 20.0  # seconds a Slurm command may take (a busy slurmctld answers slowly, a dead one never)
PENDING = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SUSPENDED",
           "RESIZING", "SIGNALING", "STAGE_OUT"}
RUNNING = {"RUNNING", "COMPLETING", "STOPPED"}
# Slurm's end state -> ours
ENDS = {"COMPLETED": "COMPLETE", "CANCELLED": "STOPPED", "FAILED": "FAILED", "NODE_FAIL": "FAILED",
        "TIMEOUT": "FAILED", "OUT_OF_MEMORY": "FAILED", "BOOT_FAIL": "FAILED", "DEADLINE": "FAILED",
        "PREEMPTED": "FAILED", "REVOKED": "FAILED", "SPECIAL_EXIT": "FAILED"}
SAYS = {"NODE_FAIL": "a node of the job failed", "TIMEOUT": "it ran past its time limit",
        "OUT_OF_MEMORY": "a node ran out of memory", "BOOT_FAIL": "a node failed to boot",
        "DEADLINE": "it passed its deadline", "PREEMPTED": "it was preempted"}


class SlurmError(RuntimeError):
    pass


def _run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, env=env,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError as exc:
        raise SlurmError(f"{argv[0]} is not on PATH: is this machine a Slurm submit host?") from exc
    except subprocess.TimeoutExpired as exc:
        raise SlurmError(f"{argv[0]} did not answer within {TIMEOUT:g} s (is slurmctld up?)") from exc


_partitions: tuple[float, list[str]] = (0.0, [])


def partitions() -> list[str]:
    """The partitions `sinfo` lists (the default one first), [] when it cannot say; asked at most every 30 s."""
    global _partitions
    when, found = _partitions
    if time.monotonic() - when < 30 and when:
        return found
    try:
        out = _run(["sinfo", "-h", "-o", "%P"])
        names = [n.strip() for n in out.stdout.split()] if out.returncode == 0 else []
    except SlurmError:
        names = []
    default = [n.rstrip("*") for n in names if n.endswith("*")]
    found = default + sorted({n.rstrip("*") for n in names} - set(default))
    _partitions = (time.monotonic(), found)
    return found


def _port_line(launch: Launch) -> str:
    """The main process's port, the same on every node: the one asked for, else one from the Slurm job id (two
    jobs sharing a node do not meet on it)."""
    port = launch.distributed.main_process_port
    return f"PORT={port}" if port else "PORT=$((20000 + SLURM_JOB_ID % 20000))"


def scripts(job_dir: Path, launch: Launch) -> tuple[str, str]:
    """The batch script and the per-node script, as text."""
    s = launch.slurm
    nodes = s.nodes
    # accelerate's command for one node, its rank, main address and port left to the node's environment
    dist = launch.distributed.model_copy(update={"num_machines": nodes, "machine_rank": 0,
                                                 "main_process_ip": "MAIN_IP"})
    local = launch.model_copy(update={"distributed": dist, "gpu_ids": []})  # the GPUs Slurm gave
    argv = build_argv(local, job_dir, "PORT")
    words = []
    for i, word in enumerate(argv):
        before = argv[i - 1] if i else ""
        if before == "--machine_rank":
            words.append('"$SLURM_NODEID"')
        elif before == "--main_process_ip":
            words.append('"$MAIN_IP"')
        elif before == "--main_process_port":
            words.append('"$PORT"')
        elif before == "--num_cpu_threads_per_process":  # the node's CPUs Slurm gave, over its processes
            words.append(f'"$(( ${{SLURM_CPUS_ON_NODE:-{launch.num_processes}}} / {launch.num_processes} ))"')
        else:
            words.append(shlex.quote(word))
    node = "\n".join([
        "#!/bin/bash",
        "# One node's part of the job (srun runs it once per node): accelerate launch with this node's rank.",
        "set -eu",
        '# the main process: the first node of the job, at the address Slurm reaches it by (NodeAddr)',
        'MAIN=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        'MAIN_IP=$(scontrol -o show node "$MAIN" | tr " " "\\n" | sed -n "s/^NodeAddr=//p")',
        'MAIN_IP=${MAIN_IP:-$MAIN}',
        _port_line(launch),
        'echo "[tlab] node $SLURM_NODEID of $SLURM_JOB_NUM_NODES on $(hostname): main $MAIN_IP:$PORT"',
        "exec " + " ".join(words),
        "",
    ])
    lines = ["#!/bin/bash",
             f"#SBATCH --job-name={shlex.quote(f'tlab-{job_dir.name}')}",
             f"#SBATCH --nodes={nodes}",
             "#SBATCH --ntasks-per-node=1",
             f"#SBATCH --chdir={shlex.quote(str(job_dir))}",
             f"#SBATCH --output={shlex.quote(str(job_dir / LOG))}",
             "#SBATCH --open-mode=append"]
    if launch.device == "cuda":
        lines.append(f"#SBATCH --gpus-per-node={s.gpus_per_node}")
    else:
        lines.append(f"#SBATCH --cpus-per-task={launch.num_processes}")
    for flag, value in (("partition", s.partition), ("time", s.time_limit), ("account", s.account),
                        ("qos", s.qos)):
        if value:
            lines.append(f"#SBATCH --{flag}={shlex.quote(value)}")
    lines += ["# Written by tlab-gradio: one task per node, each running the job's accelerate launch.",
              "set -eu",
              "srun --nodes=\"$SLURM_JOB_NUM_NODES\" --ntasks-per-node=1 --kill-on-bad-exit=1 "
              f"bash {shlex.quote(str(job_dir / NODE_SCRIPT))}", ""]
    return "\n".join(lines), node


def preview(launch: Launch) -> str:
    """What the form shows before Start for a Slurm job: sbatch and the two scripts, the job folder not known yet."""
    batch, node = scripts(Path("$TLAB_SLURM_WORKSPACE/jobs/<id>"), launch)
    return f"sbatch --parsable {SCRIPT}\n\n# {SCRIPT}\n{batch}\n# {NODE_SCRIPT}\n{node}"


def shown(job_dir: Path, command: list[str] | None, slurm_id: str | None) -> str:
    """What a Slurm job's page shows as its command: its Slurm job id, sbatch's argv and the scripts it ran."""
    parts = [f"# Slurm job {slurm_id}" if slurm_id else "# not yet handed to Slurm"]
    if command:
        parts.append(shlex.join(command))
    for name in (SCRIPT, NODE_SCRIPT):
        try:
            parts.append(f"\n# {name}\n" + (job_dir / name).read_text())
        except OSError:
            pass
    return "\n".join(parts)


def write(job_dir: Path, launch: Launch) -> list[str]:
    """Write the scripts into the job folder; return sbatch's argv."""
    batch, node = scripts(job_dir, launch)
    (job_dir / NODE_SCRIPT).write_text(node)
    (job_dir / SCRIPT).write_text(batch)
    return ["sbatch", "--parsable", str(job_dir / SCRIPT)]


def submit(argv: list[str], tag: str) -> str:
    """Run sbatch (its environment is the job's: the tag and the app's settings reach every node's processes);
    the Slurm job id."""
    out = _run(argv, env=child_env(tag))
    if out.returncode != 0:
        raise SlurmError(f"sbatch refused the job: {(out.stderr or out.stdout).strip()}")
    job_id = out.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise SlurmError(f"sbatch answered {out.stdout.strip()!r}, not a job id")
    return job_id


def cancel(job_id: str) -> None:
    out = _run(["scancel", str(job_id)])
    if out.returncode != 0 and "Invalid job id" not in out.stderr:
        raise SlurmError(f"scancel {job_id}: {out.stderr.strip()}")


@dataclass
class State:
    slurm: str  # Slurm's own word: PENDING, RUNNING, COMPLETED, ...
    ours: str  # QUEUED, RUNNING, COMPLETE, FAILED, STOPPED
    reason: str = ""  # squeue's reason while pending; at the end, what Slurm says
    exit_code: int | None = None
    nodes: str = ""

    @property
    def finished(self) -> bool:
        return self.ours in ("COMPLETE", "FAILED", "STOPPED")


class Queue:
    """What `squeue` says of the jobs this app watches, read in one call for all of them at most once every
    `every` seconds, whoever asks: the app watches each Slurm job in a thread of its own, and Slurm's manual warns
    that squeue run in a loop loads slurmctld (100 queued jobs were 100 calls a second). A job is asked about
    again at once when the last read did not name it (just submitted); one nobody asked about for `keep` seconds
    is no longer named (its watcher ended)."""

    def __init__(self, every: float = 1.0, keep: float = 30.0):
        self.every, self.keep = every, keep
        self._asked: dict[str, float] = {}  # job id -> when last asked about
        self._rows: dict[str, list[str]] = {}  # job id -> [state, reason, nodes] as the last read said
        self._named: set[str] = set()  # the ids the last read named
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    def row(self, job_id: str) -> list[str] | None:
        """[state, reason, nodes] while Slurm lists the job, else None (ended, or unknown to it)."""
        job_id = str(job_id)
        with self._lock:
            now = time.monotonic()
            self._asked[job_id] = now
            if job_id not in self._named or now - self._read_at >= self.every:
                self._read(now)
            return self._rows.get(job_id)

    def _read(self, now: float) -> None:
        for job_id, asked in list(self._asked.items()):
            if now - asked > self.keep:
                del self._asked[job_id]
        named = sorted(self._asked, key=lambda j: (len(j), j))
        # One id Slurm no longer knows is left out of a list's answer; only when it knows none is the exit 1
        # ("Invalid job id specified"), which means the same here: none of them is listed.
        out = _run(["squeue", "-h", "-j", ",".join(named), "-o", "%i|%T|%r|%N"])
        rows = {}
        for line in out.stdout.splitlines() if out.returncode == 0 else []:
            job_id, _, rest = line.strip().partition("|")
            if job_id and job_id not in rows:
                rows[job_id] = (rest.split("|") + ["", ""])[:3]
        self._rows, self._named, self._read_at = rows, set(named), now


QUEUE = Queue()


def state(job_id: str) -> State | None:
    """The job's state now: squeue while Slurm holds it (read with the other watched jobs', `QUEUE`), then sacct
    (with slurmdbd, else the completion file, `sacct -c`). None when neither knows it (yet)."""
    row = QUEUE.row(job_id)
    if row:
        word, reason, nodes = row
        if word in PENDING:
            return State(word, "QUEUED", "" if reason in ("None", "") else reason, None, nodes)
        if word in RUNNING:
            return State(word, "RUNNING", "", None, nodes)
    for extra in ([], ["-c"]):
        out = _run(["sacct", *extra, "-n", "-X", "-P", "-j", str(job_id), "-o", "JobID,State,ExitCode,NodeList"])
        for line in out.stdout.splitlines() if out.returncode == 0 else []:
            parts = line.split("|")
            if len(parts) < 3 or parts[0] != str(job_id):
                continue
            word = parts[1].split()[0] if parts[1] else ""
            if word in PENDING:
                return State(word, "QUEUED")
            if word in RUNNING:
                return State(word, "RUNNING")
            if word in ENDS:
                code, _, signal = parts[2].partition(":")
                exit_code = int(code) if code.isdigit() else None
                if signal.isdigit() and int(signal):
                    exit_code = -int(signal)
                return State(word, ENDS[word], _says(word, parts[2]), exit_code, parts[3] if len(parts) > 3 else "")
    return None


def _says(word: str, exit_code: str) -> str:
    what = SAYS.get(word, "")
    return f"Slurm: {word}" + (f", {what}" if what else "") + (f", exit code {exit_code}" if exit_code else "")
