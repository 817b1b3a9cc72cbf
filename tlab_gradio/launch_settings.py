"""The launch settings: where and how a job runs (device, GPU IDs, CPU processes, precision, distributed
strategy, machines). The app reads them itself (gpus.resolve, the launcher's accelerate config), so it
defines them here, once, and every manifest of this app gets them in its form (parameter_sets.compose).

A manifest declares only what its trainer trains with, plus the two facts that decide which settings
apply: `supported_hardware_architectures` (the device choices; GPU IDs only with cuda, CPU processes only
with cpu) and `multi_gpu` (a one-GPU plugin gets one GPU ID and no distributed strategy or machines).
A manifest may still restate a setting, but only to narrow it (narrow()): the app owns the rest.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from . import settings
from .job_spec import Distributed
from .parameter import Parameter, ParameterGroup, ParameterSet

HARDWARE = "Hardware"  # shown first unless a manifest places it
SEVERAL = "Several GPUs and machines"
DEVICES = ("cuda", "cpu")  # what this app trains on (amd/mlx plugins load, but are never ready)
NARROWING = ("default", "enum", "minimum", "maximum")  # what a manifest may change in a launch setting


def _setting(help_text: str, **schema: Any) -> tuple[Parameter, str]:
    return Parameter(**schema), help_text


GPU_IDS = _setting("Comma-separated GPU IDs, e.g. 0,1,2 for three GPUs; auto uses every GPU the app can see. "
                   "Ignored on cpu.", title="GPU IDs to Train", type="string", default="auto")
ONE_GPU_ID = _setting("The one GPU to train on (its ID, e.g. 0).", title="GPU ID to Train", type="string",
                      default="0", pattern="^(auto|[0-9]+)$")
CPU_PROCESSES = _setting("With device cpu: how many training processes (ranks on gloo). Ignored on cuda.",
                         title="CPU Processes", type="integer", default=1, minimum=1, maximum=64)
MIXED_PRECISION = _setting("auto: bf16 on GPUs that have it (Ampere and newer), fp16 on older GPUs, full "
                           "precision on CPU.", title="Mixed Precision", type="string",
                           enum=["auto", "bf16", "fp16", "no"], default="auto")
# Spreading one job over several processes and machines: only for a plugin whose trainer can (multi_gpu).
# Their defaults are the job spec's (job_spec.Distributed), so a job without them launches the same way.
_D = Distributed()
DISTRIBUTED = {
    "distributed_strategy": _setting(
        "ddp: every GPU holds the whole model (fastest when it fits). fsdp: weights, gradients and optimizer "
        "state are sharded over the GPUs (full shard). deepspeed_zero2 shards gradients and optimizer state; "
        "deepspeed_zero3 shards the weights too. Sharding lets a model that does not fit one GPU train on several.",
        title="Distributed Strategy", type="string", enum=["ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"],
        default=_D.strategy),
    "fsdp_cpu_offload": _setting("Keep sharded parameters in CPU memory between uses: far less GPU memory, much "
                                 "slower.", title="FSDP: CPU Offload", type="boolean", default=_D.fsdp_cpu_offload),
    "fsdp_activation_checkpointing": _setting(
        "FSDP's own activation checkpointing (replaces Gradient Checkpointing under FSDP).",
        title="FSDP: Activation Checkpointing", type="boolean", default=_D.fsdp_activation_checkpointing),
    "fsdp_auto_wrap": _setting("", title="FSDP: Auto Wrap by Transformer Layer", type="boolean",
                               default=_D.fsdp_auto_wrap),
    "deepspeed_cpu_offload": _setting("Optimizer state (and with ZeRO-3 the weights) in CPU memory. Needs the "
                                      "deepspeed package.", title="DeepSpeed: CPU Offload", type="boolean",
                                      default=_D.deepspeed_cpu_offload),
    "num_machines": _setting("Several machines: start the same task on each, with its own rank; the main machine "
                             "(rank 0) shows the run's progress.", title="Number of Machines", type="integer",
                             default=_D.num_machines, minimum=1, maximum=1024),
    "machine_rank": _setting("0 on the main machine, 1, 2, ... on the others.", title="This Machine's Rank",
                             type="integer", default=_D.machine_rank, minimum=0, maximum=1023),
    "main_process_ip": _setting("Address of the main machine (rank 0) that every machine can reach. Needed with "
                                "several machines.", title="Main Process Address", type="string",
                                default=_D.main_process_ip),
    "main_process_port": _setting("Port on the main machine; give the same one on every machine when there are "
                                  "several.", title="Main Process Port (0: any free port)", type="integer",
                                  default=_D.main_process_port, minimum=0, maximum=65535),
}
# Handing the job to a Slurm cluster (settings.slurm()): shown in Hardware only when the app is set up for Slurm.
THIS_MACHINE = "this machine"
SLURM = "slurm"  # the cluster's default partition; "slurm:NAME" a partition sinfo lists
SLURM_TIME = r"^(|[0-9]+|[0-9]+:[0-9]{2}|[0-9]+:[0-9]{2}:[0-9]{2}|[0-9]+-[0-9]{1,2}(:[0-9]{2}){0,2})$"
SLURM_SETTINGS = {
    "slurm_nodes": _setting("Run on a Slurm partition: how many nodes (one task per node, each launching the job's "
                            "processes on its GPUs).", title="Slurm Nodes", type="integer", default=1, minimum=1,
                            maximum=1024),
    "slurm_gpus_per_node": _setting("Run on a Slurm partition with device cuda: GPUs per node (Slurm picks them; "
                                    "GPU IDs are ignored). With device cpu each node runs CPU Processes ranks.",
                                    title="Slurm GPUs per Node", type="integer", default=1, minimum=1, maximum=64),
    "slurm_time_limit": _setting("Run on a Slurm partition: the job's time limit in Slurm's words (minutes, "
                                 "HH:MM:SS or D-HH:MM:SS); empty: the partition's.", title="Slurm Time Limit",
                                 type="string", default="", pattern=SLURM_TIME),
}
NAMES = ("device", "gpu_ids", "cpu_processes", "mixed_precision", *DISTRIBUTED)  # every launch setting
SLURM_NAMES = ("run_on", *SLURM_SETTINGS)  # the launch settings added with Slurm
OWNED = NAMES + SLURM_NAMES  # what no manifest or shared set may declare as its own


def _run_on() -> tuple[Parameter, str]:
    from . import slurm

    choices = [THIS_MACHINE, SLURM] + [f"{SLURM}:{p}" for p in slurm.partitions()]
    return _setting("this machine: the app's own GPUs or CPU, as always. slurm: handed to the Slurm cluster "
                    "(sbatch), its default partition or the one named; the job's folder must be on the workspace "
                    "every node shares.", title="Run on", type="string", enum=choices, default=THIS_MACHINE)


def _device(devices: list[str], multi_gpu: bool) -> tuple[Parameter, str]:
    says = {"cuda": "cuda trains on the GPUs below, one process per GPU" if multi_gpu
            else "cuda trains on the one GPU below",
            "cpu": "cpu trains on the processor (slow, for small models and trials)"}
    return _setting("; ".join(says[d] for d in devices) + ".", title="Training Device", type="string",
                    enum=devices, default=devices[0], required=True)


def for_plugin(multi_gpu: bool, hardware: Iterable[str]) -> ParameterSet:
    """The launch settings that apply to a plugin, with their help and their form groups."""
    hardware = list(hardware)
    # A manifest for hardware this app does not drive keeps both choices: readiness says why it cannot run.
    devices = [d for d in DEVICES if d in hardware] or list(DEVICES)
    chosen = {"device": _device(devices, multi_gpu)}
    if "cuda" in devices:
        chosen["gpu_ids"] = GPU_IDS if multi_gpu else ONE_GPU_ID
    if "cpu" in devices and multi_gpu:
        chosen["cpu_processes"] = CPU_PROCESSES
    chosen["mixed_precision"] = MIXED_PRECISION
    if settings.slurm():
        chosen["run_on"] = _run_on()
        chosen.update(SLURM_SETTINGS if multi_gpu else {"slurm_time_limit": SLURM_SETTINGS["slurm_time_limit"]})
    if multi_gpu:
        chosen.update(DISTRIBUTED)
    groups = [ParameterGroup(title=HARDWARE, parameters=[n for n in chosen if n not in DISTRIBUTED])]
    if multi_gpu:
        groups.append(ParameterGroup(title=SEVERAL, open=False, parameters=list(DISTRIBUTED),
                                     help="How the job spreads over GPUs (DDP, FSDP, DeepSpeed) and over several "
                                          "machines."))
    return ParameterSet(description="the app's launch settings",
                        parameters={n: p for n, (p, _) in chosen.items()},
                        parameters_ui={n: {"ui:help": h} for n, (_, h) in chosen.items() if h},
                        parameter_groups=groups)


def narrow(name: str, setting: Parameter, given: Any) -> dict[str, Any]:
    """The setting as a manifest narrows it: a default, an enum subset, tighter minimum/maximum. Restating a
    field as the app has it is allowed (a dumped manifest loads again); changing any other field is an error."""
    app = setting.model_dump()
    out = setting.model_dump(exclude_none=True)
    if given is None:
        return out
    if not isinstance(given, dict):
        raise ValueError(f"parameters.{name}: a launch setting may only be narrowed with an object of "
                         f"{', '.join(NARROWING)}")
    for key, value in given.items():
        if key in app and value == app[key] and type(value) is type(app[key]):
            continue
        problem = _widens(key, value, setting)
        if problem:
            raise ValueError(f"`{name}` is a launch setting the app defines (tlab_gradio/launch_settings.py); a "
                             f"manifest may only narrow it ({', '.join(NARROWING)}): {problem}")
        out[key] = value
    if "enum" in given and "default" not in given and out.get("default") not in out["enum"]:
        out["default"] = out["enum"][0]  # the app's default was narrowed away: the first choice left
    return out


def _widens(key: str, value: Any, setting: Parameter) -> str | None:
    """Why this change does not narrow the setting, or None when it does."""
    if key not in NARROWING:
        return f"its {key} is the app's"
    if key == "enum" and not setting.enum:
        return "it has no enum to narrow"
    if key == "enum" and not (isinstance(value, list) and value and set(value) <= set(setting.enum)):
        return f"the enum must be a part of {setting.enum!r}"
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if key == "minimum" and not (number and (setting.minimum is None or value >= setting.minimum)):
        return f"the minimum cannot go below {setting.minimum}"
    if key == "maximum" and not (number and (setting.maximum is None or value <= setting.maximum)):
        return f"the maximum cannot go above {setting.maximum}"
    return None
