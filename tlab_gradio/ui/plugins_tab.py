"""Plugins tab: every manifest as a row with its readiness; a selected plugin's details."""
from __future__ import annotations

import html

import gradio as gr

from ..service import Service
from .common import PRIVATE

HEADERS = ["Name", "Type", "Description", "Devices", "Multi-GPU", "Status"]


def rows(plugins: list[dict]) -> list[list[str]]:
    out = []
    for p in plugins:
        if "error" in p:
            out.append([p["file"], "—", "manifest failed to load", "—", "—", f"error: {p['error']}"])
            continue
        status = "ready" if p["ready"] else f"not ready: {p['reason']}"
        out.append([p["name"], f"{p['type']} ({p['train_type']})", p["description"],
                    ", ".join(p["devices"]), "yes" if p["multi_gpu"] else "no", status])
    return out


def details(p: dict) -> str:
    if "error" in p:
        return f"### {html.escape(p['file'])}\n\n**This manifest failed to load:** {html.escape(p['error'])}"
    lines = [
        f"### {html.escape(p['name'])}",
        f"`{p['id']}` · version {p['version']} · {p['type']} ({p['train_type']}) · "
        f"devices: {', '.join(p['devices'])} · multi-GPU: {'yes' if p['multi_gpu'] else 'no'}",
        "",
        html.escape(p["description"]),
        "",
        f"**Status:** {'ready' if p['ready'] else 'not ready — ' + html.escape(p['reason'] or '')}",
        "",
        f"**Needs:** {', '.join(f'`{r}`' for r in p['requirements']) or 'nothing beyond the base install'}",
        "",
        f"**Model architectures:** {', '.join(p['model_architectures'])}",
        "",
        "| parameter | title | type | default | limits | help |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, spec in p["parameters"].items():
        limits = []
        if "minimum" in spec:
            limits.append(f"≥ {spec['minimum']}")
        if "maximum" in spec:
            limits.append(f"≤ {spec['maximum']}")
        if "enum" in spec:
            limits.append(" / ".join(map(str, spec["enum"])))
        cells = [f"`{name}`", spec["title"], spec["type"], f"`{spec.get('default')}`", ", ".join(limits),
                 spec.get("help", "")]
        lines.append("| " + " | ".join(html.escape(str(c)).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def build(svc: Service, demo: gr.Blocks) -> None:
    gr.Markdown("Training plugins, one JSON manifest each in `plugin_manifests/`. Select a row for its details.")
    table = gr.Dataframe(
        headers=HEADERS, interactive=False, wrap=True,
        column_widths=["22%", "9%", "37%", "8%", "8%", "16%"], elem_id="plugins-table",
    )
    info = gr.Markdown(elem_id="plugin-details")

    def select(evt: gr.SelectData):
        plugins = svc.plugin_list()  # the table was built from the same list, in the same order
        row = evt.index[0]
        return details(plugins[row]) if row < len(plugins) else ""

    table.select(select, None, info, **PRIVATE)
    demo.load(lambda: rows(svc.plugin_list()), None, table, **PRIVATE)
