import copy
import json
import shutil


from tlab_gradio import manifests

GOOD = json.loads((manifests.settings.MANIFEST_DIR / "llama_sft_multi_gpu.json").read_text())


def test_shipped_manifests_load_without_errors():
    found, errors = manifests.load_all()
    assert errors == []
    sft = found["llama_sft_multi_gpu"]
    assert sft.name == "Llama SFT Trainer -- Huggingface TRL (Multi GPU Support)"
    assert sft.train_type == "sft" and sft.multi_gpu and sft.trainer_path.is_file()
    # Parameter names follow SFTConfig / LoraConfig
    for name in ("learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
                 "gradient_accumulation_steps", "max_length", "lora_r", "lora_alpha", "lora_dropout",
                 "use_lora", "device", "gpu_ids"):
        assert name in sft.parameters, name
    assert sft.parameters["device"].title == "Training Device"
    assert sft.parameters["gpu_ids"].title == "GPU IDs to Train"


def _mutate(fn):
    data = copy.deepcopy(GOOD)
    fn(data)
    return data


BROKEN = {
    "missing_name": (_mutate(lambda d: d.pop("name")), "name: Field required"),
    "bad_type": (_mutate(lambda d: d["parameters"]["lora_r"].update(type="float")), "parameters.lora_r.type"),
    "default_out_of_range": (
        _mutate(lambda d: d["parameters"]["lora_r"].update(default=1000)),
        "default 1000: 1000 is greater than the maximum of 512",
    ),
    "typo_key": (_mutate(lambda d: d["parameters"]["lora_r"].update(maximun=3)), "parameters.lora_r.maximun"),
    "min_over_max": (
        _mutate(lambda d: d["parameters"]["lora_r"].update(minimum=10, maximum=5, default=None)),
        "minimum 10 is greater than maximum 5",
    ),
    "enum_type": (
        _mutate(lambda d: d["parameters"]["attn_implementation"].update(enum=["auto", 3])),
        "enum values [3] are not of type 'string'",
    ),
    "trainer_path": (_mutate(lambda d: d.update(trainer="../sft.py")), "must be a file name like 'sft.py'"),
    "no_train_type": (_mutate(lambda d: d.pop("train_type")),
                      "must set train_type, trainer, multi_gpu (missing: train_type)"),
    "launch_retitled": (_mutate(lambda d: d["parameters"].update(gpu_ids={"title": "GPUs"})),
                        "`gpu_ids` is a launch setting the app defines (tlab_gradio/launch_settings.py); a manifest "
                        "may only narrow it (default, enum, minimum, maximum): its title is the app's"),
    "unknown_set": (_mutate(lambda d: d["parameter_sets"].append("trainig")),
                    "parameter_sets: unknown parameter set 'trainig' (did you mean `training`?)"),
    "ui_unknown": (
        _mutate(lambda d: d["parameters_ui"].update(lora_rr={"ui:help": "x"})),
        "parameters_ui names parameters that do not exist: lora_rr",
    ),
    "bad_requirement": (_mutate(lambda d: d.update(requirements=["trl>>1"])), "not a valid pip requirement"),
    "group_unknown": (_mutate(lambda d: d["parameter_groups"][0]["parameters"].append("lora_rr")),
                      "parameter_groups 'Training' names parameters that do not exist: lora_rr"),
    "group_twice": (_mutate(lambda d: d["parameter_groups"][0]["parameters"].append("lora_r")),
                    "parameter 'lora_r' is in two parameter_groups: 'Training' and 'LoRA and output'"),
    "group_typo_key": (_mutate(lambda d: d["parameter_groups"][0].update(opened=False)), "parameter_groups.0.opened"),
    "bad_hardware": (_mutate(lambda d: d.update(supported_hardware_architectures=["tpu"])),
                     "supported_hardware_architectures.0"),
}


def test_each_broken_manifest_reports_its_problem_and_the_good_one_still_loads(tmp_path):
    shutil.copy(manifests.settings.MANIFEST_DIR / "llama_sft_multi_gpu.json", tmp_path)
    for stem, (data, _) in BROKEN.items():
        data["uniqueId"] = stem
        (tmp_path / f"{stem}.json").write_text(json.dumps(data))
    (tmp_path / "not_json.json").write_text('{"name": "x",\n  oops}')
    mismatch = copy.deepcopy(GOOD)
    (tmp_path / "renamed.json").write_text(json.dumps(mismatch))
    (tmp_path / "a_list.json").write_text("[1, 2]")

    found, errors = manifests.load_all(tmp_path)
    assert list(found) == ["llama_sft_multi_gpu"]
    by_file = {e.file: e.message for e in errors}
    assert len(by_file) == len(BROKEN) + 3
    for stem, (_, expected) in BROKEN.items():
        assert expected in by_file[f"{stem}.json"], (stem, by_file[f"{stem}.json"])
    assert "not valid JSON" in by_file["not_json.json"] and "line 2" in by_file["not_json.json"]
    assert "uniqueId 'llama_sft_multi_gpu' must equal the file name's stem 'renamed'" in by_file["renamed.json"]
    assert "must be a JSON object" in by_file["a_list.json"]
    assert str(errors[0]).startswith(errors[0].file + ": ")


def test_readiness_names_missing_packages_and_cuda():
    data = _mutate(lambda d: d.update(requirements=["surely-not-installed-pkg>=1", "pytest>=999"],
                                      supported_hardware_architectures=["cuda"]))
    m = manifests.Manifest.model_validate(data)
    reasons = manifests.readiness(m, gpu_count=0)
    assert "missing package surely-not-installed-pkg (surely-not-installed-pkg>=1)" in reasons
    assert any(r.startswith("needs pytest>=999, found pytest ") for r in reasons)
    assert "needs a CUDA GPU (none found on this machine)" in reasons
    assert manifests.readiness(manifests.load_all()[0]["llama_sft_multi_gpu"], gpu_count=0) == []


def test_form_sections_cover_every_parameter_once():
    """The shipped manifests group every parameter; the app's and the shared sets' groups come with their
    parameters, and what no group names is one open section, in manifest order."""
    for m in manifests.load_all()[0].values():
        listed = [n for g in m.groups() for n in g.parameters]
        assert sorted(listed) == sorted(m.parameters) and len(listed) == len(set(listed)), m.id
        assert manifests.OTHER_GROUP not in [g.title for g in m.groups()], m.id
    partial = manifests.Manifest.model_validate(_mutate(lambda d: d.update(parameter_groups=[
        {"title": "Speed", "open": False, "parameters": ["torch_compile", "packing"]}])))
    app_and_set = ["Training", "Optimiser, logging and checkpoints", "Held-out evaluation", "Several GPUs and machines"]
    hardware, speed, *placed, rest = partial.groups()
    assert (hardware.title, [g.title for g in placed]) == ("Hardware", app_and_set)
    assert (speed.title, speed.open, speed.parameters) == ("Speed", False, ["torch_compile", "packing"])
    assert rest.title == manifests.OTHER_GROUP and rest.open
    set_defaults = {"learning_rate", "warmup_steps", "logging_steps", "save_steps"}  # SFT's overrides of the set's
    own = [n for n in GOOD["parameters"] if n not in set_defaults]
    assert rest.parameters == [n for n in own if n not in ("torch_compile", "packing")]
    bare = manifests.Manifest.model_validate(_mutate(lambda d: d.pop("parameter_groups")))
    assert [g.title for g in bare.groups()] == ["Hardware", *app_and_set, manifests.OTHER_GROUP]
    assert bare.groups()[-1].parameters == own


def test_a_changed_added_or_removed_manifest_is_read_again(tmp_path):
    shutil.copy(manifests.settings.MANIFEST_DIR / "llama_sft_multi_gpu.json", tmp_path)
    first, _ = manifests.load_all(tmp_path)
    assert manifests.load_all(tmp_path)[0]["llama_sft_multi_gpu"] is first["llama_sft_multi_gpu"]  # not re-read
    renamed = _mutate(lambda d: d.update(name="Renamed SFT"))
    (tmp_path / "llama_sft_multi_gpu.json").write_text(json.dumps(renamed, indent=4))
    assert manifests.load_all(tmp_path)[0]["llama_sft_multi_gpu"].name == "Renamed SFT"
    (tmp_path / "broken.json").write_text("{")
    assert [e.file for e in manifests.load_all(tmp_path)[1]] == ["broken.json"]
    (tmp_path / "broken.json").unlink()
    assert manifests.load_all(tmp_path)[1] == []


def test_a_missing_trainer_file_loads_as_not_runnable():
    m = manifests.Manifest.model_validate(_mutate(lambda d: d.update(trainer="nope.py")))
    assert m.unrunnable == ["trainer program 'nope.py' does not exist in tlab_gradio/trainers/"]
    assert manifests.readiness(m, gpu_count=0)[0] == m.unrunnable[0]
    assert not m.foreign and m.notes == []


def test_hardware_this_app_does_not_drive_loads_not_ready():
    amd = manifests.Manifest.model_validate(_mutate(lambda d: d.update(supported_hardware_architectures=["amd"])))
    assert manifests.readiness(amd, gpu_count=2) == [
        "needs an AMD GPU (ROCm): this app trains on CUDA GPUs or the CPU only"]
    both = manifests.Manifest.model_validate(_mutate(lambda d: d.update(
        supported_hardware_architectures=["cuda", "amd"])))
    assert manifests.readiness(both, gpu_count=1) == []
    assert manifests.readiness(both, gpu_count=0) == [
        "needs a CUDA GPU or an AMD GPU (ROCm) (none found on this machine)"]


def test_unknown_ui_keys_are_noted_not_refused():
    m = manifests.Manifest.model_validate(_mutate(lambda d: d["parameters_ui"]["lora_r"].update(
        {"ui:options": {"multiple": False}})))
    assert m.notes == ["parameters_ui keys this app does not use were ignored: ui:options"]
