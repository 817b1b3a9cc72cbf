"""Requests are checked in full before anything is created or launched."""
import shutil
from pathlib import Path

import pytest

from tlab_gradio import estimates
from tlab_gradio import service as service_mod
from tlab_gradio.service import RequestError, Service

SFT = "llama_sft_multi_gpu"


def refused(svc, request):
    with pytest.raises(RequestError) as info:
        svc.start_job(request)
    assert svc.list_jobs() == []  # nothing created
    assert not any((svc.home / "jobs").iterdir())  # no job folder either
    return info.value.problems


def test_bad_requests_are_refused_with_every_reason(home):
    svc = Service()
    assert refused(svc, {"plugin": "llama_sft_multi_gpus"}) == [
        "unknown plugin 'llama_sft_multi_gpus' (did you mean `llama_sft_multi_gpu`?); plugins: grpo_multi_gpu, "
        "llama_sft_multi_gpu, unsloth_grpo"]
    got = refused(svc, {"plugin": SFT, "modle": "x", "template": "{{nope}}",
                        "params": {"device": "cuda", "max_step": 3, "lora_r": 0}})
    assert "unknown request field `modle` (did you mean `model`?)" in got
    assert "unknown parameter `max_step` (did you mean `max_steps`?)" in got
    assert "`lora_r` (LoRA R): 0 is less than the minimum of 1" in got
    assert any("data template uses `nope`" in p and "columns: instruction, input, output" in p for p in got)


def test_device_and_gpu_problems(home):
    svc = Service()
    assert refused(svc, {"plugin": SFT, "params": {"device": "cuda"}}) == [
        "device `cuda`: this machine has no CUDA GPU; choose device `cpu`"]
    assert refused(svc, {"plugin": SFT, "params": {"device": "cpu", "mixed_precision": "fp16"}}) == [
        "`mixed_precision` fp16 does not run on cpu; use `no` or bf16"]
    got = refused(svc, {"plugin": SFT, "params": {"device": "cpu", "load_in_4bit": True, "use_lora": False}})
    assert "`load_in_4bit` (QLoRA) needs `use_lora`: a 4-bit base cannot be fully fine-tuned" in got
    assert "`load_in_4bit` (QLoRA) needs device `cuda`: bitsandbytes 4-bit runs on CUDA GPUs" in got


def test_gpu_ids_checked_against_the_gpus_present(home, monkeypatch):
    from tlab_gradio import gpus

    fake = [gpus.GPU(i, str(i), "H100", 80000, 0, 0, 30, (9, 0)) for i in range(2)]
    monkeypatch.setattr(service_mod.gpus, "list_gpus", lambda refresh=False: fake)
    svc = Service()
    assert refused(svc, {"plugin": SFT, "params": {"gpu_ids": "0,2"}}) == [
        "gpu_ids '0,2': GPU 2 does not exist (GPUs on this machine: 0, 1)"]
    assert refused(svc, {"plugin": SFT, "params": {"gpu_ids": "1,1"}}) == ["gpu_ids '1,1': GPU 1 is listed twice"]
    config = svc.prepare({"plugin": SFT, "params": {"gpu_ids": "1"}})  # device defaults to cuda here
    launch = config.launch
    assert launch.device == "cuda" and launch.gpu_ids == ["1"] and launch.num_processes == 1
    assert launch.mixed_precision == "bf16"
    assert svc.prepare({"plugin": SFT}).launch.num_processes == 2  # auto: every GPU


def test_unsupported_architecture_is_refused_before_launch(home, tmp_path):
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text('{"architectures": ["BertForMaskedLM"]}')
    got = refused(Service(), {"plugin": SFT, "model": str(bert), "params": {"device": "cpu"}})
    assert len(got) == 1 and "is a BertForMaskedLM, which Llama SFT Trainer" in got[0]


def test_a_good_request_becomes_a_complete_config(home):
    config = Service().prepare({"plugin": SFT, "params": {"device": "cpu", "cpu_processes": 2}})
    assert config.launch.device == "cpu" and config.launch.num_processes == 2
    assert config.launch.mixed_precision == "no"
    assert config.model.embedded and config.model.architecture == "LlamaForCausalLM"
    assert config.data.dataset == {"source": "sample", "name": "sft_instructions", "subset": None, "split": None}
    assert config.data.completion_template == "{{output}}"
    assert config.params["lora_r"] == 16 and config.name.startswith("sft-")


def test_plugin_list_marks_broken_manifests(home, tmp_path, monkeypatch):
    import shutil

    shutil.copy(service_mod.settings.MANIFEST_DIR / "llama_sft_multi_gpu.json", tmp_path)
    (tmp_path / "broken.json").write_text("{")
    monkeypatch.setenv("TLAB_MANIFEST_DIR", str(tmp_path))
    rows = {r["id"]: r for r in Service().plugin_list()}
    assert rows[SFT]["ready"] and rows[SFT]["multi_gpu"] and rows[SFT]["devices"] == ["cuda", "cpu"]
    assert not rows["broken"]["ready"] and rows["broken"]["error"].startswith("not valid JSON")
    with pytest.raises(RequestError, match="plugin 'broken' failed to load: not valid JSON"):
        Service().start_job({"plugin": "broken"})


def test_presets_save_load_and_clone_a_past_job(home, monkeypatch):
    import sys

    from tlab_gradio import jobs as jobs_mod

    # A stand-in process instead of training: this test is about the settings round trip.
    monkeypatch.setattr(jobs_mod.launcher, "write_launch_files",
                        lambda job_dir, *a, **k: [sys.executable, "-c", "pass", str(job_dir)])
    svc = Service()
    request = {"plugin": SFT, "name": "mine", "device": "cpu", "template": "{{instruction}}",
               "completion_template": "{{output}}", "params": {"lora_r": 8, "max_steps": 7}}
    assert svc.save_preset("small lora", request) == ["small lora"]
    assert svc.load_preset("small lora") == request
    with pytest.raises(RequestError, match="no preset named 'other'; presets: small lora"):
        svc.load_preset("other")
    with pytest.raises(RequestError, match="preset name '../x'"):
        svc.save_preset("../x", request)
    with pytest.raises(RequestError, match="unknown request field `parms`"):
        svc.save_preset("bad", {"plugin": SFT, "parms": {}})

    job = svc.start_job(request)
    clone = svc.clone_request(job["id"])
    assert clone == {**request, "name": "mine (copy)"}
    again = svc.prepare(clone)
    assert again.params["lora_r"] == 8 and again.params["max_steps"] == 7
    assert svc.delete_preset("small lora") == []


def test_grpo_batch_must_hold_whole_prompt_groups(home):
    got = refused(Service(), {"plugin": "grpo_multi_gpu", "device": "cpu", "cpu_processes": 2,
                              "params": {"per_device_train_batch_size": 3, "gradient_accumulation_steps": 1,
                                         "num_generations": 4}})
    assert got == ["2 processes x batch 3 x accumulation 1 = 6 completions per step is not divisible by "
                   "num_generations 4: each prompt's 4 completions are generated in the same step "
                   "(num_generations 2 or 3 or 6 would fit)"]
    got = refused(Service(), {"plugin": "grpo_multi_gpu", "device": "cpu", "template": "{{q}}",
                              "completion_template": "{{answer}}",
                              "params": {"generation_batch_size": 12, "reward_correctness": False,
                                         "reward_integer": False, "reward_strict_format": False,
                                         "reward_soft_format": False, "reward_tag_count": False}})
    assert "choose at least one reward function" in got
    assert "generation_batch_size 12 must be a multiple of processes x batch = 8" in got  # the CPU default batch
    assert any("data template uses `q`" in p and "columns: question, answer" in p for p in got)
    assert "GRPO needs an input template" in refused(Service(), {"plugin": "grpo_multi_gpu", "device": "cpu",
                                                                 "template": "{{question}}",
                                                                 "completion_template": ""})[0]


def test_disk_estimate_counts_checkpoints_and_warns_when_the_disk_is_short(home, monkeypatch):
    from collections import namedtuple

    from tlab_gradio import memory

    q = memory.Shape(hidden=896, intermediate=4864, layers=24, heads=14, kv_heads=2, vocab=151936, tied=True)
    full = memory.disk(q, use_lora=False, trainable=q.parameters(), weight_bytes=4, checkpoints=2)
    assert full.checkpoint_gb == pytest.approx(q.parameters() * 12 / 2**30, rel=1e-4)  # fp32 weights + 2 moments
    assert full.total_gb == pytest.approx(2 * full.checkpoint_gb + full.output_gb, abs=1e-5)
    lora = q.lora_parameters(16, "all-linear")
    fused = memory.disk(q, use_lora=True, trainable=lora, weight_bytes=4, checkpoints=None, fuse=True)
    assert fused.total_gb is None and fused.checkpoint_gb == pytest.approx(lora * 12 / 2**30, rel=1e-4)
    assert fused.output_gb == pytest.approx((lora * 4 + q.parameters() * 2) / 2**30, rel=1e-4)  # + merged 16-bit model

    svc = Service()
    request = {"plugin": SFT, "params": {"device": "cpu", "max_steps": 1000, "save_steps": 100,
                                         "save_total_limit": 20}}
    disk = svc.memory_estimate(request)["disk"]
    assert disk["checkpoints"] == 10 and disk["warning"] is None  # ten saves in the run, all kept
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(estimates.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    disk = svc.memory_estimate(request)["disk"]
    assert disk["warning"].startswith("may not fit on disk: checkpoints and output need about ")
    assert disk["warning"].endswith("the workspace disk has 0.0 GiB free")


def test_plugin_form_is_the_plugins_entry_in_the_list(home, tmp_path, monkeypatch):
    """What the Train tab builds a plugin's form from: its plugin_list entry (this machine's defaults, sections,
    the sample it starts on), refused like a request for a plugin unknown or broken now."""
    import shutil

    shutil.copy(service_mod.settings.MANIFEST_DIR / "grpo_multi_gpu.json", tmp_path)
    (tmp_path / "broken.json").write_text("{")
    monkeypatch.setenv("TLAB_MANIFEST_DIR", str(tmp_path))
    monkeypatch.setattr(service_mod.gpus, "list_gpus", lambda refresh=False: [])
    svc = Service()
    form = svc.plugin_form("grpo_multi_gpu")
    assert form == {r["id"]: r for r in svc.plugin_list()}["grpo_multi_gpu"]
    assert form["train_type"] == "grpo" and form["sample_dataset"] == "grpo_arithmetic"
    assert form["parameters"]["device"]["default"] == "cpu"  # no GPU here
    grouped = [n for g in form["parameter_groups"] for n in g["parameters"]]
    assert sorted(grouped) == sorted(form["parameters"]) and all(g["title"] for g in form["parameter_groups"])
    with pytest.raises(RequestError, match="plugin 'broken' failed to load: not valid JSON"):
        svc.plugin_form("broken")
    with pytest.raises(RequestError, match=r"unknown plugin 'grpo_multi_gpus' \(did you mean `grpo_multi_gpu`\?\)"):
        svc.plugin_form("grpo_multi_gpus")


def test_an_uploaded_dataset_is_kept_in_the_workspace_once(home, tmp_path, monkeypatch):
    """Service.save_upload copies a file from gradio's cache into TLAB_HOME/uploads (one copy per content);
    in hosted mode the visitor's stored copy is a dataset their request may name; the cache path, the shared
    folder and another visitor's copy are not."""
    cache = tmp_path / "gradio-cache"
    cache.mkdir()
    upload = cache / "rows.jsonl"
    upload.write_text('{"text": "one"}\n{"text": "two"}\n')
    svc = Service()
    stored = svc.save_upload(str(upload))
    assert Path(stored).parent.parent == service_mod.settings.uploads_dir() and Path(stored).name == "rows.jsonl"
    assert Path(stored).read_text() == upload.read_text()
    again = cache / "again" / "rows.jsonl"
    again.parent.mkdir()
    shutil.copy(upload, again)
    assert svc.save_upload(str(again)) == stored  # the same content, stored once
    upload.unlink()
    assert Path(svc.save_upload(str(again))).is_file()
    with pytest.raises(RequestError, match=r"dataset: the uploaded file 'rows.jsonl' cannot be read"):
        svc.save_upload(str(upload))
    monkeypatch.setenv("TLAB_HOSTED", "1")  # each visitor's uploads in their own folder, named by no one else
    mine = svc.save_upload(str(again), owner="session:a")
    assert mine != stored and Path(mine).parent.parent == svc.uploads_for("session:a")
    assert svc.preview_data({"source": "file", "name": mine}, "{{text}}", owner="session:a")["num_rows"] == 2
    for name, owner in ((str(again), "session:a"), (mine, "session:b"), (stored, "session:a")):
        with pytest.raises(RequestError, match="local dataset paths are turned off on this server"):
            svc.preview_data({"source": "file", "name": name}, "{{text}}", owner=owner)


def test_an_uploaded_reward_file_is_saved_under_its_name_and_refused_when_hosted(home, tmp_path, monkeypatch):
    source = tmp_path / "cache" / "short.py"
    source.parent.mkdir()
    source.write_text("def short(prompts, completions, **kwargs):\n    return [0.0 for _ in completions]\n")
    svc = Service()
    assert svc.save_reward_upload(str(source))["functions"] == ["short"]
    assert {"file": "short.py", "functions": ["short"]}.items() <= svc.reward_functions()["files"][0].items()
    with pytest.raises(RequestError, match="the uploaded reward file 'gone.py' cannot be read"):
        svc.save_reward_upload(str(tmp_path / "gone.py"))
    monkeypatch.setenv("TLAB_HOSTED", "1")
    with pytest.raises(RequestError, match=r"Python code from a visitor"):
        svc.save_reward_upload(str(source))
