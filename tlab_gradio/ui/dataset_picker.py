"""The form's Dataset and Data Template sections: where the rows come from (a bundled sample, an upload, a
local path, the Hub), the templates that turn a row into text, and how the two read for the plugin picked.
dataset_value and dataset_fields convert between these fields and a request's dataset."""
from __future__ import annotations

from typing import Any

import gradio as gr

from .. import data, settings
from ..service import RequestError, Service
from .common import PRIVATE

SOURCES = ["Bundled sample", "Upload", "Local path", "Hugging Face Hub"]  # the values; shown shorter (LABELS)
LABELS = {"Bundled sample": "Sample", "Upload": "Upload", "Local path": "Local path", "Hugging Face Hub": "Hub"}
DATASET_FIELDS = ("source", "sample", "upload", "path", "hub", "subset", "split")  # names as in form_request
TEMPLATE_FIELDS = ("template", "completion_template")
FORMAT_AUTO = "auto"
# The request's data_format (data_formats.IDS); a conversation format may name its column, typed: messages:chat
FORMATS = [("auto: found from the columns", FORMAT_AUTO), ("Alpaca", "alpaca"), ("ShareGPT", "sharegpt"),
           ("OpenAI messages", "messages"), ("prompt / completion", "prompt_completion"),
           ("question / answer (GSM8K)", "question_answer"), ("plain text", "text")]
SFT_LABELS = ({"label": "Data template (the prompt, or the whole text)",
               "info": "{{column}} placeholders; empty for chat data with a `messages` column"},
              {"label": "Completion template (optional)", "info": "With it, the loss covers only the completion"})
GRPO_LABELS = ({"label": "Input template (the question)", "info": "{{column}} placeholders, e.g. {{question}}"},
               {"label": "Answer template (the reference)",
                "info": "e.g. {{answer}}; GSM8K answers: the reference is the text after ####"})


def build(hosted: bool) -> dict[str, Any]:
    """Both sections, inside the form; the components by name (DATASET_FIELDS, TEMPLATE_FIELDS, and the
    preview's: info, table, preview_btn, rendered)."""
    sample0 = data.SAMPLES[data.DEFAULT_SFT_SAMPLE]
    with gr.Group(elem_id="dataset-section"):
        sources = [s for s in SOURCES if not (hosted and s == "Local path")]
        with gr.Row(equal_height=True):
            parts: dict[str, Any] = {"source": gr.Radio([(LABELS[x], x) for x in sources], value="Bundled sample",
                                                        label="Dataset", elem_id="ds-source", scale=3)}
            parts["data_format"] = gr.Dropdown(
                choices=FORMATS, value=FORMAT_AUTO, label="Format", allow_custom_value=True, elem_id="ds-format",
                scale=1, min_width=190)  # typed: messages:<column> for a conversation column of another name
        with gr.Row(equal_height=True):
            parts["sample"] = gr.Dropdown(choices=[(f"{k}: {v['description']}", k) for k, v in data.SAMPLES.items()],
                                          value=data.DEFAULT_SFT_SAMPLE, label="Bundled sample", elem_id="ds-sample",
                                          scale=3)
            parts["upload"] = gr.File(label="Upload JSON / JSONL / CSV / Parquet", type="filepath", visible=False,
                                      file_types=[".json", ".jsonl", ".csv", ".parquet"], elem_id="ds-upload",
                                      height=110, scale=3)
            parts["path"] = gr.Textbox(label="Local file or folder", visible=False, elem_id="ds-path", scale=3)
            parts["hub"] = gr.Textbox(label="Hub dataset id", placeholder="org/name", visible=False, elem_id="ds-hub",
                                      scale=2)
            parts["subset"] = gr.Textbox(label="Subset (config)", visible=False, elem_id="ds-subset", scale=1)
            parts["split"] = gr.Textbox(label="Split", placeholder="train, or the only split", visible=False,
                                        elem_id="ds-split", scale=1)
        parts["info"] = gr.Markdown(elem_id="ds-info")  # rows, columns, the format found (previews.data_preview)
    # The templates and the first rows, one click away: a detected format fills the templates, and a problem with
    # them opens this section (live.MARK_JS) with the message at the box.
    with gr.Accordion("Data template and first rows", open=False, elem_id="data-template"):
        parts["table"] = gr.HTML(elem_id="ds-table")  # the first rows (previews.data_preview)
        with gr.Row():
            parts["template"] = gr.Textbox(lines=4, value=sample0["template"], elem_id="template", **SFT_LABELS[0])
            parts["completion_template"] = gr.Textbox(lines=4, value=sample0["completion_template"],
                                                      elem_id="completion-template", **SFT_LABELS[1])
        parts["preview_btn"] = gr.Button("Preview data and template", size="sm", elem_id="preview-data")
        parts["rendered"] = gr.Code(label="First rendered examples", language="markdown", interactive=False,
                                    elem_id="rendered", max_lines=16)
    return parts


def wire(svc: Service, parts: dict[str, Any], plugin_dd: gr.Dropdown) -> None:
    """The sections' own listeners: the source shows its fields, a plugin brings its template labels (a sample
    picked brings its templates: train_tab, which checks and previews them then)."""
    parts["source"].change(show_source, parts["source"], [parts[n] for n in DATASET_FIELDS[1:]], **PRIVATE)
    templates = [parts[n] for n in TEMPLATE_FIELDS]
    plugin_dd.change(lambda plugin_id: tuple(gr.update(**x) for x in template_labels(svc, plugin_id)), plugin_dd,
                     templates, **PRIVATE)


def show_source(src: str) -> list[dict]:
    """Visibility of sample, upload, path, hub, subset, split for the chosen source."""
    return [gr.update(visible=src == "Bundled sample"), gr.update(visible=src == "Upload"),
            gr.update(visible=src == "Local path")] + [gr.update(visible=src == "Hugging Face Hub")] * 3


def sample_templates(name: str) -> tuple[str, str]:
    s = data.SAMPLES.get(name) or {}
    return s.get("template", ""), s.get("completion_template", "")


def _form(svc: Service, plugin_id: str | None) -> dict[str, Any] | None:
    try:
        return svc.plugin_form(plugin_id) if plugin_id else None
    except RequestError:  # unknown, or broken since the page loaded
        return None


def template_labels(svc: Service, plugin_id: str | None) -> tuple[dict, dict]:
    """GRPO maps an input and a reference answer; SFT a prompt (or whole text) and a completion."""
    form = _form(svc, plugin_id)
    return GRPO_LABELS if form and form["train_type"] == "grpo" else SFT_LABELS


def plugin_defaults(svc: Service, plugin_id: str | None) -> tuple:
    """A newly picked plugin starts on its own sample data and templates (labels included, so this update
    and the relabelling agree whichever lands last): source, sample, template, completion_template."""
    form = _form(svc, plugin_id)
    name = form.get("sample_dataset") if form else None
    if not name:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    template, completion = sample_templates(name)
    first_label, second_label = template_labels(svc, plugin_id)
    return ("Bundled sample", name, gr.update(value=template, **first_label),
            gr.update(value=completion, **second_label))


def dataset_value(svc: Service, fields: dict[str, Any], owner: str | None = None) -> Any:
    """The request's dataset from the DATASET_FIELDS values; an upload is kept in the workspace first (hosted:
    in `owner`'s folder)."""
    source = fields["source"]
    if source == "Upload":
        if not fields["upload"]:
            raise RequestError(["dataset: choose a JSON, JSONL, CSV or Parquet file to upload"])
        return {"source": "file", "name": svc.save_upload(fields["upload"], owner)}
    if source == "Local path":
        if not (fields["path"] or "").strip():
            raise RequestError(["dataset: give the path of a local file or folder"])
        return {"source": "file", "name": fields["path"].strip()}
    if source == "Hugging Face Hub":
        if not (fields["hub"] or "").strip():
            raise RequestError(["dataset: give a Hub dataset id, like org/name"])
        return {"source": "hub", "name": fields["hub"].strip(), "subset": (fields["subset"] or "").strip() or None,
                "split": (fields["split"] or "").strip() or None}
    return {"source": "sample", "name": fields["sample"] or data.DEFAULT_SFT_SAMPLE}


def format_value(value: Any) -> str | None:
    """The request's data_format from the Format field: None for auto (the format found from the columns)."""
    text = (value or "").strip()
    return None if text in ("", FORMAT_AUTO) else text


def dataset_fields(dataset: Any) -> dict[str, Any]:
    """The other way: a request's dataset as the DATASET_FIELDS values (no upload: a stored upload shows as
    its local path, or, in hosted mode, asks for the file again)."""
    ds = dataset or {"source": "sample", "name": data.DEFAULT_SFT_SAMPLE}
    if isinstance(ds, str):
        ds = data.parse_spec(ds).as_dict()
    source = {"sample": "Bundled sample", "file": "Local path", "hub": "Hugging Face Hub"}[ds["source"]]
    if source == "Local path" and settings.hosted():
        source = "Upload"
    return {"source": source, "sample": ds["name"] if ds["source"] == "sample" else data.DEFAULT_SFT_SAMPLE,
            "upload": None, "path": ds["name"] if ds["source"] == "file" and source == "Local path" else "",
            "hub": ds["name"] if ds["source"] == "hub" else "", "subset": ds.get("subset") or "",
            "split": ds.get("split") or ""}
