"""The Trainer callbacks every trainer adds: metrics.jsonl and progress.json from rank 0 (MetricsCallback),
and a stop at the first non-finite gradient norm or loss (FiniteGuard, added by common.train); with a held-out
split, an evaluation at the last step (EvaluateAtEnd, added by common.eval_callbacks)."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from tlab_gradio.jobfiles import METRICS, PROGRESS, write_json_atomic
from tlab_gradio.trainers.common import NON_FINITE_HINT, NonFiniteTrainingError


class FiniteGuard(TrainerCallback):
    """Stops training at the first optimisation step whose gradient norm is not finite (checked before the
    optimiser applies it, so no weight is spoiled), and at a logged loss or gradient norm that is not. The
    raised NonFiniteTrainingError ends every rank; the app shows its message as the job's reason.

    With fp16's loss scaler (`scaled`), an overflowing step is normal: the scaler skips it and lowers the
    scale, so only a non-finite logged loss stops such a job."""

    def __init__(self, scaled: bool = False):
        self.scaled = scaled

    @staticmethod
    def _fail(what: str, value: float, step: int):
        shown = "NaN" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        raise NonFiniteTrainingError(f"{what} became {shown} at step {step}; {NON_FINITE_HINT}")

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.scaled or model is None:
            return
        import torch

        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not grads:  # DeepSpeed keeps gradients in its engine: the logged grad norm is checked instead
            return
        norm = float(torch.nn.utils.get_total_norm(grads, foreach=True))
        if not math.isfinite(norm):
            self._fail("grad norm", norm, state.global_step + 1)

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key, what in (("loss", "loss"), ("grad_norm", "grad norm")):
            value = (logs or {}).get(key)
            if key == "grad_norm" and self.scaled:
                continue
            if isinstance(value, (int, float)) and not math.isfinite(value):
                self._fail(what, value, state.global_step)


class EvaluateAtEnd(TrainerCallback):
    """With a held-out split: evaluate at the last step too, whatever the interval (20 steps evaluated every 6 end
    on an evaluation at 20), so the chart's eval curve reaches the end of the run and the best checkpoint is
    chosen among all of it. Its metrics (eval_loss, GRPO's eval_reward...) reach metrics.jsonl through the
    Trainer's log, at their step, as the training metrics do (MetricsCallback.on_log)."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.max_steps > 0 and state.global_step >= state.max_steps:
            control.should_evaluate = True


class MetricsCallback(TrainerCallback):
    """metrics.jsonl: one JSON line per logging step (and the last step); progress.json: step, total, ETA.

    Rank 0 only (the Trainer already averages the loss across ranks). Tokens/s come
    from TRL's running `num_tokens` count (real, non-padding tokens, all ranks).
    """

    def __init__(self, job_dir: Path, world_size: int, completions_per_step: int | None = None):
        self.job_dir = job_dir
        self.world_size = world_size
        self.completions_per_step = completions_per_step  # GRPO: for completion tokens/s
        self.start_time = time.time()
        self.start_step = 0
        self.last_progress = 0.0
        self.last_tokens: tuple[float, float] | None = None  # (time, num_tokens)

    def _progress(self, state, done: bool = False) -> None:
        now = time.time()
        steps_done = state.global_step - self.start_step
        remaining = max(state.max_steps - state.global_step, 0)
        eta = (now - self.start_time) / steps_done * remaining if steps_done > 0 else None
        write_json_atomic(
            self.job_dir / PROGRESS,
            {
                "step": state.global_step,
                "max_steps": state.max_steps,
                "epoch": state.epoch,
                "percent": round(100.0 * state.global_step / state.max_steps, 1) if state.max_steps else 0.0,
                "eta_seconds": 0.0 if done else eta,
                "elapsed_seconds": now - self.start_time,
                "world_size": self.world_size,
                "updated": now,
            },
        )
        self.last_progress = now

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.start_time = time.time()
            self.start_step = state.global_step  # a resumed run starts part-way
            self._progress(state)

    def on_step_end(self, args, state, control, **kwargs):
        # The last step is always logged, whatever the interval (30 steps logged every 20 end on a point at 30).
        # Every rank asks: the Trainer's log gathers the loss over all of them.
        if state.max_steps > 0 and state.global_step >= state.max_steps:
            control.should_log = True
        if state.is_world_process_zero and time.time() - self.last_progress >= 1.0:
            self._progress(state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        now = time.time()
        record: dict[str, Any] = {"step": state.global_step, "epoch": state.epoch, "time": now}
        for key, value in logs.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                record[key] = value if math.isfinite(value) else str(value)
        tokens = logs.get("num_tokens")
        if isinstance(tokens, (int, float)):
            if self.last_tokens and now > self.last_tokens[0]:
                record["tokens_per_second"] = (tokens - self.last_tokens[1]) / (now - self.last_tokens[0])
            self.last_tokens = (now, tokens)
        mean_length, step_time = logs.get("completions/mean_length"), logs.get("step_time")
        if self.completions_per_step and mean_length and step_time:
            record["completion_tokens_per_second"] = mean_length * self.completions_per_step / step_time
        record["world_size"] = self.world_size
        peak = _peak_gpu_memory_gb()
        if peak is not None:
            record["peak_memory_gb"], record["peak_reserved_gb"] = peak
        with open(self.job_dir / METRICS, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if state.global_step > 0:  # the progress is never behind the metrics (a stop says the step it reached)
            self._progress(state)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self._progress(state, done=True)


def _peak_gpu_memory_gb() -> tuple[float, float] | None:
    """Peak memory in tensors, and peak held by PyTorch's allocator (tensors + cached blocks: what
    nvidia-smi sees of this process, less the CUDA context, and what a memory cap limits)."""
    import torch

    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch.cuda.max_memory_allocated() / 2**30, torch.cuda.max_memory_reserved() / 2**30
