"""Presets: a form's request saved under a name in a folder of the workspace (`presets/NAME.json`), to load
again. In hosted mode each visitor has a folder of their own (the service picks it), so a visitor lists, loads,
overwrites and deletes only their own presets."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from . import jobfiles, plugin_catalog
from .job_request import REQUEST_KEYS, check_shape
from .request_error import RequestError

PRESET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,79}$")


class Presets:
    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def _path(self, name: str) -> Path:
        if name is not None and not isinstance(name, str):
            raise RequestError([f"the preset name must be text (letters, digits, spaces, '_', '.', '-'; up to 80), "
                                f"got {type(name).__name__}"])
        name = (name or "").strip()
        if not PRESET_NAME.match(name):
            raise RequestError([f"preset name {name!r}: use letters, digits, spaces, '_', '.', '-' (up to 80)"])
        return self.folder / f"{name}.json"

    def save(self, name: str, request: dict[str, Any]) -> list[str]:
        problems = check_shape(request)
        if problems:
            raise RequestError(problems)
        plugin_catalog.plugin(str(request.get("plugin") or ""))  # a preset names a real plugin
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        jobfiles.write_json_atomic(path, {k: v for k, v in request.items() if k in REQUEST_KEYS})
        return self.names()

    def names(self) -> list[str]:
        folder = self.folder
        return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []

    def load(self, name: str) -> dict[str, Any]:
        path = self._path(name)
        if not path.is_file():
            raise RequestError([f"no preset named {name!r}; presets: {', '.join(self.names()) or 'none'}"])
        return json.loads(path.read_text())

    def delete(self, name: str) -> list[str]:
        self._path(name).unlink(missing_ok=True)
        return self.names()
