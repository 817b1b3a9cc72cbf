"""Short jobs start fast (issue 23 item 5): seconds from Start (`Service.start_job`) to the first logged training
step of the embedded model on a GPU, with each plugin's defaults, a fresh machine's first job and a second one.
The defaults decide torch.compile by the model's size and the planned steps (tlab_gradio/warmup.py): the tiny
model trains uncompiled, and the job's log says why.

    python3 bench/first_step_gpu.py --out $OUT/first-step-gpu.json

The first step is the first record with a loss in the job's metrics.jsonl (its time is written by the trainer's
callback). Meanwhile the job's log is polled every 0.1 s and the moment each `[tlab]` line first shows is kept:
a rough timeline of where the seconds go (process start and imports, data, model, first step).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RUNS = [  # (name, request): the defaults on cuda; GRPO's run cut to 3 steps (its defaults train for an epoch)
    ("sft_first", {"plugin": "llama_sft_multi_gpu", "params": {}}),
    ("sft_second", {"plugin": "llama_sft_multi_gpu", "params": {}}),
    ("grpo_first", {"plugin": "grpo_multi_gpu", "dataset": "grpo_arithmetic", "params": {"max_steps": 3}}),
    ("grpo_second", {"plugin": "grpo_multi_gpu", "dataset": "grpo_arithmetic", "params": {"max_steps": 3}}),
]


def first_step(job_dir: Path, started: float, timeout: float) -> tuple[float | None, list]:
    """(wall time of the first loss record or None, [(seconds since Start, [tlab] line)] as they showed)."""
    metrics, log, seen, timeline = job_dir / "metrics.jsonl", job_dir / "log.txt", set(), []
    deadline = time.time() + timeout
    while time.time() < deadline:
        if log.is_file():
            for line in log.read_text(errors="replace").splitlines():
                if line.startswith("[tlab]") and line not in seen:
                    seen.add(line)
                    timeline.append((round(time.time() - started, 2), line[:300]))
        if metrics.is_file():
            for line in metrics.read_text().splitlines():
                if '"loss"' in line and line.endswith("}"):
                    return json.loads(line)["time"], timeline
        time.sleep(0.1)
    return None, timeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--timeout", type=float, default=240)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a smoke of this script")
    parser.add_argument("--only", help="comma-separated run names")
    args = parser.parse_args()
    os.environ.setdefault("TLAB_HOME", tempfile.mkdtemp(prefix="tlab-first-step-"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import subprocess

    from tlab_gradio.service import Service

    svc = Service()
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                         text=True).stdout.strip() if args.device == "cuda" else None
    report: dict = {"date": time.strftime("%Y-%m-%d"), "gpu": gpu, "model": "embedded", "target_s": 15, "runs": {}}
    for name, request in RUNS:
        if args.only and name not in args.only.split(","):
            continue
        where = {"device": "cuda", "gpu_ids": "0"} if args.device == "cuda" else {"device": "cpu"}
        request = {**request, "name": name, "model": "", "params": {**request["params"], **where}}
        started = time.time()
        job = svc.start_job(request)
        row = svc.jobs.get(job["id"])
        step_at, timeline = first_step(Path(row.job_dir), started, args.timeout)
        done = svc.jobs.wait(job["id"], args.timeout)
        log = svc.job_log(done.id, 400)
        result = {
            "state": done.state, "start_to_first_step_s": round(step_at - started, 2) if step_at else None,
            "start_to_spawn_s": round(svc.jobs.get(job["id"]).started - started, 2)
            if svc.jobs.get(job["id"]).started else None,
            "job_wall_s": round(time.time() - started, 1),
            "compile_lines": [x for x in log if "torch.compile" in x or "generation:" in x],
            "timeline": timeline,
        }
        if done.state != "COMPLETE":
            result["log_tail"] = log[-40:]
        report["runs"][name] = result
        print(name, json.dumps({k: v for k, v in result.items() if k not in ("timeline", "log_tail")}), flush=True)
        firsts = [r["start_to_first_step_s"] for r in report["runs"].values()]
        report["ok"] = all(s is not None and s < report["target_s"] for s in firsts)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")  # after each run: a cut call keeps the others'
        for at, line in timeline:
            print(f"  {at:6.2f} {line[:110]}", flush=True)
    print("ok:", report["ok"])
    svc.jobs.close()


if __name__ == "__main__":
    main()
