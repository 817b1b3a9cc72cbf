"""Sweeps: one base job request, one or two of its parameters given several values, one job per combination.

    learning_rate=1e-4,2e-4,5e-4; lora_r=8,16   ->   6 jobs, "<name> lr=1e-4 r=8" ... "<name> lr=5e-4 r=16"

This module holds what a sweep is, apart from the service that checks and queues it: the axes read from text or
an object (`parse_axes`), the combinations as job requests (`combinations`), the metric a sweep is ranked by
(`ranking_metric`), each job's value of it from its metrics.jsonl (`job_metric`) and the ranking (`rank`), and the
store: two small tables in the workspace's job database (`sweeps`, and `sweep_jobs` linking each job to its sweep),
created when missing, so a workspace made before sweeps keeps its jobs and gains the tables at the next start.

Ranking. A sweep is ranked by its held-out metric when every combination holds data out (val_size or eval_split):
SFT's `eval_loss` (lower is better), GRPO's `eval_reward` (higher is better); the value of a job is its last
evaluation, or its best one with load_best_model_at_end (the model it ends on). Without a held-out split the sweep
is still run and ranked, by the final training loss (SFT) or reward (GRPO), and says so, with the way to rank by
held-out data: a training loss rewards the setting that fits the training rows best, which for a learning rate or
a LoRA rank is often the one that overfits, so it is a weaker verdict, but refusing would make a sweep over a small
dataset (or over val_size itself) impossible. Only COMPLETE jobs are ranked; the others show their value so far.

No gradio here (the page and the API call it through service.py).
"""
from __future__ import annotations

import itertools
import json
import math
import re
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import logs
from .request_error import RequestError

MAX_COMBINATIONS = 16  # jobs one sweep may queue (hosted mode: the visitor's free job slots, fewer)
MAX_AXES = 2
MAX_VALUES = 16
SHORT = {"learning_rate": "lr", "lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout",
         "per_device_train_batch_size": "bs", "gradient_accumulation_steps": "accum", "num_train_epochs": "epochs",
         "max_steps": "steps", "weight_decay": "wd", "warmup_ratio": "warmup", "num_generations": "gens",
         "lr_scheduler_type": "sched", "max_length": "len", "val_size": "val"}
TOP_LEVEL = ("device", "gpu_ids", "cpu_processes")  # a request may give these outside `params` too
SCHEMA = """
CREATE TABLE IF NOT EXISTS sweeps (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    plugin TEXT NOT NULL,
    owner TEXT,
    axes TEXT NOT NULL,
    metric TEXT NOT NULL,
    created REAL NOT NULL,
    stopped REAL
);
CREATE TABLE IF NOT EXISTS sweep_jobs (
    job_id INTEGER PRIMARY KEY,
    sweep_id INTEGER NOT NULL,
    position INTEGER NOT NULL,
    label TEXT NOT NULL,
    vals TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sweep_jobs_by_sweep ON sweep_jobs (sweep_id, position);
"""


# --- the axes -------------------------------------------------------------------------------------------------
@dataclass
class Axis:
    name: str
    values: list[Any]


def _value(text: str) -> Any:
    """One value as typed: a whole number, a number, true/false, else text (quotes taken off)."""
    text = text.strip()
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    try:
        number = float(text)
    except ValueError:
        number = None
    if number is not None and math.isfinite(number):
        return number
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def parse_axes(axes: Any) -> list[Axis]:
    """The parameters a sweep varies, from text ("learning_rate=1e-4,2e-4; lora_r=8,16": `;` or a new line between
    parameters, `,` between values) or an object ({"learning_rate": [1e-4, 2e-4], "lora_r": [8, 16]}, or a list of
    {"parameter", "values"}). One or two parameters, each with two or more different plain values (numbers, text,
    true/false). RequestError naming what is wrong."""
    pairs: list[tuple[str, list[Any]]] = []
    if isinstance(axes, str):
        for i, part in enumerate(p for p in re.split(r"[;\n]", axes) if p.strip()):
            name, sep, values = part.partition("=")
            if not sep:
                raise RequestError([f"sweep: {part.strip()!r:.80} is not `parameter=value,value,…` (e.g. "
                                    "learning_rate=1e-4,2e-4; lora_r=8,16)"])
            pairs.append((name.strip(), [_value(v) for v in values.split(",") if v.strip()]))
    elif isinstance(axes, dict):
        pairs = [(k, v) for k, v in axes.items()]
    elif isinstance(axes, list) and all(isinstance(a, dict) for a in axes):
        pairs = [(a.get("parameter"), a.get("values")) for a in axes]
    else:
        raise RequestError(["sweep: give the parameters to vary as text (learning_rate=1e-4,2e-4; lora_r=8,16) or "
                            'an object ({"learning_rate": [1e-4, 2e-4], "lora_r": [8, 16]}); got '
                            f"{type(axes).__name__}"])
    problems = []
    if not pairs:
        problems.append("sweep: name one or two parameters with several values each, e.g. learning_rate=1e-4,2e-4")
    if len(pairs) > MAX_AXES:
        problems.append(f"sweep: {len(pairs)} parameters given ({', '.join(str(n) for n, _ in pairs)}); a sweep "
                        f"varies one or two")
    out, seen = [], set()
    for name, values in pairs:
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,99}", name.strip()):
            problems.append(f"sweep: {name!r:.60} is not a parameter name")
            continue
        name = name.strip()
        if name in seen:
            problems.append(f"sweep: `{name}` is given twice; give all its values at once")
            continue
        seen.add(name)
        if not isinstance(values, list) or not all(
                isinstance(v, (str, int, float, bool)) and not (isinstance(v, float) and not math.isfinite(v))
                for v in values):
            problems.append(f"sweep: `{name}` needs a list of plain values (numbers, text, true/false)")
            continue
        if len(values) < 2:
            problems.append(f"sweep: `{name}` has {len(values)} value{'s' if len(values) != 1 else ''}; give two or "
                            "more (a single value belongs in the form)")
            continue
        if len(values) > MAX_VALUES:
            problems.append(f"sweep: `{name}` has {len(values)} values; at most {MAX_VALUES}")
            continue
        doubles = [v for i, v in enumerate(values) if any(_same(v, w) for w in values[:i])]
        if doubles:
            problems.append(f"sweep: `{name}` has {doubles[0]!r} twice")
            continue
        out.append(Axis(name, list(values)))
    if problems:
        raise RequestError(problems)
    return out


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b or (isinstance(a, (int, float)) and isinstance(b, (int, float))
                                             and not isinstance(a, bool) and not isinstance(b, bool) and a == b)


def fmt(value: Any) -> str:
    """A value as a job's name shows it: 1e-4 rather than 0.0001, 8, cosine, true."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e5):
            mantissa, exponent = f"{value:.3e}".split("e")
            mantissa = mantissa.rstrip("0").rstrip(".")
            return f"{mantissa}e{int(exponent)}"
        return f"{value:.6g}"
    return str(value)


def short_name(name: str) -> str:
    return SHORT.get(name, name)


def label(values: dict[str, Any]) -> str:
    """"lr=1e-4 r=8": a combination as its job's name ends."""
    return " ".join(f"{short_name(k)}={fmt(v)}" for k, v in values.items())


# --- the combinations ----------------------------------------------------------------------------------------
@dataclass
class Combination:
    position: int
    values: dict[str, Any]
    label: str
    request: dict[str, Any]


def base_name(request: dict[str, Any]) -> str:
    name = request.get("name")
    return name.strip()[:120] if isinstance(name, str) and name.strip() else "sweep"


def combinations(request: dict[str, Any], axes: list[Axis], same: Any = None) -> list[Combination]:
    """One job request per combination of the axes' values (the first axis varying slowest): the base request with
    the values set in its params, named "<name> lr=1e-4 r=8". A value given at the request's top (device, gpu_ids,
    cpu_processes) or under another name for the same parameter (`same(a, b)`: Transformer Lab's names) is taken
    out, so the combination's value is the only one."""
    same = same or (lambda a, b: a == b)
    name = base_name(request)
    out = []
    for position, chosen in enumerate(itertools.product(*(a.values for a in axes))):
        values = {a.name: v for a, v in zip(axes, chosen)}
        combo = {k: v for k, v in request.items() if not any(k == a.name for a in axes if a.name in TOP_LEVEL)}
        params = dict(request.get("params") or {}) if isinstance(request.get("params"), dict) else {}
        params = {k: v for k, v in params.items() if not any(same(k, a.name) for a in axes)}
        params.update(values)
        text = label(values)
        combo.update(params=params, name=f"{name} {text}")
        out.append(Combination(position, values, text, combo))
    return out


def refusal(failed: list[tuple[Combination, list[str]]], total: int) -> list[str]:
    """The problems of the combinations that failed their check, each once with the combinations it is found in:
    "lr=5 r=8, lr=5 r=16: `learning_rate` 5 is more than …", or "every combination: …"."""
    where: dict[str, list[str]] = {}
    for combo, problems in failed:
        for problem in problems:
            where.setdefault(problem, []).append(combo.label)
    return [f"{'every combination' if len(labels) == total else ', '.join(labels)}: {problem}"
            for problem, labels in where.items()]


# --- ranking -------------------------------------------------------------------------------------------------
@dataclass
class Metric:
    key: str  # the metrics.jsonl key ranked by
    higher: bool  # higher is better
    held_out: bool
    note: str  # what the ranking measures, said on the page and in the API
    best_of_run: bool = False  # the best evaluation rather than the last (load_best_model_at_end)

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "higher": self.higher, "held_out": self.held_out, "note": self.note,
                "best_of_run": self.best_of_run}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Metric":
        return cls(d["key"], bool(d["higher"]), bool(d["held_out"]), d.get("note", ""), bool(d.get("best_of_run")))


def _holds_out(params: dict[str, Any]) -> bool:
    return bool(params.get("val_size")) or bool((params.get("eval_split") or "").strip())


def ranking_metric(train_type: str, params_list: list[dict[str, Any]]) -> Metric:
    """What a sweep of these checked combinations is ranked by (see the module's docstring)."""
    grpo = train_type == "grpo"
    if params_list and all(_holds_out(p) for p in params_list):
        key = "eval_reward" if grpo else "eval_loss"
        best = all(p.get("load_best_model_at_end") for p in params_list)
        what = "held-out reward" if grpo else "held-out loss"
        note = (f"ranked by {key} ({what}, {'higher' if grpo else 'lower'} is better): "
                f"{'each job’s best evaluation (load_best_model_at_end)' if best else 'each job’s last evaluation'}")
        return Metric(key, grpo, True, note, best)
    key = "reward" if grpo else "loss"
    some = " every combination" if any(_holds_out(p) for p in params_list) else ""
    note = (f"ranked by the final training {key} ({'higher' if grpo else 'lower'} is better): no held-out split in"
            f"{some or ' this sweep'}; set val_size (e.g. 0.1) to rank by held-out {'reward' if grpo else 'loss'}")
    return Metric(key, grpo, False, note)


_SUMMARY: dict[str, tuple[tuple[int, int], dict[str, Any]]] = {}
_SUMMARY_LOCK = threading.Lock()


def job_metric(metrics_path: Path, metric: Metric) -> dict[str, Any]:
    """A job's value of the sweep's metric from its metrics.jsonl: {value, step, points}; value None before the
    first. The file is read again only when it changed."""
    path = Path(metrics_path)
    try:
        stat = path.stat()
        stamp = (stat.st_size, stat.st_mtime_ns)
    except OSError:
        return {"value": None, "step": None, "points": 0}
    key = f"{path}|{metric.key}|{metric.best_of_run}|{metric.higher}"
    with _SUMMARY_LOCK:
        hit = _SUMMARY.get(key)
    if hit and hit[0] == stamp:
        return hit[1]
    records, _ = logs.read_metrics(path, 0)
    points = [(r.get("step"), r[metric.key]) for r in records
              if isinstance(r.get(metric.key), (int, float)) and not isinstance(r.get(metric.key), bool)
              and math.isfinite(r[metric.key])]
    out: dict[str, Any] = {"value": None, "step": None, "points": len(points)}
    if points:
        step, value = (max if metric.higher else min)(points, key=lambda p: p[1]) if metric.best_of_run \
            else points[-1]
        out.update(value=value, step=step)
    with _SUMMARY_LOCK:
        if len(_SUMMARY) > 4096:
            _SUMMARY.clear()
        _SUMMARY[key] = (stamp, out)
    return out


def rank(rows: list[dict[str, Any]], metric: Metric) -> list[dict[str, Any]]:
    """The sweep's job rows (each with `state` and `metric`), ranked: COMPLETE jobs with a value get `rank` 1, 2, …
    by the metric (ties: the earlier combination first) and the first is `best`; the others have rank None. Ranked
    rows come first, then the rest in combination order."""
    ranked = sorted((r for r in rows if r["state"] == "COMPLETE" and r["metric"] is not None),
                    key=lambda r: ((-r["metric"] if metric.higher else r["metric"]), r["position"]))
    chosen = {id(r) for r in ranked}
    rest = sorted((r for r in rows if id(r) not in chosen), key=lambda r: r["position"])
    for i, row in enumerate(ranked):
        row["rank"], row["best"] = i + 1, i == 0
    for row in rest:
        row["rank"], row["best"] = None, False
    return ranked + rest


def sweep_state(states: list[str], stopped: bool) -> str:
    """QUEUED (none started yet), RUNNING, then COMPLETE (all), STOPPED (stopped as a whole) or FINISHED (some
    failed or were stopped)."""
    if any(s in ("RUNNING", "STOPPING") for s in states):
        return "STOPPING" if stopped else "RUNNING"
    if any(s == "QUEUED" for s in states):
        return "RUNNING" if any(s != "QUEUED" for s in states) else "QUEUED"
    if stopped:
        return "STOPPED"
    return "COMPLETE" if states and all(s == "COMPLETE" for s in states) else "FINISHED"


# --- the store -----------------------------------------------------------------------------------------------
@dataclass
class Sweep:
    id: int
    name: str
    plugin: str
    owner: str | None
    axes: list[Axis]
    metric: Metric
    created: float
    stopped: float | None
    jobs: list[dict[str, Any]] = field(default_factory=list)  # {job_id, position, label, values}


class SweepStore:
    """The `sweeps` and `sweep_jobs` tables beside the jobs in the workspace's jobs.sqlite (its own connection:
    the job store's stays as it is). Thread-safe."""

    def __init__(self, db_path: Path):
        self._db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        with self._lock:
            self._db.executescript(SCHEMA)  # a workspace made before sweeps gains the tables; its jobs stay

    def create(self, name: str, plugin: str, owner: str | None, axes: list[Axis], metric: Metric) -> int:
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO sweeps (name, plugin, owner, axes, metric, created) VALUES (?, ?, ?, ?, ?, ?)",
                (name, plugin, owner, json.dumps([[a.name, a.values] for a in axes]), json.dumps(metric.as_dict()),
                 time.time()))
            return int(cur.lastrowid)

    def add_job(self, sweep_id: int, job_id: int, combo: Combination) -> None:
        with self._lock:
            self._db.execute("INSERT INTO sweep_jobs (job_id, sweep_id, position, label, vals) VALUES (?, ?, ?, ?, ?)",
                             (int(job_id), int(sweep_id), combo.position, combo.label, json.dumps(combo.values)))

    def forget(self, sweep_id: int) -> None:
        """A sweep that could not be queued whole: its row and links go."""
        with self._lock:
            self._db.execute("DELETE FROM sweep_jobs WHERE sweep_id = ?", (int(sweep_id),))
            self._db.execute("DELETE FROM sweeps WHERE id = ?", (int(sweep_id),))

    def mark_stopped(self, sweep_id: int) -> None:
        with self._lock:
            self._db.execute("UPDATE sweeps SET stopped = ? WHERE id = ? AND stopped IS NULL",
                             (time.time(), int(sweep_id)))

    def get(self, sweep_id: int) -> Sweep | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM sweeps WHERE id = ?", (int(sweep_id),)).fetchone()
            links = self._db.execute("SELECT * FROM sweep_jobs WHERE sweep_id = ? ORDER BY position",
                                     (int(sweep_id),)).fetchall()
        if row is None:
            return None
        return Sweep(id=row["id"], name=row["name"], plugin=row["plugin"], owner=row["owner"],
                     axes=[Axis(n, v) for n, v in json.loads(row["axes"])],
                     metric=Metric.from_dict(json.loads(row["metric"])), created=row["created"],
                     stopped=row["stopped"],
                     jobs=[{"job_id": r["job_id"], "position": r["position"], "label": r["label"],
                            "values": json.loads(r["vals"])} for r in links])

    def ids(self, owner: str | None = None, limit: int = 200) -> list[int]:
        """The newest sweeps' ids; only `owner`'s when given."""
        where, args = ("WHERE owner = ? ", (owner,)) if owner is not None else ("", ())
        with self._lock:
            rows = self._db.execute(f"SELECT id FROM sweeps {where}ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return [r["id"] for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
