"""GRPO reward functions: the set GRPO users know from the common recipes.

Each scorer takes one completion's text (and the reference answer where it needs
one) and returns an unweighted score; the weights come from the form and are
applied by TRL (`reward_weights`), so metrics show each reward's own mean.

    correctness   1 if the answer between the answer markers equals the reference
                  (numbers compared as numbers: 42 == 42.0 == " 42 " == "1,000"/1000; with
                  math-verify also LaTeX, fractions, \\boxed{}: 1/2 == \\frac{1}{2} == 0.5)      weight 2.0
    integer       1 if the answer is a whole number                                        weight 0.5
    strict_format 1 if the whole completion is exactly the reasoning block then the
                  answer block, each marker on its own line                                weight 0.5
    soft_format   1 if a reasoning block is followed by an answer block, anywhere          weight 0.5
    tag_count     0.125 per marker present once and well placed, minus 0.001 per
                  character after the answer's end marker                                 weight 1.0
"""
from __future__ import annotations

import importlib.util
import math
import re
import threading
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Markers:
    reasoning_start: str = "<reasoning>"
    reasoning_end: str = "</reasoning>"
    answer_start: str = "<answer>"
    answer_end: str = "</answer>"

    def format_instructions(self) -> str:
        return (f"Respond in the following format:\n{self.reasoning_start}\n...\n{self.reasoning_end}\n"
                f"{self.answer_start}\n...\n{self.answer_end}")


def system_prompt(template: str | None, markers: Markers) -> str:
    """The instruction (system) template with the format the markers ask for: what the GRPO trainers put
    before each question, and what the app's pre-launch reward check hands a user's functions."""
    return "\n\n".join(t for t in ((template or "").strip(), markers.format_instructions()) if t)


def reply_prefix(prefill: bool, markers: Markers) -> str:
    """What each prompt ends with when replies start with the thinking marker ('' when they do not).
    A small model that ignores the format instructions then begins inside the reasoning block (DeepSeek-R1's
    own chat template opens `<think>` the same way), and the format rewards can tell replies apart."""
    return f"{markers.reasoning_start}\n" if prefill else ""


def scoring_whole_reply(func: Callable, prefix: str) -> Callable:
    """A TRL reward function that scores `prefix + completion`, the reply as it reads with the part the prompt
    wrote for the model, so the format rewards (and your own functions) see the opening marker."""
    if not prefix:
        return func

    def reward(prompts=None, completions=(), **kwargs):
        return func(prompts=prompts, completions=[prefix + completion_text(c) for c in completions], **kwargs)

    reward.__name__ = func.__name__  # TRL logs rewards/<name>/mean
    reward.__wrapped__ = func
    return reward


DEFAULT_WEIGHTS = {"correctness": 2.0, "integer": 0.5, "strict_format": 0.5, "soft_format": 0.5, "tag_count": 1.0}
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_MATH = re.compile(r"[0-9\\]")  # a digit or a LaTeX command


def reference_answer(text: str) -> str:
    """GSM8K style: the reference is what follows `####`; otherwise the whole text."""
    text = str(text)
    return text.split("####")[-1].strip() if "####" in text else text.strip()


def extract_answer(completion: str, markers: Markers = Markers()) -> str | None:
    """The text between the last answer start marker and the answer end marker after it."""
    start = completion.rfind(markers.answer_start)
    if start < 0:
        return None
    rest = completion[start + len(markers.answer_start):]
    end = rest.find(markers.answer_end)
    if end < 0:
        return None
    return rest[:end].strip()


def as_number(text: str | None) -> float | None:
    if text is None:
        return None
    cleaned = text.strip().replace(",", "").replace("$", "").rstrip(".").strip()
    if not _NUMBER.match(cleaned):
        return None
    value = float(cleaned)
    return value if math.isfinite(value) else None


CORRECTNESS_METHODS = ("auto", "math_verify", "numbers")


def math_verify_installed() -> bool:
    return importlib.util.find_spec("math_verify") is not None


def resolve_method(method: str | None) -> str:
    """`auto`: math-verify where it is installed (where the trainer runs), numbers otherwise."""
    method = method or "auto"
    if method == "auto":
        return "math_verify" if math_verify_installed() else "numbers"
    if method == "math_verify" and not math_verify_installed():  # e.g. a plugin's own environment
        raise SystemExit("[tlab] correctness_method math_verify needs the math-verify package: pip install math-verify")
    return method


def _math_equal(answer: str, reference: str) -> bool:
    """math-verify's parse and verify. Its timeouts use SIGALRM, which only the main thread may set."""
    from math_verify import parse, verify

    def wrap(text):  # bare 1/2 or \frac12 is read as math only between $ signs
        return text if "$" in text or "\\boxed" in text else f"${text}$"

    main = threading.current_thread() is threading.main_thread()
    limits = {} if main else {"parsing_timeout": None}
    try:
        gold, got = parse(wrap(reference), **limits), parse(wrap(answer), **limits)
        return bool(gold and got and verify(gold, got, **({} if main else {"timeout_seconds": None})))
    except Exception:  # noqa: BLE001 - an answer math-verify cannot read is not correct
        return False


def answers_match(answer: str | None, reference: str, method: str = "numbers") -> bool:
    if answer is None:
        return False
    a, b = as_number(answer), as_number(reference)
    if a is not None and b is not None:
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    if " ".join(answer.split()).lower() == " ".join(reference.split()).lower():
        return True
    # Only where there is math to read: math-verify reads "sirap" and "paris" as equal products of symbols.
    return method == "math_verify" and bool(_MATH.search(answer) or _MATH.search(reference)) \
        and _math_equal(answer, reference)


_ANY_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?")
UNMARKED_CREDIT = 0.5


def last_number(completion: str) -> str | None:
    found = _ANY_NUMBER.findall(completion)
    return found[-1] if found else None


def correctness(completion: str, reference: str, markers: Markers = Markers(), method: str = "numbers") -> float:
    """1 for the right answer between the answer markers. A completion with no answer block whose last number
    is right earns UNMARKED_CREDIT: a small model that ignores the format at first (SmolLM2-135M-Instruct gave
    0 of 80 sampled completions in it) otherwise scores 0 everywhere, every advantage is zero and GRPO learns
    nothing; half credit gives it a signal and still pays for the format."""
    reference = reference_answer(reference)
    answer = extract_answer(completion, markers)
    if answer is not None:
        return 1.0 if answers_match(answer, reference, method) else 0.0
    return UNMARKED_CREDIT if answers_match(last_number(completion), reference, method) else 0.0


def integer(completion: str, markers: Markers = Markers()) -> float:
    value = as_number(extract_answer(completion, markers))
    return 1.0 if value is not None and value.is_integer() else 0.0


def strict_format(completion: str, markers: Markers = Markers()) -> float:
    m = markers
    pattern = (rf"^{re.escape(m.reasoning_start)}\n.+?\n{re.escape(m.reasoning_end)}\n"
               rf"{re.escape(m.answer_start)}\n.+?\n{re.escape(m.answer_end)}\n?$")
    return 1.0 if re.match(pattern, completion, re.DOTALL) else 0.0


def soft_format(completion: str, markers: Markers = Markers()) -> float:
    m = markers
    pattern = (rf"{re.escape(m.reasoning_start)}.*?{re.escape(m.reasoning_end)}\s*"
               rf"{re.escape(m.answer_start)}.*?{re.escape(m.answer_end)}")
    return 1.0 if re.search(pattern, completion, re.DOTALL) else 0.0


def tag_count(completion: str, markers: Markers = Markers()) -> float:
    m = markers
    score = 0.0
    if completion.count(f"{m.reasoning_start}\n") == 1:
        score += 0.125
    if completion.count(f"\n{m.reasoning_end}\n") == 1:
        score += 0.125
    if completion.count(f"\n{m.answer_start}\n") == 1:
        score += 0.125
    if completion.count(f"\n{m.answer_end}") == 1:
        score += 0.125
        score -= 0.001 * len(completion.split(f"\n{m.answer_end}")[-1].strip("\n"))
    return score


SCORERS: dict[str, Callable[..., float]] = {
    "correctness": correctness, "integer": integer, "strict_format": strict_format,
    "soft_format": soft_format, "tag_count": tag_count,
}


def completion_text(completion: Any) -> str:
    """TRL hands a conversational completion as a list of messages, a plain one as a string."""
    if isinstance(completion, list):
        return "".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    return str(completion)


def trl_reward_funcs(names: list[str], markers: Markers, method: str = "numbers") -> list[Callable]:
    """The chosen scorers as TRL reward functions, named so TRL logs `rewards/<name>/mean`.
    `method`: how correctness compares answers, `math_verify` or `numbers` (resolve `auto` first)."""
    funcs = []
    for name in names:
        scorer = SCORERS[name]

        def reward(prompts, completions, _scorer=scorer, _name=name, **kwargs):
            texts = [completion_text(c) for c in completions]
            if _name == "correctness":
                return [_scorer(t, ref, markers, method) for t, ref in zip(texts, kwargs["answer"])]
            return [_scorer(t, markers) for t in texts]

        reward.__name__ = name
        funcs.append(reward)
    return funcs
