"""Checks of single raw values from a visitor, before anything uses them: names (no control or text-direction
characters), paths (too long is a message, not an OSError), job ids and counts (whole numbers only: `1.5` is
not job 1). Each message names the field and says what to give instead."""
from __future__ import annotations

import errno
import math
import re
import unicodedata
from pathlib import Path
from typing import Any

from .request_error import RequestError

MAX_JOB_ID = 2**63 - 1  # SQLite's INTEGER
# Explicit direction controls: U+202E shows "report\u202egpj.exe" as "reportexe.jpg".
_DIRECTION = {"LRE", "RLE", "LRO", "RLO", "PDF", "LRI", "RLI", "FSI", "PDI"}
_MARKS = {"\u200e", "\u200f", "\u061c"}  # left-to-right, right-to-left and Arabic letter marks
_DIGITS = re.compile(r"[0-9]{1,19}")


def short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"… ({len(text):,} characters)"


def printable(field: str, text: str, max_chars: int | None = None) -> str:
    """`text` when it is a name a person can read as it is: no control character (NUL, newline, escape), no
    text-direction override, no lone surrogate; else ValueError naming the field and the character."""
    if max_chars is not None and len(text) > max_chars:
        raise ValueError(f"`{field}` is {len(text):,} characters long; at most {max_chars:,}: shorten it")
    for i, ch in enumerate(text):
        category = unicodedata.category(ch)
        if category in ("Cc", "Cs"):
            what = "a control character" if category == "Cc" else "an unpaired surrogate"
            raise ValueError(f"`{field}` contains {what} (U+{ord(ch):04X}) at position {i + 1}: remove it")
        if ch in _MARKS or unicodedata.bidirectional(ch) in _DIRECTION:
            raise ValueError(f"`{field}` contains a text-direction control (U+{ord(ch):04X} "
                             f"{unicodedata.name(ch, '')}) at position {i + 1}, which makes a name read other "
                             "than it is: remove it")
    return text


def path_exists(field: str, text: str) -> bool:
    """Does `text` name an existing file or folder? A path the system refuses to look up (too long, a NUL) is a
    ValueError naming the field, not an OSError."""
    try:
        return Path(text).expanduser().exists()
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise ValueError(f"`{field}` {short(text)} is too long for a path (at most 4096 characters, 255 for "
                             "one folder or file name) and is no Hub id: give a shorter path or an id like "
                             "org/name") from None
        raise ValueError(f"`{field}` {short(text)} cannot be looked up ({exc.strerror})") from None
    except ValueError:  # an embedded NUL
        raise ValueError(f"`{field}` {short(text)} contains a NUL character: remove it") from None


def whole_number(field: str, value: Any, low: int, high: int) -> int:
    """An integer from `low` to `high`: an int, a float with nothing after the point (a number box sends 3.0),
    or digits; never a bool, 1.5, NaN or infinity. RequestError naming the field."""
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        number = int(value.strip())
    if number is None or not low <= number <= high:
        raise RequestError([f"`{field}` must be a whole number from {low:,} to {high:,}, got {short(value)}"])
    return number


def job_id(value: Any) -> int:
    """A job id as the store has it: 1.5 is refused (int() made it job 1, and delete_job(1.5) deleted job 1)."""
    try:
        return whole_number("job_id", value, 1, MAX_JOB_ID)
    except RequestError:
        raise RequestError([f"`job_id` must be a whole number (the id /list_jobs shows), got {short(value)}"]
                           ) from None
