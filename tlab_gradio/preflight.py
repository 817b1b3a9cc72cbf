"""Checks of settings that pass their own limits but would fail, or do nothing, once the job has started: each
needs something else of the request (the dataset's rows or splits, the model's chat template). Run by the
request check (job_request.prepare) with the rest; each problem names the parameter and the way out.

Themed, as a checklist: the held-out evaluation (`held_out`), the loss masks that need the model's chat
template (`chat_loss`), and a chat template given in place of the model's (`chat_template`). No torch, transformers or TRL here: the web process reads files only.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from jinja2 import TemplateSyntaxError, nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from . import data, models

NEEDS_EVAL = ("an evaluation: set `val_size` (held-out rows, e.g. 0.1) or `eval_split` (a split of the dataset, "
              "e.g. test)")


def held_out(p: dict[str, Any], spec: data.DatasetSpec | None, head: data.Head | None, read: bool) -> list[str]:
    """The held-out evaluation (plugin_manifests/shared/held_out.json) against itself and the data: `val_size` a
    fraction or a whole count that leaves rows to train on, one source of eval rows, early stopping and the best
    checkpoint only with an evaluation, and an `eval_split` the dataset has (where its splits are known: a
    sample or a file has `train` only; a folder's or a Hub dataset's are read when `read`)."""
    if "val_size" not in p:
        return []  # a plugin without the set
    problems = []
    size = p.get("val_size") or 0
    split = (p.get("eval_split") or "").strip()
    if size >= 1 and not float(size).is_integer():
        problems.append(f"`val_size` {size:g}: give a fraction below 1 (0.1 = 10% of the rows) or a whole number "
                        f"of rows (e.g. {math.floor(size)})")
    if size and split:
        problems.append(f"`val_size` {size:g} and `eval_split` {split!r} both name rows to evaluate on: give one "
                        "(set the other to 0 / empty)")
    if not size and not split:
        patience = p.get("early_stopping_patience") or 0
        if patience > 0:
            problems.append(f"`early_stopping_patience` {patience} stops on the eval metric, "
                            f"which needs {NEEDS_EVAL}; or set it to 0")
        if p.get("load_best_model_at_end"):
            problems.append(f"`load_best_model_at_end` picks the checkpoint with the best eval metric, which needs "
                            f"{NEEDS_EVAL}; or turn it off")
    if size and not problems and head is not None and head.total is not None:
        problems += _rows_left(p, size, head.total)
    if split and spec is not None:
        problems += _split_known(split, spec, read)
    return problems


def _rows_left(p: dict[str, Any], size: float, total: int) -> list[str]:
    """`val_size` against the rows the job trains on (max_samples of them, where set): at least one row held out
    (datasets rounds a fraction's count up) and at least one left to train on."""
    cap = p.get("max_samples") or 0
    rows = min(total, cap) if cap else total
    of = f"the dataset's {rows} rows" + (f" (max_samples {cap})" if cap and cap < total else "")
    held = int(size) if size >= 1 else math.ceil(size * rows)
    if held < rows:
        return []
    if rows < 2:
        return [f"`val_size` {size:g}: {of} cannot be split (one row to train on and one to hold out at least)"]
    way = "give fewer rows" if size >= 1 else "give a smaller fraction"
    return [f"`val_size` {size:g} holds out {held} of {of}, which leaves none to train on: {way}, e.g. "
            f"{max(1, rows // 10)} or 0.1"]


def split_names(spec: data.DatasetSpec, read: bool) -> list[str] | None:
    """The dataset's splits: `train` for a bundled sample or one file (loaded as one train split); a folder's or a
    Hub dataset's through `datasets` when `read` (None: not read, or it cannot be loaded, which the data check
    reports itself)."""
    if spec.source == "sample" or (spec.source == "file" and Path(spec.name).is_file()):
        return ["train"]
    if not read:
        return None
    try:
        return list(data._load_dict(spec).keys())
    except data.DataError:
        return None


def _split_known(split: str, spec: data.DatasetSpec, read: bool) -> list[str]:
    names = split_names(spec, read)
    if names is None:
        return []
    if split not in names:
        one = spec.source == "sample" or (spec.source == "file" and Path(spec.name).is_file())
        way = ("a bundled sample or a single file is one `train` split: use `val_size` to hold out rows of it, or "
               "give a folder with a file per split, e.g. train.jsonl and test.jsonl") if one \
            else "use one of those, or `val_size`"
        return [f"`eval_split` {split!r}: dataset {spec.label} has no such split; its splits: {', '.join(names)} "
                f"({way})"]
    trained = spec.split or ("train" if "train" in names else names[0] if len(names) == 1 else None)
    if split == trained:
        others = [n for n in names if n != split]
        return [f"`eval_split` {split!r} is the split trained on: evaluating on it says nothing about held-out "
                f"data; name another split{' (' + ', '.join(others) + ')' if others else ''}, or use `val_size`"]
    return []


def chat_loss(p: dict[str, Any], templates: data.Templates | None, model_ref: models.ModelRef | None) -> list[str]:
    """`assistant_only_loss` on chat data needs a chat template that marks the assistant's tokens with
    {% generation %} ... {% endgeneration %} (TRL builds the loss mask from them), or one TRL knows how to swap
    for such a version (Qwen, Llama 3, Gemma... shipped with TRL). Otherwise TRL stops at the job's start
    ("The chat template is not training-compatible"); SmolLM2's template has no markers. Refused here with the
    way out. (Completion-only loss needs no markers: it applies to prompt/completion rows, whose split TRL knows.)"""
    if not p.get("assistant_only_loss") or templates is None or templates.template.strip() or model_ref is None:
        return []  # off, or the data is rendered through templates (TRL's assistant-only loss does not apply)
    override = p.get("chat_template")
    text = override if isinstance(override, str) and override.strip() else models.chat_template(model_ref)
    if text is None:
        return []  # a Hub model that cannot be reached now: the trainer will tell
    name = "the embedded model" if model_ref.source == "embedded" else model_ref.gguf_file or model_ref.path
    way = ("turn `assistant_only_loss` off (the loss then covers the whole conversation), give the data as prompt "
           "and completion (a data template and a completion template) with `completion_only_loss`, or use a model "
           "or chat template whose assistant turns are wrapped in {% generation %} ... {% endgeneration %}")
    if not text.strip():
        return [f"`assistant_only_loss` needs the model's chat template, and {name} has none: {way}"]
    if models.GENERATION_MARKER.search(text) or models.trl_patches(text):
        return []
    return [f"`assistant_only_loss` needs a chat template with {{% generation %}} markers (TRL finds the "
            f"assistant's tokens by them), and the chat template of {name} has none, nor is it one TRL can replace "
            f"with a marked version: the job would fail at its start. {way[0].upper() + way[1:]}"]


MAX_CHAT_TEMPLATE_CHARS = 64 * 1024


class _Generation(Extension):
    """transformers' {% generation %} ... {% endgeneration %} in a chat template, parsed only."""
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


# Made once: the form's live check parses the template at every change of any field.
_CHAT_JINJA = ImmutableSandboxedEnvironment(extensions=[loopcontrols, _Generation])


def chat_template(p: dict[str, Any], hosted: bool) -> list[str]:
    """A `chat_template` given in place of the model's: Jinja that transformers can read (its `{% generation %}`
    tag and loop controls included), at most 64 KiB; refused on a hosted server, where a visitor's template
    would run in the trainer (sandboxed by transformers, but unbounded)."""
    text = p.get("chat_template")
    if not isinstance(text, str) or not text.strip():
        return []
    if hosted:
        return ["`chat_template`: a chat template of your own is turned off on this server (hosted mode); leave it "
                "empty to use the model's"]
    if len(text) > MAX_CHAT_TEMPLATE_CHARS:
        return [f"`chat_template` is {len(text):,} characters long; the limit is {MAX_CHAT_TEMPLATE_CHARS:,}"]
    try:
        _CHAT_JINJA.parse(text)
    except TemplateSyntaxError as exc:
        return [f"`chat_template`: syntax error at line {exc.lineno}: {exc.message}"]
    except (RecursionError, ValueError) as exc:
        return [f"`chat_template` cannot be read: {type(exc).__name__}"]
    if "messages" not in text:
        return ["`chat_template` never uses `messages`, the conversation it is given: a chat template loops over "
                "them, e.g. {% for message in messages %}{{ message['role'] }}: {{ message['content'] }}"
                "{% endfor %}"]
    return []
