"""Where an SFT step's time goes: plain TRL with the plugin's GPU settings, in this process.

Each variant trains a few steps on sft_bench.py's data and model and reports the median step time,
tokens/s, and (with --profile) the profiler's CPU-side and GPU-side totals and busiest kernels for
steps 8-11. A step whose CPU time exceeds its GPU time is launch-bound: the GPU waits for Python.

    python bench/sft_profile.py --shape qwen2-0.5b --variants flex,flex_b16,flex_compile --profile flex
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sft_bench  # noqa: E402
import shapes  # noqa: E402

FLEX = dict(model_init_kwargs={"attn_implementation": "flex_attention"})
CPU = dict(model_init_kwargs={"attn_implementation": "sdpa"}, bf16=False, use_cpu=True)
BASE = dict(packing=True, gradient_checkpointing=False, bf16=True, learning_rate=2e-5, seed=42,
            per_device_train_batch_size=8, max_length=1024, logging_steps=1)
VARIANTS = {
    "sdpa": dict(model_init_kwargs={"attn_implementation": "sdpa"}),
    "flex": dict(model_init_kwargs={"attn_implementation": "flex_attention"}),
    "flex_b16": dict(model_init_kwargs={"attn_implementation": "flex_attention"}, per_device_train_batch_size=16),
    "flex_log10": dict(model_init_kwargs={"attn_implementation": "flex_attention"}, logging_steps=10),
    "flex_compile": dict(model_init_kwargs={"attn_implementation": "flex_attention"}, torch_compile=True),
    "flex_liger": dict(model_init_kwargs={"attn_implementation": "flex_attention"}, use_liger_kernel=True),
    # torch.compile of each decoder layer in place (the plugin's common.compile_layers: the layers share one
    # graph), on the flat packed row of varying length (dynamic after the first) or padded to one length
    "flex_layers": dict(FLEX, _compile_layers={}),
    "flex_layers_static": dict(FLEX, _compile_layers={}, pad_to_multiple_of=8 * 1024),
    "flex_layers_cudagraphs": dict(FLEX, _compile_layers={"mode": "reduce-overhead"}, pad_to_multiple_of=8 * 1024),
    # padding-free without packing: a padded batch's examples end to end, so the same samples per step
    "pf": dict(FLEX, packing=False, _padding_free=True),
    "pf_layers": dict(FLEX, packing=False, _padding_free=True, _compile_layers={}),
    "pf_layers_pad1024": dict(FLEX, packing=False, _padding_free=True, _compile_layers={}, pad_to_multiple_of=1024),
    # the same paths on a CPU (sdpa: PyTorch has no flex backward there), to try the harness without a GPU
    "cpu_sdpa": dict(CPU),
    "cpu_sdpa_layers": dict(CPU, _compile_layers={}),
    "cpu_pf_layers": dict(CPU, packing=False, _padding_free=True, _compile_layers={}),
}


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run(name: str, model: Path, data: Path, work: Path, steps: int, profile: bool) -> dict:
    import datasets
    import torch
    from transformers import AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    marks: list[float] = []
    tokens: list[int] = []
    prof = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            sync()
            marks.append(time.perf_counter())
            if profile and state.global_step == 8:
                prof["p"] = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                               torch.profiler.ProfilerActivity.CUDA])
                prof["p"].__enter__()
            if profile and state.global_step == 12:
                prof["p"].__exit__(None, None, None)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "num_tokens" in logs:
                tokens.append(int(logs["num_tokens"]))
            if logs and "loss" in logs:
                losses.append(round(float(logs["loss"]), 5))

    losses: list[float] = []
    config = {**BASE, **VARIANTS[name]}
    compile_layers = config.pop("_compile_layers", None)
    padding_free = config.pop("_padding_free", False)
    config["model_init_kwargs"] = {"dtype": torch.float32, **config.get("model_init_kwargs", {})}
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    torch._dynamo.reset()  # each variant compiles from scratch: its first step shows the compile cost
    trainer = SFTTrainer(model=str(model), args=SFTConfig(output_dir=str(work / name), max_steps=steps,
                                                          report_to=[], save_strategy="no", disable_tqdm=True,
                                                          **config),
                         train_dataset=datasets.load_dataset("json", data_files=str(data), split="train"),
                         processing_class=AutoTokenizer.from_pretrained(model), callbacks=[Clock()])
    if compile_layers is not None:
        from tlab_gradio.trainers import common

        print(f"compiled {common.compile_layers(trainer.model, **compile_layers)} layers", flush=True)
    if padding_free:  # as the plugin does: built padded (TRL truncates), then the collator flattens
        trainer.data_collator.padding_free = True
    started = time.perf_counter()
    trainer.train()
    step_s = [b - a for a, b in zip(marks[4:], marks[5:])]
    out = {"median_step_s": statistics.median(step_s), "first_step_s": marks[0] - started,
           "first5_steps_s": marks[4] - started, "losses": losses,
           "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None}
    try:
        from torch._dynamo.utils import counters

        out["dynamo"] = {k: dict(v) for k, v in counters.items() if k in ("stats", "recompiles", "graph_break")}
        out["dynamo"]["graph_break"] = {k[:120]: v for k, v in out["dynamo"].get("graph_break", {}).items()}
    except Exception:  # noqa: BLE001 - diagnostics only
        pass
    if len(tokens) >= 2:
        out["tokens_per_s"] = (tokens[-1] - tokens[4]) / (marks[-1] - marks[4]) if len(tokens) > 4 else None
    if "p" in prof:
        events = prof["p"].key_averages()
        out["profile_cpu_ms_per_step"] = sum(e.self_cpu_time_total for e in events) / 4 / 1e3
        out["profile_gpu_ms_per_step"] = sum(getattr(e, "self_device_time_total", 0) for e in events) / 4 / 1e3
        out["profile_kernels_per_step"] = sum(e.count for e in events if getattr(e, "self_device_time_total", 0)) / 4
        out["profile_tables"] = {"by_gpu_time": events.table(sort_by="self_device_time_total", row_limit=30),
                                 "by_cpu_time": events.table(sort_by="self_cpu_time_total", row_limit=30)}
    del trainer
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="qwen2-0.5b", choices=sorted(shapes.SHAPES))
    ap.add_argument("--variants", default="flex,flex_b16,flex_log10,flex_compile")
    ap.add_argument("--profile", default="flex", help="comma-separated variants to profile")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sft-profile-"))
    model = shapes.build(args.shape, work / args.shape)
    data = sft_bench.data_file(work, rows=1500)
    results = {}
    for name in args.variants.split(","):
        started = time.time()
        try:
            results[name] = run(name, model, data, work, args.steps, name in args.profile.split(","))
        except Exception as exc:
            results[name] = {"error": f"{type(exc).__name__}: {str(exc)[:400]}"}
        results[name]["wall_s"] = time.time() - started
        print(name, json.dumps({k: v for k, v in results[name].items() if k != "profile_tables"}), flush=True)
        if args.out:
            args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
