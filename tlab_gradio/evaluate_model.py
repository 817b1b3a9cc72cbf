"""Score a finished job's model on its held-out rows (or a dataset you pick): a program of its own, so the web
process never imports torch. By hand:

    python -m tlab_gradio.evaluate_model JOB_DIR [--checkpoint checkpoint-20] [--dataset SPEC] [--limit N]
                                                 [--device auto|cpu|cuda] [--batch-size 16] [--max-new-tokens N]

The rows are the job's own held-out rows, made again exactly as its trainer made them (the trainer's own
functions: sft.load_rows, grpo.load_prompts; the same templates, format conversion, max_samples, seed and
val_size, or its eval_split). `--dataset` (a sample name, a file or folder, a Hub id, or the form's spec as JSON)
takes every row of that dataset instead, through the job's templates.

- SFT: eval loss (mean over the loss tokens: the completion where the job trained on completions only, else the
  whole text, cut at the job's max_length) and perplexity (its exp), batched, no gradients. Rows with a reference
  (a prompt and a completion) are also answered by batched greedy generation and scored by exact match.
- GRPO: every prompt answered by batched greedy generation (left padding), then the job's reward functions (the
  built-in ones it ticked, with their weights, and its own reward files' copies) and accuracy: the share of
  answers between the answer markers equal to the reference (the correctness reward's extraction and compare).

Greedy and seeded, so the same model on the same rows gives the same scores. The result is written to
JOB/evaluations/<name>.json (metrics, settings, the model and checkpoint, the dataset, seconds and a table of
examples: prompt, reference, answer, score); the last line printed is `[tlab-evaluate] {"file": ..., ...}`.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a plain script: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

EVALUATIONS = "evaluations"  # JOB/evaluations/
SUMMARY_PREFIX = "[tlab-evaluate] "
MAX_EXAMPLES = 1000  # rows kept in the table of examples (the metrics cover every row)


class EvaluateError(ValueError):
    """What cannot be evaluated, and why."""


class OneProcess:
    """The bit of accelerate's PartialState the trainers' data functions use, for one process."""
    is_main_process = True
    num_processes = 1

    @staticmethod
    def main_process_first():
        return contextlib.nullcontext()


def train_type(spec) -> str:
    kind = spec.train_type or ("grpo" if "grpo" in spec.plugin else "sft")
    return "grpo" if kind == "grpo" else "sft"


def has_held_out(p: dict) -> bool:
    from tlab_gradio.trainers import common

    return (p.get("val_size") or 0) > 0 or common.eval_split_name(p) is not None


def parse_dataset(text: str | None):
    from tlab_gradio import data

    if text is None or not str(text).strip():
        return None
    text = str(text).strip()
    return data.parse_spec(json.loads(text) if text.startswith("{") else text)


def with_dataset(spec, p: dict, dataset) -> tuple[Any, dict]:
    """The spec and parameters that make the trainer's data function give every row of `dataset` as its training
    rows: the dataset in place of the job's, no held-out split, no max_samples."""
    if dataset is None:
        return spec, p
    spec = spec.model_copy(update={"data": spec.data.model_copy(update={"dataset": dataset.as_dict()})})
    return spec, {**p, "val_size": 0, "eval_split": "", "max_samples": None}


def rows_for(spec, p: dict, dataset, markers=None):
    """The rows to score, as the trainer formats them, and for GRPO the tokenizer it renders prompts with."""
    from tlab_gradio.trainers import grpo, sft

    state = OneProcess()
    spec2, p2 = with_dataset(spec, p, dataset)
    if train_type(spec) == "grpo":
        tokenizer, train, held = grpo.load_prompts(spec2, p2, markers, state)
        return (held if dataset is None else train), tokenizer
    train, held = sft.load_rows(spec2, p2, state)
    return (held if dataset is None else train), None


# --- SFT: loss over the rows -----------------------------------------------------------------------------------
def sft_tokens(tokenizer, row: dict, p: dict, completion_only: bool, assistant_only: bool) -> tuple[list, list]:
    """(input ids, loss mask) of one formatted row, as TRL's SFTTrainer tokenizes it: the prompt and completion
    tokenized together with the prompt's tokens out of the loss (completion-only), a text with EOS appended, chat
    messages through the chat template; cut at max_length."""
    eos = tokenizer.eos_token_id
    if "messages" in row:
        out = tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=assistant_only)
        ids = list(out["input_ids"])
        mask = list(out.get("assistant_masks") or [1] * len(ids)) if assistant_only else [1] * len(ids)
    elif "prompt" in row:
        prompt = tokenizer(row["prompt"])["input_ids"]
        ids = tokenizer(row["prompt"] + row["completion"])["input_ids"]
        if eos is not None and (not ids or ids[-1] != eos):
            ids = ids + [eos]
        mask = [0 if completion_only and i < len(prompt) else 1 for i in range(len(ids))]
    else:
        ids = tokenizer(row["text"])["input_ids"]
        if eos is not None and (not ids or ids[-1] != eos):
            ids = ids + [eos]
        mask = [1] * len(ids)
    limit = p.get("max_length")
    if limit:
        ids, mask = ids[:limit], mask[:limit]
    return ids, mask


def sft_losses(model, tokenizer, rows: list[dict], p: dict, completion_only: bool, assistant_only: bool,
               batch_size: int) -> list[tuple[float, int]]:
    """(summed loss, loss tokens) of each row, batched (right padding), no gradients."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    encoded = [sft_tokens(tokenizer, r, p, completion_only, assistant_only) for r in rows]
    out: list[tuple[float, int]] = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start:start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        for i, (row_ids, mask) in enumerate(chunk):
            n = len(row_ids)
            ids[i, :n] = torch.tensor(row_ids)
            attention[i, :n] = 1
            labels[i, :n] = torch.tensor([t if m else -100 for t, m in zip(row_ids, mask)])
        with torch.inference_mode():
            logits = model(input_ids=ids.to(model.device), attention_mask=attention.to(model.device)).logits.float()
        shifted, target = logits[:, :-1, :], labels[:, 1:].to(model.device)
        loss = torch.nn.functional.cross_entropy(shifted.reshape(-1, shifted.size(-1)), target.reshape(-1),
                                                 ignore_index=-100, reduction="none").view(target.shape)
        counted = (target != -100)
        for i in range(len(chunk)):
            out.append((float(loss[i][counted[i]].sum()), int(counted[i].sum())))
    return out


# --- generation -------------------------------------------------------------------------------------------------
def generate(model, tokenizer, texts: list[str], max_new_tokens: int, batch_size: int, special: bool) -> list[str]:
    """Greedy answers to `texts`, a batch at a time (left padding), on the model's device."""
    import torch

    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    answers: list[str] = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                          add_special_tokens=special)
        batch = {k: v.to(model.device) for k, v in batch.items()}
        with torch.inference_mode():
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, temperature=None,
                                 top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id)
        answers += tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    return answers


def shown_prompt(prompt: Any) -> str:
    """A prompt as the table shows it: a chat prompt's last user turn, else the text."""
    if isinstance(prompt, list):
        users = [m.get("content", "") for m in prompt if m.get("role") == "user"]
        return users[-1] if users else str(prompt[-1].get("content", ""))
    return str(prompt)


def mean(values: list[float]) -> float | None:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return sum(kept) / len(kept) if kept else None


def evaluate_sft(job_dir: Path, spec, p: dict, loaded, rows, args) -> tuple[dict, list[dict]]:
    from tlab_gradio import rewards

    rows = [dict(r) for r in rows]
    completion_only = bool(spec.data.completion_template) and bool(p.get("completion_only_loss", True))
    assistant_only = bool(p.get("assistant_only_loss")) and not spec.data.template
    losses = sft_losses(loaded.model, loaded.tokenizer, rows, p, completion_only, assistant_only, args.batch_size)
    total, tokens = sum(loss for loss, _ in losses), sum(n for _, n in losses)
    eval_loss = total / tokens if tokens else float("nan")
    metrics: dict[str, Any] = {"eval_loss": eval_loss, "perplexity": math.exp(min(eval_loss, 700)),
                               "loss_tokens": tokens}
    examples = [{"prompt": r.get("prompt") or r.get("text") or shown_prompt(r.get("messages") or []),
                 "reference": r.get("completion"), "answer": None, "score": None,
                 "loss": round(loss / n, 6) if n else None} for r, (loss, n) in zip(rows, losses)]
    with_reference = [i for i, r in enumerate(rows) if r.get("completion") is not None]
    if with_reference:
        tok = loaded.tokenizer
        longest = max(len(tok(rows[i]["completion"])["input_ids"]) for i in with_reference)
        max_new = args.max_new_tokens or min(longest + 16, 512)
        answers = generate(loaded.model, tok, [rows[i]["prompt"] for i in with_reference], max_new,
                           args.generation_batch, True)
        for i, answer in zip(with_reference, answers):
            match = rewards.answers_match(answer.strip(), rows[i]["completion"].strip(), "numbers")
            examples[i].update(answer=answer, score=1.0 if match else 0.0)
        metrics["exact_match"] = mean([examples[i]["score"] for i in with_reference])
        metrics["generated"] = len(with_reference)
        metrics["max_new_tokens"] = max_new
    return metrics, examples


def evaluate_grpo(job_dir: Path, spec, p: dict, loaded, rows, prompt_tokenizer, markers, args) -> tuple[dict, list]:
    from tlab_gradio import rewards
    from tlab_gradio.trainers import grpo

    rows = [dict(r) for r in rows]
    funcs, names, weights, method = grpo.reward_setup(job_dir, p, markers)
    texts, chat = [], False
    for r in rows:
        prompt = r["prompt"]
        if isinstance(prompt, list):
            chat = True
            prompt = prompt_tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        texts.append(prompt)
    max_new = args.max_new_tokens or int(p.get("max_completion_length") or 256)
    # TRL tokenizes rendered chat prompts without adding special tokens (the template wrote them)
    answers = generate(loaded.model, loaded.tokenizer, texts, max_new, args.generation_batch, special=not chat)
    prompts = [r["prompt"] for r in rows]
    completions = [[{"role": "assistant", "content": a}] if isinstance(r["prompt"], list) else a
                   for r, a in zip(rows, answers)]
    references = [r["answer"] for r in rows]
    extra = {k: [r[k] for r in rows] for k in rows[0] if k not in ("prompt",)} if rows else {}
    scores: dict[str, list[float]] = {}
    for name, func in zip(names, funcs):
        got = func(prompts=prompts, completions=completions, **extra)
        scores[name] = [float("nan") if v is None else float(v) for v in got]
    prefix = rewards.reply_prefix(bool(p.get("prefill_reasoning")), markers)
    examples, correct, totals = [], [], []
    for i, (r, answer) in enumerate(zip(rows, answers)):
        extracted = rewards.extract_answer(prefix + answer, markers)
        right = 1.0 if rewards.answers_match(extracted, rewards.reference_answer(r["answer"]), method) else 0.0
        total = sum(w * scores[n][i] for n, w in zip(names, weights) if not math.isnan(scores[n][i]))
        correct.append(right)
        totals.append(total)
        examples.append({"prompt": shown_prompt(r["prompt"]), "reference": references[i], "answer": answer,
                         "extracted": extracted, "score": right, "reward": round(total, 6),
                         "rewards": {n: scores[n][i] for n in names}})
    metrics: dict[str, Any] = {"accuracy": mean(correct), "eval_reward": mean(totals), "max_new_tokens": max_new,
                               "correctness_method": method}
    for n in names:
        metrics[f"rewards/{n}"] = mean(scores[n])
    metrics["reward_weights"] = dict(zip(names, weights))
    return metrics, examples


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:60] or "data"


def output_path(job_dir: Path, checkpoint: str, dataset_label: str, name: str | None) -> Path:
    folder = job_dir / EVALUATIONS
    folder.mkdir(parents=True, exist_ok=True)
    stem = slug(name) if name else \
        f"{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}-{slug(checkpoint)}-{slug(dataset_label)}"
    path, n = folder / f"{stem}.json", 2
    while True:
        try:  # reserved (an empty file, skipped when listed) so two evaluations at once never share a name
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return path
        except FileExistsError:
            path, n = folder / f"{stem}-{n}.json", n + 1


def evaluate(job_dir: Path, checkpoint: str | None = None, dataset: str | None = None, limit: int | None = None,
             device: str = "auto", batch_size: int = 16, generation_batch: int = 32, max_new_tokens: int = 0,
             name: str | None = None, seed: int | None = None) -> dict[str, Any]:
    import torch

    from tlab_gradio import chat_model, export, rewards
    from tlab_gradio.jobfiles import write_json_atomic
    from tlab_gradio.job_spec import JobSpec

    started = time.monotonic()
    job_dir = Path(job_dir).resolve()
    spec = JobSpec.read(job_dir)
    p = dict(spec.params)
    kind = train_type(spec)
    picked = parse_dataset(dataset)
    if picked is None and not has_held_out(p):
        raise EvaluateError(f"job {spec.job_id if spec.job_id is not None else job_dir.name} has no held-out split: "
                            "give a dataset or train with val_size")
    source = export.choose(job_dir, spec.job_id, None, checkpoint)
    seed = (p.get("seed") or 0) if seed is None else seed
    torch.manual_seed(seed)
    markers = rewards.Markers(p["reasoning_start"], p["reasoning_end"], p["answer_start"], p["answer_end"]) \
        if kind == "grpo" else None
    rows, prompt_tokenizer = rows_for(spec, p, picked, markers)
    total_rows = len(rows)
    if limit:
        rows = rows.select(range(min(limit, total_rows)))
    if len(rows) == 0:
        raise EvaluateError("no rows to evaluate")
    device = chat_model.pick_device(device)
    loaded = chat_model.load({"job_dir": str(job_dir), "checkpoint": source.label}, device)
    if loaded.tokenizer.pad_token is None:
        loaded.tokenizer.pad_token = loaded.tokenizer.eos_token
    args = argparse.Namespace(batch_size=batch_size, generation_batch=generation_batch, max_new_tokens=max_new_tokens)
    if kind == "grpo":
        metrics, examples = evaluate_grpo(job_dir, spec, p, loaded, rows, prompt_tokenizer, markers, args)
    else:
        metrics, examples = evaluate_sft(job_dir, spec, p, loaded, rows, args)
    if picked is None:
        split = {"kind": "held_out", "val_size": p.get("val_size") or 0, "eval_split": p.get("eval_split") or "",
                 "max_eval_samples": p.get("max_eval_samples") or 0, "seed": p.get("seed") or 0,
                 "dataset": spec.data.dataset}
        label = "held-out"
    else:
        split = {"kind": "dataset", "dataset": picked.as_dict()}
        label = picked.name if picked.source != "file" else Path(picked.name).name
    path = output_path(job_dir, source.label, label, name)
    result = {
        "name": path.stem, "job_id": spec.job_id, "job_name": spec.name, "train_type": kind, "plugin": spec.plugin,
        "checkpoint": source.label, "step": source.step, "model_kind": source.kind,
        "base_model": export.base_model_name(spec), "dataset": split, "dataset_label": label,
        "rows": len(rows), "rows_available": total_rows,
        "templates": {"template": spec.data.template, "completion_template": spec.data.completion_template},
        "settings": {"device": device, "batch_size": batch_size, "generation_batch": generation_batch,
                     "limit": limit, "seed": seed, "greedy": True},
        "metrics": metrics, "created": time.time(), "seconds": round(time.monotonic() - started, 3),
        "examples": examples[:MAX_EXAMPLES],
    }
    write_json_atomic(path, result)
    return {"file": str(path), **{k: v for k, v in result.items() if k != "examples"}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tlab_gradio.evaluate_model", description=__doc__.splitlines()[0])
    parser.add_argument("job_dir", type=Path, help="the job's folder (holding config.json)")
    parser.add_argument("--checkpoint", default="final", help="final (default) or checkpoint-N")
    parser.add_argument("--dataset", default=None, help="a sample name, a file or folder, a Hub id, or a JSON spec "
                                                        "{source, name, subset, split}; default: the held-out rows")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N rows")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--batch-size", type=int, default=16, help="rows per forward pass (loss)")
    parser.add_argument("--generation-batch", type=int, default=32, help="prompts generated together")
    parser.add_argument("--max-new-tokens", type=int, default=0,
                        help="0: GRPO's max_completion_length; SFT: the longest reference + 16")
    parser.add_argument("--name", default=None, help="the result's file name (default: time, checkpoint, data)")
    args = parser.parse_args(argv)
    from tlab_gradio import data, export
    from tlab_gradio.trainers.common import quiet_library_deprecations

    quiet_library_deprecations()
    try:
        summary = evaluate(args.job_dir, args.checkpoint, args.dataset, args.limit, args.device, args.batch_size,
                           args.generation_batch, args.max_new_tokens, args.name)
    except (EvaluateError, export.ExportError, data.DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    m = summary["metrics"]
    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in m.items() if not isinstance(v, dict)}
    print(f"{summary['rows']} rows, {summary['checkpoint']}: {shown} ({summary['seconds']} s)", file=sys.stderr)
    print(SUMMARY_PREFIX + json.dumps(summary, default=str), flush=True)


if __name__ == "__main__":
    main()
