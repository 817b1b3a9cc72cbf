"""Evaluate on a GPU machine (issue 20 item 2), through the service as /evaluate_job runs it: an SFT job and a GRPO
job on the embedded model (cuda, held-out rows), then each evaluated twice with device auto: the scoring program must
run on the GPU (one the scheduler holds while it runs), score exactly the held-out rows and give the same numbers
both times. Rows per second and generated prompts per second are recorded (batched greedy generation).

    python3 bench/evaluate_gpu_check.py --out $OUT/evaluate-gpu-check.json
    python3 bench/evaluate_gpu_check.py --model SmolLM2-135M-Instruct.Q4_1.gguf --repeat 1 --out ...  # throughput
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RUNS = {
    "sft": {"plugin": "llama_sft_multi_gpu", "name": "eval-sft",
            "params": {"max_steps": 20, "val_size": 64, "gpu_ids": "0"}},
    "grpo": {"plugin": "grpo_multi_gpu", "name": "eval-grpo", "dataset": "grpo_arithmetic",
             "params": {"max_steps": 2, "val_size": 64, "gpu_ids": "0"}},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--model", default="", help="a model for both jobs (a .gguf file, folder or Hub id); "
                                                    "empty: the embedded model")
    parser.add_argument("--repeat", type=int, default=2, help="evaluations per job (2: the numbers must agree)")
    parser.add_argument("--only", default="", help="comma-separated runs of " + ",".join(RUNS) + " (default: all)")
    args = parser.parse_args()
    os.environ.setdefault("TLAB_HOME", tempfile.mkdtemp(prefix="tlab-evaluate-"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tlab_gradio.service import Service

    svc = Service()
    report: dict = {"model": args.model or "embedded", "runs": {}}
    for kind, request in RUNS.items():
        if args.only and kind not in args.only.split(","):
            continue
        request = {**request, "model": args.model, "params": {**request["params"], "device": "cuda"}}
        started = time.monotonic()
        job = svc.start_job(request)
        done = svc.jobs.wait(job["id"], args.timeout)
        log = "\n".join(svc.job_log(done.id, 400))
        # the trainer's own evaluations of the held-out rows during training, and its step times (TRL's log lines)
        result: dict = {"state": done.state, "train_s": round(time.monotonic() - started, 1),
                        "in_training_eval_s": [float(x) for x in re.findall(r"'eval_runtime': '([\d.]+)'", log)],
                        "step_time_s": [float(x) for x in re.findall(r"'step_time': '([\d.]+)'", log)]}
        if done.state != "COMPLETE":
            result["log"] = svc.job_log(done.id, 60)
            report["runs"][kind] = result
            continue
        outs = []
        for _ in range(max(1, args.repeat)):
            t = time.monotonic()
            out = svc.evaluate_job(done.id, device="auto")
            outs.append((out, time.monotonic() - t))
        first, again = outs[0][0], outs[-1][0]
        same = (first["metrics"] == again["metrics"]
                and [e["answer"] for e in first["examples"]] == [e["answer"] for e in again["examples"]])
        log = "\n".join(svc.job_log(done.id, 400))
        result.update({
            "device": first["settings"]["device"], "rows": first["rows"], "metrics": first["metrics"],
            "metrics_again": again["metrics"], "reproducible": same,
            "held_out_in_log": f"held out {first['rows']} of" in log,
            "evaluate_s": [round(s, 2) for _, s in outs], "program_s": [o["seconds"] for o, _ in outs],
            "rows_per_s": round(first["rows"] / first["seconds"], 1),
            "examples": first["examples"][:3],
        })
        report["runs"][kind] = result
    report["gpu_free_after"] = not svc.jobs.gpu_users()
    report["ok"] = all(r.get("device") == "cuda" and r.get("reproducible") and r.get("held_out_in_log")
                       for r in report["runs"].values()) and report["gpu_free_after"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk not in ("examples", "log")}
                      for k, v in report["runs"].items()}, indent=1, default=str))
    print("ok:", report["ok"])
    svc.jobs.close()


if __name__ == "__main__":
    main()
