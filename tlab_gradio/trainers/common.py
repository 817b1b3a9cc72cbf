"""What every trainer program shares: reading the job folder, announcing each rank, the checks and
helpers around TRL (the Trainer callbacks are in callbacks.py).

Importing it is cheap (no torch, no transformers at module level): the app imports the trainer modules
for their `check()` without loading a training stack.

A job folder holds config.json (written by the app, or by hand); the program
needs nothing else from the app, so `command.txt` reruns a job without it.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from tlab_gradio.jobfiles import RESULT, write_json_atomic
from tlab_gradio.job_spec import JobSpec


def parse_args(description: str) -> Path:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--job-dir", required=True, type=Path, help="job folder holding config.json")
    return parser.parse_args().job_dir.resolve()


def begin(description: str, cpu_capable: bool = True):
    """A trainer's first steps: the job folder from the command line, its spec (config.json), the process
    group (gloo on CPU), and each rank announcing itself. Returns (job_dir, spec, params, state)."""
    job_dir = parse_args(description)
    quiet_library_deprecations()
    record_errors()
    spec = JobSpec.read(job_dir)
    from accelerate import PartialState

    state = PartialState(cpu=spec.launch.device == "cpu") if cpu_capable else PartialState()
    announce(state)
    return job_dir, spec, spec.params, state


# The libraries a trainer drives: their deprecation notices are about how they call each other (transformers'
# `is_gradient_checkpointing` called by PEFT/TRL, printed twice per rank in every job), nothing a user can act on.
LIBRARIES = r"(transformers|trl|peft|accelerate|torch|datasets|unsloth)(\.|$)"


def quiet_library_deprecations() -> None:
    """Silence the FutureWarning/DeprecationWarning notices raised inside the training libraries (warnings
    filters for those modules only): a warning of any other kind, or a deprecation raised by a trainer or a
    user's reward file, still reaches the job's log."""
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=LIBRARIES)


def record_errors() -> None:
    """Where torchelastic runs the ranks, it names each one's error file (TORCHELASTIC_ERROR_FILE): the exception
    that ends this rank is written there, as torch's @record does for a main it wraps. The agent's report and the
    app's reason then name this rank and its error, even when the log lost it (a full disk). A sys.excepthook,
    so every trainer's main is covered without wrapping it; installed before the process group, whose own hook
    (the "[rankN]:" prefix) then wraps it."""
    if not os.environ.get("TORCHELASTIC_ERROR_FILE"):
        return
    from torch.distributed.elastic.multiprocessing.errors import get_error_handler

    handler = get_error_handler()
    handler.initialize()  # as @record: tracebacks of every thread on a fatal signal (faulthandler)
    previous = sys.excepthook

    def hook(kind, value, tb):
        if issubclass(kind, Exception):  # as @record: not SystemExit or KeyboardInterrupt
            try:
                raise value  # record_exception reads the exception being handled (traceback.format_exc)
            except Exception:
                value.__traceback__ = tb  # as it was raised, without this frame
                try:
                    handler.record_exception(value)
                except OSError:
                    pass  # a full disk: the log's traceback is all there is
        previous(kind, value, tb)

    sys.excepthook = hook


def train(trainer, spec: JobSpec):
    """Say what accelerate set up, then train, from the checkpoint when the job is resumed, stopping
    the job as soon as the loss or the gradient norm stops being finite (FiniteGuard)."""
    from tlab_gradio.trainers.callbacks import FiniteGuard

    announce_strategy(trainer)
    tune_ddp(trainer)
    trainer.add_callback(FiniteGuard(scaled=getattr(trainer.accelerator, "scaler", None) is not None))
    resume = spec.resume_from_checkpoint
    if resume:
        print(f"[tlab] resuming from {resume}", flush=True)
    result = trainer.train(resume_from_checkpoint=resume or None)
    say_ddp(trainer)
    say_early_stop(trainer, spec.params)
    return result


DDP_ENV = "TLAB_DDP"
DDP_KEYS = {"static_graph": bool, "gradient_as_bucket_view": bool, "bucket_cap_mb": int, "broadcast_buffers": bool}


def tune_ddp(trainer) -> None:
    """DDP's own settings for this run from TLAB_DDP, a JSON object ({"static_graph": true,
    "gradient_as_bucket_view": true, "bucket_cap_mb": 100}), set on accelerate's DDP settings before the Trainer
    wraps the model. For bench/multi_gpu.py's search of issue 22 (SFT with compiled layers scaled at 68% on two
    GPUs: the step is bound by launching kernels, and DDP adds a copy into its buckets per gradient and a Python
    hook per parameter); torch's defaults stay until a setting is measured to scale better. Unknown keys are
    refused: a typo would otherwise measure the defaults under another name."""
    import json

    raw = os.environ.get(DDP_ENV, "").strip()
    if not raw:
        return
    wanted = json.loads(raw)
    unknown = set(wanted) - set(DDP_KEYS)
    if unknown:
        raise SystemExit(f"{DDP_ENV}: unknown DDP settings {sorted(unknown)}; known: {sorted(DDP_KEYS)}")
    from accelerate.utils import DistributedDataParallelKwargs

    acc = trainer.accelerator
    if acc.ddp_handler is None:
        acc.ddp_handler = DistributedDataParallelKwargs()
    for key, value in wanted.items():
        setattr(acc.ddp_handler, key, DDP_KEYS[key](value))
    if acc.is_main_process:
        print(f"[tlab] DDP settings from {DDP_ENV}: {json.dumps(wanted, sort_keys=True)}", flush=True)


def say_ddp(trainer) -> None:
    """The settings the DDP wrapper really ran with, read from it (the Trainer builds it inside train())."""
    from torch.nn.parallel import DistributedDataParallel

    wrapped = getattr(trainer, "model_wrapped", None)
    if isinstance(wrapped, DistributedDataParallel) and trainer.accelerator.is_main_process:
        print(f"[tlab] DDP ran with static_graph={wrapped.static_graph}, "
              f"gradient_as_bucket_view={wrapped.gradient_as_bucket_view}, "
              f"bucket_cap_mb={wrapped.bucket_bytes_cap / 2**20:g}, broadcast_buffers={wrapped.broadcast_buffers}",
              flush=True)


def say_early_stop(trainer, p: dict) -> None:
    """The log says when early stopping ended the run before its last step, and the best evaluation."""
    state, args = trainer.state, trainer.args
    patience = p.get("early_stopping_patience") or 0
    if patience and state.global_step < state.max_steps and trainer.accelerator.is_main_process:
        best = f"; best {args.metric_for_best_model} {state.best_metric:.4g} at step {state.best_global_step}" \
            if state.best_metric is not None else ""
        print(f"[tlab] stopped early at step {state.global_step} of {state.max_steps}: "
              f"{args.metric_for_best_model} did not improve for {patience} evaluation"
              f"{'s' if patience > 1 else ''}{best}", flush=True)


def announce(state) -> None:
    """Every rank says who it is: the log then shows the world size really reached."""
    print(
        f"[tlab] rank {state.process_index} of world size {state.num_processes} "
        f"(local rank {state.local_process_index}, device {state.device}, backend {state.backend})",
        flush=True,
    )


def announce_strategy(trainer) -> None:
    """What accelerate really set up (DDP, FSDP, DeepSpeed), once the Trainer has prepared it."""
    acc = trainer.accelerator
    if acc.is_main_process:
        kind = str(acc.state.distributed_type).rsplit(".", 1)[-1]
        print(f"[tlab] distributed: {kind} over {acc.num_processes} process(es)", flush=True)


def model_dtype(precision: str, use_lora: bool):
    """LoRA keeps the frozen base in the training precision (half the memory); a full
    fine-tune keeps fp32 master weights and lets autocast run the matmuls in bf16/fp16."""
    import torch

    if use_lora and precision == "bf16":
        return torch.bfloat16
    if use_lora and precision == "fp16":
        return torch.float16
    return torch.float32


def gpu_memory_budget(limit_gb: float | None, state) -> float | None:
    """GiB this process may plan for on its GPU: the free memory, or `limit_gb` when that is lower, which
    then also caps the allocator (so a job sharing a GPU really stays inside it). 90%: the estimate
    ignores allocator fragmentation. The smallest over all ranks, so every rank makes the same plan
    (ranks accumulating different numbers of micro-batches would hang DDP). None on CPU."""
    import torch

    if state.device.type != "cuda":
        return None
    # A single-process run's device is plain "cuda" (no index), which the allocator cap refuses
    index = state.device.index if state.device.index is not None else torch.cuda.current_device()
    free, total = torch.cuda.mem_get_info(index)
    budget = free / 2**30
    if limit_gb:
        torch.cuda.set_per_process_memory_fraction(min(1.0, limit_gb * 2**30 / total), index)
        budget = min(budget, limit_gb)
    if state.num_processes > 1:
        import torch.distributed as dist

        smallest = torch.tensor([budget], device=state.device)
        dist.all_reduce(smallest, op=dist.ReduceOp.MIN)
        budget = smallest.item()
    return 0.9 * budget


def compile_layers(model, **compile_kwargs) -> int:
    """torch.compile each decoder layer in place (the model's `_no_split_modules` names its layer class):
    the layers share one compiled graph, so it compiles once for the whole stack, in seconds instead of the
    minutes a whole-model compile takes, and the step launches a few fused kernels per layer instead of
    dozens of small ones. In place, so the Trainer, DDP, PEFT and saving see the same module tree.
    Returns how many layers were compiled."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    for layer in layers:
        layer.compile(**compile_kwargs)
    return len(layers)


def avoid_cudnn_attention() -> None:
    """Take PyTorch's cuDNN attention out of SDPA's choices. Its backward returns NaN for query rows that
    may attend to nothing, as every left-padding position of a batched prompt is (GRPO pads prompts on the
    left), even where those rows' gradient is zero: on an H200 the embedded model's GRPO defaults logged a
    NaN grad norm at step 2, the clipped update made every weight NaN and the next `generate` died in a
    device-side assert (bench/results/grpo-nan-probe-2026-12-01-h200.json: the same micro-batch replayed
    gives NaN gradients with cuDNN, finite ones with the math and memory-efficient kernels). SDPA then takes
    the memory-efficient kernel, which handles such rows."""
    import torch

    if torch.cuda.is_available():
        torch.backends.cuda.enable_cudnn_sdp(False)


def limit_rows(dataset, max_samples: int | None, is_main: bool):
    """max_samples: the dataset's first N rows only (0 or None: every row). Applied right after loading, before
    the templates run, so a trial run on a large dataset formats only what it trains on. The log says how many
    rows are used either way."""
    total = len(dataset)
    capped = bool(max_samples) and max_samples < total
    if capped:
        dataset = dataset.select(range(max_samples))
    if is_main:
        print(f"[tlab] dataset: using {len(dataset)} of {total} rows"
              + (f" (max_samples {max_samples})" if capped else ""), flush=True)
    return dataset


AUTO_LOGGING_POINTS = 100  # logging_steps 0 (auto): about this many points a run


def logging_steps(p: dict) -> float:
    """TrainingArguments' logging_steps from the form's: N, or for 0 (auto) the fraction 1/100 of the run,
    which the Trainer turns into every ceil(max_steps / 100) steps once it knows max_steps (from the epochs
    too): a 10-step run logs every step, a 1000-step run every 10. Old jobs without the parameter log every
    step."""
    chosen = p.get("logging_steps")
    if chosen is None:
        return 1
    return chosen if chosen >= 1 else 1 / AUTO_LOGGING_POINTS


ADAM_KEYS = ("adam_beta1", "adam_beta2", "adam_epsilon")  # TrainingArguments names, for SFTConfig and GRPOConfig


class TrainingDataError(RuntimeError):
    """Nothing (or not enough) is left to train on once the trainer prepared the data."""


def check_kept(given: int, kept: int, max_length: int | None, is_main: bool) -> None:
    """TRL drops the examples whose loss tokens all lie past `max_length` (a prompt that alone fills it): say
    how many, and stop with the reason when none is left (TRL's collator would fail on an empty batch)."""
    if kept == given:
        return
    if kept == 0:
        raise TrainingDataError(
            f"no example is left to train on: in all {given}, the prompt alone fills Maximum Sequence Length "
            f"({max_length} tokens), so nothing of the completion would be learned; raise Maximum Sequence Length "
            f"or shorten the prompts")
    if is_main:
        print(f"[tlab] max_length {max_length}: left out {given - kept} of {given} examples whose prompt alone "
              f"fills it", flush=True)


class NonFiniteTrainingError(RuntimeError):
    """The loss or the gradient norm became NaN or infinite: the job stops instead of training on."""


NON_FINITE_HINT = ("try a lower Learning Rate, a lower Max Grad Norm, float32 weights (Model Weights dtype) or "
                   "fp32 mixed precision, or a smaller batch; resume from an earlier checkpoint to keep the work done")


def precision_flags(precision: str) -> dict[str, bool]:
    # Explicit both ways: TRL's configs default bf16=True, which a CPU or an old GPU can't run.
    # logging_nan_inf_filter off: the Trainer would log a NaN loss as the average of earlier ones,
    # hiding it from the metrics and from FiniteGuard.
    return {"bf16": precision == "bf16", "fp16": precision == "fp16", "logging_nan_inf_filter": False}


def checkpointing_kwargs(config_cls, enabled: bool, params: dict | None = None) -> dict[str, Any]:
    """Activation (gradient) checkpointing under whichever name this transformers has:
    v5 renamed it, and TRL's configs default the old name to True. Under FSDP with its own
    activation checkpointing, the Trainer's is off (the two must not both wrap the layers)."""
    params = params or {}
    if params.get("distributed_strategy") == "fsdp" and params.get("fsdp_activation_checkpointing"):
        enabled = False
    fields = getattr(config_cls, "__dataclass_fields__", {})
    name = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    return {name: enabled, f"{name}_kwargs": {"use_reentrant": False} if enabled else None}


def finish(state) -> None:
    """Wait for every rank, then close the process group: a rank whose gloo/NCCL threads are
    still up at interpreter exit can abort ("terminate called without an active exception"),
    turning a finished training into a failed exit code."""
    state.wait_for_everyone()
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def write_result(job_dir: Path, **info: Any) -> None:
    write_json_atomic(job_dir / RESULT, {"finished": time.time(), **info})



# --- held-out evaluation (the shared set plugin_manifests/shared/held_out.json) ---------------------------

AUTO_EVALUATIONS = 10  # eval_steps 0 (auto): about this many evaluations a run


def eval_split_name(p: dict) -> str | None:
    """The dataset's split named for evaluation (`eval_split`), or None."""
    return (p.get("eval_split") or "").strip() or None


def held_out(train, evaluate, p: dict, is_main: bool):
    """(train rows, eval rows or None): with `val_size`, that many of the formatted rows (a fraction below 1, else a
    count) set aside at random with the job's seed, so every rank and every rerun holds out the same rows; else the
    named split's rows (`evaluate`, formatted the same way), or no evaluation. At most `max_eval_samples` of them
    are evaluated, taken with the same seed."""
    size = p.get("val_size") or 0
    if size > 0:
        total = len(train)
        parts = train.train_test_split(test_size=int(size) if size >= 1 else float(size), seed=p.get("seed") or 0,
                                       shuffle=True)
        train, evaluate = parts["train"], parts["test"]
        if is_main:
            print(f"[tlab] held out {len(evaluate)} of {total} rows for evaluation (val_size {size:g}, seed "
                  f"{p.get('seed') or 0}); training on {len(train)}", flush=True)
    elif evaluate is not None and is_main:
        print(f"[tlab] evaluating on the dataset's {eval_split_name(p)!r} split: {len(evaluate)} rows", flush=True)
    cap = p.get("max_eval_samples") or 0
    if evaluate is not None and 0 < cap < len(evaluate):  # GRPO generates for each at every evaluation
        total = len(evaluate)
        evaluate = evaluate.shuffle(seed=p.get("seed") or 0).select(range(cap))
        if is_main:
            print(f"[tlab] evaluating {cap} of those {total} rows (max_eval_samples {cap}, seed {p.get('seed') or 0})",
                  flush=True)
    return train, evaluate


def eval_settings(p: dict, evaluated: bool, metric: str, eval_batch: int, is_main: bool) -> dict[str, Any]:
    """TrainingArguments for the held-out evaluation: every `eval_steps` steps (0: a tenth of the run, which the
    Trainer rounds up to whole steps once it knows max_steps), the loss only (no logits gathered), and, for early
    stopping or the best checkpoint, the metric to compare (`metric`: eval_loss, lower is better; eval_reward,
    higher). With load_best_model_at_end, checkpoints are saved at every evaluation (save_steps = eval_steps):
    transformers requires save_steps to be a multiple of eval_steps, and it can load as best only an evaluation
    that has a checkpoint, so a multiple such as the default 500 against an eval every 2 steps would keep only
    the last step's. Aligning them here rather than refusing the form's save_steps (500 or 100 against an
    automatic interval) keeps the option usable with one click; the log says so. {} without evaluation."""
    if not evaluated:
        return {}
    every = p.get("eval_steps") or 0
    steps = every if every >= 1 else 1 / AUTO_EVALUATIONS
    out: dict[str, Any] = {"eval_strategy": "steps", "eval_steps": steps, "per_device_eval_batch_size": eval_batch,
                           "prediction_loss_only": True}
    best = bool(p.get("load_best_model_at_end"))
    if best or (p.get("early_stopping_patience") or 0) > 0:
        out.update(metric_for_best_model=metric, greater_is_better=not metric.endswith("loss"))
    if best:
        out["load_best_model_at_end"] = True
        save = p.get("save_steps")
        out["save_steps"] = steps
        if save != steps and is_main:
            print(f"[tlab] load_best_model_at_end: a checkpoint at every evaluation (save_steps "
                  f"{every if every >= 1 else 'auto, as eval_steps'} instead of {save})", flush=True)
    return out


def eval_callbacks(p: dict, evaluated: bool) -> list:
    """Evaluate at the last step too (the chart ends on an eval point), and stop early after
    `early_stopping_patience` evaluations without improvement (transformers' EarlyStoppingCallback)."""
    if not evaluated:
        return []
    from transformers import EarlyStoppingCallback

    from tlab_gradio.trainers.callbacks import EvaluateAtEnd

    found = [EvaluateAtEnd()]
    patience = p.get("early_stopping_patience") or 0
    if patience > 0:
        found.append(EarlyStoppingCallback(early_stopping_patience=patience))
    return found


def use_chat_template(tokenizer, p: dict, main: bool) -> None:
    """The `chat_template` given in place of the model's (checked before launch: preflight.chat_template); it is
    saved with the tokenizer, so the trained model keeps it."""
    text = p.get("chat_template")
    if isinstance(text, str) and text.strip():
        tokenizer.chat_template = text
        if main:
            print(f"[tlab] chat template: the one given ({len(text):,} characters), not the model's", flush=True)
