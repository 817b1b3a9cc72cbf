"""What the form shows before Start: the dataset's first rows with the templates' rendered examples, and
the live check's line (the memory and disk estimate) beside the command Start will run."""
from __future__ import annotations

import html
from typing import Any

from ..service import RequestError, Service
from .common import problems_md
from .dataset_picker import dataset_value, format_value


def data_preview(svc: Service, fields: dict[str, Any], owner: str | None = None) -> tuple[str, str, str, str, str]:
    """The dataset fields' summary line (rows, columns, the format found), first rows (an HTML table), up to three
    rendered examples, and the templates a job would use (the format's where the boxes held none of the user's;
    else the boxes' own), or the problems."""
    kept = fields["template"], fields["completion_template"]
    try:
        form = svc.plugin_form(fields["plugin"]) if fields.get("plugin") else None
    except RequestError:
        form = None
    try:
        out = svc.preview_data(dataset_value(svc, fields, owner), fields["template"], fields["completion_template"], 5,
                               owner, train_type=form["train_type"] if form else "sft",
                               data_format=format_value(fields.get("data_format")))
    except RequestError as exc:
        return (problems_md(exc), "", "") + kept
    count = (f"**{out['num_rows']} rows**" if out["num_rows"] is not None else
             f"**first {out.get('rows_checked') or len(out['rows'])} rows read** (too large to count before Start)")
    head = count + " · columns: " + ", ".join(f"`{c}`" for c in out["columns"])
    fmt = out.get("format")
    if fmt:
        head += f" · {html.escape(fmt['description'])}"
        if out.get("from_format") and (out["templates"]["template"] or out["templates"]["completion_template"]):
            head += " (its templates filled in)"
        elif out.get("from_format"):
            head += " (through the model's chat template)"
    if "template_error" in out:
        text = f"✗ {svc.hide_paths(out['template_error'])}"
    else:
        text = "\n\n".join(_render_example(i, ex) for i, ex in enumerate(out["rendered"][:3], 1))
    templates = (out["templates"]["template"], out["templates"]["completion_template"]) \
        if out.get("from_format") else kept
    return (head, _table(out["columns"], out["rows"]), text) + templates


def _table(columns: list[str], rows: list[dict[str, Any]]) -> str:
    """The first rows as a plain HTML table (every cell escaped)."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(r.get(c)))}</td>" for c in columns) + "</tr>"
                   for r in rows)
    return f'<div class="tl-ds-table"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def launch_check(svc: Service, request: dict[str, Any], hosted: bool, owner: str | None = None) -> tuple[str, str]:
    """The check line (✓ and the estimates) and the command, for a request built from the form; raises
    RequestError listing its problems. The same checks as Start, the data and templates included. In hosted
    mode the command names no server folder."""
    preview = svc.launch_preview(request, owner)
    text = preview["command"]
    return ('<span class="tl-ok">✓ Settings look good.</span> ' + memory_md(preview["memory"]),
            svc.hide_paths(text))


def memory_md(est: dict[str, Any]) -> str:
    """The time a step should take, and the memory estimate next to the chosen GPUs' free memory, with a
    warning when it won't fit."""
    step = est.get("step_time")
    timing = f"Time per step: **{html.escape(step['text'])}**<br>" if step else ""
    # Gradients and activations do not peak together (memory.estimate counts the larger): the parts add up to the total.
    grads, acts = est["gradients_gb"], est["activations_gb"]
    larger, smaller = (("activations", acts), ("gradients", grads)) if acts >= grads else \
        (("gradients", grads), ("activations", acts))
    # Each part in MiB where under 1 GiB: the embedded model's showed "weights 0.0, optimizer 0.0".
    parts = (f"weights {_size(est['weights_gb'])}, optimizer {_size(est['optimizer_gb'])}, {larger[0]} "
             f"{_size(larger[1])}, overhead {_size(est['overhead_gb'])}; {smaller[0]} {_size(smaller[1])} reuse the "
             f"{larger[0]}' room")
    text = timing + f"Estimated memory per device: **{est['total_gb']:.1f} GiB** ({parts})"
    if est["gpus"]:
        text += " · free: " + ", ".join(f"GPU {g['index']} {g['free_gb']:.1f} GiB" for g in est["gpus"])
    if est.get("plan"):
        text += f"<br>Plan: {html.escape(est['plan'])}"
    if est.get("warning"):
        text += f'<br><span class="tl-warn">⚠ {html.escape(est["warning"])}</span>'
    disk = est.get("disk")
    if disk:
        kept = (f"{disk['checkpoints']} checkpoint{'s' * (disk['checkpoints'] != 1)}" if disk["checkpoints"] is not None
                else "every checkpoint (no limit kept)")
        text += (f"<br>Disk: {kept} × {_size(disk['checkpoint_gb'])} + output {_size(disk['output_gb'])} · "
                 f"{disk['free_gb']:.1f} GiB free")
        if disk.get("warning"):
            text += f'<br><span class="tl-warn">⚠ {html.escape(disk["warning"])}</span>'
    return text


def _size(gb: float) -> str:
    return f"{gb:.1f} GiB" if gb >= 1 else f"{gb * 1024:.0f} MiB" if gb >= 1 / 1024 else "<1 MiB"


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 300 else text[:300] + "…"


def _render_example(i: int, example: dict[str, Any]) -> str:
    if "messages" in example:
        body = "\n".join(f"[{m.get('role')}] {m.get('content')}" for m in example["messages"])
    elif "prompt" in example:
        body = f"{example['prompt']}<completion>{example['completion']}</completion>"
    else:
        body = example["text"]
    return f"--- example {i} ---\n{body}"
