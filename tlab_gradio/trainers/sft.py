"""Supervised fine-tuning with TRL's SFTTrainer: LoRA/QLoRA through PEFT, or the full model.

Run by the app as `accelerate launch … sft.py --job-dir JOB`, one process per GPU
(or several CPU processes on gloo). JOB/config.json holds the model, the dataset,
the templates and the parameters named after SFTConfig / LoraConfig.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a plain script: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tlab_gradio import warmup  # noqa: E402
from tlab_gradio.trainers import common  # noqa: E402

SFT_KEYS = (
    "learning_rate", "num_train_epochs", "max_steps", "max_length", "packing", "lr_scheduler_type", "warmup_steps",
    "weight_decay", "max_grad_norm", "save_steps", "save_total_limit", "seed", *common.ADAM_KEYS,
)


def check(p: dict, placement) -> list[str]:
    """This plugin's own checks, run by the app before anything is launched (`Service.prepare`): the
    parameters against each other and against the machine (`placement`: the chosen device and GPUs with their
    memory and capabilities, gpus.Placement). Each problem names the setting and the way out."""
    import importlib.util

    problems = []
    if p.get("load_in_4bit"):
        if not p.get("use_lora"):
            problems.append("`load_in_4bit` (QLoRA) needs `use_lora`: a 4-bit base cannot be fully fine-tuned")
        if placement.device != "cuda":
            problems.append("`load_in_4bit` (QLoRA) needs device `cuda`: bitsandbytes 4-bit runs on CUDA GPUs")
        if importlib.util.find_spec("bitsandbytes") is None:
            problems.append("`load_in_4bit` (QLoRA) needs the bitsandbytes package: pip install bitsandbytes")
    if p.get("fuse_model") and not p.get("use_lora"):
        problems.append("`fuse_model` merges a LoRA adapter: it needs `use_lora`")
    if p.get("liger_kernels") == "on":
        if placement.device != "cuda":
            problems.append("`liger_kernels` on needs device `cuda`: Liger's kernels are Triton GPU kernels")
        if importlib.util.find_spec("liger_kernel") is None:
            problems.append("`liger_kernels` on needs the liger-kernel package: pip install liger-kernel")
    if p.get("attn_implementation") == "flash_attention_2":
        if placement.device != "cuda":
            problems.append("`attn_implementation` flash_attention_2 needs device `cuda`")
        if importlib.util.find_spec("flash_attn") is None:
            problems.append("`attn_implementation` flash_attention_2 needs the flash-attn package: pip install "
                            "flash-attn (or choose auto / flex_attention)")
    if p.get("attn_implementation") == "flex_attention" and placement.device != "cuda":
        # torch raises "FlexAttention does not support backward on CPU" at the first step (seen, torch 2.13)
        problems.append("`attn_implementation` flex_attention trains on CUDA GPUs only (PyTorch has no flex "
                        "attention backward on CPU): use auto or sdpa on cpu")
    if p.get("max_gpu_memory_gb") and placement.device == "cuda":
        smallest = min((g.memory_total_mb / 1024 for g in placement.gpus), default=None)
        if smallest is not None and p["max_gpu_memory_gb"] > smallest:
            problems.append(f"`max_gpu_memory_gb` {p['max_gpu_memory_gb']:g} is more than the chosen GPU's "
                            f"{smallest:.1f} GiB (0 uses the whole GPU)")
    return problems


def trains_lora(p: dict) -> bool:
    """LoRA (PEFT) with `use_lora`, else the whole model: the memory estimate asks (plugin_code)."""
    return bool(p.get("use_lora"))


def build_peft_config(p: dict):
    from peft import LoraConfig

    targets = (p.get("lora_target_modules") or "all-linear").strip()
    return LoraConfig(
        r=p["lora_r"],
        lora_alpha=p["lora_alpha"],
        lora_dropout=p["lora_dropout"],
        target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()],
        task_type="CAUSAL_LM",
    )


def attention(p: dict, on_cpu: bool, warm_up_pays: bool = True) -> str:
    """The attention kernel. Packed batches are one row of many examples told apart by position ids;
    every kernel here keeps them apart (transformers builds a per-example mask from the position ids),
    but sdpa then computes attention over the whole packed row. flash-attn's varlen kernel and flex
    attention's block mask skip the pairs of examples, so `auto` takes them on a GPU; flex attention only
    where compiling pays back (`warm_up_pays`, warmup.compile_training): its kernel is compiled at the first step."""
    import importlib.util

    choice = p.get("attn_implementation") or "auto"
    if choice != "auto":
        return choice
    if on_cpu or not flat_rows(p):
        return "sdpa"
    if importlib.util.find_spec("flash_attn"):
        return "flash_attention_2"
    return "flex_attention" if warm_up_pays else "sdpa"


def flat_rows(p: dict) -> bool:
    """Batches laid out as one row of examples told apart by position ids: packing, or padding-free."""
    return bool(p.get("packing") or p.get("padding_free"))


def liger(p: dict, on_cpu: bool, tight: bool, compiled: bool = False) -> bool:
    """Liger's RMSNorm/SwiGLU/RoPE kernels. `auto` takes them only where memory is tight (the plan turned
    checkpointing on): they save activation memory (3 GiB of 20 at 0.5B, batch 8) but measured slower
    where memory is ample (36k against 39k tokens/s, H100, bench/results/sft-explore-2026-11-27-h100.json): a
    small model's step is bound by kernel launches, and each Triton launch costs more than an ATen one.
    Not with compiled layers either: torch.compile fuses the same operations itself."""
    import importlib.util

    choice = p.get("liger_kernels") or "auto"
    if choice == "auto":
        return tight and not compiled and not on_cpu and importlib.util.find_spec("liger_kernel") is not None
    return choice == "on"


def switch(p: dict, key: str) -> str | None:
    """An auto/on/off setting; a job config written before it had "auto" holds a boolean."""
    value = p.get(key)
    return ("on" if value else "off") if isinstance(value, bool) else value


def use_compile(p: dict, on_cpu: bool, strategy: str, pays: warmup.Choice) -> warmup.Choice:
    """torch.compile of the decoder layers (common.compile_layers), with the reason the log gives. `auto` takes
    it on CUDA GPUs under DDP or one GPU where it pays back (`pays`: warmup.compile_training on the model's size and
    the planned steps): a 0.5B step there is bound by launching small kernels, and compiled layers cut it from
    0.26 to 0.14 s padding-free, 0.21 to 0.13 s packed (H100, bench/results/sft-probe-2026-11-27-h100.json), same
    losses; under DDP on 2 GPUs too (bench/results/multi-gpu-compiled-2026-11-27-h100x2.json). Not on CPUs (a
    C++ compile at every job's start for a gain not measured there), 4-bit bases (bitsandbytes' kernels), FSDP
    or DeepSpeed (they wrap or hook the layers' parameters; not measured). "on"/"off" in the form always wins."""
    choice = switch(p, "torch_compile")
    if choice in ("on", "off"):
        return warmup.Choice(choice == "on", f"{choice}, as set in the form")
    if on_cpu:
        return warmup.Choice(False, "auto: off on a CPU")
    if p.get("load_in_4bit"):
        return warmup.Choice(False, "auto: off with a 4-bit base")
    if strategy != "ddp":
        return warmup.Choice(False, f"auto: off under {strategy}")
    return warmup.Choice(pays.on, f"auto: {pays.why}")


def model_shape(model_path: str):
    from transformers import AutoConfig

    from tlab_gradio import memory

    return memory.Shape.from_config(AutoConfig.from_pretrained(model_path).to_dict())


def memory_plan(shape, spec, p: dict, state):
    """Checkpointing and micro-batches that fit this GPU (memory.plan on the model's shape, from its config)."""
    from tlab_gradio import memory

    checkpointing = switch(p, "gradient_checkpointing")
    kwargs = memory.job_kwargs(p, spec.launch, trains_lora(p))
    return memory.plan(
        shape, common.gpu_memory_budget(p.get("max_gpu_memory_gb"), state), checkpointing=checkpointing or "auto",
        # DeepSpeed's config carries the form's accumulation (launcher.py): it must not change under it
        split=not kwargs["strategy"].startswith("deepspeed"), **kwargs)


def fuse(model_path: str, adapter_dir: Path, fused_dir: Path, precision: str) -> None:
    """Merge the adapter into a fresh, unquantised copy of the base (a 4-bit base would
    round the merged weights) and save it as a plain model beside the adapter."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload().save_pretrained(fused_dir)


def load_rows(spec, p: dict, state):
    """The dataset formatted by the job's templates (rank 0 builds, downloads and maps; the others reuse its
    cache), capped at `max_samples`; and the held-out rows (`val_size` of them, or the `eval_split` formatted
    the same way; None without evaluation). Returns (train rows, eval rows)."""
    from tlab_gradio import data, tiny_model

    with state.main_process_first():
        if spec.model.embedded:
            tiny_model.ensure(Path(spec.model.path))
        dataset = data.load(data.parse_spec(spec.data.dataset))
        templates = data.Templates(spec.data.template, spec.data.completion_template)
        rows = data.formatted(common.limit_rows(dataset, p.get("max_samples"), state.is_main_process), templates)
        split = common.eval_split_name(p)
        evaluate = data.formatted(data.load(data.parse_spec({**spec.data.dataset, "split": split})), templates) \
            if split else None
        return common.held_out(rows, evaluate, p, state.is_main_process)


def model_kwargs(p: dict, precision: str, on_cpu: bool, state, warm_up_pays: bool = True) -> dict:
    """How the model is loaded: weights' dtype, attention, and 4-bit (QLoRA) on this rank's GPU."""
    import torch

    kwargs: dict = {"dtype": common.model_dtype(precision, bool(p["use_lora"])),
                    "attn_implementation": attention(p, on_cpu, warm_up_pays)}
    if p.get("load_in_4bit"):
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if precision == "bf16" else torch.float16
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
        )
        kwargs["device_map"] = {"": state.local_process_index}
    return kwargs


def sft_config(job_dir: Path, spec, p: dict, on_cpu: bool, loading: dict, plan, use_liger: bool,
               evaluated: bool, state):
    """TRL's SFTConfig: the form's parameters by their own names (SFT_KEYS), the memory plan's micro-batch and
    checkpointing, what the app decides (precision, logging, where checkpoints go) and, with held-out rows
    (`evaluated`), the evaluation (common.eval_settings: eval loss every eval_steps, at the memory plan's batch)."""
    from trl import SFTConfig

    os.environ["TENSORBOARD_LOGGING_DIR"] = str(job_dir / "tensorboard")
    report_to = p.get("report_to") or "none"
    return SFTConfig(
        output_dir=str(job_dir / "checkpoints"),
        use_cpu=on_cpu,
        report_to=[] if report_to == "none" else [report_to],
        run_name=spec.name or job_dir.name,
        model_init_kwargs=loading,
        completion_only_loss=bool(p.get("completion_only_loss")) if spec.data.completion_template else None,
        assistant_only_loss=bool(p.get("assistant_only_loss")) and not spec.data.template,
        **common.checkpointing_kwargs(SFTConfig, plan.checkpointing, p),
        per_device_train_batch_size=plan.micro_batch,
        gradient_accumulation_steps=p["gradient_accumulation_steps"] * plan.accumulation,
        use_liger_kernel=use_liger,
        torch_compile=False,  # the Trainer's whole-model compile takes minutes; see compile_layers in main
        ddp_find_unused_parameters=False,
        save_strategy="steps",
        logging_first_step=True,
        logging_steps=common.logging_steps(p),
        disable_tqdm=True,  # the log is read by people and by the app, not by a terminal
        **common.precision_flags(spec.launch.mixed_precision),
        **{**{k: p[k] for k in SFT_KEYS if p.get(k) is not None},  # the evaluation may align save_steps
           **common.eval_settings(p, evaluated, "eval_loss", plan.micro_batch, state.is_main_process)},
    )


def save(trainer, tokenizer, job_dir: Path, spec, p: dict, result, state) -> None:
    """The adapter (LoRA) or the whole model, the fused model when asked, and result.json."""
    use_lora = bool(p["use_lora"])
    out_dir = job_dir / "output" / p["adaptor_name"]
    trainer.save_model(str(out_dir))  # adapter only for LoRA; the whole model otherwise
    if not state.is_main_process:
        return
    tokenizer.save_pretrained(out_dir)
    saved = {"adaptor" if use_lora else "model": str(out_dir)}
    if use_lora and p.get("fuse_model"):
        fused_dir = job_dir / "output" / f"{p['adaptor_name']}-fused"
        fuse(spec.model.path, out_dir, fused_dir, spec.launch.mixed_precision)
        tokenizer.save_pretrained(fused_dir)
        saved["fused_model"] = str(fused_dir)
        print(f"[tlab] fused model saved to {fused_dir}", flush=True)
    common.write_result(job_dir, global_step=result.global_step, train_loss=result.training_loss,
                        world_size=state.num_processes, **saved)
    print(f"[tlab] saved to {out_dir}", flush=True)


def main() -> None:
    job_dir, spec, p, state = common.begin(__doc__.splitlines()[0])
    on_cpu = spec.launch.device == "cpu"
    from transformers import AutoTokenizer
    from trl import SFTTrainer

    from tlab_gradio.trainers import callbacks

    train_dataset, eval_dataset = load_rows(spec, p, state)
    evaluated = eval_dataset is not None
    tokenizer = AutoTokenizer.from_pretrained(spec.model.path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    common.use_chat_template(tokenizer, p, state.is_main_process)
    per_step = p["per_device_train_batch_size"] * state.num_processes * p["gradient_accumulation_steps"]
    steps = warmup.planned_steps(p.get("max_steps"), p.get("num_train_epochs"), len(train_dataset), per_step)
    shape = model_shape(spec.model.path)  # read once: whether compiling pays, and the memory plan
    pays = warmup.compile_training(shape.parameters(), steps)
    compiled = use_compile(p, on_cpu, spec.launch.distributed.strategy, pays)
    # flex attention compiles its kernel: worth it where compiling pays back, or where the form asked for compile
    loading = model_kwargs(p, spec.launch.mixed_precision, on_cpu, state, pays.on or compiled.on)
    plan = memory_plan(shape, spec, p, state)
    use_liger = liger(p, on_cpu, tight=plan.checkpointing or plan.accumulation > 1, compiled=compiled.on)
    if state.is_main_process:
        packing = "on" if p.get("packing") else "off, padding-free" if p.get("padding_free") else "off"
        print(f"[tlab] speed: attention {loading['attn_implementation']}, packing "
              f"{packing}, liger kernels {'on' if use_liger else 'off'}, torch.compile "
              f"{'on' if compiled else 'off'} ({compiled.why}); memory: {plan.describe()}", flush=True)

    trainer = SFTTrainer(
        model=spec.model.path,
        args=sft_config(job_dir, spec, p, on_cpu, loading, plan, use_liger, evaluated, state),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=build_peft_config(p) if p["use_lora"] else None,
        callbacks=[callbacks.MetricsCallback(job_dir, state.num_processes), *common.eval_callbacks(p, evaluated)],
    )
    common.check_kept(len(train_dataset), len(trainer.train_dataset), p.get("max_length"), state.is_main_process)
    if p.get("padding_free") and not p.get("packing"):
        # TRL refuses padding_free without packing when max_length is set (it would not truncate); built
        # with padding, the dataset is truncated in preparation, and only the collator's layout changes
        trainer.data_collator.padding_free = True
    if compiled:
        layers = common.compile_layers(trainer.model)
        if state.is_main_process:
            print(f"[tlab] torch.compile: {layers} decoder layers (compiled at the first step)", flush=True)
    if state.is_main_process:  # what the model is really fed: rows x tokens of a batch from the trainer's collator
        sample = [trainer.train_dataset[i] for i in range(min(plan.micro_batch, len(trainer.train_dataset)))]
        rows, tokens = trainer.data_collator(sample)["input_ids"].shape
        print(f"[tlab] batch layout: {len(sample)} rows of the dataset -> {rows} x {tokens} tokens", flush=True)
    result = common.train(trainer, spec)
    save(trainer, tokenizer, job_dir, spec, p, result, state)
    common.finish(state)


if __name__ == "__main__":
    main()
