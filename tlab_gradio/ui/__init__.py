"""The web page. The only package that imports gradio; it calls tlab_gradio.service."""
from __future__ import annotations

import os


def build_app():
    import gradio as gr

    from ..service import get_service

    svc = get_service()

    def plugin_rows():
        return [[r["id"], r.get("name", ""), "ready" if r["ready"] else "; ".join(r.get("reasons") or [r.get("error", "")])]
                for r in svc.plugin_list()]

    def job_rows():
        return [[j["id"], j["name"], j["plugin"], j["state"], j["reason"] or ""] for j in svc.list_jobs()]

    with gr.Blocks(title="tlab-gradio") as demo:
        gr.Markdown("# tlab-gradio")
        with gr.Tab("Plugins"):
            gr.Dataframe(plugin_rows, headers=["id", "name", "status"])
        with gr.Tab("Train"):
            gr.Dataframe(job_rows, headers=["id", "name", "plugin", "state", "reason"], every=2)
        with gr.Tab("Computer"):
            gr.JSON(lambda: svc.gpu_info())
    return demo


def main() -> None:
    app = build_app()
    app.queue().launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
    )
