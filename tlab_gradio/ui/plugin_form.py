"""The Plugin picker and the Plugin Config section, built from the plugin's entry in the service's plugin
list (Service.plugin_form: parameters with this machine's defaults, help and widget; parameter_groups;
train_type), never from the manifest itself: one input per parameter, grouped as the plugin says, starting
from its defaults or a preset's or a cloned job's values."""
from __future__ import annotations

import json
import re
from typing import Any

import gradio as gr

from ..service import RequestError, Service
from .common import PRIVATE, problems_md
from .reward_table import custom_rewards_block, seeded_rewards

DEFAULT_PLUGIN = "llama_sft_multi_gpu"
# What people change at every run, first in the form (issue 18: LlamaBoard shows these at once; ours were 1,700 px
# down): the rest of the plugin's settings stay in its sections below, closed unless changed.
ESSENTIALS = ("device", "gpu_ids", "num_train_epochs", "max_steps", "learning_rate", "per_device_train_batch_size")
PER_ROW = 3


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


def form_of(svc: Service, plugin_id: str | None) -> dict[str, Any] | None:
    """The plugin's form, or None when it is unknown or fails to load now (changed since the page loaded)."""
    if not plugin_id:
        return None
    try:
        return svc.plugin_form(plugin_id)
    except RequestError:
        return None


def initial_values(svc: Service, plugin_id: str | None, seed_value: dict[str, Any]) -> dict[str, Any]:
    """The Plugin Config's starting values: the plugin's defaults for this machine, with a preset's or a
    cloned job's values where the seed is for this plugin."""
    form = form_of(svc, plugin_id)
    if not form:
        return {}
    seeded = seed_value.get("values", {}) if seed_value.get("plugin") == plugin_id else {}
    return {name: seeded.get(name, spec.get("default")) for name, spec in form["parameters"].items()}


def param_component(name: str, spec: dict[str, Any], value: Any, key: str):
    """The input for one parameter: checkbox, dropdown, slider, number or text box."""
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
    common = {"label": spec["title"], "info": info, "key": key, "preserved_by_key": None, "elem_id": f"param-{name}",
              "interactive": True}
    if kind == "boolean":
        return gr.Checkbox(value=bool(value), **common)
    if "enum" in spec:
        return gr.Dropdown(choices=spec["enum"], value=value, allow_custom_value=False, **common)
    if kind in ("integer", "number"):
        step = spec.get("multipleOf") or (1 if kind == "integer" else None)
        if spec.get("widget") == "range" and lo is not None and hi is not None:
            return gr.Slider(minimum=lo, maximum=hi, step=step or 1, value=value, **common)
        # A text box, not gr.Number: a number box hands on nothing for text it cannot read ("two e minus four"
        # left "e" shown and the old value checked and started); this one hands on what is shown, which
        # number_value reads and the check names at the field. No limits here either: ours name the parameter.
        return gr.Textbox(value="" if value is None else _number_text(value), lines=1, max_lines=1, **common)
    if spec.get("widget") == "textarea":  # a chat template: several lines, checked when left
        common.update(lines=4, max_lines=20)
    return gr.Textbox(value="" if value is None else str(value), **common)


def _number_text(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() and abs(value) < 1e15 else str(value)


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(inf|infinity|nan)", re.IGNORECASE)


def number_value(spec: dict[str, Any], value: Any) -> Any:
    """A number field's text as the request's value: a number where the text is one (`2e-4`, `0.0002`, `4`),
    None where it is empty (the default), else the text itself, which the check refuses by name ("is not a
    number"). Other fields' values pass as they are."""
    if spec.get("type") not in ("integer", "number") or not isinstance(value, str):
        return value
    text = value.strip()
    if not text:
        return None
    if not _NUMBER.fullmatch(text):
        return value
    number = float(text)
    return int(text) if re.fullmatch(r"[+-]?\d+", text) else number


def field_triggers(comp: Any) -> tuple[list[Any], list[Any]]:
    """A field's (typing, committed) events: a text box is checked when it is left or on Enter, not at each key
    (half-typed values are not errors); a pick, a tick or a slider's release is checked at once."""
    if isinstance(comp, gr.Textbox):
        return [], [comp.blur, comp.submit]  # its keys: train_tab.wire (live.typing_js)
    if isinstance(comp, gr.Slider):
        return [comp.input], [comp.release]
    return [], [comp.input]


def device_swap_js(specs: list[dict[str, Any]]) -> str:
    """The page's side of a Training Device pick: each field (of `specs`, in order) still at the other device's
    default takes this device's (GRPO on a CPU: 8 completions of 64 tokens, not a GPU's 32 x 8 of 256); a value
    the user set stays. Number fields hold text: compared as numbers (`8.0` is 8)."""
    pairs = json.dumps([[spec["default_on_cpu"], spec["default_on_cuda"]] for spec in specs])
    return ("(device, ...shown) => { const pairs = " + pairs + "; return shown.map((v, i) => { "
            "const [cpu, cuda] = pairs[i]; const here = device === 'cpu' ? cpu : cuda; "
            "const there = device === 'cpu' ? cuda : cpu; const text = String(v ?? '').trim(); "
            "if (text === '' || Number(text) !== Number(there)) return v; "
            "return typeof v === 'number' ? here : String(here); }); }")


def opens(group: dict[str, Any], specs: dict[str, dict[str, Any]], values: dict[str, Any]) -> bool:
    """A section starts open if the plugin says so, or if it holds a value other than its default (a
    preset's or a cloned job's): nothing that will change the run is hidden."""
    return group.get("open", True) or any(values.get(n) != specs[n].get("default") for n in group["parameters"])


def config_section(svc: Service, refs: dict[str, Any], plugin_id: str | None, seed_value: dict[str, Any]) -> None:
    """The Plugin Config fields of one plugin, inside gr.render, handed to refs["wire"] (train_tab) with their
    typing and committed events: the check, Start and Save preset read these fields themselves, so they see
    exactly what is shown. Listeners made here go when the section is rebuilt for another plugin."""
    fields: dict[str, Any] = {}
    typing: list[Any] = []
    commits: list[Any] = []
    chained: list[Any] = []
    if not plugin_id:
        gr.Markdown("No trainer plugin is available.")
        refs["wire"](plugin_id, fields, typing, commits, chained)
        return
    try:
        form = svc.plugin_form(plugin_id)
    except RequestError as exc:
        gr.Markdown(problems_md(exc))
        refs["wire"](plugin_id, fields, typing, commits, chained)
        return
    specs = form["parameters"]
    start_values = initial_values(svc, plugin_id, seed_value)

    def add_fields(names: list[str]) -> None:
        nonlocal typing, commits
        for first in range(0, len(names), PER_ROW):
            with gr.Row(equal_height=True):
                for name in names[first:first + PER_ROW]:
                    comp = param_component(name, specs[name], start_values[name], key=f"{plugin_id}-{name}")
                    fields[name] = comp
                    typed, committed = field_triggers(comp)
                    typing += typed
                    commits += committed

    essentials = [n for n in ESSENTIALS if n in specs]
    with gr.Group(elem_id="group-essentials"):
        add_fields(essentials)
    for group in form["parameter_groups"]:
        group = {**group, "parameters": [n for n in group["parameters"] if n not in essentials]}
        if not group["parameters"]:
            continue
        title = group["title"]
        # One key per plugin and field, the same at every render: the page keeps the same components (the browser's
        # gradio keeps every component an event ever touched, and searched its whole page for each one removed at
        # every later render: a plugin switch took 1.4 s, then 4 s after four clones). Their values are not kept
        # over a render (preserved_by_key=None): a preset or a clone replaces what the fields held, and the
        # sections open where it changed something.
        with gr.Accordion(title, open=opens(group, specs, start_values), key=f"{plugin_id}-{title}",
                          elem_id="group-" + re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-"),
                          elem_classes="tl-group"):
            if group.get("help"):
                gr.Markdown(group["help"], elem_classes="tl-muted")
            names = group["parameters"]
            add_fields(names)
            if form["train_type"] == "grpo" and "reward_correctness" in names:
                chained.append(custom_rewards_block(svc, refs, seeded_rewards(svc, plugin_id, seed_value), plugin_id))
    swapped = [n for n in fields if "default_on_cpu" in specs[n] and specs[n].get("default_on_cuda") is not None]
    checking = []
    if "device" in fields and swapped:
        # The device is checked after its defaults are in the fields (not on its own pick: that verdict, for the
        # old values, could be taken for the new ones), and says it is being checked at once. The swap is made in
        # the page, at the pick: made on the server, it could land after a value typed meanwhile, and replace it.
        device = fields["device"]
        commits = [c for c in commits if getattr(c, "__self__", None) is not device]
        checking.append(device.input)
        shown = [fields[n] for n in swapped]
        # Then checked with all the fields as shown (wire packs them into the values the other checks read).
        chained.append(device.input(None, [device] + shown, shown, js=device_swap_js([specs[n] for n in swapped]),
                                    **PRIVATE))
    refs["wire"](plugin_id, fields, typing, commits, [c for c in chained if c is not None], checking)
