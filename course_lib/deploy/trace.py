"""TorchScript for deployment: trace, save/load, parity, the control-flow pitfall, device constants, export.

Introduced in ``01_torchscript_triton.ipynb``.

* ``torch.jit.trace`` runs the model once on example inputs and records the tensor operations it saw:
  Python control flow is *evaluated* (one branch recorded), shapes stay symbolic where torch can see them.
* ``torch.jit.script`` compiles the Python source: control flow survives as ``prim::If`` / ``prim::Loop``,
  but only a subset of Python is accepted (``transformers`` models mostly are not).
* TorchScript is in maintenance mode upstream; ``torch.export`` (an ``ExportedProgram``, with explicit
  dynamic shapes) is the successor — :func:`try_export` shows it on the same model.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn


def trace_model(model: nn.Module, example_inputs: tuple, strict: bool = True, check: bool = True):
    """``torch.jit.trace(model.eval(), example_inputs, strict=strict)`` with TracerWarnings collected (notebook 01).

    Returns ``(traced, warnings)``: the list holds the text of every TracerWarning (a Python value
    computed from a tensor — a place where the trace may have frozen a branch or a shape).
    """
    model = model.eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", torch.jit.TracerWarning)
        with torch.no_grad():
            traced = torch.jit.trace(model, example_inputs, strict=strict, check_trace=check)
    msgs = [str(w.message) for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    return traced, msgs


def save_traced(traced, path: str | Path) -> Path:
    """``torch.jit.save`` to ``path`` (creating folders); what Triton's libtorch backend loads as model.pt (notebook 01)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(traced, str(path))
    return path


def load_traced(path: str | Path, map_location: str | torch.device = "cpu"):
    """``torch.jit.load(path, map_location=...)`` in eval mode; a clear error if the file is missing (notebook 01)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no TorchScript file at {path}")
    return torch.jit.load(str(path), map_location=map_location).eval()


def _valid_span_mask(attention_mask: torch.Tensor, num_types: int) -> torch.Tensor:
    m = attention_mask.bool()
    pair = m[:, None, :, None] & m[:, None, None, :]
    upper = torch.ones(m.shape[1], m.shape[1], dtype=torch.bool, device=m.device).triu()  # on the mask's device
    return (pair & upper).expand(-1, num_types, -1, -1)


@torch.no_grad()
def parity(reference: nn.Module, candidate, inputs: tuple) -> dict:
    """Compare two models' ``(cls_logits, ner_logits)`` on a whole batch (notebook 01).

    Returns max |diff| of the class logits, of the span logits over *valid* spans (real tokens,
    end ≥ start; masked entries are ≈ -1e11 in both and compared only by sign), whether the argmax
    classes agree for every row, and whether the predicted span sets (logit > 0) are identical.
    """
    c1, n1 = reference(*inputs)
    c2, n2 = candidate(*inputs)
    if c1.shape != c2.shape or n1.shape != n2.shape:
        raise AssertionError(f"output shapes differ: {tuple(c1.shape)}/{tuple(n1.shape)} vs {tuple(c2.shape)}/{tuple(n2.shape)}")
    valid = _valid_span_mask(inputs[2], n1.shape[1])
    cls_diff = float((c1 - c2).abs().max())
    ner_diff = float((n1 - n2)[valid].abs().max()) if valid.any() else 0.0
    return {
        "batch": int(inputs[0].shape[0]),
        "cls_max_abs_diff": cls_diff,
        "ner_max_abs_diff": ner_diff,
        "max_abs_diff": max(cls_diff, ner_diff),
        "argmax_equal": bool((c1.argmax(-1) == c2.argmax(-1)).all()),
        "spans_equal": bool(((n1 > 0) == (n2 > 0)).all()),
        "masked_still_masked": bool((n2[~valid] < -1e9).all()),
    }


# ----------------------------------------------------------------------------------------------
# Control flow: what tracing freezes and scripting keeps
# ----------------------------------------------------------------------------------------------


class LengthGuard(nn.Module):
    """Truncates ``input_ids`` to ``max_len`` columns *if* longer: shape-dependent control flow (notebook 01)."""

    def __init__(self, max_len: int = 8):
        super().__init__()
        self.max_len = max_len

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.size(1) > self.max_len:
            input_ids = input_ids[:, : self.max_len]
        return input_ids


class ConfidenceGate(nn.Module):
    """Returns the logits, or -1 everywhere when no logit is positive: data-dependent control flow (notebook 01)."""

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        if bool((logits > 0).any()):
            return logits
        return torch.full_like(logits, -1.0)


def control_flow_demo():
    """Trace vs script on :class:`LengthGuard` and :class:`ConfidenceGate`: a DataFrame of who gets it right (notebook 01)."""
    import pandas as pd

    rows = []
    guard = LengthGuard(8)
    short, long = torch.ones(1, 5, dtype=torch.long), torch.ones(1, 12, dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced_guard = torch.jit.trace(guard, (short,))
        gate = ConfidenceGate()
        pos, neg = torch.tensor([[0.5, -1.0]]), torch.tensor([[-0.5, -2.0]])
        traced_gate = torch.jit.trace(gate, (pos,))
    scripted_guard, scripted_gate = torch.jit.script(guard), torch.jit.script(gate)
    for name, mod, tr, sc, x in [
        ("LengthGuard, traced on 5 tokens, input 12 tokens", guard, traced_guard, scripted_guard, long),
        ("LengthGuard, input 5 tokens", guard, traced_guard, scripted_guard, short),
        ("ConfidenceGate, traced on a positive logit, input all negative", gate, traced_gate, scripted_gate, neg),
        ("ConfidenceGate, input with a positive logit", gate, traced_gate, scripted_gate, pos),
    ]:
        e, t, s = mod(x), tr(x), sc(x)
        rows.append({
            "case": name,
            "eager": _short(e),
            "traced": _short(t),
            "scripted": _short(s),
            "traced_ok": bool(e.shape == t.shape and torch.equal(e, t)),
            "scripted_ok": bool(e.shape == s.shape and torch.equal(e, s)),
        })
    return pd.DataFrame(rows), {"traced_guard": traced_guard, "scripted_guard": scripted_guard,
                                "traced_gate": traced_gate, "scripted_gate": scripted_gate}


def _short(t: torch.Tensor) -> str:
    return f"shape {tuple(t.shape)} {t.flatten()[:3].tolist()}"


# ----------------------------------------------------------------------------------------------
# Graph inspection
# ----------------------------------------------------------------------------------------------


def _graph(module_or_graph):
    if isinstance(module_or_graph, torch._C.Graph):
        return module_or_graph
    g = getattr(module_or_graph, "inlined_graph", None)
    if g is None:
        raise TypeError(f"expected a TorchScript module or graph, got {type(module_or_graph).__name__}")
    return g


def device_constants(module_or_graph) -> list[dict]:
    """Every ``Device`` constant in a TorchScript graph: ``{"device", "used_by", "source"}`` (notebook 01).

    A trace records ``tensor.to(device=x.device)``, ``torch.arange(..., device=...)`` etc. with the
    device *value* it saw. A model traced on ``cuda:0`` keeps creating tensors on ``cuda:0`` even when
    Triton runs that instance on ``cuda:1`` — the CUDA-binding pitfall. An empty list means the graph
    follows its inputs' device.
    """
    g = _graph(module_or_graph)
    found = []
    for node in g.nodes():
        if node.kind() != "prim::Constant":
            continue
        out = node.output()
        if out.type().kind() != "DeviceObjType":
            continue
        users = sorted({u.user.kind() for u in out.uses()})
        src = ""
        try:
            rng = node.sourceRange()
            src = rng.strip().splitlines()[0] if rng else ""
            if "/site-packages/" in src:  # keep the readable part: package/file.py:line
                src = src.split("/site-packages/", 1)[1]
        except Exception:  # noqa: BLE001 - source ranges are best effort
            src = ""
        found.append({"device": str(out.toIValue()), "used_by": ", ".join(users), "source": src})
    return found


def op_histogram(module_or_graph, top: int = 15):
    """The most frequent node kinds in a TorchScript graph (pandas Series), to see what the trace recorded (notebook 01)."""
    import pandas as pd

    kinds = [n.kind() for n in _graph(module_or_graph).nodes()]
    return pd.Series(kinds).value_counts().head(top)


def dropout_nodes(module_or_graph):
    """Every ``aten::dropout`` node of a TorchScript graph: the module that called it, ``p`` and ``train`` (notebook 01).

    A trace records each ``F.dropout(x, p, training)`` call it ran, with ``training`` frozen as a constant: in an
    eval-mode trace it is ``False`` and the op returns its input. ``torch.jit.freeze`` folds such nodes away.
    """
    import pandas as pd

    rows = []
    for n in _graph(module_or_graph).nodes():
        if n.kind() != "aten::dropout":
            continue
        args = list(n.inputs())[1:3]
        p, train = (a.toIValue() if a.node().kind() == "prim::Constant" else "dynamic" for a in args)
        scope = n.scopeName().rsplit("/", 1)[-1].removeprefix("__module.") or "(top level)"
        rows.append({"called by": scope or "(model)", "p": p, "train": train})
    return pd.DataFrame(rows, columns=["called by", "p", "train"])


def export_shape_symbols(exported) -> dict[str, str]:
    """``{input name: shape}`` of a ``torch.export`` program's user inputs, with its symbolic dims (notebook 01)."""
    names = set(exported.graph_signature.user_inputs)
    return {n.name: str(tuple(n.meta["val"].shape)) for n in exported.graph.nodes
            if n.op == "placeholder" and n.name in names and "val" in n.meta}


def check_no_device_constants(module_or_graph) -> None:
    """Raise ``AssertionError`` naming each device constant (call before shipping a trace to multi-GPU Triton) (notebook 01)."""
    found = device_constants(module_or_graph)
    if found:
        lines = [f"  {d['device']} used by {d['used_by']} ({d['source'] or 'no source'})" for d in found]
        raise AssertionError(
            f"traced graph has {len(found)} baked device constant(s); it will create tensors on that device "
            "wherever it runs:\n" + "\n".join(lines)
        )


# ----------------------------------------------------------------------------------------------
# torch.export sidebar
# ----------------------------------------------------------------------------------------------


def try_export(model: nn.Module, example_inputs: tuple, max_seq: int = 128):
    """``torch.export.export`` with dynamic batch and sequence dims; returns (ExportedProgram | None, message) (notebook 01)."""
    from torch.export import Dim, export

    batch, seq = Dim("batch", min=1, max=1024), Dim("seq", min=2, max=max_seq)
    shapes = {"input_ids": {0: batch, 1: seq}, "token_type_ids": {0: batch, 1: seq},
              "attention_mask": {0: batch, 1: seq}}
    try:
        with torch.no_grad():
            ep = export(model.eval(), example_inputs, dynamic_shapes=shapes)
        return ep, "exported with dynamic batch and seq"
    except Exception as e:  # noqa: BLE001 - the sidebar shows whatever export says
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return None, f"torch.export failed: {type(e).__name__}: {first}"


# ----------------------------------------------------------------------------------------------
# Latency and the CUDA-binding demo
# ----------------------------------------------------------------------------------------------


def latency_compare(eager: nn.Module, traced, inputs_by_batch: dict, warmup: int = 3, repeat: int = 20,
                    device: str = "cpu"):
    """Eager vs traced latency at each batch size with :func:`course_lib.bench.benchmark`; (DataFrame, ratios) (notebook 01).

    ``ratios[b]`` is traced median / eager median at batch ``b`` (< 1: the trace is faster).
    """
    from course_lib import bench

    results, ratios = [], {}
    for b, inputs in inputs_by_batch.items():
        rs = {}
        for name, m in (("eager", eager), ("traced", traced)):
            def run(m=m):
                with torch.no_grad():
                    return m(*inputs)
            rs[name] = bench.benchmark(run, name=f"{name} bs{b}", items=b, unit="addr", warmup=warmup,
                                       repeat=repeat, device=device, extra={"mode": name, "batch": b})
            results.append(rs[name])
        ratios[b] = rs["traced"].median_s / rs["eager"].median_s
    frame = bench.to_frame(results)
    frame["times_ms"] = [[t * 1e3 for t in r.times_s] for r in results]  # every timed call: the spreads of a comparison
    return frame, ratios


def cuda_binding_demo(model: nn.Module, inputs: tuple) -> dict:
    """On a GPU machine: trace on ``cuda:0``, list the device constants, and run on the last GPU (notebook 01).

    Returns ``{"constants": [...], "ran_on": device, "error": str | None}``. With one GPU the run is on
    ``cuda:0`` (no mismatch possible); with two or more, a device-bound trace fails or computes on the wrong GPU.
    """
    import copy

    if not torch.cuda.is_available():
        raise RuntimeError("cuda_binding_demo needs a CUDA GPU")
    m0 = copy.deepcopy(model).to("cuda:0").eval()
    tr, _ = trace_model(m0, tuple(x.to("cuda:0") for x in inputs), check=False)
    last = f"cuda:{torch.cuda.device_count() - 1}"
    out = {"constants": device_constants(tr), "ran_on": last, "error": None}
    try:
        moved = tr.to(last)
        with torch.no_grad():
            moved(*(x.to(last) for x in inputs))
    except Exception as e:  # noqa: BLE001 - the point of the demo is to show this error
        out["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0]}"
    return out
