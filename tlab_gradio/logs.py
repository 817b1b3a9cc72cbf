"""Reading job logs and metrics without reading them whole.

`tail` seeks from the end and reads backwards in blocks, so the last lines of a
ten-million-line log cost the same as those of a short one. `follow` returns what
was appended since an offset, which is how the page streams a running log.
"""
from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path
from typing import BinaryIO

BLOCK = 64 * 1024


def tail_file(handle: BinaryIO, lines: int, block: int = BLOCK) -> list[str]:
    """The last `lines` lines of an open binary file (a trailing partial line counts as a line)."""
    if lines <= 0:
        return []
    handle.seek(0, os.SEEK_END)
    pos = handle.tell()
    data = b""
    # One more newline than lines wanted, so the first kept line is whole.
    while pos > 0 and data.count(b"\n") <= lines:
        step = min(block, pos)
        pos -= step
        handle.seek(pos)
        data = handle.read(step) + data
    text = data.decode("utf-8", errors="replace")
    parts = text.splitlines()
    return parts[-lines:]


def tail(path: Path | str, lines: int = 100) -> list[str]:
    try:
        with open(path, "rb") as handle:
            return tail_file(handle, lines)
    except FileNotFoundError:
        return []


# --- a job ended on purpose (Stop, the server's time limit, the watchdog) -----------------------------------
# The app writes STOPPING as it signals the job's processes, and the plain ending once they are gone. What they
# print in between is their reaction to SIGTERM (torchelastic's "Sending process … closing signal SIGTERM" and
# its SignalException traceback): the log file keeps it, the page and the API show the log without it.
STOPPING = "[tlab] stopping job "
APP_LINE = "[tlab] "
STOP_NOISE_LINES = 2000  # read this much more of a stopped job's tail, so its noise is skipped, not shown instead


def stopping_line(job_id: int, reason: str) -> str:
    return f"{STOPPING}{job_id}: {reason} (its processes are sent SIGTERM)\n"


def ended_line(reason: str) -> str:
    return f"{APP_LINE}{reason}\n"


def without_stop_noise(lines: list[str]) -> list[str]:
    """`lines` less what follows each STOPPING line up to the app's next line (the plain ending:
    "[tlab] stopped by the user at step 7", or a resumed job's next attempt)."""
    out, hiding = [], False
    for line in lines:
        if hiding and line.startswith(APP_LINE):
            hiding = False
        if not hiding:
            out.append(line)
        if line.startswith(STOPPING):
            hiding = True
    return out


def shown_tail(path: Path | str, lines: int, stopped: bool) -> list[str]:
    """The log's last `lines` lines as a person reads them: for a job that was ever ended on purpose
    (`stopped`), without the noise of its processes being ended."""
    if not stopped:
        return tail(path, lines)
    return without_stop_noise(tail(path, lines + STOP_NOISE_LINES))[-lines:] if lines > 0 else []


def follow(path: Path | str, offset: int = 0, max_bytes: int = 1 << 20) -> tuple[str, int]:
    """Text appended after `offset` (whole lines only, at most `max_bytes`) and the new offset."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            if offset > size:  # file was replaced: start again
                offset = 0
            if size - offset > max_bytes:  # far behind: skip to the recent part
                offset = size - max_bytes
            handle.seek(offset)
            data = handle.read(size - offset)
    except FileNotFoundError:
        return "", 0
    cut = data.rfind(b"\n") + 1
    return data[:cut].decode("utf-8", errors="replace"), offset + cut


def _records(lines: list[str]) -> list[dict]:
    out = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line being written right now
        if isinstance(record, dict):
            out.append(record)
    return out


def last_metrics(path: Path | str, count: int = 1) -> list[dict]:
    """The last `count` complete records (one more line is read: the last may be half-written)."""
    return _records(tail(path, count + 1))[-count:] if count > 0 else []


def read_metrics(path: Path | str, offset: int = 0) -> tuple[list[dict], int]:
    """Metric records appended after `offset`, and the new offset (for incremental charts)."""
    text, new_offset = follow(path, offset, max_bytes=1 << 62)
    return _records(text.splitlines()), new_offset


# --- why a job failed -------------------------------------------------------------------
_EXCEPTION = re.compile(r"^(?:\[[^\]]*\]:?\s*)?([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit|Failure)): ?(.*)$")
_CHAINED = ("The above exception was the direct cause", "During handling of the above exception")
# The launcher's own report that a rank failed: it names no cause, the rank's traceback above does.
_LAUNCHER = ("CalledProcessError", "ChildFailedError", "SignalException")
# torch prefixes each line a rank's uncaught exception prints ("[rank1]: Traceback ..."; torchrun's --tee
# "[default1]:"): the prefix says which rank wrote it
_RANK_PREFIX = re.compile(r"^\[(?:rank|default)(\d+)\]:\s?")
_PLAIN = ("NonFiniteTrainingError", "TrainingDataError")
# The line the app writes as it launches a job (attempt_line): a resumed job's log holds every attempt's output
_ATTEMPT = re.compile(r"^\[tlab\] job \d+ attempt \d+: ")
DISK_FULL_HINT = "the disk is full: delete old jobs' checkpoints, or lower Checkpoints Kept"
_HINTS = (
    (re.compile(r"OutOfMemoryError|CUDA out of memory|CUBLAS_STATUS_ALLOC_FAILED", re.I),
     "the GPU ran out of memory: set Gradient Checkpointing on, lower Batch Size per Device or Maximum Sequence "
     "Length, train with LoRA (or QLoRA), or shard the model over several GPUs with FSDP"),
    (re.compile(r"No space left on device", re.I), DISK_FULL_HINT),
    (re.compile(r"Address already in use|EADDRINUSE", re.I),
     "the main process port is taken: set Main Process Port to 0 (any free port) or another port"),
    (re.compile(r"NCCL", re.I),
     "the GPUs could not talk to each other (NCCL): check GPU IDs to Train, and NCCL_P2P_DISABLE=1 on machines "
     "without peer-to-peer"),
)


def attempt_line(job_id: int, attempt: int, argv: list[str]) -> str:
    """The line the app appends to a job's log as it launches it; `failure` reads what follows the last one."""
    return f"[tlab] job {job_id} attempt {attempt}: {' '.join(argv)}\n"


def signal_reason(code: int) -> str:
    """How a process that exited with `code` ended, in words (negative: the signal that killed it)."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (out of memory?)" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exited with code {code}"


def _traceback_error(text: list[str]) -> tuple[int, str, str] | None:
    """(line, exception name, message) of the first traceback in `text` whose exception is not the launcher's
    report (where one exception caused another, the last of that chain: what was raised)."""
    for i, line in enumerate(text):
        if not line.startswith("Traceback (most recent call last)"):
            continue
        for j in range(i + 1, len(text)):
            match = _EXCEPTION.match(text[j])
            if match and not text[j].startswith((" ", "\t")):
                break
        else:
            continue
        if match.group(1).split(".")[-1] in _LAUNCHER:
            continue
        follows = next((x for x in text[j + 1:j + 40] if x.strip() and not x.startswith(" ")), "")
        if follows.startswith(_CHAINED):  # the chain goes on: its last exception is what was raised
            continue
        return i, match.group(1), match.group(2).strip()
    return None


def _described(name: str, message: str) -> tuple[str, str]:
    """(exception name, what the reason says of it)."""
    if len(message) > 400:
        message = message[:400] + "…"
    # The trainers' own stops already say what happened and what to change: the message alone
    return name, message if _plain(name) and message else f"{name}: {message}" if message else name


def _plain(name: str | None) -> bool:
    return bool(name) and name.split(".")[-1] in _PLAIN


def _rank_tracebacks(text: list[str]) -> list[tuple[int, int | None, str, str]]:
    """The first traceback of each rank (lines with its `[rankN]:` prefix, read as the rank wrote them, since
    two ranks' lines interleave) and of the unprefixed lines (rank None): (line, rank, name, message), in the
    order they appear in the log."""
    streams: dict[int | None, list[tuple[int, str]]] = {}
    for i, line in enumerate(text):
        match = _RANK_PREFIX.match(line)
        rank, own = (int(match.group(1)), line[match.end():]) if match else (None, line)
        streams.setdefault(rank, []).append((i, own))
    found = []
    for rank, lines in streams.items():
        error = _traceback_error([line for _, line in lines])
        if error:
            found.append((lines[error[0]][0], rank, error[1], error[2]))
    return sorted(found, key=lambda f: f[0])


def _root_cause(text: list[str]) -> dict | None:
    """The rank torchelastic's agent reports as the root cause of a failed launch ("Root Cause (first observed
    failure)": rank, local_rank, exitcode, error_file), from the last such report in the log."""
    start = max((i for i, line in enumerate(text) if line.startswith("Root Cause (first observed failure)")),
                default=None)
    if start is None:
        return None
    fields: dict = {}
    for line in text[start + 1:start + 12]:
        key, sep, value = line.strip().partition(":")
        key, value = key.strip(), value.strip()
        if not sep or key.startswith("="):
            continue
        if key == "rank" and (m := re.match(r"(\d+)(?: \(local_rank: (\d+)\))?", value)):
            fields["rank"], fields["local_rank"] = int(m.group(1)), int(m.group(2) or m.group(1))
        elif key == "exitcode" and (m := re.match(r"(-?\d+)", value)):
            fields["exitcode"] = int(m.group(1))
        elif key == "error_file":
            fields["error_file"] = value
        if key == "traceback":
            break
    return fields if "rank" in fields else None


def _error_file_cause(path: Path) -> tuple[float, tuple[str | None, str]] | None:
    """(timestamp, (name, error)) from one rank's torchelastic error file: the error its traceback ends on (the
    raised one of a chain, with its full name), else the file's message."""
    try:
        message = json.loads(path.read_text())["message"]
        if isinstance(message, str):
            return 0.0, (None, message)
        info = message.get("extraInfo") or {}
        error = _traceback_error(str(info.get("py_callstack", "")).splitlines())
        cause = _described(error[1], error[2]) if error else (None, str(message["message"]))
        return float(info.get("timestamp") or 0), cause
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


RankErrors = dict[int, tuple[float, tuple[str | None, str]]]  # local rank -> (timestamp, (exception name, error))


def rank_errors(error_dir: Path | str | None, since: float | None = None) -> RankErrors:
    """Each failed rank's error from torchelastic's error files of the latest launch in `error_dir` (the agent's
    log folder: <run>/attempt_<n>/<local rank>/error.json, written by the rank that raised), if it was made after
    `since` (an attempt that failed before its agent started has none)."""
    if not error_dir:
        return {}
    runs = [p for p in Path(error_dir).glob("*") if p.is_dir() and (since is None or p.stat().st_mtime >= since)]
    if not runs:
        return {}
    latest = max(runs, key=lambda p: p.stat().st_mtime)  # a resumed job launches again: a new run folder
    found = {}
    for path in sorted(latest.glob("attempt_*/*/error.json")):
        cause = _error_file_cause(path)
        if cause and path.parent.name.isdigit():
            found[int(path.parent.name)] = cause
    return found


def failure(path: Path | str, lines: int = 4000, error_dir: Path | str | None = None,
            since: float | None = None) -> str | None:
    """The error that ended a failed job's last attempt (`since`: when it started), with a hint where the cause is
    a known one, and the failing rank where torchelastic ran several. Sources, most exact first: the ranks'
    torchelastic error files in `error_dir` (they hold the error even when the log lost it), then the log after
    the last attempt's first line: the agent's root-cause report (which rank failed first, and the signal that
    killed it), each rank's `[rankN]:` traceback, the first plain traceback (where one exception caused another,
    the last of that chain). None when none of them names a cause."""
    text = tail(path, lines)
    text = text[max((i for i, line in enumerate(text) if _ATTEMPT.match(line)), default=0):]
    root = _root_cause(text)
    files = rank_errors(error_dir, since)
    tracebacks = _rank_tracebacks(text)
    rank, cause = None, None  # cause: (exception name or None, text)
    if root:  # the agent's own verdict on which rank failed first
        rank, code = root["rank"], root.get("exitcode")
        own = [t for t in tracebacks if t[1] == rank] or [t for t in tracebacks if t[1] is None]
        if root["local_rank"] in files:
            cause = files[root["local_rank"]][1]
        elif code is not None and code < 0:  # killed: a signal leaves no traceback
            cause = None, signal_reason(code)
        elif own:
            cause = _described(own[0][2], own[0][3])
        elif code is not None:
            cause = None, signal_reason(code)
    elif files:  # no report (the log lost it, or the agent died): the rank whose error came first
        rank, (_, cause) = min(files.items(), key=lambda item: (item[1][0], item[0]))
    elif tracebacks:
        _, rank, name, message = tracebacks[0]
        cause = _described(name, message)
    if cause is None:
        return None
    name, reason = cause
    hint = next((h for pattern, h in _HINTS if pattern.search(reason)), None)
    reason = f"{reason} ({hint})" if hint else reason
    # A trainer's own stop is the job's (every rank stops on it): no rank named
    return f"rank {rank}: {reason}" if rank is not None and not _plain(name) else reason
