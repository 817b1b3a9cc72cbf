"""The SFT plugin's speed settings: packing keeps examples apart, the memory plan fits the GPU it gets
without changing the samples per step, and speed options that cannot run are refused before launch."""
import pytest
import torch

from tlab_gradio import memory, warmup
from tlab_gradio.service import RequestError, Service
from tlab_gradio.trainers import sft

QWEN2_05B = memory.Shape(hidden=896, intermediate=4864, layers=24, heads=14, kv_heads=2, vocab=151936, tied=True)
FULL = dict(seq=1024, processes=1, precision="bf16")


def test_packed_examples_do_not_attend_to_each_other(tiny_model_dir):
    """What TRL's padding-free collator hands the model (one row, position ids restarting per example,
    no attention mask) gives every example the logits it has alone, with the kernel the plugin picks."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    impl = sft.attention({"packing": True}, on_cpu=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=impl).eval()
    texts = ["The first example is about packing.", "A second, longer example that must not see the first one."]
    examples = [{"input_ids": tok(t)["input_ids"]} for t in texts]
    batch = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=True)(examples)
    assert "attention_mask" not in batch and batch["input_ids"].shape[0] == 1
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        leaky = model(input_ids=batch["input_ids"], use_cache=False).logits[0]  # one long causal sequence
        start = 0
        for ex in examples:
            alone = model(input_ids=torch.tensor([ex["input_ids"]]), use_cache=False).logits[0]
            n = len(ex["input_ids"])
            torch.testing.assert_close(packed[start:start + n], alone, rtol=1e-4, atol=1e-4)
            start += n
    second = slice(len(examples[0]["input_ids"]), start)
    assert (leaky[second] - packed[second]).abs().max() > 1e-2  # the check above can fail


def test_attention_choice():
    assert sft.attention({"packing": True}, on_cpu=True) == "sdpa"
    assert sft.attention({"packing": False}, on_cpu=False) == "sdpa"
    assert sft.attention({"packing": True}, on_cpu=False) in ("flash_attention_2", "flex_attention")
    assert sft.attention({"packing": True, "attn_implementation": "eager"}, on_cpu=False) == "eager"


def test_liger_auto_only_where_memory_is_tight(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "liger_kernel" else real(name, *a))
    auto = {"liger_kernels": "auto"}
    assert sft.liger(auto, on_cpu=False, tight=True)
    assert not sft.liger(auto, on_cpu=False, tight=False)  # measured slower with memory to spare
    assert not sft.liger(auto, on_cpu=True, tight=True)
    assert sft.liger({"liger_kernels": "on"}, on_cpu=False, tight=False)
    assert not sft.liger({"liger_kernels": "off"}, on_cpu=False, tight=True)
    assert not sft.liger(auto, on_cpu=False, tight=True, compiled=True)  # compile fuses the same operations


def test_compile_auto_only_where_measured():
    auto, pays = {"torch_compile": "auto"}, warmup.Choice(True, "494.0M parameters, 300 steps planned")
    assert sft.use_compile(auto, on_cpu=False, strategy="ddp", pays=pays)
    assert not sft.use_compile(auto, on_cpu=True, strategy="ddp", pays=pays)
    assert not sft.use_compile({**auto, "load_in_4bit": True}, on_cpu=False, strategy="ddp", pays=pays)
    assert not sft.use_compile(auto, on_cpu=False, strategy="fsdp", pays=pays)
    assert sft.use_compile({"torch_compile": "on"}, on_cpu=True, strategy="ddp", pays=pays)
    assert not sft.use_compile({"torch_compile": False}, on_cpu=False, strategy="ddp", pays=pays)  # before "auto"


def test_compile_auto_only_where_it_pays_back():
    """`auto` compiles a model of 50M+ parameters over 100+ planned steps only; the form's on/off always wins;
    the reason is what the job's log prints."""
    tiny = QWEN2_05B.__class__(**{**QWEN2_05B.__dict__, "hidden": 64, "intermediate": 128, "layers": 2,
                                   "heads": 4, "kv_heads": 2, "vocab": 261}).parameters()
    big = QWEN2_05B.parameters()
    steps = warmup.planned_steps(-1, 1, samples=320, per_step=8)  # the embedded model's SFT defaults: 40 steps
    assert steps == 40 and warmup.planned_steps(500, 1, samples=320, per_step=8) == 500
    auto = {"torch_compile": "auto"}
    for parameters, steps, on in ((tiny, 40, False), (tiny, 100_000, False), (big, 40, False), (big, 99, False),
                                  (big, 100, True), (None, 1000, True)):
        choice = sft.use_compile(auto, on_cpu=False, strategy="ddp", pays=warmup.compile_training(parameters, steps))
        assert choice.on == on, (parameters, steps, choice)
        assert choice.why.startswith("auto: ")
    small = sft.use_compile(auto, False, "ddp", warmup.compile_training(tiny, 40))
    assert "M parameters: under 50M" in small.why
    short = sft.use_compile(auto, False, "ddp", warmup.compile_training(big, 40))
    assert short.why == "auto: 40 steps planned: under 100 compiling (10-60 s) does not pay back"
    forced = sft.use_compile({"torch_compile": "on"}, False, "ddp", warmup.compile_training(tiny, 40))
    assert forced.on and forced.why == "on, as set in the form"
    assert not sft.use_compile({"torch_compile": "off"}, False, "ddp", warmup.compile_training(big, 10**6))
    # flex attention compiles its kernel too: auto takes it only where the warm-up pays back
    flat = {"padding_free": True}
    assert sft.attention(flat, on_cpu=False, warm_up_pays=False) == "sdpa"
    assert sft.attention(flat, on_cpu=False, warm_up_pays=True) in ("flash_attention_2", "flex_attention")


def test_grpo_compiles_decoding_only_where_it_pays_back():
    """GRPO's static cache (decoding compiled with CUDA graphs) by the tokens the run decodes: SmolLM2-135M over 10
    steps of 256 tokens compiles, the same model over 3 steps or the embedded model does not; a cache set in the
    form is kept."""
    from tlab_gradio.trainers import grpo

    smol = 135_000_000
    assert warmup.compile_decoding(smol, 10, 256).on and not warmup.compile_decoding(smol, 3, 256).on
    assert not warmup.compile_decoding(100_000, 1000, 256).on
    bf16 = {"model_dtype": "auto", "cache_implementation": "auto"}
    dtype, cache, why = grpo.weights_and_cache(bf16, "bf16", False, warmup.compile_decoding(smol, 10, 256))
    assert (dtype, cache) == (torch.bfloat16, "static") and why.startswith("auto, decoding compiled: 135.0M")
    dtype, cache, why = grpo.weights_and_cache(bf16, "bf16", False, warmup.compile_decoding(100_000, 3, 256))
    assert (dtype, cache) == (torch.bfloat16, None) and why.startswith("auto, decoding not compiled: 0.1M")
    forced = {**bf16, "cache_implementation": "static"}
    assert grpo.weights_and_cache(forced, "bf16", False, warmup.compile_decoding(100_000, 3, 256))[1] == "static"
    assert grpo.weights_and_cache(bf16, "bf16", True, None)[1] is None  # a CPU: dynamic


def test_memory_plan_fits_the_gpu_it_gets():
    roomy = memory.plan(QWEN2_05B, 70.0, batch=8, **FULL)
    assert (roomy.checkpointing, roomy.micro_batch, roomy.accumulation) == (False, 8, 1)
    # a GPU capped to 24 GiB: the calibrated estimate (16.6 GiB, 16.5 measured) fits without checkpointing
    capped = memory.plan(QWEN2_05B, 0.9 * 24, batch=8, **FULL)
    assert (capped.checkpointing, capped.micro_batch) == (False, 8) and capped.estimate.total_gb <= 0.9 * 24
    tight = memory.plan(QWEN2_05B, 12.0, batch=8, **FULL)
    assert tight.checkpointing and tight.micro_batch == 8 and tight.estimate.total_gb <= 12.0
    lora = memory.plan(QWEN2_05B, 2.5, batch=8, use_lora=True, **FULL)  # checkpointing alone is not enough
    assert lora.checkpointing and lora.micro_batch < 8 and lora.micro_batch * lora.accumulation == 8
    assert lora.estimate.total_gb <= 2.5
    # Asked for explicitly: kept, and the batch split instead.
    kept = memory.plan(QWEN2_05B, 12.0, checkpointing="off", batch=8, **FULL)
    assert not kept.checkpointing and kept.micro_batch * kept.accumulation == 8 and kept.micro_batch < 8
    assert kept.estimate.total_gb <= 12.0
    assert memory.plan(QWEN2_05B, 9.0, batch=8, split=False, **FULL).micro_batch == 8  # DeepSpeed: no split
    cpu = memory.plan(QWEN2_05B, None, batch=8, **FULL)
    assert (cpu.checkpointing, cpu.micro_batch) == (False, 8)
    batch_7 = memory.plan(QWEN2_05B, 2.5, batch=7, use_lora=True, **FULL)  # a prime batch splits into ones only
    assert batch_7.micro_batch in (1, 7) and batch_7.micro_batch * batch_7.accumulation == 7


@pytest.mark.parametrize("params, needle", [
    ({"liger_kernels": "on"}, "`liger_kernels` on needs device `cuda`"),
    ({"attn_implementation": "flash_attention_2"}, "`attn_implementation` flash_attention_2 needs device `cuda`"),
    ({"attn_implementation": "flex_attention"}, "flex_attention trains on CUDA GPUs only"),
    ({"gradient_checkpointing": "sometimes"}, "`gradient_checkpointing` (Gradient Checkpointing): 'sometimes' is not one of"),
])
def test_speed_options_that_cannot_run_are_refused(home, params, needle):
    svc = Service()
    with pytest.raises(RequestError) as info:
        svc.start_job({"plugin": "llama_sft_multi_gpu", "device": "cpu", "params": params})
    assert any(needle in p for p in info.value.problems), info.value.problems
    assert svc.list_jobs() == []


def test_old_boolean_switch_still_loads(home):
    config = Service().prepare({"plugin": "llama_sft_multi_gpu", "device": "cpu",
                                "params": {"gradient_checkpointing": True}})
    assert config.params["gradient_checkpointing"] == "on"


def test_the_form_shows_the_plan(home):
    est = Service().memory_estimate({"plugin": "llama_sft_multi_gpu", "device": "cpu", "params": {}})
    assert est["plan"].startswith("activation checkpointing off, micro-batch 8 x 1")


def test_padding_free_and_compiled_batches_learn_what_padded_batches_learn(home):
    """Packing off: the padding-free layout (one flat row per batch, position ids per example) sees the
    same examples per step as padding, so every step's loss and token count are the padded run's; and
    compiled decoder layers (with activation checkpointing recomputing through them) change nothing either."""
    from pathlib import Path

    from tlab_gradio import logs

    svc = Service()
    runs = {}
    for name, padding_free, compiled in (("flat", True, False), ("padded", False, False), ("compiled", True, True)):
        job = svc.start_job({"plugin": "llama_sft_multi_gpu", "name": name, "params": {
            "device": "cpu", "logging_steps": 1, "per_device_train_batch_size": 4, "max_length": 128, "seed": 7,
            "gradient_checkpointing": "on" if compiled else "off", "packing": False, "padding_free": padding_free,
            "torch_compile": "on" if compiled else "auto", "max_steps": 3}})
        done = svc.jobs.wait(job["id"], 420)
        assert done.state == "COMPLETE", svc.job_log(job["id"], 40)
        runs[name] = [m for m in logs.read_metrics(Path(done.job_dir) / "metrics.jsonl")[0] if "loss" in m]
        log = svc.job_log(job["id"], 400)
        speed = [line for line in log if line.startswith("[tlab] speed:")]
        assert ("packing off, padding-free" in speed[0]) == padding_free
        assert ("torch.compile on" in speed[0]) == compiled  # auto: off on a CPU
        layout = [line for line in log if line.startswith("[tlab] batch layout:")]
        assert ("-> 1 x " if padding_free else "-> 4 x ") in layout[0]  # the collator really flattens
        assert any(line.startswith("[tlab] torch.compile: 2 decoder layers") for line in log) == compiled
        if compiled:  # compiled in place: the saved adapter keeps the model's own names (no `_orig_mod.`)
            from safetensors import safe_open

            saved = Path(done.job_dir) / "output" / done.spec.params["adaptor_name"] / "adapter_model.safetensors"
            with safe_open(str(saved), "pt") as fh:
                keys = list(fh.keys())
            assert keys and not any("_orig_mod" in k for k in keys), keys[:3]
    for other in ("padded", "compiled"):
        assert len(runs["flat"]) == len(runs[other]) == 3
        for a, b in zip(runs["flat"], runs[other]):
            assert a["num_tokens"] == b["num_tokens"]
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
