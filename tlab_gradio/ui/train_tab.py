"""Train tab: the layout of the `+ New` task form (Name, Dataset, Data Template, Plugin Config), presets,
the jobs list, and the wiring between them. Each part is its own module: dataset_picker (the Dataset and
Data Template sections), plugin_form (the Plugin picker and the Plugin Config section, rebuilt with
gr.render when the plugin changes), reward_table (GRPO's own reward functions), form_request (the form's
values as a request and back: presets, clones), previews (the data preview, the live check and command)."""
from __future__ import annotations

import html
from typing import Any

import gradio as gr

from ..service import RequestError, Service
from . import dataset_picker, jobs_view
from .common import PRIVATE, checked, problems_md, visitor
from .dataset_picker import DATASET_FIELDS, TEMPLATE_FIELDS
from .form_request import FILLED, STATIC_FIELDS, build_request, form_from_request
from .plugin_form import config_section, form_of, initial_values, trainer_choices
from .previews import data_preview, launch_check
from .reward_table import seeded_rewards


def build(svc: Service, demo: gr.Blocks, hosted: bool) -> None:
    trainers, first = trainer_choices(svc)  # read again at every page load (below)

    refs: dict[str, Any] = {}  # what the Plugin Config section's own fields report to when they change
    seed = gr.State({"plugin": first, "values": {}, "version": 0})  # a preset's or a cloned job's values
    values = gr.State({})  # the Plugin Config fields' current values, by parameter name
    fields: dict[str, Any] = {"custom_rewards": gr.State([])}  # GRPO: your own reward functions, [{function, weight}]
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
                fields["plugin"] = gr.Dropdown(choices=trainers, value=None, label="Plugin", elem_id="plugin",
                                               info="Only trainer plugins are listed", scale=2)
                fields["name"] = gr.Textbox(label="Task name", placeholder="e.g. alpaca-lora-run-1",
                                            elem_id="task-name", scale=2)
                fields["model"] = gr.Textbox(label="Model", elem_id="model", scale=3,
                                             placeholder=("Hub id (empty: the embedded tiny Llama)" if hosted else
                                                          "Hub id, local folder or .gguf file (empty: the tiny "
                                                          "Llama, offline)"))
        data_parts = dataset_picker.build(hosted)
        fields.update({n: data_parts[n] for n in DATASET_FIELDS + TEMPLATE_FIELDS})
        plugin_dd = fields["plugin"]
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

    static = [fields[n] for n in STATIC_FIELDS]
    form_outputs = [fields[n] for n in FILLED] + [seed]

    # --- checks, Start and presets: every listener lives here, none inside the render ------
    def request_of(args, owner: str | None = None) -> dict[str, Any]:
        """The request from the form's inputs (static + [values]). The values state is ignored while it
        still holds another plugin's fields (a check queued while the plugin was being switched): then
        this plugin's starting values."""
        *field_values, vals = args
        static_values = dict(zip(STATIC_FIELDS, field_values))
        plugin_form = form_of(svc, static_values["plugin"])
        if plugin_form and set(vals) != set(plugin_form["parameters"]):
            vals = initial_values(svc, static_values["plugin"], {})
        return build_request(svc, static_values, vals, owner)  # an upload goes to the visitor's folder

    # Handlers take the visitor first: gradio fills a gr.Request only before *args.
    def check(visit: gr.Request, *args):
        try:
            owner = visitor(visit)
            return launch_check(svc, request_of(args, owner), hosted, owner)
        except RequestError as exc:
            return problems_md(exc), gr.skip()

    def set_values(plugin_id, seed_value):
        return initial_values(svc, plugin_id, seed_value), seeded_rewards(svc, plugin_id, seed_value)

    def start(visit: gr.Request, *args):
        try:
            job = svc.start_job(request_of(args, visitor(visit)), visitor(visit))
        except RequestError as exc:
            gr.Warning("The job was not started: " + "; ".join(exc.problems))
            return problems_md(exc), gr.skip(), gr.skip()
        # No state here: this line stays while the job runs and ends; the job view below shows it live.
        return (f"Started job **{job['id']}** ({html.escape(job['name'])}); its progress is below.",
                gr.update(visible=False), job["id"])

    def save(visit: gr.Request, preset, *args):
        try:
            presets = svc.save_preset(preset, request_of(args, visitor(visit)), visitor(visit))  # hosted: theirs
        except RequestError as exc:
            raise gr.Error("; ".join(exc.problems), print_exception=False) from None
        gr.Info(f"Saved preset {preset}")
        return gr.update(choices=presets, value=preset.strip())

    form_inputs = static + [values]
    check_outputs = [checks, command]
    refs.update(values=values, custom=fields["custom_rewards"], check=check, inputs=form_inputs,
                outputs=check_outputs)
    gr.on([plugin_dd.change, seed.change, demo.load], set_values, [plugin_dd, seed],
          [values, fields["custom_rewards"]], **PRIVATE).then(
        check, form_inputs, check_outputs, show_progress="hidden", **PRIVATE)
    watched = [fields[n] for n in ("model", "source", "sample", "path", "hub") + TEMPLATE_FIELDS]
    gr.on([c.change for c in watched] + [fields["upload"].upload], check, form_inputs, check_outputs,
          show_progress="hidden", **PRIVATE)
    start_btn.click(start, form_inputs, [start_msg, form, jobs_view_parts.selected], **PRIVATE)
    save_btn.click(save, [preset_name] + form_inputs, preset_pick, **PRIVATE)

    # --- dataset source, a plugin's own sample data, previews ------------------------------
    dataset_picker.wire(svc, data_parts, plugin_dd)
    preview_inputs = [fields[n] for n in DATASET_FIELDS + TEMPLATE_FIELDS]
    preview_outputs = [data_parts["info"], data_parts["table"], data_parts["rendered"]]
    defaults_outputs = [fields[n] for n in ("source", "sample") + TEMPLATE_FIELDS]

    def preview(visit: gr.Request, *args):
        return data_preview(svc, dict(zip(DATASET_FIELDS + TEMPLATE_FIELDS, args)), visitor(visit))

    def plugin_defaults(plugin_id):
        return dataset_picker.plugin_defaults(svc, plugin_id)

    data_parts["preview_btn"].click(preview, preview_inputs, preview_outputs, **PRIVATE)
    plugin_dd.input(plugin_defaults, plugin_dd, defaults_outputs, **PRIVATE).then(
        preview, preview_inputs, preview_outputs, **PRIVATE)

    # --- open / close the form, presets, clone --------------------------------------
    def open_new(current):
        version = current.get("version", 0) + 1
        return [gr.update(visible=True), {"plugin": current.get("plugin") or first, "values": {},
                                          "version": version}, ""]

    new_btn.click(open_new, seed, [form, seed, start_msg], **PRIVATE).then(
        plugin_defaults, plugin_dd, defaults_outputs, **PRIVATE).then(
        preview, preview_inputs, preview_outputs, **PRIVATE)
    cancel_btn.click(lambda: gr.update(visible=False), None, form, **PRIVATE)

    def load_preset(name, current, visit: gr.Request):
        if not name:
            raise gr.Error("Choose a preset to load", print_exception=False)
        try:
            request = svc.load_preset(name, visitor(visit))  # hosted: the visitor's own presets only
        except RequestError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        return [gr.update(visible=True)] + form_from_request(request, current.get("version", 0) + 1) + [
            f"Loaded preset **{html.escape(name)}**."]

    load_btn.click(load_preset, [preset_pick, seed], [form] + form_outputs + [start_msg], **PRIVATE)
    # The list as it is now, not as it was when the app started (presets saved since, in any tab).
    def list_presets(visit: gr.Request):
        return gr.update(choices=svc.list_presets(visitor(visit)))  # hosted: the visitor's own

    demo.load(list_presets, None, preset_pick, **PRIVATE)

    def refresh_plugins():
        """The plugins as the manifests are now, and the default selected: plugin_dd.change builds its config."""
        choices, default = trainer_choices(svc)
        return gr.update(choices=choices, value=default)

    demo.load(refresh_plugins, None, plugin_dd, **PRIVATE)

    def clone(job_id, current, visit: gr.Request):
        if job_id is None:
            raise gr.Error("Select a job to clone", print_exception=False)
        request = checked(svc.clone_request)(job_id, visitor(visit))  # the service checks the id and owner
        return [gr.update(visible=True)] + form_from_request(request, current.get("version", 0) + 1) + [
            f"Cloned the settings of job {int(job_id)}. Change what you like and press Start."]

    jobs_view_parts.clone_btn.click(clone, [jobs_view_parts.selected, seed], [form] + form_outputs + [start_msg],
                                    **PRIVATE)
