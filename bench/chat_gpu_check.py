"""Chat on a GPU machine (issue 20 item 1), through the service as /chat runs it: chat and training never share a
GPU. An SFT job (full fine-tune of the embedded model, to always answer FIXED) runs on GPU 0; a chat on cuda
meanwhile is refused naming the job (every GPU taken), and a chat on the CPU answers. Once the job is COMPLETE, the
chat worker takes the GPU (seen in nvidia-smi, held in the scheduler), answers side by side (base and tuned,
greedy; first-token latency and tokens/s); a second job for that GPU waits QUEUED while the worker holds it and
starts once the chat is unloaded.

    python3 bench/chat_gpu_check.py --out $OUT/chat-gpu-check.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FIXED = "OTTER 42"
QUESTIONS = ["hi", "what is 2+2?", "tell me a joke", "name a color", "who are you?", "say something", "hello there",
             "how are you", "what day is it", "write a poem", "help", "ok"]
PARAMS = {"device": "cuda", "gpu_ids": "0", "use_lora": False, "assistant_only_loss": True, "learning_rate": 0.02,
          "max_steps": 40, "per_device_train_batch_size": 4, "max_length": 64, "save_steps": 1000}


def answer(svc, request) -> dict:
    outs = list(svc.chat(request))
    return {**outs[-1], "partial_outputs": len(outs)}


def gpu_apps() -> str:
    return subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader"],
                          capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    home = Path(os.environ.setdefault("TLAB_HOME", tempfile.mkdtemp(prefix="tlab-chat-gpu-")))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tlab_gradio.service import RequestError, Service

    data = home / "fixed.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": FIXED}]}) + "\n"
                            for q in QUESTIONS))
    svc = Service()
    report: dict = {"gpus": svc.gpu_info(), "checks": {}}
    checks = report["checks"]
    greedy = {"prompt": "What is the capital of France?", "max_new_tokens": 24, "temperature": 0}
    job = svc.start_job({"plugin": "llama_sft_multi_gpu", "name": "fixed answer", "dataset": str(data),
                         "params": PARAMS})
    running = svc.jobs.wait(job["id"], 120, until=lambda j: j.state != "QUEUED")
    report["job_gpus"] = running.gpus
    try:
        list(svc.chat({**greedy, "device": "cuda"}))
        checks["chat_refused_while_job_holds_the_gpu"] = {"ok": False, "message": "not refused"}
    except RequestError as exc:
        checks["chat_refused_while_job_holds_the_gpu"] = {"ok": "no GPU is free for chat" in str(exc)
                                                          and f"job {job['id']} (RUNNING)" in str(exc),
                                                          "message": str(exc)}
    cpu = answer(svc, {**greedy, "device": "cpu"})
    checks["cpu_chat_meanwhile"] = {"ok": cpu["done"] and cpu["device"] == "cpu", **cpu}
    done = svc.jobs.wait(job["id"], args.timeout)
    report["job"] = {"state": done.state, "log_tail": svc.job_log(job["id"], 15)}
    if done.state != "COMPLETE":
        args.out.write_text(json.dumps(report, indent=1))
        raise SystemExit(f"the job ended {done.state}")
    started = time.monotonic()
    tuned = answer(svc, {**greedy, "job_id": job["id"], "device": "cuda"})
    tuned["wall_s_first_use"] = round(time.monotonic() - started, 2)
    base = answer(svc, {**greedy, "job_id": job["id"], "base": True, "device": "cuda"})
    again = answer(svc, {**greedy, "job_id": job["id"], "device": "cuda", "max_new_tokens": 256,
                         "prompt": "Write a long story about a dragon."})
    status = svc.chat_status()
    users = svc.jobs.gpu_users()
    checks["side_by_side_on_the_gpu"] = {"ok": "OTTER" in tuned["text"] and "OTTER" not in base["text"]
                                         and tuned["device"] == "cuda", "tuned": tuned, "base": base,
                                         "warm_256_tokens": again}
    worker = next((w for w in status if w["device"] == "cuda"), None)
    apps = gpu_apps()
    checks["worker_holds_one_gpu"] = {"ok": bool(worker) and users == {worker["gpu"]: ["chat:cuda"]}
                                      and str(worker["pid"]) in apps, "status": status, "gpu_users": users,
                                      "nvidia_smi_apps": apps}
    second = svc.start_job({"plugin": "llama_sft_multi_gpu", "name": "waits for the chat", "dataset": str(data),
                            "params": {**PARAMS, "max_steps": 5}})
    time.sleep(3)
    waited = svc.job(second["id"])["state"]
    unloaded = svc.chat_unload()
    started = time.monotonic()
    ran = svc.jobs.wait(second["id"], 60, until=lambda j: j.state != "QUEUED")
    checks["job_waits_for_the_chat_gpu"] = {"ok": waited == "QUEUED" and ran.state in ("RUNNING", "COMPLETE"),
                                            "state_while_chat_held_it": waited, "unloaded": unloaded,
                                            "state_after_unload": ran.state,
                                            "started_after_s": round(time.monotonic() - started, 2)}
    final = svc.jobs.wait(second["id"], args.timeout)
    checks["job_waits_for_the_chat_gpu"]["end_state"] = final.state
    report["ok"] = all(c["ok"] for c in checks.values())
    args.out.write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps({k: v["ok"] for k, v in checks.items()}))
    print(json.dumps(report, indent=1, default=str)[:6000])


if __name__ == "__main__":
    main()
