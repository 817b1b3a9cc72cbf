"""The SFT plugin's GPU memory, measured against the app's estimate, over the settings the estimate
must follow: full fine-tune or LoRA, activation checkpointing on or off, padding-free or packed
batches, compiled or eager layers, batch size, two model shapes. One JSON report:

    python bench/memory_bench.py --out bench/results/memory-DATE-GPU.json

Every job runs through the app's service and launcher with the plugin's defaults otherwise. Every text
is longer than max_length, so every micro-batch holds exactly batch x max_length tokens: the worst
case the estimate is for. Each run records the estimate the form shows (`svc.memory_estimate`) and the
trainer's peaks: tensors (max_memory_allocated) and the allocator's (max_memory_reserved).
`tests/test_memory.py` checks the estimate against these figures. The rows are the settings of a long job
(compiled layers and flex attention set explicitly: `auto` leaves both off for a job of a few steps); `--budget-s`
starts no run after that many seconds, so one device call keeps what it measured (the first H200 call, 2026-12-02,
fitted 3 of the 12 rows: each job took 50-115 s with its compile).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import harness  # noqa: E402
import shapes  # noqa: E402

SEQ = 1024
# What `auto` picks for a long job on a GPU without flash-attn (compiled layers, flex attention): a run of a few
# steps would otherwise train uncompiled with sdpa (tlab_gradio/warmup.py). The eager rows set compile off.
LONG_JOB = {"torch_compile": "on", "attn_implementation": "flex_attention"}
FULL = {"use_lora": False, "learning_rate": 2e-5}
# name: (shape, batch, params)
RUNS = {
    "0.5b_full": ("qwen2-0.5b", 8, {**FULL, "gradient_checkpointing": "off"}),
    "0.5b_full_ckpt": ("qwen2-0.5b", 8, {**FULL, "gradient_checkpointing": "on"}),
    "0.5b_full_packing": ("qwen2-0.5b", 8, {**FULL, "gradient_checkpointing": "off", "packing": True}),
    "0.5b_full_b4": ("qwen2-0.5b", 4, {**FULL, "gradient_checkpointing": "off"}),
    "0.5b_full_eager": ("qwen2-0.5b", 8, {**FULL, "gradient_checkpointing": "off", "torch_compile": "off"}),
    "0.5b_full_ckpt_eager": ("qwen2-0.5b", 8, {**FULL, "gradient_checkpointing": "on", "torch_compile": "off"}),
    "0.5b_lora": ("qwen2-0.5b", 8, {"gradient_checkpointing": "off"}),
    "0.5b_lora_ckpt": ("qwen2-0.5b", 8, {"gradient_checkpointing": "on"}),
    "1.5b_full": ("qwen2-1.5b", 8, {**FULL, "gradient_checkpointing": "off"}),
    "1.5b_full_ckpt": ("qwen2-1.5b", 8, {**FULL, "gradient_checkpointing": "on"}),
    "1.5b_lora": ("qwen2-1.5b", 8, {"gradient_checkpointing": "off"}),
    "1.5b_lora_ckpt": ("qwen2-1.5b", 8, {"gradient_checkpointing": "on"}),
}


def long_texts(folder: Path, rows: int = 400) -> Path:
    """Texts of 2 x SEQ byte-tokens: truncated, every row is exactly max_length tokens."""
    path = folder / "long.jsonl"
    line = ("every row is longer than the longest sequence the job keeps " * 64)[: 2 * SEQ]
    path.write_text("".join(json.dumps({"text": line}) + "\n" for _ in range(rows)))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated run names")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--tiny", action="store_true", help="every run on the tiny shape (a CPU smoke of this script)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--budget-s", type=float, default=0, help="start no run after this many seconds (0: no limit)")
    args = ap.parse_args()
    began = time.time()
    import torch

    work = Path(tempfile.mkdtemp(prefix="memory-bench-"))
    data = long_texts(work)
    report = {"date": time.strftime("%Y-%m-%d"), "seq": SEQ, "steps": args.steps,
              "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
              "total_gib": torch.cuda.get_device_properties(0).total_memory / 2**30 if args.device == "cuda" else None,
              "torch": torch.__version__, "runs": {}}
    import transformers
    import trl
    report.update(transformers=transformers.__version__, trl=trl.__version__)
    from tlab_gradio.service import Service

    chosen = args.only.split(",") if args.only else list(RUNS)
    for name in chosen:
        if args.budget_s and time.time() - began > args.budget_s:
            report["runs"][name] = {"skipped": f"the call's budget ({args.budget_s:g} s) was spent"}
            continue
        shape, batch, params = RUNS[name]
        shape = "tiny" if args.tiny else shape
        params = {**params, **({"attn_implementation": "sdpa"} if args.device == "cpu" else {})}
        model = shapes.build(shape, work / shape)
        home = work / name
        request = {"plugin": "llama_sft_multi_gpu", "name": name, "model": str(model), "device": args.device,
                   "gpu_ids": "0" if args.device == "cuda" else None,
                   "dataset": {"source": "file", "name": str(data)}, "template": "{{text}}",
                   "completion_template": "",
                   "params": {"max_steps": args.steps, "logging_steps": 1, "report_to": "none",
                              "save_steps": 100000, "max_length": SEQ, "per_device_train_batch_size": batch,
                              **LONG_JOB, **params}}
        started = time.time()
        try:
            import os
            os.environ["TLAB_HOME"] = str(home)
            estimate = Service().memory_estimate(request)
            job = harness.plugin_job(home, request, timeout=900)
            steps = job["records"]
            result = {"shape": shape, "batch": batch, "params": params, "estimate": estimate,
                      "peak_allocated_gib": max((r.get("peak_memory_gb", 0) for r in steps), default=None),
                      "peak_reserved_gib": max((r.get("peak_reserved_gb", 0) for r in steps), default=None),
                      "tokens_per_step": [r.get("num_tokens") for r in steps][:2],
                      "plan": job.get("plan"), "state": job.get("state", "COMPLETE")}
            if "error" in job:
                result.update(error=job["error"], log_tail=job["log_tail"][-20:])
        except Exception as exc:  # keep the other runs' figures
            result = {"error": f"{type(exc).__name__}: {exc}"}
        result["wall_s"] = round(time.time() - started, 1)
        report["runs"][name] = result
        print(name, json.dumps({k: v for k, v in result.items() if k != "log_tail"})[:900], flush=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        shutil.rmtree(home, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)  # a warm machine keeps /tmp


if __name__ == "__main__":
    main()
