"""GRPO on the whole model (no PEFT) with TRL's GRPOTrainer and the project's reward functions.

Your own reward functions (`params.custom_rewards`) are imported from the job folder's copies
(JOB/rewards/*.py) and weighted next to the built-in ones.

Run by the app as `accelerate launch … grpo.py --job-dir JOB`, one process per GPU
(or several CPU processes on gloo). JOB/config.json holds the model, the dataset,
the input/answer templates and the parameters named after GRPOConfig.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a plain script: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tlab_gradio import warmup  # noqa: E402
from tlab_gradio.trainers import common  # noqa: E402

GRPO_KEYS = (
    "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
    "num_generations", "max_completion_length", "temperature", "top_p", "beta", "loss_type", "epsilon",
    "num_iterations", "lr_scheduler_type", "warmup_steps", "weight_decay", "max_grad_norm",
    "save_steps", "save_total_limit", "seed", *common.ADAM_KEYS,
)


def check(p: dict, placement) -> list[str]:
    """This plugin's own checks, run by the app before anything is launched (`Service.prepare`): those every
    GRPO plugin shares, then the generation batch, the cache against the weights' dtype and vLLM
    (`placement`: gpus.Placement, the chosen device and GPUs)."""
    import importlib.util

    problems = check_rewards_and_groups(p, placement)
    n, batch, gens = placement.num_processes, p["per_device_train_batch_size"], p["num_generations"]
    chosen = p.get("generation_batch_size") or 0
    if chosen:
        if chosen % (n * batch):
            problems.append(f"generation_batch_size {chosen} must be a multiple of processes x batch = {n * batch}")
        if chosen % gens:
            problems.append(f"generation_batch_size {chosen} must be a multiple of num_generations {gens}")
    fp32_weights = p.get("model_dtype") == "float32" or (p.get("model_dtype") in (None, "auto")
                                                          and placement.device != "cuda")
    if p.get("cache_implementation") == "static" and fp32_weights and placement.device == "cuda":
        # transformers sizes a static cache in the weights' dtype, while bf16/fp16 autocast hands it
        # 16-bit keys and values: generate fails at the first step (seen on an H100).
        problems.append("`cache_implementation` static needs 16-bit weights: with float32 weights under bf16/fp16 "
                        "autocast the cache and the activations differ in dtype (use model_dtype bfloat16, or a "
                        "dynamic cache)")
    if p.get("use_vllm"):
        if placement.device != "cuda":
            problems.append("`use_vllm` needs device `cuda`")
        if importlib.util.find_spec("vllm") is None:
            problems.append("`use_vllm` needs the vllm package (an optional extra): pip install vllm")
    return problems


def check_rewards_and_groups(p: dict, placement) -> list[str]:
    """What every GRPO plugin checks (this one and Unsloth GRPO): at least one reward, math-verify when chosen,
    and each step's completions divisible into whole groups of num_generations."""
    import importlib.util

    from tlab_gradio.rewards import SCORERS

    problems = []
    if not any(p.get(f"reward_{name}") for name in SCORERS) and not p.get("custom_rewards"):
        problems.append("choose at least one reward function")
    if p.get("reward_correctness") and p.get("correctness_method") == "math_verify" \
            and importlib.util.find_spec("math_verify") is None:
        problems.append("`correctness_method` math_verify needs the math-verify package: pip install math-verify "
                        "(or choose auto / numbers)")
    n, batch, accum, gens = placement.num_processes, p["per_device_train_batch_size"], \
        p["gradient_accumulation_steps"], p["num_generations"]
    step = n * batch * accum
    if step % gens:
        divisors = [str(d) for d in range(2, min(step, 64) + 1) if step % d == 0]
        hint = (f"num_generations {' or '.join(divisors[-3:])} would fit" if divisors
                else "raise the batch or the accumulation")
        problems.append(
            f"{n} process{'es' if n > 1 else ''} x batch {batch} x accumulation {accum} = {step} completions per "
            f"step is not divisible by num_generations {gens}: each prompt's {gens} completions are generated "
            f"in the same step ({hint})")
    return problems


def system_prompt(p: dict, markers) -> str:
    """The instruction (system) template with the format the markers ask for."""
    from tlab_gradio import rewards

    return rewards.system_prompt(p.get("system_template"), markers)


def reward_setup(job_dir: Path, p: dict, markers):
    """The built-in rewards the form ticked and your own (imported from the job folder's copies), as TRL reward
    functions with their names and weights, and how correctness compares answers (`auto` resolved). Each scores
    the whole reply: with `prefill_reasoning`, the thinking marker the prompt ends with comes first."""
    from tlab_gradio import reward_files, rewards

    names = [n for n in rewards.SCORERS if p.get(f"reward_{n}")]  # the form's checkboxes
    weights = [float(p[f"reward_{n}_weight"]) for n in names]
    method = rewards.resolve_method(p.get("correctness_method"))
    custom, custom_weights = reward_files.load(job_dir, p.get("custom_rewards"))
    prefix = rewards.reply_prefix(bool(p.get("prefill_reasoning")), markers)
    funcs = [rewards.scoring_whole_reply(f, prefix) for f in rewards.trl_reward_funcs(names, markers, method) + custom]
    return funcs, names + [f.__name__ for f in custom], weights + custom_weights, method


def prompts(rows, templates, p: dict, markers, tokenizer):
    """The dataset as GRPO prompts: the system prompt and the rendered question in the model's chat template
    (plain text without one) and, with `prefill_reasoning`, the thinking marker the reply starts with."""
    from tlab_gradio import data, rewards

    dataset = as_text_prompts(data.grpo_formatted(rows, templates, system_prompt(p, markers)), tokenizer)
    return prefilled(dataset, tokenizer, rewards.reply_prefix(bool(p.get("prefill_reasoning")), markers))


def prefilled(dataset, tokenizer, prefix: str):
    """Prompts that end with `prefix` after the assistant turn opens. TRL opens the turn itself for chat prompts
    (and would close a prefilled assistant message), so these become text rendered with the chat template."""
    if not prefix:
        return dataset
    bos = tokenizer.bos_token
    adds_bos = bool(bos) and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]

    def render(row):
        prompt = row["prompt"]
        if isinstance(prompt, list):
            prompt = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
            if adds_bos and prompt.startswith(bos):  # the tokenizer adds it again
                prompt = prompt[len(bos):]
        return {"prompt": prompt + prefix}

    return dataset.map(render)


def as_text_prompts(dataset, tokenizer):
    """Without a chat template, prompts are plain text: system, question, then the answer's opening."""
    if tokenizer.chat_template:
        return dataset

    def flatten(row):
        return {"prompt": "\n\n".join(m["content"] for m in row["prompt"]) + "\n\n"}

    return dataset.map(flatten)


def drop_long_prompts(dataset, tokenizer, limit: int, is_main: bool):
    """max_prompt_length: prompts longer than this are left out (cut prompts would lose the question)."""
    def length(row):
        prompt = row["prompt"]
        if isinstance(prompt, list):
            ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict):
                ids = ids["input_ids"]
        else:
            ids = tokenizer(prompt)["input_ids"]
        return {"_len": len(ids)}

    measured = dataset.map(length)
    kept = measured.filter(lambda r: r["_len"] <= limit).remove_columns("_len")
    if is_main and len(kept) < len(dataset):
        print(f"[tlab] max_prompt_length {limit}: left out {len(dataset) - len(kept)} of {len(dataset)} prompts",
              flush=True)
    if len(kept) == 0:
        raise SystemExit(f"[tlab] every prompt is longer than max_prompt_length {limit}")
    return kept


def weights_and_cache(p: dict, precision: str, on_cpu: bool, pays: warmup.Choice | None = None):
    """Resolve `auto`: bf16 weights where training runs in bf16 on a GPU, and then a static,
    compiled KV cache for generation (the cache takes the weights' dtype, so it needs 16-bit
    weights under 16-bit autocast) where compiling the decoding pays back (`pays`:
    warmup.compile_decoding on the model's size and the tokens the run will decode; it costs ~30 s
    at the first generation). Returns (torch dtype, cache implementation or None, why: for the log)."""
    import torch

    dtype = p.get("model_dtype") or "auto"
    if dtype == "auto":
        dtype = "bfloat16" if precision == "bf16" and not on_cpu else "float32"
    cache, why = warmup.decoding_cache(p.get("cache_implementation"), dtype == "bfloat16" and not on_cpu, pays)
    return {"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype], (None if cache == "dynamic" else cache), why


def decoding_pays(config, p: dict, prompts: int, processes: int) -> warmup.Choice:
    """warmup.grpo_decoding for this run: the model's parameters (from its config, a transformers config; unknown if
    it has no layer shape) and the tokens each sequence will decode over the planned steps."""
    from tlab_gradio import memory

    try:
        parameters = memory.Shape.from_config(config.to_dict()).parameters()
    except ValueError:
        parameters = None
    return warmup.grpo_decoding(parameters, p, prompts, processes)


def generation_batch(p: dict) -> int | None:
    """Completions generated together across all processes. 0 (default) = one optimisation step's
    worth (per-device batch x processes x accumulation): every step trains on completions from the
    current weights, as TRL does by default. A larger multiple reuses them over several steps."""
    return int(p.get("generation_batch_size") or 0) or None


def load_prompts(spec, p: dict, markers, state):
    """The tokenizer (left padding, for generation) and the dataset as GRPO prompts, capped at `max_samples`,
    without those longer than `max_prompt_length` (rank 0 builds and maps; the others reuse its cache); and the
    held-out prompts (`val_size` of them, or the `eval_split`'s, made the same way; None without evaluation).
    Returns (tokenizer, train prompts, eval prompts)."""
    from transformers import AutoTokenizer

    from tlab_gradio import data, tiny_model

    with state.main_process_first():
        if spec.model.embedded:
            tiny_model.ensure(Path(spec.model.path))
        tokenizer = AutoTokenizer.from_pretrained(spec.model.path, padding_side="left")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        common.use_chat_template(tokenizer, p, state.is_main_process)
        templates = data.Templates(spec.data.template, spec.data.completion_template)
        rows = common.limit_rows(data.load(data.parse_spec(spec.data.dataset)), p.get("max_samples"),
                                 state.is_main_process)
        dataset = drop_long_prompts(prompts(rows, templates, p, markers, tokenizer), tokenizer,
                                    p["max_prompt_length"], state.is_main_process)
        split = common.eval_split_name(p)
        evaluate = None
        if split:
            held = data.load(data.parse_spec({**spec.data.dataset, "split": split}))
            evaluate = drop_long_prompts(prompts(held, templates, p, markers, tokenizer), tokenizer,
                                         p["max_prompt_length"], state.is_main_process)
        return (tokenizer, *common.held_out(dataset, evaluate, p, state.is_main_process))


def eval_batch(p: dict, processes: int, rows: int | None = None) -> int:
    """GRPO's per-device eval batch: `rows` completions (eval_rows, on a GPU), else the training micro-batch; never
    below the micro-batch, and rounded up so processes x batch holds whole groups of num_generations completions
    (TRL generates each held-out prompt's group together)."""
    import math

    batch = max(p["per_device_train_batch_size"], rows or 0)
    unit = p["num_generations"] // math.gcd(processes, p["num_generations"])
    return unit * -(-batch // unit)


EVAL_LOGITS_SHARE = 0.25  # of the GPU's free memory at the start, for the eval's logits


def eval_rows(p: dict, processes: int, vocab: int, free_bytes: int) -> int:
    """Completions per process an eval batch should hold on a GPU. TRL generates each eval batch on its own, and
    decoding is bound by its sequential steps (one per token) far more than by the rows: at the training
    micro-batch (32 completions) SmolLM2-135M took 180 s for 64 held-out prompts x 8 on an H200, 16 generate calls,
    against 26 s for a whole 256-completion training step, which generates once
    (bench/results/evaluate-gpu-check-2026-12-02-h200-smollm2.json). So: the training's per-device generation batch,
    the shape the compiled decoding already ran; capped because TRL takes the eval loss over the whole batch in one
    forward, whose logits (rows x completion tokens x vocabulary, bf16, with a scaled copy and log-softmax's: ~6
    bytes an entry) must stay within EVAL_LOGITS_SHARE of the free memory (training's activations are gone then)."""
    per_step = p["per_device_train_batch_size"] * processes * p["gradient_accumulation_steps"]
    room = int(EVAL_LOGITS_SHARE * free_bytes // (p["max_completion_length"] * vocab * 6))
    return min((generation_batch(p) or per_step) // processes, room)


def grpo_config(job_dir: Path, spec, p: dict, on_cpu: bool, weights: list[float], dtype, cache,
                evaluated: bool = False, state=None, rows: int | None = None):
    """TRL's GRPOConfig: the form's parameters by their own names (GRPO_KEYS), the reward weights, what the app
    decides (precision, weights' dtype and cache, logging, where checkpoints go) and, with held-out prompts
    (`evaluated`), the evaluation: completions for them every eval_steps, their reward (eval_reward) the metric."""
    from trl import GRPOConfig

    os.environ["TENSORBOARD_LOGGING_DIR"] = str(job_dir / "tensorboard")
    report_to = p.get("report_to") or "none"
    extra = {}
    if cache and not p.get("use_vllm"):
        extra["cache_implementation"] = cache
    if p.get("use_vllm"):
        extra.update(use_vllm=True, vllm_mode="colocate")
    return GRPOConfig(
        output_dir=str(job_dir / "checkpoints"),
        use_cpu=on_cpu,
        report_to=[] if report_to == "none" else [report_to],
        run_name=spec.name or job_dir.name,
        model_init_kwargs={"dtype": dtype},
        reward_weights=weights,
        generation_batch_size=generation_batch(p),
        save_strategy="steps",
        logging_first_step=True,
        logging_steps=common.logging_steps(p),
        disable_tqdm=True,
        ddp_find_unused_parameters=False,
        **common.checkpointing_kwargs(GRPOConfig, bool(p.get("gradient_checkpointing")), p),
        **common.precision_flags(spec.launch.mixed_precision),
        **{**{k: p[k] for k in GRPO_KEYS if p.get(k) is not None},  # the evaluation may align save_steps
           **common.eval_settings(p, evaluated, "eval_reward",
                                  eval_batch(p, state.num_processes if state else 1, rows),
                                  state is None or state.is_main_process)},
        **extra,
    )


def main() -> None:
    job_dir, spec, p, state = common.begin(__doc__.splitlines()[0])
    on_cpu = spec.launch.device == "cpu"
    common.avoid_cudnn_attention()  # left-padded prompts: NaN gradients from cuDNN attention
    from trl import GRPOTrainer

    from tlab_gradio import rewards
    from tlab_gradio.trainers import callbacks

    markers = rewards.Markers(p["reasoning_start"], p["reasoning_end"], p["answer_start"], p["answer_end"])
    tokenizer, dataset, eval_dataset = load_prompts(spec, p, markers, state)
    evaluated = eval_dataset is not None
    reward_funcs, names, weights, method = reward_setup(job_dir, p, markers)
    config = None
    if not on_cpu:  # read once: the model's size (compiled decoding) and vocabulary (the eval batch)
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(spec.model.path)
    pays = None if on_cpu else decoding_pays(config, p, len(dataset), state.num_processes)
    dtype, cache, why = weights_and_cache(p, spec.launch.mixed_precision, on_cpu, pays)
    per_step = p["per_device_train_batch_size"] * state.num_processes * p["gradient_accumulation_steps"]
    rows = None
    if evaluated and not on_cpu:  # the same on every rank: the smallest free memory of all
        vocab = config.get_text_config().vocab_size
        rows = eval_rows(p, state.num_processes, vocab, int(common.gpu_memory_budget(None, state) * 2**30))
    if state.is_main_process:
        engine = ("vLLM (colocate)" if p.get("use_vllm") else
                  f"transformers generate ({cache or 'dynamic'} cache: {why}; {str(dtype).split('.')[-1]} weights)")
        per_gen = generation_batch(p) or per_step
        print(f"[tlab] rewards {dict(zip(names, weights))} (correctness: {method}); generation: {engine}, "
              f"{per_gen} completions at a time ({per_gen // p['num_generations']} prompts x "
              f"{p['num_generations']})", flush=True)
        if evaluated:
            print(f"[tlab] held-out evaluation: {eval_batch(p, state.num_processes, rows)} completions at a "
                  f"time per process", flush=True)

    trainer = GRPOTrainer(
        model=spec.model.path,
        reward_funcs=reward_funcs,
        args=grpo_config(job_dir, spec, p, on_cpu, weights, dtype, cache, evaluated, state, rows),
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=[callbacks.MetricsCallback(job_dir, state.num_processes, completions_per_step=per_step),
                   *common.eval_callbacks(p, evaluated)],
    )
    if cache == "static" and hasattr(trainer, "generation_config"):
        # TRL builds its generation config with disable_compile=True; the static cache pays off
        # only when transformers compiles the decoding step (CUDA graphs), so let it.
        trainer.generation_config.disable_compile = False
    result = common.train(trainer, spec)

    out_dir = job_dir / "output" / p["output_name"]
    trainer.save_model(str(out_dir))  # the whole model, safetensors
    if state.is_main_process:
        tokenizer.save_pretrained(out_dir)
        common.write_result(job_dir, global_step=result.global_step, train_loss=result.training_loss,
                            world_size=state.num_processes, model=str(out_dir))
        print(f"[tlab] saved to {out_dir}", flush=True)
    common.finish(state)


if __name__ == "__main__":
    main()
