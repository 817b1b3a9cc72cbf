"""GRPO raises a reward: the embedded tiny model, taught the answer format by a short SFT job, then
trained by the GRPO plugin on format rewards, through the app's real path (Service.start_job ->
`accelerate launch` -> trainer) on CPU.

The SFT examples answer the sample's questions half in the format the rewards look for
(`<reasoning>\\n…\\n</reasoning>\\n<answer>\\nN\\n</answer>`, the plugin's default markers) and half
plainly ("The answer is N."), chosen at random per question. The SFT model starts GRPO writing the
format in about a fifth of its completions (not always well), so rewards differ within each group,
and GRPO has to move the policy toward the rewarded mode: soft format + tag count rises from about
0.4 over the first 10 steps to about 1.25 over the last 10 (of 1.5). Updates that do nothing
(learning rate 1e-9, or the optimiser step made a no-op) leave it near 0.3 (0.26 -> 0.37, a gain of
0.11: noise); reversed gradients take it from 0.12 to 0. Seeded: the same numbers each run, with 1
or 2 threads.
"""
import json
import math
import random
import statistics
from pathlib import Path

from tlab_gradio import rewards
from tlab_gradio.service import Service

TIMEOUT = 600
SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "grpo_arithmetic.jsonl"
# the GRPO plugin's system prompt with system_template "": the format instructions of its default markers
SYSTEM = rewards.Markers().format_instructions()
K = 10  # steps averaged at each end


def formatted(row: dict) -> str:
    """The completion the format rewards want: the last worked step as the reasoning, the number as the answer."""
    work, answer = (part.strip() for part in row["answer"].split("####"))
    m = rewards.Markers()
    step = work.split(": ")[-1].split("; ")[-1]
    return f"{m.reasoning_start}\n{step}\n{m.reasoning_end}\n{m.answer_start}\n{answer}\n{m.answer_end}"


def sft_rows(share: float = 0.5, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for line in SAMPLE.read_text().splitlines():
        row = json.loads(line)
        answer = row["answer"].split("####")[-1].strip()
        reply = formatted(row) if rng.random() < share else f"The answer is {answer}."
        rows.append({"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": row["question"]},
                                  {"role": "assistant", "content": reply}]})
    return rows


SFT_PARAMS = {"use_lora": False, "max_steps": 200, "learning_rate": 5e-3, "lr_scheduler_type": "constant",
              "warmup_steps": 0, "per_device_train_batch_size": 8, "max_length": 256, "padding_free": False,
              "assistant_only_loss": True, "gradient_checkpointing": "off", "logging_steps": 20,
              "save_steps": 100000, "report_to": "none", "seed": 42}
GRPO_PARAMS = {"max_steps": 50, "learning_rate": 5e-4, "lr_scheduler_type": "constant", "warmup_steps": 0,
               "per_device_train_batch_size": 32, "gradient_accumulation_steps": 1, "num_generations": 8,
               "max_completion_length": 80, "system_template": "", "logging_steps": 1, "save_steps": 100000,
               # the model writes the whole format itself: the rewarded mode competes with the plain one from
               # the first token (a prefilled marker would settle most of it before GRPO starts)
               "prefill_reasoning": False,
               "report_to": "none", "seed": 42,
               "reward_correctness": False, "reward_integer": False, "reward_strict_format": False,
               "reward_soft_format": True, "reward_soft_format_weight": 1.0,
               "reward_tag_count": True, "reward_tag_count_weight": 1.0}


def test_the_embedded_model_prompts_as_it_was_trained_and_stops_at_the_turn_end(tiny_model_dir):
    """GRPO prompts end with the generation prompt; an SFT-trained reply follows exactly that text, and
    generation stops at the end of the reply's turn (else every completion runs to the maximum length)."""
    from transformers import AutoTokenizer, GenerationConfig

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    chat = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "1 + 1?"}]
    prompt = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    trained = tok.apply_chat_template([*chat, {"role": "assistant", "content": "2"}], tokenize=False)
    assert prompt.endswith("<|im_start|>assistant\n") and trained.startswith(prompt)
    assert tok.convert_tokens_to_ids("<|im_end|>") in GenerationConfig.from_pretrained(tiny_model_dir).eos_token_id


def test_prefilled_prompts_open_the_reply_with_the_thinking_marker(tiny_model_dir):
    """prefill_reasoning: each prompt is the chat template's text with the assistant turn opened and the thinking
    marker after it (TRL would close a prefilled assistant message); off, prompts stay chat messages."""
    from transformers import AutoTokenizer

    from tlab_gradio import data
    from tlab_gradio.trainers import grpo

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = data.load(data.parse_spec("grpo_arithmetic")).select(range(3))
    templates = data.Templates("{{question}}", "{{answer}}")
    p = {"system_template": "Solve it.", "prefill_reasoning": True}
    on = grpo.prompts(rows, templates, p, rewards.Markers(), tok)
    off = grpo.prompts(rows, templates, {**p, "prefill_reasoning": False}, rewards.Markers(), tok)
    assert isinstance(off[0]["prompt"], list) and off[0]["answer"] == on[0]["answer"] == "68"
    chat = tok.apply_chat_template(off[0]["prompt"], add_generation_prompt=True, tokenize=False)
    assert on[0]["prompt"] == chat.removeprefix(tok.bos_token or "\0") + "<reasoning>\n"
    assert on[0]["prompt"].endswith("<|im_start|>assistant\n<reasoning>\n") and "Solve it." in on[0]["prompt"]
    ids = tok(on[0]["prompt"])["input_ids"]
    assert ids[:2] != [tok.bos_token_id] * 2  # the tokenizer's own BOS is not doubled


def metrics(svc, job_id) -> list[dict]:
    path = Path(svc.job(job_id)["job_dir"]) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def run(svc, request) -> tuple[dict, list[dict]]:
    job = svc.start_job({"device": "cpu", "cpu_processes": 1, **request})
    done = svc.jobs.wait(job["id"], TIMEOUT)
    assert done.state == "COMPLETE", "\n".join(svc.job_log(job["id"], 80))
    return svc.job(job["id"]), metrics(svc, job["id"])


def sft_then_grpo(svc, tmp_path):
    data = tmp_path / "sft_format.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in sft_rows()))
    sft, _ = run(svc, {"plugin": "llama_sft_multi_gpu", "name": "sft-format", "dataset": str(data), "template": "",
                       "params": SFT_PARAMS})
    model = Path(sft["output_dir"]) / "tlab-sft"  # a full fine-tune: the whole model
    _, steps = run(svc, {"plugin": "grpo_multi_gpu", "name": "grpo-format", "model": str(model),
                         "dataset": "grpo_arithmetic", "params": GRPO_PARAMS})
    return [r for r in steps if "reward" in r]


def test_grpo_raises_the_format_reward(home, tmp_path, monkeypatch):
    # One thread per process: accelerate's default (every core) makes these tiny matrices many times
    # slower when the CPU is shared with anything else; the numbers are the same either way.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    steps = sft_then_grpo(Service(), tmp_path)
    assert [r["step"] for r in steps] == list(range(1, GRPO_PARAMS["max_steps"] + 1))
    reward = [r["reward"] for r in steps]
    print("reward per step:", [round(x, 3) for x in reward])
    print("soft format per step:", [round(r["rewards/soft_format/mean"], 3) for r in steps])
    first, last = reward[:K], reward[-K:]
    gain = statistics.mean(last) - statistics.mean(first)
    spread = max(statistics.stdev(first), statistics.stdev(last))  # step-to-step noise of the reward
    assert gain > max(0.3, 1.5 * spread), f"reward did not rise: first {K} steps {first}, last {K} steps {last}"
    # rewards differed within groups (there was something to learn from), and every step had a real gradient
    assert any(r["frac_reward_zero_std"] < 1 for r in steps)
    assert all(math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0 for r in steps)
