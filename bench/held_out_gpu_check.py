"""The held-out evaluation (issue 19 item 3) on a GPU, at the plugins' GPU defaults (bf16, GRPO's compiled static
cache and 256 completions a step): an SFT job and a GRPO job, each with held-out rows, an evaluation interval,
load_best_model_at_end and early stopping on, must COMPLETE with their eval metric (SFT eval_loss, GRPO
eval_reward) in metrics.jsonl at each evaluation and at the last step. Through the service, as the API starts
jobs (no page needed: gradio is not on the device).

    python3 bench/held_out_gpu_check.py --out $OUT/held-out-gpu-check.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RUNS = {
    "sft": {"plugin": "llama_sft_multi_gpu", "name": "held-out-sft",
            "params": {"max_steps": 40, "val_size": 0.1, "load_best_model_at_end": True,
                       "early_stopping_patience": 5}},
    "grpo": {"plugin": "grpo_multi_gpu", "name": "held-out-grpo",
             "params": {"max_steps": 6, "val_size": 8, "eval_steps": 3, "load_best_model_at_end": True,
                        "early_stopping_patience": 5}},
}
METRIC = {"sft": "eval_loss", "grpo": "eval_reward"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--timeout", type=float, default=240)
    args = parser.parse_args()
    os.environ.setdefault("TLAB_HOME", tempfile.mkdtemp(prefix="tlab-held-out-"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tlab_gradio.service import Service

    svc = Service()
    report: dict = {"device": args.device, "runs": {}}
    for kind, request in RUNS.items():
        request = {**request, "params": {**request["params"], "device": args.device}}
        started = time.monotonic()
        job = svc.start_job(request)
        done = svc.jobs.wait(job["id"], args.timeout)
        if done.state not in ("COMPLETE", "FAILED", "STOPPED"):
            svc.stop_job(done.id)
            done = svc.jobs.wait(done.id, 60)
        records = [json.loads(line) for line in (Path(done.job_dir) / "metrics.jsonl").read_text().splitlines()] \
            if (Path(done.job_dir) / "metrics.jsonl").is_file() else []
        metric = METRIC[kind]
        evals = [{"step": r["step"], metric: r[metric]} for r in records if metric in r]
        train = [r for r in records if "loss" in r]
        log = svc.job_log(done.id, 400)
        result = {
            "request": request, "state": done.state, "reason": done.reason,
            "seconds": round(time.monotonic() - started, 1),
            "steps": svc.job(done.id)["progress"].get("step"),
            "max_steps": svc.job(done.id)["progress"].get("max_steps"),
            "evaluations": evals, "train_points": len(train),
            "finite": all(isinstance(e[metric], (int, float)) and math.isfinite(e[metric]) for e in evals),
            "tlab_lines": [line for line in log if line.startswith("[tlab]")][-12:],
        }
        if done.state != "COMPLETE":
            result["log_tail"] = log[-60:]
        result["ok"] = done.state == "COMPLETE" and len(evals) >= 2 and result["finite"] and \
            evals[-1]["step"] == result["steps"]
        report["runs"][kind] = result
        print(json.dumps({kind: {k: result[k] for k in ("state", "seconds", "steps", "evaluations", "ok")}}),
              flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    report["ok"] = all(r["ok"] for r in report["runs"].values())
    args.out.write_text(json.dumps(report, indent=1))
    print("ok" if report["ok"] else "NOT ok", flush=True)


if __name__ == "__main__":
    main()
