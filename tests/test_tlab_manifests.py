"""Issue 16, item 4 (loading): Transformer Lab's own plugin manifests load as shipped.

tests/data/tlab_manifests/<id>/index.json are unmodified copies from
github.com/transformerlab/transformerlab-api, transformerlab/plugins/<id>/index.json, commit
5a8f71e7874d591715ee7dd02e62015062a57d71 (2025-11-20): llama_trainer_multi_gpu 0.1.21,
grpo_trainer_multi_gpu 0.0.10, unsloth_grpo_trainer 0.0.12, llama_trainer 1.0.38, sft_llama_factory 0.0.15,
mlx_lora_trainer 0.4.23. They load through the app's loader (load_all, TLAB_MANIFEST_DIR), never refused.
"""
import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest

from tlab_gradio import gpus, manifests
from tlab_gradio.service import RequestError, Service

TLAB = Path(__file__).resolve().parent / "data" / "tlab_manifests"
SHIPPED = {"llama_trainer_multi_gpu": "0.1.21", "grpo_trainer_multi_gpu": "0.0.10",
           "unsloth_grpo_trainer": "0.0.12", "llama_trainer": "1.0.38", "sft_llama_factory": "0.0.15",
           "mlx_lora_trainer": "0.4.23"}
MAPPED = {"llama_trainer_multi_gpu": ("sft", "sft.py", True), "grpo_trainer_multi_gpu": ("grpo", "grpo.py", True),
          "unsloth_grpo_trainer": ("grpo", "unsloth_grpo.py", False)}


def test_the_copies_are_the_shipped_manifests():
    for plugin_id, version in SHIPPED.items():
        raw = json.loads((TLAB / plugin_id / "index.json").read_text())
        assert raw["uniqueId"] == plugin_id and raw["version"] == version
        assert not {"train_type", "trainer", "multi_gpu"} & set(raw)  # the app's own keys are absent


def test_every_shipped_manifest_loads():
    found, errors = manifests.load_all(TLAB)
    assert errors == [] and sorted(found) == sorted(SHIPPED)
    for plugin_id, m in found.items():
        assert m.foreign, plugin_id
        if plugin_id in MAPPED:  # one of ours: train type, trainer and multi-GPU inferred, runnable
            assert (m.train_type, m.trainer, m.multi_gpu) == MAPPED[plugin_id]
            assert m.unrunnable == [], m.unrunnable
        else:
            assert (m.train_type, m.trainer) == (None, None)
            assert m.unrunnable == [manifests.NO_TRAINER]
    # Their leftover hint for a parameter the manifest no longer declares, and a UI key this app does not use
    assert found["llama_trainer_multi_gpu"].notes[:2] == [
        "parameters_ui hints for parameters it does not declare were ignored: maximum_sequence_length",
        "parameters_ui keys this app does not use were ignored: ui:options"]
    assert "maximum_sequence_length" not in found["llama_trainer_multi_gpu"].parameters_ui
    assert found["grpo_trainer_multi_gpu"].notes[0].endswith("ignored: lora_alpha, lora_r")
    # GRPO has no single sequence length (TRL splits it into prompt and completion): their default is noted
    assert "their parameter 'maximum_sequence_length' has no equivalent in grpo.py: ignored" in \
        found["grpo_trainer_multi_gpu"].notes
    # Hardware this app does not drive: loaded, not ready, with the reason
    assert "needs Apple MLX (Apple silicon): this app trains on CUDA GPUs or the CPU only" in \
        manifests.readiness(found["mlx_lora_trainer"], gpu_count=8)
    assert "needs a CUDA GPU or an AMD GPU (ROCm) (none found on this machine)" in \
        manifests.readiness(found["llama_trainer"], gpu_count=0)
    assert "needs a CUDA GPU (none found on this machine)" in \
        manifests.readiness(found["llama_trainer_multi_gpu"], gpu_count=0)


def test_the_service_lists_both_folders_and_starts_only_the_mapped_ones_of_theirs(home, monkeypatch):
    from tlab_gradio.ui.plugin_form import trainer_choices

    monkeypatch.setattr(gpus, "list_gpus", lambda refresh=False: [])
    monkeypatch.setenv("TLAB_MANIFEST_DIR", os.pathsep.join([str(manifests.settings.MANIFEST_DIR), str(TLAB)]))
    svc = Service()
    rows = {r["id"]: r for r in svc.plugin_list()}
    assert sorted(rows) == sorted(["llama_sft_multi_gpu", "grpo_multi_gpu", "unsloth_grpo", *SHIPPED])
    assert not any("error" in r for r in rows.values())
    sft = rows["llama_sft_multi_gpu"]
    assert sft["ready"] and sft["runnable"] and sft["origin"] == "app" and sft["notes"] == []
    for plugin_id in SHIPPED:
        row = rows[plugin_id]
        assert row["origin"] == "transformerlab" and not row["ready"]
        assert row["runnable"] == (plugin_id in MAPPED)
        if plugin_id in MAPPED:  # their manifests say cuda only: not ready on this CPU-only machine, rightly
            assert row["not_runnable"] is None and "needs a CUDA GPU (none found on this machine)" in row["reasons"]
        else:
            assert row["reason"].startswith(row["not_runnable"])
    assert rows["sft_llama_factory"]["not_runnable"] == manifests.NO_TRAINER
    assert rows["mlx_lora_trainer"]["reasons"][-1].startswith("needs Apple MLX")
    assert rows["llama_trainer_multi_gpu"]["train_type"] == "sft" and rows["llama_trainer_multi_gpu"]["notes"]
    # Their manifest runs on sft.py with OUR parameter set, THEIR defaults and titles under our names
    theirs = rows["llama_trainer_multi_gpu"]["parameters"]
    ours = rows["llama_sft_multi_gpu"]["parameters"]
    assert list(theirs) == list(ours) and "batch_size" not in theirs
    assert theirs["per_device_train_batch_size"]["default"] == 4 and ours["per_device_train_batch_size"]["default"] == 8
    assert theirs["per_device_train_batch_size"]["title"] == "Batch Size"
    assert theirs["lr_scheduler_type"]["default"] == "constant" and ours["lr_scheduler_type"]["default"] == "cosine"
    assert theirs["learning_rate"]["default"] == 5e-05 and theirs["max_steps"]["default"] == -1
    assert theirs["max_length"]["default"] == ours["max_length"]["default"]  # they declare none
    assert theirs["max_length"].get("help") == ours["max_length"].get("help")  # our help kept
    assert rows["llama_trainer_multi_gpu"]["version"] == "0.1.21"
    assert rows["llama_trainer_multi_gpu"]["devices"] == ["cuda"]
    wandb = importlib.util.find_spec("wandb") is not None
    assert theirs["report_to"]["default"] == ("wandb" if wandb else "none")
    assert wandb or any(n.startswith("their default True for log_to_wandb → report_to was not taken (the wandb "
                                     "package is not installed") for n in rows["llama_trainer_multi_gpu"]["notes"])

    choices, default = trainer_choices(svc)
    assert default == "llama_sft_multi_gpu"
    # Their three mapped manifests are offered too; the three with no trainer here never are
    assert {plugin_id for _, plugin_id in choices} == {"llama_sft_multi_gpu", "grpo_multi_gpu", "unsloth_grpo", *MAPPED}

    for plugin_id, reason in [("sft_llama_factory", manifests.NO_TRAINER),
                              ]:
        with pytest.raises(RequestError) as info:
            svc.start_job({"plugin": plugin_id, "device": "cpu"})
        assert info.value.problems[0].startswith(f"plugin {rows[plugin_id]['name']} cannot run in this app: {reason}")
    with pytest.raises(RequestError) as info:  # runnable, but their manifest says cuda only
        svc.start_job({"plugin": "llama_trainer_multi_gpu", "params": {"train_device": "cpu"}})
    assert info.value.problems == [f"plugin {rows['llama_trainer_multi_gpu']['name']} is not ready: needs a CUDA GPU "
                                   "(none found on this machine)"]
    assert svc.list_jobs() == []


def test_a_uniqueid_in_two_folders_keeps_the_first(tmp_path):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    ours.mkdir()
    shutil.copytree(TLAB / "llama_trainer", theirs / "llama_trainer")
    shutil.copy(TLAB / "llama_trainer" / "index.json", ours / "llama_trainer.json")
    found, errors = manifests.load_all([ours, theirs])
    assert list(found) == ["llama_trainer"]
    assert [(e.file, e.plugin_id) for e in errors] == [("llama_trainer/index.json", "llama_trainer")]
    assert errors[0].message == f"uniqueId 'llama_trainer' is already loaded from {ours / 'llama_trainer.json'}"
    (theirs / "misnamed").mkdir()
    shutil.copy(TLAB / "mlx_lora_trainer" / "index.json", theirs / "misnamed" / "index.json")
    errors = manifests.load_all(theirs)[1]
    assert [str(e) for e in errors] == ["misnamed/index.json: uniqueId 'mlx_lora_trainer' must equal the "
                                        "folder's name 'misnamed'"]


# --- Requests with Transformer Lab's names, to our plugins and theirs ---------------------------------------

def _prepare(svc, plugin, params, **request):
    return svc.prepare({"plugin": plugin, "name": "t", "params": params, **request}, check_data=False)


def test_their_names_in_a_request_are_renamed_per_plugin(home, monkeypatch):
    monkeypatch.setattr(gpus, "list_gpus", lambda refresh=False: [])
    svc = Service()
    theirs = {"train_device": "cpu", "batch_size": 2, "learning_rate_schedule": "linear",
              "maximum_sequence_length": 256, "adaptor_name": "mine", "log_to_wandb": False}
    p = _prepare(svc, "llama_sft_multi_gpu", theirs).params
    assert (p["device"], p["per_device_train_batch_size"], p["lr_scheduler_type"]) == ("cpu", 2, "linear")
    assert (p["max_length"], p["adaptor_name"], p["report_to"]) == (256, "mine", "none")
    assert not set(theirs) - {"adaptor_name"} & set(p)

    grpo = {"train_device": "cpu", "maximum_completion_length": 64, "adaptor_name": "g", "log_to_wandb": False,
            "start_thinking_string": "<think>", "end_thinking_string": "</think>",
            "start_answer_string": "<a>", "end_answer_string": "</a>"}
    p = _prepare(svc, "grpo_multi_gpu", grpo, template="{{question}}", completion_template="{{answer}}").params
    assert (p["max_completion_length"], p["output_name"], p["report_to"]) == (64, "g", "none")
    assert (p["reasoning_start"], p["reasoning_end"], p["answer_start"], p["answer_end"]) == \
        ("<think>", "</think>", "<a>", "</a>")
    assert "adaptor_name" not in p


def test_unsloth_maps_the_sequence_length_to_max_seq_length():
    from tlab_gradio.manifests import load_manifest, rename_tlab, settings

    unsloth = load_manifest(settings.MANIFEST_DIR / "unsloth_grpo.json")  # cuda only: mapped, not prepared here
    problems: list[str] = []
    out = rename_tlab(unsloth, {"maximum_sequence_length": 2048, "adaptor_name": "u", "batch_size": 1}, problems)
    assert problems == [] and out == {"max_seq_length": 2048, "adaptor_name": "u", "per_device_train_batch_size": 1}


def test_their_name_and_ours_disagreeing_or_unmapped_is_refused(home, monkeypatch):
    monkeypatch.setattr(gpus, "list_gpus", lambda refresh=False: [])
    svc = Service()
    with pytest.raises(RequestError) as info:
        _prepare(svc, "llama_sft_multi_gpu", {"device": "cpu", "batch_size": 2, "per_device_train_batch_size": 4,
                                              "log_to_wandb": True, "report_to": "tensorboard"})
    assert "`batch_size` (Transformer Lab's name for `per_device_train_batch_size`) and " \
           "`per_device_train_batch_size` are both given, with different values (2, 4): give one" in info.value.problems
    assert any(p.startswith("`log_to_wandb` (Transformer Lab's name for `report_to`) and `report_to`")
               for p in info.value.problems)
    # The same value under both names is fine
    p = _prepare(svc, "llama_sft_multi_gpu", {"device": "cpu", "batch_size": 4, "per_device_train_batch_size": 4})
    assert p.params["per_device_train_batch_size"] == 4
    with pytest.raises(RequestError) as info:
        _prepare(svc, "grpo_multi_gpu", {"device": "cpu", "maximum_sequence_length": 512},
                 template="{{question}}", completion_template="{{answer}}")
    assert "unknown parameter `maximum_sequence_length`: a Transformer Lab name that GRPO Trainer (Multi GPU) has " \
           "no equivalent for (not mapped)" in [p.replace(svc.plugin("grpo_multi_gpu").name, "GRPO Trainer (Multi GPU)")
                                                 for p in info.value.problems]


def test_their_sft_manifest_runs_a_real_cpu_job_with_their_names(home, tmp_path, monkeypatch):
    """Their llama_trainer_multi_gpu manifest says cuda only; this test copy adds "cpu" to
    supported_hardware_architectures (the only change) so the job can run on this CPU-only machine."""
    folder = tmp_path / "theirs" / "llama_trainer_multi_gpu"
    folder.mkdir(parents=True)
    raw = json.loads((TLAB / "llama_trainer_multi_gpu" / "index.json").read_text())
    raw["supported_hardware_architectures"] = ["cuda", "cpu"]
    (folder / "index.json").write_text(json.dumps(raw))
    monkeypatch.setenv("TLAB_MANIFEST_DIR", str(folder.parent))
    monkeypatch.setattr(gpus, "list_gpus", lambda refresh=False: [])
    svc = Service()
    job = svc.start_job({"plugin": "llama_trainer_multi_gpu", "name": "theirs", "params": {
        "train_device": "cpu", "batch_size": 4, "learning_rate_schedule": "constant", "learning_rate": 0.003,
        "max_steps": 2, "adaptor_name": "their-adaptor", "log_to_wandb": False, "max_length": 128,
        "logging_steps": 1, "gradient_checkpointing": "off"}})
    done = svc.jobs.wait(job["id"], 420)
    log = "\n".join(svc.job_log(job["id"], 400))
    assert done.state == "COMPLETE", log
    cfg = done.spec.params
    assert (cfg["device"], cfg["per_device_train_batch_size"], cfg["lr_scheduler_type"]) == ("cpu", 4, "constant")
    assert cfg["report_to"] == "none" and cfg["max_steps"] == 2
    assert (Path(done.output_dir) / "their-adaptor" / "adapter_config.json").is_file()
