"""The job page's metric chart, drawn here as an SVG: every point the page holds is in the markup it sends, so the
chart shows each logged step at the refresh that read it. (gradio 6.31's LinePlot redrew an updated value with the
previous value's rows: a live chart was always one logged point behind, and a single point got ticks such as
`5.577897` / `1.000000`.)

Raw points are dots joined by a thin line; with smoothing, TensorBoard's debiased exponential moving average is
drawn over them. Ticks are round numbers, labelled with the digits their spacing needs. No gradio here: the
module takes lists of points and returns HTML.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass

WIDTH, HEIGHT = 560, 300
LEFT, RIGHT, TOP, BOTTOM = 64, 14, 12, 34  # room for the y labels, the x labels and the axis title
# 16, a sweep's most jobs: the first 8 strong hues, then 8 told apart from them by hue or lightness
COLORS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be185d", "#4d7c0f",
          "#0f766e", "#a16207", "#3730a3", "#ec4899", "#78716c", "#78350f", "#38bdf8", "#84cc16")
DOTS_UP_TO = 400  # a line with more raw points draws them as its thin line only (the dots would be a smear)
MAX_SMOOTHING = 0.99


def line_color(i: int) -> str:
    """Line i's colour: the palette (a 16-job sweep's lines were drawn in 8 colours, job 9 as job 1), then hues
    a golden angle apart (a sweep compared with its held-out curves has more lines)."""
    if i < len(COLORS):
        return COLORS[i]
    return f"hsl({((i - len(COLORS)) * 137.508 + 15) % 360:.0f} 70% 42%)"


@dataclass
class Line:
    name: str
    points: list[tuple[float, float]]  # (step, value), in step order
    dashed: bool = False  # a held-out (eval) series: a dashed line with ringed points, told apart from training's


def ema(values: list[float], weight: float) -> list[float]:
    """TensorBoard's smoothing: an exponential moving average with weight `weight` (0: the values as they are),
    debiased so the first points are not pulled towards zero."""
    weight = min(max(float(weight), 0.0), MAX_SMOOTHING)
    if weight <= 0:
        return list(values)
    out, last, count = [], 0.0, 0
    for value in values:
        count += 1
        last = last * weight + (1 - weight) * value
        out.append(last / (1 - weight ** count))
    return out


def nice_step(span: float, count: int) -> float:
    """A round spacing (1, 2 or 5 times a power of ten) giving about `count` intervals over `span`."""
    rough = span / max(count, 1)
    power = 10 ** math.floor(math.log10(rough))
    for factor in (1, 2, 5, 10):
        if rough <= factor * power:
            return factor * power
    return 10 * power


def ticks(low: float, high: float, count: int = 5, whole: bool = False) -> tuple[float, float, list[float]]:
    """The axis range widened to round numbers, and the round ticks in it. `whole`: ticks are integers (steps).
    A single value gets a range around it, not ticks that all read the same."""
    if not (math.isfinite(low) and math.isfinite(high)):
        low, high = 0.0, 1.0
    if high - low <= 0:
        pad = 1.0 if whole else (abs(low) * 0.1 or 1.0)
        low, high = low - pad, high + pad
    step = nice_step(high - low, count)
    if whole:
        step = max(1.0, round(step))
    start, end = math.floor(low / step + 1e-9) * step, math.ceil(high / step - 1e-9) * step
    marks = [start + i * step for i in range(int(round((end - start) / step)) + 1)]
    return start, end, marks


def label(value: float, step: float) -> str:
    """A tick's text: as many decimals as the spacing needs (0.2 → 1, 50 → 0), thousands grouped, and
    scientific notation only for very large or very small spacings."""
    if value == 0:
        return "0"
    if step >= 1e6 or step < 1e-4:
        return f"{value:.3g}"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))  # the spacing is 1, 2 or 5 times a power of ten
    return f"{value:,.{decimals}f}"


def value_text(value: float) -> str:
    """A point's value for its tooltip: 5 significant digits."""
    return f"{value:.5g}"


def render(lines: list[Line], title: str, smoothing: float = 0.0, empty: str = "No points yet.", *,
           x_title: str = "step", x_range: tuple[float, float] | None = None,
           y_range: tuple[float, float] | None = None, dots: bool = True,
           size: tuple[int, int] = (WIDTH, HEIGHT), css_class: str = "") -> str:
    """The chart as HTML: a title, the SVG (one <g class="tl-series"> per line, its steps in data-steps), a legend.
    `x_range`/`y_range` fix an axis's span (a time window, 0-100 %) instead of fitting it to the points; `dots`
    False draws the lines alone; `size` is the drawing's (width, height) before it scales to its box."""
    WIDTH, HEIGHT = size  # noqa: N806 (the module's defaults, overridden for a small chart)
    lines = [Line(ln.name, [(s, v) for s, v in ln.points if _finite(s) and _finite(v)], ln.dashed) for ln in lines]
    drawn = [ln for ln in lines if ln.points]
    head = f'<div class="tl-chart-title" style="font-weight:600;text-align:center;margin:2px 0 4px">' \
           f'{html.escape(title)}</div>'
    if not drawn:
        return (f'<div class="tl-chart {css_class}">{head}<div class="tl-chart-empty" style="height:{HEIGHT}px;display:flex;'
                f'align-items:center;justify-content:center;color:var(--body-text-color-subdued)">'
                f'{html.escape(empty)}</div></div>')
    steps = [s for ln in drawn for s, _ in ln.points]
    values = [v for ln in drawn for _, v in ln.points]
    x0, x1, xticks = ticks(*(x_range or (min(steps), max(steps))), 6, whole=True)
    y0, y1, yticks = ticks(*(y_range or (min(values), max(values))), 5)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(step: float) -> float:
        return LEFT + (step - x0) / (x1 - x0) * plot_w

    def y(value: float) -> float:
        return TOP + (y1 - value) / (y1 - y0) * plot_h

    parts = [f'<svg class="tl-chart-svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" '
             f'aria-label="{html.escape(title)}" style="display:block;font-size:11px;overflow:visible">']
    grid = "stroke:var(--border-color-primary,#ddd);stroke-width:1"
    text = "fill:var(--body-text-color,#333)"
    ystep = yticks[1] - yticks[0] if len(yticks) > 1 else 1.0
    for t in yticks:
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(t):.1f}" y2="{y(t):.1f}" style="{grid}"/>'
                     f'<text class="tl-ytick" x="{LEFT - 6}" y="{y(t) + 4:.1f}" text-anchor="end" style="{text}">'
                     f'{label(t, ystep)}</text>')
    xstep = xticks[1] - xticks[0] if len(xticks) > 1 else 1.0
    for t in xticks:
        parts.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{TOP}" y2="{TOP + plot_h}" style="{grid};'
                     f'stroke-opacity:.5"/><text class="tl-xtick" x="{x(t):.1f}" y="{TOP + plot_h + 15}" '
                     f'text-anchor="middle" style="{text}">{label(t, xstep) if t else "0"}</text>')
    parts.append(f'<text x="{LEFT + plot_w / 2:.1f}" y="{HEIGHT - 2}" text-anchor="middle" '
                 f'style="{text};opacity:.8">{html.escape(x_title)}</text>')
    smoothing = min(max(float(smoothing or 0), 0.0), MAX_SMOOTHING)
    for i, ln in enumerate(lines):
        if not ln.points:
            continue
        color = line_color(i)
        coords = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in ln.points)
        raw_opacity = 0.35 if smoothing else 0.9
        dash = ' stroke-dasharray="5 3"' if ln.dashed else ""
        parts.append(f'<g class="tl-series{" tl-eval" if ln.dashed else ""}" data-series="{html.escape(ln.name)}" '
                     f'data-steps="{",".join(_num(s) for s, _ in ln.points)}">')
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="1.5" '
                     f'stroke-opacity="{raw_opacity}"{dash}/>')
        if dots and len(ln.points) <= DOTS_UP_TO:
            # an eval point is a ring (white centre): few and far between, each one is an evaluation
            ring = f' r="3.4" stroke="{color}" stroke-width="1.6"' if ln.dashed else ' r="2.6"'
            fill = "var(--background-fill-primary,#fff)" if ln.dashed else color
            for s, v in ln.points:
                parts.append(f'<circle class="tl-point" cx="{x(s):.1f}" cy="{y(v):.1f}"{ring} fill="{fill}" '
                             f'fill-opacity="{0.5 if smoothing else 1}"><title>{html.escape(ln.name)} · step '
                             f'{_num(s)}: {value_text(v)}</title></circle>')
        if smoothing and len(ln.points) > 1:
            smooth = ema([v for _, v in ln.points], smoothing)
            coords = " ".join(f"{x(s):.1f},{y(v):.1f}" for (s, _), v in zip(ln.points, smooth))
            parts.append(f'<polyline class="tl-smoothed" points="{coords}" fill="none" stroke="{color}" '
                         f'stroke-width="2.2"{dash}/>')
        parts.append("</g>")
    parts.append("</svg>")
    legend = "".join(
        f'<span class="tl-legend-item" style="display:inline-flex;align-items:center;gap:4px;margin:0 8px">'
        f'<span style="width:14px;height:0;border-top:3px {"dashed" if ln.dashed else "solid"} '
        f'{line_color(i)};display:inline-block"></span>'
        f'{html.escape(ln.name)}</span>' for i, ln in enumerate(lines) if ln.points)
    return (f'<div class="tl-chart {css_class}">{head}{"".join(parts)}'
            f'<div class="tl-chart-legend" style="text-align:center;font-size:12px;margin-top:2px">{legend}</div>'
            f'</div>')


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
