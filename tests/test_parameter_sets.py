"""Issue 16, item 2: the app owns the launch settings, and shared training parameters are declared once.

A manifest of this app declares what its trainer trains with; the app adds its launch settings
(tlab_gradio/launch_settings.py) and the shared sets the manifest names in `parameter_sets`
(plugin_manifests/shared/, tlab_gradio/parameter_sets.py).
"""
import json
import shutil
import sys
from pathlib import Path

import pytest

from tlab_gradio import launch_settings, manifests, parameter_sets

DATA = Path(__file__).resolve().parent / "data"
OURS = manifests.settings.MANIFEST_DIR
LAUNCH = set(launch_settings.NAMES)
DISTRIBUTED = set(launch_settings.DISTRIBUTED)


def minimal(**changes) -> dict:
    """A manifest of this app with one parameter of its own and nothing else."""
    raw = {"uniqueId": "minimal", "name": "Minimal", "description": "d", "version": "0.1", "type": "trainer",
           "train_type": "sft", "trainer": "sft.py", "multi_gpu": True, "supported_hardware_architectures":
           ["cuda", "cpu"], "model_architectures": ["LlamaForCausalLM"],
           "parameters": {"use_lora": {"title": "Use LoRA", "type": "boolean", "default": True}}}
    raw.update(changes)
    return raw


def load(raw: dict) -> manifests.Manifest:
    return manifests.Manifest.model_validate(raw)


def error(raw: dict, folder: Path) -> str:
    """The loader's message for this manifest, written into `folder`."""
    (folder / f"{raw['uniqueId']}.json").write_text(json.dumps(raw))
    found, errors = manifests.load_all(folder)
    assert raw["uniqueId"] not in found
    return next(e.message for e in errors if e.plugin_id == raw["uniqueId"])


def test_a_manifest_without_launch_settings_gets_them_all_in_its_form():
    m = load(minimal())
    assert LAUNCH <= set(m.parameters) and list(m.parameters)[-1] == "use_lora"
    assert m.parameters["device"].enum == ["cuda", "cpu"] and m.parameters["device"].required
    assert m.parameters["gpu_ids"].default == "auto" and m.parameters["distributed_strategy"].default == "ddp"
    assert m.help("fsdp_cpu_offload").startswith("Keep sharded parameters in CPU memory")
    groups = [(g.title, g.parameters) for g in m.groups()]
    assert groups == [("Hardware", ["device", "gpu_ids", "cpu_processes", "mixed_precision"]),
                      ("Several GPUs and machines", list(launch_settings.DISTRIBUTED)),
                      (manifests.OTHER_GROUP, ["use_lora"])]
    assert not m.groups()[1].open


def test_a_one_gpu_manifest_gets_no_distributed_strategy_and_one_gpu_id(tmp_path):
    m = load(minimal(multi_gpu=False, supported_hardware_architectures=["cuda"]))
    assert set(m.parameters) == {"device", "gpu_ids", "mixed_precision", "use_lora"}
    assert m.parameters["device"].enum == ["cuda"]
    assert (m.parameters["gpu_ids"].title, m.parameters["gpu_ids"].default) == ("GPU ID to Train", "0")
    assert [g.title for g in m.groups()] == ["Hardware", manifests.OTHER_GROUP]
    # The shipped one-GPU plugin: the same three, and Unsloth's form has no distributed section
    unsloth = manifests.load_all()[0]["unsloth_grpo"]
    assert LAUNCH & set(unsloth.parameters) == {"device", "gpu_ids", "mixed_precision"}
    # A launch setting that does not apply to it cannot be declared
    stray = minimal(uniqueId="stray", multi_gpu=False, supported_hardware_architectures=["cuda"])
    stray["parameters"]["distributed_strategy"] = {"default": "ddp"}
    assert error(stray, tmp_path) == ("distributed_strategy: launch settings that do not apply to a plugin with "
                                      "multi_gpu false on cuda")


def test_the_device_choices_follow_the_hardware():
    cpu = load(minimal(supported_hardware_architectures=["cpu"]))
    assert cpu.parameters["device"].enum == ["cpu"] and cpu.parameters["device"].default == "cpu"
    assert "gpu_ids" not in cpu.parameters and "cpu_processes" in cpu.parameters
    assert cpu.help("device") == "cpu trains on the processor (slow, for small models and trials)."
    cuda = load(minimal(supported_hardware_architectures=["cuda"]))
    assert cuda.parameters["device"].enum == ["cuda"] and "cpu_processes" not in cuda.parameters
    amd = load(minimal(supported_hardware_architectures=["amd"]))  # loads; readiness says it cannot run here
    assert amd.parameters["device"].enum == ["cuda", "cpu"] and manifests.readiness(amd, gpu_count=1)


def test_a_manifest_may_only_narrow_a_launch_setting(tmp_path):
    narrowed = load(minimal(parameters={"device": {"enum": ["cpu"]}, "cpu_processes": {"maximum": 8, "default": 2},
                                        "gpu_ids": {"default": "0"}}))
    assert narrowed.parameters["device"].enum == ["cpu"]
    assert narrowed.parameters["device"].default == "cpu"  # the app's default was narrowed away
    assert (narrowed.parameters["cpu_processes"].maximum, narrowed.parameters["cpu_processes"].default) == (8, 2)
    assert narrowed.parameters["gpu_ids"].title == "GPU IDs to Train"
    assert load(minimal(parameters={"device": {"title": "Training Device"}})).parameters["device"].enum
    app = ("is a launch setting the app defines (tlab_gradio/launch_settings.py); a manifest may only narrow it "
           "(default, enum, minimum, maximum): ")
    cases = {
        "retitled": ({"gpu_ids": {"title": "GPUs"}}, "`gpu_ids` " + app + "its title is the app's"),
        "wider_enum": ({"device": {"enum": ["cuda", "tpu"]}}, "`device` " + app + "the enum must be a part of "
                                                                                 "['cuda', 'cpu']"),
        "wider_max": ({"cpu_processes": {"maximum": 128}}, "the maximum cannot go above 64"),
        "bad_default": ({"cpu_processes": {"default": 0}}, "parameters.cpu_processes: default 0: 0 is "
                                                           "less than the minimum of 1"),
    }
    for stem, (params, expected) in cases.items():
        assert expected in error(minimal(uniqueId=stem, parameters=params), tmp_path), stem
    helped = minimal(uniqueId="helped", parameters_ui={"device": {"ui:help": "mine"}})
    assert error(helped, tmp_path) == "parameters_ui: `device` is a launch setting; its help is the app's"


def test_a_loaded_manifest_dumped_loads_again_the_same():
    for m in manifests.load_all()[0].values():
        again = load(m.model_dump())
        assert again.parameters == m.parameters and again.parameters_ui == m.parameters_ui, m.id
        assert again.groups() == m.groups(), m.id


def test_a_shared_set_referenced_by_two_manifests(tmp_path):
    found = manifests.load_all()[0]
    grpo, unsloth, sft = found["grpo_multi_gpu"], found["unsloth_grpo"], found["llama_sft_multi_gpu"]
    rewards = json.loads((OURS / "shared" / "grpo_rewards.json").read_text())
    for name in rewards["parameters"]:
        assert grpo.parameters[name] == unsloth.parameters[name], name
        assert name not in json.loads((OURS / "grpo_multi_gpu.json").read_text())["parameters"]
    assert grpo.parameters["adam_beta2"] == sft.parameters["adam_beta2"] == unsloth.parameters["adam_beta2"]
    assert [g for g in grpo.groups() if g.title == "Rewards"] == [g for g in unsloth.groups() if g.title == "Rewards"]
    # A folder with its own set: both plugins get it, and a change to the set reaches both
    (tmp_path / "shared").mkdir()
    mine = {"description": "mine", "parameters": {"packing": {"title": "Packing", "type": "boolean", "default": False}},
            "parameters_ui": {"packing": {"ui:help": "Pack."}},
            "parameter_groups": [{"title": "Layout", "parameters": ["packing"]}]}
    (tmp_path / "shared" / "layout.json").write_text(json.dumps(mine))
    for stem in ("one", "two"):
        (tmp_path / f"{stem}.json").write_text(json.dumps(minimal(uniqueId=stem, parameter_sets=["layout"])))
    found, errors = manifests.load_all(tmp_path)
    assert errors == [] and sorted(found) == ["one", "two"]  # shared/ holds sets, not plugins
    for m in found.values():
        assert m.parameters["packing"].default is False and m.help("packing") == "Pack."
        assert [g.title for g in m.groups()] == ["Hardware", "Layout", "Several GPUs and machines",
                                                 manifests.OTHER_GROUP]
    mine["parameters"]["packing"]["default"] = True
    (tmp_path / "shared" / "layout.json").write_text(json.dumps(mine))
    assert all(m.parameters["packing"].default for m in manifests.load_all(tmp_path)[0].values())


def test_a_manifest_overrides_a_shared_default_and_keeps_the_rest():
    found = manifests.load_all()[0]
    shared = json.loads((OURS / "shared" / "training.json").read_text())["parameters"]["learning_rate"]
    lr = {pid: found[pid].parameters["learning_rate"] for pid in ("grpo_multi_gpu", "llama_sft_multi_gpu",
                                                                    "unsloth_grpo")}
    assert shared["default"] == 5e-05  # transformers' own: each plugin of ours gives its default
    assert lr["grpo_multi_gpu"].default == 3e-05 and lr["grpo_multi_gpu"].maximum == shared["maximum"]
    assert (lr["llama_sft_multi_gpu"].default, lr["llama_sft_multi_gpu"].maximum) == (0.0002, 1)  # and SFT its limits
    assert lr["unsloth_grpo"].default == 5e-06 and lr["unsloth_grpo"].maximum == shared["maximum"]
    assert {p.title for p in lr.values()} == {shared["title"]}
    # The plugin's help for a shared parameter is added to the set's (GRPO's note on its learning rate)
    assert found["grpo_multi_gpu"].help("learning_rate").startswith("The whole model is trained")
    # A field the override gives is checked with the set's: a default out of the set's limits is refused
    with pytest.raises(ValueError, match="(?s)learning_rate.*0.5 is greater than the maximum of 0.01"):
        load(minimal(parameter_sets=["training"], parameters={"learning_rate": {"default": 0.5}}))
    # Its own groups may take a set's parameter: it moves there from the set's group
    moved = load(minimal(parameter_sets=["training"], parameter_groups=[{"title": "Mine", "parameters": ["seed"]}]))
    by_title = {g.title: g.parameters for g in moved.groups()}
    assert by_title["Mine"] == ["seed"] and "seed" not in by_title["Optimiser, logging and checkpoints"]


def test_set_errors_are_manifest_errors_naming_the_set(tmp_path):
    unknown = minimal(uniqueId="unknown", parameter_sets=["training", "rewardz"])
    message = error(unknown, tmp_path)
    assert message == ("parameter_sets: unknown parameter set 'rewardz' (did you mean `grpo_rewards`?); the shared "
                       f"sets are grpo, grpo_rewards, held_out, training, in {OURS / 'shared'}")
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "owns.json").write_text(json.dumps({"parameters": {
        "device": {"title": "Device", "type": "string"}}}))
    (tmp_path / "shared" / "again.json").write_text(json.dumps({"parameters": {
        "seed": {"title": "Seed", "type": "integer"}}}))
    (tmp_path / "shared" / "broken.json").write_text(json.dumps({"parameters": {"x": {"title": "X"}}}))
    assert "the shared set 'owns' declares device: launch settings are the app's" in error(
        minimal(uniqueId="owns", parameter_sets=["owns"]), tmp_path)
    assert error(minimal(uniqueId="again", parameter_sets=["training", "again"]), tmp_path) == (
        "parameter 'seed' is declared by both the shared set 'training' and the shared set 'again'")
    assert "the shared set 'broken'" in error(minimal(uniqueId="broken", parameter_sets=["broken"]), tmp_path)
    assert "is not a set name" in error(minimal(uniqueId="escape", parameter_sets=["../training"]), tmp_path)
    # The folder's own shared/ is looked up first, then the app's: `training` still comes from ours
    assert load(minimal(parameter_sets=["training"])).parameters["seed"].default == 42
    assert parameter_sets.folders(tmp_path) == [tmp_path / "shared", OURS / "shared"]


def test_a_copied_manifest_finds_the_apps_shared_sets(tmp_path):
    shutil.copy(OURS / "grpo_multi_gpu.json", tmp_path)
    found, errors = manifests.load_all(tmp_path)
    assert errors == [] and found["grpo_multi_gpu"].parameters == manifests.load_all()[0]["grpo_multi_gpu"].parameters


def test_a_transformer_lab_manifest_runs_on_our_composed_parameters():
    """Theirs are not composed (they name none of our keys): a mapped one takes our manifest's parameters,
    launch settings and shared sets included, with their defaults; tests/test_tlab_manifests.py runs one."""
    theirs = manifests.load_all(DATA / "tlab_manifests")[0]
    ours = manifests.load_all()[0]
    for their_id, our_id in [("llama_trainer_multi_gpu", "llama_sft_multi_gpu"),
                             ("grpo_trainer_multi_gpu", "grpo_multi_gpu"), ("unsloth_grpo_trainer", "unsloth_grpo")]:
        m = theirs[their_id]
        assert m.foreign and not m.unrunnable and m.parameter_sets == ours[our_id].parameter_sets
        assert list(m.parameters) == list(ours[our_id].parameters) and m.groups() == ours[our_id].groups()
    assert theirs["llama_trainer_multi_gpu"].parameters["per_device_train_batch_size"].default == 4  # theirs
    assert "distributed_strategy" not in theirs["unsloth_grpo_trainer"].parameters


# --- the loaded manifests are what they were before the sets ----------------------------------------------

SNAPSHOT = DATA / "loaded_manifests.json"  # our three plugins as commit 7c55fee loaded them
# What changed on purpose when each launch setting and each shared parameter got one definition:
WIDENED_ENUM = {("grpo_multi_gpu", "lr_scheduler_type"), ("unsloth_grpo", "lr_scheduler_type")}  # SFT's seven
NEW_HELP = {  # help that was another text (or none): now the one definition's
    "llama_sft_multi_gpu": {"logging_steps"},
    "grpo_multi_gpu": {"gpu_ids", "mixed_precision", "logging_steps", "max_steps", "report_to", "save_steps",
                       "warmup_steps"},
    "unsloth_grpo": {"device", "mixed_precision", "logging_steps", "max_steps", "report_to", "save_steps",
                     "warmup_steps"},
}
REORDERED = {("grpo_multi_gpu", "Generation"), ("unsloth_grpo", "Generation")}  # the set's parameters first
# Changed on purpose later, in every plugin: logging_steps 0 is the automatic interval (~100 points a run), the default
RETUNED = {"logging_steps": {"title": "Log Every N Steps (0: auto)", "default": 0, "minimum": 0}}
# and GRPO got defaults for a CPU (issue 18: 76 s a step on 2 cores with the GPU's), named in the batch's help
CPU_DEFAULTS = {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 1, "num_generations": 4,
                "max_completion_length": 64}
for _grpo in ("grpo_multi_gpu", "unsloth_grpo"):
    NEW_HELP[_grpo] = NEW_HELP[_grpo] | {"per_device_train_batch_size"}
NEW_HELP["grpo_multi_gpu"] |= {"model_dtype"}  # help no longer cites a bench result file (issue 18 item 8)
# compile's `auto` follows the model's size and the planned steps (issue 23 item 5), said in the help
NEW_HELP["llama_sft_multi_gpu"] = NEW_HELP["llama_sft_multi_gpu"] | {"torch_compile"}
NEW_HELP["grpo_multi_gpu"] |= {"cache_implementation"}
# and every plugin got the held-out evaluation (issue 19 item 3): the shared set `held_out`, its form group
HELD_OUT, HELD_OUT_GROUP = {"val_size", "eval_split", "max_eval_samples", "eval_steps", "early_stopping_patience",
                            "load_best_model_at_end"}, "Held-out evaluation"


# and SFT and GRPO a chat template field in place of the model's (issue 19 item 1)
CHAT_TEMPLATE = {"llama_sft_multi_gpu": "Data layout and loss", "grpo_multi_gpu": "Prompt and answer format"}


def without_held_out(now: dict, plugin: str) -> dict:
    assert HELD_OUT <= set(now["parameters"]) and [g["title"] for g in now["groups"]].count(HELD_OUT_GROUP) == 1
    added = HELD_OUT | ({"chat_template"} if plugin in CHAT_TEMPLATE else set())
    if plugin in CHAT_TEMPLATE:
        assert [g["title"] for g in now["groups"] if "chat_template" in g["parameters"]] == [CHAT_TEMPLATE[plugin]]
    return {"parameters": {n: s for n, s in now["parameters"].items() if n not in added},
            "parameters_ui": {n: h for n, h in now["parameters_ui"].items() if n not in added},
            "groups": [{**g, "parameters": [n for n in g["parameters"] if n not in added]}
                       for g in now["groups"] if g["title"] != HELD_OUT_GROUP]}


def snapshot(m: manifests.Manifest) -> dict:
    return {"parameters": {n: p.model_dump(exclude_none=True) for n, p in m.parameters.items()},
            "parameters_ui": m.parameters_ui, "groups": [g.model_dump(exclude_none=True) for g in m.groups()]}


def test_the_loaded_manifests_are_as_before_apart_from_the_listed_changes():
    """Per plugin, every parameter, its help and the form's groups are as commit 7c55fee loaded them (the
    manifests then copied everything), apart from the changes listed above. Parameter order within the
    manifest may differ (the form follows the groups). A later deliberate change to a manifest: regenerate
    the snapshot with `PYTHONPATH=. python tests/test_parameter_sets.py` and empty the lists."""
    before = json.loads(SNAPSHOT.read_text())
    found = manifests.load_all()[0]
    sft_schedules = found["llama_sft_multi_gpu"].parameters["lr_scheduler_type"].enum
    for plugin, old in before.items():
        now = without_held_out(snapshot(found[plugin]), plugin)
        assert set(now["parameters"]) == set(old["parameters"]), plugin
        for name, spec in old["parameters"].items():
            if (plugin, name) in WIDENED_ENUM:
                assert set(spec["enum"]) < set(sft_schedules) == set(now["parameters"][name]["enum"])
                spec = {**spec, "enum": sft_schedules}
            spec = {**spec, **RETUNED.get(name, {})}
            if plugin in ("grpo_multi_gpu", "unsloth_grpo") and name in CPU_DEFAULTS:
                spec = {**spec, "default_on_cpu": CPU_DEFAULTS[name]}
            assert now["parameters"][name] == spec, (plugin, name)
        changed = {n for n in set(old["parameters_ui"]) | set(now["parameters_ui"])
                   if old["parameters_ui"].get(n) != now["parameters_ui"].get(n)}
        assert changed == NEW_HELP[plugin], plugin
        assert [{**g, "parameters": sorted(g["parameters"])} for g in now["groups"]] == \
            [{**g, "parameters": sorted(g["parameters"])} for g in old["groups"]], plugin
        reordered = {g["title"] for g, h in zip(now["groups"], old["groups"]) if g["parameters"] != h["parameters"]}
        assert reordered == {t for p, t in REORDERED if p == plugin}, plugin


if __name__ == "__main__":  # regenerate the snapshot from the manifests as they load now
    loaded = manifests.load_all(OURS)[0]
    SNAPSHOT.write_text(json.dumps({pid: snapshot(m) for pid, m in loaded.items() if not m.foreign}, indent=1,
                                   ensure_ascii=False) + "\n")
    sys.exit(0)
