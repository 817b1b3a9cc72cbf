"""The files of one job folder, shared by the app and the trainer programs.

Kept free of heavy imports: the web process reads these files without importing
torch or transformers.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

CONFIG = "config.json"
LOG = "log.txt"
METRICS = "metrics.jsonl"
PROGRESS = "progress.json"
RESULT = "result.json"
CHECKPOINTS = "checkpoints"
OUTPUT = "output"
RANK_ERRORS = "torchelastic"  # torchelastic's log folder: <run>/attempt_<n>/<local rank>/error.json


def write_json_atomic(path: Path, data: dict) -> None:
    """Readers (the page, every second) never see a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def last_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest complete `checkpoint-N` (one with its trainer_state.json written)."""
    found = []
    for path in checkpoint_dir.glob("checkpoint-*"):
        suffix = path.name.rsplit("-", 1)[-1]
        if suffix.isdigit() and (path / "trainer_state.json").is_file():
            found.append((int(suffix), path))
    return max(found)[1] if found else None
