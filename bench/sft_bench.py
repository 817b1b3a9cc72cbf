"""SFT speed on one GPU, same model and data for every setting: plain TRL SFTTrainer with its
defaults, the best plain-TRL setting available here, and the SFT plugin through the app's own
launcher with its defaults (and as a full fine-tune). Real (non-padding) tokens/s, MFU against
the measured bf16 matmul peak, peak memory, final loss, and the ratios.

    python bench/sft_bench.py --shape qwen2-0.5b --out bench/results/sft-DATE-GPU.json

MFU the PaLM/torchtitan way: tokens/s x (6N + 12 L H d S) / peak, N the matmul parameters.
"""
from __future__ import annotations

import argparse
import json
import random
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
WORDS = "the model learns from text of every length while the trainer counts real tokens only".split()


def data_file(folder: Path, rows: int = 4000, seed: int = 0) -> Path:
    """Texts of 64 to 1024 byte-tokens, uniformly: the varied lengths packing is for."""
    rng = random.Random(seed)
    path = folder / "texts.jsonl"
    with path.open("w") as fh:
        for _ in range(rows):
            n = rng.randint(64, SEQ)
            text = ""
            while len(text) < n:
                text += rng.choice(WORDS) + " "
            fh.write(json.dumps({"text": text[:n]}) + "\n")
    return path


def bf16_peak() -> float:
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 10 * 2 * 8192**3 / (time.perf_counter() - start)


def rate(records: list[dict], skip: int) -> dict:
    timed = [r for r in records if "num_tokens" in r][skip:]
    if len(timed) < 2:
        return {"error": f"only {len(timed)} timed steps"}
    seconds = timed[-1]["time"] - timed[0]["time"]
    return {"tokens_per_s": (timed[-1]["num_tokens"] - timed[0]["num_tokens"]) / seconds,
            "timed_steps": len(timed) - 1, "final_loss": timed[-1].get("loss")}


def run_plain(name: str, model: Path, data: Path, out: Path, steps: int, **overrides) -> dict:
    import datasets
    import torch
    from transformers import AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    records: list[dict] = []

    class Clock(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                records.append({**logs, "time": time.time()})

    config = dict(output_dir=str(out / name), max_steps=steps, logging_steps=1, report_to=[], save_strategy="no",
                  per_device_train_batch_size=8, max_length=SEQ, disable_tqdm=True, seed=0)
    config.update(overrides)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    trainer = SFTTrainer(model=str(model), args=SFTConfig(**config),
                         train_dataset=datasets.load_dataset("json", data_files=str(data), split="train"),
                         processing_class=AutoTokenizer.from_pretrained(model), callbacks=[Clock()])
    trainer.train()
    result = rate(records, skip=3)
    result.update(peak_gib=torch.cuda.max_memory_allocated() / 2**30, settings=overrides)
    del trainer
    torch.cuda.empty_cache()
    return result


def run_plugin(name: str, model: Path, data: Path, home: Path, steps: int, **params) -> dict:
    job = harness.plugin_job(home / name, {
        "plugin": "llama_sft_multi_gpu", "name": name, "model": str(model), "device": "cuda", "gpu_ids": "0",
        "dataset": {"source": "file", "name": str(data)}, "template": "{{text}}", "completion_template": "",
        "params": {"max_steps": steps, "logging_steps": 1, "report_to": "none", "save_steps": 100000,
                   "max_length": SEQ, **params}}, timeout=1800)
    if "error" in job:
        return job
    result = rate(job["records"], skip=3)
    result.update(peak_gib=job["peak_gib"], settings=params, command=job["command"])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="qwen2-0.5b", choices=sorted(shapes.SHAPES))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--settings", default="trl_defaults,trl_best,plugin_defaults,plugin_full")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    import torch
    from transformers import AutoConfig

    work = Path(tempfile.mkdtemp(prefix="sft-bench-"))
    model = shapes.build(args.shape, work / args.shape)
    data = data_file(work)
    cfg = AutoConfig.from_pretrained(model)
    flops_per_token = 6 * shapes.matmul_params(cfg) + 12 * cfg.num_hidden_layers * cfg.hidden_size * SEQ
    peak = bf16_peak()
    settings = {
        "trl_defaults": lambda: run_plain("trl_defaults", model, data, work, args.steps),
        # Best plain setting reachable without extra packages: packing (bfd), checkpointing off.
        "trl_best": lambda: run_plain("trl_best", model, data, work, args.steps, packing=True,
                                      gradient_checkpointing=False),
        "plugin_defaults": lambda: run_plugin("plugin_defaults", model, data, work, args.steps),
        "plugin_full": lambda: run_plugin("plugin_full", model, data, work, args.steps, use_lora=False),
    }
    results = {"shape": args.shape, "gpu": torch.cuda.get_device_name(0), "date": time.strftime("%Y-%m-%d"),
               "bf16_peak_tflops": peak / 1e12, "flops_per_token": flops_per_token, "settings": {}}
    for name in args.settings.split(","):
        started = time.time()
        try:
            r = settings[name]()
        except Exception as exc:  # keep the other settings' figures
            r = {"error": f"{type(exc).__name__}: {exc}"}
        r["wall_s"] = time.time() - started
        if r.get("tokens_per_s"):
            r["mfu"] = r["tokens_per_s"] * flops_per_token / peak
        results["settings"][name] = r
        print(name, json.dumps(r)[:700], flush=True)
        if args.out:
            args.out.write_text(json.dumps(results, indent=2) + "\n")
    s = results["settings"]
    for name, r in s.items():
        for base in ("trl_defaults", "trl_best"):
            if r.get("tokens_per_s") and s.get(base, {}).get("tokens_per_s"):
                r[f"x_{base}"] = r["tokens_per_s"] / s[base]["tokens_per_s"]
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
