"""The Train tab's Sweeps section: one or two parameters given several values ("learning_rate=1e-4,2e-4;
lora_r=8,16") on top of the form's settings (the request of the form's latest check, the one Start would start),
one job per combination under one sweep (Service.start_sweep checks every combination as Start does). A picked
sweep shows its state, what it is ranked by, a table of its jobs ranked with the best marked (a row opens that job
below), and one chart of every job's curve of a metric (the ranking metric first). Stop sweep stops it whole.

train_tab calls `build` where the section goes and `wire` once the form's last check (live.Checked) exists."""
from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import gradio as gr

from ..service import RequestError, Service
from ..sweeps import fmt, short_name
from . import chart, live
from .common import PRIVATE, checked, problems_md, state_badge, visitor
from .jobs_view import follow_others

HELP = ("Each combination of the values becomes a job with the form's other settings (open the form with "
        "**+ New**, a preset or a clone; its check must pass), checked as Start checks it: one bad combination and "
        "nothing is queued. Jobs run as GPUs (or CPU slots) free. Set **val_size** (Held-out evaluation) to rank "
        "them by held-out loss (GRPO: reward); without it they are ranked by the final training loss.")
PLACEHOLDER = "learning_rate=1e-4,2e-4,5e-4; lora_r=8,16"
EMPTY = "No points yet: each job's curve comes with its first logged step."
NONE_PICKED = "No sweep picked: start one above, or pick one."
HIDDEN_METRICS = {"step", "epoch", "time", "world_size", "total_flos"}


@dataclass
class Parts:
    axes: gr.Textbox
    start_btn: gr.Button
    message: gr.Markdown
    pick: gr.Dropdown
    stop_btn: gr.Button
    summary: gr.HTML
    table: gr.Dataframe
    metric: gr.Dropdown
    plot: gr.HTML
    view: gr.State
    timer: gr.Timer
    box: gr.Accordion


def build(svc: Service, hosted: bool) -> Parts:
    """The section's layout, where it is called (wire() adds its listeners)."""
    with gr.Accordion("Sweeps: several values of one or two parameters", open=False, elem_id="sweep-panel") as box:
        gr.Markdown(HELP, elem_classes="tl-muted")
        with gr.Row(equal_height=True):
            axes = gr.Textbox(label="Parameters and their values", placeholder=PLACEHOLDER, lines=1, max_lines=1,
                              scale=4, elem_id="sweep-axes",
                              info="`;` between parameters, `,` between values; at most 16 combinations")
            start_btn = gr.Button("Start sweep with the form's settings", variant="primary", scale=1, min_width=200,
                                  elem_id="start-sweep")
        message = gr.Markdown(elem_id="sweep-msg")
        with gr.Row(equal_height=True):
            pick = gr.Dropdown(choices=[], value=None, label="Sweep", interactive=True, scale=4, elem_id="sweep-pick")
            stop_btn = gr.Button("Stop sweep", variant="stop", size="sm", scale=0, min_width=130, visible=False,
                                 elem_id="stop-sweep")
        summary = gr.HTML(elem_id="sweep-summary")
        with gr.Row(equal_height=False):
            table = gr.Dataframe(headers=["Rank", "Job", "State"], interactive=False, wrap=True, scale=3,
                                 elem_id="sweep-table", max_height=420)
            with gr.Column(scale=2):
                metric = gr.Dropdown(choices=[], value=None, label="Chart", interactive=True, elem_id="sweep-metric",
                                     info="every job's curve of one metric")
                plot = gr.HTML(chart.render([], "Sweep", empty=NONE_PICKED), elem_id="sweep-chart")
    view = gr.State({"sweep": None, "jobs": {}, "best": None})
    timer = gr.Timer(2.0, active=False)
    return Parts(axes, start_btn, message, pick, stop_btn, summary, table, metric, plot, view, timer, box)


def sweep_choices(svc: Service, owner: str | None) -> list[tuple[str, int]]:
    return [(f"{s['sweep_id']} · {s['name']} ({s['jobs']} jobs, {s['state'].lower()})", s["sweep_id"])
            for s in svc.list_sweeps(owner)]


def table_rows(status: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The ranked table: rank (★ the best), job, each swept parameter's value (headed by its short name, as in the
    jobs' names: lr, r), state, the ranking metric, step."""
    params = [a["parameter"] for a in status["axes"]]
    headers = ["Rank", "Job", *[short_name(p) for p in params], "State", status["metric"], "Step"]
    rows = []
    for job in status["jobs"]:
        rank = "" if job["rank"] is None else (f"★ {job['rank']} best" if job["best"] else str(job["rank"]))
        value = "" if job["metric"] is None else f"{job['metric']:.5g}"
        if value and job["rank"] is None and job["state"] != "COMPLETE":
            value += " (so far)"
        step = f"{job['step']}/{job['total_steps']}" if job["step"] is not None and job["total_steps"] else (
            "" if job["step"] is None else str(job["step"]))
        rows.append([rank, f"{job['job_id']} · {job['name']}", *[fmt(job["values"].get(p, "")) for p in params],
                     job["state"], value, step])
    return headers, rows


def summary_html(status: dict[str, Any]) -> str:
    counts = ", ".join(f"{n} {s.lower()}" for s, n in status["counts"].items())
    best = status["best"]
    so_far = " so far" if status["state"] in ("QUEUED", "RUNNING", "STOPPING") else ""
    best_text = (f' · best{so_far}: <b>★ {html.escape(best["label"])}</b> ({html.escape(status["metric"])} '
                 f'{best["metric"]:.5g}, job {best["job_id"]})' if best else "")
    return (f'<div class="tl-job-title" data-sweep-id="{status["sweep_id"]}">Sweep {status["sweep_id"]} · '
            f'{html.escape(status["name"])} {state_badge(status["state"])}</div>'
            f'<div class="tl-muted">{len(status["jobs"])} jobs: {html.escape(counts)}{best_text}</div>'
            f'<div class="tl-muted" id="sweep-note">{html.escape(status["note"])}</div>')


def metric_choices(status: dict[str, Any], jobs: dict[str, Any]) -> list[str]:
    """The ranking metric first, then the training loss (or reward), then any other metric the jobs log."""
    train = "reward" if status["metric"] in ("eval_reward", "reward") else "loss"
    found = {k for other in jobs.values() for k in other["series"]}
    first = [status["metric"]] + ([train] if train != status["metric"] else [])
    return first + sorted(k for k in found if k not in first and k not in HIDDEN_METRICS)


def chart_html(status: dict[str, Any], jobs: dict[str, Any], choice: str | None) -> str:
    """One line per job of the sweep for metric `choice` (held-out metrics dashed), named by its combination; the
    best job's name starts with ★."""
    choice = choice or status["metric"]
    best = (status["best"] or {}).get("job_id")
    lines = []
    for job in status["jobs"]:
        other = jobs.get(str(job["job_id"]))
        points = (other or {}).get("series", {}).get(choice) or []
        name = ("★ " if job["job_id"] == best else "") + job["label"]
        lines.append(chart.Line(name, [(s, v) for s, v in points], dashed=choice.startswith("eval_")))
    return chart.render(lines, f"{choice} · sweep {status['sweep_id']}", empty=EMPTY, css_class="tl-sweep-chart")


def wire(svc: Service, parts: Parts, demo: gr.Blocks, last_checked: live.Checked, selected: gr.State) -> None:
    """The section's listeners: Start sweep takes the form's latest checked request (live.START_JS waits for the
    check of the latest change, as Start does), the picked sweep refreshes every 2 s while it runs."""
    start_seq = gr.Textbox(visible="hidden", elem_id="sweep-start-seq")

    def start(visit: gr.Request, axes_text, seq):
        owner = visitor(visit)
        try:
            request = last_checked.request(visit, seq)
            status = svc.start_sweep(request, axes_text, owner)
        except RequestError as exc:
            return (f"**The sweep was not started:**\n{problems_md(exc)}", gr.skip(), gr.skip())
        except ValueError as exc:
            return (f"**The sweep was not started:** {html.escape(svc.hide_paths(str(exc)))}", gr.skip(), gr.skip())
        names = ", ".join(j["label"] for j in sorted(status["jobs"], key=lambda j: j["position"]))
        return (f"Started sweep **{status['sweep_id']}**: {len(status['jobs'])} jobs ({html.escape(names)}).",
                gr.update(choices=sweep_choices(svc, owner), value=status["sweep_id"]), gr.Timer(active=True))

    parts.start_btn.click(start, [parts.axes, start_seq], [parts.message, parts.pick, parts.timer], js=live.START_JS,
                          show_progress_on=parts.message, **PRIVATE)

    outputs = [parts.summary, parts.table, parts.metric, parts.plot, parts.view, parts.stop_btn, parts.timer,
               parts.pick]

    def refresh(sweep_id, state, choice, visit: gr.Request):
        if sweep_id is None:
            return [gr.skip()] * len(outputs)
        owner = visitor(visit)
        status = checked(svc.sweep_status)(sweep_id, owner)
        fresh = state.get("sweep") != status["sweep_id"]
        jobs = {} if fresh else dict(state.get("jobs") or {})
        for job in status["jobs"]:
            jobs.setdefault(str(job["job_id"]), {"label": job["label"], "series": {}, "offset": 0})
        jobs, grew = follow_others(svc, jobs, owner)
        choices = metric_choices(status, jobs)
        choice = status["metric"] if fresh or choice not in choices else choice
        best = (status["best"] or {}).get("job_id")
        headers, rows = table_rows(status)
        running = status["state"] in ("QUEUED", "RUNNING", "STOPPING")
        redraw = fresh or grew or best != state.get("best")
        ended = not fresh and state.get("state") != status["state"]  # the list names each sweep's state
        return [summary_html(status), gr.update(value=rows, headers=headers),
                gr.update(choices=choices, value=choice),
                chart_html(status, jobs, choice) if redraw else gr.skip(),
                {"sweep": status["sweep_id"], "jobs": jobs, "best": best, "state": status["state"]},
                gr.update(visible=running), gr.Timer(active=running),
                gr.update(choices=sweep_choices(svc, owner)) if ended else gr.skip()]

    parts.pick.change(refresh, [parts.pick, parts.view, parts.metric], outputs, show_progress="hidden", **PRIVATE)
    parts.timer.tick(refresh, [parts.pick, parts.view, parts.metric], outputs, show_progress="hidden", **PRIVATE)

    def redraw(sweep_id, state, choice, visit: gr.Request):
        if sweep_id is None or state.get("sweep") != sweep_id:
            return gr.skip()
        status = checked(svc.sweep_status)(sweep_id, visitor(visit))
        return chart_html(status, state.get("jobs") or {}, choice)

    parts.metric.input(redraw, [parts.pick, parts.view, parts.metric], parts.plot, show_progress="hidden", **PRIVATE)

    def stop(sweep_id, visit: gr.Request):
        if sweep_id is None:
            return gr.skip()
        out = checked(svc.stop_sweep)(sweep_id, visitor(visit))
        return f"Stopped sweep **{out['sweep_id']}**: {len(out['stopped'])} jobs stopped or taken off the queue."

    parts.stop_btn.click(stop, parts.pick, parts.message, show_progress_on=parts.message, **PRIVATE).then(
        refresh, [parts.pick, parts.view, parts.metric], outputs, show_progress="hidden", **PRIVATE)

    def open_job(evt: gr.SelectData):
        """A row of the table opens its job in the job view below."""
        row = evt.row_value
        text = str(row[1]) if row and len(row) > 1 else ""
        head = text.split(" · ", 1)[0]
        return int(head) if head.isdigit() else gr.skip()

    parts.table.select(open_job, None, selected, **PRIVATE)

    def sweeps_of(visit: gr.Request):
        return gr.update(choices=sweep_choices(svc, visitor(visit)))

    demo.load(sweeps_of, None, parts.pick, **PRIVATE)

    def newest(sweep_id, visit: gr.Request):
        """Opening the section shows the newest sweep when none is picked (not at page load: a running sweep's
        2 s refresh would run for every page, the section open or not)."""
        if sweep_id is not None:
            return gr.skip()
        choices = sweep_choices(svc, visitor(visit))
        return gr.update(choices=choices, value=choices[0][1]) if choices else gr.skip()

    parts.box.expand(newest, parts.pick, parts.pick, show_progress="hidden", **PRIVATE)
