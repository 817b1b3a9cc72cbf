"""Multi-GPU scaling through the app's own launcher, on every GPU of one machine, in one call.

For each model shape: the SFT plugin (DDP) on 1 GPU, on 2 GPUs by an explicit list, and on every
GPU with gpu_ids=auto; FSDP on every GPU; the GRPO Trainer (Multi GPU) with DDP on 1 and on every
GPU. Weak scaling: the batch per GPU stays the same, so N GPUs do N times the work per step.
Scaling efficiency = N-GPU throughput / (N x 1-GPU throughput). Also records peak memory per
GPU (nvidia-smi, sampled during each job), the world size every rank announced, and /gpu_info
read from the real app over gradio_client.

    python bench/multi_gpu.py --out bench/results/multi-gpu-DATE-GPU.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import harness  # noqa: E402
import shapes  # noqa: E402
from sft_bench import SEQ, data_file  # noqa: E402


class MemorySampler:
    """Peak used memory of every GPU over a job, from nvidia-smi (each rank's own process
    only sees its own device; this sees them all, the CUDA context included)."""

    def __init__(self):
        self.peak: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=10).stdout
                for line in out.strip().splitlines():
                    idx, used = (int(x) for x in line.split(","))
                    self.peak[idx] = max(self.peak.get(idx, 0.0), used / 1024)
            except Exception:  # noqa: BLE001 - sampling must never stop the benchmark
                pass
            self._stop.wait(0.5)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def throughput(records: list[dict], key: str, skip: int) -> dict:
    """Rate of a cumulative counter (`num_tokens`) or of steps between the first timed and the last record."""
    timed = [r for r in records if "loss" in r][skip:]
    if len(timed) < 2:
        return {"error": f"only {len(timed)} timed steps"}
    seconds = timed[-1]["time"] - timed[0]["time"]
    out = {"timed_steps": timed[-1]["step"] - timed[0]["step"], "seconds": seconds,
           "steps_per_s": (timed[-1]["step"] - timed[0]["step"]) / seconds, "final_loss": timed[-1].get("loss")}
    if key == "num_tokens":
        out["tokens_per_s"] = (timed[-1]["num_tokens"] - timed[0]["num_tokens"]) / seconds
    return out


def run_job(svc, request: dict, skip: int, timeout: float) -> dict:
    started = time.time()
    with MemorySampler() as mem:
        job = svc.start_job(request)
        done = svc.jobs.wait(job["id"], timeout)
    log = svc.job_log(job["id"], 2000)
    result = {"state": done.state, "command": " ".join(done.command or []), "wall_s": time.time() - started,
              "gpu_ids_requested": request["gpu_ids"], "gpu_ids_used": done.spec.launch.gpu_ids,
              "world_size_lines": harness.world_size_lines(log),
              "ddp_lines": [line for line in log if "DDP ran with" in line or "DDP settings" in line],
              "peak_gib_per_gpu_nvidia_smi": {str(k): round(v, 2) for k, v in sorted(mem.peak.items())}}
    steps = [r for r in harness.records(done.job_dir) if "loss" in r]
    if steps:
        result["peak_gib_rank0_torch"] = max(r.get("peak_memory_gb", 0) for r in steps)
        result["world_size"] = steps[-1].get("world_size")
    if done.state != "COMPLETE":
        result["reason"] = done.reason
        result["log_tail"] = log[-40:]
        return result
    key = "num_tokens" if request["plugin"] == "llama_sft_multi_gpu" else "steps"
    result.update(throughput(steps, key, skip))
    if request["plugin"] == "grpo_multi_gpu":
        per_step = request["params"]["per_device_train_batch_size"] * (result.get("world_size") or 1)
        result["completions_per_s"] = result.get("steps_per_s", 0) * per_step
        result["completion_tokens_per_s"] = result["completions_per_s"] * request["params"]["max_completion_length"]
    return result


def app_gpu_info(home: Path) -> dict:
    """/gpu_info from the real app (`python app.py`) over gradio_client, as a script would read it."""
    from gradio_client import Client

    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "TLAB_HOME": str(home), "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False"}
    log = open(home / "app.log", "w")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.time() + 120
        while True:
            try:
                client = Client(url, verbose=False)
                break
            except Exception:  # noqa: BLE001 - not up yet
                if time.time() > deadline or proc.poll() is not None:
                    return {"error": "app did not start", "log": (home / "app.log").read_text()[-3000:]}
                time.sleep(1)
        info = client.predict(api_name="/gpu_info")
        from tlab_gradio.ui.computer_tab import gpu_html

        return {"gpu_info": info, "computer_tab_heading": gpu_html(info).split("</h3>")[0] + "</h3>",
                "computer_tab_cards": gpu_html(info).count("GPU # ")}
    finally:
        proc.terminate()
        proc.wait(30)


# DDP settings to try against torch's defaults (issue 22: compiled layers scaled at 68% on 2 GPUs, DDP adding ~50 ms
# to a 0.107 s step that is bound by launching kernels): no copy of each gradient into its bucket, the graph's hooks
# fixed after the first step, fewer and larger buckets.
DDP_VARIANTS = {
    "bucket_view": {"gradient_as_bucket_view": True},
    "static": {"static_graph": True},
    "both": {"gradient_as_bucket_view": True, "static_graph": True},
    "both_100mb": {"gradient_as_bucket_view": True, "static_graph": True, "bucket_cap_mb": 100},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--shapes", default="qwen2-0.5b,qwen2-1.5b")
    ap.add_argument("--only", default="", help="comma-separated run names (default: all)")
    ap.add_argument("--sft-steps", type=int, default=30)
    ap.add_argument("--grpo-steps", type=int, default=6)
    ap.add_argument("--ddp-variants", default=json.dumps(DDP_VARIANTS),
                    help="JSON {name: TLAB_DDP settings}: each a further SFT run on 2 and on every GPU ('{}': none)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="multi-gpu-"))
    os.environ["TLAB_HOME"] = str(work / "home")
    import torch

    from tlab_gradio.service import Service

    svc = Service()
    n = torch.cuda.device_count()
    report: dict = {"date": time.strftime("%Y-%m-%d"), "gpus": n, "gpu": torch.cuda.get_device_name(0),
                    "gpu_info_service": svc.gpu_info(), "runs": {}}
    try:
        report["app"] = app_gpu_info(work)
    except Exception as exc:  # noqa: BLE001 - keep the training figures
        report["app"] = {"error": f"{type(exc).__name__}: {exc}"}
    print("app /gpu_info:", json.dumps(report["app"])[:400], flush=True)
    data = data_file(work)

    # GPU counts: 1, 2 (explicit list), ..., every GPU (auto).
    counts = sorted({1, *(c for c in (2, 4, 8) if c < n), n})

    def ids(count: int) -> str:
        return "auto" if count == n else ",".join(str(i) for i in range(count))

    runs: dict[str, dict] = {}
    for shape in args.shapes.split(","):
        model = str(shapes.build(shape, work / shape))
        tag = shape.split("-")[1]
        sft = {"plugin": "llama_sft_multi_gpu", "model": model, "device": "cuda",
               "dataset": {"source": "file", "name": str(data)}, "template": "{{text}}", "completion_template": "",
               "params": {"max_steps": args.sft_steps, "logging_steps": 1, "report_to": "none", "save_steps": 100000,
                          "max_length": SEQ, "per_device_train_batch_size": 8, "use_lora": False, "packing": True,
                          "gradient_checkpointing": False, "learning_rate": 1e-5,
                          # compiled layers, as a long job gets them (`auto` leaves a 30-step run eager)
                          "torch_compile": "on"}}
        for c in counts:
            runs[f"sft_{tag}_ddp_{c}gpu"] = {**sft, "gpu_ids": ids(c)}
        for variant, settings in json.loads(args.ddp_variants).items():  # issue 22: DDP's own settings
            for c in sorted({min(2, n), n} - {1}):
                runs[f"sft_{tag}_ddp_{c}gpu_{variant}"] = {**sft, "gpu_ids": ids(c), "ddp": settings}
        if n > 2:  # an explicit list naming every GPU too, not only `auto`
            runs[f"sft_{tag}_ddp_{n}gpu_list"] = {**sft, "gpu_ids": ",".join(str(i) for i in range(n))}
        if n > 1:
            runs[f"sft_{tag}_fsdp_{n}gpu"] = {**sft, "gpu_ids": "auto",
                                              "params": {**sft["params"], "distributed_strategy": "fsdp"}}
        grpo = {"plugin": "grpo_multi_gpu", "model": model, "device": "cuda",
                "params": {"max_steps": args.grpo_steps, "logging_steps": 1, "report_to": "none",
                           "save_steps": 100000, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1,
                           "num_generations": 8, "max_completion_length": 128}}
        for c in sorted({1, n}):
            runs[f"grpo_{tag}_ddp_{c}gpu"] = {**grpo, "gpu_ids": ids(c)}
    for name, request in runs.items():
        if args.only and name not in args.only.split(","):
            continue
        try:
            skip = 3 if request["plugin"] == "llama_sft_multi_gpu" else 2
            settings = request.pop("ddp", None)
            # the job's processes inherit this process's environment: the trainer reads TLAB_DDP (common.tune_ddp)
            if settings is None:
                os.environ.pop("TLAB_DDP", None)
            else:
                os.environ["TLAB_DDP"] = json.dumps(settings)
            result = run_job(svc, {**request, "name": name}, skip, timeout=1200)
            if settings is not None:
                result["ddp"] = settings
        except Exception as exc:  # noqa: BLE001 - keep the other runs' figures
            result = {"error": f"{type(exc).__name__}: {exc}"}
        report["runs"][name] = result
        print(name, json.dumps({k: v for k, v in result.items() if k != "log_tail"})[:500], flush=True)
        if "log_tail" in result:
            print("\n".join(result["log_tail"][-15:]), flush=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")

    report["scaling"] = scaling(report["runs"])
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["scaling"], indent=2))


def scaling(runs: dict) -> dict:
    """N-GPU throughput / (N x 1-GPU throughput), for each run that has a 1-GPU twin."""
    out = {}
    for name, r in runs.items():
        world = r.get("world_size") or 0
        if world < 2:
            continue
        base = name.split("_")[:3]  # e.g. sft 0.5b ddp (a DDP variant's twin: the 1-GPU run, which has no DDP)
        one = runs.get("_".join(base[:2] + ["ddp", "1gpu"]), {})
        metric = "tokens_per_s" if name.startswith("sft") else "completions_per_s"
        if r.get(metric) and one.get(metric):
            out[name] = {"metric": metric, "one_gpu": one[metric], "n_gpu": r[metric], "world_size": world,
                         "efficiency": r[metric] / (world * one[metric])}
    return out


if __name__ == "__main__":
    main()
