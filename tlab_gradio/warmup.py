"""Whether a job's one-time warm-up can pay back: torch.compile of the SFT plugin's decoder layers (with flex
attention, whose kernel is compiled too) and GRPO's compiled decoding (a static KV cache replayed as CUDA graphs).

Compiling costs a fixed time before the first step (10-60 s; on an H200 the embedded 2-layer model's first
30-step SFT job spent ~60 s, mostly compiling, its second 22 s with torch's on-disk cache warm), then saves a
share of every step. It pays back only when the model is big enough for its steps to take real time, over
enough of them:

    SFT   Qwen2-0.5B: compiled layers cut a step from 0.26 to 0.14 s (H100, bench/results/sft-probe-2026-11-27-
          h100.json): 10-30 s of compiling is back after ~100-250 steps.
    GRPO  compiled decoding doubles a 0.5B model's tokens/s at batch 256 (11.5k -> 23.9k, bench/results/generate-
          probe-2026-11-25-h100.json), ~11 ms saved per decoded token: ~30 s is back after ~2,000-3,000 tokens
          decoded per sequence over the run (about 8 steps of 256-token completions).

Under MIN_PARAMETERS a step is a few milliseconds of GPU work whatever the count, so `auto` never compiles.
"""
from __future__ import annotations

from dataclasses import dataclass

MIN_PARAMETERS = 50_000_000
MIN_TRAIN_STEPS = 100  # SFT: optimiser steps
MIN_DECODE_TOKENS = 2_000  # GRPO: steps x max_completion_length (each decoded token is one compiled forward)


@dataclass(frozen=True)
class Choice:
    """On or off, and the reason the job's log gives."""

    on: bool
    why: str

    def __bool__(self) -> bool:
        return self.on


def planned_steps(max_steps: int | None, epochs: float | None, samples: int, per_step: int) -> int:
    """Optimiser steps the run will take: max_steps when set, else the epochs over `samples` taken `per_step` at
    a time (an upper bound under packing, which merges rows)."""
    if max_steps and max_steps > 0:
        return int(max_steps)
    return max(1, int((epochs or 1) * -(-samples // max(1, per_step))))


def _decide(parameters: int | None, work: int, least: int, unit: str) -> Choice:
    size = f"{parameters / 1e6:.1f}M parameters" if parameters is not None else "size unknown"
    if parameters is not None and parameters < MIN_PARAMETERS:
        return Choice(False, f"{size}: under {MIN_PARAMETERS // 1_000_000}M a step is milliseconds, and compiling "
                             f"costs 10-60 s")
    if work < least:
        return Choice(False, f"{work:,} {unit} planned: under {least:,} compiling (10-60 s) does not pay back")
    return Choice(True, f"{size}, {work:,} {unit} planned")


def compile_training(parameters: int | None, steps: int) -> Choice:
    """Compiled decoder layers (and flex attention) for an SFT run of `steps` optimiser steps."""
    return _decide(parameters, steps, MIN_TRAIN_STEPS, "steps")


def compile_decoding(parameters: int | None, steps: int, completion_length: int) -> Choice:
    """GRPO's compiled static-cache decoding for `steps` generations of up to `completion_length` tokens."""
    return _decide(parameters, steps * completion_length, MIN_DECODE_TOKENS, "decoded tokens")


def grpo_decoding(parameters: int | None, p: dict, prompts: int | None, processes: int) -> Choice:
    """compile_decoding for a GRPO run with the form's parameters `p`: its planned steps over `prompts` prompts
    (None: not known, taken as many) with Completions per Prompt each, on `processes` processes."""
    per_step = ((p.get("per_device_train_batch_size") or 1) * max(1, processes)
                * (p.get("gradient_accumulation_steps") or 1))
    samples = prompts * (p.get("num_generations") or 1) if prompts else 10**9
    steps = planned_steps(p.get("max_steps"), p.get("num_train_epochs"), samples, per_step)
    return compile_decoding(parameters, steps, p.get("max_completion_length") or 0)


def decoding_cache(setting: str | None, sixteen_bit_on_gpu: bool, pays: Choice | None) -> tuple[str, str]:
    """GRPO's KV cache, ("static" or "dynamic", why), as the trainer takes it and the form's time estimate
    assumes it: the form's setting, else (`auto`) static and compiled where the weights are 16-bit on a GPU (the
    cache takes their dtype) and compiling pays back (`pays`: compile_decoding; None: not known, taken to pay)."""
    cache = setting or "auto"
    if cache != "auto":
        return cache, f"{cache}, as set in the form"
    if not sixteen_bit_on_gpu:
        return "dynamic", "auto: the static cache needs 16-bit weights on a GPU"
    if pays is not None and not pays:
        return "dynamic", f"auto, decoding not compiled: {pays.why}"
    return "static", f"auto, decoding compiled: {pays.why}" if pays is not None else "auto"
