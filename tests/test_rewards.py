"""Reward functions on hand-written completions."""
import pytest

from tlab_gradio import rewards
from tlab_gradio.rewards import Markers

GOOD = "<reasoning>\nThere are 40 and 2 more.\n40 + 2 = 42\n</reasoning>\n<answer>\n42\n</answer>\n"
WRONG = "<reasoning>\n40 + 2 = 43\n</reasoning>\n<answer>\n43\n</answer>\n"
NO_MARKERS = "The answer is 42."
EXTRA = GOOD + "And some chatter after the answer."
INLINE = "<reasoning>think</reasoning> <answer>42</answer>"


def test_reference_answer_understands_gsm8k():
    assert rewards.reference_answer("Natalia sold 48/2 = 24 clips.\n#### 72") == "72"
    assert rewards.reference_answer(" 15 ") == "15"


@pytest.mark.parametrize("answer", ["42", "42.0", " 42 ", "+42", "42.", "$42", "4.2e1"])
def test_numbers_compare_as_numbers(answer):
    completion = f"<reasoning>\nx\n</reasoning>\n<answer>\n{answer}\n</answer>"
    assert rewards.correctness(completion, "work...\n#### 42") == 1.0


def test_correctness():
    assert rewards.correctness(GOOD, "#### 42") == 1.0
    assert rewards.correctness(WRONG, "#### 42") == 0.0
    # no answer block: half credit when the last number is right, so a model that ignores the format learns
    assert rewards.correctness(NO_MARKERS, "42") == rewards.UNMARKED_CREDIT == 0.5
    assert rewards.correctness("40 + 2 = 42, or maybe 41", "42") == 0.0
    assert rewards.correctness("<answer>\n41\n</answer> but 42", "42") == 0.0  # an answer block decides
    assert rewards.correctness("<reasoning>\nx\n</reasoning>\n<answer>\n1,000\n</answer>", "1000") == 1.0
    assert rewards.correctness("<answer>Paris</answer>", "paris") == 1.0  # text: case and spaces ignored
    assert rewards.correctness("<answer>42", "42") == 0.5  # unterminated answer: no block, its last number


def test_integer():
    assert rewards.integer(GOOD) == 1.0
    assert rewards.integer("<answer>\n42.0\n</answer>") == 1.0
    assert rewards.integer("<answer>\n4.5\n</answer>") == 0.0
    assert rewards.integer("<answer>\nforty\n</answer>") == 0.0
    assert rewards.integer(NO_MARKERS) == 0.0


def test_strict_and_soft_format():
    assert rewards.strict_format(GOOD) == 1.0
    assert rewards.strict_format(EXTRA) == 0.0  # text after the answer
    assert rewards.strict_format(INLINE) == 0.0  # markers not on their own lines
    assert rewards.soft_format(INLINE) == 1.0
    assert rewards.soft_format(EXTRA) == 1.0
    assert rewards.soft_format("<answer>42</answer><reasoning>late</reasoning>") == 0.0  # wrong order
    assert rewards.soft_format(NO_MARKERS) == 0.0 and rewards.strict_format(NO_MARKERS) == 0.0


def test_tag_count_rewards_markers_and_penalises_trailing_text():
    assert rewards.tag_count(GOOD) == pytest.approx(0.5)
    assert rewards.tag_count(NO_MARKERS) == 0.0
    extra = rewards.tag_count(EXTRA)
    assert extra == pytest.approx(0.5 - 0.001 * len("And some chatter after the answer."))
    doubled = GOOD + GOOD  # every marker twice: none counts
    assert rewards.tag_count(doubled) == 0.0


def test_custom_markers():
    m = Markers("<think>", "</think>", "<final>", "</final>")
    text = "<think>\nhmm\n</think>\n<final>\n7\n</final>"
    assert rewards.correctness(text, "7", m) == 1.0 and rewards.strict_format(text, m) == 1.0
    assert rewards.correctness(GOOD, "42", m) == 0.5  # not in these markers' block: the unmarked half
    assert "<final>" in m.format_instructions()


def test_trl_reward_funcs_handle_chat_completions():
    funcs = rewards.trl_reward_funcs(["correctness", "tag_count"], Markers())
    assert [f.__name__ for f in funcs] == ["correctness", "tag_count"]
    chat = [[{"role": "assistant", "content": GOOD}], [{"role": "assistant", "content": WRONG}]]
    assert funcs[0](prompts=[None, None], completions=chat, answer=["#### 42", "#### 42"]) == [1.0, 0.0]
    assert funcs[1](prompts=[None], completions=[GOOD]) == [pytest.approx(0.5)]


@pytest.mark.parametrize("answer, reference", [
    ("\\frac{1}{2}", "0.5"), ("\\boxed{\\frac{3}{4}}", "0.75"), ("1/2", "\\frac12"), ("$\\sqrt{4}$", "2"),
    ("42", "#### 42"), ("$42", "42"),
])
def test_math_verify_reads_latex_fractions_and_boxed(answer, reference):
    pytest.importorskip("math_verify")
    completion = f"<reasoning>\nx\n</reasoning>\n<answer>\n{answer}\n</answer>"
    assert rewards.correctness(completion, reference, method="math_verify") == 1.0


def test_math_verify_is_a_choice_and_numbers_stay_numbers():
    latex = "<answer>\\frac{1}{2}</answer>"
    assert rewards.correctness(latex, "0.5", method="numbers") == 0.0  # numbers as numbers only
    if rewards.math_verify_installed():
        assert rewards.correctness("<answer>43</answer>", "42", method="math_verify") == 0.0
    # Words are compared as text, not as products of symbols ("sirap" would equal "paris" to sympy).
    assert rewards.correctness("<answer>sirap</answer>", "paris", method="math_verify") == 0.0
    assert rewards.resolve_method("numbers") == "numbers"
    assert rewards.resolve_method("auto") == ("math_verify" if rewards.math_verify_installed() else "numbers")


def test_math_verify_runs_outside_the_main_thread():
    """Its timeouts use SIGALRM, which only the main thread may set; a reward called from a thread must not fail."""
    import threading

    pytest.importorskip("math_verify")
    got = []
    thread = threading.Thread(target=lambda: got.append(rewards.correctness("<answer>1/2</answer>", "0.5",
                                                                            method="math_verify")))
    thread.start()
    thread.join()
    assert got == [1.0]


def test_trl_reward_funcs_pass_the_correctness_method():
    pytest.importorskip("math_verify")
    numbers, latex = (rewards.trl_reward_funcs(["correctness"], Markers(), m)[0] for m in ("numbers", "math_verify"))
    chat = [[{"role": "assistant", "content": "<answer>\\frac{1}{2}</answer>"}]]
    assert numbers(prompts=[None], completions=chat, answer=["0.5"]) == [0.0]
    assert latex(prompts=[None], completions=chat, answer=["0.5"]) == [1.0]


def test_prefilled_replies_are_scored_with_the_marker_the_prompt_wrote():
    """With `prefill_reasoning` the prompt ends with the thinking marker and the model's completion starts after
    it: every reward (built-in or your own) scores the whole reply, marker included, and keeps its name."""
    prefix = rewards.reply_prefix(True, Markers())
    assert prefix == "<reasoning>\n" and rewards.reply_prefix(False, Markers()) == ""
    completion = GOOD[len(prefix):]
    seen = []

    def mine(prompts, completions, **kwargs):
        seen.extend(completions)
        return [0.0] * len(completions)

    funcs = [rewards.scoring_whole_reply(f, prefix)
             for f in rewards.trl_reward_funcs(["strict_format", "tag_count", "correctness"], Markers()) + [mine]]
    assert [f.__name__ for f in funcs] == ["strict_format", "tag_count", "correctness", "mine"]
    scores = [f(prompts=["q"], completions=[completion], answer=["42"])[0] for f in funcs[:3]]
    assert scores == [1.0, rewards.tag_count(GOOD), 1.0]
    funcs[3](prompts=["q"], completions=[completion])
    assert seen == [GOOD]
    unwrapped = rewards.trl_reward_funcs(["strict_format"], Markers())[0]
    assert rewards.scoring_whole_reply(unwrapped, "") is unwrapped
    assert unwrapped(prompts=["q"], completions=[completion])[0] == 0.0  # unprefixed, the format is broken
