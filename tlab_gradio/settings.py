"""Settings read from the environment.

Read at call time, not import time, so tests and scripts can point the core at
another workspace by setting TLAB_HOME before they call it.
"""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
MANIFEST_DIR = REPO_DIR / "plugin_manifests"
SAMPLES_DIR = REPO_DIR / "samples"
TRAINERS_DIR = PACKAGE_DIR / "trainers"


def home() -> Path:
    """The workspace: job folders, the job database, the embedded model cache."""
    path = Path(os.environ.get("TLAB_HOME", "workspace")).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def manifest_dir() -> Path:
    return Path(os.environ.get("TLAB_MANIFEST_DIR", MANIFEST_DIR))


def stop_grace_seconds() -> float:
    """How long Stop waits after SIGTERM before it sends SIGKILL to the job's group."""
    return float(os.environ.get("TLAB_STOP_GRACE", "10"))
