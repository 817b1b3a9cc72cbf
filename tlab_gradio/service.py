"""The operations the page and the API share. Every input is checked here, before
anything is launched; problems come back together, each naming the bad value.

`Service` never imports gradio: scripts and tests use it directly.
"""
from __future__ import annotations

import importlib.util
import threading
import time
from pathlib import Path
from typing import Any

from . import data, gpus, launcher, manifests, models, params, settings
from .jobs import Job, JobError, JobManager

REQUEST_KEYS = ("plugin", "name", "model", "dataset", "template", "completion_template", "params")


class RequestError(ValueError):
    """A job request that cannot be launched; `problems` lists each reason."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


def _sft_checks(p: dict, placement: gpus.Placement) -> list[str]:
    problems = []
    if p.get("load_in_4bit"):
        if not p.get("use_lora"):
            problems.append("`load_in_4bit` (QLoRA) needs `use_lora`: a 4-bit base cannot be fully fine-tuned")
        if placement.device != "cuda":
            problems.append("`load_in_4bit` (QLoRA) needs device `cuda`: bitsandbytes 4-bit runs on CUDA GPUs")
        if importlib.util.find_spec("bitsandbytes") is None:
            problems.append("`load_in_4bit` (QLoRA) needs the bitsandbytes package: pip install bitsandbytes")
    report_to = p.get("report_to")
    if report_to in ("wandb", "tensorboard") and importlib.util.find_spec(report_to) is None:
        problems.append(f"`report_to` {report_to} needs the {report_to} package: pip install {report_to}")
    if p.get("fuse_model") and not p.get("use_lora"):
        problems.append("`fuse_model` merges a LoRA adapter: it needs `use_lora`")
    return problems


PLUGIN_CHECKS = {"sft": _sft_checks}


class Service:
    def __init__(self, home: Path | None = None):
        self.home = Path(home or settings.home())
        self.jobs = JobManager(self.home)

    # --- plugins and machine ------------------------------------------------------
    def plugins(self) -> tuple[dict[str, manifests.Manifest], list[manifests.ManifestError]]:
        return manifests.load_all()

    def plugin(self, plugin_id: str) -> manifests.Manifest:
        found, errors = self.plugins()
        if plugin_id in found:
            return found[plugin_id]
        broken = [e for e in errors if Path(e.file).stem == plugin_id]
        if broken:
            raise RequestError([f"plugin {plugin_id!r} failed to load: {broken[0].message}"])
        raise RequestError([f"unknown plugin {plugin_id!r}{params.suggest(plugin_id, list(found))}; "
                            f"plugins: {', '.join(found) or 'none'}"])

    def plugin_list(self) -> list[dict[str, Any]]:
        found, errors = self.plugins()
        count = len(gpus.list_gpus())
        rows = []
        for m in found.values():
            reasons = manifests.readiness(m, count)
            rows.append({
                "id": m.id, "name": m.name, "type": m.type, "train_type": m.train_type,
                "description": m.description, "devices": m.supported_hardware_architectures,
                "multi_gpu": m.multi_gpu, "ready": not reasons, "reasons": reasons,
            })
        rows += [{"id": Path(e.file).stem, "file": e.file, "error": e.message, "ready": False} for e in errors]
        return rows

    def gpu_info(self) -> list[dict]:
        return [g.as_dict() for g in gpus.list_gpus(refresh=True)]

    def machine_defaults(self) -> dict[str, Any]:
        """Defaults that depend on this machine: no GPU means cpu and full precision."""
        has_gpu = bool(gpus.list_gpus())
        return {"device": "cuda" if has_gpu else "cpu", "mixed_precision": "auto"}

    # --- checking a request -------------------------------------------------------
    def prepare(self, request: dict[str, Any]) -> dict[str, Any]:
        """Check everything and return the job config, or raise RequestError listing every problem."""
        if not isinstance(request, dict):
            raise RequestError(["the request must be an object with plugin, name, model, dataset, params"])
        problems: list[str] = []
        for key in request:
            if key not in REQUEST_KEYS:
                problems.append(f"unknown request field `{key}`{params.suggest(key, list(REQUEST_KEYS))}")
        manifest = self.plugin(str(request.get("plugin") or ""))
        available = gpus.list_gpus()
        problems += [f"plugin {manifest.name} is not ready: {r}" for r in manifests.readiness(manifest, len(available))]

        values = dict(request.get("params") or {})
        values.setdefault("device", self.machine_defaults()["device"])
        clean: dict[str, Any] = {}
        try:
            clean = params.validate(manifest, values)
        except params.ParamError as exc:
            problems += exc.problems

        placement = None
        precision = None
        if clean:
            try:
                placement = gpus.resolve(clean["device"], clean.get("gpu_ids"), clean.get("cpu_processes"), available)
            except gpus.DeviceError as exc:
                problems.append(str(exc))
        if placement is not None:
            if placement.device not in manifest.supported_hardware_architectures:
                problems.append(f"{manifest.name} does not run on {placement.device}")
            if placement.num_processes > 1 and not manifest.multi_gpu:
                problems.append(f"{manifest.name} runs on one GPU or process; {placement.num_processes} were chosen")
            precision = launcher.mixed_precision_for(placement, clean.get("mixed_precision"))
            if precision == "bf16" and placement.device == "cuda" and not all(g.supports_bf16 for g in placement.gpus):
                problems.append("`mixed_precision` bf16: not every chosen GPU supports bf16 (needs Ampere or newer); use fp16")
            if precision == "fp16" and placement.device == "cpu":
                problems.append("`mixed_precision` fp16 does not run on cpu; use `no` or bf16")
            problems += PLUGIN_CHECKS.get(manifest.train_type, lambda *_: [])(clean, placement)

        model_ref = None
        try:
            model_ref = models.resolve(request.get("model"))
            models.check_supported(model_ref, manifest.model_architectures, manifest.name)
        except models.ModelError as exc:
            problems.append(str(exc))

        spec = templates = None
        dataset_info: dict[str, Any] = {}
        try:
            spec = data.parse_spec(request.get("dataset"))
            templates = data.templates_for(spec, request.get("template"), request.get("completion_template"))
            dataset_info = data.check(spec, templates)
        except data.DataError as exc:
            problems.append(str(exc))

        name = str(request.get("name") or "").strip() or f"{manifest.train_type}-{time.strftime('%Y%m%d-%H%M%S')}"
        if len(name) > 200:
            problems.append("`name` is longer than 200 characters")
        if problems:
            raise RequestError(problems)
        return {
            "name": name,
            "plugin": manifest.id,
            "train_type": manifest.train_type,
            "trainer": str(manifest.trainer_path),
            "model": model_ref.path,
            "model_source": model_ref.source,
            "embedded_model": model_ref.source == "embedded",
            "architecture": model_ref.architecture,
            "dataset": spec.as_dict(),
            "dataset_info": dataset_info,
            "template": templates.template,
            "completion_template": templates.completion_template,
            "device": placement.device,
            "gpu_ids": placement.physical_ids,
            "num_processes": placement.num_processes,
            "mixed_precision": precision,
            "params": clean,
        }

    # --- jobs ---------------------------------------------------------------------
    def start_job(self, request: dict[str, Any]) -> dict[str, Any]:
        """Check and queue a job; returns at once. Raises RequestError (nothing is created)."""
        config = self.prepare(request)
        job = self.jobs.create(config["name"], config["plugin"], config, config["gpu_ids"])
        return job.as_dict()

    def job(self, job_id: int) -> dict[str, Any]:
        job = self.jobs.get(job_id)
        out = job.as_dict()
        out["progress"] = _read_json(job.job_dir / "progress.json")
        out["result"] = _read_json(job.job_dir / "result.json")
        return out

    def list_jobs(self, limit: int = 200) -> list[dict[str, Any]]:
        return [j.as_dict() for j in self.jobs.list(limit)]

    def job_log(self, job_id: int, lines: int = 200) -> list[str]:
        return self.jobs.log_tail(job_id, lines)

    def stop_job(self, job_id: int) -> dict[str, Any]:
        return self.jobs.stop(job_id).as_dict()

    def resume_job(self, job_id: int) -> dict[str, Any]:
        return self.jobs.resume(job_id).as_dict()


def _read_json(path: Path) -> dict | None:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


_SERVICES: dict[Path, Service] = {}
_SERVICES_LOCK = threading.Lock()


def get_service() -> Service:
    """One Service (and so one scheduler) per workspace in this process."""
    home = settings.home()
    with _SERVICES_LOCK:
        if home not in _SERVICES:
            _SERVICES[home] = Service(home)
        return _SERVICES[home]


__all__ = ["Service", "RequestError", "JobError", "Job", "get_service"]
