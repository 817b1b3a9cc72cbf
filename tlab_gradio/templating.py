"""Data templates rendered under bounds.

A data template is a visitor's text that the app runs. jinja2's sandbox keeps it away from Python's objects
but bounds neither size nor time: `{{ 9**(9**7) }}` holds the GIL for seconds, `'x' * 10**9` builds a
gigabyte, and nested loops with empty bodies run for hours. So templates render here with bounds:

- integers: `**` and `*` may not build one of more than MAX_INT_BITS bits;
- strings and lists: `*`, `+`, `~`, `%`, the text a macro or block builds, and the widths of the padding
  filters and methods stay within MAX_SIZE; a row's output within MAX_OUTPUT_CHARS, counted as it streams;
- time: RENDER_SECONDS per render (per batch in the worker), by an alarm where the render runs on the main
  thread (the trainers, the render worker);
- a template is at most MAX_TEMPLATE_CHARS long, is parsed without evaluating anything (no constant folding),
  and a name the sandbox blocks (`__class__`) is an error naming it, not an empty render.

What no in-process bound catches (a C-level call this list misses, a stall the alarm cannot interrupt) is
the reason the web process never renders itself: render_worker runs these functions in a child process with
a memory limit and kills it at a hard deadline. This module imports only jinja2 (the trainers' environments
have it).
"""
from __future__ import annotations

import math
import re
import signal
import string
import threading
from contextlib import contextmanager
from functools import lru_cache, update_wrapper
from typing import Any, Iterable

from jinja2 import StrictUndefined, meta, nodes
from jinja2.compiler import CodeGenerator
from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError
from jinja2.filters import FILTERS
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import pass_eval_context

MAX_TEMPLATE_CHARS = 64 * 1024
MAX_OUTPUT_CHARS = 4 * 2**20  # one rendered row: far above any context length (262144 tokens ~ 1 MiB)
MAX_SIZE = MAX_OUTPUT_CHARS  # a string or list built inside a template
MAX_INT_BITS = 4096
RENDER_SECONDS = 2.0  # a render (in-process), or a batch of renders (in the worker)


_LIMIT = f"{MAX_SIZE // 2**20} MiB ({MAX_SIZE:,})"


class TemplateProblem(ValueError):
    """A template that is too long, does not parse, is blocked, fails or exceeds a bound: the message says which."""


def _mib(chars: int) -> str:
    return f"{chars / 2**20:,.0f} MiB" if chars >= 2**20 else f"{chars:,} characters"


def _size(length: int, what: str) -> None:
    if length > MAX_SIZE:
        raise TemplateProblem(f"{what} would make {_mib(length)}; the limit is {MAX_SIZE // 2**20} MiB")


def _sized(value: Any) -> bool:
    return isinstance(value, (str, list, tuple))


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _power(base: Any, exp: Any) -> None:
    if _integer(base) and _integer(exp) and exp > 0 and abs(base) > 1:
        bits = exp if exp > MAX_INT_BITS else exp * math.log2(abs(base))  # an exponent that big: no float needed
        if bits > MAX_INT_BITS:
            raise TemplateProblem(f"`**` would give an integer of about {bits:,.0f} bits; the limit is "
                                  f"{MAX_INT_BITS} bits")


def _product(left: Any, right: Any) -> None:
    if _integer(left) and _integer(right):
        if left.bit_length() + right.bit_length() > MAX_INT_BITS:
            raise TemplateProblem(f"`*` would give an integer of about {left.bit_length() + right.bit_length():,} "
                                  f"bits; the limit is {MAX_INT_BITS} bits")
    elif _sized(left) and _integer(right):
        _size(len(left) * right, "`*`")
    elif _integer(left) and _sized(right):
        _size(left * len(right), "`*`")


# A %-format's conversions: mapping key, flags, width and precision (`*` takes them from the arguments).
_PRINTF = re.compile(r"%(?:\([^)]*\))?[#0 +-]*(\*|\d+)?(?:\.(\*|\d+))?")


def _printf(fmt: str, args: Any) -> None:
    """`'%*d' % (10**9, 1)` pads to a gigabyte: refuse a width or precision above MAX_SIZE before formatting."""
    star = False
    for match in _PRINTF.finditer(fmt):
        for given in match.groups():
            if given == "*":
                star = True
            elif given and (len(given) > 9 or int(given) > MAX_SIZE):
                raise TemplateProblem(f"a %-format width of {given[:12]} is over the limit of {_LIMIT}")
    values = args if isinstance(args, tuple) else (args,)
    if star and any(_integer(v) and abs(v) > MAX_SIZE for v in values):
        raise TemplateProblem(f"a %-format width given with `*` is over the limit of {_LIMIT}")


def _format_spec(spec: str, args: tuple, kwargs: dict) -> None:
    """str.format's widths: `{:>1000000000}` or a nested `{:>{w}}` with a huge w."""
    if any(len(d) > 9 or int(d) > MAX_SIZE for d in re.findall(r"\d+", spec)):
        raise TemplateProblem(f"a format width in {spec[:40]!r} is over the limit of {_LIMIT}")
    if "{" in spec and any(_integer(v) and abs(v) > MAX_SIZE for v in (*args, *kwargs.values())):
        raise TemplateProblem(f"a nested format width is over the limit of {_LIMIT}")


def _replaced_size(text: str, old: str, new: str, count: Any = None) -> int:
    found = text.count(old) if old else len(text) + 1
    if _integer(count) and count >= 0:
        found = min(found, count)
    return len(text) + found * (len(new) - len(old))


def _joined_size(items: list, sep: str) -> int:
    return sum(len(str(i)) for i in items) + len(sep) * max(0, len(items) - 1)


def _str_method(owner: str, name: str, args: tuple, kwargs: dict) -> tuple:
    """Check a call of one of str's widening methods before it runs; returns the args (a join's materialised)."""
    if name in ("center", "ljust", "rjust", "zfill"):
        width = args[0] if args else kwargs.get("width", 0)
        if _integer(width):
            _size(width, f"str.{name}")
    elif name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        if _integer(size):
            _size(len(owner) + owner.count("\t") * size, "str.expandtabs")
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        _size(_replaced_size(owner, args[0], args[1], args[2] if len(args) > 2 else kwargs.get("count")),
              "str.replace")
    elif name == "join" and args:
        items = list(args[0])
        _size(_joined_size(items, owner), "str.join")
        args = (items, *args[1:])
    return args


# The filters that widen their input, wrapped to check the size first (the rest cannot grow it much).
def _center(value, width=80):
    if _integer(width):
        _size(width, "the center filter")
    return FILTERS["center"](value, width)


def _indent(s, width=4, first=False, blank=False):
    text = str(s)
    pad = width if _integer(width) else len(str(width))
    _size(len(text) + (text.count("\n") + 1) * pad, "the indent filter")
    return FILTERS["indent"](s, width, first, blank)


def _format(value, *args, **kwargs):
    _printf(str(value), kwargs or args)
    return FILTERS["format"](value, *args, **kwargs)


@pass_eval_context
def _join(eval_ctx, value, d="", attribute=None):
    items = list(value)
    if attribute is None:
        _size(_joined_size(items, str(d)), "the join filter")
    result = FILTERS["join"](eval_ctx, items, d, attribute)
    _size(len(result), "the join filter")
    return result


@pass_eval_context
def _replace(eval_ctx, s, old, new, count=None):
    _size(_replaced_size(str(s), str(old), str(new), count), "the replace filter")
    return FILTERS["replace"](eval_ctx, s, old, new, count)


class _CodeGenerator(CodeGenerator):
    """`~` compiles to a join the binop hook never sees: route it through environment.concat, which is bounded."""

    def visit_Concat(self, node: nodes.Concat, frame) -> None:
        self.write("environment.concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """jinja2's immutable sandbox (no list.append or dict.update to grow state across a loop) with the size
    bounds above, through its own hooks: intercepted binary operators, `call`, `format_string`, `concat`."""

    intercepted_binops = frozenset({"**", "*", "+", "%"})  # also stops constant folding of these
    code_generator_class = _CodeGenerator

    def __init__(self) -> None:
        # optimized=False: nothing is evaluated while compiling (`{{ 'x'|center(10**9) }}` was folded at parse)
        super().__init__(undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False, optimized=False)
        self.filters.update(center=_center, indent=_indent, format=_format, join=_join, replace=_replace)

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            _power(left, right)
        elif operator == "*":
            _product(left, right)
        elif operator == "+" and _sized(left) and _sized(right):
            _size(len(left) + len(right), "`+`")
        elif operator == "%" and isinstance(left, str):
            _printf(left, right)
        return super().call_binop(context, operator, left, right)

    def call(self, context, obj, /, *args: Any, **kwargs: Any) -> Any:
        owner = getattr(obj, "__self__", None)
        if isinstance(owner, str) and callable(obj):
            args = _str_method(owner, getattr(obj, "__name__", ""), args, kwargs)
        result = super().call(context, obj, *args, **kwargs)
        if _sized(result):
            _size(len(result), f"a call of {getattr(obj, '__name__', 'a function')}")
        return result

    def wrap_str_format(self, value: Any):
        """str.format and format_map, which the sandbox wraps when they are looked up: widths checked first."""
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        text, is_map = value.__self__, value.__name__ == "format_map"

        def checked(*args: Any, **kwargs: Any) -> str:
            mapping = args[0] if is_map and args and isinstance(args[0], dict) else kwargs
            for _, _, spec, _ in string.Formatter().parse(text):
                if spec:
                    _format_spec(spec, () if is_map else args, mapping)
            return wrapped(*args, **kwargs)

        return update_wrapper(checked, value)

    def concat(self, parts: Iterable[Any]) -> str:  # type: ignore[override]
        """What a macro, a block `set` or `~` builds (jinja2 joins those with environment.concat)."""
        texts = [p if isinstance(p, str) else str(p) for p in parts]
        _size(sum(map(len, texts)), "joining text (`~`, a macro, a block)")
        return "".join(texts)


@lru_cache(maxsize=1)
def env() -> BoundedSandbox:
    return BoundedSandbox()


# --- checking a template without running it ---------------------------------------------


def _parse(text: str) -> nodes.Template:
    if not isinstance(text, str):
        raise TemplateProblem(f"must be text, got {type(text).__name__}")
    if len(text) > MAX_TEMPLATE_CHARS:
        raise TemplateProblem(f"is {len(text):,} characters long; the limit is {MAX_TEMPLATE_CHARS:,} "
                              f"({MAX_TEMPLATE_CHARS // 1024} KiB): shorten it, or move fixed text into the data")
    try:
        return env().parse(text)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(f"syntax error at line {exc.lineno}: {exc.message}") from None
    except RecursionError:
        raise TemplateProblem("nests too deeply to read (brackets or blocks inside each other)") from None
    except ValueError as exc:  # e.g. an integer literal past Python's 4300 digits
        raise TemplateProblem(f"cannot be read: {exc}") from None


class _Fields(meta.TrackingCodeGenerator):
    """meta.find_undeclared_variables' generator, without constant folding: looking for names evaluates nothing."""

    def __init__(self, environment) -> None:
        super().__init__(environment)
        self.optimizer = None


def _blocked(tree: nodes.Template) -> list[str]:
    """Names the sandbox blocks, found without running the template: attributes and items starting with `_`,
    which the sandbox turns into an undefined value (an error when printed, nothing when only assigned)."""
    found = []
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter)):
        if isinstance(node, nodes.Getattr):
            name = node.attr
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            name = node.arg.value
        elif isinstance(node, nodes.Filter) and node.name == "attr" and node.args and \
                isinstance(node.args[0], nodes.Const):
            name = node.args[0].value
        else:
            continue
        if isinstance(name, str) and name.startswith("_") and name not in found:
            found.append(name)
    return sorted(found)


def fields(text: str) -> set[str]:
    """The row fields a template reads; TemplateProblem when it is too long, does not parse, or uses a name the
    sandbox blocks."""
    tree = _parse(text)
    blocked = _blocked(tree)
    if blocked:
        raise TemplateProblem(f"uses {', '.join(f'`{b}`' for b in blocked)}, which the sandbox blocks (names "
                              "starting with _ reach Python internals): use the row's fields and filters only")
    try:
        generator = _Fields(tree.environment)
        generator.visit(tree)
    except RecursionError:
        raise TemplateProblem("nests too deeply to read (brackets or blocks inside each other)") from None
    return generator.undeclared_identifiers


# --- rendering -----------------------------------------------------------------------


class _Timeout(Exception):
    pass


@contextmanager
def deadline(seconds: float):
    """Interrupt what runs inside after `seconds` with an alarm: only on the main thread, and only when no
    other alarm is set (an outer deadline covers an inner one). Elsewhere it does nothing; the web process
    never renders in-process for that reason (render_worker)."""
    usable = (hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
              and signal.getitimer(signal.ITIMER_REAL)[0] == 0)
    if not usable:
        yield
        return

    def expire(signum, frame):
        raise _Timeout()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@lru_cache(maxsize=32)
def _compiled(text: str):
    fields(text)  # the same checks as before a job: length, syntax, blocked names
    return env().from_string(text)


def render(text: str, row: dict[str, Any]) -> str:
    """One row through one template, within every bound; TemplateProblem saying why not."""
    try:
        template = _compiled(text)
        out, size = [], 0
        with deadline(RENDER_SECONDS):
            for chunk in template.generate(**row):  # output streams: stop at the bound, not after it
                size += len(chunk)
                if size > MAX_OUTPUT_CHARS:
                    raise TemplateProblem(f"renders more than {MAX_OUTPUT_CHARS // 2**20} MiB for one row")
                out.append(chunk)
        return "".join(out)
    except TemplateProblem:
        raise
    except _Timeout:
        raise TemplateProblem(f"took longer than {RENDER_SECONDS:g} s to render one row (a loop that runs too "
                              "long?)") from None
    except SecurityError as exc:
        raise TemplateProblem(f"the sandbox blocks it: {exc}") from None
    except TemplateError as exc:  # undefined names, bad filter arguments
        raise TemplateProblem(str(exc.message or exc)) from None
    except OverflowError as exc:  # the sandbox's range limit, float overflow
        raise TemplateProblem(f"{exc}") from None
    except RecursionError:
        raise TemplateProblem("recurses too deeply (a macro calling itself without end?)") from None
    except MemoryError:
        raise TemplateProblem("needs more memory than rendering allows") from None
    except Exception as exc:  # noqa: BLE001 - ZeroDivisionError, TypeError...: the template's own error
        raise TemplateProblem(f"{type(exc).__name__}: {exc}") from None


def render_batch(templates: list[tuple[str, str]], rows: list[dict[str, Any]]) -> list[list[str]]:
    """Each row through each (label, text) template, all within one RENDER_SECONDS; what the render worker
    runs. The first failure is raised naming its template and row (1-based)."""
    out = []
    try:
        with deadline(RENDER_SECONDS):
            for i, row in enumerate(rows, 1):
                texts = []
                for label, text in templates:
                    try:
                        texts.append(render(text, row))
                    except TemplateProblem as exc:
                        raise TemplateProblem(f"{label}, row {i}: {exc}") from None
                out.append(texts)
    except _Timeout:
        raise TemplateProblem(f"rendering {len(rows)} row{'s' * (len(rows) != 1)} took longer than "
                              f"{RENDER_SECONDS:g} s (a loop that runs too long?)") from None
    return out
