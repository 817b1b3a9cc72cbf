"""Datasets and data templates.

A dataset is a bundled sample, a local file (JSON, JSONL, CSV, Parquet) or a Hub
id, all loaded through `datasets`. Conversational data (a `messages` column) is
left to the tokenizer's chat template; ShareGPT turns and chat messages under another
column name become a `messages` column when loaded (the spec's `messages_from`, which
`resolve` sets from the format data_formats finds when no templates are given); anything else is rendered through data
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

from . import data_formats, inputs, settings, templating

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
    messages_from: str | None = None  # a column of ShareGPT turns or chat messages loaded as `messages`

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if out["messages_from"] is None:  # only where conversations are converted: a plain spec keeps its shape
            del out["messages_from"]
        return out

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
        unknown = set(value) - {"source", "name", "subset", "split", "messages_from"}
        if unknown:
            raise DataError(f"dataset: unknown keys {sorted(unknown)} (expected source, name, subset, split)")
        source = value.get("source")
        if source not in ("sample", "file", "hub"):
            raise DataError(f"dataset source {source!r}: must be 'sample', 'file' or 'hub'")
        if not value.get("name"):
            raise DataError("dataset: `name` is required (sample name, file path or Hub id)")
        spec = DatasetSpec(source, _text("dataset.name", value["name"]),
                           _text("dataset.subset", value.get("subset"), True),
                           _text("dataset.split", value.get("split"), True),
                           _text("dataset.messages_from", value.get("messages_from"), True))
    elif isinstance(value, str):
        text = _text("dataset", value)
        if text in SAMPLES:
            spec = DatasetSpec("sample", text)
        elif _exists("dataset", text):
            spec = DatasetSpec("file", text)
        elif _looks_like_path(text):
            raise DataError(not_found(text))
        else:
            spec = DatasetSpec("hub", text)
    else:
        raise DataError(f"`dataset` must be a sample name, a file path, a Hub id or an object with source, name, "
                        f"subset, split; got {type(value).__name__} {inputs.short(value)}")
    if spec.source == "sample" and spec.name not in SAMPLES:
        raise DataError(f"no bundled sample {spec.name!r}; samples: {', '.join(SAMPLES)}")
    if spec.source == "file":
        if not _exists("dataset.name", spec.name):
            raise DataError(not_found(spec.name))
        path = Path(spec.name).expanduser().resolve()
        if path.is_file() and path.suffix.lower() not in FILE_TYPES:
            raise DataError(f"dataset file {path.name!r}: use JSON, JSONL, CSV or Parquet")
        spec = DatasetSpec("file", str(path), spec.subset, spec.split, spec.messages_from)
    return spec


def not_found(path: str) -> str:
    return f"dataset: file not found: {path} (it does not exist on this machine)"


def _looks_like_path(text: str) -> bool:
    """A name that can only be a local path (absolute, ./ ../ ~, or a data file's suffix), never a Hub id: one
    that is missing is "file not found", not a failed Hub download."""
    return (text.startswith(("/", "./", "../", "~", "\\")) or Path(text).suffix.lower() in FILE_TYPES
            or (len(text) > 2 and text[1] == ":" and text[2] in "/\\"))


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
            try:
                return datasets.load_dataset(kind, data_files={"train": str(path)})
            except Exception:
                if kind == "json":
                    _json_problem(path)  # the line that does not parse, by its number
                raise
        if settings.hosted() and Path(spec.name).expanduser().exists():  # the trainer's folder differs from the app's
            raise DataError(f"dataset {spec.label}: local paths are turned off on this server")
        return datasets.load_dataset(spec.name, spec.subset)
    except DataError:
        raise
    except Exception as exc:  # datasets raises many kinds; the user needs the message, not the type
        raise DataError(f"could not load dataset {spec.label}: {type(exc).__name__}: {exc}") from None


def load(spec: DatasetSpec):
    """The training split: the one asked for, else `train`, else the only split there is; with the spec's
    `messages_from`, that column's conversations as a `messages` column."""
    return _as_messages(_split(spec), spec)


def _as_messages(dataset, spec: DatasetSpec):
    column = spec.messages_from
    if not column:
        return dataset
    if column not in dataset.column_names:
        raise DataError(f"dataset {spec.label} has no column {column!r} of conversations; columns: "
                        f"{', '.join(dataset.column_names)}")
    fmt_id = _turns_format(dataset[column][:20])
    drop = [c for c in ("messages", column) if c in dataset.column_names]
    return dataset.map(lambda row: {"converted": _messages(row[column], fmt_id, column)},
                       remove_columns=drop).rename_column("converted", "messages")


def _turns_format(values: list) -> str:
    """ShareGPT (from/value) or chat messages (role/content), from the first conversations' first turns."""
    for turns in values:
        if isinstance(turns, list) and turns and isinstance(turns[0], dict):
            return "sharegpt" if "from" in turns[0] and "value" in turns[0] else "messages"
    return "messages"


def _messages(turns: Any, fmt_id: str, column: str, where: str | None = None) -> list[dict[str, Any]]:
    try:
        return data_formats.to_messages(turns, fmt_id, where or f"column {column!r}")
    except data_formats.FormatError as exc:
        raise DataError(f"dataset: {exc}") from None


def _split(spec: DatasetSpec):
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
HEAD_ROWS = 1000  # the rows the check reads and checks: a file's head, never the whole of a large file
COUNT_BYTES = 64 * 2**20  # a JSONL or CSV file up to this size has its rows counted (else the count is None)
FORMAT_ROWS = 20  # the rows a format is detected from


@dataclass
class Head:
    """A dataset's first rows (each with every column, None where a row lacks one, as `datasets` loads them),
    its columns, and its row count where it is known without reading the whole data (None: not counted)."""

    rows: list[dict[str, Any]]
    columns: list[str]
    total: int | None


def _rows_head(rows: list[dict[str, Any]], total: int | None) -> Head:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    return Head([{c: r.get(c) for c in columns} for r in rows], columns, total)


def _json_head(path: Path, limit: int | None) -> list[dict[str, Any]] | None:
    """The first `limit` rows of a JSON Lines file (None: all of them, only to find a bad line), or None when
    the file is one JSON document (an array) rather than lines. DataError naming the line that is no JSON
    object."""
    rows: list[dict[str, Any]] = []
    with path.open("r", encoding="utf-8-sig", errors="replace") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            if not rows and (line.lstrip().startswith("[") or line.strip() == "{"):
                return None  # a JSON array, or a pretty-printed document
            try:
                row = json.loads(line.strip())
            except json.JSONDecodeError as exc:
                if not rows and line.lstrip().startswith("{") and not line.rstrip().endswith("}"):
                    return None  # a pretty-printed JSON document, not lines
                raise DataError(f"dataset: line {number} of {path.name} is not valid JSON: {exc.msg} (column "
                                f"{exc.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"dataset: line {number} of {path.name} is a JSON {type(row).__name__}, not an "
                                "object of columns")
            rows.append(row)
            if limit is not None and len(rows) >= limit:
                break
    return rows


def _json_problem(path: Path) -> None:
    """Where a JSON or JSON Lines file `datasets` could not load fails to parse: DataError naming the line."""
    if _json_head(path, None) is not None or path.stat().st_size > COUNT_BYTES:
        return  # every line is a JSON object (the problem is elsewhere), or too large to read whole
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if len(lines) > 1 and lines[0][1].startswith("{") and lines[1][1].startswith("{"):  # JSON Lines: line 1
        try:
            json.loads(lines[0][1])
        except json.JSONDecodeError as exc:
            raise DataError(f"dataset: line {lines[0][0]} of {path.name} is not valid JSON: {exc.msg} (column "
                            f"{exc.colno})") from None
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"dataset: line {exc.lineno} of {path.name} is not valid JSON: {exc.msg} (column "
                        f"{exc.colno})") from None


def _count_lines(path: Path) -> int | None:
    if path.stat().st_size > COUNT_BYTES:
        return None
    with path.open("rb") as fh:
        return sum(1 for line in fh if line.strip())


def read_head(spec: DatasetSpec, limit: int = HEAD_ROWS, cheap_only: bool = False) -> Head | None:
    """The dataset's first `limit` rows: a bundled sample, a JSONL, CSV or Parquet file read from its start
    (fast on a file of any size); a JSON array, a folder or a Hub dataset through `datasets` (None instead with
    `cheap_only`). With `messages_from`, that column comes as `messages`, each row's turns checked."""
    path = Path(spec.name)
    head = None
    if spec.source == "sample" and spec.split in (None, "train"):
        rows = _sample_rows(spec.name)
        head = _rows_head(rows[:limit], len(rows))
    elif spec.source == "file" and path.is_file() and spec.split in (None, "train"):
        kind, suffix = FILE_TYPES.get(path.suffix.lower()), path.suffix.lower()
        try:
            if kind == "json":
                rows = _json_head(path, limit)
                if rows is not None:
                    head = _rows_head(rows, len(rows) if len(rows) < limit else _count_lines(path))
            elif kind == "csv":
                import csv
                import itertools

                with path.open("r", encoding="utf-8-sig", newline="") as fh:
                    reader = csv.DictReader(fh)
                    rows = [dict(r) for r in itertools.islice(reader, limit)]
                    total = None  # counted where the file is small enough (quoted newlines: rows are not lines)
                    if len(rows) < limit or path.stat().st_size <= COUNT_BYTES:
                        total = len(rows) + sum(1 for _ in reader)
                head = _rows_head(rows, total)
            elif suffix == ".parquet":
                import pyarrow.parquet as pq

                table = pq.ParquetFile(path)
                batch = next(table.iter_batches(batch_size=limit), None)
                head = _rows_head(batch.to_pylist() if batch is not None else [], table.metadata.num_rows)
                if batch is not None:
                    head.columns = list(batch.schema.names)
        except DataError:
            raise
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise DataError(f"dataset: {path.name} cannot be read: {type(exc).__name__}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - pyarrow's errors: a broken Parquet file
            raise DataError(f"dataset: {path.name} cannot be read: {type(exc).__name__}: {exc}") from None
    if head is None:
        if cheap_only:
            return None
        dataset = _split(spec)
        head = Head([dict(r) for r in dataset.select(range(min(limit, len(dataset))))], list(dataset.column_names),
                    len(dataset))
    if spec.messages_from:
        head = _head_as_messages(head, spec)
    return head


def _head_as_messages(head: Head, spec: DatasetSpec) -> Head:
    column = spec.messages_from
    if column not in head.columns:
        raise DataError(f"dataset {spec.label} has no column {column!r} of conversations; columns: "
                        f"{', '.join(head.columns)}")
    fmt_id = _turns_format([r[column] for r in head.rows[:20]])
    rows = []
    for i, row in enumerate(head.rows):
        row = {k: v for k, v in row.items() if k not in (column, "messages")}
        row["messages"] = _messages(head.rows[i][column], fmt_id, column, f"row {i + 1}")
        rows.append(row)
    columns = [c for c in head.columns if c not in (column, "messages")] + ["messages"]
    return Head(rows, columns, head.total)


def check(spec: DatasetSpec, templates: Templates, head: Head | None = None) -> dict[str, Any]:
    """Check the templates against the dataset's head (read here unless given) and describe the data; raise
    DataError. Only the head is read (HEAD_ROWS): `rows_checked` says how many rows that was, `rows` is the
    count where it is known without reading everything (else None).

    A bundled sample (the default dataset) and a JSONL, CSV or Parquet file are read directly: importing
    `datasets` in the web process costs over a second on a 2-core machine, which the first job after a start
    would wait."""
    head = head or read_head(spec)
    if not head.rows:
        raise DataError(f"dataset {spec.label} is empty")
    templates.check(head.columns)
    if not templates.template.strip():  # conversations: every row checked has chat messages
        for i, row in enumerate(head.rows):
            _messages(row.get("messages"), "messages", "messages", f"row {i + 1}")
    shown = templates.rendered(head.rows[:CHECKED_ROWS])  # a template that fails on the data (or is too slow) is refused
    return {"rows": head.total, "rows_checked": len(head.rows), "columns": head.columns,
            "conversational": not templates.template.strip(), "example_chars": _mean_chars(shown)}


def _mean_chars(examples: list[dict[str, Any]]) -> float | None:
    """The rendered examples' mean length in characters (for the time-per-step estimate: rows are seldom as
    long as max_length)."""
    def chars(ex):
        if "messages" in ex:
            return sum(len(str(m.get("content", ""))) for m in ex["messages"] if isinstance(m, dict))
        return sum(len(v) for v in ex.values() if isinstance(v, str))
    return sum(map(chars, examples)) / len(examples) if examples else None


@dataclass
class Resolved:
    """What a request's dataset and templates come to: the spec (with `messages_from` where conversations are
    converted), the templates, the format found (None: none fits, or the head was not read), and the head."""

    spec: DatasetSpec
    templates: Templates
    format: data_formats.Format | None
    head: Head | None
    own: bool  # the templates are the user's (or the bundled sample's own), not the format's


_FILLED = {t: data_formats.filled_templates(t) for t in ("sft", "grpo")}


def _own_templates(spec: DatasetSpec, template: str | None, completion: str | None,
                   train_type: str = "sft") -> Templates | None:
    """The templates the user gave, or None where they gave none: both empty, or a bundled sample's defaults sent
    with another dataset (the form keeps them in its boxes). A sample named with no templates brings its own."""
    if template is None and spec.source == "sample":
        return templates_for(spec, template, completion)
    if not (template or "").strip() and not (completion or "").strip():
        return None
    pair = (template or "", completion or "")
    if spec.source == "sample" and pair == (SAMPLES.get(spec.name, {}).get("template"),
                                            SAMPLES.get(spec.name, {}).get("completion_template")):
        return Templates(*pair)  # the sample's own
    if pair in _FILLED["grpo" if train_type == "grpo" else "sft"]:  # a format's, filled into the form's boxes for the data shown before (previews)
        return None
    for name, sample in SAMPLES.items():
        if pair == (sample["template"], sample["completion_template"]) and \
                not (spec.source == "sample" and spec.name == name):
            return None
    return Templates(template or "", completion or "")


def resolve(spec: DatasetSpec, template: Any = None, completion_template: Any = None, train_type: str = "sft",
            data_format: Any = None, read: bool = True) -> Resolved:
    """The templates a job uses: the user's own always; else the ones of the format found from the data's head
    (data_formats.detect, or the `data_format` named), conversations converted to `messages`. `read=False` reads
    only what is cheap (a sample, a file's head: not a Hub dataset). DataError naming the problem."""
    templates_for(spec, template, completion_template)  # the types, checked
    if data_format is not None and not isinstance(data_format, str):
        raise DataError(f"`data_format` must be text ({', '.join(data_formats.IDS)}), got "
                        f"{type(data_format).__name__} {inputs.short(data_format)}")
    own = _own_templates(spec, template, completion_template, train_type)
    head = read_head(spec, cheap_only=not read)
    if head is None:
        return Resolved(spec, own or Templates(), None, None, own is not None)
    try:
        fmt = data_formats.detect(head.columns, head.rows[:FORMAT_ROWS], (data_format or "").strip() or None)
    except data_formats.FormatError as exc:
        raise DataError(str(exc)) from None
    if own is not None:
        return Resolved(spec, own, fmt, head, True)
    if fmt is None:
        return Resolved(spec, Templates(), None, head, False)  # the check says a template is needed, and why
    if train_type == "grpo" and fmt.grpo is None:
        raise DataError(f"GRPO needs an input template (the question) and an answer template; the dataset "
                        f"{fmt.description}, which has no question and answer to take them from; columns: "
                        f"{', '.join(head.columns)}")
    if fmt.messages_from and train_type != "grpo":
        from dataclasses import replace

        spec = replace(spec, messages_from=fmt.messages_from)
        head = _head_as_messages(head, spec)
    return Resolved(spec, Templates(*fmt.templates(train_type)), fmt, head, False)


def preview(spec: DatasetSpec, templates: Templates | None = None, rows: int = 3) -> dict[str, Any]:
    """The first rows as they are and, given templates, as the trainer will see them. Only the head is read
    (read_head): `num_rows` is None for a file too large to count."""
    found = read_head(spec, rows)
    head = found.rows
    out: dict[str, Any] = {"columns": found.columns, "num_rows": found.total, "rows": head}
    if templates is not None:
        templates.check(out["columns"])
        out["rendered"] = templates.rendered(head)
    return out
