"""Checking a job request: every input is checked here, before anything is launched, and the problems come
back together, each naming the bad value (RequestError). What passes becomes the job's spec (job_spec.JobSpec).

The checks, in order: the request's shape and its plugin (runnable, ready on this machine); its parameters
against the manifest (Transformer Lab's names accepted); where it runs (device, GPU ids, processes,
precision) and the plugin's own checks beside its trainer (plugin_code); logging and distributed settings;
the model; the dataset and templates; what would fail once started (preflight: the held-out split against
the data, assistant-only loss against the model's chat template); your own reward functions, called once in a
child process.
"""
from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from . import (data, gpus, inputs, installer, launch_settings, launcher, manifests, models, params, plugin_catalog,
               plugin_code, preflight, reward_files, settings)
from .jobfiles import read_json
from .job_spec import DataRef, Distributed, JobSpec, Launch, ModelRef, Slurm
from .request_error import RequestError

REQUEST_KEYS = ("plugin", "name", "model", "dataset", "template", "completion_template", "data_format",
                "device", "gpu_ids", "cpu_processes", "params")
TOP_LEVEL_PARAMS = ("device", "gpu_ids", "cpu_processes")  # also accepted inside `params`

# Hosted mode's hard caps: a public demo shares one machine, so no request may ask for more than a small run.
# (The manifests' own maxima are for an operator's machine: max_length 262144, batch 1024, 64 cpu processes.)
HOSTED_CAPS = {
    "max_steps": 1000, "num_train_epochs": 3, "max_samples": 100_000,
    "max_length": 2048, "max_seq_length": 2048, "max_prompt_length": 1024, "max_completion_length": 1024,
    "per_device_train_batch_size": 32, "gradient_accumulation_steps": 16, "generation_batch_size": 256,
    "num_generations": 16, "num_iterations": 4, "lora_r": 64, "save_total_limit": 3,
    "cpu_processes": 4, "num_machines": 1,
}
HOSTED_MAX_PROCESSES = 8  # processes of one job, GPUs included


def _hosted_caps(p: dict, placement: gpus.Placement | None) -> list[str]:
    """Hosted mode: each value over its cap, naming the field and the cap; one machine only (another machine's
    address would make this server connect where a visitor chose)."""
    problems = [f"`{key}` {p[key]!r} is over this server's cap of {cap} (hosted mode)"
                for key, cap in HOSTED_CAPS.items()
                if isinstance(p.get(key), (int, float)) and not isinstance(p.get(key), bool) and p[key] > cap]
    if (p.get("main_process_ip") or "").strip():
        problems.append("`main_process_ip`: training across machines is turned off on this server (hosted mode)")
    if placement is not None and placement.num_processes > HOSTED_MAX_PROCESSES:
        problems.append(f"{placement.num_processes} processes is over this server's cap of {HOSTED_MAX_PROCESSES} "
                        "(hosted mode)")
    return problems


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


def _slurm_choice(p: dict, problems: list[str]) -> Slurm | None:
    """The request's Run on: None for this machine, else where on the Slurm cluster (refused with the reason when
    the app is not set up for Slurm, in hosted mode, or with the by-hand machine settings)."""
    run_on = p.get("run_on") or launch_settings.THIS_MACHINE
    if run_on == launch_settings.THIS_MACHINE:
        return None
    if not settings.slurm():
        problems.append(f"`run_on` {run_on!r}: this app is not set up for Slurm (TLAB_SLURM=1, sbatch on PATH)")
        return None
    if settings.hosted():
        problems.append("`run_on`: Slurm is turned off on this server (hosted mode)")
        return None
    if (p.get("num_machines") or 1) > 1 or (p.get("main_process_ip") or "").strip():
        problems.append("`run_on` Slurm: set Slurm Nodes instead of num_machines / main_process_ip (Slurm picks "
                        "the machines and the main one)")
    partition = run_on.partition(":")[2] if run_on.startswith(launch_settings.SLURM + ":") else ""
    return Slurm(partition=partition, nodes=p.get("slurm_nodes") or 1, gpus_per_node=p.get("slurm_gpus_per_node") or 1,
                 time_limit=p.get("slurm_time_limit") or "", account=settings.slurm_account(),
                 qos=settings.slurm_qos())


def _distributed(p: dict, on_slurm: Slurm | None) -> Distributed:
    dist = Distributed.from_params(p)
    if on_slurm is None:
        return dist
    return dist.model_copy(update={"num_machines": on_slurm.nodes, "machine_rank": 0, "main_process_ip": ""})


def _values(request: dict[str, Any], problems: list[str], manifest: manifests.Manifest) -> dict[str, Any]:
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
        values["device"] = plugin_catalog.device_default(manifest)
    return values


class _Fields(BaseModel):
    """The request's fields and their types, checked before any is used: `'int' object has no attribute 'strip'`
    and a dict template silently dropped came from using them unchecked. The plugin's parameters are checked
    against its manifest (params.py), the dataset object's keys by data.parse_spec."""

    model_config = ConfigDict(strict=True, extra="allow")  # unknown fields: check_shape names them

    plugin: str
    name: str | None = None
    model: str | None = None
    dataset: str | dict | None = None
    template: str | None = None
    completion_template: str | None = None
    data_format: str | None = None
    params: dict | None = None


EXPECTED = {
    "plugin": "a plugin id as /list_plugins shows it, e.g. llama_sft_multi_gpu",
    "name": "text: the job's name",
    "model": "text: a Hub id like org/name, a local folder, or empty for the embedded model",
    "dataset": "a sample name, a file path or a Hub id, or an object with source, name, subset, split",
    "template": "text: a Jinja template such as {{instruction}}",
    "completion_template": "text: a Jinja template such as {{output}}",
    "data_format": "text: the dataset's format when it is not the one found (alpaca, sharegpt, messages, "
                   "messages:COLUMN, prompt_completion, question_answer, text), or empty",
    "params": "an object of parameter names and values",
}
NAME_CHARS = 200
MODEL_CHARS = 4096  # a path (PATH_MAX) or a Hub id


def check_shape(request: Any) -> list[str]:
    """Unknown top-level fields, each with a suggestion. A request that is no object, or a field of the wrong type
    or with characters no name may hold, is refused at once (RequestError): nothing after may use it."""
    if not isinstance(request, dict):
        raise RequestError(["the request must be a JSON object with plugin, name, model, dataset, params; got "
                            f"{type(request).__name__} {inputs.short(request)}"])
    problems = [f"unknown request field `{key}`{params.suggest(key, list(REQUEST_KEYS))}"
                for key in request if key not in REQUEST_KEYS]
    try:
        _Fields.model_validate(request)
    except ValidationError as exc:
        for field in dict.fromkeys(str(e["loc"][0]) for e in exc.errors()):
            got = f"{type(request[field]).__name__} {inputs.short(request[field])}" if field in request else "nothing"
            problems.append(f"`{field}` must be {EXPECTED[field]}; got {got}")
        raise RequestError(problems) from None
    typed = problems[:]
    for field, limit in (("name", NAME_CHARS), ("model", MODEL_CHARS)):
        try:
            inputs.printable(field, (request.get(field) or "").strip(), limit)
        except ValueError as exc:
            typed.append(str(exc))
    if len(typed) > len(problems):
        raise RequestError(typed)
    return problems


def prepare(home: Path, request: dict[str, Any], check_data: bool = True, uploads: Path | None = None,
            available: list[gpus.GPU] | None = None) -> JobSpec:
    """Check everything and return the job's spec, or raise RequestError listing every problem.

    `check_data=False` skips loading the dataset (the live command preview does that). In hosted mode a dataset
    file must be inside `uploads` (the visitor's own; default: the workspace's uploads folder). `available`: the
    GPUs the job will have, when not this machine's (a SkyPilot task's node, skypilot.py)."""
    problems = check_shape(request)
    manifest = plugin_catalog.plugin(request["plugin"])
    if manifest.unrunnable:  # a Transformer Lab manifest this app cannot run: no trainer, other names
        raise RequestError([f"plugin {manifest.name} cannot run in this app: {r}" for r in manifest.unrunnable])
    available = gpus.list_gpus() if available is None else available
    not_ready = manifests.readiness(manifest, len(available))
    if not_ready:  # nothing else matters until it can run at all
        raise RequestError([f"plugin {manifest.name} is not ready: {r}" for r in not_ready])

    values = _values(request, problems, manifest)
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
    on_slurm = _slurm_choice(clean, problems) if clean else None
    if clean and on_slurm is not None and clean["device"] == "cuda":  # the GPUs are the cluster's, not ours
        placement = gpus.Placement("cuda", (), on_slurm.gpus_per_node)
    elif clean:
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
            problems.append("`mixed_precision` bf16: not every chosen GPU supports bf16 (needs Ampere or newer); "
                            "use fp16")
        if precision == "fp16" and placement.device == "cpu":
            problems.append("`mixed_precision` fp16 does not run on cpu; use `no` or bf16")
        problems += plugin_code.check(manifest.trainer_path)(clean, placement)  # beside its trainer
        problems += _logging_checks(clean, placement)
        if "distributed_strategy" in clean or "num_machines" in clean:
            problems += _distributed_checks(clean, placement, manifest)
    if clean and settings.hosted():
        problems += _hosted_caps(clean, placement)

    model_ref = None
    try:
        if settings.hosted() and (request.get("model") or "").strip() and not hub_id_only(request["model"]):
            raise models.ModelError("local model folders are turned off on this server; give a Hub id")
        model_ref = models.resolve(request.get("model"))
        models.check_supported(model_ref, manifest.model_architectures, manifest.name)
    except models.ModelError as exc:
        problems.append(str(exc))

    spec = templates = found = None
    dataset_info: dict[str, Any] = {}
    try:
        spec = data.parse_spec(request.get("dataset") or manifest.sample_dataset)
        hosted_dataset_check(spec, uploads or settings.uploads_dir())
        # The user's templates, else those of the format found in the data (conversations: the chat template).
        found = data.resolve(spec, request.get("template"), request.get("completion_template"),
                             manifest.train_type, request.get("data_format"), read=check_data)
        spec, templates = found.spec, found.templates
        if manifest.train_type == "grpo" and not (templates.template.strip() and
                                                  templates.completion_template.strip()) and \
                (found.head is not None or found.own):
            raise data.DataError("GRPO needs an input template (e.g. `{{question}}`) and an answer template "
                                 "(e.g. `{{answer}}`)" + (f"; columns: {', '.join(found.head.columns)}"
                                                          if found.head is not None else ""))
        if check_data:
            dataset_info = data.check(spec, templates, found.head)
            if found.format is not None:
                dataset_info["format"] = {"id": found.format.id, "name": found.format.name,
                                          "description": found.format.description, "used": not found.own}
    except data.DataError as exc:
        problems.append(str(exc))
        templates = None  # the reward check below uses its fixed sample rather than render these again
    if clean:  # what would fail once started: the held-out split against the data, loss masks against the model
        problems += preflight.held_out(clean, spec, found.head if found is not None else None, check_data)
        problems += preflight.chat_loss(clean, templates, model_ref)
        problems += preflight.chat_template(clean, settings.hosted())

    if choices and clean:
        problems += _custom_reward_problems(home, choices, clean, spec, templates, model_ref, manifest)

    name = (request.get("name") or "").strip() or f"{manifest.train_type}-{time.strftime('%Y%m%d-%H%M%S')}"
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
                      distributed=_distributed(clean, on_slurm), slurm=on_slurm,
                      # A plugin with its own environment runs with that environment's python and accelerate.
                      python=str(installer.env_python(manifest.environment)) if manifest.environment else None),
        params=clean,
        request={k: v for k, v in request.items() if k in REQUEST_KEYS},  # for clone and presets
    )

def _custom_reward_problems(home: Path, choices, clean, spec, templates, model_ref, manifest) -> list[str]:
    """Hosted refusal, missing files, name clashes, then each function called on a sample completion
    in a child process (the web process never imports a user's file)."""
    from .rewards import SCORERS, Markers, reference_answer, system_prompt

    if settings.hosted():
        return [reward_files.HOSTED_REFUSAL]
    builtin = [n for n in SCORERS if clean.get(f"reward_{n}")]
    problems = reward_files.missing_files(home, choices) + reward_files.name_clashes(choices, builtin)
    if problems:
        return problems
    question, answer = "What is 6 times 7?", "42"
    if spec is not None and templates is not None and spec.source == "sample":
        try:  # the job's own first row, when it is at hand; rendered in a worker (the web process never renders)
            first = templates.rendered(data._sample_rows(spec.name)[:1])[0]
            question, answer = first["prompt"], reference_answer(first["completion"])
        except Exception:  # noqa: BLE001 - the fixed sample will do
            pass
    markers = Markers(clean["reasoning_start"], clean["reasoning_end"], clean["answer_start"], clean["answer_end"])
    system = system_prompt(clean.get("system_template"), markers)  # as the trainer builds it
    sample = reward_files.sample(question, answer, system, markers, _chat_model(model_ref))
    python = str(installer.env_python(manifest.environment)) if manifest.environment else None
    return reward_files.probe(home, choices, sample, python)


def _chat_model(model_ref) -> bool:
    """Does the trainer give the model chat messages (a chat template), or plain text? A local folder
    says; the embedded model and Hub models are taken to have one."""
    if model_ref is None or model_ref.source != "local":
        return True
    folder = Path(model_ref.path)
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    return bool((read_json(folder / "tokenizer_config.json") or {}).get("chat_template"))


def hosted_dataset_check(spec: data.DatasetSpec, uploads: Path) -> None:
    """Hosted mode: a dataset is a sample, a file the visitor uploaded (in `uploads`), or a Hub id that names
    nothing on this machine.
    datasets.load_dataset(name) reads any local folder it is given (a visitor read another's uploads with
    `../x1/home/uploads`), so a "hub" name that is, or could be, a path is refused, not looked up."""
    if not settings.hosted():
        return
    if spec.source == "file" and not (inside(spec.name, uploads) and Path(spec.name).is_file()):
        raise data.DataError("local dataset paths are turned off on this server; upload the file instead")
    if spec.source == "hub" and not hub_id_only(spec.name):
        raise data.DataError(f"dataset {inputs.short(spec.name)}: local dataset paths are turned off on this "
                             "server; give a Hub id like org/name, or upload the file")


def hub_id_only(text: str) -> bool:
    """A Hub id (org/name) that is no path here: not absolute, no `.`/`..`/`~` part, nothing by that name in
    the working folder (load_dataset and from_pretrained try a local path first)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    text = text.strip()
    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    parts = text.split("/")
    if text.startswith(("/", "~", ".")) or any(p in ("", ".", "..") or p.startswith("~") for p in parts):
        return False
    try:
        return not inputs.path_exists("name", text)
    except ValueError:
        return False


def inside(path: str, folder: Path) -> bool:
    try:
        Path(path).resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


