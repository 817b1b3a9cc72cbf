"""The jobs list and the selected job: progress, live log, loss chart, command, Stop/Resume/Clone,
and the output files. A gr.Timer refreshes it about every second; each refresh reads only the
log's tail and the metrics lines appended since the last one."""
from __future__ import annotations

import html
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from .. import logs, settings
from ..jobs import ACTIVE, FINISHED
from ..service import Service
from .common import PRIVATE, checked, duration, progress_bar, state_badge, when

LIST_HEADERS = ["ID", "Name", "Plugin", "State", "GPUs", "Progress", "Started", "Duration"]
LOG_LINES = 300
CHART_SERIES = ("loss", "reward")  # GRPO adds reward; other keys stay in metrics.jsonl
MAX_POINTS = 5000
MAX_FILES = 50
FOLLOW_LOG_JS = """() => { const t = document.querySelector('#job-log textarea');
  if (t) { requestAnimationFrame(() => { t.scrollTop = t.scrollHeight; }); } }"""


@dataclass
class Parts:
    selected: gr.State
    clone_btn: gr.Button


def job_rows(svc: Service) -> list[list[Any]]:
    rows = []
    now = time.time()
    for j in svc.list_jobs():
        progress = ""
        if j["state"] in ACTIVE:
            st = svc.job_status(j["id"])
            progress = f"{st['progress']:.0f}% ({st['step']}/{st['total_steps'] or '?'})"
        elif j["state"] == "COMPLETE":
            progress = "100%"
        gpus = ",".join(j["gpus"]) if j["gpus"] else f"cpu×{j['config'].get('num_processes', 1)}"
        end = j["finished"] or (now if j["state"] in ACTIVE else None)
        rows.append([j["id"], j["name"], j["plugin"], j["state"], gpus, progress, when(j["started"]),
                     duration(end - j["started"]) if j["started"] and end else ""])
    return rows


def empty_chart() -> pd.DataFrame:
    # Typed columns: an all-float empty frame makes the plot read `series` as a number scale.
    return pd.DataFrame({"step": pd.Series(dtype="int64"), "value": pd.Series(dtype="float64"),
                         "series": pd.Series(dtype="object")})


def chart_frame(points: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(points[-MAX_POINTS:]) if points else empty_chart()


def new_points(records: list[dict]) -> list[dict]:
    out = []
    for r in records:
        for key in CHART_SERIES:
            if isinstance(r.get(key), (int, float)):
                out.append({"step": r["step"], "value": r[key], "series": key})
    return out


def output_files(job: dict) -> list[str]:
    out = Path(job["output_dir"])
    files = sorted(p for p in out.rglob("*") if p.is_file()) if out.is_dir() else []
    return [str(p) for p in files[:MAX_FILES]]


def redact(text: str, svc: Service, hosted: bool) -> str:
    if not hosted:
        return text
    return text.replace(str(settings.REPO_DIR), "<app>").replace(str(svc.home), "$TLAB_HOME")


def build(svc: Service, demo: gr.Blocks, hosted: bool) -> Parts:
    selected = gr.State(None)
    view = gr.State({"job": None, "offset": 0, "points": [], "state": None})
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
        error = gr.Markdown(elem_id="job-error")
        with gr.Row(equal_height=False, visible=False) as live_row:  # shown once a job is selected
            log_box = gr.Textbox(label="Log (live tail)", lines=18, max_lines=18, autoscroll=True,
                                 interactive=False, elem_id="job-log", elem_classes="tl-log",
                                 buttons=["copy"], scale=3)
            chart = gr.LinePlot(empty_chart(), x="step", y="value", color="series", title="Loss and reward",
                                color_map={"loss": "#4f46e5", "reward": "#059669"}, height=380,
                                elem_id="job-chart", x_title="step", y_title="", scale=2)
        command = gr.Code(label="Command (rerun it by hand)", language="shell", interactive=False,
                          visible=False, elem_id="job-command", max_lines=6)
        accel = gr.Code(label="accelerate.yaml (the job's distributed setup)", language="yaml", interactive=False,
                        visible=False, elem_id="job-accelerate", max_lines=14)
        files = gr.File(label="Output files", file_count="multiple", visible=False, interactive=False,
                        elem_id="job-files")

    def refresh(job_id, state):
        """One tick: cheap reads only. Parts that did not change are skipped, not re-sent."""
        if job_id is None:
            return [gr.skip()] * 13
        job = svc.jobs.get(int(job_id)).as_dict()  # the row only: job_status reads progress and metrics
        status = svc.job_status(int(job_id))
        fresh = state.get("job") != job["id"]
        if fresh:
            state = {"job": job["id"], "offset": 0, "points": [], "state": None}
        records, offset = logs.read_metrics(Path(job["job_dir"]) / "metrics.jsonl", state["offset"])
        points = new_points(records)
        state = {**state, "offset": offset, "points": (state["points"] + points)[-MAX_POINTS:]}
        changed_state = state.get("state") != job["state"]
        state["state"] = job["state"]

        eta = f" · ETA {duration(status['eta_s'])}" if status["eta_s"] and job["state"] == "RUNNING" else ""
        total = status["total_steps"]
        label = (f"step {status['step']} / {total}{eta}" if total else
                 {"QUEUED": "waiting for its GPUs", "RUNNING": "starting…"}.get(job["state"], ""))
        world = f" · {status['world_size']} processes" if status.get("world_size") else ""
        head = (f'<div class="tl-job-title">{html.escape(job["name"])} {state_badge(job["state"])}</div>'
                f'<div class="tl-muted">job {job["id"]} · {html.escape(job["plugin"])}{world} · '
                f'started {when(job["started"]) or "—"}</div>')
        log_text = redact("\n".join(logs.tail(Path(job["job_dir"]) / "log.txt", LOG_LINES)), svc, hosted)
        outs = [head, progress_bar(status["progress"] or 0, label), log_text,
                chart_frame(state["points"]) if (points or fresh) else gr.skip(), state]
        if fresh or changed_state:
            finished = job["state"] in FINISHED
            err = ""
            if job["state"] == "FAILED":
                err = f"**Failed:** {html.escape(job['reason'] or '')}"
            elif job["state"] in ("STOPPED", "STOPPING") and job["reason"]:
                err = html.escape(job["reason"])
            cmd = " ".join(job["command"]) if job["command"] else ""
            file_list = output_files(job) if finished else []
            accel_path = Path(job["job_dir"]) / "accelerate.yaml"
            accel_text = accel_path.read_text() if accel_path.is_file() else ""
            outs += [gr.update(visible=job["state"] in ("RUNNING", "QUEUED")),
                     gr.update(visible=job["state"] in ("STOPPED", "FAILED")),
                     gr.update(visible=True), err,
                     gr.update(value=redact(cmd, svc, hosted), visible=bool(cmd) and not hosted),
                     gr.update(value=file_list or None, visible=bool(file_list)), gr.update(visible=True),
                     gr.update(value=accel_text, visible=bool(accel_text) and not hosted)]
        else:
            outs += [gr.skip()] * 8
        return outs

    outputs = [header, progress, log_box, chart, view, stop_btn, resume_btn, clone_btn, error, command, files,
               live_row, accel]
    # The textbox follows the end of the log (also on the first fill, which autoscroll misses).
    log_box.change(None, None, None, js=FOLLOW_LOG_JS, **PRIVATE)
    timer = gr.Timer(1.0)
    timer.tick(refresh, [selected, view], outputs, show_progress="hidden", **PRIVATE)
    selected.change(refresh, [selected, view], outputs, show_progress="hidden", **PRIVATE)
    demo.load(lambda: job_rows(svc), None, table, **PRIVATE)
    list_timer = gr.Timer(2.0)
    list_timer.tick(lambda: job_rows(svc), None, table, show_progress="hidden", **PRIVATE)
    selected.change(lambda: job_rows(svc), None, table, show_progress="hidden", **PRIVATE)

    def pick(evt: gr.SelectData):
        row = evt.row_value
        return int(row[0]) if row and str(row[0]).isdigit() else gr.skip()

    table.select(pick, None, selected, **PRIVATE)

    stop_btn.click(checked(lambda j: svc.stop_job(int(j)) and None), selected, None, **PRIVATE)
    resume_btn.click(checked(lambda j: svc.resume_job(int(j)) and None), selected, None, **PRIVATE)
    return Parts(selected=selected, clone_btn=clone_btn)
