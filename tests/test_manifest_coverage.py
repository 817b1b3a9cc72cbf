"""Issue 16, item 5: a manifest that validates cannot crash on a missing parameter.

For each plugin manifest in plugin_manifests/, as the app loads it (its own parameters, the shared sets it
names and the app's launch settings: parameter_sets.compose), two directions are checked:

* MISSING: every parameter its trainer program reads from the job's `params` is declared by the
  manifest (or put into `params` by the app itself). A `p["x"]` on an undeclared name is a KeyError in
  the middle of a launched job; a `p.get("x")` in the trainer's own module is a setting the form can
  never reach. The plugin's own checks (`check(p, placement)` in its trainer module, run by
  `Service.prepare()`) and the app's are part of the program too: a KeyError there breaks submitting the job.
* UNUSED: every parameter the manifest declares is read somewhere: by its trainer program, by the
  shared modules the trainer hands `p` to, or by the app (launcher, memory estimate, service checks,
  UI). A declared but unread parameter is a form field that does nothing.

The reads are found by parsing the sources with `ast` (no regexes). What counts as "the params dict":

* in a trainer, the third value of `common.begin(...)` (found generically: the callee's `return` tuple
  holds `spec.params` there), and any `X.params` / `X["params"]` / `X.get("params")`;
* a name assigned from `params.validate(...)` (Service.prepare's `clean`);
* in app modules, function arguments named `p` or `params` (unless the name is an imported module, as
  `params` is in service.py);
* the parameter of any function the dict is passed to: calls are followed into the trainer module,
  common.py and every other tlab_gradio module, by position or keyword, including `self.method`,
  `module.function`, `module.Class.method` and `Class.method`. Constant string arguments passed along
  are bound too, so `switch(p, "torch_compile")` resolves the callee's `p.get(key)`.

A read is `p["x"]` (subscript), `p.get("x")` (get) or `"x" in p` (in). The key is resolved when it is:

* a string constant;
* a loop / comprehension variable over a literal tuple or list of strings, over a module-level tuple,
  list, set or dict of strings (same module, `from m import NAME` or `module.NAME`: e.g.
  `p[k] for k in grpo.GRPO_KEYS`), or over `cls.model_fields` / `cls.__dataclass_fields__` (job_spec.Distributed.from_params:
  the class's annotated fields); comprehension filters `k != "const"` / `k not in (...)` drop values;
* an f-string whose holes are such loop variables: `p[f"reward_{n}_weight"] for n in rewards.SCORERS`
  expands to one read per scorer name (SCORERS is a dict: its keys).

A key the test cannot resolve, or the params dict handed to something the test cannot follow, inside a
trainer program is reported as a failure of its own, so a new pattern cannot hide a read.

A subscript read is "guarded" (can't raise) when it sits under `if p.get(k)` / `if k in p` for the same
key (if-statements, conditional expressions, comprehension filters); a guarded subscript counts like a get.
In shared modules (common.py and every app module), a get/in read of a name a plugin does not declare is
deliberate (the code serves every plugin); in a trainer's own module (sft.py, grpo.py, unsloth_grpo.py,
including grpo.py's helpers that unsloth_grpo.py calls) it is reported.
"""
from __future__ import annotations

import ast
import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "tlab_gradio"
MANIFESTS = REPO / "plugin_manifests"
TRAINERS = PKG / "trainers"
# Modules that serve one plugin: a get/in read of an undeclared name there is a mismatch.
PLUGIN_MODULES = {"tlab_gradio/trainers/sft.py", "tlab_gradio/trainers/grpo.py",
                  "tlab_gradio/trainers/unsloth_grpo.py"}
REQUEST = "tlab_gradio/job_request.py"  # job_request.prepare: a request checked into a JobSpec

# Known mismatches in the current code, (plugin, parameter) -> why it is tolerated for now. Keep these
# narrow; test_allow_lists_are_still_needed fails when an entry no longer applies, so the lists shrink.
ALLOWED_MISSING: dict[tuple[str, str], str] = {}
ALLOWED_UNUSED: dict[tuple[str, str], str] = {}

# The analysis is not path-sensitive. These functions are reached, in the code, only for one train type, so
# the per-plugin analysis follows a call into them only for that train type: job_request.prepare hands `clean`
# to _custom_reward_problems only when `choices` is not empty, and `choices` comes from
# `values.pop("custom_rewards", None) if manifest.train_type == "grpo" else None`
# (test_train_type_only_calls_are_still_gated checks that this is still so).
TRAIN_TYPE_ONLY = {(REQUEST, "_custom_reward_problems"): "grpo"}

PARAMS = "<params>"  # env binding: this name is the params dict


@dataclass(frozen=True)
class Read:
    name: str | None  # None: a key the test cannot resolve
    # "subscript" | "get" | "in" | "opaque" (the dict handed to something not followed, or p.items() and the
    # like) | "bare" (the dict used otherwise: iterated, returned, printed)
    kind: str
    file: str
    line: int
    guarded: bool = False
    detail: str = ""

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def can_crash(self) -> bool:
        return self.kind == "subscript" and not self.guarded


# --- sources ------------------------------------------------------------------------------------------


class Module:
    """One parsed module: its functions (methods as Class.method), imports and string constants."""

    def __init__(self, rel: str, source: str, sources: "Sources"):
        self.rel, self.sources = rel, sources
        self.tree = ast.parse(source, filename=rel)
        self.functions: dict[str, ast.FunctionDef] = {}
        self.classes: dict[str, ast.ClassDef] = {}
        self.owner: dict[int, str] = {}  # id(function node) -> class name
        self.module_aliases: dict[str, str] = {}  # local name -> module rel path
        self.from_names: dict[str, tuple[str, str]] = {}  # local name -> (module rel, name)
        self._assigned: dict[str, ast.AST] = {}  # module-level NAME = <expr>, evaluated by constant()
        for node in self.tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.functions[node.name] = node
            elif isinstance(node, ast.ClassDef):
                self.classes[node.name] = node
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        self.functions[f"{node.name}.{item.name}"] = item
                        self.owner[id(item)] = node.name
            elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    if isinstance(t, ast.Name):
                        self._assigned[t.id] = node.value
        self.qualname = {id(f): name for name, f in self.functions.items()}
        for node in ast.walk(self.tree):  # imports anywhere (the trainers import inside main())
            if isinstance(node, ast.ImportFrom):
                base = self._resolve_from(node)
                if base is None:
                    continue
                for alias in node.names:
                    local = alias.asname or alias.name
                    sub = f"{base}/{alias.name}"
                    if (PKG.parent / f"{sub}.py").exists():
                        self.module_aliases[local] = f"{sub}.py"
                    elif (PKG.parent / f"{base}.py").exists():
                        self.from_names[local] = (f"{base}.py", alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    path = alias.name.replace(".", "/")
                    if alias.asname and (PKG.parent / f"{path}.py").exists():
                        self.module_aliases[alias.asname] = f"{path}.py"

    def constant(self, name: str) -> list[str] | None:
        """A module-level tuple/list/set of strings (or a dict's string keys), `*OTHER` and `*mod.OTHER`
        elements expanded (grpo.GRPO_KEYS holds `*common.ADAM_KEYS`); also a name imported from a module."""
        if name in self._assigned:
            return literal_strings(self._assigned[name], self.starred)
        if name in self.from_names:
            other, attr = self.from_names[name]
            return self.sources.module(other).constant(attr)
        return None

    def starred(self, node: ast.AST) -> list[str] | None:
        if isinstance(node, ast.Name):
            return self.constant(node.id)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id in self.module_aliases:
            return self.sources.module(self.module_aliases[node.value.id]).constant(node.attr)
        return None

    def _resolve_from(self, node: ast.ImportFrom) -> str | None:
        if node.level:
            parts = self.rel[:-3].split("/")[: -node.level]
            base = "/".join(parts + (node.module.split(".") if node.module else []))
        else:
            base = (node.module or "").replace(".", "/")
        return base if base.split("/")[0] == "tlab_gradio" else None


def literal_strings(node: ast.AST, starred=None) -> list[str] | None:
    """The strings of a tuple/list/set literal, or a dict literal's string keys; `starred` resolves the
    value of a `*NAME` element (None: not resolvable, so neither is the literal)."""
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        elts = node.elts
    elif isinstance(node, ast.Dict):
        elts = node.keys
    else:
        return None
    out: list[str] = []
    for e in elts:
        if isinstance(e, ast.Constant) and isinstance(e.value, str):
            out.append(e.value)
        elif isinstance(e, ast.Starred) and starred is not None and starred(e.value) is not None:
            out += starred(e.value)
        else:
            return None
    return out or None


class Sources:
    """Every module of the package, parsed once; `overrides` replaces a file's text (tests of the test)."""

    def __init__(self, overrides: dict[str, str] | None = None):
        self.overrides = overrides or {}
        self._modules: dict[str, Module] = {}

    def module(self, rel: str) -> Module:
        if rel not in self._modules:
            text = self.overrides.get(rel)
            if text is None:
                text = (PKG.parent / rel).read_text()
            self._modules[rel] = Module(rel, text, self)
        return self._modules[rel]

    def app_modules(self) -> list[str]:
        return sorted(str(f.relative_to(PKG.parent)) for f in PKG.rglob("*.py")
                      if "trainers" not in f.relative_to(PKG).parts)


# --- the analysis -------------------------------------------------------------------------------------


@dataclass
class Result:
    reads: list[Read] = field(default_factory=list)
    stores: list[Read] = field(default_factory=list)  # p["x"] = ...: keys the code itself puts in params


class Analyzer:
    """Follows the params dict from entry functions through every call it is handed to; collects the reads.
    `train_type`: the plugin's (picks a dispatch table's entry and TRAIN_TYPE_ONLY calls), None for every one."""

    def __init__(self, sources: Sources, train_type: str | None = None):
        self.src = sources
        self.train_type = train_type
        self.result = Result()
        self._done: set = set()

    # entry points
    def run(self, rel: str, func: str, bindings: dict[str, object]) -> None:
        mod = self.src.module(rel)
        node = mod.functions.get(func)
        if node is not None:
            self.function(mod, node, bindings)

    def function(self, mod: Module, node: ast.FunctionDef, bindings: dict[str, object]) -> None:
        key = (mod.rel, node.name, node.lineno, tuple(sorted((k, str(v)) for k, v in bindings.items())))
        if key in self._done:
            return
        self._done.add(key)
        env = dict(bindings)
        self._bind_locals(mod, node, env)
        _Visitor(self, mod, node, env).visit_body(node)

    def _bind_locals(self, mod: Module, fn: ast.FunctionDef, env: dict[str, object]) -> None:
        """Assignments and loop targets of the function, to a fixpoint: params aliases and string sets."""
        for _ in range(3):
            for node in ast.walk(fn):
                if isinstance(node, ast.Assign):
                    self._bind_assign(mod, fn, node.targets, node.value, env)
                elif isinstance(node, ast.AnnAssign) and node.value is not None:
                    self._bind_assign(mod, fn, [node.target], node.value, env)
                elif isinstance(node, (ast.For, ast.comprehension)):
                    values = self.iter_values(mod, fn, node.iter, env)
                    if values is not None and isinstance(node.target, ast.Name):
                        excluded = set()
                        if isinstance(node, ast.comprehension):
                            excluded = _excluded(node.ifs, node.target.id)
                        old = env.get(node.target.id)
                        merged = set(old) if isinstance(old, frozenset) else set()
                        env[node.target.id] = frozenset(merged | (set(values) - excluded))

    def _bind_assign(self, mod, fn, targets, value, env) -> None:
        for t in targets:
            if isinstance(t, ast.Name):
                if self.is_params(mod, value, env):
                    env[t.id] = PARAMS
                else:
                    values = self.iter_values(mod, fn, value, env)
                    if values is not None:
                        env[t.id] = ("collection", tuple(values))
            elif isinstance(t, ast.Tuple) and isinstance(value, ast.Call):
                # x, cfg, p, s = common.begin(...): the callee returns a tuple holding the params there
                callee = self.resolve_callee(mod, fn, value.func, env)
                if callee is None:
                    continue
                cmod, cnode = callee
                for ret in ast.walk(cnode):
                    if isinstance(ret, ast.Return) and isinstance(ret.value, ast.Tuple) \
                            and len(ret.value.elts) == len(t.elts):
                        for target, elt in zip(t.elts, ret.value.elts):
                            if isinstance(target, ast.Name) and self.is_params(cmod, elt, {}):
                                env[target.id] = PARAMS

    def is_params(self, mod: Module, node: ast.AST, env: dict) -> bool:
        if isinstance(node, ast.Name):
            return env.get(node.id) is PARAMS
        if isinstance(node, ast.Subscript):  # cfg["params"]
            return isinstance(node.slice, ast.Constant) and node.slice.value == "params"
        if isinstance(node, ast.Attribute) and node.attr == "params" and not (
                isinstance(node.value, ast.Name) and node.value.id in mod.module_aliases):  # spec.params (JobSpec)
            return True
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr == "get" and node.args and isinstance(node.args[0], ast.Constant) \
                    and node.args[0].value == "params":  # cfg.get("params")
                return True
            # params.validate(...): the validated parameter set (Service.prepare's `clean`)
            owner = node.func.value
            if node.func.attr == "validate" and isinstance(owner, ast.Name) \
                    and mod.module_aliases.get(owner.id) == "tlab_gradio/params.py":
                return True
        if isinstance(node, ast.BoolOp):  # config.get("params") or {}
            return any(self.is_params(mod, v, env) for v in node.values)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" \
                and len(node.args) == 1:  # dict(p): a copy
            return self.is_params(mod, node.args[0], env)
        return False

    def iter_values(self, mod: Module, fn, node: ast.AST, env: dict) -> list[str] | None:
        """The strings that iterating `node` yields, when the test can tell."""
        lit = literal_strings(node, mod.starred)
        if lit is not None:
            return lit
        if isinstance(node, ast.Name):
            bound = env.get(node.id)
            if isinstance(bound, tuple) and bound and bound[0] == "collection":
                return list(bound[1])
            return mod.constant(node.id)
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id in mod.module_aliases:
                return mod.starred(node)
            if node.attr in ("__dataclass_fields__", "model_fields") and isinstance(node.value, ast.Name):
                cls = mod.owner.get(id(fn)) if node.value.id in ("cls", "self") else node.value.id
                if cls in mod.classes:
                    return [s.target.id for s in mod.classes[cls].body
                            if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "keys":
            return self.iter_values(mod, fn, node.func.value, env)
        return None

    def strings(self, node: ast.AST, env: dict) -> list[str] | None:
        """The possible values of a key expression, when the test can tell."""
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return [node.value]
        if isinstance(node, ast.Name):
            bound = env.get(node.id)
            if isinstance(bound, frozenset):
                return sorted(bound)
            if isinstance(bound, str) and bound is not PARAMS:
                return [bound]
            return None
        if isinstance(node, ast.JoinedStr):  # f"reward_{n}_weight": one read per value of n
            out = [""]
            for part in node.values:
                if isinstance(part, ast.Constant):
                    out = [o + str(part.value) for o in out]
                elif isinstance(part, ast.FormattedValue) and part.format_spec is None and part.conversion == -1:
                    vals = self.strings(part.value, env)
                    if vals is None:
                        return None
                    out = [o + v for o in out for v in vals]
                else:
                    return None
            return out
        return None

    def resolve_callee(self, mod: Module, fn, func: ast.AST, env: dict):
        """(module, FunctionDef) of a call's target inside the package, or None."""
        if isinstance(func, ast.Name):
            if func.id in mod.functions:
                return mod, mod.functions[func.id]
            if func.id in mod.from_names:
                other, name = mod.from_names[func.id]
                om = self.src.module(other)
                return (om, om.functions[name]) if name in om.functions else None
            return None
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            base = func.value.id
            if base in mod.module_aliases:  # module.function
                om = self.src.module(mod.module_aliases[base])
                return (om, om.functions[func.attr]) if func.attr in om.functions else None
            cls = mod.owner.get(id(fn)) if base in ("self", "cls") else base
            if cls and f"{cls}.{func.attr}" in mod.functions:  # self.method, Class.method
                return mod, mod.functions[f"{cls}.{func.attr}"]
            if base in mod.from_names:  # from m import Class; Class.method
                other, name = mod.from_names[base]
                om = self.src.module(other)
                if f"{name}.{func.attr}" in om.functions:
                    return om, om.functions[f"{name}.{func.attr}"]
            return None
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Attribute) \
                and isinstance(func.value.value, ast.Name) and func.value.value.id in mod.module_aliases:
            om = self.src.module(mod.module_aliases[func.value.value.id])  # module.Class.method
            name = f"{func.value.attr}.{func.attr}"
            return (om, om.functions[name]) if name in om.functions else None
        return None

    def dispatch_table(self, mod: Module, func: ast.AST, train_type: str | None):
        """PLUGIN_CHECKS.get(manifest.train_type, default)(...) / PLUGIN_CHECKS[...](...): a module-level dict
        of functions keyed by train type. Explicit pattern: followed into the entry for this plugin's train
        type (every entry when the plugin is not known)."""
        table = None
        if isinstance(func, ast.Call) and isinstance(func.func, ast.Attribute) and func.func.attr == "get":
            table = func.func.value
        elif isinstance(func, ast.Subscript):
            table = func.value
        if not isinstance(table, ast.Name):
            return []
        for node in mod.tree.body:
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == table.id for t in node.targets) \
                    and isinstance(node.value, ast.Dict):
                out = []
                for k, v in zip(node.value.keys, node.value.values):
                    if isinstance(k, ast.Constant) and (train_type is None or k.value == train_type) \
                            and isinstance(v, ast.Name) and v.id in mod.functions:
                        out.append((mod, mod.functions[v.id]))
                return out
        return []


def _excluded(conditions, var: str) -> set[str]:
    """Values a comprehension filter drops: `var != "x"`, `var not in ("x", ...)` (conjuncts only)."""
    out: set[str] = set()
    for cond in _conjuncts(conditions):
        if isinstance(cond, ast.Compare) and isinstance(cond.left, ast.Name) and cond.left.id == var \
                and len(cond.ops) == 1:
            if isinstance(cond.ops[0], ast.NotEq) and isinstance(cond.comparators[0], ast.Constant):
                out.add(cond.comparators[0].value)
            elif isinstance(cond.ops[0], ast.NotIn):
                out |= set(literal_strings(cond.comparators[0]) or [])
    return out


def _conjuncts(conditions):
    for cond in conditions:
        if isinstance(cond, ast.BoolOp) and isinstance(cond.op, ast.And):
            yield from _conjuncts(cond.values)
        else:
            yield cond


class _Visitor(ast.NodeVisitor):
    def __init__(self, an: Analyzer, mod: Module, fn: ast.FunctionDef, env: dict):
        self.an, self.mod, self.fn, self.env = an, mod, fn, env
        self.train_type = an.train_type
        self.guards: list[set[str]] = []  # keys checked by an enclosing `if p.get(k)` / `if k in p`
        self.handled: set[int] = set()  # ids of params expressions already accounted for

    def visit_body(self, fn: ast.FunctionDef) -> None:
        for stmt in fn.body:
            self.visit(stmt)

    def visit_FunctionDef(self, node):  # a nested def: its reads belong to this function
        self.generic_visit(node)

    def _record(self, node, keys, kind, detail=""):
        guarded = any(k in g for g in self.guards for k in (keys or []))
        if keys is None:
            self.an.result.reads.append(Read(None, kind, self.mod.rel, node.lineno, False, detail))
        for k in keys or []:
            self.an.result.reads.append(Read(k, kind, self.mod.rel, node.lineno, guarded, detail))

    def _guard_keys(self, test) -> set[str]:
        keys: set[str] = set()
        for cond in _conjuncts([test]):
            if isinstance(cond, ast.Compare) and len(cond.ops) == 1:  # p.get(k) is not None
                if isinstance(cond.ops[0], ast.In) and self.an.is_params(self.mod, cond.comparators[0], self.env):
                    keys |= set(self.an.strings(cond.left, self.env) or [])
                    continue
                cond = cond.left
            if isinstance(cond, ast.Call) and isinstance(cond.func, ast.Attribute) and cond.func.attr == "get" \
                    and cond.args and self.an.is_params(self.mod, cond.func.value, self.env):
                keys |= set(self.an.strings(cond.args[0], self.env) or [])
        return keys

    def visit_If(self, node):
        self.visit(node.test)
        self.guards.append(self._guard_keys(node.test))
        for stmt in node.body:
            self.visit(stmt)
        self.guards.pop()
        for stmt in node.orelse:
            self.visit(stmt)

    def visit_IfExp(self, node):
        self.visit(node.test)
        self.guards.append(self._guard_keys(node.test))
        self.visit(node.body)
        self.guards.pop()
        self.visit(node.orelse)

    def _comprehension(self, node, elts):
        for gen in node.generators:
            self.visit(gen.iter)
            for cond in gen.ifs:
                self.visit(cond)
        self.guards.append(set().union(*(self._guard_keys(c) for g in node.generators for c in g.ifs)))
        for e in elts:
            self.visit(e)
        self.guards.pop()

    def visit_ListComp(self, node):
        self._comprehension(node, [node.elt])

    visit_SetComp = visit_GeneratorExp = visit_ListComp

    def visit_DictComp(self, node):
        self._comprehension(node, [node.key, node.value])

    def visit_Subscript(self, node):
        if self.an.is_params(self.mod, node.value, self.env):
            self.handled.add(id(node.value))
            kind = "store" if isinstance(node.ctx, (ast.Store, ast.Del)) else "subscript"
            keys = self.an.strings(node.slice, self.env)
            if kind == "store":
                for k in keys or []:
                    self.an.result.stores.append(Read(k, "store", self.mod.rel, node.lineno))
            else:
                self._record(node, keys, kind, ast.unparse(node))
        self.generic_visit(node)

    def visit_Compare(self, node):
        if len(node.ops) == 1 and isinstance(node.ops[0], (ast.In, ast.NotIn)) \
                and self.an.is_params(self.mod, node.comparators[0], self.env):
            self.handled.add(id(node.comparators[0]))
            self._record(node, self.an.strings(node.left, self.env), "in", ast.unparse(node))
        self.generic_visit(node)

    def visit_Call(self, node):
        func = node.func
        if isinstance(func, ast.Attribute) and self.an.is_params(self.mod, func.value, self.env):
            self.handled.add(id(func.value))
            if func.attr in ("get", "pop", "setdefault") and node.args:
                self._record(node, self.an.strings(node.args[0], self.env), "get", ast.unparse(node))
            elif func.attr not in ("copy",):
                self._record(node, None, "opaque", f"p.{func.attr}(...)")
        args = [(i, a) for i, a in enumerate(node.args)] + [(kw.arg, kw.value) for kw in node.keywords]
        if any(self.an.is_params(self.mod, a, self.env) for _, a in args):
            callees = []
            callee = self.an.resolve_callee(self.mod, self.fn, func, self.env)
            if callee is not None:
                callees = [callee]
            else:
                callees = self.an.dispatch_table(self.mod, func, self.train_type)
            for pos, a in args:
                if self.an.is_params(self.mod, a, self.env):
                    self.handled.add(id(a))
                    if pos is None and callees:  # f(**p): every name a keyword, not followed
                        self._record(node, None, "opaque", f"**{ast.unparse(a)} passed to {ast.unparse(func)}(...)")
            if not callees and not (isinstance(func, ast.Name) and func.id in ("dict", "bool", "isinstance")):
                self._record(node, None, "opaque", f"passed to {ast.unparse(func)}(...)")
            for cmod, cnode in callees:
                only = TRAIN_TYPE_ONLY.get((cmod.rel, cmod.qualname.get(id(cnode))))
                if only is not None and self.train_type is not None and only != self.train_type:
                    continue
                self.an.function(cmod, cnode, self._callee_bindings(cnode, args))
        self.generic_visit(node)

    def _callee_bindings(self, cnode: ast.FunctionDef, args) -> dict:
        names = [a.arg for a in cnode.args.posonlyargs + cnode.args.args]
        if names and names[0] in ("self", "cls"):
            names = names[1:]
        bindings: dict[str, object] = {}
        for pos, value in args:
            name = names[pos] if isinstance(pos, int) and pos < len(names) else pos if isinstance(pos, str) else None
            if name is None:
                continue
            if self.an.is_params(self.mod, value, self.env):
                bindings[name] = PARAMS
            else:
                vals = self.an.strings(value, self.env)
                if vals is not None and len(vals) == 1:
                    bindings[name] = vals[0]
                elif vals is not None:
                    bindings[name] = frozenset(vals)
        return bindings

    def visit_Assign(self, node):
        if self.an.is_params(self.mod, node.value, self.env):  # q = p, q = p or {}: an alias (_bind_locals)
            for part in ast.walk(node.value):
                if isinstance(part, ast.Name):
                    self.handled.add(id(part))
        self.generic_visit(node)

    def visit_Name(self, node):
        # the params dict used any other way (iterated, returned, **p, ...) in a plugin's program
        if self.env.get(node.id) is PARAMS and isinstance(node.ctx, ast.Load) and id(node) not in self.handled:
            # (Subscript, Call, Compare and Assign mark the uses they understand before visiting children)
            self.an.result.reads.append(Read(None, "bare", self.mod.rel, node.lineno, False, node.id))


# --- per plugin ---------------------------------------------------------------------------------------


def load_manifests() -> dict[str, dict]:
    """Each plugin's manifest as the app loads it: what it declares, its shared sets and the launch settings."""
    from tlab_gradio import manifests

    found, errors = manifests.load_all(MANIFESTS)
    assert not errors, errors
    return {plugin: json.loads(m.model_dump_json()) for plugin, m in sorted(found.items())}


def declared_for(plugin: str) -> str:
    return f"{plugin} (plugin_manifests/{plugin}.json, its parameter_sets, the app's launch settings)"


def plugin_reads(manifest: dict, sources: Sources) -> Result:
    """What the plugin's trainer program reads from params, and what Service.prepare reads and adds for it."""
    an = Analyzer(sources, manifest.get("train_type"))
    trainer = f"tlab_gradio/trainers/{manifest['trainer']}"
    an.run(trainer, "main", {})
    an.run(trainer, "check", {"p": PARAMS})  # the plugin's own checks, run by Service.prepare (plugin_checks)
    an.run(REQUEST, "prepare", {})
    return an.result


def app_reads(sources: Sources) -> list[Read]:
    """Every read of a params dict anywhere in the app (UI included), for the UNUSED direction: each function
    of each app module is an entry, with its arguments named `p` / `params` taken as the params dict."""
    an = Analyzer(sources)
    for rel in sources.app_modules():
        mod = sources.module(rel)
        for name, node in mod.functions.items():
            args = [a.arg for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs]
            bindings = {a: PARAMS for a in args if a in ("p", "params") and a not in mod.module_aliases}
            an.run(rel, name, bindings)
    return an.result.reads


_APP_READS: list[Read] = []


def _default_app_reads() -> list[Read]:
    """app_reads of the files as they are, once per test session."""
    if not _APP_READS:
        _APP_READS.extend(app_reads(Sources()))
    return _APP_READS


def check_manifest(plugin: str, manifest: dict, sources: Sources | None = None,
                   app: list[Read] | None = None) -> tuple[list[str], list[str]]:
    """(missing, unused): one readable line each, naming the plugin, the parameter and where it is read."""
    sources = sources or Sources()
    declared = set(manifest.get("parameters") or {})
    result = plugin_reads(manifest, sources)
    provided = {s.name for s in result.stores}  # e.g. custom_rewards, added by Service.prepare
    missing: list[str] = []
    seen: set = set()
    # one line per name and place (`p[k] for k in KEYS if p.get(k) is not None` reads k twice on one line),
    # the crashing read first
    for r in sorted(result.reads, key=lambda r: (r.file, r.line, not r.can_crash)):
        if (r.name, r.where, r.kind if r.name is None else "") in seen:
            continue
        seen.add((r.name, r.where, r.kind if r.name is None else ""))
        if r.name is None:
            if r.file.startswith("tlab_gradio/trainers/"):
                missing.append(f"{plugin}: {r.where} reads the params in a way the test cannot follow "
                               f"({r.kind}: {r.detail}); teach tests/test_manifest_coverage.py the pattern")
            continue
        if r.name in declared or r.name in provided:
            continue
        if r.can_crash or r.file in PLUGIN_MODULES:
            what = ("a setting the form can never set" if not r.can_crash else "KeyError when the job runs"
                    if r.file.startswith("tlab_gradio/trainers/") else "KeyError when the job is submitted")
            missing.append(f"{plugin}: parameter `{r.name}` is read at {r.where} ({r.detail}) but "
                           f"it is not declared for {declared_for(plugin)}: {what}")
    if app is None:
        app = _default_app_reads() if not sources.overrides else app_reads(sources)
    used = {r.name for r in result.reads if r.name} | {r.name for r in app if r.name}
    unused = [f"{plugin}: parameter `{name}` is declared for {declared_for(plugin)} but read nowhere "
              f"(not by tlab_gradio/trainers/{manifest['trainer']} and the modules it hands `p` to, nor by the app)"
              for name in sorted(declared - used)]
    return missing, unused


def _known(lines: list[str], allowed: dict, plugin: str) -> list[str]:
    """The lines the allow-list does not cover ("cannot follow" lines never are)."""
    return [line for line in lines if (plugin, line.split("`")[1] if "`" in line else None) not in allowed]


# --- the tests ----------------------------------------------------------------------------------------


def _all_results():
    sources = Sources()
    app = _default_app_reads()
    return {plugin: check_manifest(plugin, m, sources, app) for plugin, m in load_manifests().items()}


def test_every_read_parameter_is_declared_and_every_declared_one_is_read():
    assert load_manifests(), "no plugin manifests found"
    problems = []
    for plugin, (missing, unused) in _all_results().items():
        problems += _known(missing, ALLOWED_MISSING, plugin) + _known(unused, ALLOWED_UNUSED, plugin)
    assert not problems, "\n".join(problems)


def test_allow_lists_are_still_needed():
    """An allow-list entry whose mismatch is gone must be removed, so the lists only shrink."""
    results = _all_results()
    reported = set()
    for plugin, (missing, unused) in results.items():
        reported |= {("missing", plugin, line.split("`")[1]) for line in missing if "`" in line}
        reported |= {("unused", plugin, line.split("`")[1]) for line in unused}
    stale = [f"ALLOWED_MISSING {key}" for key in ALLOWED_MISSING if ("missing", *key) not in reported]
    stale += [f"ALLOWED_UNUSED {key}" for key in ALLOWED_UNUSED if ("unused", *key) not in reported]
    assert not stale, "no longer needed, remove from tests/test_manifest_coverage.py: " + ", ".join(stale)


# --- the check really fails on a real defect -----------------------------------------------------------

def _line(where: str) -> str:
    rel, line = where.rsplit(":", 1)
    return (REPO / rel).read_text().splitlines()[int(line) - 1]


@pytest.mark.parametrize("plugin, name, file, pattern", [
    # a plain subscript in a helper the trainer calls with `p` (sft.build_peft_config)
    ("llama_sft_multi_gpu", "lora_alpha", "tlab_gradio/trainers/sft.py", "subscript"),
    # a constant argument bound into a helper: switch(p, "torch_compile") -> p.get(key)
    ("llama_sft_multi_gpu", "torch_compile", "tlab_gradio/trainers/sft.py", "get"),
    # p[k] for k in SFT_KEYS
    ("llama_sft_multi_gpu", "max_grad_norm", "tlab_gradio/trainers/sft.py", "tuple"),
    # p[f"reward_{n}_weight"] for n in rewards.SCORERS
    ("grpo_multi_gpu", "reward_integer_weight", "tlab_gradio/trainers/grpo.py", "f-string"),
    # p[k] for k in GRPO_KEYS
    ("grpo_multi_gpu", "epsilon", "tlab_gradio/trainers/grpo.py", "tuple"),
    # unsloth_grpo.py: p[k] for k in grpo.GRPO_KEYS (another module's tuple)
    ("unsloth_grpo", "temperature", "tlab_gradio/trainers/unsloth_grpo.py", "tuple"),
    # grpo.system_prompt(p, ...) called from unsloth_grpo.py: a helper in another trainer module
    ("unsloth_grpo", "system_template", "tlab_gradio/trainers/grpo.py", "get"),
    # Service.prepare -> unsloth_grpo.check -> grpo.check_rewards_and_groups: a KeyError when the job is submitted
    ("unsloth_grpo", "num_generations", "tlab_gradio/trainers/grpo.py", "subscript"),
    # a launch setting the app adds (launch_settings.py), read by Service.prepare
    ("llama_sft_multi_gpu", "device", "tlab_gradio/job_request.py", "subscript"),
])
def test_a_manifest_missing_a_read_parameter_is_reported(plugin, name, file, pattern):
    manifest = copy.deepcopy(load_manifests()[plugin])
    assert name in manifest["parameters"], f"{plugin} no longer declares {name}: pick another example"
    del manifest["parameters"][name]
    missing, _ = check_manifest(plugin, manifest)
    hits = [line for line in missing if f"`{name}`" in line and line.startswith(f"{plugin}:")]
    assert hits, f"removing {name} from {plugin} was not reported: {missing}"
    cited = [m.group(0) for line in hits for m in [re.search(rf"{re.escape(file)}:\d+", line)] if m]
    assert cited, f"no read of {name} cited in {file}: {hits}"
    for where in cited:  # the cited line really is a read of the params dict
        assert re.search(r"\b(p|params|clean)(\[|\.get\()", _line(where)), (where, _line(where))
    # and the intact manifest is fine
    missing, _ = check_manifest(plugin, load_manifests()[plugin])
    assert not [line for line in missing if f"`{name}`" in line]


def test_the_launch_settings_and_the_shared_sets_are_counted():
    """The manifests' files name neither the launch settings nor their shared sets' parameters: the loaded
    manifests this test checks hold them (a one-GPU plugin only the launch settings that apply to it)."""
    loaded = load_manifests()
    for plugin, manifest in loaded.items():
        own = json.loads((MANIFESTS / f"{plugin}.json").read_text())["parameters"]
        launch = {"device", "gpu_ids", "mixed_precision"}
        assert launch <= set(manifest["parameters"]) and not launch & set(own), plugin
    assert "fsdp_auto_wrap" in loaded["llama_sft_multi_gpu"]["parameters"]
    assert "distributed_strategy" not in loaded["unsloth_grpo"]["parameters"]
    assert {"reward_tag_count_weight", "temperature", "adam_beta2"} <= set(loaded["unsloth_grpo"]["parameters"])


def test_a_declared_parameter_nothing_reads_is_reported():
    manifest = copy.deepcopy(load_manifests()["unsloth_grpo"])
    manifest["parameters"]["packing"] = {"title": "Packing", "type": "boolean", "default": False}  # SFT's, not here
    manifest["parameters"]["shuffle_buffer"] = {"title": "Shuffle", "type": "integer", "default": 0}
    _, unused = check_manifest("unsloth_grpo", manifest)
    assert any("`packing`" in u and "unsloth_grpo" in u for u in unused), unused
    assert any("`shuffle_buffer`" in u for u in unused), unused


def _insert_after(text: str, anchor: str, lines: list[str]) -> tuple[str, list[int]]:
    """`lines` inserted after the line holding `anchor`, with the same indent; returns their line numbers."""
    src = text.splitlines()
    at = next(i for i, line in enumerate(src) if anchor in line)
    indent = re.match(r"\s*", src[at]).group(0)
    src[at + 1:at + 1] = [indent + line for line in lines]
    return "\n".join(src) + "\n", [at + 2 + i for i in range(len(lines))]


def test_a_trainer_with_an_extra_read_is_reported():
    rel = "tlab_gradio/trainers/sft.py"
    text, (direct, via_helper, opaque) = _insert_after((REPO / rel).read_text(), "= common.begin(", [
        'shuffle = p["shuffle_buffer"]',  # a KeyError: no manifest declares it
        'ratio = warmup_ratio(p)',  # a read inside a helper, followed
        'import json; json.dumps(p)',  # the dict handed to something the test cannot follow
    ])
    text += '\n\ndef warmup_ratio(params):\n    return params.get("warmup_ratio")\n'
    helper_line = len(text.splitlines())  # the helper's `return params.get(...)`, the file's last line
    sources = Sources({rel: text})
    missing, _ = check_manifest("llama_sft_multi_gpu", load_manifests()["llama_sft_multi_gpu"], sources)
    report = "\n".join(missing)
    assert f"`shuffle_buffer` is read at {rel}:{direct} " in report and "KeyError" in report, report
    assert f"`warmup_ratio` is read at {rel}:{helper_line} " in report, report
    assert f"{rel}:{opaque} reads the params in a way the test cannot follow" in report, report
    assert via_helper  # the call line itself reads nothing


def test_shared_modules_may_get_undeclared_names_but_not_subscript_them():
    """common.py serves every plugin: `.get` of a name a plugin lacks is deliberate there; `[...]` is a crash."""
    rel = "tlab_gradio/trainers/common.py"
    text, (line,) = _insert_after((REPO / rel).read_text(), "params = params or {}", [
        'enabled = enabled and not params.get("only_some_plugins") and params["everyone_must"]'])
    missing, _ = check_manifest("grpo_multi_gpu", load_manifests()["grpo_multi_gpu"], Sources({rel: text}))
    assert any(f"`everyone_must` is read at {rel}:{line} " in m for m in missing), missing
    assert not any("only_some_plugins" in m for m in missing), missing


def test_train_type_only_calls_are_still_gated():
    """TRAIN_TYPE_ONLY's premise: Service.prepare takes custom rewards (what makes `choices`) only for grpo."""
    prepare = Sources().module(REQUEST).functions["prepare"]
    gated = [node for node in ast.walk(prepare) if isinstance(node, ast.IfExp)
             and "custom_rewards" in ast.unparse(node.body)
             and re.fullmatch(r"manifest\.train_type == '(\w+)'", ast.unparse(node.test))]
    assert gated, "Service.prepare no longer takes custom_rewards for grpo only: revisit TRAIN_TYPE_ONLY"
    assert ast.unparse(gated[0].test).split("'")[1] == TRAIN_TYPE_ONLY[(REQUEST, "_custom_reward_problems")]
