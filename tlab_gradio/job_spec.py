"""The job spec: the one contract from a request to the trainer program.

`Service.prepare` checks a request and returns a JobSpec; the job store writes it once as the job's
`config.json`; the launcher builds `accelerate launch` from its `launch` part; the trainer reads it back
(`JobSpec.read`). Nothing rebuilds it from parts. The parameters (`params`) keep the names of the
plugin's manifest, which are TRL's config names, so `learning_rate` in the form is `params["learning_rate"]`
here and `SFTConfig(learning_rate=...)` in the trainer.

Only pydantic is needed to read it (the trainers run in environments without the app's other packages).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from .jobfiles import CONFIG


class Distributed(BaseModel):
    """How the processes share the work, and where they are: accelerate's choices, the form's words.

    strategy: ddp (each process a full copy), fsdp (full shard), deepspeed_zero2 / deepspeed_zero3.
    Several machines: each launches its own processes with its machine_rank; all meet at the main
    process's address and port."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # The defaults here are the form's too (launch_settings reads them): declared once.
    strategy: Literal["ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"] = "ddp"
    fsdp_cpu_offload: bool = False
    fsdp_activation_checkpointing: bool = False
    fsdp_auto_wrap: bool = True
    deepspeed_cpu_offload: bool = False
    num_machines: int = 1
    machine_rank: int = 0
    main_process_ip: str = ""
    main_process_port: int = 0  # 0: a free port at launch
    gradient_accumulation_steps: int = 1  # DeepSpeed wants the Trainer's values in its config
    gradient_clipping: float = 1.0

    @classmethod
    def from_params(cls, p: dict) -> "Distributed":
        """From a plugin's checked parameters (a one-GPU plugin has none of the distributed settings)."""
        values = {k: p[k] for k in cls.model_fields if p.get(k) is not None and k != "strategy"}
        if p.get("max_grad_norm") is not None:
            values["gradient_clipping"] = p["max_grad_norm"]
        if p.get("distributed_strategy") is not None:
            values["strategy"] = p["distributed_strategy"]
        return cls(**values)


class Slurm(BaseModel):
    """Where a job handed to a Slurm cluster runs (the form's Run on): the partition ("" for the cluster's
    default), nodes, GPUs per node (on cuda; on cpu each node runs the job's CPU processes), the time limit (Slurm's
    words: minutes, or [D-]HH:MM:SS; "" for the partition's), and the site's account and QoS (settings)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    partition: str = ""
    nodes: int = 1
    gpus_per_node: int = 1
    time_limit: str = ""
    account: str | None = None
    qos: str | None = None


class Launch(BaseModel):
    """Where and how the trainer runs: what `accelerate launch` is given. The app owns all of it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    trainer: str  # the trainer program's path
    device: Literal["cuda", "cpu"]
    gpu_ids: list[str] = []  # physical GPU ids (as nvidia-smi numbers them); empty on cpu
    num_processes: int = 1  # on this machine
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    distributed: Distributed = Distributed()
    python: str | None = None  # a plugin with its own environment runs with that environment's python
    slurm: Slurm | None = None  # handed to a Slurm cluster (None: this machine)

    @property
    def total_processes(self) -> int:
        return self.num_processes * self.distributed.num_machines


class ModelRef(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str  # a local folder (converted GGUF and the embedded model included) or a Hub id
    source: Literal["embedded", "local", "hub"]
    architecture: str | None = None
    config: dict[str, Any] | None = None  # its config.json, for the memory estimate

    @property
    def embedded(self) -> bool:
        return self.source == "embedded"


class DataRef(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset: dict[str, Any]  # data.DatasetSpec.as_dict(): source, name, subset, split
    template: str = ""
    completion_template: str = ""
    info: dict[str, Any] = {}  # rows and columns found when the request was checked


class JobSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    plugin: str
    train_type: str | None = None
    model: ModelRef
    data: DataRef
    launch: Launch
    params: dict[str, Any]  # the plugin's parameters, checked against its manifest
    request: dict[str, Any] = {}  # what was asked, for clone and presets
    job_id: int | None = None
    job_dir: str | None = None
    resume_from_checkpoint: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _flat_config(cls, value: Any) -> Any:
        """A job made before the spec was typed stored one flat dict: read it the same way (history survives)."""
        if not isinstance(value, dict) or "launch" in value or "device" not in value:
            return value
        v = dict(value)
        return {
            "name": v["name"], "plugin": v["plugin"], "train_type": v.get("train_type"),
            "model": {"path": v["model"], "source": v.get("model_source") or "local",
                      "architecture": v.get("architecture"), "config": v.get("model_config")},
            "data": {"dataset": v["dataset"], "template": v.get("template") or "",
                     "completion_template": v.get("completion_template") or "", "info": v.get("dataset_info") or {}},
            "launch": {"trainer": v["trainer"], "device": v["device"], "gpu_ids": v.get("gpu_ids") or [],
                       "num_processes": v.get("num_processes") or 1,
                       "mixed_precision": v.get("mixed_precision") or "no",
                       "distributed": Distributed.from_params(v.get("params") or {}), "python": v.get("python")},
            "params": v.get("params") or {}, "request": v.get("request") or {}, "job_id": v.get("job_id"),
            "job_dir": v.get("job_dir"), "resume_from_checkpoint": v.get("resume_from_checkpoint"),
        }

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def write(self, job_dir: Path) -> None:
        (Path(job_dir) / CONFIG).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def read(cls, job_dir: Path) -> "JobSpec":
        return cls.model_validate_json((Path(job_dir) / CONFIG).read_text())
