"""Named dataset formats, found from the columns and the first rows.

People bring data in a few public shapes: Alpaca (`instruction`/`input`/`output`), ShareGPT (`conversations`
of `from`/`value` turns), OpenAI chat messages (a column of `role`/`content` turns, under any name),
prompt/completion, question/answer (GSM8K's answers end with `#### 42`) and plain `text`. `detect` names the
shape ("looks like ShareGPT: conversations -> messages") and gives the templates that fit it: SFT's data and
completion templates, GRPO's input (question) and answer templates. Conversations have no templates: they go
through the model's chat template, as a `messages` column (data.load converts the other names and ShareGPT's
turns, `to_messages`). Pure Python, no `datasets`: the web process uses it on a file's head.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

ALPACA_PROMPT = "### Instruction:\n{{instruction}}\n\n### Input:\n{{input}}\n\n### Response:\n"  # the sample's
ALPACA_PROMPT_NO_INPUT = "### Instruction:\n{{instruction}}\n\n### Response:\n"
GSM8K_ANSWER = "{{ answer.split('####')[-1] | trim }}"  # the reference: the final number after ####

# ShareGPT's speakers as chat roles (FastChat, LLaMA-Factory and Axolotl use these names).
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bard": "assistant", "bing": "assistant", "model": "assistant",
                  "system": "system", "tool": "tool", "function": "tool", "observation": "tool",
                  "function_call": "assistant"}
IDS = ("alpaca", "sharegpt", "messages", "prompt_completion", "question_answer", "text")


class FormatError(ValueError):
    pass


@dataclass(frozen=True)
class Format:
    id: str  # one of IDS
    name: str  # "ShareGPT"
    description: str  # "looks like ShareGPT: conversations -> messages"
    column: str | None = None  # conversations: the column of turns
    sft: tuple[str, str] = ("", "")  # (data template, completion template); empty for conversations
    grpo: tuple[str, str] | None = None  # (input template, answer template); None: no question/answer to use

    @property
    def conversational(self) -> bool:
        return self.id in ("sharegpt", "messages")

    @property
    def messages_from(self) -> str | None:
        """The column data.load turns into `messages` (None: there is nothing to convert)."""
        if self.id == "sharegpt" or (self.id == "messages" and self.column != "messages"):
            return self.column
        return None

    def templates(self, train_type: str) -> tuple[str, str]:
        """The templates for a plugin's train_type: GRPO's input/answer, else SFT's ("", "" when none fit)."""
        if train_type == "grpo":
            return self.grpo or ("", "")
        return self.sft

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["messages_from"] = self.messages_from
        return out


def _turns(value: Any, keys: tuple[str, str]) -> bool:
    """A non-empty list of objects that each have both keys (a conversation), or a JSON text of one."""
    return (isinstance(value, list) and bool(value)
            and all(isinstance(t, dict) and keys[0] in t and keys[1] in t for t in value))


def _conversation_columns(columns: list[str], rows: list[dict[str, Any]], keys: tuple[str, str]) -> list[str]:
    """The columns whose non-empty values in the first rows are all conversations with these keys."""
    found = []
    for column in columns:
        values = [r.get(column) for r in rows if r.get(column) not in (None, [])]
        if values and all(_turns(v, keys) for v in values):
            found.append(column)
    return found


def _strings(column: str, rows: list[dict[str, Any]]) -> bool:
    values = [r.get(column) for r in rows if r.get(column) is not None]
    return all(isinstance(v, (str, int, float)) for v in values)


def _conversation(fmt_id: str, column: str) -> Format:
    if fmt_id == "sharegpt":
        return Format("sharegpt", "ShareGPT", f"looks like ShareGPT: {column} -> messages (the model's chat "
                      "template)", column)
    shown = "messages" if column == "messages" else f"{column} -> messages"
    return Format("messages", "OpenAI messages", f"looks like OpenAI chat messages: {shown} (the model's chat "
                  "template)", column)


def detect(columns: list[str], first_rows: list[dict[str, Any]], override: str | None = None) -> Format | None:
    """The format of data with these columns and first rows, or None when none fits. `override` (a request's
    `data_format`): one of IDS, a conversation format optionally with its column (`messages:chat`); FormatError
    when it does not fit the data, naming the columns there are."""
    columns = list(columns)
    rows = [r for r in first_rows if isinstance(r, dict)]
    if override:
        return _chosen(override, columns, rows)
    for fmt_id, keys in (("messages", ("role", "content")), ("sharegpt", ("from", "value"))):
        found = _conversation_columns(columns, rows, keys)
        if found:
            preferred = [c for c in found if c in ("messages", "conversations", "conversation", "chat")]
            return _conversation(fmt_id, (preferred or found)[0])
    for fmt_id in ("alpaca", "prompt_completion", "question_answer", "text"):
        fmt = _flat(fmt_id, columns, rows)
        if fmt is not None:
            return fmt
    return None


def _flat(fmt_id: str, columns: list[str], rows: list[dict[str, Any]]) -> Format | None:
    """A format of text columns, when its columns are there."""
    have = set(columns)
    if fmt_id == "alpaca" and {"instruction", "output"} <= have:
        if "input" in have:
            prompt, question = ALPACA_PROMPT, "{{instruction}}\n\n{{input}}"
            shown = "instruction, input -> output"
        else:
            prompt, question, shown = ALPACA_PROMPT_NO_INPUT, "{{instruction}}", "instruction -> output"
        return Format("alpaca", "Alpaca", f"looks like Alpaca: {shown}", None, (prompt, "{{output}}"),
                      (question, "{{output}}"))
    if fmt_id == "prompt_completion" and {"prompt", "completion"} <= have and _strings("prompt", rows) \
            and _strings("completion", rows):
        return Format("prompt_completion", "prompt/completion", "looks like prompt/completion: prompt -> completion",
                      None, ("{{prompt}}", "{{completion}}"), ("{{prompt}}", "{{completion}}"))
    if fmt_id == "question_answer" and {"question", "answer"} <= have:
        answers = [str(r.get("answer")) for r in rows if r.get("answer") is not None]
        if answers and all("####" in a for a in answers):
            return Format("question_answer", "GSM8K", "looks like GSM8K: question -> answer (the reference is the "
                          "number after ####)", None, ("Question: {{question}}\nAnswer: ", "{{answer}}"),
                          ("{{question}}", GSM8K_ANSWER))
        return Format("question_answer", "question/answer", "looks like question/answer: question -> answer", None,
                      ("Question: {{question}}\nAnswer: ", "{{answer}}"), ("{{question}}", "{{answer}}"))
    if fmt_id == "text" and "text" in have:
        return Format("text", "plain text", "looks like plain text: text", None, ("{{text}}", ""), None)
    return None


def filled_templates(train_type: str) -> set[tuple[str, str]]:
    """Every (template, completion template) pair a format fills in for a train_type (sft, grpo). The form shows
    them in its boxes; sent back with other data, they are still the format's, not the user's (data.resolve)."""
    out = set()
    for columns in (["instruction", "input", "output"], ["instruction", "output"], ["prompt", "completion"],
                    ["question", "answer"], ["text"]):
        for answer in ("1 #### 1", "1"):
            rows = [{c: answer for c in columns}]
            for fmt_id in ("alpaca", "prompt_completion", "question_answer", "text"):
                fmt = _flat(fmt_id, columns, rows)
                if fmt is not None and (train_type != "grpo" or fmt.grpo):
                    out.add(fmt.templates(train_type))
    return out


def _chosen(override: str, columns: list[str], rows: list[dict[str, Any]]) -> Format:
    fmt_id, _, column = override.strip().partition(":")
    fmt_id, column = fmt_id.strip().lower(), column.strip()
    if fmt_id not in IDS:
        raise FormatError(f"`data_format` {override!r}: use one of {', '.join(IDS)} (a conversation format may "
                          "name its column: messages:chat)")
    if fmt_id in ("sharegpt", "messages"):
        keys = ("from", "value") if fmt_id == "sharegpt" else ("role", "content")
        found = _conversation_columns(columns, rows, keys)
        if column:
            if column not in columns:
                raise FormatError(f"`data_format` {override!r}: no column {column!r}; columns: {', '.join(columns)}")
            if column not in found:
                raise FormatError(f"`data_format` {override!r}: column {column!r} is not a list of "
                                  f"{{{keys[0]}, {keys[1]}}} turns in the first rows")
            return _conversation(fmt_id, column)
        if not found:
            raise FormatError(f"`data_format` {fmt_id}: no column of {{{keys[0]}, {keys[1]}}} turns; columns: "
                              f"{', '.join(columns)}")
        return _conversation(fmt_id, found[0])
    if column:
        raise FormatError(f"`data_format` {override!r}: only sharegpt and messages name a column")
    fmt = _flat(fmt_id, columns, rows)
    if fmt is None:
        need = {"alpaca": "instruction, output (input optional)", "prompt_completion": "prompt, completion (text)",
                "question_answer": "question, answer", "text": "text"}[fmt_id]
        raise FormatError(f"`data_format` {fmt_id} needs the columns {need}; columns: {', '.join(columns)}")
    return fmt


def to_messages(turns: Any, fmt_id: str, where: str = "a row") -> list[dict[str, str]]:
    """One conversation as chat messages ({role, content}): ShareGPT's `from`/`value` turns mapped to roles,
    OpenAI messages kept. FormatError naming the row for a turn that is not one, or an unknown speaker."""
    if not isinstance(turns, list):
        raise FormatError(f"{where}: the conversation is {type(turns).__name__}, not a list of turns")
    out = []
    for i, turn in enumerate(turns):
        if fmt_id == "sharegpt":
            if not (isinstance(turn, dict) and "from" in turn and "value" in turn):
                raise FormatError(f"{where}, turn {i + 1}: a ShareGPT turn needs `from` and `value`")
            speaker = str(turn["from"]).strip().lower()
            if speaker not in SHAREGPT_ROLES:
                raise FormatError(f"{where}, turn {i + 1}: unknown speaker {turn['from']!r} (known: "
                                  f"{', '.join(sorted(SHAREGPT_ROLES))})")
            out.append({"role": SHAREGPT_ROLES[speaker], "content": "" if turn["value"] is None else str(turn["value"])})
        else:
            if not (isinstance(turn, dict) and "role" in turn and "content" in turn):
                raise FormatError(f"{where}, turn {i + 1}: a message needs `role` and `content`")
            out.append({"role": str(turn["role"]), "content": "" if turn["content"] is None else turn["content"]})
    return out
