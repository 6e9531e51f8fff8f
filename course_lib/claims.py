"""Sentences that compare two measurements, written from their spreads — and recorded so a test can audit them.

A lesson never writes "A is faster than B" by hand: timings on a shared machine move from run to run, so a
direction is stated only when the two p10–p90 spreads do not overlap, and otherwise the sentence says the two
are not separable here::

    from course_lib import claims
    c = claims.compare("the trace", traced_ms, "eager", eager_ms, higher_is_better=False,
                       quantity="latency", unit="ms", better="faster", worse="slower")
    display(Markdown(f"At batch 8 {c}."))      # str(c) is the sentence

Each claim is kept in memory (:func:`recorded`) and, under the ``course`` runner, written to a side file next to
the run's metrics (``.<notebook>.claims.json`` in the run folder), which ``tests/test_notebook_claims.py`` reads
after a course run: it fails if a claim states a direction its recorded spreads do not separate, or if the
sentence is not in the executed notebook. Introduced in ``01_torchscript_triton.ipynb``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

from course_lib import bench, report

SUFFIX = ".claims.json"
HIGHER, LOWER, NONE = "a_higher", "a_lower", "not_separable"

_claims: list[dict] = []


@dataclass
class Claim:
    """One comparison of A with B: both spreads, the direction stated, and the sentence shown to the reader."""

    a: str
    b: str
    a_p10: float
    a_p50: float
    a_p90: float
    b_p10: float
    b_p50: float
    b_p90: float
    n_a: int | None
    n_b: int | None
    higher_is_better: bool
    quantity: str
    unit: str
    direction: str  # a_higher | a_lower | not_separable: the direction the sentence states, in values
    sentence: str

    def __str__(self) -> str:
        return self.sentence

    def _repr_markdown_(self) -> str:
        return self.sentence

    @property
    def separated(self) -> bool:
        return self.direction != NONE

    @property
    def a_better(self) -> bool:
        """True when the sentence says A is better (faster, more accurate ...) than B."""
        return self.direction == (HIGHER if self.higher_is_better else LOWER)


def spread(samples: Iterable[float]) -> tuple[float, float, float]:
    """(p10, p50, p90) of the samples (linear interpolation, as :func:`course_lib.bench.percentile`)."""
    xs = [float(v) for v in samples]
    if not xs:
        raise ValueError("a spread needs at least one sample")
    if not all(math.isfinite(v) for v in xs):
        raise ValueError(f"samples must be finite numbers, got {xs}")
    return bench.percentile(xs, 10), bench.percentile(xs, 50), bench.percentile(xs, 90)


def separation(a: Sequence[float], b: Sequence[float]) -> str:
    """a_higher / a_lower when the (p10, p90) ranges ``a`` and ``b`` are disjoint, else not_separable."""
    (a_lo, a_hi), (b_lo, b_hi) = (a[0], a[-1]), (b[0], b[-1])
    if a_lo > b_hi:
        return HIGHER
    if a_hi < b_lo:
        return LOWER
    return NONE


def _num(v: float, fmt: str) -> str:
    return format(v, fmt)


def compare(name_a: str, samples_a: Iterable[float], name_b: str, samples_b: Iterable[float], *,
            higher_is_better: bool = True, quantity: str = "", unit: str = "", better: str = "better",
            worse: str = "worse", fmt: str = ".1f", record: bool = True) -> Claim:
    """Compare two sets of measurements; a direction is stated only when their p10–p90 ranges are disjoint.

    ``better`` / ``worse`` are the words for A against B ("faster" / "slower"); ``higher_is_better`` says which way
    round the values mean better (QPS: True, latency: False). One sample per side never states a direction (no spread).
    """
    xs_a, xs_b = list(samples_a), list(samples_b)
    sa, sb = spread(xs_a), spread(xs_b)
    claim = _make(name_a, sa, len(xs_a), name_b, sb, len(xs_b), higher_is_better, quantity, unit, better, worse, fmt)
    if record:
        _record(claim)
    return claim


def compare_spreads(name_a: str, a: Sequence[float], name_b: str, b: Sequence[float], *, n_a: int | None = None,
                    n_b: int | None = None, higher_is_better: bool = True, quantity: str = "", unit: str = "",
                    better: str = "better", worse: str = "worse", fmt: str = ".1f", record: bool = True) -> Claim:
    """:func:`compare` from summaries already computed: ``a`` and ``b`` are (p10, p50, p90) (or (p10, p90))."""
    sa, sb = _triple(a), _triple(b)
    claim = _make(name_a, sa, n_a, name_b, sb, n_b, higher_is_better, quantity, unit, better, worse, fmt)
    if record:
        _record(claim)
    return claim


def _triple(s: Sequence[float]) -> tuple[float, float, float]:
    vals = [float(v) for v in s]
    if len(vals) == 2:
        vals = [vals[0], (vals[0] + vals[1]) / 2, vals[1]]
    if len(vals) != 3 or not all(math.isfinite(v) for v in vals) or not vals[0] <= vals[2]:
        raise ValueError(f"a spread is (p10, p50, p90) with p10 <= p90, got {tuple(s)}")
    # a pooled or derived centre may fall just outside its percentiles: only the range is audited
    return vals[0], min(max(vals[1], vals[0]), vals[2]), vals[2]


def _make(name_a, sa, n_a, name_b, sb, n_b, higher_is_better, quantity, unit, better, worse, fmt) -> Claim:
    direction = separation((sa[0], sa[2]), (sb[0], sb[2]))
    if (n_a is not None and n_a < 2) or (n_b is not None and n_b < 2):
        direction = NONE  # a single sample has no spread: nothing to separate
    u = f" {unit}" if unit else ""
    what = f"{quantity} " if quantity else ""
    ranges = (f"{what}p10–p90 {_num(sa[0], fmt)}–{_num(sa[2], fmt)} vs "
              f"{_num(sb[0], fmt)}–{_num(sb[2], fmt)}{u}")
    if direction == NONE:
        sentence = f"{name_a} and {name_b} are not separable here ({ranges}: the spreads overlap)"
    else:
        a_better = direction == (HIGHER if higher_is_better else LOWER)
        sentence = f"{name_a} was {better if a_better else worse} than {name_b} here ({ranges})"
    return Claim(name_a, name_b, *sa, *sb, n_a, n_b, bool(higher_is_better), quantity, unit, direction, sentence)


def audit(claim: dict | Claim) -> str | None:
    """Why a recorded claim is wrong (a direction its spreads do not separate, a bad record), or None if it holds."""
    c = asdict(claim) if isinstance(claim, Claim) else dict(claim)
    try:
        a = (float(c["a_p10"]), float(c["a_p90"]))
        b = (float(c["b_p10"]), float(c["b_p90"]))
        direction = c["direction"]
    except (KeyError, TypeError, ValueError) as e:
        return f"malformed claim record ({e!r}): {c}"
    label = f"{c.get('a')!r} vs {c.get('b')!r}"
    if direction not in (HIGHER, LOWER, NONE):
        return f"{label}: unknown direction {direction!r}"
    if a[0] > a[1] or b[0] > b[1]:
        return f"{label}: p10 above p90 in {a} / {b}"
    if direction == NONE:
        return None
    if any(n is not None and n < 2 for n in (c.get("n_a"), c.get("n_b"))):
        return f"{label}: states {direction} from a single sample (no spread)"
    holds = a[0] > b[1] if direction == HIGHER else a[1] < b[0]
    if not holds:
        return (f"{label}: states {direction} but the p10–p90 ranges {a[0]:g}–{a[1]:g} and {b[0]:g}–{b[1]:g} overlap "
                f"— {c.get('sentence', '')!r}")
    return None


def recorded() -> list[dict]:
    """The claims made in this process so far (dicts, as written to the side file)."""
    return [dict(c) for c in _claims]


def side_file() -> Path | None:
    """``.<notebook>.claims.json`` next to the runner's metrics side file, or None outside the runner."""
    metrics = os.environ.get(report.ENV_VAR)
    if not metrics:
        return None
    p = Path(metrics)
    name = p.name[: -len(".metrics.json")] if p.name.endswith(".metrics.json") else p.stem
    return p.with_name(name + SUFFIX)


def record(claim: Claim) -> Claim:
    """Keep ``claim`` for the audit (and, under the runner, in the run's side file); returns it."""
    _record(claim)
    return claim


def shown(claim: Claim, sentence: str) -> Claim:
    """Record ``claim`` with the sentence the reader is shown instead of its default wording; returns it.

    For helpers that phrase a comparison their own way (e.g. ``tuning.matmul.compare``): the direction still
    comes from :func:`separation`, and the audit still finds ``sentence`` in the executed notebook.
    """
    from dataclasses import replace

    return record(replace(claim, sentence=sentence))


def worded(claim: Claim, higher: str, lower: str, none: str) -> str:
    """The caller's own sentence for each direction (A higher / A lower / not separable), picked by the claim's
    direction and recorded with :func:`shown`; returns the sentence."""
    text = {HIGHER: higher, LOWER: lower, NONE: none}[claim.direction]
    shown(claim, text)
    return text


def compare_results(a, b, *, record: bool = True) -> Claim:
    """Compare two :class:`course_lib.bench.BenchResult` by per-call latency (lower is better); see :func:`compare`.

    ``"x @ x was faster than torch.mm here (latency p10–p90 1.10–1.20 vs 2.90–3.10 ms)"``, or "… are not separable
    here (…: the spreads overlap)". Timings on a shared machine move; a direction read from overlapping spreads
    would not survive another run.
    """
    ms_a = [t * 1e3 for t in a.times_s]
    ms_b = [t * 1e3 for t in b.times_s]
    return compare(a.name, ms_a, b.name, ms_b, higher_is_better=False, quantity="latency", unit="ms",
                   better="faster", worse="slower", fmt=".3g", record=record)


def _record(claim: Claim) -> None:
    _claims.append(asdict(claim))
    path = side_file()
    if path is None:
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({"claims": _claims}, indent=1, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)


def read_side_file(path: str | os.PathLike) -> list[dict]:
    """The claims a notebook recorded (empty if it recorded none)."""
    p = Path(path)
    return list(json.loads(p.read_text(encoding="utf-8")).get("claims", [])) if p.exists() else []
