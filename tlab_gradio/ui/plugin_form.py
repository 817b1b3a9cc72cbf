"""The Plugin picker and the Plugin Config section, built from the plugin's entry in the service's plugin
list (Service.plugin_form: parameters with this machine's defaults, help and widget; parameter_groups;
train_type), never from the manifest itself: one input per parameter, grouped as the plugin says, starting
from its defaults or a preset's or a cloned job's values."""
from __future__ import annotations

import re
from typing import Any

import gradio as gr

from ..service import RequestError, Service
from .common import PRIVATE, problems_md
from .reward_table import custom_rewards_block, seeded_rewards

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


def opens(group: dict[str, Any], specs: dict[str, dict[str, Any]], values: dict[str, Any]) -> bool:
    """A section starts open if the plugin says so, or if it holds a value other than its default (a
    preset's or a cloned job's): nothing that will change the run is hidden."""
    return group.get("open", True) or any(values.get(n) != specs[n].get("default") for n in group["parameters"])


def config_section(svc: Service, refs: dict[str, Any], plugin_id: str | None, seed_value: dict[str, Any]) -> None:
    """The Plugin Config fields of one plugin, inside gr.render. Each field reports its value into the
    `values` state (refs) and the form is checked again; the listeners belong to these fields alone, so
    they go when the section is rebuilt for another plugin."""
    if not plugin_id:
        gr.Markdown("No trainer plugin is available.")
        return
    try:
        form = svc.plugin_form(plugin_id)
    except RequestError as exc:
        gr.Markdown(problems_md(exc))
        return
    specs = form["parameters"]
    start_values = initial_values(svc, plugin_id, seed_value)
    version = seed_value.get("version", 0)
    for group in form["parameter_groups"]:
        title = group["title"]
        # A new key per seed version: a loaded preset replaces what the fields held (and the
        # sections open where it changed something).
        with gr.Accordion(title, open=opens(group, specs, start_values), key=f"{plugin_id}-{title}-{version}",
                          elem_id="group-" + re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-"),
                          elem_classes="tl-group"):
            if group.get("help"):
                gr.Markdown(group["help"], elem_classes="tl-muted")
            names = group["parameters"]
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
            if form["train_type"] == "grpo" and "reward_correctness" in names:
                custom_rewards_block(svc, refs, seeded_rewards(svc, plugin_id, seed_value), f"{plugin_id}-{version}")
