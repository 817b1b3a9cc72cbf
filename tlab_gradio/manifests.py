"""Plugin manifests: one JSON file per plugin, in Transformer Lab's `index.json` vocabulary.

The schema is a pydantic model. Top-level keys Transformer Lab uses that the app
does not need (`plugin-format`, `files`, `git`, …) are accepted and kept; inside a
parameter every key must be known, so a typo such as `maximun` is an error rather
than a silently missing limit.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from packaging.requirements import InvalidRequirement, Requirement
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import settings

ParamType = Literal["string", "integer", "number", "boolean"]
_PY_TYPES = {"string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,)}


def value_has_type(value: Any, kind: str) -> bool:
    if kind != "boolean" and isinstance(value, bool):
        return False  # bool is an int subclass; True is not a number here
    if kind == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _PY_TYPES[kind])


class Parameter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str
    type: ParamType
    default: Any = None
    minimum: int | float | None = None
    maximum: int | float | None = None
    multipleOf: int | float | None = Field(default=None, gt=0)
    enum: list[Any] | None = None
    pattern: str | None = None
    required: bool = False
    description: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "Parameter":
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValueError(f"minimum {self.minimum} is greater than maximum {self.maximum}")
        if self.pattern is not None and self.type != "string":
            raise ValueError(f"pattern only applies to strings, not to type {self.type!r}")
        if (self.minimum is not None or self.maximum is not None or self.multipleOf) and self.type not in (
            "integer",
            "number",
        ):
            raise ValueError(f"minimum/maximum/multipleOf only apply to numbers, not to type {self.type!r}")
        if self.enum is not None:
            if not self.enum:
                raise ValueError("enum is empty")
            bad = [v for v in self.enum if not value_has_type(v, self.type)]
            if bad:
                raise ValueError(f"enum values {bad!r} are not of type {self.type!r}")
        if self.default is not None:
            from .params import check_value  # one rule set for defaults and for user values

            problem = check_value(self, self.default)
            if problem:
                raise ValueError(f"default {self.default!r}: {problem}")
        return self


class ParameterGroup(BaseModel):
    """A titled section of the config form. Closed groups start collapsed (the form opens one
    that holds a value other than its default, e.g. from a preset)."""

    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1)
    parameters: list[str] = Field(min_length=1)
    open: bool = True
    help: str | None = None


OTHER_GROUP = "Other settings"


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow")

    uniqueId: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    name: str
    description: str
    version: str
    type: Literal["trainer"]
    supported_hardware_architectures: list[Literal["cuda", "cpu"]] = Field(min_length=1)
    model_architectures: list[str] = Field(min_length=1)
    parameters: dict[str, Parameter]
    parameters_ui: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # What the app needs beyond Transformer Lab's vocabulary:
    parameter_groups: list[ParameterGroup] = Field(default_factory=list)  # form sections, in order
    train_type: Literal["sft", "grpo"]
    trainer: str  # program file in tlab_gradio/trainers/, run by `accelerate launch`
    multi_gpu: bool
    requirements: list[str] = Field(default_factory=list)  # pip requirement strings
    sample_dataset: str | None = None  # bundled sample used when a job names no dataset
    environment: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]+$")  # own venv under the workspace
    requirements_file: str | None = None  # pinned requirements in the repo, for `environment`

    @field_validator("requirements")
    @classmethod
    def _requirements_parse(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                Requirement(item)
            except InvalidRequirement as exc:
                raise ValueError(f"requirement {item!r} is not a valid pip requirement: {exc}") from None
        return value

    @field_validator("trainer")
    @classmethod
    def _trainer_exists(cls, value: str) -> str:
        if "/" in value or "\\" in value or not value.endswith(".py"):
            raise ValueError(f"trainer {value!r} must be a file name like 'sft.py' in tlab_gradio/trainers/")
        if not (settings.TRAINERS_DIR / value).is_file():
            raise ValueError(f"trainer program {value!r} does not exist in tlab_gradio/trainers/")
        return value

    @field_validator("requirements_file")
    @classmethod
    def _requirements_file_exists(cls, value: str | None) -> str | None:
        if value is not None and not (settings.REPO_DIR / value).is_file():
            raise ValueError(f"requirements_file {value!r} does not exist in the repository")
        return value

    @field_validator("sample_dataset")
    @classmethod
    def _sample_exists(cls, value: str | None) -> str | None:
        from .data import SAMPLES

        if value is not None and value not in SAMPLES:
            raise ValueError(f"sample_dataset {value!r} is not a bundled sample ({', '.join(SAMPLES)})")
        return value

    @model_validator(mode="after")
    def _app_parameters(self) -> "Manifest":
        for name in ("device", "gpu_ids"):
            if name not in self.parameters:
                raise ValueError(f"a trainer must declare the parameter {name!r}")
        unknown_ui = sorted(set(self.parameters_ui) - set(self.parameters))
        if unknown_ui:
            raise ValueError(f"parameters_ui names parameters that do not exist: {', '.join(unknown_ui)}")
        seen: dict[str, str] = {}
        for group in self.parameter_groups:
            unknown = [n for n in group.parameters if n not in self.parameters]
            if unknown:
                raise ValueError(f"parameter_groups {group.title!r} names parameters that do not exist: "
                                 f"{', '.join(unknown)}")
            for name in group.parameters:
                if name in seen:
                    raise ValueError(f"parameter {name!r} is in two parameter_groups: {seen[name]!r} and "
                                     f"{group.title!r}")
                seen[name] = group.title
        titles = [g.title for g in self.parameter_groups]
        if len(set(titles)) != len(titles) or OTHER_GROUP in titles:
            raise ValueError(f"parameter_groups titles must be unique and not {OTHER_GROUP!r}")
        return self

    def groups(self) -> list[ParameterGroup]:
        """The form's sections: the manifest's groups, then every parameter no group names, in manifest
        order (a manifest without groups is one open section)."""
        named = {n for g in self.parameter_groups for n in g.parameters}
        rest = [n for n in self.parameters if n not in named]
        return list(self.parameter_groups) + ([ParameterGroup(title=OTHER_GROUP, parameters=rest)] if rest else [])

    @property
    def id(self) -> str:
        return self.uniqueId

    @property
    def trainer_path(self) -> Path:
        return settings.TRAINERS_DIR / self.trainer

    def help(self, name: str) -> str:
        return str(self.parameters_ui.get(name, {}).get("ui:help", ""))


@dataclass(frozen=True)
class ManifestError:
    file: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"


def _format_validation(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def load_manifest(path: Path) -> Manifest:
    """Load one manifest; raise ValueError with the exact problem (file name added by the caller)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(raw, dict):
        raise ValueError("the manifest must be a JSON object")
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(_format_validation(exc)) from None
    if manifest.uniqueId != path.stem:
        raise ValueError(f"uniqueId {manifest.uniqueId!r} must equal the file name's stem {path.stem!r}")
    return manifest


_LOADED: dict[Path, tuple[tuple, dict[str, Manifest], list[ManifestError]]] = {}


def load_all(directory: Path | None = None) -> tuple[dict[str, Manifest], list[ManifestError]]:
    """Every manifest in the folder; a broken one is reported and the others still load. Read again
    only when a file is added, removed or changed (the form checks every keystroke against them)."""
    directory = Path(directory or settings.manifest_dir())
    try:
        signature = tuple((p.name, st.st_mtime_ns, st.st_size) for p in sorted(directory.glob("*.json"))
                          for st in [p.stat()])
    except OSError:  # a file went away mid-listing: read the folder as it is now
        signature = None
    cached = _LOADED.get(directory)
    if signature is not None and cached and cached[0] == signature:
        return dict(cached[1]), list(cached[2])
    plugins, errors = _load_folder(directory)
    if signature is not None:
        _LOADED[directory] = (signature, plugins, errors)
    return dict(plugins), list(errors)


def _load_folder(directory: Path) -> tuple[dict[str, Manifest], list[ManifestError]]:
    plugins: dict[str, Manifest] = {}
    errors: list[ManifestError] = []
    for path in sorted(directory.glob("*.json")):
        try:
            manifest = load_manifest(path)
        except (ValueError, OSError) as exc:
            errors.append(ManifestError(path.name, str(exc)))
            continue
        plugins[manifest.id] = manifest
    return plugins, errors


def readiness(manifest: Manifest, gpu_count: int) -> list[str]:
    """Why the plugin cannot run on this machine; empty when it is ready."""
    from .installer import missing

    reasons = missing(manifest)
    if "cpu" not in manifest.supported_hardware_architectures and gpu_count == 0:
        reasons.append("needs a CUDA GPU (none found on this machine)")
    return reasons
