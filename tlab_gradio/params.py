"""A job's parameters checked against its manifest before anything is launched.

Each value is checked by its parameter's own rules (parameter.check_value: JSON Schema, as in Transformer
Lab's forms); the messages name the parameter, and an unknown name gets the nearest known one suggested.
A manifest is anything with `parameters`, so this module needs the parameter schema, not the manifest loader.
"""
from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, Protocol

from .parameter import Parameter, check_value


class Declares(Protocol):
    """What validate() needs of a manifest: its parameters by name."""

    parameters: Mapping[str, Parameter]


class ParamError(ValueError):
    """One or more parameters are wrong; `problems` holds one readable line each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


def suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f" (did you mean `{close[0]}`?)" if close else ""


def validate(manifest: Declares, values: dict[str, Any]) -> dict[str, Any]:
    """Return the complete parameter set (defaults filled in) or raise ParamError naming each bad one."""
    problems: list[str] = []
    known = list(manifest.parameters)
    for name in values:
        if name not in manifest.parameters:
            problems.append(f"unknown parameter `{name}`{suggest(name, known)}")
    clean: dict[str, Any] = {}
    device = values.get("device")
    for name, param in manifest.parameters.items():
        value = values.get(name)
        if value is None or (param.type != "string" and isinstance(value, str) and not value.strip()):
            value = param.default_for(device)  # not given, or a cleared box: the manifest's default
        if value is None or (param.required and isinstance(value, str) and not value.strip()):
            if param.required:
                problems.append(f"`{name}` ({param.title}) is required")
            clean[name] = None
            continue
        if isinstance(value, bool) and param.enum and {"on", "off"} <= set(param.enum):
            value = "on" if value else "off"  # a switch that became auto/on/off: old presets still load
        problem = check_value(param, value)
        if problem:
            problems.append(f"`{name}` ({param.title}): {problem}")
            continue
        if param.type == "integer":
            value = int(value)  # 3.0 from a number box is the integer 3
        elif param.type == "number":
            value = float(value)
        clean[name] = value
    if problems:
        raise ParamError(problems)
    return clean
