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
from .job_spec import Launch


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
    """`accelerate` beside the interpreter when it is there (what a user types), else `python -m`."""
    python = python or sys.executable
    script = Path(python).parent / "accelerate"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script), "launch"]
    return [python, "-m", "accelerate.commands.launch"]


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
    argv += [launch.trainer, "--job-dir", str(job_dir)]
    return argv


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
