"""What a job will need before it is started: time per step (step_time), GPU memory per device (memory.estimate / memory.plan on the
model's own config) against the chosen GPUs' free memory, and disk for its checkpoints and output against
the workspace's free space, with a warning when either may not fit."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from . import gpus, memory, plugin_code, step_time
from .job_spec import JobSpec


def for_job(spec: JobSpec, home: Path) -> dict[str, Any]:
    """GPU memory per device the job should need next to each chosen GPU's free memory, the plan the trainer
    will follow (checkpointing, micro-batches), and the disk its checkpoints and output need."""
    p = spec.params
    shape = memory.Shape.from_config(spec.model.config)
    chosen = [g for g in gpus.list_gpus(refresh=True) if g.physical in spec.launch.gpu_ids]
    free = [{"index": g.index, "name": g.name, "free_gb": round((g.memory_total_mb - g.memory_used_mb) / 1024, 2)}
            for g in chosen]
    kwargs = memory.job_kwargs(p, spec.launch, plugin_code.trains_lora(Path(spec.launch.trainer), p))
    checkpointing = p.get("gradient_checkpointing")
    plan = None
    if isinstance(checkpointing, str):  # "auto" / "on" / "off": the trainer plans as memory.plan does
        budget = min(g["free_gb"] for g in free) if free else None
        if budget is not None and p.get("max_gpu_memory_gb"):
            budget = min(budget, p["max_gpu_memory_gb"])
        plan = memory.plan(shape, None if budget is None else 0.9 * budget, checkpointing=checkpointing,
                           split=not kwargs["strategy"].startswith("deepspeed"), **kwargs)
        est = plan.estimate.as_dict()
    else:
        est = memory.estimate(shape, checkpointing=bool(checkpointing or p.get("fsdp_activation_checkpointing")),
                              **kwargs).as_dict()
    est["gpus"] = free
    est["disk"] = disk(home, shape, p, kwargs, est["trainable_parameters"], spec.launch.device)
    if plan:
        est["plan"] = plan.describe()
    est["step_time"] = step_time.estimate(spec, kwargs["use_lora"], [g.name for g in chosen],
                                          len(os.sched_getaffinity(0)))
    short = [g for g in free if g["free_gb"] < est["total_gb"]]
    est["fits"] = None if not chosen else not short
    est["warning"] = (f"may not fit: about {est['total_gb']:.1f} GiB per GPU needed, GPU "
                      f"{', '.join(str(g['index']) for g in short)} has "
                      f"{min(g['free_gb'] for g in short):.1f} GiB free" if short else None)
    return est


def disk(home: Path, shape: memory.Shape, p: dict[str, Any], kwargs: dict[str, Any], trainable: int,
          device: str) -> dict[str, Any]:
    """What the job will write next to the workspace disk's free space, with a warning when the
    checkpoints and output will not fit (a full disk fails a run at its first checkpoint)."""
    dtype = p.get("model_dtype", "auto")
    sixteen = dtype == "bfloat16" or (dtype == "auto" and "model_dtype" in p and device == "cuda")
    limit, every, steps = p.get("save_total_limit"), p.get("save_steps"), p.get("max_steps") or -1
    if p.get("load_best_model_at_end") and (p.get("val_size") or (p.get("eval_split") or "").strip()):
        # a checkpoint at every evaluation (trainers/common.eval_settings), the best kept beside the latest
        every = p.get("eval_steps") or (-(-steps // 10) if steps > 0 else None)
        limit = max(limit, 2) if limit else limit
    count = limit or None
    if steps > 0 and every:
        saves = -(-steps // every)  # one every save_steps, and one at the end
        count = min(count, saves) if count else saves
    est = memory.disk(shape, use_lora=kwargs["use_lora"], trainable=trainable, weight_bytes=2 if sixteen else 4,
                      checkpoints=count, fuse=bool(p.get("fuse_model"))).as_dict()
    free = shutil.disk_usage(home).free / memory.GB
    est["free_gb"] = round(free, 1)
    need = est["total_gb"] if est["total_gb"] is not None else est["checkpoint_gb"] + est["output_gb"]
    est["warning"] = (f"may not fit on disk: checkpoints and output need about {need:.1f} GiB, the workspace "
                      f"disk has {free:.1f} GiB free" if need > free else None)
    return est
