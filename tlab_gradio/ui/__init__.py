"""The web page: one module per tab, plus the named API. The only package that imports gradio;
every handler calls tlab_gradio.service, the same functions scripts use."""
from __future__ import annotations

import os

CSS = """
.gradio-container {max-width: 1500px !important}
#tl-header h1 {margin-bottom: 0}
.tl-muted {color: var(--body-text-color-subdued); font-size: 0.92em}
.tl-card {border: 1px solid var(--border-color-primary); border-radius: 10px; padding: 12px}
.tl-section h3 {margin: 4px 0 !important}
.tl-badge {color: white; border-radius: 999px; padding: 2px 10px; font-size: 0.8em; font-weight: 600;
           margin-left: 8px; vertical-align: middle}
.tl-job-title {font-size: 1.25em; font-weight: 600}
.tl-progress {background: var(--neutral-200); border-radius: 6px; height: 14px; overflow: hidden; margin-top: 6px}
.tl-progress-fill {background: linear-gradient(90deg, #2563eb, #7c3aed); height: 100%; transition: width .5s}
.tl-progress-label {font-size: 0.9em; margin-top: 4px}
.tl-log textarea {font-family: ui-monospace, SFMono-Regular, Menlo, monospace !important; font-size: 12px !important;
                  white-space: pre-wrap !important; overflow-wrap: anywhere}
.tl-gpus {display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: 12px}
.tl-gpu {border: 1px solid var(--border-color-primary); border-radius: 10px; padding: 12px}
.tl-gpu-title {font-weight: 700} .tl-gpu-name {margin-bottom: 6px}
.tl-gpu ul {margin: 8px 0 0 0; padding-left: 18px}
.tl-kv {border-collapse: collapse; min-width: 420px} .tl-kv th {text-align: left; padding: 4px 16px 4px 0;
        font-weight: 600; color: var(--body-text-color-subdued)} .tl-kv td {padding: 4px 0}
.tl-jobs-devices th, .tl-jobs-devices td {padding: 4px 14px 4px 6px !important; white-space: nowrap; overflow-wrap: normal;
  word-break: normal}
#plugin-details table td:nth-child(2), #plugin-details table th:nth-child(2) {min-width: 10em}
#plugin-details table td:nth-child(3), #plugin-details table th:nth-child(3) {min-width: 5.5em}
.tl-ok {color: #059669; font-weight: 600} .tl-warn {color: #b45309; font-weight: 600}
.tl-usage {display: grid; grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); gap: 12px; margin-bottom: 8px}
.tl-usage .tl-chart {border: 1px solid var(--border-color-primary); border-radius: 10px; padding: 6px 8px}
/* A job's files are its record: gradio's per-file "x" only hid a file from the list (nothing was deleted) */
#job-files .label-clear-button {display: none !important}
/* The command wraps inside its box instead of running off the right */
#command-preview .cm-content, #command-preview .cm-line, #job-command .cm-content, #job-command .cm-line
  {white-space: pre-wrap !important; overflow-wrap: anywhere; word-break: normal}
#command-preview .cm-content, #job-command .cm-content {flex-shrink: 1 !important; min-width: 0 !important}
/* A command is one line: no line numbers. Its box was sized from that line's height as measured while the
   box was still hidden and narrow (gradio's min-height, CodeMirror's gutter): ~800 px of blank box under it */
#command-preview .cm-gutters, #job-command .cm-gutters {display: none !important}
#command-preview .cm-scroller, #job-command .cm-scroller {min-height: 0 !important}
/* The plugin's whole name shows in its dropdown */
#plugin {flex-grow: 3 !important; min-width: min(540px, 100%) !important}
#plugin input {text-overflow: ellipsis}
/* Plugins: words are not cut inside (a column is at least as wide as its longest word) */
#plugins-table td, #plugins-table th, #plugin-details td, #plugin-details th {word-break: normal !important;
  overflow-wrap: break-word !important; hyphens: manual}
.tl-params {border-collapse: collapse; width: 100%; font-size: 0.92em; margin: 4px 0 10px}
.tl-params th, .tl-params td {border-bottom: 1px solid var(--border-color-primary); padding: 4px 8px;
  text-align: left; vertical-align: top}
#plugin-details details {border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 4px 10px;
  margin: 6px 0}
#plugin-details summary {cursor: pointer; font-weight: 600}
/* A field with a problem (ui/live.py): a red border and its message right under it; faded while it is re-checked */
[data-tl-invalid] input, [data-tl-invalid] textarea, [data-tl-invalid] .wrap
  {border-color: #dc2626 !important; box-shadow: 0 0 0 1px #dc2626 !important}
[data-tl-invalid] .wrap input {border: none !important; box-shadow: none !important}
.form:has([data-tl-invalid]), [data-tl-invalid] {overflow: visible !important}
.tl-field-error {color: #b91c1c; font-size: 0.88em; margin-top: 4px; overflow-wrap: anywhere}
.tl-field-error.tl-stale {opacity: 0.45}
/* The task form: settings on the left; Start, the check and the command on the right, in view while the left
   scrolls (issue 18 item 5) */
#form-side {position: sticky; top: 8px; align-self: flex-start; max-height: max(420px, calc(100vh - 200px))}
#form-side, #form-verdict {flex-wrap: nowrap !important}  /* gradio's columns wrap into a second column */
#form-side > #form-verdict {flex-shrink: 1 !important; min-height: 160px; overflow-y: auto}
#form-verdict > * {flex-grow: 0 !important; flex-shrink: 0 !important}
#task-form, #form-layout, #form-main {overflow: visible !important}
.gradio-container {overflow-x: clip !important; overflow-y: visible !important}  /* hidden would stop sticky */
#form-side > * {flex-shrink: 0; flex-grow: 0 !important}
#form-checks {font-size: 0.92em}
/* Help under a field: one line, the whole of it while the field has the focus (not on hover: the page would move
   under the pointer) */
#task-form .info-text {white-space: nowrap; overflow: hidden; text-overflow: ellipsis}
#task-form .block:not(:has(.block)):focus-within .info-text {white-space: normal}
#tl-header h1 {font-size: 1.6em; margin: 0 0 4px} #tl-header h1 .tl-muted {font-size: 0.55em; font-weight: 400}
.tl-ds-table {max-height: 260px; overflow: auto; font-size: 0.9em}
.tl-ds-table table {border-collapse: collapse; width: 100%}
.tl-ds-table th, .tl-ds-table td {border: 0 !important; border-bottom: 1px solid var(--border-color-primary) !important;
  padding: 3px 8px;
  text-align: left; vertical-align: top; white-space: pre-wrap; overflow-wrap: anywhere}
"""


def progress_to(demo, sink) -> None:
    """Every page event that shows no progress keeps its loading status on `sink`, not on its outputs. The
    page's gradio keeps the status of every output of every server call it ever made, and at each status message
    of any event finds each one in its whole tree and copies its value (tables, the job log, chats): with the
    timers' outputs among them this was most of a plugin switch's time. So do the page-load events (the page
    fills in before anyone looks). Events made later in a gr.render keep their own (small) outputs."""
    for fn in demo.fns.values():
        quiet = fn.show_progress == "hidden" or all(event == "load" for _, event in fn.targets)  # page load: seen
        if fn.fn is not None and fn.targets and quiet and not fn.show_progress_on:                # filled at once
            fn.show_progress_on = [sink]


def build_app():
    import gradio as gr

    from .. import settings
    from ..service import get_service
    from . import api, chat_tab, computer_tab, plugins_tab, train_tab

    svc = get_service()
    hosted = settings.hosted()
    with gr.Blocks(title="tlab-gradio") as demo:
        sink = gr.HTML(visible="hidden", elem_id="tl-progress-sink")  # first in the page: found at once
        with gr.Row(elem_id="tl-header"):
            gr.Markdown("# tlab-gradio <span class=\"tl-muted\">fine-tune language models on every GPU of this "
                        "machine</span>")
        with gr.Tabs():
            with gr.Tab("Plugins", id="plugins"):
                plugins_tab.build(svc, demo, hosted)
            with gr.Tab("Train", id="train"):
                train_tab.build(svc, demo, hosted)
            with gr.Tab("Chat", id="chat"):
                chat_tab.build(svc, demo, hosted)
            with gr.Tab("Computer", id="computer"):
                computer_tab.build(svc, demo, hosted)
        api.register(svc)
        api.register_sweeps(svc)
    progress_to(demo, sink)
    return demo


def main() -> None:
    import gradio as gr

    from .. import login, settings

    users = settings.auth()
    demo = build_app()
    demo.queue(default_concurrency_limit=8).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        auth=login.ThrottledLogin(users).login if users else None,  # failed logins throttled
        # Output files offered for download. Not in hosted mode: gradio would serve any job's files to anyone who
        # names the path; there the page hands its owner the files through gradio's cache (jobs_view.offered).
        allowed_paths=[] if settings.hosted() else [str(settings.home() / "jobs"), *(
            [str(settings.slurm_workspace() / "jobs")] if settings.slurm_workspace() else [])],  # Slurm jobs' folders
        # Hosted: gradio itself refuses a larger upload (HTTP 413); save_upload checks again.
        max_file_size=int(settings.hosted_max_upload_mb() * 2**20) if settings.hosted() else None,
        theme=gr.themes.Soft(primary_hue="indigo"),
        css=CSS,
        show_error=True,
        footer_links=["api", "gradio"],
    )
