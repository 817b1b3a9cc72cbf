"""A folder built once, however many processes ask at the same time: built aside, then renamed into place."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def build_once(target: Path, build: Callable[[Path], None], marker: str = "config.json") -> Path:
    """`build(tmp)` fills a private folder next to `target`, which is then renamed to it: a reader never sees a
    half-built folder, and where another process finished first (the rename fails) its folder is kept. A folder
    is complete when it holds `marker`."""
    if (target / marker).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; what is built here is no secret
        try:
            os.rename(tmp, target)
        except OSError:  # someone else finished first
            if not (target / marker).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
