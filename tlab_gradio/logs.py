"""Reading job logs and metrics without reading them whole.

`tail` seeks from the end and reads backwards in blocks, so the last lines of a
ten-million-line log cost the same as those of a short one. `follow` returns what
was appended since an offset, which is how the page streams a running log.
"""
from __future__ import annotations

import json
import os
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
