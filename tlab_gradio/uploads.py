"""Dataset files uploaded through the page, kept in the workspace (TLAB_HOME/uploads/<sha256[:12]>/<name>):
gradio's upload cache may be cleaned, and a queued or resumed job still needs its file. In hosted mode
these are the only dataset files a request may name (job_request checks it)."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

_SAVED: dict[tuple, str] = {}


def save(path: str | Path, folder: Path) -> str:
    """Copy the file into `folder` under its content's hash and return the stored path; the same content
    is stored once. Remembered by (folder, path, size, mtime), so the live checks do not hash the file on
    every keystroke. Raises OSError when the file cannot be read."""
    src = Path(path)
    stat = src.stat()
    memo = (str(folder), str(src), stat.st_size, stat.st_mtime_ns)
    if memo in _SAVED and Path(_SAVED[memo]).is_file():
        return _SAVED[memo]
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:12]
    dest = folder / digest / src.name
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
    _SAVED[memo] = str(dest)
    return str(dest)
