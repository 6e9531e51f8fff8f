"""``report.json`` / ``report.md``: one entry per notebook (or per ``gpu-check`` step), and the machine they ran on.

``report.json`` has a fixed schema that the lessons' checks and the course book read::

    {"profile": "cpu", "started": "...", "machine": {"summary": "...", "arch": "x86_64", ...},
     "notebooks": {"00_environment": {"status": "ok", "seconds": 25.1, "error": null, "skip_reason": null,
                                      "metrics": {...}, "exercises": {...}}}}

Other commands with the same shape of result (``course gpu-check``) write theirs with :func:`write_reports`
and a :class:`Layout` (their own title, header lines, row label and extra sections).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class NotebookResult:
    """What one executed notebook (or one ``gpu-check`` step) gave: status, wall time, metrics, notes."""

    status: str  # ok | failed | skipped
    seconds: float
    error: str | None = None
    skip_reason: str | None = None
    metrics: dict = field(default_factory=dict)
    skipped_sections: list[str] = field(default_factory=list)
    exercises: dict = field(default_factory=dict)  # total / passed / failed / not_attempted

    def as_json(self) -> dict:  # the schema later lessons rely on (``exercises`` added by the exercise layer)
        return {
            "status": self.status,
            "seconds": round(self.seconds, 3),
            "error": self.error,
            "skip_reason": self.skip_reason,
            "metrics": self.metrics,
            "exercises": self.exercises,
        }


@dataclass(frozen=True)
class Layout:
    """How ``report.md`` is laid out: the course run's by default; ``gpu-check`` passes its own.

    ``header`` lines are added as bullets under the title; ``sections`` are ``(heading, lines)`` pairs
    appended at the end (each line a Markdown line, e.g. ``"- `l0.torch_cuda`: ..."``).
    """

    title: str = "Course run report"
    item: str = "notebook"  # the first column's heading
    notes_heading: str = "Skipped sections"  # the per-item list under its metrics
    header: tuple[str, ...] = ()
    sections: tuple[tuple[str, tuple[str, ...]], ...] = ()


def exercise_counts(total: int, outcomes: dict[str, str]) -> dict:
    """Per-notebook exercise summary from the checks' outcomes (unchecked ones count as not attempted)."""
    passed = sum(1 for v in outcomes.values() if v == "passed")
    failed = sum(1 for v in outcomes.values() if v == "failed")
    return {"total": total, "passed": passed, "failed": failed, "not_attempted": max(0, total - passed - failed)}


def last_line(text) -> str:
    """The last non-blank line of a message (an exception's last line usually says why)."""
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file: a reader never sees half a report."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def machine() -> dict:
    """The machine a run came from: ``hw.summary_line()`` plus the CPU's features when ``hw`` can read them.

    ``{"summary": "python ... · torch ...", "arch": "x86_64", "vendor": "...", "model": "...", "isa": [...],
    "torch_capability": "AVX512"}``: the last is the kernel path ATen runs here, which ``ATEN_CPU_CAPABILITY`` can
    lower (``make test-kernel-paths``). The CPU keys are absent where ``hw.cpu_features`` is not available (or fails:
    then ``"cpu_error"`` says why).
    """
    from course_lib import hw

    entry: dict = {"summary": hw.summary_line()}
    features = getattr(hw, "cpu_features", None)
    if callable(features):
        try:
            f = dict(features())
            entry.update({k: f.get(k) for k in ("arch", "vendor", "model")})
            entry["isa"] = [str(x) for x in f.get("isa") or []]
            if f.get("torch_capability"):
                entry["torch_capability"] = str(f["torch_capability"])
        except Exception as e:  # noqa: BLE001 - the report never fails because of its header
            entry["cpu_error"] = f"{type(e).__name__}: {last_line(e)}"
    return entry


def cpu_line(entry: dict | None) -> str | None:
    """One line for a machine entry's CPU: ``model (vendor, arch) · ISA: avx2, avx512f, ... · torch kernels: AVX512``
    (None if unknown)."""
    if not isinstance(entry, dict) or not entry.get("model"):
        return None
    where = ", ".join(str(entry[k]) for k in ("vendor", "arch") if entry.get(k))
    isa = ", ".join(entry.get("isa") or []) or "none of the listed extensions"
    torch_path = f" · torch kernels: {entry['torch_capability']}" if entry.get("torch_capability") else ""
    return f"{entry['model']}" + (f" ({where})" if where else "") + f" · ISA: {isa}" + torch_path


def write_reports(out: Path, profile: str, started: str, results: dict[str, NotebookResult],
                  layout: Layout | None = None, machine_entry: dict | None = None) -> dict:
    """Write ``report.json`` (the fixed schema) and ``report.md`` atomically; return the report dict."""
    doc = {
        "profile": profile,
        "started": started,
        "machine": machine_entry if machine_entry is not None else machine(),
        "notebooks": {stem: r.as_json() for stem, r in results.items()},
    }
    atomic_write(out / "report.json", json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    atomic_write(out / "report.md", render_markdown(doc, results, layout))
    return doc


def render_markdown(doc: dict, results: dict[str, NotebookResult], layout: Layout | None = None) -> str:
    """``report.md``: header, one table row per item, then each item's metrics and notes, then extra sections."""
    lay = layout or Layout()
    icon = {"ok": "✅ ok", "failed": "❌ failed", "skipped": "⏭ skipped"}
    mach = doc.get("machine") or {}
    lines = [f"# {lay.title}", "", f"- profile: **{doc['profile']}**", f"- started: {doc['started']}"]
    lines.append(f"- machine: {mach.get('summary', '?')}")
    cpu = cpu_line(mach)
    if cpu:
        lines.append(f"- cpu: {cpu}")
    lines += [f"- {h}" for h in lay.header]
    lines += [
        "",
        f"| {lay.item} | status | seconds | metrics | exercises passed | error / skip reason |",
        "|---|---|---:|---:|---:|---|",
    ]
    for stem, r in results.items():
        why = (r.error or r.skip_reason or "").replace("|", "\\|")
        ex = f"{r.exercises.get('passed', 0)} / {r.exercises['total']}" if r.exercises.get("total") else "—"
        lines.append(f"| {stem} | {icon[r.status]} | {r.seconds:.1f} | {len(r.metrics)} | {ex} | {why} |")
    for stem, r in results.items():
        if not (r.metrics or r.skipped_sections):
            continue
        lines += ["", f"## {stem}", ""]
        if r.metrics:
            lines += ["| metric | value | unit |", "|---|---:|---|"]
            lines += [f"| {k} | {v['value']:.6g} | {v['unit']} |" for k, v in r.metrics.items()]
        if r.skipped_sections:
            lines += ["", f"{lay.notes_heading}:", ""] + [f"- {s}" for s in r.skipped_sections]
    for heading, body in lay.sections:
        lines += ["", f"## {heading}", ""] + list(body)
    return "\n".join(lines) + "\n"
