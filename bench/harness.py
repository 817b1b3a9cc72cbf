"""Running a plugin job the way the app does, for the benchmarks: through the service and the
launcher, in a workspace of its own, and reading back its per-step metrics."""
from __future__ import annotations

import os
import shutil
from pathlib import Path


def records(job_dir: Path | str) -> list[dict]:
    """Every record of a job's metrics.jsonl (none if it wrote none), read by the app's own reader."""
    from tlab_gradio.logs import read_metrics

    return read_metrics(Path(job_dir) / "metrics.jsonl")[0]


def world_size_lines(log: list[str]) -> list[str]:
    """The lines where each rank, then accelerate, said how many processes the job really ran on."""
    return [x for x in log if "world size" in x or "[tlab] distributed" in x]


def plugin_job(home: Path, request: dict, timeout: float) -> dict:
    """Start `request` through the app's service, wait, and return the per-step metric records
    (`records`), the job's checked parameters, its command and peak GPU memory; or, for a job that
    did not complete (it may have written no metrics), its state, reason and log tail."""
    os.environ["TLAB_HOME"] = str(home)
    from tlab_gradio.service import Service

    svc = Service()
    job = svc.start_job(request)
    done = svc.jobs.wait(job["id"], timeout)
    steps = [m for m in records(done.job_dir) if "loss" in m]  # one per optimisation step, not the final summary
    for folder in ("checkpoints", "output"):  # weights and optimiser state: 18 GB a job at 1.5B, and a
        shutil.rmtree(Path(done.job_dir) / folder, ignore_errors=True)  # benchmark call runs several
    if done.state != "COMPLETE":
        return {"error": done.reason, "state": done.state, "log_tail": svc.job_log(job["id"], 60),
                "records": steps}
    speed = [line for line in svc.job_log(job["id"], 400) if line.startswith("[tlab] speed:")]
    return {"records": steps, "params": done.spec.params, "command": " ".join(done.command),
            "peak_gib": max((m["peak_memory_gb"] for m in steps if "peak_memory_gb" in m), default=None),
            "plan": speed[0] if speed else None}
