"""The job spec: one typed contract from the request to the trainer (issue 16, item 1)."""
import json
import shlex
from pathlib import Path

import pytest
from pydantic import ValidationError

from tlab_gradio import launch_settings, launcher
from tlab_gradio.job_spec import Distributed, JobSpec
from tlab_gradio.service import Service

SFT = "llama_sft_multi_gpu"


def test_the_spec_is_written_once_and_read_back_by_the_trainer_side(home, monkeypatch):
    """prepare() -> the job's config.json -> JobSpec.read (what common.begin does): the same spec, the job's
    id and folder added; the launched command is the preview's with the folder and port filled in."""
    from tlab_gradio import jobs as jobs_mod

    launched, write = {}, launcher.write_launch_files

    def record(job_dir, launch):  # the real files, a stand-in process
        launched["argv"] = write(job_dir, launch)
        return ["true"]

    monkeypatch.setattr(jobs_mod.launcher, "write_launch_files", record)
    svc = Service()
    request = {"plugin": SFT, "name": "typed", "device": "cpu", "cpu_processes": 2,
               "params": {"learning_rate": 1e-4, "max_steps": 3}}
    spec = svc.prepare(request)
    assert isinstance(spec, JobSpec) and spec.params["learning_rate"] == 1e-4
    job = svc.start_job(request)
    svc.jobs.wait(job["id"], 30)
    read = JobSpec.read(job["job_dir"])
    assert read.job_id == job["id"] and read.job_dir == job["job_dir"]
    assert read.model_copy(update={"job_id": None, "job_dir": None}) == spec.model_copy(update={"name": "typed"})
    preview = svc.launch_preview(request)["command"].replace("<free port>", "PORT").split()
    argv = launched["argv"]
    assert len(preview) == len(argv)
    differ = [(a, b) for a, b in zip(preview, argv) if a != b]
    assert all("$TLAB_HOME/jobs/<id>" in a or a == "PORT" for a, _ in differ), differ
    assert shlex.split((Path(job["job_dir"]) / "command.txt").read_text()) == argv


def test_a_job_stored_before_the_spec_was_typed_still_reads(home):
    """History survives: a flat config of an older job becomes the same spec (the launch rebuilt from its
    params, as the launcher did then)."""
    flat = {"name": "old", "plugin": SFT, "train_type": "sft", "trainer": "/x/sft.py", "model": "/m",
            "model_source": "local", "embedded_model": False, "architecture": "LlamaForCausalLM",
            "model_config": {"hidden_size": 64}, "dataset": {"source": "sample", "name": "sft_instructions"},
            "dataset_info": {"rows": 3}, "template": "{{instruction}}", "completion_template": "{{output}}",
            "device": "cuda", "gpu_ids": ["0", "1"], "num_processes": 2, "mixed_precision": "bf16",
            "params": {"distributed_strategy": "fsdp", "max_grad_norm": 0.5, "learning_rate": 2e-4},
            "request": {"plugin": SFT}, "python": None, "job_id": 4, "job_dir": "/w/jobs/4",
            "resume_from_checkpoint": "/w/jobs/4/checkpoints/checkpoint-2"}
    spec = JobSpec.model_validate(flat)
    assert spec.launch.distributed.strategy == "fsdp" and spec.launch.distributed.gradient_clipping == 0.5
    assert spec.launch.gpu_ids == ["0", "1"] and spec.launch.total_processes == 2
    assert spec.model.path == "/m" and not spec.model.embedded and spec.data.info == {"rows": 3}
    assert spec.resume_from_checkpoint.endswith("checkpoint-2") and spec.params["learning_rate"] == 2e-4
    assert JobSpec.model_validate(spec.to_json()) == spec


def test_a_hand_written_spec_with_a_typo_is_refused_by_name():
    good = {"name": "n", "plugin": SFT, "model": {"path": "m", "source": "hub"}, "data": {"dataset": {}},
            "launch": {"trainer": "t.py", "device": "cpu"}, "params": {}}
    JobSpec.model_validate(good)
    with pytest.raises(ValidationError, match="num_procesess"):
        JobSpec.model_validate({**good, "launch": {**good["launch"], "num_procesess": 2}})
    with pytest.raises(ValidationError, match="device"):
        JobSpec.model_validate({**good, "launch": {**good["launch"], "device": "tpu"}})


def test_each_launch_default_lives_in_one_place():
    """The form's defaults for the distributed settings are the spec's: a one-GPU plugin (no such settings
    in its params) launches exactly as a multi-GPU plugin left at its defaults."""
    defaults = Distributed()
    for name, (setting, _help) in launch_settings.DISTRIBUTED.items():
        field = "strategy" if name == "distributed_strategy" else name
        assert setting.default == getattr(defaults, field), name
    form = {name: setting.default for name, (setting, _) in launch_settings.DISTRIBUTED.items()}
    assert Distributed.from_params(form) == Distributed.from_params({}) == defaults
    assert json.dumps(defaults.model_dump())  # plain JSON in config.json
