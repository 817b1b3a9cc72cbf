"""The time-per-step estimate shown before Start: it follows the job's work and the device, and it is in the
launch check the form shows."""
from tlab_gradio import step_time
from tlab_gradio.job_spec import JobSpec
from tlab_gradio.service import Service


def spec_for(svc, plugin, **params):
    return svc.prepare({"plugin": plugin, "params": {"device": "cpu", **params}}, check_data=False)


def test_the_estimate_follows_the_work_and_the_device(tmp_path, monkeypatch):
    monkeypatch.setenv("TLAB_HOME", str(tmp_path))
    svc = Service()
    # a fixed CPU speed (FLOP/s by threads), so the figures below are exact ratios
    monkeypatch.setattr(step_time, "_CPU_SPEED", {2: (1e10, 0.0), 1: (0.5e10, 0.0)})
    monkeypatch.setattr(step_time.time, "monotonic", lambda: 0.0)
    small = step_time.estimate(spec_for(svc, "grpo_multi_gpu", cpu_processes=1), False, [], 2)["seconds"]
    twice = step_time.estimate(spec_for(svc, "grpo_multi_gpu", cpu_processes=1, per_device_train_batch_size=16),
                               False, [], 2)["seconds"]
    decode = 64 * 2 * step_time.CPU_DECODE_LAYER_S  # the embedded model has 2 layers
    overhead = step_time.STEP_OVERHEAD_S["cpu"]
    assert abs((twice - decode - overhead) - 2 * (small - decode - overhead)) < 1e-9
    # two processes on two cores: each has one thread, so each step's share takes as long on half the speed
    two = step_time.estimate(spec_for(svc, "grpo_multi_gpu", cpu_processes=2), False, [], 2)["seconds"]
    assert abs((two - decode - overhead) - 2 * (small - decode - overhead)) < 1e-9
    # LoRA skips the weight gradients: 4 of the 6 FLOPs a token
    sft = spec_for(svc, "llama_sft_multi_gpu", cpu_processes=1)
    full, lora = (step_time.estimate(sft, lora, [], 2)["seconds"] - overhead for lora in (False, True))
    assert abs(lora / full - 4 / 6) < 1e-9
    on_gpu = JobSpec.model_validate({**sft.model_dump(), "launch": {**sft.launch.model_dump(), "device": "cuda"}})
    assert step_time.estimate(on_gpu, True, ["NVIDIA H200"], 2)["seconds"] < \
        step_time.estimate(on_gpu, True, ["Tesla T4"], 2)["seconds"]
    assert step_time.gpu_flops("NVIDIA A100-SXM4-80GB") == 312e12 and step_time.gpu_flops("NVIDIA A10G") == 125e12


def test_the_launch_check_says_the_time_per_step(tmp_path, monkeypatch):
    monkeypatch.setenv("TLAB_HOME", str(tmp_path))
    est = Service().memory_estimate({"plugin": "grpo_multi_gpu", "params": {"device": "cpu"}})
    assert est["step_time"]["seconds"] > 0 and "a step (8 completions of up to 64 tokens per process" in \
        est["step_time"]["text"], est["step_time"]


def test_sft_counts_the_rows_own_length_once_the_data_is_read(tmp_path, monkeypatch):
    """With padding-free batches a row costs its own length: the bundled sample's rows are about 40 tokens,
    not max_length's 1024, so the check that read the data estimates far less than the bound without it."""
    monkeypatch.setenv("TLAB_HOME", str(tmp_path))
    request = {"plugin": "llama_sft_multi_gpu", "params": {"device": "cpu", "cpu_processes": 1}}
    svc = Service()
    bound = svc.memory_estimate(request)["step_time"]
    read = svc.launch_preview(request)["memory"]["step_time"]
    overhead = step_time.STEP_OVERHEAD_S["cpu"]
    assert "up to 1024 tokens" in bound["text"] and "rows of about" in read["text"]
    assert read["seconds"] - overhead < (bound["seconds"] - overhead) / 5, (bound, read)
    packed = svc.launch_preview({**request, "params": {**request["params"], "packing": True}})["memory"]["step_time"]
    assert "sequences of 1024 tokens" in packed["text"]


def test_a_gpu_grpo_estimate_follows_whether_its_decoding_is_compiled(tmp_path, monkeypatch):
    """On a GPU the trainer compiles its decoding only where that pays back (warmup.decoding_cache): a short run
    decodes uncompiled, about 3x slower a token, and the estimate says so; the form's cache setting wins."""
    from tlab_gradio import memory

    monkeypatch.setenv("TLAB_HOME", str(tmp_path))
    svc = Service()

    def on_gpu(**params):
        spec = spec_for(svc, "grpo_multi_gpu", **params)
        return JobSpec.model_validate({**spec.model_dump(), "launch": {**spec.launch.model_dump(), "device": "cuda",
                                                                      "mixed_precision": "bf16"}})

    # a 135M model, as SmolLM2: its shape in the config the form read
    smol = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
            "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": True}
    shape = memory.Shape.from_config(smol)

    def seconds(**params):
        spec = on_gpu(max_completion_length=256, **params)
        spec = JobSpec.model_validate({**spec.model_dump(), "model": {**spec.model.model_dump(), "config": smol}})
        return step_time.decoding_compiled(spec, shape), step_time.estimate(spec, False, ["NVIDIA H200"], 2)["seconds"]

    short, short_s = seconds(max_steps=2)  # 512 tokens decoded: compiling would not pay back
    long, long_s = seconds(max_steps=50)
    forced, forced_s = seconds(max_steps=2, cache_implementation="static")
    assert (short, long, forced) == (False, True, True)
    per_layer = step_time.GPU_EAGER_DECODE_LAYER_S - step_time.GPU_DECODE_LAYER_S
    assert abs((short_s - long_s) - 256 * 30 * per_layer) < 1e-6 and abs(forced_s - long_s) < 1e-6
