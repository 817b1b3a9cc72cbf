"""Datasets and data templates.

A dataset is a bundled sample, a local file (JSON, JSONL, CSV, Parquet) or a Hub
id, all loaded through `datasets`. Conversational data (a `messages` column) is
left to the tokenizer's chat template; anything else is rendered through data
templates with `{{field}}` placeholders in jinja2's sandbox, so a template cannot
reach Python objects, and under bounds of size and time (templating.py). Used both
before launch (checks, previews) and by the trainers: the trainers render in their
own process, the web process only through render_worker (`Templates.rendered`).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import inputs, settings, templating

FILE_TYPES = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}

# Bundled samples: file in samples/, and the templates that suit it.
SAMPLES: dict[str, dict[str, str]] = {
    "sft_instructions": {
        "file": "sft_instructions.jsonl",
        "description": "320 small instruction tasks written for tlab-gradio (arithmetic, units, word games)",
        "template": "### Instruction:\n{{instruction}}\n\n### Input:\n{{input}}\n\n### Response:\n",
        "completion_template": "{{output}}",
    },
    "grpo_arithmetic": {
        "file": "grpo_arithmetic.jsonl",
        "description": "360 word problems with numeric answers (GSM8K style, #### N), written for tlab-gradio",
        "template": "{{question}}",
        "completion_template": "{{answer}}",
    },
}
DEFAULT_SFT_SAMPLE = "sft_instructions"


class DataError(ValueError):
    pass


@dataclass(frozen=True)
class DatasetSpec:
    source: str  # "sample" | "file" | "hub"
    name: str  # sample name, file path or Hub id
    subset: str | None = None  # Hub configuration name
    split: str | None = None  # default: train, or the only split there is

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def label(self) -> str:
        return {"sample": "sample", "file": "file", "hub": "Hub"}[self.source] + f" {self.name}"


MAX_NAME_CHARS = 4096  # a path (PATH_MAX) or a Hub id


def _text(field: str, value: Any, optional: bool = False) -> str | None:
    """A dataset field's text, its type and characters checked (a number or a list is no name)."""
    if value is None or (optional and value == ""):
        if optional:
            return None
        raise DataError(f"`{field}` is required: a sample name, a file path or a Hub id")
    if not isinstance(value, str):
        raise DataError(f"`{field}` must be text, got {type(value).__name__} {inputs.short(value)}")
    try:
        return inputs.printable(field, value.strip(), MAX_NAME_CHARS)
    except ValueError as exc:
        raise DataError(str(exc)) from None


def parse_spec(value: Any) -> DatasetSpec:
    """Accept a spec dict, or a bare string: a sample name, an existing path, else a Hub id."""
    if isinstance(value, DatasetSpec):
        return value
    if value is None or value == "":
        return DatasetSpec("sample", DEFAULT_SFT_SAMPLE)
    if isinstance(value, dict):
        unknown = set(value) - {"source", "name", "subset", "split"}
        if unknown:
            raise DataError(f"dataset: unknown keys {sorted(unknown)} (expected source, name, subset, split)")
        source = value.get("source")
        if source not in ("sample", "file", "hub"):
            raise DataError(f"dataset source {source!r}: must be 'sample', 'file' or 'hub'")
        if not value.get("name"):
            raise DataError("dataset: `name` is required (sample name, file path or Hub id)")
        spec = DatasetSpec(source, _text("dataset.name", value["name"]),
                           _text("dataset.subset", value.get("subset"), True),
                           _text("dataset.split", value.get("split"), True))
    elif isinstance(value, str):
        text = _text("dataset", value)
        if text in SAMPLES:
            spec = DatasetSpec("sample", text)
        elif _exists("dataset", text):
            spec = DatasetSpec("file", text)
        else:
            spec = DatasetSpec("hub", text)
    else:
        raise DataError(f"`dataset` must be a sample name, a file path, a Hub id or an object with source, name, "
                        f"subset, split; got {type(value).__name__} {inputs.short(value)}")
    if spec.source == "sample" and spec.name not in SAMPLES:
        raise DataError(f"no bundled sample {spec.name!r}; samples: {', '.join(SAMPLES)}")
    if spec.source == "file":
        if not _exists("dataset.name", spec.name):
            raise DataError(f"dataset file {spec.name!r} does not exist")
        path = Path(spec.name).expanduser().resolve()
        if path.is_file() and path.suffix.lower() not in FILE_TYPES:
            raise DataError(f"dataset file {path.name!r}: use JSON, JSONL, CSV or Parquet")
        spec = DatasetSpec("file", str(path), spec.subset, spec.split)
    return spec


def _exists(field: str, text: str) -> bool:
    try:
        return inputs.path_exists(field, text)
    except ValueError as exc:
        raise DataError(str(exc)) from None


def _load_dict(spec: DatasetSpec):
    import datasets  # heavy: only when a dataset is really needed

    datasets.disable_progress_bars()  # \r-redrawn bars are noise in the app's output and in job logs

    try:
        if spec.source == "sample":
            path = settings.SAMPLES_DIR / SAMPLES[spec.name]["file"]
            return datasets.load_dataset("json", data_files={"train": str(path)})
        if spec.source == "file":
            path = Path(spec.name)
            if path.is_dir():
                return datasets.load_dataset(str(path))
            kind = FILE_TYPES[path.suffix.lower()]
            return datasets.load_dataset(kind, data_files={"train": str(path)})
        if settings.hosted() and Path(spec.name).expanduser().exists():  # the trainer's folder differs from the app's
            raise DataError(f"dataset {spec.label}: local paths are turned off on this server")
        return datasets.load_dataset(spec.name, spec.subset)
    except DataError:
        raise
    except Exception as exc:  # datasets raises many kinds; the user needs the message, not the type
        raise DataError(f"could not load dataset {spec.label}: {type(exc).__name__}: {exc}") from None


def load(spec: DatasetSpec):
    """The training split: the one asked for, else `train`, else the only split there is."""
    splits = _load_dict(spec)
    names = list(splits.keys())
    if spec.split:
        if spec.split not in splits:
            raise DataError(f"dataset {spec.label} has no split {spec.split!r}; splits: {', '.join(names)}")
        return splits[spec.split]
    if "train" in splits:
        return splits["train"]
    if len(names) == 1:
        return splits[names[0]]
    raise DataError(f"dataset {spec.label} has no `train` split; choose one of: {', '.join(names)}")


# --- templates -------------------------------------------------------------------------

def template_fields(template: str, label: str = "template") -> set[str]:
    """The fields a template reads, without running it; DataError naming the template when it is too long,
    does not parse, or uses a name the sandbox blocks."""
    try:
        return templating.fields(template)
    except templating.TemplateProblem as exc:
        raise DataError(f"{label} {exc}") from None


def render(template: str, row: dict[str, Any], label: str = "template") -> str:
    """One row through a template in this process, within templating's bounds (the trainers: their own
    process). The web process renders through Templates.rendered."""
    try:
        return templating.render(template, row)
    except templating.TemplateProblem as exc:
        raise DataError(f"{label}: {exc}") from None


def is_conversational(columns: list[str]) -> bool:
    return "messages" in columns


@dataclass(frozen=True)
class Templates:
    """`template` renders the prompt (or the whole text); `completion_template`, when set,
    renders the answer, giving TRL a prompt/completion dataset (loss on the completion only)."""

    template: str = ""
    completion_template: str = ""

    def _named(self) -> list[tuple[str, str]]:
        named = [("data template", self.template)]
        return named + [("completion template", self.completion_template)] if self.completion_template.strip() \
            else named

    def check(self, columns: list[str]) -> None:
        if not self.template.strip():
            if is_conversational(columns):
                return
            raise DataError(
                "a data template is needed for non-conversational data, e.g. "
                f"`{{{{{columns[0] if columns else 'text'}}}}}`; columns: {', '.join(columns)}"
            )
        for name, text in (("data template", self.template), ("completion template", self.completion_template)):
            missing = sorted(template_fields(text, name) - set(columns))
            if missing:
                raise DataError(
                    f"{name} uses {', '.join(f'`{m}`' for m in missing)}, which the dataset does not have; "
                    f"columns: {', '.join(columns)}"
                )

    def format_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """One row as TRL gets it, rendered in this process (the trainers)."""
        if not self.template.strip():
            return {"messages": row["messages"]}
        texts = [render(text, row, name) for name, text in self._named()]
        return {"prompt": texts[0], "completion": texts[1]} if len(texts) == 2 else {"text": texts[0]}

    def rendered(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """format_row for a few rows, in a render worker under a hard deadline: what the web process uses
        (previews, the check at Start), so no template can stall it. DataError naming the template and row."""
        if not self.template.strip():
            return [{"messages": r["messages"]} for r in rows]
        from . import render_worker

        try:
            out = render_worker.run("render_batch", self._named(), [dict(r) for r in rows])
        except templating.TemplateProblem as exc:
            raise DataError(str(exc)) from None  # it names the template and row, or says why the worker stopped
        return [{"prompt": t[0], "completion": t[1]} if len(t) == 2 else {"text": t[0]} for t in out]


def templates_for(spec: DatasetSpec, template: Any, completion_template: Any) -> Templates:
    """Templates given by the user, or the sample's own where none is given (a completion template given alone
    goes with the sample's template)."""
    for name, value in (("template", template), ("completion_template", completion_template)):
        if value is not None and not isinstance(value, str):
            raise DataError(f"`{name}` must be text (a Jinja template such as `{{{{output}}}}`), "
                            f"got {type(value).__name__} {inputs.short(value)}")
    if template is None and spec.source == "sample":
        sample = SAMPLES[spec.name]
        completion = sample.get("completion_template", "") if completion_template is None else completion_template
        return Templates(sample.get("template", ""), completion)
    return Templates(template or "", completion_template or "")


def formatted(dataset, templates: Templates):
    """The dataset in TRL's format: `text`, `prompt`/`completion`, or `messages`."""
    templates.check(list(dataset.column_names))
    return dataset.map(templates.format_row, remove_columns=dataset.column_names)


def grpo_formatted(dataset, templates: Templates, system_prompt: str):
    """GRPO's format: a chat `prompt` (system + the rendered input) and the reference `answer`
    (the text after `####` in GSM8K-style answers)."""
    from .rewards import reference_answer

    columns = list(dataset.column_names)
    if not templates.template.strip() or not templates.completion_template.strip():
        raise DataError("GRPO needs an input template (e.g. `{{question}}`) and an answer template "
                        f"(e.g. `{{{{answer}}}}`); columns: {', '.join(columns)}")
    templates.check(columns)

    def row(example):
        messages = [{"role": "user", "content": render(templates.template, example, "input template")}]
        if system_prompt.strip():
            messages.insert(0, {"role": "system", "content": system_prompt})
        return {"prompt": messages,
                "answer": reference_answer(render(templates.completion_template, example, "answer template"))}

    return dataset.map(row, remove_columns=columns)


def _sample_rows(name: str) -> list[dict[str, Any]]:
    """A bundled sample's rows, read as the JSON lines they are."""
    path = settings.SAMPLES_DIR / SAMPLES[name]["file"]
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


CHECKED_ROWS = 3  # the rows the check at Start renders


def check(spec: DatasetSpec, templates: Templates) -> dict[str, Any]:
    """Load, check the templates against the columns, and describe the data; raise DataError.

    A bundled sample (the default dataset) is read directly: importing `datasets` in the web
    process costs over a second on a 2-core machine, which the first job after a start would wait."""
    if spec.source == "sample" and spec.split in (None, "train"):
        rows = _sample_rows(spec.name)
        count, columns = len(rows), list(dict.fromkeys(key for row in rows for key in row))
        first = rows[:CHECKED_ROWS]
    else:
        dataset = load(spec)
        count, columns = len(dataset), list(dataset.column_names)
        first = [dict(r) for r in dataset.select(range(min(CHECKED_ROWS, count)))]
    if count == 0:
        raise DataError(f"dataset {spec.label} is empty")
    templates.check(columns)
    templates.rendered(first)  # a template that fails on the data (or is too slow) is refused before a job runs
    return {"rows": count, "columns": columns, "conversational": not templates.template.strip()}


def preview(spec: DatasetSpec, templates: Templates | None = None, rows: int = 3) -> dict[str, Any]:
    """The first rows as they are and, given templates, as the trainer will see them."""
    dataset = load(spec)
    head = [dict(r) for r in dataset.select(range(min(rows, len(dataset))))]
    out: dict[str, Any] = {"columns": list(dataset.column_names), "num_rows": len(dataset), "rows": head}
    if templates is not None:
        templates.check(out["columns"])
        out["rendered"] = templates.rendered(head)
    return out
