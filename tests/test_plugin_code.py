"""A plugin's code is its manifest and one trainer module: main() beside its own checks (issue 16, item 3)."""
import json
import subprocess
import sys

import pytest

from tlab_gradio import gpus, manifests, plugin_code
from tlab_gradio.service import RequestError, Service

PLUGINS = sorted(manifests.load_all()[0])


@pytest.mark.parametrize("plugin", PLUGINS)
def test_the_app_reads_a_plugins_code_without_a_training_stack(plugin):
    """The web process imports each trainer module for its check(): no torch, transformers, TRL or Unsloth
    (Unsloth must be imported before transformers in a run, and only there)."""
    path = manifests.load_all()[0][plugin].trainer_path
    code = ("import sys, json; from tlab_gradio import plugin_code; m = plugin_code.module(sys.argv[1]); "
            "print(json.dumps({'heavy': sorted(n for n in ('torch', 'transformers', 'trl', 'unsloth', 'peft') "
            "if n in sys.modules), 'main': callable(getattr(m, 'main', None)), "
            "'check': callable(getattr(m, 'check', None))}))")
    out = json.loads(subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                                    check=True).stdout)
    assert out == {"heavy": [], "main": True, "check": True}


def test_each_plugins_checks_run_from_its_trainer_module(home):
    """The checks a request meets are the plugin module's own: SFT's LoRA rules, GRPO's group arithmetic, and
    Unsloth GRPO sharing GRPO's reward and group checks but not its vLLM/cache ones."""
    cpu = gpus.resolve("cpu", None, 1, [])
    sft = manifests.load_all()[0]["llama_sft_multi_gpu"]
    assert plugin_code.check(sft.trainer_path)({"fuse_model": True, "use_lora": False}, cpu) == [
        "`fuse_model` merges a LoRA adapter: it needs `use_lora`"]
    grpo = plugin_code.check(manifests.load_all()[0]["grpo_multi_gpu"].trainer_path)
    unsloth = plugin_code.check(manifests.load_all()[0]["unsloth_grpo"].trainer_path)
    p = {"per_device_train_batch_size": 3, "gradient_accumulation_steps": 1, "num_generations": 2,
         "reward_tag_count": True}
    assert any("not divisible by num_generations 2" in x for x in grpo(p, cpu))
    assert any("not divisible by num_generations 2" in x for x in unsloth(p, cpu))
    vllm = {**p, "per_device_train_batch_size": 2, "use_vllm": True}
    assert any("`use_vllm` needs device `cuda`" in x for x in grpo(vllm, cpu))
    assert unsloth(vllm, cpu) == []
    with pytest.raises(RequestError, match="not divisible by num_generations"):
        Service().prepare({"plugin": "grpo_multi_gpu", "device": "cpu", "template": "{{question}}",
                           "completion_template": "{{answer}}", "dataset": "grpo_arithmetic",
                           "params": {"per_device_train_batch_size": 3, "gradient_accumulation_steps": 1,
                                      "num_generations": 2}}, check_data=False)


def test_the_memory_estimate_asks_the_plugin_whether_it_trains_lora():
    found = manifests.load_all()[0]
    assert plugin_code.trains_lora(found["llama_sft_multi_gpu"].trainer_path, {"use_lora": True})
    assert not plugin_code.trains_lora(found["llama_sft_multi_gpu"].trainer_path, {"use_lora": False})
    assert plugin_code.trains_lora(found["unsloth_grpo"].trainer_path, {})  # LoRA without a switch
    assert not plugin_code.trains_lora(found["grpo_multi_gpu"].trainer_path, {"lora_r": 8})  # no guessing by name
