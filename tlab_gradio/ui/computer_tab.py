"""Computer tab: GPU Specs (n) refreshed live, CPU, memory, disk and library versions."""
from __future__ import annotations

import html

import gradio as gr

from .. import system
from ..service import Service
from .common import PRIVATE


def gpu_html(gpus: list[dict]) -> str:
    if not gpus:
        return ('<h3>GPU Specs (0)</h3><p class="tl-muted">No GPU found on this machine: '
                'training runs on the CPU (device <code>cpu</code>).</p>')
    cards = []
    for g in gpus:
        used, total = g["memory_used_mb"] / 1024, g["memory_total_mb"] / 1024
        pct = 100 * used / total if total else 0
        facts = [f"Memory {used:.1f} / {total:.1f} GiB"]
        if g.get("utilization_pct") is not None:
            facts.append(f"Utilisation {g['utilization_pct']}%")
        if g.get("temperature_c") is not None:
            facts.append(f"Temperature {g['temperature_c']} °C")
        if g.get("power_w") is not None:
            limit = f" / {g['power_limit_w']:.0f}" if g.get("power_limit_w") else ""
            facts.append(f"Power {g['power_w']:.0f}{limit} W")
        cc = g.get("compute_capability")
        if cc:
            facts.append(f"Compute capability {cc[0]}.{cc[1]}")
        cards.append(
            f'<div class="tl-gpu"><div class="tl-gpu-title">GPU # {g["index"]}</div>'
            f'<div class="tl-gpu-name">{html.escape(g["name"])}</div>'
            f'<div class="tl-progress"><div class="tl-progress-fill" style="width:{pct:.1f}%"></div></div>'
            f'<ul>{"".join(f"<li>{html.escape(f)}</li>" for f in facts)}</ul></div>'
        )
    return f'<h3>GPU Specs ({len(gpus)})</h3><div class="tl-gpus">{"".join(cards)}</div>'


def system_html(info: dict, hosted: bool) -> str:
    v = info["versions"]
    ram = (f"{info['ram_available_gb']:.1f} GiB free of {info['ram_total_gb']:.1f} GiB"
           if info["ram_total_gb"] else "unknown")
    rows = [
        ("CPU", f"{info['cpu_model']} · {info['cpu_cores']} cores"),
        ("RAM", ram),
        ("Disk (workspace)", f"{info['disk_free_gb']:.0f} GiB free of {info['disk_total_gb']:.0f} GiB"),
        ("Python", v["python"]),
        ("torch", f"{v['torch'] or 'not installed'} ({info['torch_build']})"),
    ]
    rows += [(name, v[name] or "not installed") for name in system.LIBRARIES if name != "torch"]
    if not hosted:
        rows.insert(3, ("Platform", info["platform"]))
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(val))}</td></tr>" for k, val in rows)
    return f'<h3>System</h3><table class="tl-kv">{body}</table>'


def build(svc: Service, demo: gr.Blocks, hosted: bool) -> None:
    gpus_box = gr.HTML(elem_id="gpu-specs")
    sys_box = gr.HTML(elem_id="system-info")
    demo.load(lambda: (gpu_html(svc.gpu_info()), system_html(system.info(svc.home), hosted)), None,
              [gpus_box, sys_box], **PRIVATE)
    timer = gr.Timer(2.0)
    timer.tick(lambda: gpu_html(svc.gpu_info()), None, gpus_box, show_progress="hidden", **PRIVATE)
    slow = gr.Timer(15.0)
    slow.tick(lambda: system_html(system.info(svc.home), hosted), None, sys_box, show_progress="hidden", **PRIVATE)
