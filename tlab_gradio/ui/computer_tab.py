"""Computer tab: the machine's load as small curves over the last minutes (CPU, memory and each GPU's
utilisation and memory, sampled by the service), the devices each running job holds, GPU Specs (n) refreshed
live, then CPU, memory, disk and library versions."""
from __future__ import annotations

import html
import time

import gradio as gr

from .. import system
from ..service import Service
from . import chart
from .common import PRIVATE, duration, visitor

CURVE_SIZE = (380, 180)  # each small chart's drawing, before it scales to its box


def _curve(title: str, lines: list[chart.Line], y_range: tuple[float, float], span_s: float, kind: str) -> str:
    return chart.render(lines, title, empty="Sampling…", x_title="seconds ago", x_range=(-span_s, 0),
                        y_range=y_range, dots=False, size=CURVE_SIZE, css_class=f"tl-usage-{kind}")


def usage_html(usage: dict, now: float | None = None) -> str:
    """The load curves of the last minutes (x: seconds before now; the axis spans the samples there are, from a
    minute up to the whole window) and the running jobs' devices."""
    samples = usage["samples"]
    now = now or (samples[-1]["time"] if samples else time.time())
    window = usage.get("window_s", 300)
    span = min(window, max(60.0, now - samples[0]["time"] if samples else 0.0))

    def x(sample: dict) -> float:
        return round(sample["time"] - now, 1)

    charts = []
    cores = system.os.cpu_count()  # the machine's, as the System table says
    last = samples[-1] if samples else None
    cpu_title = f"CPU {last['cpu_pct']:.0f} %" if last else "CPU"
    charts.append(_curve(f"{cpu_title} ({cores} cores)" if cores else cpu_title,
                         [chart.Line("CPU %", [(x(s), s["cpu_pct"]) for s in samples])], (0, 100), span, "cpu"))
    total = max((s["memory_total_gib"] for s in samples), default=0) or 1
    mem_title = (f"Memory {last['memory_used_gib']:.1f} / {last['memory_total_gib']:.1f} GiB" if last else "Memory")
    charts.append(_curve(mem_title, [chart.Line("memory used, GiB", [(x(s), s["memory_used_gib"]) for s in samples])],
                         (0, total), span, "memory"))
    indexes = sorted({g["index"] for s in samples for g in s["gpus"]})
    if indexes:
        util = [chart.Line(f"GPU {i} %", [(x(s), g["utilization_pct"]) for s in samples for g in s["gpus"]
                                          if g["index"] == i and g["utilization_pct"] is not None]) for i in indexes]
        mem = [chart.Line(f"GPU {i} GiB", [(x(s), g["memory_used_gib"]) for s in samples for g in s["gpus"]
                                           if g["index"] == i]) for i in indexes]
        gpu_total = max((g["memory_total_gib"] for s in samples for g in s["gpus"]), default=0) or 1
        charts.append(_curve("GPU utilisation %", util, (0, 100), span, "gpu-util"))
        charts.append(_curve("GPU memory used, GiB", mem, (0, gpu_total), span, "gpu-memory"))
    every = usage.get("interval_s", 2)
    head = (f'<h3>Load, last {window / 60:g} minutes</h3><p class="tl-muted">Sampled every {every:g} s by the app '
            f'({len(samples)} sample{"s" * (len(samples) != 1)} so far).</p>')
    return (head + f'<div class="tl-usage">{"".join(charts)}</div>' + jobs_html(usage["jobs"], now)
            + chat_html(usage.get("chat") or []))


def chat_html(workers: list[dict]) -> str:
    """The Chat tab's model process, with the GPU it holds (jobs that need that GPU wait for it)."""
    lines = []
    for w in workers:
        holds = f"GPU {w['gpu']} (jobs that need it wait until it is unloaded)" if w.get("gpu") is not None else "CPU"
        models = f": {', '.join(w['models'])}" if w.get("models") else ""
        lines.append(f'<li class="tl-chat-worker">Chat model on {html.escape(holds)}{html.escape(models)}; unloads '
                     f'in {duration(w.get("unloads_in_s"))} without a message</li>')
    return f'<ul class="tl-muted">{"".join(lines)}</ul>' if lines else ""


def jobs_html(jobs: list[dict], now: float) -> str:
    """Each running job with what it holds: its GPUs, or its CPU processes."""
    if not jobs:
        return '<h3>Running jobs</h3><p class="tl-muted" id="usage-no-jobs">No job is running.</p>'
    rows = []
    for j in jobs:
        if j["gpus"]:
            holds = f"GPU{'s' * (len(j['gpus']) != 1)} {', '.join(map(str, j['gpus']))}"
        else:
            holds = f"CPU · {j['processes']} process{'es' * (j['processes'] != 1)}"
        since = duration(now - j["started"]) if j.get("started") else "waiting to start"
        rows.append(f'<tr data-job="{j["id"]}"><td>{j["id"]}</td><td>{html.escape(j["name"])}</td>'
                    f'<td>{html.escape(j["state"])}</td><td class="tl-holds">{html.escape(holds)}</td>'
                    f'<td>{since}</td></tr>')
    return ('<h3>Running jobs</h3><table class="tl-kv tl-jobs-devices"><tr><th>ID</th><th>Name</th><th>State</th>'
            f'<th>Holds</th><th>Running for</th></tr>{"".join(rows)}</table>')


def gpu_html(gpus: list[dict]) -> str:
    if not gpus:
        return ('<h3>GPUs</h3><p class="tl-muted">No GPU found on this machine: '
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
    svc.monitor.start(wait=False)  # from launch on: the curves have history when the page is opened
    usage_box = gr.HTML(elem_id="machine-usage")
    gpus_box = gr.HTML(elem_id="gpu-specs")
    sys_box = gr.HTML(elem_id="system-info")

    def live(request: gr.Request):
        return usage_html(svc.machine_usage(visitor(request))), gpu_html(svc.gpu_info())

    def first(request: gr.Request):
        return (*live(request), system_html(system.info(svc.home), hosted))

    demo.load(first, None, [usage_box, gpus_box, sys_box], **PRIVATE)
    timer = gr.Timer(2.0)
    timer.tick(live, None, [usage_box, gpus_box], show_progress="hidden", **PRIVATE)
    slow = gr.Timer(15.0)
    slow.tick(lambda: system_html(system.info(svc.home), hosted), None, sys_box, show_progress="hidden", **PRIVATE)
