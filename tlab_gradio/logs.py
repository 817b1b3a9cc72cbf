"""Reading job logs and metrics without reading them whole.

`tail` seeks from the end and reads backwards in blocks, so the last lines of a
ten-million-line log cost the same as those of a short one. `follow` returns what
was appended since an offset, which is how the page streams a running log.
"""
from __future__ import annotations

import json
import os
import re
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
_RANK_PREFIX = re.compile(r"^\[(?:rank|default)\d+\]:\s?")
_PLAIN = ("NonFiniteTrainingError", "TrainingDataError")
_HINTS = (
    (re.compile(r"OutOfMemoryError|CUDA out of memory|CUBLAS_STATUS_ALLOC_FAILED", re.I),
     "the GPU ran out of memory: set Gradient Checkpointing on, lower Batch Size per Device or Maximum Sequence "
     "Length, train with LoRA (or QLoRA), or shard the model over several GPUs with FSDP"),
    (re.compile(r"No space left on device", re.I),
     "the disk is full: delete old jobs' checkpoints, or lower Checkpoints Kept"),
    (re.compile(r"Address already in use|EADDRINUSE", re.I),
     "the main process port is taken: set Main Process Port to 0 (any free port) or another port"),
    (re.compile(r"NCCL", re.I),
     "the GPUs could not talk to each other (NCCL): check GPU IDs to Train, and NCCL_P2P_DISABLE=1 on machines "
     "without peer-to-peer"),
)


def failure(path: Path | str, lines: int = 4000) -> str | None:
    """The error that ended a failed job, from its log: the first traceback's exception (where one
    exception caused another, the last of that chain), with a hint where the cause is a known one.
    None when the log holds no traceback."""
    # torchrun prefixes each rank's lines ("[rank1]: Traceback ..."): read them as the rank wrote them
    text = [_RANK_PREFIX.sub("", line, count=1) for line in tail(path, lines)]
    found = None
    for i, line in enumerate(text):
        if not line.startswith("Traceback (most recent call last)"):
            continue
        for j in range(i + 1, len(text)):
            match = _EXCEPTION.match(text[j])
            if match and not text[j].startswith((" ", "\t")):
                found = (j, match)
                break
        if found is None:
            continue
        j, match = found
        if match.group(1).split(".")[-1] in _LAUNCHER:
            found = None
            continue
        follows = next((x for x in text[j + 1:j + 40] if x.strip() and not x.startswith(" ")), "")
        if follows.startswith(_CHAINED):  # the chain goes on: its last exception is what was raised
            found = None
            continue
        break
    if found is None:
        return None
    name, message = found[1].group(1), found[1].group(2).strip()
    if len(message) > 400:
        message = message[:400] + "…"
    # The trainers' own stops already say what happened and what to change: the message alone
    reason = message if name.split(".")[-1] in _PLAIN and message else f"{name}: {message}" if message else name
    hint = next((h for pattern, h in _HINTS if pattern.search(reason)), None)
    return f"{reason} ({hint})" if hint else reason
