"""Train tab: `+ New` task form (Name, Dataset, Data Template, Plugin Config), presets, the
jobs list. The form's Plugin Config section is built from the selected manifest with
gr.render, so switching plugin rebuilds it."""
from __future__ import annotations

import hashlib
import html
import re
import shutil
from pathlib import Path
from typing import Any

import gradio as gr

from .. import data, settings
from ..service import RequestError, Service
from . import jobs_view
from .common import PRIVATE, problems_md

SOURCES = ["Bundled sample", "Upload", "Local path", "Hugging Face Hub"]
STATIC_FIELDS = ("plugin", "name", "model", "source", "sample", "upload", "path", "hub", "subset", "split",
                 "template", "completion_template", "custom_rewards")
REWARD_HEADERS = ["Use", "Function (file.py:function)", "Weight"]


_SAVED: dict[tuple, str] = {}


def save_upload(path: str) -> str:
    """Copy an upload into the workspace: gradio's cache may be cleaned, and a resumed job needs it.
    Remembered by (path, size, mtime), so the live checks do not hash the file on every keystroke."""
    src = Path(path)
    stat = src.stat()
    memo = (str(src), stat.st_size, stat.st_mtime_ns)
    if memo in _SAVED:
        return _SAVED[memo]
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:12]
    dest = settings.uploads_dir() / digest / src.name
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
    _SAVED[memo] = str(dest)
    return str(dest)


def dataset_value(source, sample, upload, path, hub, subset, split) -> Any:
    if source == "Upload":
        if not upload:
            raise RequestError(["dataset: choose a JSON, JSONL, CSV or Parquet file to upload"])
        return {"source": "file", "name": save_upload(upload)}
    if source == "Local path":
        if not (path or "").strip():
            raise RequestError(["dataset: give the path of a local file or folder"])
        return {"source": "file", "name": path.strip()}
    if source == "Hugging Face Hub":
        if not (hub or "").strip():
            raise RequestError(["dataset: give a Hub dataset id, like org/name"])
        return {"source": "hub", "name": hub.strip(), "subset": (subset or "").strip() or None,
                "split": (split or "").strip() or None}
    return {"source": "sample", "name": sample or data.DEFAULT_SFT_SAMPLE}


def build_request(static: dict[str, Any], names: list[str], values: list[Any]) -> dict[str, Any]:
    request = {
        "plugin": static["plugin"],
        "name": (static["name"] or "").strip(),
        "model": (static["model"] or "").strip(),
        "dataset": dataset_value(static["source"], static["sample"], static["upload"], static["path"],
                                 static["hub"], static["subset"], static["split"]),
        "template": static["template"] or "",
        "completion_template": static["completion_template"] or "",
        "params": dict(zip(names, values)),
    }
    if static.get("custom_rewards"):  # GRPO's own reward functions, from their table
        request["params"]["custom_rewards"] = static["custom_rewards"]
    return request


def form_from_request(request: dict[str, Any], version: int) -> list[Any]:
    """Values for the static fields and the config seed, from a preset or a past job's request."""
    ds = request.get("dataset") or {"source": "sample", "name": data.DEFAULT_SFT_SAMPLE}
    if isinstance(ds, str):
        ds = data.parse_spec(ds).as_dict()
    source = {"sample": "Bundled sample", "file": "Local path", "hub": "Hugging Face Hub"}[ds["source"]]
    if source == "Local path" and settings.hosted():
        source = "Upload"
    params = dict(request.get("params") or {})
    for key in ("device", "gpu_ids", "cpu_processes"):
        if request.get(key) is not None:
            params[key] = request[key]
    template = request.get("template")
    completion = request.get("completion_template")
    if template is None and ds["source"] == "sample":
        sample = data.SAMPLES[ds["name"]]
        template, completion = sample.get("template", ""), sample.get("completion_template", "")
    return [
        request.get("plugin"), request.get("name") or "", request.get("model") or "",
        source,
        ds["name"] if ds["source"] == "sample" else data.DEFAULT_SFT_SAMPLE,
        ds["name"] if ds["source"] == "file" and source == "Local path" else "",
        ds["name"] if ds["source"] == "hub" else "", ds.get("subset") or "", ds.get("split") or "",
        template or "", completion or "",
        {"plugin": request.get("plugin"), "values": params, "version": version},
    ]


def param_component(name: str, spec: dict[str, Any], value: Any, key: str):
    """The input for one manifest parameter: checkbox, dropdown, slider, number or text box."""
    kind = spec["type"]
    lo, hi = spec.get("minimum"), spec.get("maximum")
    limits = []
    if lo is not None:
        limits.append(f"min {lo:g}")
    if hi is not None:
        limits.append(f"max {hi:g}")
    if spec.get("multipleOf"):
        limits.append(f"multiple of {spec['multipleOf']:g}")
    info = " · ".join(filter(None, [spec.get("help"), ", ".join(limits)])) or None
    common = {"label": spec["title"], "info": info, "key": key, "elem_id": f"param-{name}", "interactive": True}
    if kind == "boolean":
        return gr.Checkbox(value=bool(value), **common)
    if "enum" in spec:
        return gr.Dropdown(choices=spec["enum"], value=value, allow_custom_value=False, **common)
    if kind in ("integer", "number"):
        step = spec.get("multipleOf") or (1 if kind == "integer" else None)
        if spec.get("widget") == "range" and lo is not None and hi is not None:
            return gr.Slider(minimum=lo, maximum=hi, step=step or 1, value=value, **common)
        # Limits are not handed to gr.Number: its own check would reject a value before ours runs,
        # with a message that does not name the parameter. Ours runs on every change instead.
        extra = {"precision": 0} if kind == "integer" else {}
        if step:
            extra["step"] = step
        return gr.Number(value=value, **extra, **common)
    return gr.Textbox(value="" if value is None else str(value), **common)


DEFAULT_PLUGIN = "llama_sft_multi_gpu"


def trainer_choices(svc: Service) -> tuple[list[tuple[str, str]], str | None]:
    """The Plugin dropdown's choices as the manifests are now, and its default. Built at every page load, so a
    manifest added or fixed while the app runs is offered at the next one; one that fails to load is never
    offered (the Plugins tab lists it with its error). The default: the SFT plugin (the simplest run, what a
    first-time user expects), else SFT before GRPO, ready before not ready, then by name and id."""
    # A plugin this app cannot run (a Transformer Lab manifest without our trainer) is never offered.
    listed = [p for p in svc.plugin_list() if "error" not in p and p["type"] == "trainer" and p["runnable"]]
    listed.sort(key=lambda p: (p["id"] != DEFAULT_PLUGIN, p["origin"] != "app",
                               {"sft": 0, "grpo": 1}.get(p["train_type"], 2),
                               not p["ready"], p["name"], p["id"]))
    names = [p["name"] for p in listed]
    trainers = [(p["name"] if names.count(p["name"]) == 1 else f"{p['name']} ({p['id']})", p["id"]) for p in listed]
    return trainers, (trainers[0][1] if trainers else None)


def _manifest(svc: Service, plugin_id: str | None):
    """The plugin's manifest, or None when it is unknown or fails to load now (changed since the page loaded)."""
    if not plugin_id:
        return None
    try:
        return svc.plugin(plugin_id)
    except RequestError:
        return None


def build(svc: Service, demo: gr.Blocks, hosted: bool) -> None:
    trainers, first = trainer_choices(svc)  # read again at every page load (below)
    sample0 = data.SAMPLES[data.DEFAULT_SFT_SAMPLE]

    refs: dict[str, Any] = {}  # what the Plugin Config section's own fields report to when they change
    seed = gr.State({"plugin": first, "values": {}, "version": 0})  # a preset's or a cloned job's values
    values = gr.State({})  # the Plugin Config fields' current values, by parameter name
    custom = gr.State([])  # GRPO: the chosen reward functions of your own, [{function, weight}]
    with gr.Row(elem_classes="tl-toolbar"):
        new_btn = gr.Button("+ New", variant="primary", size="md", scale=0, min_width=110, elem_id="new-task")
        preset_pick = gr.Dropdown(choices=svc.list_presets(), label="Presets", scale=2, elem_id="preset-pick",
                                  value=None, interactive=True)
        load_btn = gr.Button("Load preset", size="md", scale=0, min_width=130, elem_id="load-preset")

    start_msg = gr.Markdown(elem_id="start-msg")  # outside the form: still seen once Start closes it
    with gr.Column(visible=False, elem_id="task-form", elem_classes="tl-card") as form:
        gr.Markdown("## New training task")
        with gr.Group():
            gr.Markdown("### Name", elem_classes="tl-section")
            with gr.Row():
                # No value until the page load reads the plugins again (refresh_plugins): a value kept from
                # app start could name a plugin no longer offered, and be refused in every handler.
                plugin_dd = gr.Dropdown(choices=trainers, value=None, label="Plugin", elem_id="plugin",
                                        info="Only trainer plugins are listed", scale=2)
                name_tb = gr.Textbox(label="Task name", placeholder="e.g. alpaca-lora-run-1", elem_id="task-name",
                                     scale=2)
                model_tb = gr.Textbox(label="Model", elem_id="model", scale=3,
                                      placeholder=("Hub id (empty: the embedded tiny Llama)" if hosted else
                                                   "Hub id, local folder or .gguf file (empty: the tiny Llama, offline)"))
        with gr.Group():
            gr.Markdown("### Dataset", elem_classes="tl-section")
            sources = [s for s in SOURCES if not (hosted and s == "Local path")]
            source = gr.Radio(sources, value="Bundled sample", label="Source", elem_id="ds-source")
            with gr.Row():
                sample = gr.Dropdown(choices=[(f"{k}: {v['description']}", k) for k, v in data.SAMPLES.items()],
                                     value=data.DEFAULT_SFT_SAMPLE, label="Bundled sample", elem_id="ds-sample")
                upload = gr.File(label="Upload JSON / JSONL / CSV / Parquet", type="filepath", visible=False,
                                 file_types=[".json", ".jsonl", ".csv", ".parquet"], elem_id="ds-upload")
                path_tb = gr.Textbox(label="Local file or folder", visible=False, elem_id="ds-path")
                hub_tb = gr.Textbox(label="Hub dataset id", placeholder="org/name", visible=False, elem_id="ds-hub")
                subset_tb = gr.Textbox(label="Subset (config)", visible=False, elem_id="ds-subset")
                split_tb = gr.Textbox(label="Split", placeholder="train, or the only split", visible=False,
                                      elem_id="ds-split")
            ds_info = gr.Markdown(elem_id="ds-info")
            ds_table = gr.Dataframe(visible=False, interactive=False, wrap=True, max_height=260, elem_id="ds-table")
        with gr.Group():
            gr.Markdown("### Data Template", elem_classes="tl-section")
            with gr.Row():
                template_tb = gr.Textbox(label="Data template (the prompt, or the whole text)", lines=6,
                                         value=sample0["template"], elem_id="template",
                                         info="{{column}} placeholders; empty for chat data with a `messages` column")
                completion_tb = gr.Textbox(label="Completion template (optional)", lines=6,
                                           value=sample0["completion_template"], elem_id="completion-template",
                                           info="With it, the loss covers only the completion")
            preview_btn = gr.Button("Preview data and template", size="sm", elem_id="preview-data")
            rendered = gr.Code(label="First rendered examples", language="markdown", interactive=False,
                               elem_id="rendered", max_lines=16)
        with gr.Group():
            gr.Markdown("### Plugin Config", elem_classes="tl-section")
            with gr.Column(elem_id="plugin-config"):
                @gr.render(inputs=[plugin_dd, seed], triggers=[plugin_dd.change, seed.change, demo.load])
                def plugin_config(plugin_id, seed_value):
                    config_section(svc, refs, plugin_id, seed_value)

            checks = gr.Markdown(elem_id="form-checks")
            command = gr.Code(label="Command Start will run (copy it to run the job by hand)", language="shell",
                              interactive=False, elem_id="command-preview", visible=not hosted, max_lines=6)

        with gr.Row():
            preset_name = gr.Textbox(label="Save these settings as a preset", placeholder="preset name",
                                     scale=3, elem_id="preset-name")
            save_btn = gr.Button("Save preset", size="md", scale=1, elem_id="save-preset")
            cancel_btn = gr.Button("Cancel", size="md", scale=1)
            start_btn = gr.Button("Start", variant="primary", size="lg", scale=2, elem_id="start")

    jobs_view_parts = jobs_view.build(svc, demo, hosted)

    static = [plugin_dd, name_tb, model_tb, source, sample, upload, path_tb, hub_tb, subset_tb, split_tb,
              template_tb, completion_tb, custom]
    form_outputs = static[:5] + [path_tb, hub_tb, subset_tb, split_tb, template_tb, completion_tb, seed]

    # --- checks, Start and presets: every listener lives here, none inside the render ------
    def current(fields, vals):
        """The values state, unless it still holds another plugin's fields (a check queued while the
        plugin was being switched): then this plugin's starting values."""
        plugin_id = fields[0]
        manifest = _manifest(svc, plugin_id)
        if manifest and set(vals) != set(manifest.parameters):
            return initial_values(svc, plugin_id, {})
        return vals

    def check(*args):
        *fields, vals = args
        vals = current(fields, vals)
        try:
            preview = svc.launch_preview(build_request(dict(zip(STATIC_FIELDS, fields)), list(vals), list(vals.values())))
        except RequestError as exc:
            return problems_md(exc), gr.skip()
        text = preview["command"]
        return ('<span class="tl-ok">✓ Settings look good.</span> ' + memory_md(preview["memory"]),
                _redact(text, svc) if hosted else text)

    def set_values(plugin_id, seed_value):
        return initial_values(svc, plugin_id, seed_value), seeded_rewards(svc, plugin_id, seed_value)

    def start(*args):
        *fields, vals = args
        vals = current(fields, vals)
        try:
            job = svc.start_job(build_request(dict(zip(STATIC_FIELDS, fields)), list(vals), list(vals.values())))
        except RequestError as exc:
            gr.Warning("The job was not started: " + "; ".join(exc.problems))
            return problems_md(exc), gr.skip(), gr.skip()
        # No state here: this line stays while the job runs and ends; the job view below shows it live.
        return (f"Started job **{job['id']}** ({html.escape(job['name'])}); its progress is below.",
                gr.update(visible=False), job["id"])

    def save(preset, *args):
        *fields, vals = args
        vals = current(fields, vals)
        try:
            presets = svc.save_preset(preset, build_request(dict(zip(STATIC_FIELDS, fields)), list(vals),
                                                            list(vals.values())))
        except RequestError as exc:
            raise gr.Error("; ".join(exc.problems), print_exception=False) from None
        gr.Info(f"Saved preset {preset}")
        return gr.update(choices=presets, value=preset.strip())

    form_inputs = static + [values]
    check_outputs = [checks, command]
    refs.update(values=values, custom=custom, check=check, inputs=form_inputs, outputs=check_outputs)
    gr.on([plugin_dd.change, seed.change, demo.load], set_values, [plugin_dd, seed], [values, custom],
          **PRIVATE).then(
        check, form_inputs, check_outputs, show_progress="hidden", **PRIVATE)
    watched = [model_tb, source, sample, path_tb, hub_tb, template_tb, completion_tb]
    gr.on([c.change for c in watched] + [upload.upload], check, form_inputs, check_outputs,
          show_progress="hidden", **PRIVATE)
    start_btn.click(start, form_inputs, [start_msg, form, jobs_view_parts.selected], **PRIVATE)
    save_btn.click(save, [preset_name] + form_inputs, preset_pick, **PRIVATE)

    # --- dataset source and previews ------------------------------------------------
    def show_source(src):
        return [gr.update(visible=src == "Bundled sample"), gr.update(visible=src == "Upload"),
                gr.update(visible=src == "Local path")] + [gr.update(visible=src == "Hugging Face Hub")] * 3

    source.change(show_source, source, [sample, upload, path_tb, hub_tb, subset_tb, split_tb], **PRIVATE)

    def sample_templates(name):
        s = data.SAMPLES.get(name) or {}
        return s.get("template", ""), s.get("completion_template", "")

    sample.input(sample_templates, sample, [template_tb, completion_tb], **PRIVATE)

    def template_labels(plugin_id) -> tuple[dict, dict]:
        """GRPO maps an input and a reference answer; SFT a prompt (or whole text) and a completion."""
        manifest = _manifest(svc, plugin_id)
        if manifest and manifest.train_type == "grpo":
            return ({"label": "Input template (the question)", "info": "{{column}} placeholders, e.g. {{question}}"},
                    {"label": "Answer template (the reference)",
                     "info": "e.g. {{answer}}; GSM8K answers: the reference is the text after ####"})
        return ({"label": "Data template (the prompt, or the whole text)",
                 "info": "{{column}} placeholders; empty for chat data with a `messages` column"},
                {"label": "Completion template (optional)", "info": "With it, the loss covers only the completion"})

    def relabel(plugin_id):
        first_label, second_label = template_labels(plugin_id)
        return gr.update(**first_label), gr.update(**second_label)

    def plugin_defaults(plugin_id):
        """A newly picked plugin starts on its own sample data and templates (labels included, so
        this update and relabel agree whichever lands last)."""
        manifest = _manifest(svc, plugin_id)
        name = manifest.sample_dataset if manifest else None
        if not name:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        template, completion = sample_templates(name)
        first_label, second_label = template_labels(plugin_id)
        return ("Bundled sample", name, gr.update(value=template, **first_label),
                gr.update(value=completion, **second_label))

    plugin_dd.change(relabel, plugin_dd, [template_tb, completion_tb], **PRIVATE)

    def preview(src, smp, up, path, hub, subset, split, template, completion):
        try:
            out = svc.preview_data(dataset_value(src, smp, up, path, hub, subset, split), template, completion, 5)
        except RequestError as exc:
            return problems_md(exc), gr.update(visible=False), ""
        head = f"**{out['num_rows']} rows** · columns: " + ", ".join(f"`{c}`" for c in out["columns"])
        table = [[_cell(r.get(c)) for c in out["columns"]] for r in out["rows"]]
        if "template_error" in out:
            text = f"✗ {out['template_error']}"
        else:
            text = "\n\n".join(_render_example(i, ex) for i, ex in enumerate(out["rendered"][:3], 1))
        return head, gr.update(value=table, headers=out["columns"], visible=True), text

    preview_inputs = [source, sample, upload, path_tb, hub_tb, subset_tb, split_tb, template_tb, completion_tb]
    preview_btn.click(preview, preview_inputs, [ds_info, ds_table, rendered], **PRIVATE)
    plugin_dd.input(plugin_defaults, plugin_dd, [source, sample, template_tb, completion_tb], **PRIVATE).then(
        preview, preview_inputs, [ds_info, ds_table, rendered], **PRIVATE)

    # --- open / close the form, presets, clone --------------------------------------
    def open_new(current):
        version = current.get("version", 0) + 1
        return [gr.update(visible=True), {"plugin": current.get("plugin") or first, "values": {},
                                          "version": version}, ""]

    new_btn.click(open_new, seed, [form, seed, start_msg], **PRIVATE).then(
        plugin_defaults, plugin_dd, [source, sample, template_tb, completion_tb], **PRIVATE).then(
        preview, preview_inputs, [ds_info, ds_table, rendered], **PRIVATE)
    cancel_btn.click(lambda: gr.update(visible=False), None, form, **PRIVATE)

    def load_preset(name, current):
        if not name:
            raise gr.Error("Choose a preset to load", print_exception=False)
        try:
            request = svc.load_preset(name)
        except RequestError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        return [gr.update(visible=True)] + form_from_request(request, current.get("version", 0) + 1) + [
            f"Loaded preset **{html.escape(name)}**."]

    load_btn.click(load_preset, [preset_pick, seed], [form] + form_outputs + [start_msg], **PRIVATE)
    # The list as it is now, not as it was when the app started (presets saved since, in any tab).
    demo.load(lambda: gr.update(choices=svc.list_presets()), None, preset_pick, **PRIVATE)

    def refresh_plugins():
        """The plugins as the manifests are now, and the default selected: plugin_dd.change builds its config."""
        choices, default = trainer_choices(svc)
        return gr.update(choices=choices, value=default)

    demo.load(refresh_plugins, None, plugin_dd, **PRIVATE)

    def clone(job_id, current):
        if job_id is None:
            raise gr.Error("Select a job to clone", print_exception=False)
        request = svc.clone_request(int(job_id))
        return [gr.update(visible=True)] + form_from_request(request, current.get("version", 0) + 1) + [
            f"Cloned the settings of job {int(job_id)}. Change what you like and press Start."]

    jobs_view_parts.clone_btn.click(clone, [jobs_view_parts.selected, seed], [form] + form_outputs + [start_msg],
                                    **PRIVATE)



def initial_values(svc: Service, plugin_id: str | None, seed_value: dict[str, Any]) -> dict[str, Any]:
    """The Plugin Config's starting values: the manifest's defaults for this machine, with a
    preset's or a cloned job's values where the seed is for this plugin."""
    manifest = _manifest(svc, plugin_id)
    if not manifest:
        return {}
    specs = svc.parameter_specs(manifest)
    seeded = seed_value.get("values", {}) if seed_value.get("plugin") == plugin_id else {}
    return {name: seeded.get(name, spec.get("default")) for name, spec in specs.items()}


def seeded_rewards(svc: Service, plugin_id: str | None, seed_value: dict[str, Any]) -> list[dict[str, Any]]:
    """A preset's or a cloned job's own reward functions, for a GRPO plugin."""
    manifest = _manifest(svc, plugin_id)
    if not manifest or seed_value.get("plugin") != plugin_id or manifest.train_type != "grpo":
        return []
    chosen = (seed_value.get("values") or {}).get("custom_rewards")
    return list(chosen) if isinstance(chosen, list) else []


def reward_rows(svc: Service, chosen: list[Any], keep: list[list[Any]] | None = None) -> list[list[Any]]:
    """The table's rows: every function of every reward file, ticked with its weight where chosen (or as
    the table had it), and a chosen one whose file is gone, so the check names it."""
    weights = {}
    for item in chosen:
        if isinstance(item, dict):
            weights[str(item.get("function"))] = item.get("weight", 1.0)
        elif isinstance(item, str):
            weights[item] = 1.0
    kept = {str(r[1]): r for r in keep or [] if len(r) >= 3}
    labels = [f"{f['file']}:{fn}" for f in svc.reward_functions()["files"] for fn in f["functions"]]
    labels += [label for label in weights if label not in labels]
    return [kept.get(label) or [label in weights, label, weights.get(label, 1.0)] for label in labels]


def chosen_rewards(rows: Any) -> list[dict[str, Any]]:
    rows = rows.values.tolist() if hasattr(rows, "values") else (rows or [])  # a DataFrame or a list of rows
    chosen = []
    for row in rows:
        if len(row) >= 3 and row[0] in (True, "true", "True") and str(row[1]).strip():
            weight = row[2]
            try:
                weight = 1.0 if weight in (None, "") else float(weight)
            except (TypeError, ValueError):
                pass  # the check names it
            chosen.append({"function": str(row[1]).strip(), "weight": weight})
    return chosen


def custom_rewards_block(svc: Service, refs: dict[str, Any], chosen: list[Any], key: str) -> None:
    """Your own reward functions beside the built-in ones: a table of every function in the workspace's
    reward files (tick, weight) and an upload. Hidden in hosted mode: a visitor's file would run here."""
    if settings.hosted():
        gr.Markdown("Reward functions of your own are turned off on this server.", elem_classes="tl-muted")
        return
    gr.Markdown("**Your reward functions**: Python files of `def f(prompts, completions, **kwargs) -> list[float]` "
                "(completions are chat messages or strings; dataset columns such as `answer` come as keyword "
                "lists). Tick the ones to use and give each a weight; each is tried on a sample completion "
                "before Start.", elem_classes="tl-muted")
    table = gr.Dataframe(value=reward_rows(svc, chosen), headers=REWARD_HEADERS, datatype=["bool", "str", "number"],
                         type="array", interactive=True, static_columns=[1], label="Reward files in the workspace",
                         key=f"{key}-table", elem_id="custom-rewards")
    with gr.Row():
        upload = gr.File(label="Upload a reward file (.py)", file_types=[".py"], type="filepath", key=f"{key}-upload",
                         elem_id="reward-upload", scale=2)
        note = gr.Markdown(elem_id="reward-upload-msg")

    def uploaded(path, rows):
        if not path:
            return gr.skip(), ""
        try:
            saved = svc.save_reward_file(Path(path).name, Path(path).read_bytes())
        except RequestError as exc:
            return gr.skip(), problems_md(exc)
        return (reward_rows(svc, chosen_rewards(rows), keep=rows if isinstance(rows, list) else None),
                f"Added **{html.escape(saved['file'])}**: {', '.join(saved['functions'])}")

    upload.upload(uploaded, [upload, table], [table, note], **PRIVATE)
    table.change(chosen_rewards, table, refs["custom"], show_progress="hidden", trigger_mode="always_last",
                 **PRIVATE).then(refs["check"], refs["inputs"], refs["outputs"], show_progress="hidden", **PRIVATE)


def config_section(svc: Service, refs: dict[str, Any], plugin_id: str | None, seed_value: dict[str, Any]) -> None:
    """The Plugin Config fields of one manifest. Each field reports its value into the `values`
    state and the form is checked again; the listeners belong to these fields alone, so they go
    when the section is rebuilt for another plugin."""
    if not plugin_id:
        gr.Markdown("No trainer plugin is available.")
        return
    try:
        manifest = svc.plugin(plugin_id)
    except RequestError as exc:
        gr.Markdown(problems_md(exc))
        return
    specs = svc.parameter_specs(manifest)
    start_values = initial_values(svc, plugin_id, seed_value)
    version = seed_value.get("version", 0)
    for group in manifest.groups():
        # A new key per seed version: a loaded preset replaces what the fields held (and the
        # sections open where it changed something).
        with gr.Accordion(group.title, open=opens(group, specs, start_values),
                          key=f"{plugin_id}-{group.title}-{version}",
                          elem_id="group-" + re.sub(r"[^a-z0-9]+", "-", group.title.lower()).strip("-"),
                          elem_classes="tl-group"):
            if group.help:
                gr.Markdown(group.help, elem_classes="tl-muted")
            names = group.parameters
            for first in range(0, len(names), 4):
                with gr.Row(equal_height=True):
                    for name in names[first:first + 4]:
                        comp = param_component(name, specs[name], start_values[name],
                                               key=f"{plugin_id}-{name}-{version}")
                        # .input, not .change: a rebuilt section's fields would each fire .change once as
                        # they mount (a check apiece, ~30 events per plugin switch); their values are
                        # already in the state, set with the section. always_last: .input's default drops
                        # what is typed while an update is pending (0.00123 typed key by key was saved as 0).
                        comp.input(lambda value, vals, _name=name: {**vals, _name: value}, [comp, refs["values"]],
                                   refs["values"], show_progress="hidden", trigger_mode="always_last",
                                   **PRIVATE).then(
                            refs["check"], refs["inputs"], refs["outputs"], show_progress="hidden", **PRIVATE)
            if manifest.train_type == "grpo" and "reward_correctness" in names:
                custom_rewards_block(svc, refs, seeded_rewards(svc, plugin_id, seed_value), f"{plugin_id}-{version}")


def opens(group: Any, specs: dict[str, dict[str, Any]], values: dict[str, Any]) -> bool:
    """A section starts open if the manifest says so, or if it holds a value other than its default
    (a preset's or a cloned job's): nothing that will change the run is hidden."""
    return group.open or any(values.get(n) != specs[n].get("default") for n in group.parameters)


def memory_md(est: dict[str, Any]) -> str:
    """The memory estimate next to the chosen GPUs' free memory, with a warning when it won't fit."""
    parts = (f"weights {est['weights_gb']:.1f}, gradients {est['gradients_gb']:.1f}, optimizer "
             f"{est['optimizer_gb']:.1f}, activations {est['activations_gb']:.1f}, overhead {est['overhead_gb']:.1f}")
    text = f"Estimated memory per device: **{est['total_gb']:.1f} GiB** ({parts})"
    if est["gpus"]:
        text += " · free: " + ", ".join(f"GPU {g['index']} {g['free_gb']:.1f} GiB" for g in est["gpus"])
    if est.get("plan"):
        text += f"<br>Plan: {html.escape(est['plan'])}"
    if est.get("warning"):
        text += f'<br><span class="tl-warn">⚠ {html.escape(est["warning"])}</span>'
    disk = est.get("disk")
    if disk:
        kept = (f"{disk['checkpoints']} checkpoint{'s' * (disk['checkpoints'] != 1)}" if disk["checkpoints"] is not None
                else "every checkpoint (no limit kept)")
        text += (f"<br>Disk: {kept} × {_size(disk['checkpoint_gb'])} + output {_size(disk['output_gb'])} · "
                 f"{disk['free_gb']:.1f} GB free")
        if disk.get("warning"):
            text += f'<br><span class="tl-warn">⚠ {html.escape(disk["warning"])}</span>'
    return text


def _size(gb: float) -> str:
    return f"{gb:.1f} GB" if gb >= 1 else f"{gb * 1000:.0f} MB" if gb >= 0.001 else "<1 MB"


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 300 else text[:300] + "…"


def _render_example(i: int, example: dict[str, Any]) -> str:
    if "messages" in example:
        body = "\n".join(f"[{m.get('role')}] {m.get('content')}" for m in example["messages"])
    elif "prompt" in example:
        body = f"{example['prompt']}<completion>{example['completion']}</completion>"
    else:
        body = example["text"]
    return f"--- example {i} ---\n{body}"


def _redact(text: str, svc: Service) -> str:
    return text.replace(str(settings.REPO_DIR), "<app>").replace(str(svc.home), "$TLAB_HOME")
