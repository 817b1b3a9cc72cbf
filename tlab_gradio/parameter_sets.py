"""A manifest of this app put together from parameter sets, so that each parameter is declared once.

* The app's launch settings (launch_settings.py) go into every manifest of this app; a manifest may
  restate one only to narrow it.
* The shared sets a manifest names in `parameter_sets` (our key: a list of set names) are JSON files
  `shared/NAME.json` beside the manifests: {"description", "parameters", "parameters_ui",
  "parameter_groups"} in the manifest's own vocabulary. A name is looked up in the manifest folder's
  shared/ first, then in the app's plugin_manifests/shared/. The manifest's entry for a set's parameter
  overrides just the fields it gives (`"learning_rate": {"default": 3e-05}`), its parameters_ui hints
  override the set's, and it may declare parameters of its own. A parameter declared by two sets is an error.
* Form groups: a manifest group titled like a group of the app or of a set places that group (a title
  alone is enough) and may add parameters to it; a parameter the manifest lists in any of its groups
  leaves the set's group for that place. Groups it does not place follow its own, the app's Hardware first.

compose() works on the manifest's JSON before it is validated, so every rule about a parameter (a
default within its limits, a group naming a parameter that exists) is checked once, on the result.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from . import launch_settings, settings
from .parameter import ParameterGroup, ParameterSet, problems
from .params import suggest

SHARED = "shared"  # the sets' folder inside a manifests folder; the loader does not read it for plugins
KEY = "parameter_sets"
_SET_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def folders(manifest_folder: Path) -> list[Path]:
    """Where a manifest in this folder finds its sets: the folder's own shared/, then the app's."""
    own, app = Path(manifest_folder) / SHARED, settings.MANIFEST_DIR / SHARED
    return [own] if own.resolve() == app.resolve() else [own, app]


def files(manifest_folder: Path) -> list[Path]:
    """The set files a manifest in this folder may use (for noticing that one changed)."""
    return [p for d in folders(manifest_folder) for p in sorted(d.glob("*.json"))]


def load_set(name: str, where: list[Path]) -> ParameterSet:
    """The shared set NAME; ValueError naming it when it is unknown or broken."""
    if not _SET_NAME.match(name):
        raise ValueError(f"{KEY}: {name!r} is not a set name (letters, digits, _ . -)")
    path = next((d / f"{name}.json" for d in where if (d / f"{name}.json").is_file()), None)
    if path is None:
        known = sorted({p.stem for d in where for p in d.glob("*.json")})
        folders_ = " and ".join(str(d) for d in where if d.is_dir()) or str(where[-1])
        raise ValueError(f"{KEY}: unknown parameter set {name!r}{suggest(name, known)}; the shared sets are "
                         f"{', '.join(known) or 'none'}, in {folders_}")
    try:
        found = ParameterSet.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{KEY}: the shared set {name!r} ({path}) is not valid JSON: {exc}") from None
    except ValidationError as exc:
        raise ValueError(f"{KEY}: the shared set {name!r} ({path}) is broken: {problems(exc)}") from None
    owned = [n for n in found.parameters if n in launch_settings.OWNED]
    if owned:
        raise ValueError(f"{KEY}: the shared set {name!r} declares {', '.join(owned)}: launch settings are the "
                         f"app's (tlab_gradio/launch_settings.py)")
    return found


def compose(raw: dict[str, Any], where: list[Path]) -> dict[str, Any]:
    """The manifest with the app's launch settings and its shared sets merged in (a new dict)."""
    own, own_ui, names = raw.get("parameters", {}), raw.get("parameters_ui", {}), raw.get(KEY, [])
    if not isinstance(own, dict) or not isinstance(own_ui, dict):
        return raw  # the manifest's validation says what is wrong with it
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(set(names)) < len(names):
        raise ValueError(f"{KEY} must be a list of distinct shared set names")
    hardware = raw.get("supported_hardware_architectures")
    hardware = [h for h in hardware if isinstance(h, str)] if isinstance(hardware, list) else []
    launch = launch_settings.for_plugin(raw.get("multi_gpu") is True, hardware)
    stray = [n for n in own if n in launch_settings.OWNED and n not in launch.parameters]
    if stray:
        raise ValueError(f"{', '.join(stray)}: launch settings that do not apply to a plugin with multi_gpu "
                         f"{str(raw.get('multi_gpu')).lower()} on {', '.join(hardware)}")
    sources = [("the app's launch settings", launch)]
    sources += [(f"the shared set {n!r}", load_set(n, where)) for n in names]
    params: dict[str, Any] = {}
    ui: dict[str, Any] = {}
    source_of: dict[str, str] = {}
    for source, found in sources:
        for name, p in found.parameters.items():
            if name in source_of:
                raise ValueError(f"parameter {name!r} is declared by both {source_of[name]} and {source}")
            source_of[name] = source
            ui[name] = found.parameters_ui.get(name, {})
            if found is launch:
                params[name] = launch_settings.narrow(name, p, own.get(name))
                if own_ui.get(name, ui[name]) != ui[name]:
                    raise ValueError(f"parameters_ui: `{name}` is a launch setting; its help is the app's")
                continue
            # The manifest's fields over the set's (anything but an object is left for validation to refuse).
            mine, hints = own.get(name, {}), own_ui.get(name, {})
            params[name] = {**p.model_dump(exclude_unset=True), **mine} if isinstance(mine, dict) else mine
            ui[name] = {**ui[name], **hints} if isinstance(hints, dict) else hints
    params.update({n: p for n, p in own.items() if n not in params})
    ui.update({n: h for n, h in own_ui.items() if n not in ui})
    return {**raw, "parameters": params, "parameters_ui": {n: h for n, h in ui.items() if h != {}},
            "parameter_groups": _groups(raw.get("parameter_groups", []), sources, params)}


def _groups(mine: Any, sources: list[tuple[str, ParameterSet]], params: dict[str, Any]) -> Any:
    """The form's groups: the manifest's in its order, one titled like a group of the app or of a set filled
    from it; then the groups it does not place: the app's Hardware first, the sets' next, the app's others last."""
    if not isinstance(mine, list):
        return mine  # the manifest's validation says what is wrong with it
    defined: dict[str, ParameterGroup] = {}
    owner: dict[str, str] = {}
    for source, found in sources:
        for group in found.parameter_groups:
            if group.title in defined:
                raise ValueError(f"parameter group {group.title!r} is defined by both {owner[group.title]} and "
                                 f"{source}")
            defined[group.title], owner[group.title] = group, source
    # A parameter the manifest lists in one of its groups is shown there, not in its set's group.
    listed = {n for g in mine if isinstance(g, dict) and isinstance(g.get("parameters"), list)
              for n in g["parameters"]}

    def fill(title: str, extra: dict[str, Any]) -> dict[str, Any] | None:
        group, added = defined.pop(title).model_dump(exclude_none=True), extra.get("parameters", [])
        if not isinstance(added, list):
            return {**group, **extra}  # checked below
        members = [n for n in group["parameters"] if n in params and n not in listed] + added
        return {**group, **extra, "parameters": members} if members else None  # none apply here: no group

    out = []
    for i, group in enumerate(mine):
        if isinstance(group, dict) and group.get("title") in defined:
            group = fill(group["title"], group)
        try:  # checked here, where the index is the one in the manifest's file
            out += [] if group is None else [ParameterGroup.model_validate(group).model_dump(exclude_none=True)]
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ValueError(f"{'.'.join(str(part) for part in ('parameter_groups', i, *err['loc']))}: "
                             f"{err['msg']}") from None
    lead = [t for t in defined if t == launch_settings.HARDWARE]
    last = [t for t in defined if owner[t] == sources[0][0] and t not in lead]
    middle = [t for t in defined if t not in lead + last]
    rest = {t: fill(t, {}) for t in lead + middle + last}
    return [rest[t] for t in lead if rest[t]] + out + [rest[t] for t in middle + last if rest[t]]
