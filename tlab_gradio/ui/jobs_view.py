"""The jobs list and the selected job: progress, live log, a chart of any logged metric (loss and reward
by default) beside other jobs' curves, command, Stop/Resume/Clone/Delete and the output files. A gr.Timer
refreshes it about every second; each refresh reads only the log's tail and the metrics lines appended
since the last one (the compared jobs' too)."""
from __future__ import annotations

import hashlib
import html
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from ..service import ACTIVE, FINISHED, Service
from . import chart, evaluate_panel, export_panel
from .common import PRIVATE, LastSent, checked, duration, progress_bar, state_badge, visitor, when

LIST_HEADERS = ["ID", "Name", "Plugin", "State", "GPUs", "Progress", "Started", "Duration"]
LOG_LINES = 300
LIVE_TICK, IDLE_TICK = 1.0, 5.0  # seconds between reads of the job shown: running or queued, finished
# Drawn together by default: the training loss, and with a held-out split its eval loss beside it (dashed, a point
# at each evaluation); GRPO adds the reward, and the held-out prompts' reward.
CHART_SERIES = ("loss", "eval_loss", "reward", "eval_reward")
DEFAULT_CHART = "loss & reward"
NOT_CHARTED = {"step", "epoch", "time", "world_size", "total_flos"}  # and the end-of-run train_* summary
MAX_POINTS = 5000  # per metric
EMPTY_CHART = "No points yet: the first comes with the first logged step."
MAX_FILES = 50
# The job's id and name come from its header: the selected job is a gr.State, which the browser never holds (the
# dialog said "Delete job null"). The State goes back as it came; the server fills it in.
DELETE_CONFIRM_JS = """(job, _) => { const t = document.querySelector('#job-header [data-job-id]');
  const what = t ? 'job ' + t.dataset.jobId + ' (' + t.dataset.jobName + ')' : 'this job';
  return [job, confirm('Delete ' + what + ' and its folder (checkpoints and output included)? '
                       + 'This cannot be undone.')]; }"""
FOLLOW_LOG_JS = """() => { const t = document.querySelector('#job-log textarea');
  if (t) { requestAnimationFrame(() => { t.scrollTop = t.scrollHeight; }); } }"""


@dataclass
class Parts:
    selected: gr.State
    clone_btn: gr.Button


def job_rows(svc: Service, owner: str | None = None) -> list[list[Any]]:
    """The jobs table; in hosted mode the visitor's (`owner`) jobs only."""
    rows = []
    now = time.time()
    for j in svc.job_rows(owner=owner):
        progress = ""
        if j["state"] in ACTIVE:
            st = svc.job_status(j["id"], owner)
            progress = f"{st['progress']:.0f}% ({st['step']}/{st['total_steps'] or '?'})"
        elif j["state"] == "COMPLETE":
            progress = "100%"
        elif j["step"] is not None:  # stopped or failed: the step it reached, as its bar shows
            progress = f"step {j['step']}/{j['total_steps'] or '?'}"
        gpus = ",".join(j["gpus"]) if j["gpus"] else f"cpu×{j['processes']}"
        if j.get("runs_on") == "slurm":  # the cluster's: Slurm's job id and the processes over its nodes
            gpus = f"Slurm {j['slurm_job_id'] or '(not submitted)'}: {j['device']}×{j['processes']}"
        end = j["finished"] or (now if j["state"] in ACTIVE else None)
        rows.append([j["id"], j["name"], j["plugin"], j["state"], gpus, progress, when(j["started"]),
                     duration(end - j["started"]) if j["started"] and end else ""])
    return rows


def empty_chart() -> pd.DataFrame:
    # Typed columns: an all-float empty frame makes the plot read `series` as a number scale.
    return pd.DataFrame({"step": pd.Series(dtype="int64"), "value": pd.Series(dtype="float64"),
                         "series": pd.Series(dtype="object")})


def add_points(series: dict[str, list], records: list[dict]) -> dict[str, list]:
    """Every numeric metric of each step record, as [step, value] per metric name. A series past
    MAX_POINTS keeps every other point: a long run's chart still starts at step 0."""
    if not records:  # most timer ticks: nothing new, nothing copied
        return series
    out = {k: list(v) for k, v in series.items()}
    for r in records:
        if not isinstance(r.get("step"), (int, float)):
            continue
        for key, value in r.items():
            if key in NOT_CHARTED or key.startswith("train_") or isinstance(value, bool):
                continue
            if isinstance(value, (int, float)):
                points = out.setdefault(key, [])
                points.append([r["step"], value])
                if len(points) > MAX_POINTS:
                    out[key] = points[::2]
    return out


def chart_choices(series: dict[str, list]) -> list[str]:
    """What the chart can show: loss and reward together first, then every other metric by name."""
    return [DEFAULT_CHART] + sorted(k for k in series if k not in CHART_SERIES)


def chart_update(series: dict[str, list], choice: str | None, others: dict | None = None, label: str = "this job",
                 smoothing: float = 0.0) -> str:
    """The chart for `choice` (loss and reward, or one metric), with the compared jobs' curves of the same
    metric, `smoothing` (TensorBoard's EMA weight) drawn over the raw points: the chart's HTML, every point the
    page holds in it (chart.py)."""
    choice = choice or DEFAULT_CHART
    title = "Loss and reward" if choice == DEFAULT_CHART else choice
    return chart.render(chart_lines(series, choice, others, label), title, smoothing or 0.0, EMPTY_CHART)


def chart_lines(series: dict[str, list], choice: str | None, others: dict | None = None,
                label: str = "this job") -> list[chart.Line]:
    """The lines to draw, each with its (step, value) points. Alone, a line is named by its metric; compared,
    by its job (and metric, where loss and reward are both drawn)."""
    names = CHART_SERIES if choice in (None, DEFAULT_CHART) else (choice,)
    runs = [(label, series)] + [(o["label"], o["series"]) for o in (others or {}).values()]
    lines = []
    for run_label, run in runs:
        for name in names:
            tag = name if not others else run_label if len(names) == 1 else f"{run_label}: {name}"
            if run.get(name):
                lines.append(chart.Line(tag, [(step, value) for step, value in run[name]],
                                        dashed=name.startswith("eval_")))
    return lines


def chart_frame(series: dict[str, list], choice: str | None, others: dict | None = None,
                label: str = "this job") -> pd.DataFrame:
    """The same as rows (step, value, series)."""
    rows = [{"step": step, "value": value, "series": line.name}
            for line in chart_lines(series, choice, others, label) for step, value in line.points]
    return pd.DataFrame(rows) if rows else empty_chart()


def follow_others(svc: Service, others: dict, owner: str | None = None) -> tuple[dict, bool]:
    """The compared jobs' metrics appended since the last tick (a compared job may still run), and
    whether any came. A compared job deleted meanwhile keeps the curve it had."""
    out, grew = {}, False
    for key, other in others.items():
        try:
            records, offset = svc.job_metrics(int(key), other["offset"], owner)
        except ValueError:
            records, offset = [], other["offset"]
        grew = grew or bool(records)
        out[key] = {**other, "series": add_points(other["series"], records), "offset": offset}
    return out, grew


def offered(paths: list[str], hosted: bool) -> list[str]:
    """A finished job's files for its owner's page. gradio copies a handler's returned files into its own cache
    and serves them from there; it takes them from the working folder, the temp folder or launch's allowed_paths.
    In hosted mode allowed_paths leaves the jobs out (it would serve anyone's files by path), so a workspace
    elsewhere is handed over as a private temp copy. Only the job's owner gets here (the service checks)."""
    if not hosted or not paths:
        return paths
    here = [Path(os.getcwd()).resolve(), Path(tempfile.gettempdir()).resolve()]
    if all(any(Path(p).resolve().is_relative_to(d) for d in here) for p in paths):
        return paths
    # One copy per set of files as they are (paths, sizes, times): a job viewed again reuses it, so copies do
    # not pile up in the temp folder with each view.
    stamp = [(p, Path(p).stat().st_size, Path(p).stat().st_mtime_ns) for p in paths]
    folder = Path(tempfile.gettempdir()) / "tlab-files" / hashlib.sha256(repr(stamp).encode()).hexdigest()[:24]
    out = []
    for i, p in enumerate(paths):
        dest = folder / str(i) / Path(p).name  # the same name may come from two folders
        if not dest.is_file():
            dest.parent.mkdir(parents=True, exist_ok=True)
            part = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.part")
            shutil.copyfile(p, part)
            os.replace(part, dest)  # whole or absent, for a concurrent view
        out.append(str(dest))
    return out


def build(svc: Service, demo: gr.Blocks, hosted: bool) -> Parts:
    selected = gr.State(None)
    view = gr.State({"job": None, "offset": 0, "series": {}, "state": None})
    gr.Markdown("### Jobs", elem_classes="tl-section")
    table = gr.Dataframe(headers=LIST_HEADERS, interactive=False, wrap=True, max_height=300,
                         column_widths=["6%", "22%", "18%", "11%", "8%", "13%", "13%", "9%"], elem_id="jobs-table")
    with gr.Column(elem_classes="tl-card", elem_id="job-view"):
        header = gr.HTML('<p class="tl-muted">Select a job in the list, or start one with <b>+ New</b>.</p>',
                         elem_id="job-header")
        progress = gr.HTML(elem_id="job-progress")
        with gr.Row():
            stop_btn = gr.Button("Stop", variant="stop", size="sm", visible=False, elem_id="stop-job")
            resume_btn = gr.Button("Resume from last checkpoint", size="sm", visible=False,
                                   elem_id="resume-job")
            clone_btn = gr.Button("Clone into new task", size="sm", visible=False, elem_id="clone-job")
            delete_btn = gr.Button("Delete job", size="sm", variant="secondary", visible=False, elem_id="delete-job")
        error = gr.Markdown(elem_id="job-error")
        with gr.Row(equal_height=False, visible=False) as live_row:  # shown once a job is selected
            log_box = gr.Textbox(label="Log (live tail)", lines=18, max_lines=18, autoscroll=True,
                                 interactive=False, elem_id="job-log", elem_classes="tl-log",
                                 buttons=["copy"], scale=3)
            with gr.Column(scale=2):
                with gr.Row():
                    metric = gr.Dropdown(choices=[DEFAULT_CHART], value=DEFAULT_CHART, label="Chart",
                                         info="any metric the trainer logs", interactive=True, elem_id="job-metric")
                    compare = gr.Dropdown(choices=[], value=[], multiselect=True, label="Compare with",
                                          info="other jobs' curves of the same metric", interactive=True,
                                          elem_id="job-compare")
                plot = gr.HTML(chart_update({}, DEFAULT_CHART), elem_id="job-chart")
                smoothing = gr.Slider(0, chart.MAX_SMOOTHING, value=0, step=0.01, label="Smoothing",
                                      info="TensorBoard's moving average, drawn over the raw points (0: off)",
                                      interactive=True, elem_id="job-smoothing")
        command = gr.Code(label="Command (rerun it by hand)", language="shell", interactive=False,
                          visible=False, elem_id="job-command", max_lines=6, wrap_lines=True)
        accel = gr.Code(label="accelerate.yaml (the job's distributed setup)", language="yaml", interactive=False,
                        visible=False, elem_id="job-accelerate", max_lines=14)
        files = gr.File(label="Log, metrics and output files", file_count="multiple", visible=False,
                        interactive=False, elem_id="job-files")
        export = export_panel.build(svc, hosted, selected)  # finished jobs: Export (zip), push to the Hub
        evaluation = evaluate_panel.build(svc, hosted, selected)  # finished jobs: Evaluate, earlier evaluations

    def refresh(job_id, state, choice, smooth, request: gr.Request):
        """One tick: cheap reads only. Parts that did not change are skipped, not re-sent."""
        if job_id is None:
            return [gr.skip()] * (17 + len(export.outputs) + len(evaluation.outputs))
        owner = visitor(request)
        fresh = state.get("job") != job_id
        # the service checks id and owner; the command, accelerate.yaml and files only when the state changes
        view = svc.job_view(job_id, 0 if fresh else state["offset"], LOG_LINES, owner, details=False)
        job, status = view["job"], view["status"]
        if fresh:
            state = {"job": job["id"], "offset": 0, "series": {}, "state": None, "others": {},
                     "label": f"{job['id']} · {job['name']}"}
            choice = DEFAULT_CHART
        records, offset = view["metrics"], view["metrics_offset"]
        series = add_points(state["series"], records)
        others, grew = follow_others(svc, state.get("others") or {}, owner)
        choices = chart_choices(series)
        new_metrics = fresh or choices != chart_choices(state["series"])
        state = {**state, "offset": offset, "series": series, "others": others}
        changed_state = state.get("state") != job["state"]
        state["state"] = job["state"]

        eta = f" · ETA {duration(status['eta_s'])}" if status["eta_s"] and job["state"] == "RUNNING" else ""
        total = status["total_steps"]
        label = (f"step {status['step']} / {total}{eta}" if total else
                 {"QUEUED": "waiting for its GPUs", "RUNNING": "starting…"}.get(job["state"], ""))
        world = f" · {status['world_size']} processes" if status.get("world_size") else ""
        head = (f'<div class="tl-job-title" data-job-id="{job["id"]}" data-job-name="{html.escape(job["name"])}">'
                f'{html.escape(job["name"])} {state_badge(job["state"])}</div>'
                f'<div class="tl-muted">job {job["id"]} · {html.escape(job["plugin"])}{world} · '
                f'started {when(job["started"]) or "—"}</div>')
        log_text = "\n".join(view["log"])  # the service hides server paths in hosted mode
        bar = progress_bar(status["progress"] or 0, label)
        # What did not change since the last tick is not sent again: a finished job's view otherwise re-sent its
        # header, bar and log every second, which the page redrew (and weighed on everything else it did).
        shown = hash((head, bar, log_text))
        same = not fresh and state.get("shown") == shown
        state["shown"] = shown
        outs = [gr.skip() if same else head, gr.skip() if same else bar, gr.skip() if same else log_text,
                chart_update(series, choice, others, state["label"], smooth) if (records or grew or fresh)
                else gr.skip(),
                state,
                gr.update(choices=choices, value=choice if choice in choices else DEFAULT_CHART)
                if new_metrics else gr.skip(),
                gr.update(choices=other_jobs(job["id"], owner), value=[]) if fresh else gr.skip()]
        if fresh or changed_state:
            finished = job["state"] in FINISHED
            err = ""
            if job["state"] == "FAILED":
                err = f"**Failed:** {html.escape(job['reason'] or '')}"  # reason: paths hidden by the service
            elif job["state"] in ("STOPPED", "STOPPING") and job["reason"]:
                err = html.escape(job["reason"])
            details = svc.job_details(job_id, owner)
            cmd, file_list, accel_text = details["command"], details["files"], details["accelerate_yaml"]
            outs += [gr.update(visible=job["state"] in ("RUNNING", "QUEUED")),
                     gr.update(visible=bool(details["resumable"])),  # only with a checkpoint to resume from
                     gr.update(visible=True), gr.update(visible=finished and not hosted), err,
                     gr.update(value=cmd, visible=bool(cmd) and not hosted),
                     gr.update(value=offered(file_list, hosted) or None, visible=bool(file_list)),
                     gr.update(visible=True),
                     gr.update(value=accel_text, visible=bool(accel_text) and not hosted)]
            outs += export.on_job(job["id"], finished, owner) + evaluation.on_job(job["id"], finished, owner)
        else:
            outs += [gr.skip()] * (9 + len(export.outputs) + len(evaluation.outputs))
        # A finished job, compared with none, is read every few seconds only (a Resume, from here or a script, is
        # seen within them): each tick is a round of status messages that the page answers by walking its whole
        # tree, which slowed everything else done meanwhile (a plugin switch in the form above).
        interval = IDLE_TICK if job["state"] in FINISHED and not others else LIVE_TICK
        outs.append(gr.skip() if state.get("tick") == interval else gr.Timer(interval))
        state["tick"] = interval
        return outs

    timer = gr.Timer(LIVE_TICK)
    outputs = [header, progress, log_box, plot, view, metric, compare, stop_btn, resume_btn, clone_btn,
               delete_btn, error, command, files, live_row, accel, *export.outputs, *evaluation.outputs, timer]
    # The textbox follows the end of the log (also on the first fill, which autoscroll misses).
    log_box.change(None, None, None, js=FOLLOW_LOG_JS, **PRIVATE)
    timer.tick(refresh, [selected, view, metric, smoothing], outputs, show_progress="hidden", show_progress_on=header,
               **PRIVATE)
    selected.change(refresh, [selected, view, metric, smoothing], outputs, show_progress="hidden", show_progress_on=header,
                    **PRIVATE)

    def redraw(state, choice, smooth):
        return chart_update(state["series"], choice, state.get("others"), state.get("label", "this job"), smooth)

    metric.input(redraw, [view, metric, smoothing], plot, show_progress="hidden", **PRIVATE)
    smoothing.input(redraw, [view, metric, smoothing], plot, show_progress="hidden", **PRIVATE)

    def other_jobs(job_id: int, owner: str | None) -> list[tuple[str, int]]:
        return [(f"{j['id']} · {j['name']}", j["id"]) for j in svc.job_rows(owner=owner) if j["id"] != job_id]

    def compare_with(state, choice, ids, smooth, request: gr.Request):
        """Start following the chosen jobs' metrics, and redraw."""
        kept = state.get("others") or {}
        others = {}
        for other in ids or []:
            if str(other) in kept:
                others[str(other)] = kept[str(other)]
                continue
            try:
                job = svc.job_row(other, visitor(request))
            except ValueError:  # deleted meanwhile, or no job id
                continue
            others[str(job["id"])] = {"label": f"{job['id']} · {job['name']}", "series": {}, "offset": 0}
        others, _ = follow_others(svc, others, visitor(request))
        state = {**state, "others": others}
        return chart_update(state["series"], choice, others, state.get("label", "this job"), smooth), state

    compare.input(compare_with, [view, metric, compare, smoothing], [plot, view], show_progress="hidden", **PRIVATE)
    def rows(request: gr.Request):
        return job_rows(svc, visitor(request))

    listed = LastSent()

    def new_rows(request: gr.Request):
        """The table again only when it changed since this page last got it (most ticks: nothing new)."""
        table_rows = rows(request)
        return table_rows if listed.changed(request, table_rows) else gr.skip()

    demo.load(rows, None, table, **PRIVATE)
    list_timer = gr.Timer(2.0)
    list_timer.tick(new_rows, None, table, show_progress="hidden", **PRIVATE)
    selected.change(rows, None, table, show_progress="hidden", **PRIVATE)

    def pick(evt: gr.SelectData):
        row = evt.row_value
        return int(row[0]) if row and str(row[0]).isdigit() else gr.skip()

    table.select(pick, None, selected, **PRIVATE)

    # The ids go to the service as sent: it refuses 1.5 (int() here made it job 1).
    # Each handler passes its visitor: in hosted mode only the job's owner may stop, resume or delete it.
    @checked
    def stop(job_id, request: gr.Request):
        svc.stop_job(job_id, visitor(request))

    @checked
    def resume(job_id, request: gr.Request):
        svc.resume_job(job_id, visitor(request))

    stop_btn.click(stop, selected, None, **PRIVATE)
    resume_btn.click(resume, selected, None, **PRIVATE).then(lambda: gr.Timer(LIVE_TICK), None, timer, **PRIVATE)

    def delete(job_id, confirmed, request: gr.Request):
        if job_id is None or not confirmed:
            return [gr.skip()] * 14
        out = checked(svc.delete_job)(job_id, visitor(request))
        gr.Info(f"Deleted job {out['job_id']} ({out['freed_mb']:g} MiB freed)")
        hidden = gr.update(visible=False)
        return ([None, f'<p class="tl-muted">Job {out["job_id"]} was deleted, with its folder '
                       f'({out["freed_mb"]:g} MiB). Select another job, or start one with <b>+ New</b>.</p>', "",
                 {"job": None, "offset": 0, "series": {}, "state": None}, job_rows(svc, visitor(request)), ""]
                + [hidden] * 8)

    confirmed = gr.Checkbox(visible=False)  # carries the browser's confirm() answer
    delete_btn.click(delete, [selected, confirmed],
                     [selected, header, progress, view, table, error, stop_btn, resume_btn, clone_btn, delete_btn,
                      live_row, files, command, accel],
                     js=DELETE_CONFIRM_JS, show_progress_on=header, **PRIVATE)
    return Parts(selected=selected, clone_btn=clone_btn)
