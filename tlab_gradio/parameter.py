"""The vocabulary of a plugin's form, in Transformer Lab's terms: one parameter's schema and the check of a
value against it, the titled groups the form shows parameters in, and a set of parameters declared together.

The value check is the schema turned into JSON Schema and run by `jsonschema`, so the rules are the
standard ones users know from Transformer Lab's forms. It lives beside the schema because a parameter's
own default is checked with it when the parameter is read: the manifest loader and the request check
(params.py) both import this module, and neither needs the other.
"""
from __future__ import annotations

import math
import re
from typing import Any, Literal

from jsonschema import Draft202012Validator, ValidationError as SchemaError, validators
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

ParamType = Literal["string", "integer", "number", "boolean"]
_PY_TYPES = {"string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,)}
_SCHEMA_KEYS = ("type", "minimum", "maximum", "multipleOf", "enum", "pattern")
# The bound of a number a manifest leaves open: what a C int holds (the trainers' libraries take these as
# one: numpy's seed, torch's step counts), so `seed 1e30` or `max_steps 2**63` is refused here, not in the job.
LARGEST = 2**31 - 1


def _whole_pattern(validator, pattern, instance, schema):
    """A manifest's `pattern` describes the whole value, as an HTML form's pattern does. JSON Schema searches,
    and in Python `$` also matches before a final newline, so "x\n" passed ^[A-Za-z0-9]+$ as an adaptor name."""
    if validator.is_type(instance, "string") and not re.fullmatch(pattern, instance):
        yield SchemaError(f"{instance!r} does not match {pattern!r} (the whole value must)")


_Validator = validators.extend(Draft202012Validator, {"pattern": _whole_pattern})


def value_has_type(value: Any, kind: str) -> bool:
    if kind != "boolean" and isinstance(value, bool):
        return False  # bool is an int subclass; True is not a number here
    if kind == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _PY_TYPES[kind])


class Parameter(BaseModel):
    # Every key must be known: a typo such as `maximun` is an error, not a silently missing limit.
    model_config = ConfigDict(extra="forbid")

    title: str
    type: ParamType
    default: Any = None
    # The app's addition to the vocabulary: the default where the job runs on a CPU. A default sized for a GPU
    # (GRPO's 256 completions of 256 tokens a step) takes minutes a step on a few cores.
    default_on_cpu: Any = None
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
        for key in ("default", "default_on_cpu"):
            value = getattr(self, key)
            problem = None if value is None else check_value(self, value)  # one rule set for defaults and values
            if problem:
                raise ValueError(f"{key} {value!r}: {problem}")
        return self

    def default_for(self, device: str | None) -> Any:
        """The default for a job on this device."""
        return self.default_on_cpu if device == "cpu" and self.default_on_cpu is not None else self.default


def check_value(param: Parameter, value: Any) -> str | None:
    """The problem with one value, or None when it is valid. Numbers are finite (NaN passes every minimum and
    maximum, as each comparison with it is false) and bounded by LARGEST where the manifest gives no bound."""
    schema = {k: getattr(param, k) for k in _SCHEMA_KEYS if getattr(param, k) is not None}
    if param.type in ("integer", "number"):
        schema.setdefault("minimum", -LARGEST)
        schema.setdefault("maximum", LARGEST)
        if isinstance(value, float) and not math.isfinite(value):
            return f"{value!r} is not a finite number: give one from {schema['minimum']} to {schema['maximum']}"
    error = next(_Validator(schema).iter_errors(value), None)
    return None if error is None else error.message


class ParameterGroup(BaseModel):
    """A titled section of the config form. Closed groups start collapsed (the form opens one
    that holds a value other than its default, e.g. from a preset)."""

    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1)
    parameters: list[str] = Field(min_length=1)
    open: bool = True
    help: str | None = None


class ParameterSet(BaseModel):
    """Parameters declared together with their form hints and groups: a shared set that manifests name
    (plugin_manifests/shared/), or the app's launch settings (launch_settings.py)."""

    model_config = ConfigDict(extra="forbid")

    description: str = ""
    parameters: dict[str, Parameter] = Field(min_length=1)
    parameters_ui: dict[str, dict[str, Any]] = Field(default_factory=dict)
    parameter_groups: list[ParameterGroup] = Field(default_factory=list)

    @model_validator(mode="after")
    def _names_its_own_parameters(self) -> "ParameterSet":
        places = [("parameters_ui", list(self.parameters_ui))]
        places += [(f"parameter_groups {g.title!r}", g.parameters) for g in self.parameter_groups]
        for where, names in places:
            unknown = [n for n in names if n not in self.parameters]
            if unknown:
                raise ValueError(f"{where} names parameters the set does not declare: {', '.join(unknown)}")
        grouped = [n for g in self.parameter_groups for n in g.parameters]
        twice = sorted({n for n in grouped if grouped.count(n) > 1})
        titles = [g.title for g in self.parameter_groups]
        if twice or len(set(titles)) != len(titles):
            raise ValueError(f"a parameter or a group title appears twice in parameter_groups: "
                             f"{', '.join(twice or sorted({t for t in titles if titles.count(t) > 1}))}")
        return self


def problems(exc: ValidationError) -> str:
    """A schema's validation errors as one line: `where: what`, each."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)
