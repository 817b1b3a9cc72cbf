"""GRPO speed on one GPU: plain TRL (defaults, and the best plain setting) against the
GRPO Trainer (Multi GPU) plugin launched through the project's own launcher, same model,
prompts and reward. Prints and saves completion tokens/s, steps/s, peak memory, mean reward.

    python bench/grpo_bench.py --shape qwen2-0.5b --out bench/results/grpo-DATE-GPU.json

Each setting runs a warm-up step first; only the steps after it are timed. TRL settings run
in this process, one after another; the plugin runs as the app runs it (accelerate launch).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import harness  # noqa: E402
import shapes  # noqa: E402

COMPLETION_LEN = 512
NUM_GENERATIONS = 8


def prompts_file(folder: Path, rows: int = 2048) -> Path:
    """Question/answer rows from the bundled GRPO sample, repeated; the prompts are ~64-token questions."""
    src = [json.loads(line) for line in (REPO / "samples" / "grpo_arithmetic.jsonl").read_text().splitlines()]
    path = folder / "prompts.jsonl"
    with path.open("w") as fh:
        for i in range(rows):
            row = src[i % len(src)]
            fh.write(json.dumps({"question": row["question"][:64], "answer": row["answer"]}) + "\n")
    return path


def plain_dataset(path: Path):
    """What the plugin builds, done by hand for plain TRL: the format instructions, then the question."""
    import datasets

    from tlab_gradio.rewards import Markers

    instructions = Markers().format_instructions()
    ds = datasets.load_dataset("json", data_files=str(path), split="train")
    return ds.map(lambda r: {"prompt": f"{instructions}\n\n{r['question']}\n\n"}, remove_columns=["question"])


def summarise(records: list[dict], completions_per_step: int, skip: int) -> dict:
    """Tokens/s and steps/s over the logged steps after the first `skip` (warm-up).

    `records` holds one log per optimisation step. With a generation batch larger than one step's
    worth, TRL logs completion lengths and rewards only on the steps that generate: the others
    train on the last generated completions, so their length is carried forward."""
    length = None
    for r in records:  # carry the last generation's mean length onto the steps that reuse it
        length = r.get("completions/mean_length", length)
        r["_length"] = length
    timed = records[skip:]
    if len(timed) < 2:
        return {"error": f"only {len(timed)} timed steps"}
    seconds = timed[-1]["time"] - timed[0]["time"]
    tokens = sum(r["_length"] * completions_per_step for r in timed[1:])
    steps = len(timed) - 1
    rewards = [r["reward"] for r in timed[1:] if "reward" in r]
    return {
        "completion_tokens_per_s": tokens / seconds, "steps_per_s": steps / seconds, "timed_steps": steps,
        "seconds": seconds, "mean_reward": sum(rewards) / len(rewards) if rewards else None,
        "mean_completion_length": sum(r["_length"] for r in timed[1:]) / steps,
    }


def warmup_steps(completions_per_step: int, generation_batch: int | None) -> int:
    """Logged steps left out of the timing: the first (warm-up) step, or with a generation batch
    of c steps' worth, the first c - 1 so that the timed window is whole generate-and-train cycles."""
    cycle = (generation_batch or completions_per_step) // completions_per_step
    return max(1, cycle - 1)


def run_plain(name: str, model: Path, data: Path, out: Path, steps: int, **overrides) -> dict:
    import torch
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from tlab_gradio import rewards

    records: list[dict] = []

    class Clock(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:  # one per optimisation step (not the final summary)
                records.append({**logs, "time": time.time()})

    tok = AutoTokenizer.from_pretrained(model, padding_side="left")
    config = dict(output_dir=str(out / name), max_completion_length=COMPLETION_LEN, num_generations=NUM_GENERATIONS,
                  max_steps=steps, logging_steps=1, report_to=[], bf16=True, save_strategy="no",
                  disable_tqdm=True, seed=0)
    config.update(overrides)
    args = GRPOConfig(**config)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    trainer = GRPOTrainer(model=str(model), reward_funcs=rewards.trl_reward_funcs(["correctness"], rewards.Markers()),
                          args=args, train_dataset=plain_dataset(data), processing_class=tok, callbacks=[Clock()])
    trainer.train()
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps
    result = summarise(records, per_step, skip=warmup_steps(per_step, args.generation_batch_size))
    result.update(peak_gib=torch.cuda.max_memory_allocated() / 2**30, settings=overrides,
                  completions_per_step=per_step)
    del trainer
    torch.cuda.empty_cache()
    return result


def run_plugin(name: str, model: Path, data: Path, home: Path, steps: int, **params) -> dict:
    job = harness.plugin_job(home / name, {
        "plugin": "grpo_multi_gpu", "name": name, "model": str(model), "device": "cuda", "gpu_ids": "0",
        "dataset": {"source": "file", "name": str(data)}, "template": "{{question}}",
        "completion_template": "{{answer}}",
        "params": {"max_steps": steps, "logging_steps": 1, "report_to": "none", "system_template": "",
                   "max_completion_length": COMPLETION_LEN, "num_generations": NUM_GENERATIONS,
                   "reward_integer": False, "reward_strict_format": False, "reward_soft_format": False,
                   "reward_tag_count": False, "save_steps": 100000, **params}}, timeout=3600)
    if "error" in job:
        return job
    p = job["params"]
    per_step = p["per_device_train_batch_size"] * p["gradient_accumulation_steps"]
    result = summarise(job["records"], per_step,
                       skip=warmup_steps(per_step, p.get("generation_batch_size") or None))
    result.update(peak_gib=job["peak_gib"], settings=params, completions_per_step=per_step, command=job["command"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="qwen2-0.5b", choices=sorted(shapes.SHAPES))
    parser.add_argument("--settings", default="trl_defaults,trl_best,plugin_defaults")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    import torch

    work = Path(tempfile.mkdtemp(prefix="grpo-bench-"))
    model = shapes.build(args.shape, work / args.shape)
    data = prompts_file(work)
    settings = {
        # TRL's defaults: batch 8, accumulation 1, gradient checkpointing on.
        "trl_defaults": lambda: run_plain("trl_defaults", model, data, work, steps=4),
        # The best plain-TRL setting found before: no checkpointing, batch 32 x accumulation 8.
        "trl_best": lambda: run_plain("trl_best", model, data, work, steps=3, per_device_train_batch_size=32,
                                      gradient_accumulation_steps=8, gradient_checkpointing=False),
        "plugin_defaults": lambda: run_plugin("plugin_defaults", model, data, work, steps=4),
        "plugin_fp32": lambda: run_plugin("plugin_fp32", model, data, work, steps=3, model_dtype="float32",
                                          cache_implementation="dynamic"),
        "plugin_static": lambda: run_plugin("plugin_static", model, data, work, steps=3,
                                            cache_implementation="static"),
        "plugin_gen1024": lambda: run_plugin("plugin_gen1024", model, data, work, steps=8,
                                             generation_batch_size=1024),
    }
    results = {"shape": args.shape, "gpu": torch.cuda.get_device_name(0), "date": time.strftime("%Y-%m-%d"),
               "completion_length": COMPLETION_LEN, "num_generations": NUM_GENERATIONS, "settings": {}}
    for name in args.settings.split(","):
        started = time.time()
        try:
            results["settings"][name] = settings[name]()
        except Exception as exc:  # one failing setting must not lose the others' figures
            results["settings"][name] = {"error": f"{type(exc).__name__}: {exc}"}
        results["settings"][name]["wall_s"] = time.time() - started
        print(name, json.dumps(results["settings"][name]), flush=True)
        if args.out:
            args.out.write_text(json.dumps(results, indent=2) + "\n")
    s = results["settings"]

    def rate(k):
        return s.get(k, {}).get("completion_tokens_per_s")

    for k in s:
        if rate(k) and rate("trl_defaults"):
            s[k]["x_trl_defaults"] = rate(k) / rate("trl_defaults")
        if rate(k) and rate("trl_best"):
            s[k]["x_trl_best"] = rate(k) / rate("trl_best")
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
