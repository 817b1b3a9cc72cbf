"""Issue 16, item 4 (loading): Transformer Lab's own plugin manifests load as shipped.

tests/data/tlab_manifests/<id>/index.json are unmodified copies from
github.com/transformerlab/transformerlab-api, transformerlab/plugins/<id>/index.json, commit
5a8f71e7874d591715ee7dd02e62015062a57d71 (2025-11-20): llama_trainer_multi_gpu 0.1.21,
grpo_trainer_multi_gpu 0.0.10, unsloth_grpo_trainer 0.0.12, llama_trainer 1.0.38, sft_llama_factory 0.0.15,
mlx_lora_trainer 0.4.23. They load through the app's loader (load_all, TLAB_MANIFEST_DIR), never refused.
"""
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
        assert m.foreign and m.unrunnable, plugin_id  # listed, never startable (yet)
        if plugin_id in MAPPED:  # one of ours: train type, trainer and multi-GPU inferred
            assert (m.train_type, m.trainer, m.multi_gpu) == MAPPED[plugin_id]
            assert m.unrunnable[0].startswith("parameters not mapped yet: "), m.unrunnable
        else:
            assert (m.train_type, m.trainer) == (None, None)
            assert m.unrunnable == [manifests.NO_TRAINER]
    sft = found["llama_trainer_multi_gpu"].unrunnable[0]
    assert "train_device→device" in sft and "batch_size→per_device_train_batch_size" in sft
    assert "learning_rate_schedule→lr_scheduler_type" in sft and "log_to_wandb→report_to" in sft
    assert "gpu_ids (not declared)" in found["unsloth_grpo_trainer"].unrunnable[0]
    # Their leftover hint for a parameter the manifest no longer declares, and a UI key this app does not use
    assert found["llama_trainer_multi_gpu"].notes == [
        "parameters_ui hints for parameters it does not declare were ignored: maximum_sequence_length",
        "parameters_ui keys this app does not use were ignored: ui:options"]
    assert "maximum_sequence_length" not in found["llama_trainer_multi_gpu"].parameters_ui
    assert found["grpo_trainer_multi_gpu"].notes[0].endswith("ignored: lora_alpha, lora_r")
    # Hardware this app does not drive: loaded, not ready, with the reason
    assert "needs Apple MLX (Apple silicon): this app trains on CUDA GPUs or the CPU only" in \
        manifests.readiness(found["mlx_lora_trainer"], gpu_count=8)
    assert "needs a CUDA GPU or an AMD GPU (ROCm) (none found on this machine)" in \
        manifests.readiness(found["llama_trainer"], gpu_count=0)
    assert "needs a CUDA GPU (none found on this machine)" in \
        manifests.readiness(found["llama_trainer_multi_gpu"], gpu_count=0)


def test_the_service_lists_both_folders_and_never_starts_theirs(home, monkeypatch):
    from tlab_gradio.ui.train_tab import trainer_choices

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
        assert row["origin"] == "transformerlab" and not row["ready"] and not row["runnable"]
        assert row["reason"].startswith(row["not_runnable"])
    assert rows["sft_llama_factory"]["not_runnable"] == manifests.NO_TRAINER
    assert rows["mlx_lora_trainer"]["reasons"][-1].startswith("needs Apple MLX")
    assert rows["llama_trainer_multi_gpu"]["train_type"] == "sft" and rows["llama_trainer_multi_gpu"]["notes"]
    assert rows["llama_trainer_multi_gpu"]["parameters"]["batch_size"]["default"] == 4  # their form, as shipped

    choices, default = trainer_choices(svc)
    assert default == "llama_sft_multi_gpu"
    assert {plugin_id for _, plugin_id in choices} == {"llama_sft_multi_gpu", "grpo_multi_gpu", "unsloth_grpo"}

    for plugin_id, reason in [("sft_llama_factory", manifests.NO_TRAINER),
                              ("llama_trainer_multi_gpu", "parameters not mapped yet: train_device→device")]:
        with pytest.raises(RequestError) as info:
            svc.start_job({"plugin": plugin_id, "device": "cpu"})
        assert info.value.problems[0].startswith(f"plugin {rows[plugin_id]['name']} cannot run in this app: {reason}")
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
