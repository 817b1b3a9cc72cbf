"""Your own reward functions in a GRPO plugin's form: a table of every function in the workspace's reward
files (tick, weight) and an upload; the ticked rows are the request's `custom_rewards`."""
from __future__ import annotations

import html
from typing import Any

import gradio as gr

from .. import settings
from ..service import RequestError, Service
from .common import PRIVATE, problems_md

REWARD_HEADERS = ["Use", "Function (file.py:function)", "Weight"]


def seeded_rewards(svc: Service, plugin_id: str | None, seed_value: dict[str, Any]) -> list[dict[str, Any]]:
    """A preset's or a cloned job's own reward functions, for a GRPO plugin."""
    if not plugin_id or seed_value.get("plugin") != plugin_id:
        return []
    try:
        if svc.plugin_form(plugin_id)["train_type"] != "grpo":
            return []
    except RequestError:
        return []
    chosen = (seed_value.get("values") or {}).get("custom_rewards")
    return list(chosen) if isinstance(chosen, list) else []


def reward_rows(svc: Service, chosen: list[Any], keep: list[list[Any]] | None = None) -> list[list[Any]]:
    """The table's rows: every function of every reward file, ticked with its weight where chosen (or as
    the table had it), and a chosen one whose file is gone, so the check names it."""
    weights = {}
    for item in chosen:
        if isinstance(item, dict):
            weights[str(item.get("function"))] = item.get("weight", 1.0)
        elif isinstance(item, str):
            weights[item] = 1.0
    kept = {str(r[1]): r for r in keep or [] if len(r) >= 3}
    labels = [f"{f['file']}:{fn}" for f in svc.reward_functions()["files"] for fn in f["functions"]]
    labels += [label for label in weights if label not in labels]
    return [kept.get(label) or [label in weights, label, weights.get(label, 1.0)] for label in labels]


def chosen_rewards(rows: Any) -> list[dict[str, Any]]:
    """The ticked rows as [{function, weight}]; a weight that is not a number stays, for the check to name."""
    rows = rows.values.tolist() if hasattr(rows, "values") else (rows or [])  # a DataFrame or a list of rows
    chosen = []
    for row in rows:
        if len(row) >= 3 and row[0] in (True, "true", "True") and str(row[1]).strip():
            weight = row[2]
            try:
                weight = 1.0 if weight in (None, "") else float(weight)
            except (TypeError, ValueError):
                pass  # the check names it
            chosen.append({"function": str(row[1]).strip(), "weight": weight})
    return chosen


def custom_rewards_block(svc: Service, refs: dict[str, Any], chosen: list[Any], key: str) -> Any:
    """The table and the upload, inside the Plugin Config's render. Hidden in hosted mode: a visitor's file
    would run here. A change reports the chosen rows into refs["custom"]: the event returned, after which the
    caller checks the form again (None in hosted mode)."""
    if settings.hosted():
        gr.Markdown("Reward functions of your own are turned off on this server.", elem_classes="tl-muted")
        return None
    gr.Markdown("**Your reward functions**: Python files of `def f(prompts, completions, **kwargs) -> list[float]` "
                "(completions are chat messages or strings; dataset columns such as `answer` come as keyword "
                "lists). Tick the ones to use and give each a weight; each is tried on a sample completion "
                "before Start.", elem_classes="tl-muted")
    table = gr.Dataframe(value=reward_rows(svc, chosen), headers=REWARD_HEADERS, datatype=["bool", "str", "number"],
                         type="array", interactive=True, static_columns=[1], label="Reward files in the workspace",
                         key=f"{key}-table", preserved_by_key=None, elem_id="custom-rewards")
    with gr.Row():
        upload = gr.File(label="Upload a reward file (.py)", file_types=[".py"], type="filepath", key=f"{key}-upload",
                         elem_id="reward-upload", scale=2)
        note = gr.Markdown(elem_id="reward-upload-msg")

    def uploaded(path, rows):
        if not path:  # cleared
            return gr.skip(), gr.skip()
        try:
            saved = svc.save_reward_upload(path)
        except RequestError as exc:
            return gr.skip(), problems_md(exc)
        return (reward_rows(svc, chosen_rewards(rows), keep=rows if isinstance(rows, list) else None),
                f"Added **{html.escape(saved['file'])}**: {', '.join(saved['functions'])}")

    # On the value's change, not .upload: under load the upload event was seen to carry no file yet (1 in ~10 runs
    # on 2 busy cores), and the file was never added.
    upload.change(uploaded, [upload, table], [table, note], **PRIVATE)
    # The chosen rows into refs["custom"]; the caller checks the form again after it (refs["wire"]).
    return table.change(chosen_rewards, table, refs["custom"], show_progress="hidden", trigger_mode="always_last",
                        **PRIVATE)
