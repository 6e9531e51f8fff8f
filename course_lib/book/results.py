"""The results page: every metric of ``report.json`` as a table per lesson, plus bar charts.

A chart is drawn for each group of metrics below that this run recorded (two or more values), and
for any other set of three or more metrics of one lesson that share a unit. Every chart is labelled
with the run's profile and machine, and its value axis starts at zero.
"""

from __future__ import annotations

import base64
import io
import re
from dataclasses import dataclass
from pathlib import Path

from course_lib.book.common import format_value


@dataclass
class ChartSpec:
    title: str
    pattern: str  # regex on the metric name; group "label" names the bar, optional group "series"
    horizontal: bool = False
    sort: bool = False  # bars by value (a "ladder")


CHARTS = [
    ChartSpec("Lesson 2 — throughput per parallel strategy", r"^l2\.qps\.(?P<label>.+)$", horizontal=True),
    ChartSpec("Lesson 3 — perplexity per weight format", r"^l3\.ppl_(?P<label>[a-z0-9]+)_(?P<series>[a-z]+)$"),
    ChartSpec("Lesson 3 — weight bytes relative to fp16", r"^l3\.(?P<label>[a-z0-9]+)_weight_bytes_ratio$"),
    ChartSpec("Lesson 3 — decoding speed", r"^l3\.tokens_per_s_(?P<label>.+)$"),
    ChartSpec("Lesson 4 — GFLOP/s ladder (512³ matmul)", r"^l4\.(?:gflops_(?P<label>.+)|(?P<label2>peak)_gflops_estimate)$",
              horizontal=True, sort=True),
    ChartSpec("Lesson 5 — mAP per calibration method and model variant", r"^l5\.map_(?P<label>.+)$", horizontal=True),
    ChartSpec("Lesson 5 — int8 speed-up per batch size (1 = no change)", r"^l5\.(?P<label>.+?)_speedup_(?P<series>bs\d+)$",
              horizontal=True),
]


@dataclass
class Chart:
    title: str
    subtitle: str
    png_base64: str
    alt: str
    metrics: list[str]  # the report.json names it shows


def _group(spec: ChartSpec, metrics: dict) -> list[tuple[str, str, float, str]]:
    """(label, series, value, unit) of the metrics matching ``spec``, in recording order."""
    rows = []
    for name, m in metrics.items():
        match = re.match(spec.pattern, name)
        if not match:
            continue
        gd = match.groupdict()
        label = gd.get("label") or (f"{gd['label2']} (estimate)" if gd.get("label2") else name)
        rows.append((label, gd.get("series") or "", float(m.get("value", 0.0)), str(m.get("unit", ""))))
    return rows


def _draw(title: str, rows, horizontal: bool, sort: bool, subtitle: str) -> str:
    """A bar chart (grouped when rows carry a series) as base64 PNG; the value axis starts at zero."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if sort:
        rows = sorted(rows, key=lambda r: r[2])
    labels = list(dict.fromkeys(r[0] for r in rows))
    series = list(dict.fromkeys(r[1] for r in rows))
    units = sorted({r[3] for r in rows if r[3]})
    value = {(r[0], r[1]): r[2] for r in rows}
    n = len(labels)
    fig = Figure(figsize=(7.6, max(2.6, 0.42 * n + 1.6)) if horizontal else (7.6, 3.8), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / len(series)
    pos = np.arange(n)
    colors = ["#3b6ea8", "#e0883b", "#5a9e5a", "#b04f4f", "#8067a8"]
    for j, s in enumerate(series):
        vals = [value.get((lab, s), np.nan) for lab in labels]
        offs = pos - 0.4 + width * (j + 0.5)
        bars = (ax.barh if horizontal else ax.bar)(offs, vals, width * 0.92, label=s or None, color=colors[j % len(colors)])
        ax.bar_label(bars, labels=[format_value(v) if v == v else "" for v in vals], padding=3, fontsize=8)
    if horizontal:
        ax.set_yticks(pos, labels)
        ax.invert_yaxis()
        ax.set_xlim(left=0)
        ax.set_xlabel(", ".join(units) or "value")
        ax.margins(x=0.15)
    else:
        ax.set_xticks(pos, labels)
        ax.set_ylim(bottom=0)
        ax.set_ylabel(", ".join(units) or "value")
        ax.margins(y=0.15)
    if len(series) > 1:
        ax.legend(frameon=False, fontsize=8)
    ax.set_title(title, fontsize=11, loc="left")
    fig.text(0.01, 0.005, subtitle, fontsize=7, color="#555", ha="left", va="bottom", wrap=True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def charts(run) -> list[Chart]:
    """Every chart this run's metrics allow (see the module docstring)."""
    machine = run.machine or "machine not recorded"
    subtitle = f"profile {run.profile} · {machine}"
    all_metrics = {}
    lesson_of = {}
    for lesson in run.lessons:
        for name, m in lesson.metrics.items():
            all_metrics[name] = m
            lesson_of[name] = lesson
    out, plotted = [], set()
    for spec in CHARTS:
        rows = _group(spec, all_metrics)
        if len(rows) < 2:
            continue
        names = [n for n in all_metrics if re.match(spec.pattern, n)]
        plotted.update(names)
        alt = f"{spec.title}: " + ", ".join(f"{lab} {s} {format_value(v)} {u}".replace("  ", " ") for lab, s, v, u in rows)
        out.append(Chart(spec.title, subtitle, _draw(spec.title, rows, spec.horizontal, spec.sort, subtitle), alt, names))
    for lesson in run.lessons:  # anything else worth a look: 3+ metrics of one lesson with one unit
        by_unit: dict[str, list] = {}
        for name, m in lesson.metrics.items():
            if name not in plotted and m.get("unit"):
                by_unit.setdefault(m["unit"], []).append(name)
        for unit, names in by_unit.items():
            if len(names) >= 3:
                rows = [(n.split(".", 1)[-1], "", float(lesson.metrics[n]["value"]), unit) for n in names]
                title = f"{lesson.title} — {unit}"
                alt = f"{title}: " + ", ".join(f"{lab} {format_value(v)}" for lab, _, v, _ in rows)
                out.append(Chart(title, subtitle, _draw(title, rows, True, False, subtitle), alt, names))
    return out


def build_results(out: Path, run, env, ctx) -> None:
    html = env.get_template("results.html.j2").render(**ctx, charts=charts(run))
    (out / "results.html").write_text(html, encoding="utf-8")
