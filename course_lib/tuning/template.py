"""AutoTVM's idea rebuilt small: a *config space* of knobs and a *template* mapping a config to a schedule.

Introduced in ``04_tvm_autotuning.ipynb`` (part 2). AutoTVM (no longer in TVM: it went with Relay) let you
write ``cfg.define_split("tile_y", y, num_outputs=2)`` / ``cfg.define_knob("order", [...])`` inside a
``@autotvm.template`` function and then applied ``cfg["tile_y"].apply(s, C, y)``. :class:`ConfigSpace` keeps
that vocabulary (``define_split`` with the policies ``"factors"`` / ``"power2"`` / ``"candidate"``,
``define_knob``, a flat index ↔ config mapping, ``len(space)``), and :func:`matmul_template` applies a config
with today's ``tvm.s_tir.Schedule``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from course_lib.tuning.matmul import check_divisible, matmul_module


@dataclass
class Knob:
    """One tunable decision: its name, its kind (``split`` or ``other``) and the list of allowed values."""

    name: str
    kind: str
    choices: list
    extent: int | None = None

    def __len__(self) -> int:
        return len(self.choices)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@dataclass
class ConfigSpace:
    """A product of knobs, enumerated in mixed radix (the last knob varies fastest), like AutoTVM's space."""

    knobs: dict[str, Knob] = field(default_factory=dict)

    # -- building the space (AutoTVM's define_* vocabulary) ------------------------------------
    def define_split(
        self,
        name: str,
        extent: int,
        policy: str = "factors",
        candidates: list[int] | None = None,
        max_factor: int | None = None,
    ) -> Knob:
        """A 2-way split of a loop of ``extent``: the inner tile factor (outer = extent // inner).

        ``policy``: ``"factors"`` (every divisor), ``"power2"`` (powers of two that divide ``extent``) or
        ``"candidate"`` (your list; a factor that does not divide ``extent`` is rejected with a clear error).
        """
        if not isinstance(extent, int) or extent < 1:
            raise ValueError(f"define_split({name!r}): extent must be a positive integer, got {extent!r}")
        if policy == "factors":
            choices = _divisors(extent)
        elif policy == "power2":
            choices = [d for d in _divisors(extent) if d & (d - 1) == 0]
        elif policy == "candidate":
            if not candidates:
                raise ValueError(f"define_split({name!r}, policy='candidate') needs a non-empty candidates list")
            for c in candidates:
                check_divisible(extent, c, f"define_split({name!r})")
            choices = list(dict.fromkeys(int(c) for c in candidates))
        else:
            raise ValueError(f"define_split({name!r}): unknown policy {policy!r} (factors, power2, candidate)")
        if max_factor is not None:
            choices = [c for c in choices if c <= max_factor]
        return self._add(Knob(name, "split", choices, extent))

    def define_knob(self, name: str, choices: list) -> Knob:
        """A categorical knob (loop order, on/off switches): one of ``choices``."""
        if not choices:
            raise ValueError(f"define_knob({name!r}) needs at least one choice")
        return self._add(Knob(name, "other", list(choices)))

    def _add(self, knob: Knob) -> Knob:
        if knob.name in self.knobs:
            raise ValueError(f"knob {knob.name!r} is defined twice")
        self.knobs[knob.name] = knob
        return knob

    # -- enumerating ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return math.prod(len(k) for k in self.knobs.values()) if self.knobs else 0

    @property
    def dims(self) -> list[int]:
        """Number of choices of each knob, in definition order."""
        return [len(k) for k in self.knobs.values()]

    def genes(self, index: int) -> list[int]:
        """The choice index of every knob for the flat config ``index`` (mixed radix)."""
        if not 0 <= index < len(self):
            raise IndexError(f"config index {index} outside the space of {len(self)} configs")
        out = []
        for d in reversed(self.dims):
            out.append(index % d)
            index //= d
        return out[::-1]

    def index(self, genes: list[int]) -> int:
        """The flat index of a list of per-knob choice indices (inverse of :meth:`genes`)."""
        idx = 0
        for g, d in zip(genes, self.dims, strict=True):
            if not 0 <= g < d:
                raise IndexError(f"choice {g} outside 0..{d - 1}")
            idx = idx * d + int(g)
        return idx

    def get(self, index: int) -> dict:
        """The config (``{knob name: value}``) at flat ``index``."""
        return {k.name: k.choices[g] for k, g in zip(self.knobs.values(), self.genes(index))}

    def index_of(self, config: dict) -> int:
        """The flat index of a config dict (e.g. one read back from a records file)."""
        genes = []
        for k in self.knobs.values():
            if k.name not in config:
                raise KeyError(f"config lacks knob {k.name!r}")
            try:
                genes.append(k.choices.index(config[k.name]))
            except ValueError:
                raise ValueError(f"{config[k.name]!r} is not a choice of knob {k.name!r} ({k.choices})") from None
        return self.index(genes)

    def features(self, index: int) -> np.ndarray:
        """A numeric feature vector for cost models: log2 of split factors, the choice index of other knobs."""
        cfg = self.get(index)
        feats = []
        for k in self.knobs.values():
            v = cfg[k.name]
            if k.kind == "split":
                feats += [math.log2(v), math.log2(k.extent // v)]
            elif isinstance(v, (bool, int, float)) and not isinstance(v, str):
                feats.append(float(v))
            else:
                feats.append(float(k.choices.index(v)))
        return np.asarray(feats, dtype=np.float32)

    def __iter__(self):
        return iter(range(len(self)))

    def __repr__(self) -> str:
        knobs = ", ".join(f"{k.name}[{len(k)}]" for k in self.knobs.values())
        return f"ConfigSpace({len(self):,} configs: {knobs})"


# Loop orders the template may choose (io, jo always outermost so a C tile can be accumulated in a local buffer)
ORDERS = {
    "ko,ki,ii,ji": ("io", "jo", "ko", "ki", "ii", "ji"),  # the seed's i.o, j.o, k, i.i, j.i (when tile_k = K)
    "ko,ii,ki,ji": ("io", "jo", "ko", "ii", "ki", "ji"),
    "ii,ko,ki,ji": ("io", "jo", "ii", "ko", "ki", "ji"),
}


def matmul_space(n: int = 512, l: int = 512, m: int = 512, policy: str = "factors") -> ConfigSpace:
    """The lesson's matmul config space: tile_y/tile_x/tile_k splits, loop order, cache_write/unroll/vectorise/parallel."""
    cfg = ConfigSpace()
    cfg.define_split("tile_y", n, policy=policy, max_factor=64)
    cfg.define_split("tile_x", m, policy="power2")
    cfg.define_split("tile_k", l, policy=policy)
    cfg.define_knob("order", list(ORDERS))
    cfg.define_knob("cache_write", [0, 1])
    cfg.define_knob("unroll", [0, 1])
    cfg.define_knob("vectorize", [0, 1])
    cfg.define_knob("parallel", [0, 1])
    return cfg


def matmul_template(config: dict, n: int = 512, l: int = 512, m: int = 512, mod=None):
    """Apply one config to C = A·B and return the ``s_tir.Schedule`` (AutoTVM's template body, on today's TVM).

    Non-divisible tile factors are rejected with a ValueError (the template only makes perfect tiles).
    Unrolling is applied only to loops of extent ≤ 64 (longer ones would only bloat the code).
    """
    from tvm import s_tir

    mod = mod if mod is not None else matmul_module(n, l, m)
    sch = s_tir.Schedule(mod)
    block = sch.get_sblock("C")
    i, j, k = sch.get_loops(block)
    ty, tx, tk = config["tile_y"], config["tile_x"], config["tile_k"]
    check_divisible(n, ty, "tile_y")
    check_divisible(m, tx, "tile_x")
    check_divisible(l, tk, "tile_k")
    if config["order"] not in ORDERS:
        raise ValueError(f"unknown loop order {config['order']!r}; choose from {list(ORDERS)}")
    loops = {}
    loops["io"], loops["ii"] = sch.split(i, factors=[None, ty])
    loops["jo"], loops["ji"] = sch.split(j, factors=[None, tx])
    loops["ko"], loops["ki"] = sch.split(k, factors=[None, tk])
    order = [loops[name] for name in ORDERS[config["order"]]]
    sch.reorder(*order)
    if config["cache_write"]:  # accumulate a ty×tx tile of C in a small buffer, write it back once
        cw = sch.cache_write(block, 0, "global")
        sch.reverse_compute_at(cw, loops["jo"])
        if config["vectorize"]:
            vectorize_own_inner_loop(sch, cw)
    if config["unroll"]:
        second = order[-2]
        if int(sch.get(second).extent) <= 64:
            sch.unroll(second)
    if config["vectorize"]:
        sch.vectorize(loops["ji"])
    if config["parallel"]:
        sch.parallel(loops["io"])
    # zero the accumulator once, outside the k loops (after the annotations: they need the reduction block whole)
    init = sch.decompose_reduction(block, loops["ko"])
    if config["vectorize"]:
        vectorize_own_inner_loop(sch, init)
    return sch


def vectorize_own_inner_loop(sch, block) -> bool:
    """Vectorise the innermost loop around ``block`` only if that loop holds ``block`` alone; True if it did.

    ``cache_write``/``decompose_reduction`` create loops only for extents > 1: with a 1×1 tile the write-back (or
    zeroing) block sits directly under ``j.outer``, the loop that also holds the whole reduction. Vectorising that loop
    would turn the accumulation into a wrong SIMD computation, so a loop shared with another block is left alone.
    """
    loops = sch.get_loops(block)
    if not loops or len(sch.get_child_blocks(loops[-1])) != 1:
        return False
    sch.vectorize(loops[-1])
    return True
