"""Plugin manifests: one JSON file per plugin, in Transformer Lab's `index.json` vocabulary.

The schema is a pydantic model. Top-level keys Transformer Lab uses that the app
does not need (`plugin-format`, `files`, `git`, …) are accepted and kept; inside a
parameter every key must be known (parameter.Parameter).

A manifest of this app declares only what its trainer trains with: the app adds its launch settings
(launch_settings.py) and the shared parameter sets the manifest names (parameter_sets.py) before it
is validated, so the loaded Manifest holds every parameter of the plugin's form.

Transformer Lab's own manifests (no `train_type`/`trainer`/`multi_gpu`: the keys this app adds) load
too, leniently: hints for undeclared parameters become notes, hardware this app does not drive makes
them not ready, and one this app has no trainer for is listed as not runnable with the reason instead of
being refused. The three with an equivalent trainer here (TLAB_EQUIVALENTS) run on it with our manifest's
parameters and their defaults (Manifest._adopt); requests may use their parameter names (rename_tlab).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from packaging.requirements import InvalidRequirement, Requirement
from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from . import parameter_sets, settings
from .parameter import Parameter, ParameterGroup, check_value, problems


OTHER_GROUP = "Other settings"
APP_KEYS = ("train_type", "trainer", "multi_gpu")  # what this app adds to Transformer Lab's vocabulary
UI_KEYS = {"ui:help", "ui:widget"}  # the parameters_ui keys the form uses; others are noted and ignored
HARDWARE = {"cuda": "a CUDA GPU", "cpu": "the CPU", "amd": "an AMD GPU (ROCm)", "mlx": "Apple MLX (Apple silicon)"}

# Transformer Lab plugins that do what one of ours does (their uniqueId -> our train_type, trainer,
# multi_gpu): llama_trainer_multi_gpu is TRL SFT + PEFT LoRA under accelerate like sft.py;
# grpo_trainer_multi_gpu is TRL GRPO under accelerate like grpo.py; unsloth_grpo_trainer is Unsloth's
# GRPO notebook on one GPU like unsloth_grpo.py. Their single-GPU llama_trainer is left out on purpose
# (it is not multi-GPU and its uniqueId is not one of ours).
TLAB_EQUIVALENTS: dict[str, tuple[str, str, bool]] = {
    "llama_trainer_multi_gpu": ("sft", "sft.py", True),
    "grpo_trainer_multi_gpu": ("grpo", "grpo.py", True),
    "unsloth_grpo_trainer": ("grpo", "unsloth_grpo.py", False),
}
# Their parameter names -> ours, for a request to any plugin and for their manifests' defaults. A tuple
# lists candidates, the first this plugin declares wins: maximum_sequence_length is max_length in SFT,
# max_seq_length in Unsloth (GRPO has none: TRL's GRPO splits it into prompt and completion lengths);
# adaptor_name is output_name in grpo.py. log_to_wandb is a boolean where ours is report_to wandb/none.
TLAB_ALIASES: dict[str, tuple[str, ...]] = {
    "train_device": ("device",),
    "batch_size": ("per_device_train_batch_size",),
    "learning_rate_schedule": ("lr_scheduler_type",),
    "maximum_sequence_length": ("max_length", "max_seq_length"),
    "maximum_completion_length": ("max_completion_length",),
    "adaptor_name": ("adaptor_name", "output_name"),
    "start_thinking_string": ("reasoning_start",),
    "end_thinking_string": ("reasoning_end",),
    "start_answer_string": ("answer_start",),
    "end_answer_string": ("answer_end",),
    "log_to_wandb": ("report_to",),
}


def tlab_target(manifest: "Manifest", name: str) -> str | None:
    """Our parameter a Transformer Lab name stands for in this plugin, or None where it has none."""
    return next((ours for ours in TLAB_ALIASES.get(name, ()) if ours in manifest.parameters), None)


def _tlab_value(name: str, value: Any) -> tuple[Any, str | None]:
    """Their value in our parameter's terms (log_to_wandb true/false -> report_to wandb/none)."""
    if name != "log_to_wandb":
        return value, None
    if not isinstance(value, bool):
        return value, f"`log_to_wandb` must be true or false, not {value!r}"
    return ("wandb" if value else "none"), None


def rename_tlab(manifest: "Manifest", values: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """A request's parameters with Transformer Lab's names renamed to this plugin's; both names given with
    different values, or one of theirs this plugin has no equivalent for, is a problem."""
    out = {k: v for k, v in values.items() if not (k in TLAB_ALIASES and k not in manifest.parameters)}
    for name, value in values.items():
        if name not in TLAB_ALIASES or name in manifest.parameters:
            continue
        ours = tlab_target(manifest, name)
        if ours is None:
            problems.append(f"unknown parameter `{name}`: a Transformer Lab name that {manifest.name} has no "
                            f"equivalent for (not mapped)")
            continue
        if value is None:
            continue
        converted, problem = _tlab_value(name, value)
        if problem:
            problems.append(problem)
        elif out.get(ours) is not None and out[ours] != converted:
            problems.append(f"`{name}` (Transformer Lab's name for `{ours}`) and `{ours}` are both given, with "
                            f"different values ({value!r}, {out[ours]!r}): give one")
        else:
            out[ours] = converted
    return out


def _ours_for(trainer: str) -> "Manifest | None":
    """This app's own manifest for a trainer program (the parameter set that trainer reads), from our
    manifests folder as load_all has it (read again only when a file there changes)."""
    ours, _ = load_all(settings.MANIFEST_DIR)
    return next((m for m in ours.values() if m.trainer == trainer and not m.foreign), None)


def _wandb_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("wandb") is not None


NO_TRAINER = "this app has no trainer for this plugin (Transformer Lab runs its main.py)"


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow")

    uniqueId: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    name: str
    description: str
    version: str
    type: Literal["trainer"]
    # amd and mlx load (Transformer Lab's manifests name them) and make the plugin not ready here.
    supported_hardware_architectures: list[Literal["cuda", "cpu", "amd", "mlx"]] = Field(min_length=1)
    model_architectures: list[str] = Field(min_length=1)
    parameters: dict[str, Parameter]
    parameters_ui: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # What the app needs beyond Transformer Lab's vocabulary:
    parameter_groups: list[ParameterGroup] = Field(default_factory=list)  # form sections, in order
    parameter_sets: list[str] = Field(default_factory=list)  # shared sets it takes parameters from (by name)
    # Required in the app's own manifests; absent from Transformer Lab's (inferred for TLAB_EQUIVALENTS).
    train_type: Literal["sft", "grpo"] | None = None
    trainer: str | None = None  # program file in tlab_gradio/trainers/, run by `accelerate launch`
    multi_gpu: bool | None = None
    requirements: list[str] = Field(default_factory=list)  # pip requirement strings
    sample_dataset: str | None = None  # bundled sample used when a job names no dataset
    environment: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]+$")  # own venv under the workspace
    requirements_file: str | None = None  # pinned requirements in the repo, for `environment`
    _foreign: bool = PrivateAttr(default=False)
    _notes: list[str] = PrivateAttr(default_factory=list)
    _unrunnable: list[str] = PrivateAttr(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _compose(cls, data: Any, info: ValidationInfo) -> Any:
        """The app's own manifests get the launch settings and their shared sets; Transformer Lab's load as
        they are (a mapped one takes ours, composed, in _adopt). The sets are looked up in the folders the
        loader gives (context "set_folders"), else in the app's plugin_manifests/shared/."""
        if not isinstance(data, dict) or not any(k in data for k in APP_KEYS):
            return data
        where = (info.context or {}).get("set_folders") or parameter_sets.folders(settings.MANIFEST_DIR)
        return parameter_sets.compose(data, where)

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
    def _trainer_name(cls, value: str | None) -> str | None:
        # A missing file is not an error: the plugin loads and is listed as not runnable (see _app_parameters).
        if value is not None and ("/" in value or "\\" in value or not value.endswith(".py")):
            raise ValueError(f"trainer {value!r} must be a file name like 'sft.py' in tlab_gradio/trainers/")
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
        given = [k for k in APP_KEYS if k in self.model_fields_set]
        self._foreign = not given
        if given and len(given) < len(APP_KEYS):  # the app's own manifest: all three, as before
            raise ValueError(f"a manifest of this app must set {', '.join(APP_KEYS)} (missing: "
                             f"{', '.join(k for k in APP_KEYS if k not in given)})")
        if self._foreign and self.uniqueId in TLAB_EQUIVALENTS:
            self.train_type, self.trainer, self.multi_gpu = TLAB_EQUIVALENTS[self.uniqueId]
        ours = None
        if self.trainer is None:
            self._unrunnable.append(NO_TRAINER)
        elif not (settings.TRAINERS_DIR / self.trainer).is_file():
            self._unrunnable.append(f"trainer program {self.trainer!r} does not exist in tlab_gradio/trainers/")
        elif self._foreign:
            ours = _ours_for(self.trainer)
            if ours is None:
                self._unrunnable.append(f"this app has no manifest of its own for {self.trainer} to map it onto")
        unknown_ui = sorted(set(self.parameters_ui) - set(self.parameters))
        if unknown_ui and not self._foreign:  # ours: a typo; theirs: leftovers of a removed parameter
            raise ValueError(f"parameters_ui names parameters that do not exist: {', '.join(unknown_ui)}")
        if unknown_ui:
            self._notes.append(f"parameters_ui hints for parameters it does not declare were ignored: "
                               f"{', '.join(unknown_ui)}")
            self.parameters_ui = {k: v for k, v in self.parameters_ui.items() if k not in unknown_ui}
        odd = sorted({key for hints in self.parameters_ui.values() for key in hints if key not in UI_KEYS})
        if odd:
            self._notes.append(f"parameters_ui keys this app does not use were ignored: {', '.join(odd)}")
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
        if ours is not None and not self._unrunnable:
            self._adopt(ours)
        return self

    def _adopt(self, ours: "Manifest") -> None:
        """Run a Transformer Lab manifest on our trainer: our parameter set (everything the trainer reads)
        with their defaults under our names where they pass our checks, their titles, our help and groups;
        their name, description, version and hardware stay."""
        theirs = self.parameters
        params = {name: p.model_copy() for name, p in ours.parameters.items()}
        for name, p in theirs.items():
            target = name if name in params else tlab_target(ours, name)
            if target is None:
                self._notes.append(f"their parameter {name!r} has no equivalent in {self.trainer}: ignored")
                continue
            params[target].title = p.title
            if p.default is None:
                continue
            value, problem = _tlab_value(name, p.default)
            if not problem and name == "log_to_wandb" and value == "wandb" and not _wandb_importable():
                problem = "the wandb package is not installed, so report_to is 'none'"
                value = "none"
                params[target].default = value
            elif not problem:
                problem = check_value(params[target], value)
                if not problem:
                    params[target].default = value
            if problem:
                shown = f"{name} → {target}" if target != name else name
                self._notes.append(f"their default {p.default!r} for {shown} was not taken ({problem}); "
                                   f"default {params[target].default!r}")
        self.parameters = params
        self.parameters_ui = {k: dict(v) for k, v in ours.parameters_ui.items()}
        self.parameter_groups = [g.model_copy() for g in ours.parameter_groups]
        self.parameter_sets = list(ours.parameter_sets)
        self.requirements = list(ours.requirements)
        self.sample_dataset = ours.sample_dataset
        self.environment = ours.environment
        self.requirements_file = ours.requirements_file

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
    def foreign(self) -> bool:
        """A Transformer Lab manifest (it names none of the app's own keys)."""
        return self._foreign

    @property
    def notes(self) -> list[str]:
        """What was ignored while loading it (shown with the plugin, not an error)."""
        return list(self._notes)

    @property
    def unrunnable(self) -> list[str]:
        """Why this app can never start it (no trainer here); empty when it can."""
        return list(self._unrunnable)

    @property
    def trainer_path(self) -> Path:
        return settings.TRAINERS_DIR / (self.trainer or "")

    def help(self, name: str) -> str:
        return str(self.parameters_ui.get(name, {}).get("ui:help", ""))


@dataclass(frozen=True)
class ManifestError:
    file: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"

    @property
    def plugin_id(self) -> str:
        return _stem(Path(self.file))


def _stem(path: Path) -> str:
    """The plugin id a file stands for: NAME.json, or NAME/index.json (Transformer Lab's plugin layout)."""
    return path.parent.name if path.name == "index.json" else path.stem


def _folder(path: Path) -> Path:
    """The manifests folder a file is in: NAME.json's folder, or the one above NAME/index.json."""
    return path.parent.parent if path.name == "index.json" else path.parent


def load_manifest(path: Path) -> Manifest:
    """Load one manifest; raise ValueError with the exact problem (file name added by the caller)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(raw, dict):
        raise ValueError("the manifest must be a JSON object")
    try:
        manifest = Manifest.model_validate(raw, context={"set_folders": parameter_sets.folders(_folder(path))})
    except ValidationError as exc:
        raise ValueError(problems(exc)) from None
    if manifest.uniqueId != _stem(path):
        what = "folder's name" if path.name == "index.json" else "file name's stem"
        raise ValueError(f"uniqueId {manifest.uniqueId!r} must equal the {what} {_stem(path)!r}")
    return manifest


_LOADED: dict[tuple[Path, ...], tuple[tuple, dict[str, Manifest], list[ManifestError]]] = {}


def _files(directory: Path) -> list[Path]:
    """The plugin manifests in a folder (its shared/ holds parameter sets, not plugins)."""
    folders = [p for p in sorted(directory.glob("*/index.json")) if p.parent.name != parameter_sets.SHARED]
    return sorted(directory.glob("*.json")) + folders


def load_all(directory: Path | list[Path] | None = None) -> tuple[dict[str, Manifest], list[ManifestError]]:
    """Every manifest in the folder(s) (TLAB_MANIFEST_DIR may name several, separated by os.pathsep): NAME.json
    or NAME/index.json; a broken one is reported and the others still load; a uniqueId already loaded from
    an earlier folder is reported, not replaced. Read again only when a file (a shared set's included) is added,
    removed or changed (the form checks every keystroke against them)."""
    if directory is None:
        folders = tuple(settings.manifest_dirs())
    elif isinstance(directory, (list, tuple)):
        folders = tuple(Path(d) for d in directory)
    else:
        folders = (Path(directory),)
    try:
        signature = tuple((str(p), st.st_mtime_ns, st.st_size) for d in folders
                          for p in _files(d) + parameter_sets.files(d) for st in [p.stat()])
    except OSError:  # a file went away mid-listing: read the folder as it is now
        signature = None
    if signature is not None and settings.slurm():  # the launch settings' Run on lists the cluster's partitions
        from . import slurm

        signature += (("slurm", *slurm.partitions()),)
    cached = _LOADED.get(folders)
    if signature is not None and cached and cached[0] == signature:
        return dict(cached[1]), list(cached[2])
    plugins: dict[str, Manifest] = {}
    errors: list[ManifestError] = []
    where: dict[str, str] = {}
    for folder in folders:
        _load_folder(folder, plugins, errors, where, several=len(folders) > 1)
    if signature is not None:
        _LOADED[folders] = (signature, plugins, errors)
    return dict(plugins), list(errors)


def _load_folder(directory: Path, plugins: dict[str, Manifest], errors: list[ManifestError],
                 where: dict[str, str], several: bool) -> None:
    for path in _files(directory):
        name = path.relative_to(directory).as_posix()
        try:
            manifest = load_manifest(path)
        except (ValueError, OSError) as exc:
            errors.append(ManifestError(name, str(exc)))
            continue
        if manifest.id in plugins:
            errors.append(ManifestError(name, f"uniqueId {manifest.id!r} is already loaded from {where[manifest.id]}"))
            continue
        plugins[manifest.id] = manifest
        where[manifest.id] = str(path) if several else name


def readiness(manifest: Manifest, gpu_count: int) -> list[str]:
    """Why the plugin cannot run on this machine; empty when it is ready."""
    from .installer import missing

    reasons = manifest.unrunnable + missing(manifest)
    hardware = manifest.supported_hardware_architectures
    if "cpu" not in hardware and not ("cuda" in hardware and gpu_count):
        needs = " or ".join(HARDWARE[h] for h in hardware)
        # The app drives NVIDIA GPUs (CUDA) and the CPU; amd/mlx plugins load but cannot run here.
        reasons.append(f"needs {needs} (none found on this machine)" if "cuda" in hardware
                       else f"needs {needs}: this app trains on CUDA GPUs or the CPU only")
    return reasons
