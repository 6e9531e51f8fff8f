"""A roofline for batch-1 decoding: weight bytes per token, measured memory bandwidth, tokens/s ceiling (notebook 03).

Generating one token at batch 1 multiplies one activation vector by every weight matrix once:
two flops per weight, and every weight byte has to come from memory (the model is far larger than
the caches). So the time per token is at least ``weight bytes read per token / memory bandwidth``,
and the tokens/s ceiling of a format is ``bandwidth / bytes per token``. Halving the bytes (int8 →
int4) doubles the ceiling; a kernel that materialises a float copy of the weight reads (and writes)
more bytes than the float model and falls below the float ceiling.

Units: sizes go in as **bytes** (``ceilings(bw, {"int8": 140e6})``, a point's ``bytes_per_token``), bandwidth as
GB/s; the tables also carry ``mb_per_token`` (MB = 1e6 bytes) for reading, and :func:`plot_roofline` still accepts
points that only have ``mb_per_token`` (what :func:`course_lib.llm.decode.decode_benchmark` rows carry).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from course_lib import bench


def measure_bandwidth(mb: float = 256.0, threads: int | None = None, warmup: int = 2, repeat: int = 10,
                      kind: str = "read") -> dict:
    """Memory bandwidth (GB/s) over ``mb`` MB: ``kind="read"`` streams it once (``src.sum()``, what a GEMV does
    with its weights), ``kind="copy"`` copies it (``dst.copy_(src)``: read + write bytes counted)."""
    if mb <= 0:
        raise ValueError(f"mb must be positive, got {mb}")
    if kind not in ("read", "copy"):
        raise ValueError(f"kind must be 'read' or 'copy', got {kind!r}")
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        n = int(mb * 1e6 / 4)
        src = torch.ones(n, dtype=torch.float32)
        if kind == "copy":
            dst = torch.empty_like(src)
            fn, moved = (lambda: dst.copy_(src)), 2 * n * 4
        else:
            fn, moved = (lambda: src.sum()), n * 4
        r = bench.benchmark(fn, name=f"{kind} {mb:.0f} MB", warmup=warmup, repeat=repeat)
    finally:
        torch.set_num_threads(old)
    ts = sorted(r.times_s)
    return {"gb_per_s": moved / r.median_s / 1e9, "gb_per_s_p10": moved / bench.percentile(ts, 90) / 1e9,
            "gb_per_s_p90": moved / bench.percentile(ts, 10) / 1e9, "bytes_moved": moved, "kind": kind,
            "threads": threads or old, "median_ms": r.median_ms}


def _module_weight_bytes(mod: nn.Module) -> int:
    from course_lib.llm.quant import QLinear

    if isinstance(mod, QLinear):  # a fast kernel reads its own layout (e.g. MatMulNBits: a float32 scale per block)
        return getattr(mod._kernel_impl, "nbytes", None) or mod.nbytes()
    return sum(p.numel() * p.element_size() for p in mod.parameters(recurse=False))


def weight_bytes_per_token(model) -> dict:
    """Bytes of weights one decoding step reads, by part: layer linears, LM head, norms (+ one embedding row)."""
    from course_lib.llm.quant import QLinear

    linears = head = norms = 0
    for name, mod in model.named_modules():
        if name == "lm_head":
            head += _module_weight_bytes(mod)
        elif isinstance(mod, (nn.Linear, QLinear)):
            linears += _module_weight_bytes(mod)
        elif name.endswith("norm"):
            norms += _module_weight_bytes(mod)
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else model.model.embed_tokens
    row = emb.weight.shape[1] * emb.weight.element_size()
    return {"linears": linears, "lm_head": head, "norms": norms, "embedding_row": row,
            "total": linears + head + norms + row}


def gguf_weight_bytes(path: str | Path) -> int:
    """Bytes per token of a llama.cpp model: its GGUF tensors (the file minus its small metadata; tied head counted once)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    # every tensor is read once per token: the tied token_embd doubles as the output (LM head) matrix
    return int(sum(int(t.n_bytes) for t in reader.tensors))


def ceilings(bandwidth_gbs: float, bytes_per_token: dict[str, float]):
    """DataFrame: variant, bytes and MB read per token, tokens/s ceiling = bandwidth / bytes (sizes in bytes) (notebook 03)."""
    import pandas as pd

    if bandwidth_gbs <= 0:
        raise ValueError("bandwidth must be positive")
    bad = {k: v for k, v in bytes_per_token.items() if not v or v <= 0}
    if bad:
        raise ValueError(f"bytes per token must be positive, got {bad}")
    rows = [{"variant": k, "bytes_per_token": int(v), "mb_per_token": v / 1e6,
             "ceiling_tokens_per_s": bandwidth_gbs * 1e9 / v} for k, v in bytes_per_token.items()]
    return pd.DataFrame(rows)


def point_mb(p: dict) -> float:
    """MB per token of a roofline point: from ``bytes_per_token`` (preferred) or ``mb_per_token``; one clear error
    when it has neither, or both and they disagree (notebook 03)."""
    has_b, has_mb = p.get("bytes_per_token") is not None, p.get("mb_per_token") is not None
    if not (has_b or has_mb):
        raise ValueError(f"roofline point {p.get('variant', p)!r} needs bytes_per_token (or mb_per_token)")
    mb = float(p["bytes_per_token"]) / 1e6 if has_b else float(p["mb_per_token"])
    if has_b and has_mb and abs(mb - float(p["mb_per_token"])) > 1e-6 * max(1.0, mb):
        raise ValueError(f"roofline point {p.get('variant')!r}: bytes_per_token {p['bytes_per_token']} and "
                         f"mb_per_token {p['mb_per_token']} disagree (1 MB = 1e6 bytes)")
    if mb <= 0:
        raise ValueError(f"roofline point {p.get('variant')!r}: bytes per token must be positive")
    return mb


# Label positions tried around a point, in points (dx, dy, horizontal alignment): right, below, left, above, further out.
_LABEL_SPOTS = [(6, 4, "left"), (6, -12, "left"), (-6, 4, "right"), (-6, -12, "right"), (6, 14, "left"),
                (6, -22, "left"), (-6, 14, "right"), (-6, -22, "right")]
_LABEL_SPOTS += [(dx, dy, ha) for dy in (24, -32, 34, -42, 44, -52) for dx, ha in ((6, "left"), (-6, "right"))]

_LEADER = {"arrowstyle": "-", "lw": 0.6, "color": "0.45", "shrinkA": 0, "shrinkB": 4}  # label-to-point line


def _text_box(annotation, renderer):
    """Pixels an annotation's text covers, without its leader line."""
    from matplotlib.text import Text

    annotation.update_positions(renderer)
    return Text.get_window_extent(annotation, renderer)


def _label_points(ax, labels):
    """Annotate (text, x, y) points so that no label overlaps another or a marker or leaves the axes (the first
    free spot of :data:`_LABEL_SPOTS`); a label away from its point gets a thin leader line to it."""
    from matplotlib.transforms import Bbox

    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    r = 4 * ax.figure.dpi / 72  # a marker's half-size in pixels
    placed = [Bbox.from_extents(px - r, py - r, px + r, py + r)
              for px, py in (ax.transData.transform((x, y)) for _, x, y in labels)]
    for text, x, y in sorted(labels, key=lambda t: -t[2]):
        for dx, dy, ha in _LABEL_SPOTS:
            leader = {"arrowprops": _LEADER} if abs(dy) > 12 else {}
            a = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), ha=ha, fontsize=8, **leader)
            box = _text_box(a, renderer).padded(2)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if inside and not any(box.overlaps(b) for b in placed):
                break
            a.remove()
        else:  # crowded everywhere: keep the first spot
            a = ax.annotate(text, (x, y), textcoords="offset points", xytext=_LABEL_SPOTS[0][:2], fontsize=8)
            box = _text_box(a, renderer)
        placed.append(box)


_KINDS = {  # point kind -> (marker, colour, legend text)
    "eager": ("o", "tab:blue", "eager PyTorch (course_lib)"),
    "graph": ("D", "tab:green", "one onnxruntime graph per token"),
    "peer": ("s", "tab:orange", "llama.cpp"),
}


def _kind(p: dict) -> str:
    return "peer" if p.get("peer", False) else "graph" if p.get("graph", False) else "eager"


def plot_roofline(bandwidth_gbs: float, points, ax=None, title: str | None = None, labels: dict | None = None):
    """Tokens/s against MB of weights per token: the ceiling curve bandwidth/bytes and each measured variant (notebook 03).

    ``points``: iterable of dicts with ``variant``, ``bytes_per_token`` (or ``mb_per_token``), ``tokens_per_s``
    and optionally ``p10``/``p90`` (drawn as an error bar), and ``peer`` (llama.cpp: orange squares) or ``graph``
    (one onnxruntime graph per token: green diamonds); the other points are blue circles. The legend explains
    the ceiling, each marker kind present and the error bars; ``labels`` renames a kind's legend entry, e.g.
    ``{"eager": "my model"}``.
    """
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.lines import Line2D

    if bandwidth_gbs is None or not bandwidth_gbs > 0:
        raise ValueError(f"bandwidth must be positive (GB/s), got {bandwidth_gbs}")
    points = [dict(p, mb_per_token=point_mb(p)) for p in points]
    if not points:
        raise ValueError("no points to plot: pass at least one measured variant")
    unknown = set(labels or {}) - set(_KINDS)
    if unknown:
        raise ValueError(f"labels: unknown point kinds {sorted(unknown)}; the kinds are {sorted(_KINDS)}")
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 5))
    xmax = max(p["mb_per_token"] for p in points) * 1.15
    xs = np.linspace(xmax / 60, xmax, 300)
    ceiling = bandwidth_gbs * 1e3 / xs  # GB/s / MB = 1e3 per s
    ymax = max(max(p.get("p90", p["tokens_per_s"]) for p in points) * 1.6,
               bandwidth_gbs * 1e3 / max(p["mb_per_token"] for p in points) * 1.2)
    (ceiling_line,) = ax.plot(xs, np.minimum(ceiling, ymax * 10), color="0.3", lw=1.5,
                              label=f"ceiling: {bandwidth_gbs:.1f} GB/s ÷ bytes per token")
    spreads = False
    for p in points:
        y = p["tokens_per_s"]
        err = None
        if "p10" in p and "p90" in p:
            err = [[max(0.0, y - p["p10"])], [max(0.0, p["p90"] - y)]]
            spreads = True
        fmt, color, _ = _KINDS[_kind(p)]
        ax.errorbar([p["mb_per_token"]], [y], yerr=err, fmt=fmt, ms=7, capsize=3, color=color)
    ax.set_xlim(0, xmax)
    ax.set_ylim(0, ymax)
    _label_points(ax, [(p["variant"], p["mb_per_token"], p["tokens_per_s"]) for p in points])
    ax.set_xlabel("MB of weights read per generated token")
    ax.set_ylabel("tokens/s (batch 1, greedy)")
    ax.set_title(title or "Decoding roofline (batch 1): measured tokens/s under the memory-bandwidth ceiling")
    # the legend: the ceiling line, then one entry per marker kind present (proxy artists: not drawn on the axes)
    handles = [ceiling_line]
    for kind in ("eager", "graph", "peer"):
        if any(_kind(p) == kind for p in points):
            marker, color, text = _KINDS[kind]
            handles.append(Line2D([], [], ls="none", marker=marker, ms=7, color=color,
                                  label=(labels or {}).get(kind, text)))
    if spreads:
        handles.append(Line2D([], [], ls="none", marker="|", ms=12, mew=1.2, color="0.3",
                              label="bar: p10–p90 of the timed runs"))
    ax.legend(handles=handles, loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    return ax
