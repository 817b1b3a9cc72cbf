"""Installing what a plugin needs, from the Plugins tab or a script.

A plugin's packages go into the app's own environment, unless its manifest names an
`environment`: then they go into a virtual environment of that name under the
workspace (`$TLAB_HOME/envs/NAME`), created on first install, and its jobs run with
that environment's python and accelerate. Unsloth pins older transformers/trl/datasets
than the app, so it lives in one of its own and never downgrades the base install.

TLAB_PIP_ARGS adds arguments to every pip call (an index mirror, `--no-index
--find-links DIR` for an offline wheelhouse).
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

from . import settings

_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


class InstallError(RuntimeError):
    pass


def env_dir(name: str) -> Path:
    return settings.home() / "envs" / name


def env_python(name: str) -> Path:
    return env_dir(name) / "bin" / "python"


def site_packages(name: str) -> list[str]:
    return [str(p) for p in (env_dir(name) / "lib").glob("python*/site-packages")]


def installed_version(package: str, environment: str | None) -> str | None:
    """A package's version in the app's environment or in a plugin's own, without importing it."""
    try:
        if environment is None:
            return metadata.version(package)
        paths = site_packages(environment)
        if not paths:
            return None
        for dist in metadata.distributions(path=paths):
            if dist.metadata["Name"] and _norm(dist.metadata["Name"]) == _norm(package):
                return dist.version
        return None
    except metadata.PackageNotFoundError:
        return None


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def requirement_lines(manifest) -> list[str]:
    """The manifest's requirements, or those of its pinned requirements file."""
    if manifest.requirements_file:
        path = settings.REPO_DIR / manifest.requirements_file
        return [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()
                if line.split("#", 1)[0].strip() and not line.strip().startswith("-")]
    return list(manifest.requirements)


def missing(manifest) -> list[str]:
    """Requirements not satisfied where the plugin's jobs run, each as a readable reason."""
    lines = requirement_lines(manifest)
    if manifest.environment and not site_packages(manifest.environment):
        first = Requirement(lines[0]).name if lines else "its packages"
        source = manifest.requirements_file or "the manifest's requirements"
        return [f"missing package {first}: its own environment `{manifest.environment}` is not installed yet "
                f"(Install creates it from {source})"]
    where = f" in environment {manifest.environment}" if manifest.environment else ""
    problems = []
    for text in lines:
        req = Requirement(text)
        version = installed_version(req.name, manifest.environment)
        if version is None:
            problems.append(f"missing package {req.name} ({text}){where}")
        elif req.specifier and not req.specifier.contains(version, prereleases=True):
            problems.append(f"needs {text}, found {req.name} {version}{where}")
    return problems


def pip_args() -> list[str]:
    return shlex.split(os.environ.get("TLAB_PIP_ARGS", ""))


def commands(manifest) -> list[list[str]]:
    """The argv lists an install runs, in order."""
    steps = []
    if manifest.environment:
        python = env_python(manifest.environment)
        if not python.exists():
            steps.append([sys.executable, "-m", "venv", str(env_dir(manifest.environment))])
        base = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
    else:
        base = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check"]
    if manifest.requirements_file:
        steps.append(base + pip_args() + ["-r", str(settings.REPO_DIR / manifest.requirements_file)])
    else:
        steps.append(base + pip_args() + list(manifest.requirements))
    return steps


def install(manifest) -> Iterator[str]:
    """Run the install, yielding pip's output line by line; raise InstallError saying why it failed.
    One install per plugin at a time."""
    with _LOCKS_GUARD:
        lock = _LOCKS.setdefault(manifest.id, threading.Lock())
    if not lock.acquire(blocking=False):
        raise InstallError(f"an install of {manifest.name} is already running")
    try:
        for argv in commands(manifest):
            yield "$ " + shlex.join(argv)
            tail: list[str] = []
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    stdin=subprocess.DEVNULL, env={**os.environ, "PIP_PROGRESS_BAR": "off"})
            for line in proc.stdout:
                line = line.rstrip("\n")
                tail = (tail + [line])[-8:]
                yield line
            code = proc.wait()
            if code != 0:
                detail = next((t for t in reversed(tail) if "ERROR" in t), tail[-1] if tail else "")
                raise InstallError(f"{argv[2] if argv[1] == '-m' else argv[0]} exited with code {code}: {detail}")
        still = missing(manifest)
        if still:
            raise InstallError("the install finished but these are still missing: " + "; ".join(still))
        yield f"[tlab] {manifest.name}: requirements installed"
    finally:
        lock.release()
