"""GPU checks run through the app's own service and launcher, one JSON report:

  grpo_auto / grpo_gpu0   the GRPO plugin on the embedded model, gpu_ids auto and 0
  sft_full / sft_lora     the SFT plugin on a random Qwen2-0.5B shape (packed 512-token
                          sequences), measured peak memory next to the app's estimate
  sft_fsdp_1proc          the SFT plugin under FSDP on one process (the form refuses this as
                          pointless; here it checks FSDP starts and trains on a GPU)

    python bench/gpu_verify.py --out report.json
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
sys.path.insert(0, str(REPO / "bench"))

import harness  # noqa: E402


def summary(svc, job_id: int, started: float) -> dict:
    job = svc.jobs.get(job_id)
    records = harness.records(job.job_dir)
    steps = [r for r in records if "loss" in r or "reward" in r]  # not the end-of-training summary
    log = svc.job_log(job_id, 400)
    out = {
        "state": job.state, "reason": job.reason, "exit_code": job.exit_code, "command": " ".join(job.command or []),
        "world_size_lines": harness.world_size_lines(log),
        "steps": max((r["step"] for r in records), default=0),
        "last": {k: steps[-1].get(k) for k in ("step", "loss", "reward", "tokens_per_second",
                                                "completion_tokens_per_second")} if steps else None,
        "peak_memory_gb": max((r.get("peak_memory_gb", 0) for r in records), default=None),
        "wall_s": time.time() - started,
    }
    if job.state != "COMPLETE":
        out["log_tail"] = log[-40:]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gpu-verify-"))
    os.environ["TLAB_HOME"] = str(work / "home")
    import shapes

    from tlab_gradio.service import Service

    svc = Service()
    report: dict = {"gpu_info": svc.gpu_info(), "runs": {}}
    grpo = {"plugin": "grpo_multi_gpu", "device": "cuda",
            "params": {"max_steps": 5, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1,
                       "num_generations": 8, "max_completion_length": 64, "report_to": "none"}}
    model = None

    def sft(name, **params):
        nonlocal model
        model = model or shapes.build("qwen2-0.5b", work / "qwen2-0.5b")
        return {"plugin": "llama_sft_multi_gpu", "name": name, "model": str(model), "device": "cuda", "gpu_ids": "0",
                "params": {"max_steps": 8, "logging_steps": 1, "report_to": "none", "packing": True,
                           "max_length": 512, "per_device_train_batch_size": 4, "gradient_checkpointing": False,
                           "learning_rate": 1e-5, **params}}

    runs = {
        "grpo_auto": lambda: {**grpo, "name": "grpo_auto", "gpu_ids": "auto"},
        "grpo_gpu0": lambda: {**grpo, "name": "grpo_gpu0", "gpu_ids": "0"},
        "sft_full": lambda: sft("sft_full", use_lora=False),
        "sft_lora": lambda: sft("sft_lora", use_lora=True, learning_rate=2e-4),
        # DeepSpeed ZeRO on one GPU (the deepspeed package travels as a wheel), on the embedded model.
        "sft_zero2": lambda: {"plugin": "llama_sft_multi_gpu", "name": "sft_zero2", "device": "cuda", "gpu_ids": "0",
                              "params": {"max_steps": 5, "logging_steps": 1, "report_to": "none", "use_lora": False,
                                         "distributed_strategy": "deepspeed_zero2"}},
        "sft_zero3": lambda: {"plugin": "llama_sft_multi_gpu", "name": "sft_zero3", "device": "cuda", "gpu_ids": "0",
                              "params": {"max_steps": 5, "logging_steps": 1, "report_to": "none", "use_lora": False,
                                         "distributed_strategy": "deepspeed_zero3"}},
    }
    for name, make in runs.items():
        if args.only and name not in args.only.split(","):
            continue
        started = time.time()
        request = make()
        try:
            estimate = svc.memory_estimate(request) if request.get("model") else None
            job = svc.start_job(request)
            svc.jobs.wait(job["id"], 900)
            result = summary(svc, job["id"], started)
            if estimate:
                result["estimate"] = estimate
                if result["peak_memory_gb"]:
                    result["estimate_vs_measured"] = estimate["total_gb"] / result["peak_memory_gb"]
        except Exception as exc:  # keep the other runs' figures
            result = {"error": f"{type(exc).__name__}: {exc}"}
        report["runs"][name] = result
        print(name, json.dumps(result)[:600], flush=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")

    if not args.only or "sft_fsdp_1proc" in args.only:
        # Past the form's refusal on purpose: the job's config is the checked DDP one, strategy swapped.
        started = time.time()
        try:
            config = svc.prepare({"plugin": "llama_sft_multi_gpu", "name": "sft_fsdp_1proc", "device": "cuda",
                                  "gpu_ids": "0", "params": {"max_steps": 5, "logging_steps": 1, "report_to": "none",
                                                             "use_lora": False}})
            launch = config.launch.model_copy(update={"distributed": config.launch.distributed.model_copy(
                update={"strategy": "fsdp"})})
            job = svc.jobs.create(config.model_copy(update={
                "params": {**config.params, "distributed_strategy": "fsdp"}, "launch": launch}))
            svc.jobs.wait(job.id, 600)
            result = summary(svc, job.id, started)
            result["accelerate_yaml"] = (job.job_dir / "accelerate.yaml").read_text()
        except Exception as exc:
            result = {"error": f"{type(exc).__name__}: {exc}"}
        report["runs"]["sft_fsdp_1proc"] = result
        print("sft_fsdp_1proc", json.dumps(result)[:600], flush=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
