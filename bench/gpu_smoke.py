"""GPU smoke test: SFT jobs through the project's own Service and launcher.

For each `--gpu-ids` value (default: `auto` and `0`) this starts one job of the
`llama_sft_multi_gpu` plugin on the embedded tiny model and the bundled
`sft_instructions` sample, waits for it, and reports what the job really did:
state, exit code, the stored `accelerate launch` command, the world size the
ranks announced, the last metrics record, progress.json, result.json and the
wall time, plus `Service().gpu_info()`. Everything is printed and written as
JSON to `--out`.

    python bench/gpu_smoke.py --out gpu_smoke.json                 # on a GPU machine
    python bench/gpu_smoke.py --device cpu --gpu-ids auto --out x.json   # quick check without a GPU

The workspace (TLAB_HOME) is a fresh temporary folder unless `--home` is given.
Exit status: 0 when every job is COMPLETE, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLUGIN = "llama_sft_multi_gpu"
WORLD_RE = re.compile(r"\[tlab\] rank (\d+) of world size (\d+)")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu-ids", nargs="+", default=["auto", "0"],
                    help="one job per value, run one after another (default: auto 0)")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--cpu-processes", type=int, default=None, help="with --device cpu: ranks per job")
    ap.add_argument("--max-steps", type=int, default=20)
    ap.add_argument("--logging-steps", type=int, default=5)
    ap.add_argument("--report-to", default=None, choices=["tensorboard", "wandb", "none"],
                    help="default: the plugin's default")
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="extra plugin parameter (VALUE read as JSON when it parses, else a string); repeatable")
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds to wait for each job")
    ap.add_argument("--home", type=Path, default=None, help="TLAB_HOME (default: a new temporary folder)")
    ap.add_argument("--out", type=Path, required=True, help="JSON report path")
    return ap.parse_args()


def versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version(), "executable": sys.executable, "host": platform.node()}
    for name in ("torch", "transformers", "accelerate", "trl", "peft", "datasets", "pyarrow", "pandas",
                 "nvidia-ml-py", "pydantic", "jsonschema"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def code_digest() -> dict:
    """sha256 (first 12 hex) of each core source file: which code this run exercised."""
    import hashlib

    files = sorted((REPO / "tlab_gradio").rglob("*.py")) + sorted((REPO / "plugin_manifests").rglob("*.json"))
    return {str(f.relative_to(REPO)): hashlib.sha256(f.read_bytes()).hexdigest()[:12] for f in files}


def world_sizes(log_lines: list[str]) -> dict:
    ranks = {}
    for line in log_lines:
        m = WORLD_RE.search(line)
        if m:
            ranks[int(m.group(1))] = int(m.group(2))
    sizes = sorted(set(ranks.values()))
    return {"ranks_announced": sorted(ranks), "world_size": sizes[0] if len(sizes) == 1 else sizes or None}


def run_one(svc, gpu_ids: str, args: argparse.Namespace) -> dict:
    from tlab_gradio import logs
    from tlab_gradio.service import RequestError

    params: dict = {"device": args.device, "gpu_ids": gpu_ids,
                    "max_steps": args.max_steps, "logging_steps": args.logging_steps}
    if args.cpu_processes is not None:
        params["cpu_processes"] = args.cpu_processes
    if args.report_to is not None:
        params["report_to"] = args.report_to
    for item in args.param:
        key, _, value = item.partition("=")
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    request = {"plugin": PLUGIN, "name": f"gpu-smoke-{gpu_ids}", "dataset": "sft_instructions", "params": params}
    rec: dict = {"gpu_ids": gpu_ids, "request": request}
    print(f"\n=== job gpu_ids={gpu_ids!r} device={args.device}", flush=True)

    t0 = time.monotonic()
    try:
        job = svc.start_job(request)
    except RequestError as exc:
        rec.update(state="REFUSED", problems=exc.problems, wall_seconds=round(time.monotonic() - t0, 3))
        print("refused before launch:", flush=True)
        for p in exc.problems:
            print(f"  - {p}", flush=True)
        return rec

    job_id = job["id"]
    final = svc.jobs.wait(job_id, timeout=args.timeout)
    wall = time.monotonic() - t0
    if final.state not in ("COMPLETE", "FAILED", "STOPPED"):
        print(f"job {job_id} still {final.state} after {args.timeout:.0f} s: stopping it", flush=True)
        rec["timed_out"] = True
        svc.stop_job(job_id)
        final = svc.jobs.wait(job_id, timeout=30)

    info = svc.job(job_id)
    log_path = Path(info["job_dir"]) / "log.txt"
    log_lines = log_path.read_text(errors="replace").splitlines() if log_path.is_file() else []
    metrics_path = Path(info["job_dir"]) / "metrics.jsonl"
    metrics_all = logs.read_metrics(metrics_path)[0]
    rec.update(
        job_id=job_id,
        state=info["state"],
        exit_code=info["exit_code"],
        reason=info["reason"],
        command=info["command"],
        command_txt=(Path(info["job_dir"]) / "command.txt").read_text().strip()
        if (Path(info["job_dir"]) / "command.txt").is_file() else None,
        mixed_precision=info["config"]["launch"]["mixed_precision"],
        num_processes=info["config"]["launch"]["num_processes"],
        job_gpus=info["gpus"],
        **world_sizes(log_lines),
        last_metrics=(logs.last_metrics(metrics_path) or [None])[-1],
        last_step_metrics=next((m for m in reversed(metrics_all) if "loss" in m), None),
        metrics=metrics_all,
        progress=info["progress"],
        result=info["result"],
        wall_seconds=round(wall, 3),
        job_seconds=round(info["finished"] - info["started"], 3) if info["finished"] and info["started"] else None,
        job_dir=info["job_dir"],
        log_tail=log_lines[-60:],
    )
    print(json.dumps({k: rec[k] for k in ("job_id", "state", "exit_code", "reason", "world_size",
                                          "mixed_precision", "wall_seconds", "job_seconds")}), flush=True)
    print("command:", " ".join(rec["command"] or []), flush=True)
    print("last metrics:", json.dumps(rec["last_metrics"]), flush=True)
    print("last step metrics:", json.dumps(rec["last_step_metrics"]), flush=True)
    print("progress:", json.dumps(rec["progress"]), flush=True)
    print("result:", json.dumps(rec["result"]), flush=True)
    if rec["state"] != "COMPLETE":
        print(f"--- last 40 log lines of job {job_id} ({rec['state']}) ---", flush=True)
        for line in log_lines[-40:]:
            print(line, flush=True)
        print("--- end of log ---", flush=True)
    return rec


def main() -> int:
    args = parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="tlab-gpu-smoke-"))
    os.environ["TLAB_HOME"] = str(home)  # before the core reads it
    sys.path.insert(0, str(REPO))

    from tlab_gradio.service import Service

    report: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "home": str(home),
                    "device": args.device, "argv": sys.argv, "versions": versions(), "code": code_digest(),
                    "env": {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "PYTHONPATH")}}
    svc = Service(home)
    try:
        report["gpu_info"] = svc.gpu_info()
    except Exception as exc:  # report it, still try the jobs
        report["gpu_info"] = None
        report["gpu_info_error"] = f"{type(exc).__name__}: {exc}"
    print("TLAB_HOME:", home, flush=True)
    print("versions:", json.dumps(report["versions"]), flush=True)
    print("gpu_info:", json.dumps(report["gpu_info"]), flush=True)

    report["jobs"] = []
    for gpu_ids in args.gpu_ids:
        try:
            rec = run_one(svc, gpu_ids, args)
        except Exception as exc:  # a bug in the core: report it and go on with the next job
            import traceback

            traceback.print_exc()
            rec = {"gpu_ids": gpu_ids, "state": "ERROR", "error": f"{type(exc).__name__}: {exc}",
                   "traceback": traceback.format_exc()}
        report["jobs"].append(rec)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, default=str))  # partial report survives a kill

    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print("\n=== summary", flush=True)
    for rec in report["jobs"]:
        loss = (rec.get("result") or {}).get("train_loss")
        last = (rec.get("last_step_metrics") or {}).get("loss")
        step = (rec.get("progress") or {}).get("step")
        print(f"gpu_ids={rec['gpu_ids']!r}: {rec['state']} exit={rec.get('exit_code')} "
              f"world={rec.get('world_size')} steps={step} train_loss={loss} last_loss={last} "
              f"wall={rec.get('wall_seconds')} s",
              flush=True)
    print("report:", args.out, flush=True)
    return 0 if report["jobs"] and all(r["state"] == "COMPLETE" for r in report["jobs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
