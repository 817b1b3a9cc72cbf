"""Evaluate a finished job's model: the app's side (no torch here). The scoring itself is
`python -m tlab_gradio.evaluate_model JOB_DIR …` (evaluate_model.py), a program of its own that this module starts
as an argv list and waits for; its result is JOB/evaluations/<name>.json, which this module lists and reads back.

The request is checked here first, so a refusal comes at once and names the problem: a job not finished, one with
no model, an unknown checkpoint, a job without a held-out split and no dataset given, a bad dataset, limit or
device."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from . import data, export, inputs, settings
from .job_spec import JobSpec
from .request_error import RequestError

EVALUATIONS = "evaluations"  # JOB/evaluations/ (as evaluate_model.EVALUATIONS, which imports torch's side)
SUMMARY_PREFIX = "[tlab-evaluate] "
TIMEOUT_S = 3600.0
MAX_LIMIT = 100_000
HOSTED_MAX_ROWS = 200  # hosted mode: the most rows one evaluation scores
DEVICES = ("auto", "cpu", "cuda")
_QUIET = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1"}


def has_held_out(p: dict) -> bool:
    return (p.get("val_size") or 0) > 0 or bool((p.get("eval_split") or "").strip())


def check(job_dir: Path, job_id: int, state: str, spec: JobSpec, checkpoint: Any, dataset: Any, limit: Any,
          device: Any, uploads: Path | None = None) -> tuple[str, data.DatasetSpec | None, int | None, str]:
    """(checkpoint label, dataset or None for the held-out rows, limit, device), or RequestError with every
    problem."""
    problems: list[str] = []
    label = "final"
    if state not in ("COMPLETE", "FAILED", "STOPPED"):
        raise RequestError([f"job {job_id} is {state}: evaluate it once it has finished"])
    try:
        label = export.choose(job_dir, job_id, state, checkpoint).label
    except export.ExportError as exc:
        problems.append(str(exc).replace("no model to export", "no model to evaluate").replace(
            "export one of its checkpoints", "evaluate one of its checkpoints"))
    picked = None
    if dataset is not None and not (isinstance(dataset, str) and not dataset.strip()) and dataset != {}:
        try:
            picked = data.parse_spec(dataset.strip() if isinstance(dataset, str) else dataset)
            from .job_request import hosted_dataset_check

            hosted_dataset_check(picked, uploads or settings.uploads_dir())
        except data.DataError as exc:
            problems.append(str(exc))
    elif not has_held_out(spec.params):
        problems.append(f"job {job_id} has no held-out split: give a dataset or train with val_size")
    if limit in (None, "", 0):
        limit = None
    else:
        try:
            limit = inputs.whole_number("limit", limit, 1, MAX_LIMIT)
        except RequestError as exc:
            problems += exc.problems
    if settings.hosted():  # a public server: each evaluation stays small
        limit = min(limit or HOSTED_MAX_ROWS, HOSTED_MAX_ROWS)
    device = (device or "auto").strip().lower() if isinstance(device, str) or device is None else device
    if device not in DEVICES:
        problems.append(f"device {inputs.short(device)}: must be auto, cpu or cuda")
    if problems:
        raise RequestError(problems)
    return label, picked, limit, device


def command(job_dir: Path, checkpoint: str, dataset: data.DatasetSpec | None, limit: int | None,
            device: str) -> list[str]:
    """The argv of the scoring program (also what a user runs by hand)."""
    argv = [sys.executable, "-m", "tlab_gradio.evaluate_model", str(job_dir), "--checkpoint", checkpoint,
            "--device", device]
    if dataset is not None:
        argv += ["--dataset", json.dumps(dataset.as_dict())]
    if limit:
        argv += ["--limit", str(limit)]
    return argv


def run(argv: list[str], gpu: str | None = None) -> dict[str, Any]:
    """Run the program; its summary. RequestError with the program's own last lines when it fails."""
    env = {**os.environ, **_QUIET}
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    try:
        done = subprocess.run(argv, capture_output=True, text=True, cwd=settings.REPO_DIR, env=env, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise RequestError([f"the evaluation took longer than {TIMEOUT_S:.0f} s and was stopped"]) from None
    if done.returncode:
        lines = [line for line in (done.stderr or done.stdout).strip().splitlines() if line.strip()]
        said = [line[len("error: "):] for line in lines if line.startswith("error: ")]
        raise RequestError(said[-1:] if said else ["the evaluation failed:\n" + "\n".join(lines[-8:])])
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(SUMMARY_PREFIX):
            return json.loads(line[len(SUMMARY_PREFIX):])
    raise RequestError(["the evaluation ended without a result"])


def read(job_dir: Path, name: str | None = None) -> list[dict[str, Any]]:
    """The job's saved evaluations, newest first (`name`: that one only); each as its file holds it."""
    folder = Path(job_dir) / EVALUATIONS
    found = []
    for path in folder.glob("*.json") if folder.is_dir() else []:
        if name is not None and path.stem != name:
            continue
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(found, key=lambda r: (r.get("created") or 0, r.get("name") or ""), reverse=True)


def count(job_dir: Path) -> int:
    """How many evaluations a job has saved (its files, not read)."""
    folder = Path(job_dir) / EVALUATIONS
    return sum(1 for p in folder.glob("*.json") if p.stat().st_size) if folder.is_dir() else 0


def summary(result: dict[str, Any], examples: bool = False) -> dict[str, Any]:
    """An evaluation as the API and the page show it (examples only when asked)."""
    keep = ("name", "job_id", "job_name", "train_type", "checkpoint", "step", "dataset_label", "dataset", "rows",
            "rows_available", "metrics", "settings", "created", "seconds")
    out = {k: result.get(k) for k in keep}
    if examples:
        out["examples"] = result.get("examples") or []
    return out


def job_ids(value: Any) -> list[int]:
    """One job id, or several: a list, or text "3, 5"."""
    if isinstance(value, str) and ("," in value or " " in value.strip()):
        value = [v for v in value.replace(",", " ").split() if v]
    if isinstance(value, (list, tuple)):
        if not value:
            raise RequestError(["give at least one job id"])
        return [inputs.job_id(v.strip() if isinstance(v, str) else v) for v in value]
    return [inputs.job_id(value.strip() if isinstance(value, str) else value)]


HEADLINE = ("eval_loss", "perplexity", "exact_match", "accuracy", "eval_reward")


def compare(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Evaluations of several jobs side by side: one row each, the headline metrics as columns, ordered by job,
    then newest first."""
    table = []
    for r in rows:
        m = r.get("metrics") or {}
        table.append({"job_id": r.get("job_id"), "job_name": r.get("job_name"), "evaluation": r.get("name"),
                      "checkpoint": r.get("checkpoint"), "dataset": r.get("dataset_label"), "rows": r.get("rows"),
                      **{k: m.get(k) for k in HEADLINE if k in m}})
    return table
