"""Plugins tab: every manifest as a row with its readiness; a selected plugin's details."""
from __future__ import annotations

import html
import re

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
        status = "ready" if p["ready"] else f"not ready: {short_reasons(p)}"
        if not p["runnable"]:
            status = f"not runnable: {p['reason']}"
        kind = f"{p['type']} ({p['train_type']})" if p["train_type"] else p["type"]
        if p["origin"] != "app":
            kind += ", Transformer Lab"
        out.append([p["name"], kind, p["description"],
                    ", ".join(p["devices"]), "yes" if p["multi_gpu"] else "no", status])
    return out


def short_reasons(p: dict) -> str:
    """The table's status: each reason up to its explanation ("missing package unsloth", "needs a CUDA GPU"); the
    details say the rest."""
    return "; ".join(r.split(": ", 1)[0].split(" (", 1)[0] for r in p.get("reasons") or [p["reason"] or ""])


def _status(p: dict) -> str:
    if p["ready"]:
        return '<span class="tl-ok">ready</span>'
    word = "not ready" if p["runnable"] else "not runnable"
    reasons = p.get("reasons") or [p["reason"] or ""]
    return (f'<span class="tl-warn">{word}</span><ul>'
            + "".join(f"<li>{_code(r)}</li>" for r in reasons) + "</ul>")


def _code(text: str) -> str:
    """A reason's `names` as code, the rest escaped."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def needs(p: dict) -> str:
    """What the plugin's jobs need installed, and where: its own environment or the app's."""
    lines = p.get("needs", p.get("requirements") or [])
    packages = ", ".join(f"<code>{html.escape(r)}</code>" for r in lines)
    source = f" (from <code>{html.escape(p['requirements_file'])}</code>)" if p.get("requirements_file") else ""
    if p.get("environment"):
        return (f"a Python environment of its own, <code>{html.escape(p['environment'])}</code>, kept apart from "
                f"the app's (its pinned versions differ), with {packages or 'its packages'}{source}")
    if lines:
        return f"these packages in the app's environment: {packages}{source}"
    return "nothing beyond the app's own install"


def summary(p: dict) -> str:
    """The top of a plugin's details: name, status and what it needs (Install comes right after)."""
    if "error" in p:
        return (f"<h3>{html.escape(p['file'])}</h3><p><b>This manifest failed to load:</b> "
                f"{html.escape(p['error'])}</p>")
    return (f"<h3>{html.escape(p['name'])}</h3>"
            f'<p class="tl-muted"><code>{html.escape(p["id"])}</code> · version {html.escape(str(p["version"]))} · '
            f"{html.escape(p['type'])} ({html.escape(p['train_type'] or 'no train type')}) · devices: "
            f"{html.escape(', '.join(p['devices']))} · multi-GPU: {'yes' if p['multi_gpu'] else 'no'}</p>"
            f'<div id="plugin-status"><b>Status:</b> {_status(p)}</div>'
            f'<p id="plugin-needs"><b>Needs:</b> {needs(p)}</p>')


def details(p: dict) -> str:
    """The rest: description, architectures, notes, then each form section's parameters, collapsed."""
    if "error" in p:
        return ""
    parts = [f"<p>{html.escape(p['description'])}</p>",
             f"<p><b>Model architectures:</b> {html.escape(', '.join(p['model_architectures']))}</p>"]
    if p.get("notes"):
        parts.append("<p><b>Notes:</b> " + "; ".join(html.escape(n) for n in p["notes"]) + "</p>")
    groups = p.get("parameter_groups") or [{"title": "Parameters", "parameters": list(p["parameters"])}]
    parts.append(f"<h4>Parameters ({len(p['parameters'])}), by form section</h4>")
    for group in groups:  # the config form's sections, in its order, each collapsed
        closed = "" if group.get("open", True) else ' <span class="tl-muted">(collapsed in the form)</span>'
        body = []
        for name in group["parameters"]:
            spec = p["parameters"][name]
            limits = []
            if "minimum" in spec:
                limits.append(f"≥ {spec['minimum']}")
            if "maximum" in spec:
                limits.append(f"≤ {spec['maximum']}")
            if "enum" in spec:
                limits.append(" / ".join(map(str, spec["enum"])))
            cells = [f"<code>{html.escape(name)}</code>", html.escape(str(spec["title"])), html.escape(spec["type"]),
                     f"<code>{html.escape(str(spec.get('default')))}</code>", html.escape(", ".join(limits)),
                     html.escape(spec.get("help", ""))]
            body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        parts.append(f"<details><summary>{html.escape(group['title'])} ({len(group['parameters'])}){closed}"
                     "</summary><table class=\"tl-params\"><tr><th>parameter</th><th>title</th><th>type</th>"
                     f"<th>default</th><th>limits</th><th>help</th></tr>{''.join(body)}</table></details>")
    return "".join(parts)


def build(svc: Service, demo: gr.Blocks, hosted: bool) -> None:
    gr.Markdown("Training plugins, one JSON manifest each in `plugin_manifests/`. Select a row for its details.")
    table = gr.Dataframe(
        headers=HEADERS, interactive=False, wrap=True, max_height=2000,  # every row shows, none cut off
        column_widths=["20%", "10%", "40%", "8%", "9%", "13%"], elem_id="plugins-table",
    )
    selected = gr.State(None)
    # Readiness and Install first; the description and the parameters (collapsed) after
    head = gr.HTML(elem_id="plugin-summary")
    install_btn = gr.Button("Install requirements", variant="primary", visible=False, elem_id="install-plugin")
    install_log = gr.Textbox(label="pip output", lines=12, max_lines=12, autoscroll=True, interactive=False,
                             visible=False, elem_id="install-log", elem_classes="tl-log")
    info = gr.HTML(elem_id="plugin-details")

    def select(evt: gr.SelectData):
        plugins = svc.plugin_list()  # the table was built from the same list, in the same order
        row = evt.index[0]
        if row >= len(plugins):
            return None, "", "", gr.update(visible=False)
        p = plugins[row]
        can_install = bool(p.get("installable")) and not hosted
        return p["id"], summary(p), details(p), gr.update(visible=can_install)

    table.select(select, None, [selected, head, info, install_btn], **PRIVATE)

    def install(plugin_id):
        """Streams pip's output into the page; the table and details refresh when it ends."""
        from ..installer import InstallError

        text = ""
        try:
            for line in svc.install_plugin(plugin_id):
                text += line + "\n"
                yield gr.update(value=text, visible=True), gr.skip(), gr.skip(), gr.skip()
        except InstallError as exc:
            text += f"\n[tlab] install failed: {exc}\n"
            gr.Warning(f"Install failed: {exc}")
        plugins = svc.plugin_list()
        p = next((x for x in plugins if x["id"] == plugin_id), None)
        yield gr.update(value=text, visible=True), rows(plugins), summary(p) if p else "", details(p) if p else ""

    install_btn.click(lambda: gr.update(value="", visible=True), None, install_log, **PRIVATE).then(
        install, selected, [install_log, table, head, info], **PRIVATE)
    demo.load(lambda: rows(svc.plugin_list()), None, table, **PRIVATE)
