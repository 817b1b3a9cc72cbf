"""A finished job's Export: its model (the final one or a checkpoint) as a zip for transformers/vLLM with a model
card, and, unless the server is hosted, a push to the Hugging Face Hub with a token typed here (a password box:
used for that push only, cleared after it, never stored). Everything goes through Service.export_job/push_job."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from ..service import Service
from .common import PRIVATE, USER_ERRORS, refused, visitor

FINAL_LABEL = "final model"


@dataclass
class Panel:
    outputs: list  # what the job view updates when the selected job or its state changes
    on_job: Any  # (job_id, finished, owner) -> updates for `outputs`
    hidden: Any  # () -> updates hiding the panel (a deleted job)


def build(svc: Service, hosted: bool, selected: gr.State) -> Panel:
    with gr.Accordion("Export the model", open=False, visible=False, elem_id="job-export") as box:
        with gr.Row():
            source = gr.Dropdown(choices=[], label="Export from", interactive=True, elem_id="export-source",
                                 info="the model saved at the end, or one of the checkpoints")
            export_btn = gr.Button("Export", variant="primary", size="sm", scale=0, min_width=140,
                                   elem_id="export-job")
        download = gr.File(label="Model folder as a zip: weights (LoRA merged in the base's dtype), tokenizer, "
                                 "generation config, README.md model card", visible=False, interactive=False,
                           elem_id="export-file")
        if not hosted:
            with gr.Row():
                repo = gr.Textbox(label="Hugging Face Hub repo id", placeholder="your-name/my-model",
                                  elem_id="push-repo")
                token = gr.Textbox(label="Hugging Face token (write)", type="password", placeholder="hf_…",
                                   info="used for this push only: never stored or shown", elem_id="push-token")
                private = gr.Checkbox(True, label="Private repo", scale=0, min_width=140, elem_id="push-private")
                push_btn = gr.Button("Push to the Hub", size="sm", scale=0, min_width=140, elem_id="push-job")
        note = gr.Markdown(elem_id="export-note")

    def checkpoint(choice: str | None) -> str:
        return "final" if choice in (None, "", FINAL_LABEL) else choice

    def do_export(job_id, choice, request: gr.Request):
        from .jobs_view import offered  # (jobs_view builds this panel)

        try:
            out = svc.export_job(job_id, checkpoint(choice), visitor(request))
        except USER_ERRORS as exc:
            return gr.skip(), refused("Not exported", exc)
        what = "LoRA adapter merged into the base" if out["kind"] == "lora" else "fully fine-tuned model"
        return (gr.update(value=offered([out["archive"]], hosted)[0], visible=True),
                f"Exported {out['checkpoint']} ({what}, {out['dtype']}): {', '.join(out['files'])}")

    export_btn.click(do_export, [selected, source], [download, note], show_progress="minimal",
                     show_progress_on=export_btn, **PRIVATE)

    if not hosted:
        def do_push(job_id, choice, repo_id, secret, private_repo, request: gr.Request):
            try:
                out = svc.push_job(job_id, repo_id, secret, checkpoint(choice), bool(private_repo), visitor(request))
            except USER_ERRORS as exc:
                return gr.skip(), refused("Not pushed", exc)  # the token stays in its box for another try
            return "", f"Pushed {out['checkpoint']} to [{out['repo_id']}]({out['url']})"

        push_btn.click(do_push, [selected, source, repo, token, private], [token, note], show_progress="minimal",
                       show_progress_on=push_btn, **PRIVATE)

    def on_job(job_id: int, finished: bool, owner: str | None) -> list:
        labels = [FINAL_LABEL if c == "final" else c for c in svc.export_choices(job_id, owner)] if finished else []
        return [gr.update(visible=bool(labels)), gr.update(choices=labels, value=labels[0] if labels else None),
                gr.update(value=None, visible=False), ""]

    def hidden() -> list:
        return [gr.update(visible=False), gr.update(choices=[], value=None), gr.update(value=None, visible=False), ""]

    outputs = [box, source, download, note]
    # No job selected (a deleted one): the panel goes; a selected job's refresh calls on_job
    # Progress on the note, not the panel's box: the page copies every component inside an event's progress
    # targets at each later render of the form (a plugin switch took ~1 s more once a job had been selected).
    selected.change(lambda job_id: hidden() if job_id is None else [gr.skip()] * len(outputs), selected, outputs,
                    show_progress="hidden", show_progress_on=note, **PRIVATE)
    return Panel(outputs=outputs, on_job=on_job, hidden=hidden)
