"""Where a GRPO step on the embedded model goes non-finite on a GPU (issue 15): the plugin's job with its
defaults through the app's service, then one GRPO-shaped step by hand (left-padded chat prompts, sampled
completions, the completion tokens' log-probs under autocast, a zero-advantage loss, backward) for each
attention implementation and weight dtype, naming the first module whose output or gradient is not finite.

    python3 bench/grpo_nan_probe.py --out $OUT/grpo-nan-probe.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def first_nonfinite(model, run):
    """Run `run()` with hooks on every module; return the first module (in call order) whose forward
    output, and the first whose input gradient, held a non-finite value."""
    import torch

    seen = {"forward": None, "backward": None}

    def check(kind, name):
        def hook(module, inputs, outputs):
            if seen[kind]:
                return
            for t in (outputs if isinstance(outputs, (tuple, list)) else (outputs,)):
                if isinstance(t, torch.Tensor) and t.is_floating_point() and not torch.isfinite(t).all():
                    bad = (~torch.isfinite(t)).nonzero()[:4].tolist()
                    seen[kind] = {"module": name, "shape": list(t.shape), "first_bad_index": bad}
                    return
        return hook

    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_hook(check("forward", name)))
        handles.append(module.register_full_backward_hook(check("backward", name)))
    try:
        result = run()
    finally:
        for h in handles:
            h.remove()
    return seen, result


def grpo_step(model, tokenizer, prompts, dtype_name: str, device, completion_len: int = 64, seed: int = 0):
    import torch

    torch.manual_seed(seed)
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left").to(device)
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
        out = model.generate(**enc, do_sample=True, temperature=1.0, top_p=1.0, max_new_tokens=completion_len,
                             pad_token_id=tokenizer.pad_token_id)
    completion = out[:, enc["input_ids"].shape[1]:]
    is_eos = completion == tokenizer.eos_token_id
    mask = torch.ones_like(completion)
    for i, row in enumerate(is_eos):  # as TRL: tokens after the first EOS do not count
        idx = row.nonzero()
        if len(idx):
            mask[i, idx[0, 0] + 1:] = 0
    attention = torch.cat([enc["attention_mask"], mask], dim=1)
    info = {"prompt_pad_tokens": int((enc["attention_mask"] == 0).sum()), "completion_tokens": int(mask.sum())}

    def run():
        with torch.autocast(device, dtype=torch.bfloat16):
            logits = model(input_ids=out, attention_mask=attention).logits
        logits = logits[:, enc["input_ids"].shape[1] - 1:-1].float()
        logps = torch.log_softmax(logits, -1).gather(-1, completion.unsqueeze(-1)).squeeze(-1)
        advantages = torch.zeros(len(prompts), 1, device=device)  # every completion scored alike
        coef = torch.exp(logps - logps.detach())
        loss = -(coef * advantages * mask).sum() / mask.sum().clamp(min=1)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9)
        full_logits_finite = bool(torch.isfinite(logits).all())
        return {"loss": float(loss), "grad_norm": float(norm), "completion_logits_finite": full_logits_finite}

    seen, result = first_nonfinite(model, run)
    model.zero_grad(set_to_none=True)
    return {**info, **result, "first_nonfinite_forward": seen["forward"], "first_nonfinite_backward": seen["backward"]}


def by_hand(model_path: str) -> list[dict]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tlab_gradio import data, rewards
    from tlab_gradio.trainers.grpo import system_prompt

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    tok = AutoTokenizer.from_pretrained(model_path)
    rows = [json.loads(x) for x in (Path(__file__).resolve().parents[1] / "samples/grpo_arithmetic.jsonl")
            .read_text().splitlines()[:16]]
    markers = rewards.Markers("<reasoning>", "</reasoning>", "<answer>", "</answer>")
    system = system_prompt({"system_template": "Solve the problem."}, markers)
    prompts = [tok.apply_chat_template([{"role": "system", "content": system},
                                        {"role": "user", "content": r["question"]}],
                                       tokenize=False, add_generation_prompt=True) for r in rows]
    del data
    out = []
    for attn in ("sdpa", "eager", "flex_attention"):
        for dtype in (torch.bfloat16, torch.float32):
            try:
                model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, attn_implementation=attn).to(dev)
                model.train()
                r = grpo_step(model, tok, prompts, str(dtype), dev)
            except Exception as e:  # noqa: BLE001 - a probe reports every failure
                r = {"error": f"{type(e).__name__}: {e}"[:500]}
            r.update(attn=attn, dtype=str(dtype))
            print(json.dumps(r), flush=True)
            out.append(r)
    return out


def replay(model, batch, trainer) -> dict:
    """The captured micro-batch's loss and backward again, under each SDPA backend and with anomaly detection."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    pm, cm = batch["prompt_mask"], batch["completion_mask"]
    att = torch.cat([pm, cm], 1)
    causal_keys = att.cumsum(1)  # keys a query row may see: real tokens at or before it
    info = {"prompt_mask_shape": list(pm.shape), "completion_shape": list(cm.shape),
            "fully_masked_query_rows": int((causal_keys == 0).sum()),
            "sequences_with_empty_completion": int((cm.sum(1) == 0).sum()),
            "advantages_abs_max": float(batch["advantages"].abs().max())}
    out = {}
    for name, backends in (("default", None), ("math", [SDPBackend.MATH]), ("efficient", [SDPBackend.EFFICIENT_ATTENTION]),
                           ("cudnn", [SDPBackend.CUDNN_ATTENTION]), ("flash", [SDPBackend.FLASH_ATTENTION])):
        model.zero_grad(set_to_none=True)
        try:
            ctx = sdpa_kernel(backends) if backends else torch.autocast("cuda", enabled=True, dtype=torch.bfloat16)
            with ctx, torch.autocast("cuda", dtype=torch.bfloat16):
                loss = trainer.compute_loss(model, batch)
            loss.backward()
            bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
            out[name] = {"loss": float(loss), "nonfinite_grads": bad[:6], "n_nonfinite": len(bad)}
        except Exception as e:  # noqa: BLE001
            out[name] = {"error": f"{type(e).__name__}: {e}"[:300]}
    model.zero_grad(set_to_none=True)
    try:
        with torch.autograd.detect_anomaly(), torch.autocast("cuda", dtype=torch.bfloat16):
            loss = trainer.compute_loss(model, batch)
            loss.backward()
        out["anomaly"] = "none raised"
    except Exception as e:  # noqa: BLE001
        out["anomaly"] = f"{type(e).__name__}: {e}"[:600]
    return {**info, "backends": out}


def in_process(job_dir: Path, steps: int) -> dict:
    """The plugin's trainer in this process, stopped at the first micro-step whose gradients are not finite."""
    import torch
    from trl import GRPOTrainer

    from tlab_gradio.trainers import grpo

    found = {}
    orig_loss, orig_step = GRPOTrainer.compute_loss, GRPOTrainer.training_step

    def compute_loss(self, model, inputs, *a, **k):
        self._probe_batch = {k2: (v.detach().clone() if isinstance(v, torch.Tensor) else v) for k2, v in inputs.items()}
        return orig_loss(self, model, inputs, *a, **k)

    def training_step(self, model, inputs, *a, **k):
        loss = orig_step(self, model, inputs, *a, **k)
        bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        if bad and not found:
            found.update(step=self.state.global_step, loss=float(loss), nonfinite_grads=bad[:6], n=len(bad))
            found["replay"] = replay(model, self._probe_batch, self)
            raise KeyboardInterrupt
        return loss

    GRPOTrainer.compute_loss, GRPOTrainer.training_step = compute_loss, training_step
    sys.argv = ["grpo.py", "--job-dir", str(job_dir)]
    cfg = json.loads((job_dir / "config.json").read_text())
    cfg["params"]["max_steps"] = steps
    (job_dir / "config.json").write_text(json.dumps(cfg))
    try:
        grpo.main()
    except KeyboardInterrupt:
        pass
    return found or {"nonfinite": "none in %d steps" % steps}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--in-process", action="store_true")
    args = ap.parse_args()
    import harness
    from tlab_gradio import tiny_model

    home = Path(tempfile.mkdtemp(prefix="nan-probe-"))
    report = {}
    request = {"plugin": "grpo_multi_gpu", "name": "nan-probe", "model": "",
               "params": {"device": args.device, "gpu_ids": "0", "max_steps": args.steps}}
    os.environ["CUDA_LAUNCH_BLOCKING"] = "1"
    report["plugin_job_defaults"] = harness.plugin_job(home, request, 900)
    os.environ.pop("CUDA_LAUNCH_BLOCKING")
    job_dirs = sorted((home / "jobs").iterdir())
    if args.in_process:
        report["in_process"] = in_process(job_dirs[-1], args.steps + 2)
        print(json.dumps(report["in_process"], default=str), flush=True)
    model_path = str(tiny_model.ensure(home / "models" / tiny_model.NAME))
    report["by_hand"] = by_hand(model_path)
    Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps(report["plugin_job_defaults"], default=str)[:6000])


if __name__ == "__main__":
    main()
