"""Which model a job trains: the embedded default, a local folder, a GGUF file (converted
once into a folder, see gguf_model) or a Hub id, and its architecture read from config.json
alone (no weights loaded) to check against a manifest."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from . import gguf_model, inputs, tiny_model


class ModelError(ValueError):
    pass


@dataclass(frozen=True)
class ModelRef:
    path: str  # what from_pretrained gets: a folder or a Hub id
    source: str  # "embedded" | "local" | "hub"
    architecture: str
    config: dict  # its config.json: for the memory estimate
    gguf_file: str | None = None  # the GGUF file `path` was converted from


def _architecture(config: dict, label: str) -> str:
    archs = config.get("architectures") or []
    if not archs:
        raise ModelError(f"model {label}: config.json names no architecture")
    return archs[0]


def _gguf_file(local: Path, text: str) -> Path | None:
    """The GGUF file to convert when the path is one, or a folder holding one and no config.json."""
    if local.is_file():
        if gguf_model.is_gguf(local):
            return local
        raise ModelError(f"model path {text!r} is a file but not a .gguf file: give a model folder or a .gguf file")
    if (local / "config.json").is_file():
        return None
    found = gguf_model.files_in(local)
    if len(found) > 1:
        raise ModelError(f"model folder {text!r} holds several GGUF files ({', '.join(p.name for p in found)}): "
                         f"give the path of the one to use")
    if not found:
        raise ModelError(f"model folder {text!r} has no config.json (what a Hugging Face model folder holds) "
                         f"and no .gguf file")
    return found[0]


def resolve(model: str | None) -> ModelRef:
    text = (model or "").strip()
    if not text:
        return ModelRef(str(tiny_model.default_path()), "embedded", tiny_model.ARCHITECTURE, tiny_model.config_dict())
    local = Path(text).expanduser()
    try:
        exists = inputs.path_exists("model", text)  # a name too long for a path: a message, not an OSError
    except ValueError as exc:
        raise ModelError(str(exc)) from None
    if exists or text.startswith(("/", ".", "~")):
        if not exists:
            raise ModelError(f"model path {text!r} does not exist")
        gguf_file = _gguf_file(local, text)
        if gguf_file:
            try:
                local = gguf_model.ensure(gguf_file)
            except gguf_model.GGUFError as exc:
                raise ModelError(str(exc)) from None
        config_path = local / "config.json"
        try:
            config = json.loads(config_path.read_text())
        except ValueError as exc:
            raise ModelError(f"model folder {text!r}: config.json is not valid JSON ({exc})") from None
        return ModelRef(str(local.resolve()), "local", _architecture(config, text), config,
                        str(gguf_file) if gguf_file else None)
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


# TRL's test for a chat template that marks the assistant's tokens (trl.chat_template_utils.has_generation_markers)
GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")


def chat_template(ref: ModelRef) -> str | None:
    """The model's chat template as its tokenizer will load it, read from the files alone (no tokenizer built):
    "" when it has none, None when it cannot be told cheaply (a Hub model that cannot be reached)."""
    if ref.source == "embedded":
        return tiny_model.CHAT_TEMPLATE
    if ref.source == "local":
        return _folder_chat_template(Path(ref.path))
    from huggingface_hub import hf_hub_download

    def fetch(name: str) -> Path | None:
        try:
            return Path(hf_hub_download(ref.path, name))
        except Exception:  # noqa: BLE001 - not there, offline, gated: unknown here
            return None

    found = fetch("chat_template.jinja")
    if found is not None:
        return found.read_text(encoding="utf-8", errors="replace")
    found = fetch("chat_template.json")
    if found is not None and _template_of(_read_json(found)):
        return _template_of(_read_json(found))
    config = fetch("tokenizer_config.json")
    return None if config is None else _template_of(_read_json(config))


def _folder_chat_template(folder: Path) -> str:
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8", errors="replace")
    if (folder / "chat_template.json").is_file():
        found = _template_of(_read_json(folder / "chat_template.json"))
        if found:
            return found
    return _template_of(_read_json(folder / "tokenizer_config.json"))


def _read_json(path: Path) -> dict:
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _template_of(config: dict) -> str:
    """`chat_template` of a tokenizer config: text, or named variants ([{name, template}]) whose `default` counts."""
    value = config.get("chat_template")
    if isinstance(value, list):
        named = {v.get("name"): v.get("template") for v in value if isinstance(v, dict)}
        value = named.get("default")
    return value if isinstance(value, str) else ""


def trl_patches(template: str) -> bool:
    """Does TRL swap in a training version of this chat template (with generation markers) for assistant-only
    loss? It does for the templates it ships as NAME.jinja beside NAME_training.jinja (Qwen, Llama 3, Gemma...),
    compared as text (trl.chat_template_utils.get_training_chat_template). Read from TRL's files, not imported."""
    import importlib.util

    found = importlib.util.find_spec("trl")
    for folder in (found.submodule_search_locations or []) if found else []:
        shipped = Path(folder) / "chat_templates"
        for training in shipped.glob("*_training.jinja"):
            plain = shipped / training.name.replace("_training.jinja", ".jinja")
            try:
                if plain.is_file() and plain.read_text(encoding="utf-8") == template:
                    return True
            except OSError:
                continue
    return False
