"""GRPO on a LoRA (PEFT) model through Unsloth's FastLanguageModel, on one GPU.

The prompts, answers and reward functions are the GRPO Trainer's own (trainers/grpo.py,
rewards.py); what differs is the model: Unsloth loads it (optionally 4-bit), attaches a
LoRA adapter and patches training and generation for speed. Runs in its own virtual
environment (requirements-unsloth.txt), as `accelerate launch … unsloth_grpo.py --job-dir JOB`.
"""
from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a plain script: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

if __name__ == "__main__":  # a run, not the app importing check(): nothing heavy then
    # Unsloth first, before anything imports transformers, peft or trl: it patches them as they are
    # imported, and warns that optimisations are lost otherwise (seen on an H100).
    import unsloth  # noqa: F401

from tlab_gradio.trainers import common, grpo  # noqa: E402


def trains_lora(p: dict) -> bool:
    """Always a LoRA adapter (the memory estimate asks, plugin_code)."""
    return True


def check(p: dict, placement) -> list[str]:
    """This plugin's own checks, run by the app before launch: the ones every GRPO plugin shares (rewards,
    whole groups of generations per step)."""
    return grpo.check_rewards_and_groups(p, placement)


def main() -> None:
    from unsloth import FastLanguageModel

    job_dir, spec, p, state = common.begin(__doc__.splitlines()[0], cpu_capable=False)
    common.avoid_cudnn_attention()  # left-padded prompts: NaN gradients from cuDNN attention
    from trl import GRPOConfig, GRPOTrainer

    from tlab_gradio import data, rewards, tiny_model
    from tlab_gradio.trainers import callbacks
    model_path = spec.model.path
    if spec.model.embedded:
        tiny_model.ensure(Path(model_path))

    load_kwargs = dict(model_name=model_path, max_seq_length=p["max_seq_length"], load_in_4bit=p["load_in_4bit"],
                       max_lora_rank=p["lora_r"])
    fast = bool(p.get("fast_inference"))
    if fast:
        supported = "fast_inference" in inspect.signature(FastLanguageModel.from_pretrained).parameters
        try:
            import vllm  # noqa: F401
        except ImportError:
            supported = False
        if supported:
            load_kwargs.update(fast_inference=True, gpu_memory_utilization=p["gpu_memory_utilization"])
        else:
            fast = False
            print("[tlab] fast_inference needs vLLM and an Unsloth that offers it: generating with transformers",
                  flush=True)
    model, tokenizer = FastLanguageModel.from_pretrained(**load_kwargs)
    targets = [t.strip() for t in p["lora_target_modules"].split(",") if t.strip()]
    model = FastLanguageModel.get_peft_model(
        model, r=p["lora_r"], lora_alpha=p["lora_alpha"], lora_dropout=p.get("lora_dropout") or 0,
        target_modules=targets,
        use_gradient_checkpointing="unsloth" if p.get("gradient_checkpointing") else False, random_state=p["seed"],
    )
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    markers = rewards.Markers(p["reasoning_start"], p["reasoning_end"], p["answer_start"], p["answer_end"])
    templates = data.Templates(spec.data.template, spec.data.completion_template)
    rows = common.limit_rows(data.load(data.parse_spec(spec.data.dataset)), p.get("max_samples"), True)
    dataset = grpo.prompts(rows, templates, p, markers, tokenizer)
    dataset = grpo.drop_long_prompts(dataset, tokenizer, p["max_prompt_length"], True)
    split = common.eval_split_name(p)  # held-out prompts, as the GRPO Trainer (Multi GPU) makes them
    eval_dataset = None
    if split:
        held = data.load(data.parse_spec({**spec.data.dataset, "split": split}))
        eval_dataset = grpo.drop_long_prompts(grpo.prompts(held, templates, p, markers, tokenizer), tokenizer,
                                              p["max_prompt_length"], True)
    dataset, eval_dataset = common.held_out(dataset, eval_dataset, p, True)
    evaluated = eval_dataset is not None
    reward_funcs, names, weights, method = grpo.reward_setup(job_dir, p, markers)
    print(f"[tlab] Unsloth LoRA r={p['lora_r']} alpha={p['lora_alpha']} dropout={p.get('lora_dropout') or 0} "
          f"4-bit={p['load_in_4bit']}; "
          f"generation: {'vLLM (fast_inference)' if fast else 'transformers'}; rewards {dict(zip(names, weights))} "
          f"(correctness: {method})", flush=True)

    os.environ["TENSORBOARD_LOGGING_DIR"] = str(job_dir / "tensorboard")
    report_to = p.get("report_to") or "none"
    args = GRPOConfig(
        output_dir=str(job_dir / "checkpoints"),
        report_to=[] if report_to == "none" else [report_to],
        run_name=spec.name or job_dir.name,
        reward_weights=weights,
        use_vllm=fast,
        save_strategy="steps",
        logging_first_step=True,
        logging_steps=common.logging_steps(p),
        disable_tqdm=True,
        **common.precision_flags(spec.launch.mixed_precision),
        **{**{k: p[k] for k in grpo.GRPO_KEYS if p.get(k) is not None},  # the evaluation may align save_steps
           **common.eval_settings(p, evaluated, "eval_reward", grpo.eval_batch(p, 1), True)},
    )
    trainer = GRPOTrainer(
        model=model, processing_class=tokenizer, reward_funcs=reward_funcs, args=args,
        train_dataset=dataset, eval_dataset=eval_dataset,
        callbacks=[callbacks.MetricsCallback(job_dir, 1, completions_per_step=(
            p["per_device_train_batch_size"] * p["gradient_accumulation_steps"])),
            *common.eval_callbacks(p, evaluated)],
    )
    result = common.train(trainer, spec)
    out_dir = job_dir / "output" / p["adaptor_name"]
    model.save_pretrained(str(out_dir))  # the LoRA adapter
    tokenizer.save_pretrained(str(out_dir))
    common.write_result(job_dir, global_step=result.global_step, train_loss=result.training_loss, world_size=1,
                        adaptor=str(out_dir))
    print(f"[tlab] saved to {out_dir}", flush=True)


if __name__ == "__main__":
    main()
