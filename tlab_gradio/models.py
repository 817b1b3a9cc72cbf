"""Which model a job trains: the embedded default, a local folder or a Hub id, and its
architecture read from config.json alone (no weights loaded) to check against a manifest."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from . import tiny_model


class ModelError(ValueError):
    pass


@dataclass(frozen=True)
class ModelRef:
    path: str  # what from_pretrained gets: a folder or a Hub id
    source: str  # "embedded" | "local" | "hub"
    architecture: str
    config: dict  # its config.json: for the memory estimate


def _architecture(config: dict, label: str) -> str:
    archs = config.get("architectures") or []
    if not archs:
        raise ModelError(f"model {label}: config.json names no architecture")
    return archs[0]


def resolve(model: str | None) -> ModelRef:
    text = (model or "").strip()
    if not text:
        return ModelRef(str(tiny_model.default_path()), "embedded", tiny_model.ARCHITECTURE, tiny_model.config_dict())
    local = Path(text).expanduser()
    if local.exists() or text.startswith(("/", ".", "~")):
        if not local.is_dir():
            raise ModelError(f"model folder {text!r} does not exist")
        config_path = local / "config.json"
        if not config_path.is_file():
            raise ModelError(f"model folder {text!r} has no config.json")
        try:
            config = json.loads(config_path.read_text())
        except ValueError as exc:
            raise ModelError(f"model folder {text!r}: config.json is not valid JSON ({exc})") from None
        return ModelRef(str(local.resolve()), "local", _architecture(config, text), config)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        raise ModelError(f"model {text!r} is neither a local folder nor a valid Hub id (like org/name)") from None
    try:
        config_file = hf_hub_download(text, "config.json")
    except Exception as exc:  # offline, gated, missing: say which
        raise ModelError(f"could not read config.json of Hub model {text!r}: {type(exc).__name__}: {exc}") from None
    config = json.loads(Path(config_file).read_text())
    return ModelRef(text, "hub", _architecture(config, text), config)


def check_supported(ref: ModelRef, supported: list[str], plugin_name: str) -> None:
    if ref.architecture not in supported:
        raise ModelError(
            f"model {ref.path} is a {ref.architecture}, which {plugin_name} does not support "
            f"(supported: {', '.join(supported)})"
        )
