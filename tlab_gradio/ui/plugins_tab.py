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
        if not p["runnable"]:
            status = f"not runnable: {p['reason']}"
        kind = f"{p['type']} ({p['train_type']})" if p["train_type"] else p["type"]
        if p["origin"] != "app":
            kind += ", Transformer Lab"
        out.append([p["name"], kind, p["description"],
                    ", ".join(p["devices"]), "yes" if p["multi_gpu"] else "no", status])
    return out


def _status(p: dict) -> str:
    if p["ready"]:
        return "ready"
    return ("not ready — " if p["runnable"] else "not runnable — ") + html.escape(p["reason"] or "")


def details(p: dict) -> str:
    if "error" in p:
        return f"### {html.escape(p['file'])}\n\n**This manifest failed to load:** {html.escape(p['error'])}"
    lines = [
        f"### {html.escape(p['name'])}",
        f"`{p['id']}` · version {p['version']} · {p['type']} ({p['train_type'] or 'no train type'}) · "
        f"devices: {', '.join(p['devices'])} · multi-GPU: {'yes' if p['multi_gpu'] else 'no'}",
        "",
        html.escape(p["description"]),
        "",
        f"**Status:** {_status(p)}",
        "",
        f"**Needs:** {', '.join(f'`{r}`' for r in p['requirements']) or 'nothing beyond the base install'}",
        "",
        f"**Model architectures:** {', '.join(p['model_architectures'])}",
    ]
    if p.get("notes"):
        lines += ["", "**Notes:** " + "; ".join(html.escape(n) for n in p["notes"])]
    groups = p.get("parameter_groups") or [{"title": "Parameters", "parameters": list(p["parameters"])}]
    for group in groups:  # the config form's sections, in its order
        closed = "" if group.get("open", True) else " <span class=\"tl-muted\">(collapsed in the form)</span>"
        lines += ["", f"#### {html.escape(group['title'])}{closed}", "",
                  "| parameter | title | type | default | limits | help |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for name in group["parameters"]:
            spec = p["parameters"][name]
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


def build(svc: Service, demo: gr.Blocks, hosted: bool) -> None:
    gr.Markdown("Training plugins, one JSON manifest each in `plugin_manifests/`. Select a row for its details.")
    table = gr.Dataframe(
        headers=HEADERS, interactive=False, wrap=True,
        column_widths=["22%", "9%", "37%", "8%", "8%", "16%"], elem_id="plugins-table",
    )
    selected = gr.State(None)
    info = gr.Markdown(elem_id="plugin-details")
    install_btn = gr.Button("Install requirements", variant="primary", visible=False, elem_id="install-plugin")
    install_log = gr.Textbox(label="pip output", lines=12, max_lines=12, autoscroll=True, interactive=False,
                             visible=False, elem_id="install-log", elem_classes="tl-log")

    def select(evt: gr.SelectData):
        plugins = svc.plugin_list()  # the table was built from the same list, in the same order
        row = evt.index[0]
        if row >= len(plugins):
            return None, "", gr.update(visible=False)
        p = plugins[row]
        can_install = bool(p.get("installable")) and not hosted
        return p["id"], details(p), gr.update(visible=can_install)

    table.select(select, None, [selected, info, install_btn], **PRIVATE)

    def install(plugin_id):
        """Streams pip's output into the page; the table and details refresh when it ends."""
        from ..installer import InstallError

        text = ""
        try:
            for line in svc.install_plugin(plugin_id):
                text += line + "\n"
                yield gr.update(value=text, visible=True), gr.skip(), gr.skip()
        except InstallError as exc:
            text += f"\n[tlab] install failed: {exc}\n"
            gr.Warning(f"Install failed: {exc}")
        plugins = svc.plugin_list()
        p = next((x for x in plugins if x["id"] == plugin_id), None)
        yield gr.update(value=text, visible=True), rows(plugins), details(p) if p else ""

    install_btn.click(lambda: gr.update(value="", visible=True), None, install_log, **PRIVATE).then(
        install, selected, [install_log, table, info], **PRIVATE)
    demo.load(lambda: rows(svc.plugin_list()), None, table, **PRIVATE)
