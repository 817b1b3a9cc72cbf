"""Turn a job into an `accelerate launch` command, start it, find and end every process of it.

The command is an argv list (never a shell string). Every launch passes a config
file written into the job folder, so a user's own accelerate default config can
never override what the form says, and the stored command reruns the job by hand.

A job's processes are not one process group: torch's elastic launcher starts each
rank in a session of its own, and a rank whose launcher died is reparented to pid 1.
So every process of a job carries the job's tag in its environment (TLAB_JOB, set at
spawn and inherited), and is found by that tag (psutil), whoever its parent is now and
whether or not this app started it.
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

import psutil
import yaml

from .gpus import Placement
from .job_spec import Launch
from .jobfiles import RANK_ERRORS


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


def accelerate_config(launch: Launch, port: int) -> dict:
    dist = launch.distributed
    total = launch.total_processes
    config = {
        "compute_environment": "LOCAL_MACHINE",
        # Several CPU processes go through the multi-GPU launcher too: torch's elastic
        # launcher starts N ranks and the trainer (use_cpu=True) joins them over gloo.
        "distributed_type": "MULTI_GPU" if total > 1 else "NO",
        "num_processes": total,  # accelerate counts every machine's processes
        "num_machines": dist.num_machines,
        "machine_rank": dist.machine_rank,
        "gpu_ids": ",".join(launch.gpu_ids) if launch.gpu_ids else "all",
        "mixed_precision": launch.mixed_precision,
        "use_cpu": launch.device == "cpu",
        "main_process_port": port,
        "rdzv_backend": "static",
        "same_network": True,
        "main_training_function": "main",
        "downcast_bf16": "no",
        "debug": False,
    }
    if dist.num_machines > 1:
        config["main_process_ip"] = dist.main_process_ip
    if dist.strategy == "fsdp":
        config["distributed_type"] = "FSDP"
        config["fsdp_config"] = {
            "fsdp_version": 2,
            "fsdp_reshard_after_forward": True,  # FSDP2's full shard
            "fsdp_offload_params": dist.fsdp_cpu_offload,
            "fsdp_activation_checkpointing": dist.fsdp_activation_checkpointing,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP" if dist.fsdp_auto_wrap else "NO_WRAP",
            "fsdp_state_dict_type": "FULL_STATE_DICT",
            "fsdp_cpu_ram_efficient_loading": True,
        }
    elif dist.strategy.startswith("deepspeed_zero"):
        stage = int(dist.strategy[-1])
        offload = "cpu" if dist.deepspeed_cpu_offload else "none"
        config["distributed_type"] = "DEEPSPEED"
        config["deepspeed_config"] = {
            "zero_stage": stage,
            "offload_optimizer_device": offload,
            "offload_param_device": offload if stage == 3 else "none",
            "zero3_init_flag": stage == 3,
            "zero3_save_16bit_model": stage == 3,
            "gradient_accumulation_steps": dist.gradient_accumulation_steps,
            "gradient_clipping": dist.gradient_clipping,
        }
    return config


def accelerate_executable(python: str | None = None) -> list[str]:
    """`accelerate launch` as `python -m accelerate.commands.launch`, the same launcher with the same arguments: the
    `accelerate` script first builds the parsers of all its commands, importing more than the launch needs, every
    job before its processes even start (1.5 s of a 7-9 s start to the first step on 2 CPU cores, see
    bench/README.md); and this names the interpreter the job runs with (a plugin's own environment)."""
    return [python or sys.executable, "-m", "accelerate.commands.launch"]


def build_argv(launch: Launch, job_dir: Path, port: int | str) -> list[str]:
    """The command, as an argv list. `port` is a number, or a placeholder in the form's preview."""
    dist = launch.distributed
    total = launch.total_processes
    argv = accelerate_executable(launch.python) + ["--config_file", str(job_dir / "accelerate.yaml")]
    if dist.strategy == "fsdp":
        argv.append("--use_fsdp")
    elif dist.strategy.startswith("deepspeed_zero"):
        argv.append("--use_deepspeed")
    elif total > 1:
        argv.append("--multi_gpu")
    elif launch.device == "cpu":
        argv.append("--cpu")
    argv += ["--num_processes", str(total), "--num_machines", str(dist.num_machines)]
    if dist.num_machines > 1:
        argv += ["--machine_rank", str(dist.machine_rank), "--main_process_ip", dist.main_process_ip]
    if launch.gpu_ids:
        argv += ["--gpu_ids", ",".join(launch.gpu_ids)]
    argv += ["--mixed_precision", launch.mixed_precision, "--main_process_port", str(port)]
    if launch.device == "cpu":
        argv += ["--num_cpu_threads_per_process", str(cpu_threads_per_process(launch.num_processes))]
    if total > 1:  # torchelastic's agent: each rank's error file in the job folder (logs.failure reads them)
        argv += ["--log_dir", str(job_dir / RANK_ERRORS)]
    argv += [launch.trainer, "--job-dir", str(job_dir)]
    return argv


def cpu_threads_per_process(processes: int) -> int:
    """The threads each CPU rank computes with: the physical cores over this machine's processes, accelerate's
    own choice, passed explicitly (left to accelerate, it prints a warning into every CPU job's log). A thread
    count set in the app's environment (OMP_NUM_THREADS) wins, as it would in accelerate."""
    chosen = os.environ.get("OMP_NUM_THREADS", "")
    if chosen.isdigit() and int(chosen) > 0:
        return int(chosen)
    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    return max(1, cores // max(1, processes))


def preview(launch: Launch) -> str:
    """The command the form shows before Start: the same argv, with the job folder and port not known yet."""
    return " ".join(build_argv(launch, Path("$TLAB_HOME/jobs/<id>"),
                               launch.distributed.main_process_port or "<free port>"))


def write_launch_files(job_dir: Path, launch: Launch) -> list[str]:
    """Write accelerate.yaml and command.txt; return the argv."""
    port = launch.distributed.main_process_port or free_port()
    (job_dir / "accelerate.yaml").write_text(yaml.safe_dump(accelerate_config(launch, port)))
    argv = build_argv(launch, job_dir, port)
    (job_dir / "command.txt").write_text(shlex.join(argv) + "\n")
    return argv


JOB_TAG = "TLAB_JOB"  # environment variable naming the job a process belongs to: "<workspace id>:<job id>"


def child_env(tag: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_") and k != JOB_TAG}
    env["PYTHONUNBUFFERED"] = "1"  # the log is tailed live
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # \r-redrawn bars make an unreadable log
    env.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Loading weights" and "Writing model shards"
    if tag:
        env[JOB_TAG] = tag  # inherited by the launcher's ranks and their children: job_processes finds them
    return env


def spawn(argv: list[str], job_dir: Path, log_path: Path, tag: str | None = None) -> subprocess.Popen:
    """Start the job in a new session (a terminal's signals never reach it), tagged with `tag`."""
    with open(log_path, "ab", buffering=0) as log:
        return subprocess.Popen(
            argv,
            cwd=job_dir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env(tag),
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


def alive(proc: psutil.Process) -> bool:
    """Running, and not a zombie (an ended process its parent has not reaped holds nothing)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _tag_of(proc: psutil.Process) -> str | None:
    try:
        return proc.environ().get(JOB_TAG)
    except (psutil.Error, OSError):  # gone, a zombie, or another user's
        return None


def job_process(pid: int | None, tag: str, job_dir: Path | None = None) -> psutil.Process | None:
    """The live process `pid` if it is this job's (its tag, or for a job started before tags, the job folder in
    its command line), else None: a pid recorded long ago may now be someone else's."""
    if not pid:
        return None
    try:
        proc = psutil.Process(pid)
        if not alive(proc):
            return None
        if _tag_of(proc) == tag:
            return proc
        folder = str(job_dir) if job_dir is not None else None
        if folder and any(a == folder or a.startswith(folder + "/") for a in proc.cmdline()):
            return proc
    except (psutil.Error, OSError):
        pass
    return None


def job_processes(tag: str, root: int | None = None, job_dir: Path | None = None) -> list[psutil.Process]:
    """Every live process of the job: all carrying its tag, and the launcher `root`'s descendants (a child
    that cleared its environment) while the launcher is still this job's."""
    found: dict[int, psutil.Process] = {}
    top = job_process(root, tag, job_dir)
    if top is not None:
        try:
            found = {p.pid: p for p in (top, *top.children(recursive=True))}
        except psutil.Error:
            pass
    me = os.getpid()
    for proc in psutil.process_iter():
        if proc.pid != me and proc.pid not in found and _tag_of(proc) == tag:
            found[proc.pid] = proc
    return [p for p in found.values() if alive(p)]


def _signal(procs: list[psutil.Process], sig: int) -> None:
    for proc in procs:
        try:
            proc.send_signal(sig)  # psutil checks the pid is still this process (no recycled pid is hit)
        except psutil.Error:
            pass


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until every one has ended (or is a zombie); the ones still alive at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        procs = [p for p in procs if alive(p)]
        if not procs or time.monotonic() >= deadline:
            return procs
        time.sleep(0.05)


def end_job(tag: str, root: int | None, grace: float, job_dir: Path | None = None) -> bool:
    """End every process of the job: SIGTERM (and SIGCONT, so a stopped process can act on it) to all at once,
    SIGKILL to what is left after `grace` seconds, and again to any found later (a rank started meanwhile).
    Returns True if something had to be killed. Returns once none is left (or after ten rounds of SIGKILL, for a
    process that cannot die, stuck in uninterruptible I/O)."""
    procs = job_processes(tag, root, job_dir)
    if not procs:
        return False
    _signal(procs, signal.SIGTERM)
    _signal(procs, signal.SIGCONT)
    _wait_gone(procs, grace)
    killed = False
    for _ in range(10):  # a launcher still starting ranks as it is killed; a process in D state never ends
        left = job_processes(tag, root, job_dir)
        if not left:
            break
        killed = True
        _signal(left, signal.SIGKILL)  # acts on a stopped process too
        _wait_gone(left, 5.0)
    return killed
