"""Your own GRPO reward functions: Python files in the workspace's rewards folder.

A reward file holds functions with TRL's signature, `def f(prompts, completions, **kwargs) -> list[float]`
(completions are strings, or lists of chat messages for a chat model; dataset columns such as `answer`
come as keyword lists). A job names them with weights in `params.custom_rewards`:
`[{"function": "myrewards.py:brevity", "weight": 1.0}]`.

The web process reads these files (ast) but never imports them: before a job may launch, `probe`
imports each file in a child process and calls each chosen function on a sample completion. The job
folder gets its own copy of each file (`job_files`), which the trainer imports from there (`load`),
so a job reruns by hand from its folder even after the workspace's file has changed.

Run as `python -m tlab_gradio.reward_files` it is that child: a JSON request on stdin, the problems
found as JSON on its last stdout line.
"""
from __future__ import annotations

import ast
import hashlib
import json
import math
import numbers
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

JOB_FOLDER = "rewards"  # inside the job folder: the job's own copies
FILE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}\.py$")  # an importable module name
LABEL = re.compile(r"^([A-Za-z_][A-Za-z0-9_]{0,63}\.py):([A-Za-z_][A-Za-z0-9_]*)$")
MAX_BYTES = 1_000_000
MAX_WEIGHT = 100.0
PROBE_TIMEOUT = 60.0  # a file that imports torch takes several seconds on 2 cores
PROBE_MARK = "TLAB_PROBE "
HOSTED_REFUSAL = ("custom reward functions are Python code from a visitor and run on this server: "
                  "turned off on this server (hosted mode)")


@dataclass(frozen=True)
class Choice:
    file: str
    function: str
    weight: float

    @property
    def label(self) -> str:
        return f"{self.file}:{self.function}"

    def as_dict(self) -> dict[str, Any]:
        return {"function": self.label, "weight": self.weight}


@dataclass(frozen=True)
class Sample:
    """What a probe hands each function: TRL's arguments for two completions of one prompt."""
    prompt: Any  # a string, or a list of chat messages
    answer: str
    completions: list


def folder(home: Path) -> Path:
    return Path(home) / "rewards"


def functions_in(source: str) -> list[str]:
    """Top-level functions that can take TRL's call: a `completions` argument or **kwargs."""
    found = []
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            names = {a.arg for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs}
            if "completions" in names or node.args.kwarg:
                found.append(node.name)
    return found


def _syntax(name: str, exc: SyntaxError) -> str:
    return f"reward file {name}: syntax error on line {exc.lineno}: {exc.msg}"


def list_files(home: Path) -> list[dict[str, Any]]:
    """Each reward file with its reward functions, or the reason it has none."""
    rows = []
    base = folder(home)
    for path in sorted(base.glob("*.py")) if base.is_dir() else []:
        try:
            rows.append({"file": path.name, "functions": functions_in(path.read_text(encoding="utf-8")),
                         "error": None})
        except SyntaxError as exc:
            rows.append({"file": path.name, "functions": [], "error": _syntax(path.name, exc)})
        except (OSError, UnicodeDecodeError) as exc:
            rows.append({"file": path.name, "functions": [], "error": f"reward file {path.name}: {exc}"})
    return rows


def save(home: Path, name: str, source: str | bytes) -> dict[str, Any]:
    """Check an uploaded file (name, size, syntax, at least one reward function) and keep it in the
    rewards folder, replacing a file of that name. Raises ValueError saying what is wrong."""
    if not isinstance(source, (str, bytes)):
        raise ValueError(f"`source` must be the reward file's Python text; got {type(source).__name__}")
    name = str(name or "").strip()
    if not FILE_NAME.match(name):  # no folders: the file goes into the rewards folder and nowhere else
        raise ValueError(f"reward file name {name!r}: use a Python module name ending in .py "
                         "(letters, digits, '_'; e.g. myrewards.py)")
    if isinstance(source, bytes):
        try:
            source = source.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"reward file {name} is not UTF-8 text") from None
    if len(source.encode("utf-8")) > MAX_BYTES:
        raise ValueError(f"reward file {name} is larger than {MAX_BYTES // 1000} kB")
    try:
        functions = functions_in(source)
    except SyntaxError as exc:
        raise ValueError(_syntax(name, exc)) from None
    if not functions:
        raise ValueError(f"reward file {name} defines no reward function: expected "
                         "`def name(prompts, completions, **kwargs)` returning one number per completion")
    base = folder(home)
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".{name}.tmp"
    tmp.write_text(source, encoding="utf-8")
    os.replace(tmp, base / name)
    return {"file": name, "functions": functions, "error": None}


def parse_choices(value: Any) -> tuple[list[Choice], list[str]]:
    """`custom_rewards` of a request: a list of {"function": "file.py:name", "weight": number}
    (or of "file.py:name", weight 1). Returns the choices and the problems, each naming the entry."""
    if value in (None, "", []):
        return [], []
    if not isinstance(value, list):
        return [], ['`custom_rewards` must be a list like [{"function": "myrewards.py:brevity", "weight": 1.0}]']
    choices, problems, seen = [], [], set()
    for i, item in enumerate(value):
        where = f"`custom_rewards` entry {i + 1}"
        if isinstance(item, str):
            item = {"function": item}
        if not isinstance(item, dict):
            problems.append(f'{where}: expected {{"function": "file.py:name", "weight": number}}, got {item!r}')
            continue
        unknown = sorted(set(item) - {"function", "weight"})
        if unknown:
            problems.append(f"{where}: unknown key{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))} "
                            "(keys: function, weight)")
        match = LABEL.match(str(item.get("function") or "").strip())
        if not match:
            problems.append(f"{where}: `function` must be file.py:function_name, got {item.get('function')!r}")
            continue
        weight = item.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight) \
                or not 0 <= weight <= MAX_WEIGHT:
            problems.append(f"{where} ({match.group(0)}): weight must be a number from 0 to {MAX_WEIGHT:g}, "
                            f"got {weight!r}")
            continue
        choice = Choice(match.group(1), match.group(2), float(weight))
        if choice.label in seen:
            problems.append(f"{where}: {choice.label} is chosen twice")
            continue
        seen.add(choice.label)
        choices.append(choice)
    return choices, problems


def name_clashes(choices: list[Choice], builtin: list[str]) -> list[str]:
    """TRL logs each reward as rewards/<function name>/mean: two rewards of one name would share it."""
    problems, names = [], {}
    for c in choices:
        if c.function in builtin:
            problems.append(f"reward function {c.label} has the name of the built-in reward `{c.function}`: "
                            "rename it, or turn the built-in off")
        elif c.function in names:
            problems.append(f"reward functions {names[c.function]} and {c.label} share the name `{c.function}` "
                            "(metrics are logged by name): rename one")
        names.setdefault(c.function, c.label)
    return problems


def missing_files(home: Path, choices: list[Choice]) -> list[str]:
    present = {r["file"] for r in list_files(home)}
    return [f"reward file {f} is not in the rewards folder (files: {', '.join(sorted(present)) or 'none'}); "
            "upload it first" for f in dict.fromkeys(c.file for c in choices) if f not in present]


def job_files(home: Path, choices: list[Choice]) -> dict[str, Path]:
    """What goes into the job folder: `rewards/<file>` -> the workspace's file."""
    return {f"{JOB_FOLDER}/{c.file}": folder(home) / c.file for c in choices}


def sample(question: str, answer: str, system: str, markers: Any, conversational: bool) -> Sample:
    """A prompt as the trainer builds it, and two completions: a well-formatted right answer and a bare
    one (so a wrong length and a crash on an unformatted completion both show)."""
    good = (f"{markers.reasoning_start}\nWorking it out.\n{markers.reasoning_end}\n"
            f"{markers.answer_start}\n{answer}\n{markers.answer_end}")
    texts = [good, "I am not sure."]
    if conversational:
        prompt = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
        return Sample(prompt, answer, [[{"role": "assistant", "content": t}] for t in texts])
    return Sample(f"{system}\n\n{question}\n\n" if system else f"{question}\n\n", answer, texts)


_PROBED: dict[str, list[str]] = {}  # the live form checks on every change: probe each version once


def probe(home: Path, choices: list[Choice], sample_: Sample, python: str | None = None,
          timeout: float | None = None) -> list[str]:
    """Import each chosen file and call each chosen function on the sample, in a child process
    (argv list, no shell). Returns the problems, each naming the file and the function."""
    if not choices:
        return []
    files = {c.file: str(folder(home) / c.file) for c in choices}
    request = {"files": files, "functions": [[c.file, c.function] for c in choices],
               "prompt": sample_.prompt, "answer": sample_.answer, "completions": sample_.completions}
    digest = hashlib.sha256(json.dumps(request, sort_keys=True).encode())
    for path in files.values():
        digest.update(Path(path).read_bytes())
    key = f"{python}:{digest.hexdigest()}"
    if key in _PROBED:
        return list(_PROBED[key])
    from . import settings

    limit = timeout or PROBE_TIMEOUT
    argv = [python or sys.executable, "-m", "tlab_gradio.reward_files"]
    names = ", ".join(c.label for c in choices)
    try:
        done = subprocess.run(argv, input=json.dumps(request), capture_output=True, text=True, timeout=limit,
                              cwd=str(settings.REPO_DIR))  # the package importable, as in the trainer
    except subprocess.TimeoutExpired:
        return [f"reward functions {names}: importing and calling them on a sample completion took longer than "
                f"{limit:g} s"]
    lines = [line for line in done.stdout.splitlines() if line.startswith(PROBE_MARK)]
    if not lines:
        tail = [line for line in done.stderr.splitlines() if line.strip()]
        return [f"reward functions {names}: the check process ended with code {done.returncode}"
                + (f": {tail[-1].strip()}" if tail else "")]
    problems = json.loads(lines[-1][len(PROBE_MARK):])["problems"]
    if len(_PROBED) > 256:  # a long-running app: forget old versions
        _PROBED.clear()
    _PROBED[key] = problems
    return list(problems)


def load(job_dir: Path, entries: list[dict[str, Any]]) -> tuple[list, list[float]]:
    """The trainer's side: the chosen functions imported from the job folder's copies, and their weights."""
    funcs, weights = [], []
    for entry in entries or []:
        file, _, name = entry["function"].partition(":")
        module = _import(Path(job_dir) / JOB_FOLDER / file)
        funcs.append(getattr(module, name))
        weights.append(float(entry["weight"]))
    return funcs, weights


_MODULES: dict[str, Any] = {}


def _import(path: Path):
    import importlib.util

    key = str(path.resolve())
    if key not in _MODULES:
        spec = importlib.util.spec_from_file_location(f"tlab_rewards_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses and pickling look the module up by name
        spec.loader.exec_module(module)
        _MODULES[key] = module
    return _MODULES[key]


# --- the child process ------------------------------------------------------------------------
def _last_line(exc: BaseException, path: str) -> str:
    """The traceback's last line, with the line of the user's file where it was raised."""
    import traceback

    text = traceback.format_exception_only(type(exc), exc)[-1].strip()
    lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if f.filename == path]
    if isinstance(exc, SyntaxError) and exc.filename == path:
        lines.append(exc.lineno)
    return f"{text} (line {lines[-1]})" if lines else text


def _call(func, request: dict[str, Any]):
    import asyncio
    import inspect

    n = len(request["completions"])
    kwargs = {"prompts": [request["prompt"]] * n, "completions": request["completions"],
              "completion_ids": [[1, 2, 3]] * n, "answer": [request["answer"]] * n, "trainer_state": None,
              "log_extra": lambda *a, **k: None, "log_metric": lambda *a, **k: None}
    if inspect.iscoroutinefunction(func):
        return asyncio.run(func(**kwargs))
    return func(**kwargs)


def _wrong_return(label: str, result: Any, n: int) -> str | None:
    if not isinstance(result, (list, tuple)):
        return (f"reward function {label} returned {type(result).__name__}, not a list of numbers "
                f"(one per completion)")
    if len(result) != n:
        return f"reward function {label} returned {len(result)} values for {n} completions (one per completion)"
    for i, value in enumerate(result):
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
            return (f"reward function {label} returned {type(value).__name__} {value!r} at position {i}, "
                    "not a number (or None)")
    return None


def _probe_main() -> None:
    import contextlib

    request = json.loads(sys.stdin.read())
    problems: list[str] = []
    modules: dict[str, Any] = {}
    with contextlib.redirect_stdout(sys.stderr):  # the user's prints must not hide our answer
        for file, path in request["files"].items():
            try:
                modules[file] = _import(Path(path))
            except BaseException as exc:  # noqa: BLE001 - SystemExit from a user's file is an error too
                problems.append(f"reward file {file}: import failed: {_last_line(exc, path)}")
        for file, name in request["functions"]:
            if file not in modules:
                continue
            label = f"{file}:{name}"
            func = getattr(modules[file], name, None)
            if not callable(func):
                found = [k for k, v in vars(modules[file]).items()
                         if callable(v) and not k.startswith("_") and getattr(v, "__module__", "") ==
                         modules[file].__name__]
                problems.append(f"reward file {file} has no function `{name}`"
                                + (f" (it has: {', '.join(found)})" if found else ""))
                continue
            try:
                result = _call(func, request)
            except BaseException as exc:  # noqa: BLE001
                problems.append(f"reward function {label} raised on a sample completion: "
                                f"{_last_line(exc, request['files'][file])}")
                continue
            wrong = _wrong_return(label, result, len(request["completions"]))
            if wrong:
                problems.append(wrong)
    print(PROBE_MARK + json.dumps({"problems": problems}), flush=True)


if __name__ == "__main__":
    _probe_main()
