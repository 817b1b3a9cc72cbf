"""The form's values as a job request, and back: build_request (the live check, Start, Save preset) and
form_from_request (a preset or a cloned job into the form, its Plugin Config values as the seed).
STATIC_FIELDS is the one list of the fields outside the Plugin Config: train_tab looks the components up
by these names, and every handler reads them in this order."""
from __future__ import annotations

from typing import Any

from .. import data
from ..service import Service
from .dataset_picker import DATASET_FIELDS, FORMAT_AUTO, TEMPLATE_FIELDS, dataset_fields, dataset_value, format_value

STATIC_FIELDS = ("plugin", "name", "model") + DATASET_FIELDS + ("data_format",) + TEMPLATE_FIELDS + ("custom_rewards",)
# What a preset or a cloned job fills in, then the seed: not the upload (a request keeps the stored path)
# nor the reward table (the Plugin Config builds it from the seed).
FILLED = tuple(f for f in STATIC_FIELDS if f not in ("upload", "custom_rewards"))


def build_request(svc: Service, static: dict[str, Any], params: dict[str, Any],
                  owner: str | None = None) -> dict[str, Any]:
    """The request from the STATIC_FIELDS values and the Plugin Config's; raises RequestError for a dataset
    not given."""
    request = {
        "plugin": static["plugin"],
        "name": (static["name"] or "").strip(),
        "model": (static["model"] or "").strip(),
        "dataset": dataset_value(svc, static, owner),
        "template": static["template"] or "",
        "completion_template": static["completion_template"] or "",
        "params": dict(params),
    }
    if format_value(static.get("data_format")):
        request["data_format"] = format_value(static["data_format"])
    if static.get("custom_rewards"):  # GRPO's own reward functions, from their table
        request["params"]["custom_rewards"] = static["custom_rewards"]
    return request


def form_from_request(request: dict[str, Any], version: int) -> list[Any]:
    """The FILLED fields' values and the Plugin Config's seed, in that order, from a preset or a past job's
    request."""
    fields = dataset_fields(request.get("dataset"))
    params = dict(request.get("params") or {})
    for key in ("device", "gpu_ids", "cpu_processes"):
        if request.get(key) is not None:
            params[key] = request[key]
    template = request.get("template")
    completion = request.get("completion_template")
    if template is None and fields["source"] == "Bundled sample":
        sample = data.SAMPLES[fields["sample"]]
        template, completion = sample.get("template", ""), sample.get("completion_template", "")
    fields.update(plugin=request.get("plugin"), name=request.get("name") or "", model=request.get("model") or "",
                  template=template or "", completion_template=completion or "",
                  data_format=request.get("data_format") or FORMAT_AUTO)
    seed = {"plugin": request.get("plugin"), "values": params, "version": version}
    return [fields[f] for f in FILLED] + [seed]
