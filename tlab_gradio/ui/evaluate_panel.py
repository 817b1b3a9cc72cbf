"""A finished job's Evaluate: its model (final or a checkpoint) scored on the job's held-out rows or a dataset typed
here, the metrics and a table of examples (prompt, reference, answer, score), and the job's earlier evaluations
side by side. Everything goes through Service.evaluate_job / evaluations / compare_evaluations."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from ..service import Service
from .common import PRIVATE, USER_ERRORS, checked, refused, visitor

FINAL_LABEL = "final model"
HELD_OUT_LABEL = "Dataset (empty: the job's held-out rows)"
NO_HELD_OUT_LABEL = "Dataset (this job kept no held-out rows)"
EXAMPLE_COLUMNS = ["prompt", "reference", "answer", "score"]
METRIC_NAMES = {"eval_loss": "eval loss", "perplexity": "perplexity", "exact_match": "exact match",
                "accuracy": "accuracy", "eval_reward": "reward (weighted)"}


@dataclass
class Panel:
    outputs: list  # what the job view updates when the selected job or its state changes
    on_job: Any  # (job_id, finished, owner) -> updates for `outputs`
    hidden: Any  # () -> updates hiding the panel (a deleted job)


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def describe(result: dict) -> str:
    """One evaluation's headline: what was scored and its metrics."""
    m = result.get("metrics") or {}
    shown = [f"**{label}** {_number(m[key])}" for key, label in METRIC_NAMES.items() if m.get(key) is not None]
    shown += [f"{key.split('/', 1)[1]} {_number(v)}" for key, v in m.items() if key.startswith("rewards/")
              and v is not None]
    return (f"**{result.get('name')}**: {result.get('checkpoint')} on {result.get('dataset_label')} "
            f"({result.get('rows')} rows, {_number(result.get('seconds'))} s, "
            f"{(result.get('settings') or {}).get('device')})  \n" + " · ".join(shown))


def examples_table(result: dict) -> list[list]:
    return [[str(e.get("prompt") or "")[-400:], "" if e.get("reference") is None else str(e["reference"]),
             "" if e.get("answer") is None else str(e["answer"]),
             "" if e.get("score") is None else e["score"]] for e in result.get("examples") or []]


def history_table(rows: list[dict]) -> list[list]:
    keys = ["evaluation", "checkpoint", "dataset", "rows", *METRIC_NAMES]
    return [[f"{r.get('job_id')} · {r.get('job_name')}"] + [_number(r.get(k)) if r.get(k) is not None else ""
                                                             for k in keys] for r in rows]


HISTORY_HEADERS = ["job", "evaluation", "checkpoint", "dataset", "rows", *METRIC_NAMES.values()]


def build(svc: Service, hosted: bool, selected: gr.State) -> Panel:
    with gr.Accordion("Evaluate the model", open=False, visible=False, elem_id="job-evaluate") as box:
        with gr.Row():
            source = gr.Dropdown(choices=[], label="Model", interactive=True, elem_id="evaluate-source",
                                 info="the model saved at the end, or one of the checkpoints")
            dataset = gr.Textbox(label=HELD_OUT_LABEL, elem_id="evaluate-dataset",
                                 placeholder="a sample name, a Hub id" + ("" if hosted else " or a file path"),
                                 info="scored through the job's own templates")
            limit = gr.Number(value=0, precision=0, minimum=0, label="Rows (0: all)", elem_id="evaluate-limit",
                              scale=0, min_width=120)
            run_btn = gr.Button("Evaluate", variant="primary", size="sm", scale=0, min_width=140,
                                elem_id="evaluate-job")
        note = gr.Markdown(elem_id="evaluate-note")
        examples = gr.Dataframe(headers=EXAMPLE_COLUMNS, value=[], interactive=False, wrap=True, visible=False,
                                label="Examples (greedy answers)", elem_id="evaluate-examples", max_height=420,
                                column_widths=["40%", "22%", "30%", "8%"])
        others = gr.Dropdown(choices=[], value=[], multiselect=True, label="Compare with", interactive=True,
                             info="other jobs' evaluations beside this job's in the table", elem_id="evaluate-compare")
        history = gr.Dataframe(headers=HISTORY_HEADERS, value=[], interactive=False, visible=False,
                               label="Evaluations (select one to see its examples)", elem_id="evaluate-history")

    def checkpoint(choice: str | None) -> str:
        return "final" if choice in (None, "", FINAL_LABEL) else choice

    def jobs_of(job_id: int, compared: list | None) -> list[int]:
        return [job_id] + [j for j in compared or [] if j != job_id]

    def listed(job_id: int, compared: list | None, owner: str | None) -> dict:
        rows = svc.compare_evaluations(jobs_of(job_id, compared), owner)
        return gr.update(value=history_table(rows), visible=bool(rows))

    def do_evaluate(job_id, choice, data_text, rows, compared, request: gr.Request):
        owner = visitor(request)
        try:
            out = svc.evaluate_job(job_id, checkpoint(choice), (data_text or "").strip() or None,
                                   int(rows or 0) or None, "auto", owner)
        except USER_ERRORS as exc:
            return refused("Not evaluated", exc), gr.skip(), gr.skip()
        return describe(out), gr.update(value=examples_table(out), visible=True), listed(job_id, compared, owner)

    run_btn.click(do_evaluate, [selected, source, dataset, limit, others], [note, examples, history],
                  show_progress="minimal", show_progress_on=run_btn, **PRIVATE)

    @checked
    def compare_with(job_id, compared, request: gr.Request):
        return listed(job_id, compared, visitor(request)) if job_id is not None else gr.skip()

    others.input(compare_with, [selected, others], history, show_progress="hidden", **PRIVATE)

    @checked
    def show(job_id, compared, evt: gr.SelectData, request: gr.Request):
        owner = visitor(request)
        found = svc.evaluations(jobs_of(job_id, compared), examples=True, owner=owner)
        index = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        if not isinstance(index, int) or not 0 <= index < len(found):
            return gr.skip(), gr.skip()
        return describe(found[index]), gr.update(value=examples_table(found[index]), visible=True)

    history.select(show, [selected, others], [note, examples], show_progress="hidden", **PRIVATE)

    def on_job(job_id: int, finished: bool, owner: str | None) -> list:
        labels = [FINAL_LABEL if c == "final" else c for c in svc.export_choices(job_id, owner)] if finished else []
        rows = svc.compare_evaluations(job_id, owner) if labels else []
        compared = [(f"{j['job_id']} · {j['name']}", j["job_id"]) for j in svc.evaluated_jobs(owner)
                    if j["job_id"] != job_id] if labels else []
        held_out = svc.has_held_out(job_id, owner) if labels else True
        return [gr.update(visible=bool(labels)), gr.update(choices=labels, value=labels[0] if labels else None),
                "", gr.update(value=[], visible=False),
                gr.update(value=history_table(rows), visible=bool(rows)), gr.update(choices=compared, value=[]),
                gr.update(label=HELD_OUT_LABEL if held_out else NO_HELD_OUT_LABEL)]

    def hidden() -> list:
        return [gr.update(visible=False), gr.update(choices=[], value=None), "", gr.update(value=[], visible=False),
                gr.update(value=[], visible=False), gr.update(choices=[], value=[]), gr.update(label=HELD_OUT_LABEL)]

    outputs = [box, source, note, examples, history, others, dataset]
    # Progress on the note, not the panel's box: the page copies every component inside an event's progress
    # targets at each later render of the form (a plugin switch took ~1 s more once a job had been selected).
    selected.change(lambda job_id: hidden() if job_id is None else [gr.skip()] * len(outputs), selected, outputs,
                    show_progress="hidden", show_progress_on=note, **PRIVATE)
    return Panel(outputs=outputs, on_job=on_job, hidden=hidden)
