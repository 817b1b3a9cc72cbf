"""Train tab: the layout of the `+ New` task form (Name, Dataset, Data Template, Plugin Config), presets,
the jobs list, and the wiring between them. Each part is its own module: dataset_picker (the Dataset and
Data Template sections), plugin_form (the Plugin picker and the Plugin Config section, rebuilt with
gr.render when the plugin changes), reward_table (GRPO's own reward functions), form_request (the form's
values as a request and back: presets, clones), previews (the data preview, the live check and command), live
(what is shown is never older than the values, and each problem is shown at its field). Every listener is made
here: those that read the Plugin Config's fields (the check, Start, Save preset) by `wire`, which the render
calls with the fields it built."""
from __future__ import annotations

import html
import time
from typing import Any

import gradio as gr

from ..service import RequestError, Service
from . import dataset_picker, jobs_view, live
from . import sweep_panel
from .common import PRIVATE, checked, problems_md, progress_on, visitor
from .dataset_picker import DATASET_FIELDS, TEMPLATE_FIELDS
from .form_request import FILLED, STATIC_FIELDS, build_request, form_from_request
from .plugin_form import config_section, form_of, initial_values, number_value, trainer_choices
from .previews import data_preview, launch_check
from .reward_table import seeded_rewards

# The form, once opened (+ New, a preset, a clone), at the top of the screen: its first screen holds what people
# change at every run and Start (a clone is asked for from the job view, far below).
SHOW_FORM_JS = """() => { requestAnimationFrame(() => { const f = document.getElementById('task-form');
  if (f) window.scrollTo({top: Math.max(0, f.getBoundingClientRect().top + window.scrollY - 8), behavior: 'instant'});
}); }"""
CHECK_IDS = ["form-checks", "command-preview"]  # the live check's outputs, and the preview's, by elem_id
PREVIEW_IDS = ["ds-info", "ds-table", "rendered"]


def build(svc: Service, demo: gr.Blocks, hosted: bool) -> None:
    trainers, first = trainer_choices(svc)  # read again at every page load (below)

    refs: dict[str, Any] = {}  # what the Plugin Config section's own fields report to when they change
    seed = gr.State({"plugin": first, "values": {}, "version": 0})  # a preset's or a cloned job's values
    # The Plugin Config's values: its starting ones (the plugin's, a preset's), then as its fields change, packed in
    # the page (live.pack_js); the checks of the other fields' changes read them. A hidden JSON, not a State: the
    # page writes it with no server call.
    values = gr.JSON({}, visible="hidden", elem_id="form-values")
    fields: dict[str, Any] = {"custom_rewards": gr.State([])}  # GRPO: your own reward functions, [{function, weight}]
    with gr.Row(elem_classes="tl-toolbar"):
        new_btn = gr.Button("+ New", variant="primary", size="md", scale=0, min_width=110, elem_id="new-task")
        preset_pick = gr.Dropdown(choices=svc.list_presets(), show_label=False, scale=2, elem_id="preset-pick",
                                  value=None, interactive=True, info=None, container=False,
                                  label="Presets")
        load_btn = gr.Button("Load preset", size="md", scale=0, min_width=130, elem_id="load-preset")

    start_msg = gr.Markdown(elem_id="start-msg")  # outside the form: still seen once Start closes it
    # Two columns: the settings on the left, what Start will do (the check, the command) and Start itself on the
    # right, which stays in view while the left one scrolls (issue 18: Start was 3,000 px down).
    with gr.Column(visible=False, elem_id="task-form", elem_classes="tl-card") as form:
        with gr.Row(equal_height=False, elem_id="form-layout"):
            with gr.Column(scale=5, min_width=560, elem_id="form-main"):
                with gr.Group():
                    with gr.Row():
                        # No value until the page load reads the plugins again (refresh_plugins): a value kept from
                        # app start could name a plugin no longer offered, and be refused in every handler.
                        fields["plugin"] = gr.Dropdown(choices=trainers, value=None, label="Plugin", elem_id="plugin",
                                                       scale=3)
                        fields["model"] = gr.Textbox(
                            label="Model", elem_id="model", lines=1, max_lines=1, scale=2, min_width=260,
                            placeholder=("Hub id (empty: the embedded tiny Llama)" if hosted else
                                         "Hub id, folder or .gguf (empty: the tiny Llama, offline)"))
                data_parts = dataset_picker.build(hosted)
                fields.update({n: data_parts[n] for n in DATASET_FIELDS + ("data_format",) + TEMPLATE_FIELDS})
                plugin_dd = fields["plugin"]
                with gr.Column(elem_id="plugin-config"):
                    @gr.render(inputs=[plugin_dd, seed], triggers=[plugin_dd.change, seed.change, demo.load],
                               show_progress="hidden")
                    def plugin_config(plugin_id, seed_value):
                        config_section(svc, refs, plugin_id, seed_value)

            # Start at the bottom of the side column, which is never taller than the screen below the form's top:
            # in view at the first screen and, the column being sticky, wherever the settings are scrolled to.
            with gr.Column(scale=2, min_width=340, elem_id="form-side"):
                fields["name"] = gr.Textbox(label="Task name", placeholder="e.g. alpaca-lora-run-1", elem_id="task-name",
                                            lines=1, max_lines=1)
                with gr.Column(elem_id="form-verdict"):  # scrolls on its own when long
                    checks = gr.Markdown(elem_id="form-checks")
                    progress_on(plugin_config, checks)
                    command = gr.Code(label="Command Start will run (copy it to run the job by hand)",
                                      language="shell", interactive=False, elem_id="command-preview",
                                      visible=not hosted, max_lines=8)
                with gr.Row():
                    start_btn = gr.Button("Start", variant="primary", size="lg", scale=2, elem_id="start")
                    cancel_btn = gr.Button("Cancel", size="lg", scale=1, elem_id="cancel-task")
                with gr.Row():
                    preset_name = gr.Textbox(show_label=False, placeholder="preset name", lines=1, max_lines=1,
                                             scale=3, elem_id="preset-name")
                    save_btn = gr.Button("Save preset", size="md", scale=1, elem_id="save-preset")

    sweep_parts = sweep_panel.build(svc, hosted)  # Sweeps: between the form and the jobs
    jobs_view_parts = jobs_view.build(svc, demo, hosted)

    static = [fields[n] for n in STATIC_FIELDS]
    form_outputs = [fields[n] for n in FILLED] + [seed]
    # The live check's and the preview's answers land in hidden JSON first: live.show_js shows one only when no
    # change came since it was asked for (a stale verdict, command or preview is never shown).
    check_raw = gr.JSON(visible="hidden", elem_id="check-answer")
    check_seq = gr.Textbox(visible="hidden", elem_id="check-seq")
    preview_raw = gr.JSON(visible="hidden", elem_id="preview-answer")
    preview_seq = gr.Textbox(visible="hidden", elem_id="preview-seq")
    check_shown = [checks, command]
    preview_shown = [data_parts["info"], data_parts["table"], data_parts["rendered"]]

    # --- checks, Start and presets ------------------------------------------------------
    def request_of(static_values: list[Any], vals: dict[str, Any], owner: str | None = None) -> dict[str, Any]:
        """The request from the static fields' values and the Plugin Config's (number fields' text read as
        numbers). Config values of another plugin (a check asked for while the plugin was being switched) are
        ignored: then this plugin's starting values."""
        static_values = dict(zip(STATIC_FIELDS, static_values))
        plugin_form = form_of(svc, static_values["plugin"])
        vals = vals if isinstance(vals, dict) else {}  # the page's values JSON, empty before its first fill
        if plugin_form and set(vals) != set(plugin_form["parameters"]):
            vals = initial_values(svc, static_values["plugin"], {})
        elif plugin_form:
            vals = {n: number_value(plugin_form["parameters"][n], v) for n, v in vals.items()}
        return build_request(svc, static_values, vals, owner)  # an upload goes to the visitor's folder

    last_checked = live.Checked()  # each page's last checked request, by its change number: what Start starts

    def verdict(static_values: list[Any], vals: dict[str, Any], seq: Any, visit: gr.Request) -> dict[str, Any]:
        """One check of the form, as Start checks it: the shown verdict and command, and each problem at its field;
        tagged with the change number it answers. The request is kept for Start and Save preset."""
        owner = visitor(visit)
        names = list(vals or {})
        source = dict(zip(STATIC_FIELDS, static_values)).get("source")
        request = None
        try:
            request = request_of(static_values, vals, owner)
            shown = launch_check(svc, request, hosted, owner)
            last_checked.keep(visit, seq, request, None)
            return live.answer(seq, list(shown))
        except RequestError as exc:
            last_checked.keep(visit, seq, request, exc.problems)
            form = form_of(svc, dict(zip(STATIC_FIELDS, static_values))["plugin"])
            names = list(form["parameters"]) if form else names
            problems = [svc.hide_paths(p) for p in exc.problems]
            return live.answer(seq, [problems_md(exc), live.NO_COMMAND], live.field_problems(problems, names, source))

    # Handlers take the visitor first: gradio fills a gr.Request only before *args.
    def check_values(visit: gr.Request, *args):
        """The check with the Plugin Config as the values JSON holds it (set with the plugin or the seed, then
        packed from the fields in the page)."""
        *static_values, vals, seq = args
        return verdict(static_values, vals, seq, visit)

    def set_values(plugin_id, seed_value):
        return initial_values(svc, plugin_id, seed_value), seeded_rewards(svc, plugin_id, seed_value)

    def start(visit: gr.Request, seq):
        """Start the request the shown verdict was checked on (live.START_JS waits for the check of the latest
        change), so Start and the verdict never disagree; start_job checks it again."""
        try:
            job = svc.start_job(last_checked.request(visit, seq), visitor(visit))
        except RequestError as exc:
            gr.Warning("The job was not started: " + "; ".join(exc.problems))
            # What happened at that press, dated: the check under the form shows the settings as they are now.
            return (f"**Not started** (Start pressed at {time.strftime('%H:%M:%S')}; the check under the form "
                    f"follows your changes):\n{problems_md(exc)}", gr.skip(), gr.skip())
        # No state here: this line stays while the job runs and ends; the job view below shows it live.
        return (f"Started job **{job['id']}** ({html.escape(job['name'])}); its progress is below.",
                gr.update(visible=False), job["id"])

    def save(visit: gr.Request, preset, seq):
        try:  # hosted: the visitor's own presets
            presets = svc.save_preset(preset, last_checked.request(visit, seq), visitor(visit))
        except RequestError as exc:
            raise gr.Error("; ".join(exc.problems), print_exception=False) from None
        gr.Info(f"Saved preset {preset}")
        return gr.update(choices=presets, value=preset.strip())

    def send_check(event_or_triggers, fn, inputs) -> Any:
        """Ask for a check (its change number counted in the page first), its answer into check_raw."""
        ids = [getattr(c, "elem_id", None) if isinstance(c, gr.Textbox) else None for c in inputs] + [None]
        kwargs = dict(fn=fn, inputs=inputs + [check_seq], outputs=check_raw, js=live.send_js("check", ids),
                      show_progress="hidden", trigger_mode="multiple", **PRIVATE)
        if isinstance(event_or_triggers, list):
            gr.on(event_or_triggers, None, None, check_shown,
                  js=live.pending_js("check", [live.CHECKING, live.COMMAND_WAITS], CHECK_IDS),
                  show_progress="hidden", **PRIVATE)
            return gr.on(event_or_triggers, **kwargs)
        return event_or_triggers.then(**kwargs)

    # Typed, not yet checked: what is shown says so (and answers still on their way are dropped).
    static_text = [fields[n] for n in ("name", "model", "path", "hub", "subset", "split") + TEMPLATE_FIELDS]
    static_commits = ([c.blur for c in static_text] + [c.submit for c in static_text if c.lines == 1]
                      + [fields["source"].change, fields["sample"].change, fields["upload"].change,
                         fields["data_format"].change])

    def typed(comp) -> None:
        """A key typed in a text field: the verdict and command say it is not checked yet (live.typing_js)."""
        comp.input(None, [comp] + check_shown, check_shown,
                   js=live.typing_js("check", comp.elem_id, [live.TYPING, live.COMMAND_WAITS], CHECK_IDS),
                   show_progress="hidden", **PRIVATE)

    def wire(plugin_id, config: dict[str, Any], typing: list[Any], commits: list[Any], chained: list[Any],
             checking: list[Any] = ()) -> None:
        """Inside the Plugin Config's render: the check on every committed change of its fields, with the fields
        read as they are shown (packed in the page into `values`, live.pack_js: what they show, not a copy that
        may lag); `checking`: triggers of a chained check, shown as being checked at once."""
        names = list(config)
        shown_fields = list(config.values())
        pack = live.pack_js(names, [c.elem_id if isinstance(c, gr.Textbox) else None for c in shown_fields])
        if checking or commits:
            gr.on(list(checking) + commits, None, None, check_shown,
                  js=live.pending_js("check", [live.CHECKING, live.COMMAND_WAITS], CHECK_IDS), show_progress="hidden",
                  **PRIVATE)
        if typing:
            gr.on(typing, None, None, check_shown,
                  js=live.pending_js("check", [live.TYPING, live.COMMAND_WAITS], CHECK_IDS), show_progress="hidden",
                  **PRIVATE)
        for comp in shown_fields:
            if isinstance(comp, gr.Textbox):
                typed(comp)
        packed = []
        if commits:
            packed.append(gr.on(commits, None, shown_fields, values, js=pack, show_progress="hidden",
                                trigger_mode="multiple", **PRIVATE))
        for event in chained:  # the device's defaults swapped in, GRPO's reward table
            packed.append(event.then(None, shown_fields, values, js=pack, show_progress="hidden", **PRIVATE))
        for event in packed:
            send_check(event, check_values, static + [values])
        # Each field's value into `values` at each change too, in the page: the checks of the static fields'
        # changes read it. (Their listeners are made outside the render: gradio 6.31 drops the listeners of an
        # event made outside a render once the render has one, and a render's own fail while it is rebuilt.)
        for name, comp in config.items():
            comp.input(None, [values, comp], values, js=live.set_js([name]), show_progress="hidden", **PRIVATE)

    refs.update(custom=fields["custom_rewards"], wire=wire)
    send_check(gr.on([plugin_dd.change, seed.change, demo.load], set_values, [plugin_dd, seed],
                     [values, fields["custom_rewards"]], **PRIVATE), check_values, static + [values])
    send_check(static_commits, check_values, static + [values])
    # Start and Save preset take the request of the latest check (not made in the render: a click while it is
    # rebuilt, after a preset or a clone, would be lost).
    start_seq = gr.Textbox(visible="hidden", elem_id="start-seq")
    start_btn.click(start, start_seq, [start_msg, form, jobs_view_parts.selected], js=live.START_JS,
                    show_progress_on=start_msg, **PRIVATE)
    save_btn.click(save, [preset_name, start_seq], preset_pick, js=live.START_JS, **PRIVATE)
    gr.on(check_raw.change, None, [check_raw] + check_shown, check_shown,
          js=live.show_js("check", CHECK_IDS, marks=True), show_progress="hidden", **PRIVATE)
    for comp in static_text:
        typed(comp)

    # --- dataset source, a plugin's own sample data, previews ------------------------------
    dataset_picker.wire(svc, data_parts, plugin_dd)
    preview_names = ("plugin", "data_format") + DATASET_FIELDS + TEMPLATE_FIELDS
    preview_inputs = [fields[n] for n in preview_names]
    defaults_outputs = [fields[n] for n in ("source", "sample") + TEMPLATE_FIELDS]

    def preview(visit: gr.Request, *args):
        *values_, seq = args
        shown = data_preview(svc, dict(zip(preview_names, values_)), visitor(visit))
        return live.answer(seq, list(shown))

    def send_preview(event_or_triggers) -> Any:
        """The preview again, for the values as they are when it is asked for; shown only if still current."""
        kwargs = dict(fn=preview, inputs=preview_inputs + [preview_seq], outputs=preview_raw,
                      js=live.send_js("preview"), show_progress="hidden", trigger_mode="multiple", **PRIVATE)
        if isinstance(event_or_triggers, list):
            gr.on(event_or_triggers, None, None, preview_shown,
                  js=live.pending_js("preview", [live.PREVIEWING, "", "⋯"], PREVIEW_IDS), show_progress="hidden",
                  **PRIVATE)
            return gr.on(event_or_triggers, **kwargs)
        return event_or_triggers.then(**kwargs)

    def plugin_defaults(plugin_id):
        return dataset_picker.plugin_defaults(svc, plugin_id)

    # Every change of where the rows come from, or of a template, previews again at once (a template or a path
    # when its box is left, not at each key); a picked sample after its templates are filled in.
    data_text = [fields[n] for n in ("path", "hub", "subset", "split")]
    template_boxes = [fields[n] for n in TEMPLATE_FIELDS]
    send_preview([data_parts["preview_btn"].click, fields["source"].change, fields["sample"].change,
                  fields["upload"].change, fields["data_format"].change] + [c.blur for c in data_text + template_boxes]
                 + [c.submit for c in data_text])
    # A sample picked: its templates are filled in, then checked and previewed with them.
    picked = fields["sample"].input(dataset_picker.sample_templates, fields["sample"],
                                    [fields[n] for n in TEMPLATE_FIELDS], **PRIVATE)
    send_check(picked, check_values, static + [values])
    send_preview(picked)
    gr.on([c.input for c in data_text], None, None, preview_shown,
          js=live.pending_js("preview", [live.PREVIEWING, "", "⋯"], PREVIEW_IDS), show_progress="hidden",
          **PRIVATE)
    gr.on([c.input for c in template_boxes], None, None, [data_parts["rendered"]],
          js=live.pending_js("preview", [live.RENDER_TYPING], ["rendered"]), show_progress="hidden", **PRIVATE)
    # The answer fills the template boxes too, with the templates of the format found where the boxes held none of
    # the user's own (the sample's, another format's): what is shown is what a job would use.
    filled = preview_shown + template_boxes
    gr.on(preview_raw.change, None, [preview_raw] + filled, filled,
          js=live.show_js("preview", PREVIEW_IDS + ["template", "completion-template"]), show_progress="hidden",
          **PRIVATE)
    # On the pick itself (`select`, once; the dropdown reports an `input` twice: at the pick and as it loses focus).
    send_preview(plugin_dd.select(plugin_defaults, plugin_dd, defaults_outputs, **PRIVATE))

    # --- open / close the form, presets, clone --------------------------------------
    def open_new(current):
        version = current.get("version", 0) + 1
        return [gr.update(visible=True), {"plugin": current.get("plugin") or first, "values": {},
                                          "version": version}, ""]

    opened = new_btn.click(open_new, seed, [form, seed, start_msg], show_progress_on=start_msg, **PRIVATE)
    opened.then(None, js=SHOW_FORM_JS, **PRIVATE)
    send_preview(opened.then(plugin_defaults, plugin_dd, defaults_outputs, **PRIVATE))
    cancel_btn.click(lambda: gr.update(visible=False), None, form, show_progress_on=start_msg, **PRIVATE)

    def load_preset(name, current, visit: gr.Request):
        if not name:
            raise gr.Error("Choose a preset to load", print_exception=False)
        try:
            request = svc.load_preset(name, visitor(visit))  # hosted: the visitor's own presets only
        except RequestError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        return [gr.update(visible=True)] + form_from_request(request, current.get("version", 0) + 1) + [
            f"Loaded preset **{html.escape(name)}**."]

    loaded = load_btn.click(load_preset, [preset_pick, seed], [form] + form_outputs + [start_msg],
                            show_progress_on=start_msg, **PRIVATE)
    loaded.then(None, js=SHOW_FORM_JS, **PRIVATE)
    send_preview(loaded)
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

    cloned = jobs_view_parts.clone_btn.click(clone, [jobs_view_parts.selected, seed],
                                             [form] + form_outputs + [start_msg], show_progress_on=start_msg, **PRIVATE)
    cloned.then(None, js=SHOW_FORM_JS, **PRIVATE)
    send_preview(cloned)
    sweep_panel.wire(svc, sweep_parts, demo, last_checked, jobs_view_parts.selected)  # on the form's last check
