"""Unsloth GRPO plugin against the GRPO Trainer (Multi GPU) plugin on one GPU, both run the
way the app runs them (Service().start_job, accelerate launch), on the same random-initialised
Qwen2-0.5B shape and the bundled GRPO sample, with the same generations, batch, completion
length and number of steps. Prints and writes one JSON report: per run its state, steps,
steps/s and completion tokens/s after the warm-up steps, peak GPU memory, mean reward, the
command, the world-size lines, and the log tail when it failed.

The Unsloth plugin runs in its own environment ($TLAB_HOME/envs/unsloth, normally made by the
Plugins tab's Install). Where packages travel as wheels (PYTHONPATH) instead, --device-env makes
that environment a real venv over this interpreter's packages: a .pth adds this interpreter's
site-packages, and each pinned requirement's dist-info (the one this interpreter imports) is
linked into the venv, because the app's readiness check reads versions there.

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl_unsloth/*.whl
    PYTHONPATH=/tmp/site UNSLOTH_DISABLE_STATISTICS=1 HF_HUB_OFFLINE=1 \\
        python3 bench/unsloth_bench.py --device-env --out report.json

Each job's whole log is copied beside the report (report-NAME.log).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import site
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import harness  # noqa: E402

WARMUP_STEPS = 2
COMMON = {"max_steps": 10, "logging_steps": 1, "report_to": "none", "save_steps": 100000, "num_generations": 8,
          "per_device_train_batch_size": 32, "gradient_accumulation_steps": 1, "max_completion_length": 256}
RUNS = {
    "unsloth_4bit": ("unsloth_grpo", {"load_in_4bit": True}),  # the plugin's defaults: 4-bit base, LoRA r16
    "grpo_multi_gpu": ("grpo_multi_gpu", {}),  # full model, bf16 weights, compiled static cache
    "unsloth_16bit": ("unsloth_grpo", {"load_in_4bit": False}),
}


def device_env(home: Path, manifest) -> list[str]:
    """Make the plugin's environment a venv that imports what this interpreter imports."""
    from packaging.requirements import Requirement

    from tlab_gradio import installer

    env = home / "envs" / manifest.environment
    if not (env / "bin" / "python").exists():
        made = subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)]).returncode == 0
        if not made:  # no venv module: bin/python runs this interpreter, the folder only holds the metadata
            python = env / "bin" / "python"
            python.parent.mkdir(parents=True, exist_ok=True)
            python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
            python.chmod(0o755)
            (env / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages").mkdir(parents=True)
    site_dir = next((env / "lib").glob("python*/site-packages"))
    (site_dir / "device_site.pth").write_text(
        "".join(f"import site; site.addsitedir({p!r})\n" for p in site.getsitepackages()))
    linked = []
    for line in installer.requirement_lines(manifest):
        dist = metadata.distribution(Requirement(line).name)
        source = Path(dist._path)  # the dist-info folder this interpreter reads
        link = site_dir / source.name
        if not link.exists():
            link.symlink_to(source)
        linked.append(f"{dist.metadata['Name']}=={dist.version}")
    return linked


def summarise(svc, job_id: int, started: float, params: dict) -> dict:
    job = svc.jobs.get(job_id)
    steps = [r for r in harness.records(job.job_dir) if "loss" in r]  # one per optimisation step, not the summary
    log = svc.job_log(job_id, 400)
    out = {"state": job.state, "reason": job.reason, "exit_code": job.exit_code,
           "command": " ".join(job.command or []), "steps": max((r["step"] for r in steps), default=0),
           "world_size_lines": harness.world_size_lines(log),
           "unsloth_lines": [x for x in log if "Unsloth" in x][:20],
           "peak_memory_gb": max((r.get("peak_memory_gb", 0) for r in steps), default=None),
           "wall_s": round(time.time() - started, 1), "params": params}
    start = next((r for r in steps if r["step"] == WARMUP_STEPS), None)
    timed = [r for r in steps if r["step"] > WARMUP_STEPS]
    if start and timed:
        seconds = timed[-1]["time"] - start["time"]
        lengths = [r["completions/mean_length"] for r in timed if "completions/mean_length" in r]
        rewards = [r["reward"] for r in timed if "reward" in r]
        per_step = params["per_device_train_batch_size"] * params["gradient_accumulation_steps"]
        out.update(timed_steps=len(timed), timed_seconds=round(seconds, 2),
                   steps_per_s=len(timed) / seconds,
                   completion_tokens_per_s=sum(lengths) * per_step / seconds if len(lengths) == len(timed) else None,
                   mean_completion_length=sum(lengths) / len(lengths) if lengths else None,
                   mean_reward=sum(rewards) / len(rewards) if rewards else None)
    if job.state != "COMPLETE":
        out["log_tail"] = log[-60:]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--runs", default="unsloth_4bit,grpo_multi_gpu", help=f"comma-separated, of {list(RUNS)}")
    ap.add_argument("--shape", default="qwen2-0.5b")
    ap.add_argument("--steps", type=int, default=COMMON["max_steps"])
    ap.add_argument("--timeout", type=float, default=600, help="seconds per job; a job still running is stopped")
    ap.add_argument("--device-env", action="store_true", help="make the Unsloth environment over this interpreter")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="unsloth-bench-"))
    os.environ["TLAB_HOME"] = str(work / "home")
    import shapes

    from tlab_gradio.jobs import FINISHED
    from tlab_gradio.service import Service

    svc = Service()
    report: dict = {"gpu_info": svc.gpu_info(), "common": {**COMMON, "max_steps": args.steps},
                    "warmup_steps": WARMUP_STEPS, "runs": {}}
    if args.device_env:
        report["device_env"] = device_env(work / "home", svc.plugin("unsloth_grpo"))
    model = shapes.build(args.shape, work / args.shape)
    for name in args.runs.split(","):
        plugin, extra = RUNS[name]
        params = {**COMMON, "max_steps": args.steps, **extra}
        started = time.time()
        try:  # no dataset: the plugin's bundled sample (the same for both manifests)
            job = svc.start_job({"plugin": plugin, "name": name, "model": str(model), "device": "cuda",
                                 "gpu_ids": "0", "params": params})
            if svc.jobs.wait(job["id"], args.timeout).state not in FINISHED:
                svc.jobs.stop(job["id"], reason=f"bench: past {args.timeout:g} s")
                svc.jobs.wait(job["id"], 60)
            result = summarise(svc, job["id"], started, params)
            shutil.copy(svc.jobs.get(job["id"]).log_path, args.out.with_name(f"{args.out.stem}-{name}.log"))
        except Exception as exc:  # e.g. the request refused: keep the other runs' figures
            result = {"error": f"{type(exc).__name__}: {exc}"}
        report["runs"][name] = result
        print(name, json.dumps({k: v for k, v in result.items() if k != "log_tail"}), flush=True)
        if "log_tail" in result:
            print("\n".join(result["log_tail"][-25:]), flush=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
