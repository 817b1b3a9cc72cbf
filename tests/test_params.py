import pytest

from tlab_gradio import manifests, params

SFT = manifests.load_all()[0]["llama_sft_multi_gpu"]


def problems(values):
    with pytest.raises(params.ParamError) as info:
        params.validate(SFT, values)
    return info.value.problems


def test_defaults_fill_in_and_values_are_normalised():
    clean = params.validate(SFT, {"max_steps": 5.0, "learning_rate": 1})
    assert clean["max_steps"] == 5 and isinstance(clean["max_steps"], int)
    assert clean["learning_rate"] == 1.0 and isinstance(clean["learning_rate"], float)
    assert clean["lora_r"] == 16 and clean["gpu_ids"] == "auto"
    assert set(clean) == set(SFT.parameters)


def test_unknown_name_suggests_the_nearest():
    assert problems({"max_step": 3}) == ["unknown parameter `max_step` (did you mean `max_steps`?)"]
    assert problems({"zzzz": 1}) == ["unknown parameter `zzzz`"]


def test_each_bad_value_is_named():
    got = problems({
        "lora_r": "16", "max_steps": 2.5, "use_lora": 1, "lora_dropout": 0.95, "per_device_train_batch_size": 0,
        "device": "tpu", "adaptor_name": "../escape",
    })
    assert "`lora_r` (LoRA R): '16' is not of type 'integer'" in got
    assert "`max_steps` (Max Steps (-1: set by epochs)): 2.5 is not of type 'integer'" in got
    assert "`use_lora` (Use LoRA (off: full fine-tune)): 1 is not of type 'boolean'" in got
    assert "`lora_dropout` (LoRA Dropout): 0.95 is greater than the maximum of 0.9" in got
    assert "`per_device_train_batch_size` (Batch Size per Device): 0 is less than the minimum of 1" in got
    assert "`device` (Training Device): 'tpu' is not one of ['cuda', 'cpu']" in got
    assert any(p.startswith("`adaptor_name` (Adaptor Name): '../escape' does not match") for p in got)
    assert len(got) == 7


def test_bool_is_not_a_number_and_required_is_enforced():
    assert problems({"learning_rate": True}) == ["`learning_rate` (Learning Rate): True is not of type 'number'"]
    assert problems({"adaptor_name": "  "}) == ["`adaptor_name` (Adaptor Name) is required"]
    assert params.validate(SFT, {"adaptor_name": None, "max_steps": ""})["adaptor_name"] == "tlab-sft"  # defaults


def test_multiple_of():
    m = manifests.Manifest.model_validate({
        **SFT.model_dump(), "parameters": {**SFT.model_dump()["parameters"],
                                           "lora_r": {"title": "R", "type": "integer", "multipleOf": 4, "default": 8}},
    })
    with pytest.raises(params.ParamError) as info:
        params.validate(m, {"lora_r": 6})
    assert info.value.problems == ["`lora_r` (R): 6 is not a multiple of 4"]


def test_the_checks_need_the_parameter_schema_not_the_manifest_loader():
    """No import circle: params.py and manifests.py both import parameter.py, and not each other."""
    import ast
    from pathlib import Path

    def imports(module: str) -> set[str]:
        tree = ast.parse((Path(params.__file__).parent / f"{module}.py").read_text())
        return {alias.name if node.module is None else node.module for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.level == 1 for alias in node.names}

    assert "manifests" not in imports("params") and "parameter" in imports("params")
    assert "params" not in imports("manifests") and "parameter" in imports("manifests")


def test_a_grpo_job_on_a_cpu_gets_cpu_sized_defaults():
    """GRPO's GPU defaults (32 x 8 = 256 completions of 256 tokens a step) took 76 s a step on 2 cores. On a CPU
    the defaults are the manifest's `default_on_cpu`; a value the user gives wins, and a GPU keeps the others."""
    grpo = manifests.load_all()[0]["grpo_multi_gpu"]
    cpu = params.validate(grpo, {"device": "cpu"})
    assert (cpu["per_device_train_batch_size"], cpu["gradient_accumulation_steps"], cpu["num_generations"],
            cpu["max_completion_length"]) == (8, 1, 4, 64)
    gpu = params.validate(grpo, {"device": "cuda"})
    assert (gpu["per_device_train_batch_size"], gpu["gradient_accumulation_steps"], gpu["num_generations"],
            gpu["max_completion_length"]) == (32, 8, 8, 256)
    assert params.validate(grpo, {"device": "cpu", "max_completion_length": 200})["max_completion_length"] == 200


def test_a_cpu_default_is_checked_like_a_default():
    from tlab_gradio.parameter import Parameter

    with pytest.raises(ValueError, match="default_on_cpu 0"):
        Parameter(title="Batch", type="integer", default=8, default_on_cpu=0, minimum=1)
