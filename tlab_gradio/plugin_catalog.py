"""The plugins as the app offers them: the loaded manifests, each with its readiness on this machine and
its form (parameters with this machine's defaults, help, sections); one looked up by id for a request."""
from __future__ import annotations

from typing import Any

from . import gpus, installer, manifests
from .params import suggest
from .request_error import RequestError


def plugins() -> tuple[dict[str, manifests.Manifest], list[manifests.ManifestError]]:
    return manifests.load_all()


def plugin(plugin_id: str) -> manifests.Manifest:
    if not isinstance(plugin_id, str):  # a number or a list made TypeErrors below
        raise RequestError([f"`plugin` must be a plugin id as /list_plugins shows it, e.g. llama_sft_multi_gpu; "
                            f"got {type(plugin_id).__name__} {plugin_id!r:.60}"])
    found, errors = plugins()
    if plugin_id in found:
        return found[plugin_id]
    broken = [e for e in errors if e.plugin_id == plugin_id]
    if broken:
        raise RequestError([f"plugin {plugin_id!r} failed to load: {broken[0].message}"])
    raise RequestError([f"unknown plugin {plugin_id!r}{suggest(plugin_id, list(found))}; "
                        f"plugins: {', '.join(found) or 'none'}"])


def plugin_list() -> list[dict[str, Any]]:
    """Every plugin with its readiness and parameters; broken manifests with their error."""
    found, errors = plugins()
    count = len(gpus.list_gpus())
    rows = [_row(m, count) for m in found.values()]
    rows += [{"id": e.plugin_id, "name": e.file, "file": e.file, "error": e.message,
              "ready": False, "reason": f"manifest error: {e.message}", "reasons": [e.message]}
             for e in errors]
    return rows


def plugin_form(plugin_id: str) -> dict[str, Any]:
    """One plugin's entry of plugin_list (its form: parameters, sections, train_type, sample data); raises
    RequestError for a plugin that is unknown or fails to load now."""
    return _row(plugin(plugin_id), len(gpus.list_gpus()))


def _row(m: manifests.Manifest, gpu_count: int) -> dict[str, Any]:
    reasons = manifests.readiness(m, gpu_count)
    return {
        "id": m.id, "name": m.name, "type": m.type, "train_type": m.train_type,
        "version": m.version, "description": m.description,
        "devices": m.supported_hardware_architectures, "multi_gpu": m.multi_gpu,
        "model_architectures": m.model_architectures, "requirements": m.requirements,
        "ready": not reasons, "reason": "; ".join(reasons) or None, "reasons": reasons,
        "installable": bool(installer.missing(m)), "environment": m.environment,
        "parameters": parameter_specs(m),
        "parameter_groups": [g.model_dump(exclude_none=True) for g in m.groups()],  # the form's sections
        "sample_dataset": m.sample_dataset,  # the bundled sample a new form for this plugin starts on
        # A Transformer Lab manifest: listed, never startable while `runnable` is false.
        "origin": "transformerlab" if m.foreign else "app",
        "runnable": not m.unrunnable, "not_runnable": "; ".join(m.unrunnable) or None,
        "notes": m.notes,
    }


def parameter_specs(manifest: manifests.Manifest) -> dict[str, dict[str, Any]]:
    """Each parameter with its default for this machine, limits and help, in manifest order."""
    machine = machine_defaults()
    specs = {}
    for name, p in manifest.parameters.items():
        spec = p.model_dump(exclude_none=True)
        if name in machine and (p.enum is None or machine[name] in p.enum):
            spec["default"] = machine[name]
        elif p.default_on_cpu is not None and device_default(manifest) == "cpu":
            spec["default"] = p.default_on_cpu  # the form opens with what runs well here
        if p.default_on_cpu is not None:
            spec["default_on_cuda"] = p.default  # the form swaps them when the device is switched
        help_text = manifest.help(name)
        if help_text:
            spec["help"] = help_text
        widget = manifest.parameters_ui.get(name, {}).get("ui:widget")
        if widget:
            spec["widget"] = widget
        specs[name] = spec
    return specs


def machine_defaults() -> dict[str, Any]:
    """Defaults that depend on this machine: no GPU means cpu and full precision."""
    has_gpu = bool(gpus.list_gpus())
    return {"device": "cuda" if has_gpu else "cpu", "mixed_precision": "auto"}


def device_default(manifest: manifests.Manifest) -> str:
    """This machine's device where the plugin runs on it, else the plugin's own default."""
    spec = manifest.parameters["device"]
    machine = machine_defaults()["device"]
    return machine if spec.enum is None or machine in spec.enum else spec.default
