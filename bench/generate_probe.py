"""Where GRPO's generation time goes: transformers generate on a random Qwen2-0.5B shape at the
plugin's batch (256 sequences), comparing the weights' dtype and the KV cache. Prints tokens/s
of each variant after a warm-up call.

    python bench/generate_probe.py --out probe.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import shapes  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    import torch
    from transformers import AutoModelForCausalLM

    folder = shapes.build("qwen2-0.5b", Path(tempfile.mkdtemp()) / "m")
    ids = torch.randint(300, 150000, (args.batch, 64), device="cuda")
    results = {}

    def run(name, model, autocast, **gen):
        def once():
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                      max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                      pad_token_id=0, **gen)
        try:
            started = time.perf_counter()
            once()
            warm = time.perf_counter() - started
            torch.cuda.synchronize()
            started = time.perf_counter()
            out = once()
            torch.cuda.synchronize()
            seconds = time.perf_counter() - started
            new = (out.shape[1] - ids.shape[1]) * args.batch
            results[name] = {"tokens_per_s": new / seconds, "ms_per_step": 1000 * seconds / args.new_tokens,
                             "warmup_s": warm}
        except Exception as exc:
            results[name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        print(name, results[name], flush=True)
        if args.out:
            args.out.write_text(json.dumps(results, indent=2))

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).cuda()
    run("fp32_weights_autocast_dynamic", model, True)
    model = model.to(torch.bfloat16)
    run("bf16_weights_dynamic", model, False)
    run("bf16_weights_static_compiled", model, False, cache_implementation="static")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
