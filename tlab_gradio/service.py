"""The operations the page and the API share. Every input is checked here, before
anything is launched; problems come back together, each naming the bad value.

`Service` never imports gradio: scripts and tests use it directly.
"""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from . import (data, gpus, installer, jobfiles, launcher, logs, manifests, memory, models, params, plugin_code,
               reward_files, settings)
from .jobfiles import read_json
from .job_spec import DataRef, Distributed, JobSpec, Launch, ModelRef
from .jobs import Job, JobError, JobManager

REQUEST_KEYS = ("plugin", "name", "model", "dataset", "template", "completion_template",
                "device", "gpu_ids", "cpu_processes", "params")
TOP_LEVEL_PARAMS = ("device", "gpu_ids", "cpu_processes")  # also accepted inside `params`
PRESET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,79}$")


class RequestError(ValueError):
    """A job request that cannot be launched; `problems` lists each reason."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


def _logging_checks(p: dict, placement: gpus.Placement) -> list[str]:
    report_to = p.get("report_to")
    if report_to in ("wandb", "tensorboard") and importlib.util.find_spec(report_to) is None:
        return [f"`report_to` {report_to} needs the {report_to} package: pip install {report_to}"]
    return []




def _distributed_checks(p: dict, placement: gpus.Placement, manifest: manifests.Manifest) -> list[str]:
    """Strategy and multi-machine settings that cannot work, refused with the reason."""
    problems = []
    dist = Distributed.from_params(p)
    strategy, machines, rank = dist.strategy, dist.num_machines, dist.machine_rank
    total = placement.num_processes * machines
    if strategy.startswith("deepspeed"):
        if placement.device != "cuda":
            problems.append(f"{strategy}: DeepSpeed needs CUDA GPUs; on cpu use ddp (or fsdp)")
        if importlib.util.find_spec("deepspeed") is None:
            problems.append(f"{strategy} needs the deepspeed package: pip install deepspeed")
    if strategy == "fsdp" and placement.device != "cuda":
        # accelerate applies FSDP on GPUs only: on cpu the run would quietly be plain data parallel.
        problems.append("fsdp needs CUDA GPUs (accelerate shards only on GPUs; on cpu it would silently run "
                        "as plain data parallel): use ddp on cpu")
    elif strategy == "fsdp" and total < 2:
        problems.append("fsdp with a single process shards nothing: use ddp, or two or more GPUs")
    if strategy in ("fsdp", "deepspeed_zero3") and p.get("load_in_4bit"):
        problems.append(f"QLoRA (load_in_4bit) is not supported with {strategy} here; use ddp or deepspeed_zero2")
    if rank >= machines:
        problems.append(f"machine_rank {rank} must be below num_machines {machines} (ranks count from 0)")
    if machines > 1:
        if not (p.get("main_process_ip") or "").strip():
            problems.append("with several machines, main_process_ip (the main machine's address) is required")
        if not p.get("main_process_port"):
            problems.append("with several machines, main_process_port is required: the same port on every machine")
    return problems


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
        broken = [e for e in errors if e.plugin_id == plugin_id]
        if broken:
            raise RequestError([f"plugin {plugin_id!r} failed to load: {broken[0].message}"])
        raise RequestError([f"unknown plugin {plugin_id!r}{params.suggest(plugin_id, list(found))}; "
                            f"plugins: {', '.join(found) or 'none'}"])

    def plugin_list(self) -> list[dict[str, Any]]:
        """Every plugin with its readiness and parameters; broken manifests with their error."""
        found, errors = self.plugins()
        count = len(gpus.list_gpus())
        rows = []
        for m in found.values():
            reasons = manifests.readiness(m, count)
            rows.append({
                "id": m.id, "name": m.name, "type": m.type, "train_type": m.train_type,
                "version": m.version, "description": m.description,
                "devices": m.supported_hardware_architectures, "multi_gpu": m.multi_gpu,
                "model_architectures": m.model_architectures, "requirements": m.requirements,
                "ready": not reasons, "reason": "; ".join(reasons) or None, "reasons": reasons,
                "installable": bool(installer.missing(m)), "environment": m.environment,
                "parameters": self.parameter_specs(m),
                "parameter_groups": [g.model_dump(exclude_none=True) for g in m.groups()],  # the form's sections
                # A Transformer Lab manifest: listed, never startable while `runnable` is false.
                "origin": "transformerlab" if m.foreign else "app",
                "runnable": not m.unrunnable, "not_runnable": "; ".join(m.unrunnable) or None,
                "notes": m.notes,
            })
        rows += [{"id": e.plugin_id, "name": e.file, "file": e.file, "error": e.message,
                  "ready": False, "reason": f"manifest error: {e.message}", "reasons": [e.message]}
                 for e in errors]
        return rows

    def parameter_specs(self, manifest: manifests.Manifest) -> dict[str, dict[str, Any]]:
        """Each parameter with its default for this machine, limits and help, in manifest order."""
        machine = self.machine_defaults()
        specs = {}
        for name, p in manifest.parameters.items():
            spec = p.model_dump(exclude_none=True)
            if name in machine and (p.enum is None or machine[name] in p.enum):
                spec["default"] = machine[name]
            help_text = manifest.help(name)
            if help_text:
                spec["help"] = help_text
            widget = manifest.parameters_ui.get(name, {}).get("ui:widget")
            if widget:
                spec["widget"] = widget
            specs[name] = spec
        return specs

    def install_plugin(self, plugin_id: str):
        """Install what the plugin needs; yields pip's output lines, raises installer.InstallError."""
        manifest = self.plugin(plugin_id)
        if settings.hosted():
            raise RequestError(["installing packages is turned off on this server"])
        if not installer.missing(manifest):
            yield f"[tlab] {manifest.name}: every requirement is already installed"
            return
        yield from installer.install(manifest)

    def gpu_info(self) -> list[dict]:
        return [g.as_dict() for g in gpus.list_gpus(refresh=True)]

    def machine_defaults(self) -> dict[str, Any]:
        """Defaults that depend on this machine: no GPU means cpu and full precision."""
        has_gpu = bool(gpus.list_gpus())
        return {"device": "cuda" if has_gpu else "cpu", "mixed_precision": "auto"}

    # --- checking a request -------------------------------------------------------
    def _values(self, request: dict[str, Any], problems: list[str], manifest: manifests.Manifest) -> dict[str, Any]:
        """The parameter values of a request: `params`, plus device/gpu_ids/cpu_processes given at the top."""
        values = request.get("params") or {}
        if not isinstance(values, dict):
            problems.append("`params` must be an object of parameter names and values")
            values = {}
        values = manifests.rename_tlab(manifest, dict(values), problems)  # Transformer Lab's names -> ours
        for key in TOP_LEVEL_PARAMS:
            if request.get(key) is not None:
                if values.get(key) is not None and values[key] != request[key]:
                    problems.append(f"`{key}` is given twice with different values ({request[key]!r}, {values[key]!r})")
                values[key] = request[key]
        if values.get("device") is None:
            values["device"] = self._device_default(manifest)
        return values

    def _device_default(self, manifest: manifests.Manifest) -> str:
        spec = manifest.parameters["device"]
        machine = self.machine_defaults()["device"]
        return machine if spec.enum is None or machine in spec.enum else spec.default

    def _check_request_shape(self, request: Any) -> list[str]:
        if not isinstance(request, dict):
            raise RequestError(["the request must be a JSON object with plugin, name, model, dataset, params"])
        return [f"unknown request field `{key}`{params.suggest(key, list(REQUEST_KEYS))}"
                for key in request if key not in REQUEST_KEYS]

    def prepare(self, request: dict[str, Any], check_data: bool = True) -> JobSpec:
        """Check everything and return the job's spec, or raise RequestError listing every problem.

        `check_data=False` skips loading the dataset (the live command preview does that)."""
        problems = self._check_request_shape(request)
        manifest = self.plugin(str(request.get("plugin") or ""))
        if manifest.unrunnable:  # a Transformer Lab manifest this app cannot run: no trainer, other names
            raise RequestError([f"plugin {manifest.name} cannot run in this app: {r}" for r in manifest.unrunnable])
        available = gpus.list_gpus()
        not_ready = manifests.readiness(manifest, len(available))
        if not_ready:  # nothing else matters until it can run at all
            raise RequestError([f"plugin {manifest.name} is not ready: {r}" for r in not_ready])

        values = self._values(request, problems, manifest)
        # GRPO's own reward functions: a list, not a manifest parameter; checked apart, kept in params.
        choices, custom_problems = reward_files.parse_choices(
            values.pop("custom_rewards", None) if manifest.train_type == "grpo" else None)
        problems += custom_problems
        clean: dict[str, Any] = {}
        try:
            clean = params.validate(manifest, values)
            if choices:
                clean["custom_rewards"] = [c.as_dict() for c in choices]
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
            problems += plugin_code.check(manifest.trainer_path)(clean, placement)  # beside its trainer
            problems += _logging_checks(clean, placement)
            if "distributed_strategy" in clean or "num_machines" in clean:
                problems += _distributed_checks(clean, placement, manifest)

        model_ref = None
        try:
            if settings.hosted() and (request.get("model") or "").strip() and _looks_local(request["model"]):
                raise models.ModelError("local model folders are turned off on this server; give a Hub id")
            model_ref = models.resolve(request.get("model"))
            models.check_supported(model_ref, manifest.model_architectures, manifest.name)
        except models.ModelError as exc:
            problems.append(str(exc))

        spec = templates = None
        dataset_info: dict[str, Any] = {}
        try:
            spec = data.parse_spec(request.get("dataset") or manifest.sample_dataset)
            if settings.hosted() and spec.source == "file" and not _inside(spec.name, settings.uploads_dir()):
                raise data.DataError("local dataset paths are turned off on this server; upload the file instead")
            templates = data.templates_for(spec, request.get("template"), request.get("completion_template"))
            if manifest.train_type == "grpo" and not (templates.template.strip() and
                                                      templates.completion_template.strip()):
                raise data.DataError("GRPO needs an input template (e.g. `{{question}}`) and an answer template "
                                     "(e.g. `{{answer}}`)")
            if check_data:
                dataset_info = data.check(spec, templates)
        except data.DataError as exc:
            problems.append(str(exc))

        if choices and clean:
            problems += self._custom_reward_problems(choices, clean, spec, templates, model_ref, manifest)

        name = str(request.get("name") or "").strip() or f"{manifest.train_type}-{time.strftime('%Y%m%d-%H%M%S')}"
        if len(name) > 200:
            problems.append("`name` is longer than 200 characters")
        if problems:
            raise RequestError(problems)
        return JobSpec(
            name=name, plugin=manifest.id, train_type=manifest.train_type,
            model=ModelRef(path=model_ref.path, source=model_ref.source, architecture=model_ref.architecture,
                           config=model_ref.config),
            data=DataRef(dataset=spec.as_dict(), template=templates.template,
                         completion_template=templates.completion_template, info=dataset_info),
            launch=Launch(trainer=str(manifest.trainer_path), device=placement.device, gpu_ids=placement.physical_ids,
                          num_processes=placement.num_processes, mixed_precision=precision,
                          distributed=Distributed.from_params(clean),
                          # A plugin with its own environment runs with that environment's python and accelerate.
                          python=str(installer.env_python(manifest.environment)) if manifest.environment else None),
            params=clean,
            request={k: v for k, v in request.items() if k in REQUEST_KEYS},  # for clone and presets
        )

    # --- jobs ---------------------------------------------------------------------
    def start_job(self, request: dict[str, Any]) -> dict[str, Any]:
        """Check and queue a job; returns at once. Raises RequestError (nothing is created)."""
        spec = self.prepare(request)
        choices, _ = reward_files.parse_choices(spec.params.get("custom_rewards"))
        job = self.jobs.create(spec, files=reward_files.job_files(self.home, choices))  # the job's own copies
        return job.as_dict()

    # --- your own reward functions (GRPO) -----------------------------------------
    def reward_functions(self) -> dict[str, Any]:
        """The built-in rewards, and each reward file of the workspace with its functions."""
        from .rewards import SCORERS

        allowed = not settings.hosted()
        return {"builtin": list(SCORERS), "custom_allowed": allowed,
                "files": reward_files.list_files(self.home) if allowed else []}

    def save_reward_file(self, name: str, source: str | bytes) -> dict[str, Any]:
        if settings.hosted():
            raise RequestError([reward_files.HOSTED_REFUSAL])
        try:
            return reward_files.save(self.home, name, source)
        except ValueError as exc:
            raise RequestError([str(exc)]) from None

    def _custom_reward_problems(self, choices, clean, spec, templates, model_ref, manifest) -> list[str]:
        """Hosted refusal, missing files, name clashes, then each function called on a sample completion
        in a child process (the web process never imports a user's file)."""
        from .rewards import SCORERS, Markers, reference_answer, system_prompt

        if settings.hosted():
            return [reward_files.HOSTED_REFUSAL]
        builtin = [n for n in SCORERS if clean.get(f"reward_{n}")]
        problems = reward_files.missing_files(self.home, choices) + reward_files.name_clashes(choices, builtin)
        if problems:
            return problems
        question, answer = "What is 6 times 7?", "42"
        if spec is not None and templates is not None and spec.source == "sample":
            try:  # the job's own first row, when it is at hand
                row = data._sample_rows(spec.name)[0]
                question = data.render(templates.template, row)
                answer = reference_answer(data.render(templates.completion_template, row))
            except Exception:  # noqa: BLE001 - the fixed sample will do
                pass
        markers = Markers(clean["reasoning_start"], clean["reasoning_end"], clean["answer_start"], clean["answer_end"])
        system = system_prompt(clean.get("system_template"), markers)  # as the trainer builds it
        sample = reward_files.sample(question, answer, system, markers, _chat_model(model_ref))
        python = str(installer.env_python(manifest.environment)) if manifest.environment else None
        return reward_files.probe(self.home, choices, sample, python)

    def preview_data(self, dataset: Any, template: str | None = None, completion_template: str | None = None,
                     rows: int = 3) -> dict[str, Any]:
        """First rows and columns of a dataset and, if the templates fit, the rendered examples.
        A template that does not fit comes back as `template_error` next to the rows."""
        try:
            spec = data.parse_spec(dataset)
            if settings.hosted() and spec.source == "file" and not _inside(spec.name, settings.uploads_dir()):
                raise data.DataError("local dataset paths are turned off on this server; upload the file instead")
            out = data.preview(spec, None, rows)
            templates = data.templates_for(spec, template, completion_template)
            try:
                templates.check(out["columns"])
                out["rendered"] = [templates.format_row(r) for r in out["rows"]]
            except data.DataError as exc:
                out["template_error"] = str(exc)
            out["templates"] = {"template": templates.template, "completion_template": templates.completion_template}
            return out
        except data.DataError as exc:
            raise RequestError([str(exc)]) from None

    def launch_preview(self, request: dict[str, Any]) -> dict[str, Any]:
        """What the form shows before Start, from one check of the request: the command and the
        memory estimate."""
        spec = self.prepare(request, check_data=False)
        return {"command": launcher.preview(spec.launch), "memory": self._memory(spec)}

    def memory_estimate(self, request: dict[str, Any]) -> dict[str, Any]:
        """GPU memory per device the job should need, next to each chosen GPU's free memory."""
        return self._memory(self.prepare(request, check_data=False))

    def _memory(self, spec: JobSpec) -> dict[str, Any]:
        p = spec.params
        shape = memory.Shape.from_config(spec.model.config)
        chosen = [g for g in gpus.list_gpus(refresh=True) if g.physical in spec.launch.gpu_ids]
        free = [{"index": g.index, "name": g.name, "free_gb": round((g.memory_total_mb - g.memory_used_mb) / 1024, 2)}
                for g in chosen]
        kwargs = memory.job_kwargs(p, spec.launch, plugin_code.trains_lora(Path(spec.launch.trainer), p))
        checkpointing = p.get("gradient_checkpointing")
        plan = None
        if isinstance(checkpointing, str):  # "auto" / "on" / "off": the trainer plans as memory.plan does
            budget = min(g["free_gb"] for g in free) if free else None
            if budget is not None and p.get("max_gpu_memory_gb"):
                budget = min(budget, p["max_gpu_memory_gb"])
            plan = memory.plan(shape, None if budget is None else 0.9 * budget, checkpointing=checkpointing,
                               split=not kwargs["strategy"].startswith("deepspeed"), **kwargs)
            est = plan.estimate.as_dict()
        else:
            est = memory.estimate(shape, checkpointing=bool(checkpointing or p.get("fsdp_activation_checkpointing")),
                                  **kwargs).as_dict()
        est["gpus"] = free
        est["disk"] = self._disk(shape, p, kwargs, est["trainable_parameters"], spec.launch.device)
        if plan:
            est["plan"] = plan.describe()
        short = [g for g in free if g["free_gb"] < est["total_gb"]]
        est["fits"] = None if not chosen else not short
        est["warning"] = (f"may not fit: about {est['total_gb']:.1f} GiB per GPU needed, GPU "
                          f"{', '.join(str(g['index']) for g in short)} has "
                          f"{min(g['free_gb'] for g in short):.1f} GiB free" if short else None)
        return est

    def _disk(self, shape: memory.Shape, p: dict[str, Any], kwargs: dict[str, Any], trainable: int,
              device: str) -> dict[str, Any]:
        """What the job will write next to the workspace disk's free space, with a warning when the
        checkpoints and output will not fit (a full disk fails a run at its first checkpoint)."""
        dtype = p.get("model_dtype", "auto")
        sixteen = dtype == "bfloat16" or (dtype == "auto" and "model_dtype" in p and device == "cuda")
        limit, every, steps = p.get("save_total_limit"), p.get("save_steps"), p.get("max_steps") or -1
        count = limit or None
        if steps > 0 and every:
            saves = -(-steps // every)  # one every save_steps, and one at the end
            count = min(count, saves) if count else saves
        est = memory.disk(shape, use_lora=kwargs["use_lora"], trainable=trainable, weight_bytes=2 if sixteen else 4,
                          checkpoints=count, fuse=bool(p.get("fuse_model"))).as_dict()
        free = shutil.disk_usage(self.home).free / memory.GB
        est["free_gb"] = round(free, 1)
        need = est["total_gb"] if est["total_gb"] is not None else est["checkpoint_gb"] + est["output_gb"]
        est["warning"] = (f"may not fit on disk: checkpoints and output need about {need:.1f} GB, the workspace "
                          f"disk has {free:.1f} GB free" if need > free else None)
        return est

    def job(self, job_id: int) -> dict[str, Any]:
        job = self.jobs.get(job_id)
        out = job.as_dict()
        out["progress"] = read_json(job.job_dir / jobfiles.PROGRESS)
        out["result"] = read_json(job.job_dir / jobfiles.RESULT)
        return out

    def job_status(self, job_id: int) -> dict[str, Any]:
        """The API's compact status: state, step/total, percent, ETA, last metrics, exit code, error."""
        job = self.jobs.get(job_id)
        progress = read_json(job.job_dir / jobfiles.PROGRESS) or {}
        last = logs.last_metrics(job.metrics_path, 1)
        error = None
        if job.state == "FAILED":
            tail = [line for line in logs.tail(job.log_path, 30) if line.strip()]
            error = (job.reason or "failed") + ("\n" + "\n".join(tail[-15:]) if tail else "")
        return {
            "job_id": job.id, "name": job.name, "plugin": job.plugin, "state": job.state,
            "step": progress.get("step", 0), "total_steps": progress.get("max_steps"),
            "progress": progress.get("percent", 100.0 if job.state == "COMPLETE" else 0.0),
            "eta_s": progress.get("eta_seconds"), "world_size": progress.get("world_size"),
            "last_metrics": last[0] if last else None, "exit_code": job.exit_code,
            "reason": job.reason, "error": error, "attempts": job.attempts,
            "created": job.created, "started": job.started, "finished": job.finished,
        }

    def clone_request(self, job_id: int) -> dict[str, Any]:
        """The request that made a job, to start it again (the UI loads it into the form)."""
        job = self.jobs.get(job_id)
        request = dict(job.spec.request or {"plugin": job.plugin, "params": job.spec.params})
        request["name"] = f"{job.name} (copy)"
        return request

    # --- presets ------------------------------------------------------------------
    def _preset_path(self, name: str) -> Path:
        name = (name or "").strip()
        if not PRESET_NAME.match(name):
            raise RequestError([f"preset name {name!r}: use letters, digits, spaces, '_', '.', '-' (up to 80)"])
        return self.home / "presets" / f"{name}.json"

    def save_preset(self, name: str, request: dict[str, Any]) -> list[str]:
        problems = self._check_request_shape(request)
        if problems:
            raise RequestError(problems)
        self.plugin(str(request.get("plugin") or ""))  # a preset names a real plugin
        path = self._preset_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        jobfiles.write_json_atomic(path, {k: v for k, v in request.items() if k in REQUEST_KEYS})
        return self.list_presets()

    def list_presets(self) -> list[str]:
        folder = self.home / "presets"
        return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []

    def load_preset(self, name: str) -> dict[str, Any]:
        path = self._preset_path(name)
        if not path.is_file():
            raise RequestError([f"no preset named {name!r}; presets: {', '.join(self.list_presets()) or 'none'}"])
        return json.loads(path.read_text())

    def delete_preset(self, name: str) -> list[str]:
        self._preset_path(name).unlink(missing_ok=True)
        return self.list_presets()

    def list_jobs(self, limit: int = 200) -> list[dict[str, Any]]:
        return [j.as_dict() for j in self.jobs.list(limit)]

    def job_log(self, job_id: int, lines: int = 200) -> list[str]:
        return self.jobs.log_tail(job_id, lines)

    def stop_job(self, job_id: int) -> dict[str, Any]:
        return self.jobs.stop(job_id).as_dict()

    def resume_job(self, job_id: int) -> dict[str, Any]:
        return self.jobs.resume(job_id).as_dict()

    def delete_job(self, job_id: int) -> dict[str, Any]:
        """Delete a finished job: its row in the history and its whole folder."""
        if settings.hosted():
            raise RequestError(["deleting jobs is turned off on this server"])
        freed = self.jobs.delete(job_id)
        return {"job_id": int(job_id), "deleted": True, "freed_mb": round(freed / 2**20, 1)}


def _chat_model(model_ref) -> bool:
    """Does the trainer give the model chat messages (a chat template), or plain text? A local folder
    says; the embedded model and Hub models are taken to have one."""
    if model_ref is None or model_ref.source != "local":
        return True
    folder = Path(model_ref.path)
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    return bool((read_json(folder / "tokenizer_config.json") or {}).get("chat_template"))


def _looks_local(text: str) -> bool:
    text = text.strip()
    return text.startswith(("/", ".", "~")) or Path(text).expanduser().exists()


def _inside(path: str, folder: Path) -> bool:
    try:
        Path(path).resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


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
