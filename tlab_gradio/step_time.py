"""About how long one optimisation step will take, before Start: the step's arithmetic, from the model's shape
and the job's settings, over what the device does per second, plus the per-token cost of generating that is
not arithmetic (each new token runs every layer once, however small the batch). A rough figure, shown as
such: its use is telling a 2-second step from a 2-minute one before a run starts.

    training    6 x P x tokens (full fine-tune: forward 2P, backward 4P a token), 4 x P x tokens with LoRA
                (no weight gradients); P counts the matmul weights (decoder layers and the output head)
    generation  (GRPO) 2 x P a token for the prompts and completions, and completion_length x layers x a
                per-layer cost for the token-by-token decoding
    device      a CPU's speed is timed (a float32 matrix product, the share of the threads a process gets), so a
                busy machine gives a longer estimate; a GPU's is its dense bf16 peak from its name
"""
from __future__ import annotations

import os
import re
import time
from typing import Any

from . import memory, warmup
from .job_spec import JobSpec

# Dense bf16 tensor TFLOP/s by GPU name (the vendors' data sheets; fp16 where there is no bf16)
GPU_PEAK_TFLOPS = {"H200": 989, "H100": 989, "GH200": 989, "B200": 2250, "A100": 312, "A800": 312, "L40S": 362,
                   "L40": 181, "A40": 150, "A10G": 125, "A10": 125, "L4": 121, "RTX 4090": 165, "RTX 3090": 71,
                   "A6000": 155, "V100": 125, "T4": 65}
UNKNOWN_GPU_TFLOPS = 100
# The share of that speed training reaches: small models on a GPU are far from peak (the H100 SFT bench's
# Qwen2-0.5B at 44k tokens/s is about 0.13 of peak); a CPU process reaches about half its timed matmul speed.
GPU_EFFICIENCY, CPU_EFFICIENCY = 0.12, 0.5
# Seconds per decoder layer per generated token beyond the arithmetic (kernel launches, sampling, Python), on one
# H200 with SmolLM2-135M (30 layers): compiled static cache ~3.7 s for 256 decode steps (the GRPO bench); the
# dynamic cache, not compiled (what `auto` takes for a short run, warmup.decoding_cache), 7.5 s a 256-token step
# (bench/results/evaluate-gpu-check-2026-12-02-h200-smollm2-grpo.json).
GPU_DECODE_LAYER_S, GPU_EAGER_DECODE_LAYER_S, CPU_DECODE_LAYER_S = 3e-4, 9e-4, 1e-3
PROMPT_TOKENS = 128  # a prompt's length when only its maximum is known
CHARS_PER_TOKEN, CHAT_TOKENS = 3.5, 16  # English text through a BPE tokenizer; a chat template's own tokens
STEP_OVERHEAD_S = {"cuda": 0.05, "cpu": 0.1}
_CPU_SPEED: dict[int, tuple[float, float]] = {}  # threads -> (FLOP/s, when timed)
CPU_SPEED_TTL_S = 120


def cpu_flops(threads: int) -> float:
    """FLOP/s `threads` of this machine's CPUs give: a float32 matrix product on all of them, timed for about
    0.2 s and taken in proportion (kept for two minutes). numpy, not torch: the web process never loads torch,
    and torch's thread count is one setting for every thread of the server."""
    known = _CPU_SPEED.get(threads)
    if known and time.monotonic() - known[1] < CPU_SPEED_TTL_S:
        return known[0]
    import numpy as np

    a = np.random.default_rng(0).standard_normal((512, 512), dtype=np.float32)
    a @ a  # the first call allocates
    start, runs = time.perf_counter(), 0
    while time.perf_counter() - start < 0.2:
        a @ a
        runs += 1
    speed = 2 * 512**3 * runs / (time.perf_counter() - start) * threads / max(1, len(os.sched_getaffinity(0)))
    _CPU_SPEED[threads] = (speed, time.monotonic())
    return speed


def gpu_flops(name: str) -> float:
    for key in sorted(GPU_PEAK_TFLOPS, key=len, reverse=True):  # "A100" before "A10"
        if re.search(rf"\b{re.escape(key)}", name, re.IGNORECASE):
            return GPU_PEAK_TFLOPS[key] * 1e12
    return UNKNOWN_GPU_TFLOPS * 1e12


def matmul_parameters(shape: memory.Shape) -> int:
    """Weights a token is multiplied by: every decoder layer's projections and the output head."""
    per_layer = sum(a * b for a, b in shape.linear_shapes().values())
    return shape.layers * per_layer + shape.vocab * shape.hidden


def estimate(spec: JobSpec, use_lora: bool, gpu_names: list[str], cpu_count: int) -> dict[str, Any]:
    """Seconds a step should take on one process (all processes work at once, each on its share), and how
    the figure was made."""
    p, launch = spec.params, spec.launch
    shape = memory.Shape.from_config(spec.model.config)
    weights = matmul_parameters(shape)
    per_token = (4 if use_lora else 6) * weights
    batch = (p.get("per_device_train_batch_size") or 1) * (p.get("gradient_accumulation_steps") or 1)
    if p.get("max_completion_length"):  # GRPO: generate, then train on prompt + completion
        completion = p["max_completion_length"]
        prompt = min(p.get("max_prompt_length") or PROMPT_TOKENS, PROMPT_TOKENS)
        tokens = batch * (prompt + completion)
        flops = per_token * tokens + 2 * weights * tokens
        if p.get("beta"):
            flops += 2 * weights * tokens  # the reference model's forward
        if launch.device == "cpu":
            layer_s = CPU_DECODE_LAYER_S
        else:
            layer_s = GPU_DECODE_LAYER_S if decoding_compiled(spec, shape) else GPU_EAGER_DECODE_LAYER_S
        decode = completion * shape.layers * layer_s
        what, bound = f"{batch} completions of up to {completion} tokens per process", "about"
    else:
        longest = p.get("max_length") or 1024
        chars = spec.data.info.get("example_chars")
        if chars and not p.get("packing"):  # padding-free batches: a row costs its own length
            length = min(longest, round(chars / CHARS_PER_TOKEN) + CHAT_TOKENS)
            what, bound = f"{batch} rows of about {length} tokens per process, from the data's first rows", "about"
        else:  # packed rows fill max_length; with no data read, the longest a row may be
            length = longest
            what, bound = f"{batch} sequences of {'' if p.get('packing') else 'up to '}{longest} tokens per process", \
                "about" if p.get("packing") else "at most about"
        tokens = batch * length
        flops, decode = per_token * tokens, 0.0
    if launch.device == "cpu":
        threads = max(1, cpu_count // max(1, launch.num_processes))
        speed = cpu_flops(threads) * CPU_EFFICIENCY
        device = f"{threads} CPU thread{'s' * (threads != 1)} a process"
    else:
        speed = min((gpu_flops(n) for n in gpu_names), default=UNKNOWN_GPU_TFLOPS * 1e12) * GPU_EFFICIENCY
        device = gpu_names[0] if gpu_names else "a GPU"
    seconds = flops / speed + decode + STEP_OVERHEAD_S[launch.device]
    said = "under 1 s" if seconds < 1 else f"{bound} {_human(seconds)}"
    return {"seconds": seconds, "text": f"{said} a step ({what}, on {device}; "
                                        "a rough estimate)"}


def decoding_compiled(spec: JobSpec, shape: memory.Shape) -> bool:
    """Whether the GRPO trainer will decode with its compiled static cache on a GPU (warmup.decoding_cache, as
    trainers/grpo.py decides it), from the planned steps over the data's rows when they are known."""
    p = spec.params
    sixteen_bit = (p.get("model_dtype") or "auto") == "bfloat16" or (
        (p.get("model_dtype") or "auto") == "auto" and spec.launch.mixed_precision == "bf16")
    pays = warmup.grpo_decoding(shape.parameters(), p, spec.data.info.get("rows"), spec.launch.total_processes)
    return warmup.decoding_cache(p.get("cache_implementation"), sixteen_bit, pays)[0] == "static"


def _human(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
