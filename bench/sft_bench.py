"""SFT speed on one GPU, same model and data for every setting, in one process call:

  trl_defaults        plain TRL SFTTrainer with its defaults (pad to longest, checkpointing on)
  trl_best            the best plain-TRL setting: packing (bfd), Liger kernels where installed, checkpointing off
  plugin              the SFT plugin through the app's own service and launcher, with its defaults; the
                      task matched to plain TRL's: a full fine-tune, the same learning rate, schedule and seed
  plugin_packing      `plugin` with packing on: its fastest layout, the same rows per step as trl_best
  plugin_lora         the plugin exactly as a user gets it (LoRA), for reference
  plugin_capped       `plugin` with max_gpu_memory_gb=24: the defaults must adapt, not run out of memory

Real (non-padding) tokens/s, MFU against the measured bf16 matmul peak, peak memory, final loss, the
ratios plugin/trl_defaults and plugin/trl_best, and each setting's loss curve against tokens seen,
compared with plain TRL's at equal tokens (`loss_vs_trl`; a PNG of the curves where matplotlib is).

    python bench/sft_bench.py --shape qwen2-0.5b --out bench/results/sft-DATE-GPU.json

Warm-up: one short untimed plain-TRL run in this process (CUDA, cuBLAS, allocator), and one short
untimed plugin job (its kernels compiled into the on-disk caches the timed job reuses); every setting
also skips its first steps. MFU the PaLM/torchtitan way: tokens/s x (6N + 12 L H d S) / peak, N the
matmul parameters (LM head in, input embedding out). `--device cpu --shape tiny` is the CI smoke.
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import random
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
BATCH = 8
LR = 2e-5  # plain TRL's default; the plugin is given the same, with the same schedule and seed
SEED = 42
SKIP = 5  # steps left out of the timing (first steps allocate and compile)
WORDS = "the model learns from text of every length while the trainer counts real tokens only".split()


def data_file(folder: Path, rows: int = 4000, seed: int = 0, seq: int = SEQ) -> Path:
    """Texts of 64 to `seq` byte-tokens, uniformly: the varied lengths packing is for."""
    rng = random.Random(seed)
    path = folder / "texts.jsonl"
    with path.open("w") as fh:
        for _ in range(rows):
            n = rng.randint(min(64, seq), seq)
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


def curve(records: list[dict]) -> list[list[float]]:
    """(tokens seen, loss) per step; TRL logs the running token count with each step's loss."""
    return [[r["num_tokens"], r["loss"]] for r in records if "num_tokens" in r and "loss" in r]


def loss_at(points: list[list[float]], tokens: float) -> float | None:
    """The loss curve linearly interpolated at `tokens`, or None outside it."""
    for (t0, l0), (t1, l1) in zip(points, points[1:]):
        if t0 <= tokens <= t1:
            return l0 + (l1 - l0) * (tokens - t0) / (t1 - t0) if t1 > t0 else l0
    return None


def compare(points: list[list[float]], reference: list[list[float]]) -> dict | None:
    """Mean and largest |loss - reference loss| at the reference's token counts (second half: the first
    steps' losses differ most with batch composition, and both start from the same random init)."""
    half = reference[len(reference) // 2:]
    diffs = [abs(v - ref) for t, ref in half if (v := loss_at(points, t)) is not None]
    if not diffs:
        return None
    return {"mean_abs_diff": sum(diffs) / len(diffs), "max_abs_diff": max(diffs), "points": len(diffs),
            "reference_mean": sum(ref for _, ref in half) / len(half)}


def run_plain(name: str, model: Path, data: Path, out: Path, steps: int, on_cpu: bool, **overrides) -> dict:
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
                  per_device_train_batch_size=BATCH, max_length=SEQ, disable_tqdm=True, seed=SEED,
                  learning_rate=LR, use_cpu=on_cpu)
    if on_cpu:
        config.update(bf16=False)
    config.update(overrides)
    if not on_cpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    trainer = SFTTrainer(model=str(model), args=SFTConfig(**config),
                         train_dataset=datasets.load_dataset("json", data_files=str(data), split="train"),
                         processing_class=AutoTokenizer.from_pretrained(model), callbacks=[Clock()])
    trainer.train()
    result = rate(records, skip=min(SKIP, steps // 3))
    result.update(settings=overrides, curve=curve(records),
                  peak_gib=None if on_cpu else torch.cuda.max_memory_allocated() / 2**30)
    del trainer
    gc.collect()  # the trainer's reference cycles hold the model and optimiser: 24 GiB at 1.5B
    if not on_cpu:  # ...which a plugin job launched next would plan without (it saw 48.6 of 79 GiB free)
        torch.cuda.empty_cache()
    return result


def run_plugin(name: str, model: Path, data: Path, home: Path, steps: int, device: str, **params) -> dict:
    request = {
        "plugin": "llama_sft_multi_gpu", "name": name, "model": str(model), "device": device,
        "gpu_ids": "0" if device == "cuda" else None,
        "dataset": {"source": "file", "name": str(data)}, "template": "{{text}}", "completion_template": "",
        # compile on a GPU: the bench's few dozen steps stand for a long job, where `auto` compiles (under 100
        # planned steps it does not: tlab_gradio/warmup.py)
        "params": {"max_steps": steps, "logging_steps": 1, "report_to": "none", "save_steps": 100000,
                   "max_length": SEQ, "per_device_train_batch_size": BATCH,
                   **({"torch_compile": "on"} if device == "cuda" else {}), **params}}
    job = harness.plugin_job(home, request, timeout=1800)
    if "error" in job:
        return job
    result = rate(job["records"], skip=min(SKIP, steps // 3))
    result.update(peak_gib=job["peak_gib"], settings=params, command=job["command"], curve=curve(job["records"]),
                  plan=job["plan"])
    return result


def main() -> None:
    global SEQ
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="qwen2-0.5b", choices=sorted(shapes.SHAPES))
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--seq", type=int, default=SEQ)
    ap.add_argument("--settings", default="trl_defaults,trl_best,plugin,plugin_lora,plugin_capped")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,…",
                    help="an extra plugin setting on plain TRL's task, e.g. plugin_sdpa:attn_implementation=sdpa "
                         "(values read as JSON where they parse); timed after the named settings")
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--recompute", type=Path, metavar="JSON",
                    help="no run: redo ratios, comparisons, table and plot of a saved result (e.g. a run its call's "
                         "time limit stopped before the end), written to --out or in place")
    args = ap.parse_args()
    if args.recompute:
        results = finish(json.loads(args.recompute.read_text()))
        out = args.out or args.recompute
        out.write_text(json.dumps(results, indent=2) + "\n")
        plot(results["settings"], out)
        print(table(results))
        return
    SEQ = args.seq
    on_cpu = args.device == "cpu"
    import torch
    from transformers import AutoConfig

    work = Path(tempfile.mkdtemp(prefix="sft-bench-"))
    model = shapes.build(args.shape, work / args.shape)
    data = data_file(work, seq=SEQ)
    cfg = AutoConfig.from_pretrained(model)
    flops_per_token = 6 * shapes.matmul_params(cfg) + 12 * cfg.num_hidden_layers * cfg.hidden_size * SEQ
    peak = None if on_cpu else bf16_peak()
    liger = importlib.util.find_spec("liger_kernel") is not None and not on_cpu
    same_task = {"use_lora": False, "learning_rate": LR, "lr_scheduler_type": "linear", "warmup_steps": 0,
                 "seed": SEED}
    settings = {
        "trl_defaults": lambda: run_plain("trl_defaults", model, data, work, args.steps, on_cpu),
        "trl_best": lambda: run_plain("trl_best", model, data, work, args.steps, on_cpu, packing=True,
                                      gradient_checkpointing=False, **({"use_liger_kernel": True} if liger else {})),
        "plugin": lambda: run_plugin("plugin", model, data, work / "plugin", args.steps, args.device, **same_task),
        "plugin_packing": lambda: run_plugin("plugin_packing", model, data, work / "plugin_packing", args.steps,
                                             args.device, **same_task, packing=True),
        "plugin_lora": lambda: run_plugin("plugin_lora", model, data, work / "plugin_lora", args.steps, args.device),
        "plugin_capped": lambda: run_plugin("plugin_capped", model, data, work / "plugin_capped", args.steps,
                                            args.device, **same_task, max_gpu_memory_gb=24),
    }
    chosen = args.settings.split(",")
    for spec in args.variant:
        name, _, pairs = spec.partition(":")
        overrides = dict(pair.split("=", 1) for pair in pairs.split(",") if pair)
        overrides = {k: _value(v) for k, v in overrides.items()}
        settings[name] = (lambda n=name, o=overrides: run_plugin(n, model, data, work / n, args.steps, args.device,
                                                                **{**same_task, **o}))
        chosen.append(name)
    if on_cpu and "plugin_capped" in chosen:
        chosen.remove("plugin_capped")  # a memory cap is a GPU setting
    results = {"shape": args.shape, "device": args.device, "date": time.strftime("%Y-%m-%d"), "seq": SEQ,
               "batch": BATCH, "steps": args.steps, "skip": SKIP, "liger_installed": liger,
               "gpu": None if on_cpu else torch.cuda.get_device_name(0),
               "bf16_peak_tflops": peak and peak / 1e12, "flops_per_token": flops_per_token, "settings": {}}
    if not args.no_warmup:
        started = time.time()
        run_plain("warmup", model, data, work, 3, on_cpu)
        if any(n.startswith("plugin") for n in chosen):
            run_plugin("warmup_plugin", model, data, work / "warmup_plugin", 3, args.device, **same_task)
        results["warmup_s"] = time.time() - started

    def save():
        if args.out:
            args.out.write_text(json.dumps(results, indent=2) + "\n")

    for name in chosen:
        started = time.time()
        try:
            r = settings[name]()
        except Exception as exc:  # keep the other settings' figures
            r = {"error": f"{type(exc).__name__}: {exc}"}
        r["wall_s"] = time.time() - started
        if r.get("tokens_per_s") and peak:
            r["mfu"] = r["tokens_per_s"] * flops_per_token / peak
        results["settings"][name] = r
        print(name, json.dumps({k: v for k, v in r.items() if k != "curve"})[:700], flush=True)
        save()
    finish(results)
    save()
    plot(results["settings"], args.out)
    print(table(results))
    shutil.rmtree(work, ignore_errors=True)  # the model and every job's folder: a warm machine keeps /tmp


def finish(results: dict) -> dict:
    """Ratios against both plain-TRL settings, and each curve compared with theirs at equal tokens:
    `loss_vs_trl` (defaults: one sample per row, so fewer tokens per optimiser step than packing) and
    `loss_vs_trl_best` (packing, the same rows per step as the plugin)."""
    s = results["settings"]
    for name, r in s.items():
        for base in ("trl_defaults", "trl_best"):
            if r.get("tokens_per_s") and s.get(base, {}).get("tokens_per_s"):
                r[f"x_{base}"] = r["tokens_per_s"] / s[base]["tokens_per_s"]
            reference = s.get(base, {}).get("curve")
            key = "loss_vs_trl" if base == "trl_defaults" else "loss_vs_trl_best"
            if reference and r.get("curve") and name != base:
                r[key] = compare(r["curve"], reference)
    return results


def _value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def table(results: dict) -> str:
    rows = ["| setting | tokens/s | MFU | peak GiB | final loss | x TRL defaults | x best TRL | "
            "loss vs TRL defaults (mean abs) | loss vs best TRL (mean abs) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in results["settings"].items():
        if "error" in r:
            rows.append(f"| {name} | error: {r['error'][:80]} | | | | | | | |")
            continue

        def f(v, spec):
            return format(v, spec) if isinstance(v, (int, float)) else "-"

        cmp = (r.get("loss_vs_trl") or {}).get("mean_abs_diff")
        cmp_best = (r.get("loss_vs_trl_best") or {}).get("mean_abs_diff")
        rows.append(f"| {name} | {f(r.get('tokens_per_s'), ',.0f')} | {f(r.get('mfu'), '.1%')} | "
                    f"{f(r.get('peak_gib'), '.1f')} | {f(r.get('final_loss'), '.3f')} | "
                    f"{f(r.get('x_trl_defaults'), '.2f')} | {f(r.get('x_trl_best'), '.2f')} | {f(cmp, '.3f')} | "
                    f"{f(cmp_best, '.3f')} |")
    return "\n".join(rows)


def plot(settings: dict, out: Path | None) -> None:
    """Loss against tokens seen, every setting on one chart, beside the JSON."""
    if out is None or importlib.util.find_spec("matplotlib") is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, r in settings.items():
        if r.get("curve"):  # plain TRL wide and dashed under the plugin's lines: curves that match stay visible
            style = dict(linestyle="--", linewidth=3, alpha=0.6) if name.startswith("trl") else dict(linewidth=1.2)
            ax.plot([t / 1e6 for t, _ in r["curve"]], [v for _, v in r["curve"]], label=name, **style)
    ax.set_xlabel("tokens seen (millions)")
    ax.set_ylabel("training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=100)


if __name__ == "__main__":
    main()
