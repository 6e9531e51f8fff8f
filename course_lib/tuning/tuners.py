"""The four AutoTVM tuners, rebuilt over :class:`~course_lib.tuning.template.ConfigSpace`, plus real measurement.

Introduced in ``04_tvm_autotuning.ipynb`` (part 2). They mirror the removed ``tvm.autotvm.tuner`` classes
(``RandomTuner``, ``GridSearchTuner``, ``GATuner``, ``XGBTuner``) and their loop
``tuner.tune(n_trial, measure_option, callbacks=[log_to_file(...)])``:

* every tuner proposes a *batch* of config indices it has never measured (a config is never re-measured);
* :meth:`Tuner.tune` measures the batch (a callable ``measure(indices) -> scores``; higher is better, 0 = failed),
  feeds the scores back with :meth:`Tuner.update`, and appends one JSON line per trial to a records file;
* the best measured config is returned and can be replayed from the records (:func:`best_record`).

:class:`TemplateMeasurer` is the real measure function: build the template with ``tvm.compile``, check the result
against numpy, time it with TVM's ``time_evaluator`` and return GFLOP/s.
"""

from __future__ import annotations

import json
import math
import random
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from course_lib.tuning.template import ConfigSpace


@dataclass
class Trial:
    """One measured config: its flat index, the config, its score (GFLOP/s), the tuner and the trial number."""

    index: int
    config: dict
    score: float
    tuner: str
    n: int
    error: str = ""
    extra: dict = field(default_factory=dict)


class Tuner:
    """Base class: the propose → measure → update loop, the never-re-measure rule and the records file."""

    name = "base"

    def __init__(self, space: ConfigSpace, seed: int = 0):
        if len(space) == 0:
            raise ValueError("the config space is empty: define at least one knob")
        self.space = space
        self.rng = random.Random(seed)
        self.visited: set[int] = set()
        self.trials: list[Trial] = []

    # -- what subclasses implement -------------------------------------------------------------
    def next_batch(self, batch_size: int) -> list[int]:
        """Up to ``batch_size`` unvisited config indices to measure next."""
        raise NotImplementedError

    def update(self, indices: list[int], scores: list[float]) -> None:
        """Learn from measured scores (default: nothing)."""

    # -- shared helpers ------------------------------------------------------------------------
    def has_next(self) -> bool:
        """True while some config of the space has not been measured yet."""
        return len(self.visited) < len(self.space)

    def _random_unvisited(self, k: int, taken: set[int]) -> list[int]:
        out: list[int] = []
        n = len(self.space)
        free = n - len(self.visited) - len(taken)
        k = min(k, max(free, 0))
        if free <= 4 * k:  # small remainder: enumerate it
            pool = [i for i in range(n) if i not in self.visited and i not in taken]
            return self.rng.sample(pool, k)
        while len(out) < k:
            i = self.rng.randrange(n)
            if i not in self.visited and i not in taken and i not in out:
                out.append(i)
        return out

    @property
    def best(self) -> Trial | None:
        """The best trial measured so far (highest score), or None before any."""
        return max(self.trials, key=lambda t: t.score, default=None)

    def curve(self) -> list[float]:
        """Best score after each measurement (the tuning curve)."""
        out, best = [], 0.0
        for t in self.trials:
            best = max(best, t.score)
            out.append(best)
        return out

    def tune(
        self,
        measure: Callable[[list[int]], list[float]],
        n_trial: int,
        batch_size: int = 4,
        log_file: str | Path | None = None,
        verbose: bool = False,
    ) -> Trial:
        """Measure up to ``n_trial`` new configs in batches; write each trial to ``log_file`` (JSONL); return the best."""
        if n_trial < 1:
            raise ValueError(f"n_trial must be >= 1, got {n_trial}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        log = Path(log_file) if log_file else None
        if log:
            log.parent.mkdir(parents=True, exist_ok=True)
        while len(self.trials) < n_trial and self.has_next():
            want = min(batch_size, n_trial - len(self.trials))
            batch = [i for i in dict.fromkeys(self.next_batch(want)) if i not in self.visited][:want]
            if not batch:
                break
            self.visited.update(batch)
            scores = [float(s) for s in measure(batch)]
            if len(scores) != len(batch):
                raise RuntimeError(f"measure returned {len(scores)} scores for {len(batch)} configs")
            errors = getattr(measure, "last_errors", None) or [""] * len(batch)
            extras = getattr(measure, "last_extra", None) or [{}] * len(batch)
            for idx, s, err, ex in zip(batch, scores, errors, extras):
                t = Trial(idx, self.space.get(idx), s, self.name, len(self.trials) + 1, err, dict(ex))
                self.trials.append(t)
                if log:
                    with log.open("a", encoding="utf-8") as f:
                        f.write(json.dumps({**asdict(t), "time": time.time()}) + "\n")
            self.update(batch, scores)
            if verbose:
                b = self.best
                print(f"[{self.name}] {len(self.trials)}/{n_trial} trials, best {b.score:.2f} ({b.config})")
        if not self.trials:
            raise RuntimeError("no config was measured")
        return self.best


class RandomTuner(Tuner):
    """AutoTVM's RandomTuner: uniformly random configs, without replacement."""

    name = "random"

    def next_batch(self, batch_size: int) -> list[int]:
        return self._random_unvisited(batch_size, set())


class GridSearchTuner(Tuner):
    """AutoTVM's GridSearchTuner: configs in index order (the last knob varies fastest)."""

    name = "grid"

    def __init__(self, space: ConfigSpace, seed: int = 0):
        super().__init__(space, seed)
        self._next = 0

    def next_batch(self, batch_size: int) -> list[int]:
        out = []
        while len(out) < batch_size and self._next < len(self.space):
            if self._next not in self.visited:
                out.append(self._next)
            self._next += 1
        return out


class GATuner(Tuner):
    """AutoTVM's GATuner: a population of configs (genes = knob choices); selection ∝ score, crossover, mutation."""

    name = "ga"

    def __init__(self, space: ConfigSpace, seed: int = 0, pop_size: int = 8, elite_num: int = 2, mutation_prob: float = 0.15):
        super().__init__(space, seed)
        if elite_num > pop_size:
            raise ValueError("elite_num must be <= pop_size")
        self.pop_size, self.elite_num, self.mutation_prob = pop_size, elite_num, mutation_prob
        self.scores: dict[int, float] = {}

    def _child(self, parents: list[int], weights: list[float]) -> int:
        a, b = self.rng.choices(parents, weights=weights, k=2)
        ga, gb = self.space.genes(a), self.space.genes(b)
        child = [x if self.rng.random() < 0.5 else y for x, y in zip(ga, gb)]  # uniform crossover
        for d, dim in enumerate(self.space.dims):
            if self.rng.random() < self.mutation_prob:
                child[d] = self.rng.randrange(dim)
        return self.space.index(child)

    def next_batch(self, batch_size: int) -> list[int]:
        if len(self.scores) < self.pop_size:  # first generation: random
            return self._random_unvisited(batch_size, set())
        ranked = sorted(self.scores, key=self.scores.get, reverse=True)
        parents = ranked[: self.pop_size]
        top = self.scores[parents[0]] or 1.0
        weights = [max(self.scores[p], 0.0) / top + 1e-3 for p in parents]
        out: list[int] = []
        for _ in range(200 * batch_size):
            if len(out) == batch_size:
                break
            c = self._child(parents, weights)
            if c not in self.visited and c not in out:
                out.append(c)
        if len(out) < batch_size:  # the population converged: top up with random configs
            out += self._random_unvisited(batch_size - len(out), set(out))
        return out

    def update(self, indices: list[int], scores: list[float]) -> None:
        self.scores.update(zip(indices, scores))


def _xgboost():
    try:
        import xgboost

        return xgboost
    except ImportError:
        return None


class XGBTuner(Tuner):
    """AutoTVM's XGBTuner: fit a cost model (XGBoost) on measured configs, rank unmeasured ones, measure the top batch.

    Candidates = ``pool_size`` random unmeasured configs + neighbours (one knob changed) of the best measured ones;
    ``eps_greedy`` of each batch stays random for exploration. Without xgboost it falls back to random ranking and
    says so (``self.fallback_message``).
    """

    name = "xgb"

    def __init__(self, space: ConfigSpace, seed: int = 0, pool_size: int = 512, eps_greedy: float = 0.1, min_train: int = 8):
        super().__init__(space, seed)
        self.pool_size, self.eps_greedy, self.min_train = pool_size, eps_greedy, min_train
        self.xs: list[np.ndarray] = []
        self.ys: list[float] = []
        self.model = None
        self.xgb = _xgboost()
        self.fallback_message = ""
        if self.xgb is None:
            self.fallback_message = (
                "XGBTuner: xgboost is not installed, so the cost model falls back to random ranking "
                "(pip install xgboost-cpu, part of the 'tvm' extra)"
            )
            warnings.warn(self.fallback_message, RuntimeWarning, stacklevel=2)
            print(self.fallback_message)

    def _neighbours(self, index: int) -> list[int]:
        g = self.space.genes(index)
        out = []
        for d, dim in enumerate(self.space.dims):
            for v in range(dim):
                if v != g[d]:
                    h = list(g)
                    h[d] = v
                    out.append(self.space.index(h))
        return out

    def next_batch(self, batch_size: int) -> list[int]:
        if self.model is None or len(self.ys) < self.min_train:
            return self._random_unvisited(batch_size, set())
        n_rand = max(0, int(round(batch_size * self.eps_greedy)))
        pool = set(self._random_unvisited(min(self.pool_size, len(self.space) - len(self.visited)), set()))
        for t in sorted(self.trials, key=lambda t: t.score, reverse=True)[:4]:
            pool.update(i for i in self._neighbours(t.index) if i not in self.visited)
        pool = sorted(pool)
        if not pool:
            return []
        preds = self.model.predict(np.stack([self.space.features(i) for i in pool]))
        ranked = [pool[i] for i in np.argsort(-preds, kind="stable")]
        out = ranked[: batch_size - n_rand]
        out += self._random_unvisited(batch_size - len(out), set(out))
        return out

    def update(self, indices: list[int], scores: list[float]) -> None:
        for i, s in zip(indices, scores):
            self.xs.append(self.space.features(i))
            self.ys.append(s)
        if self.xgb is None or len(self.ys) < self.min_train:
            return
        y = np.asarray(self.ys, dtype=np.float32)
        y = y / (y.max() or 1.0)  # AutoTVM normalises throughputs to [0, 1]
        self.model = self.xgb.XGBRegressor(
            n_estimators=60, max_depth=4, learning_rate=0.3, subsample=1.0, random_state=0, n_jobs=1, verbosity=0
        )
        self.model.fit(np.stack(self.xs), y)


TUNERS = {"random": RandomTuner, "grid": GridSearchTuner, "ga": GATuner, "xgb": XGBTuner}


def make_tuner(name: str, space: ConfigSpace, seed: int = 0, **kwargs) -> Tuner:
    """A tuner by its AutoTVM short name: ``random``, ``grid``, ``ga`` or ``xgb``."""
    if name not in TUNERS:
        raise ValueError(f"unknown tuner {name!r}; choose from {', '.join(TUNERS)}")
    return TUNERS[name](space, seed=seed, **kwargs)


# --------------------------------------------------------------------------------------------
# Records (AutoTVM's log_to_file / apply_history_best)
# --------------------------------------------------------------------------------------------


def load_records(path: str | Path) -> list[dict]:
    """Every trial of a JSONL records file, as dicts; a malformed line raises ValueError with its number."""
    rows = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {n} is not valid JSON ({e.msg})") from None
    return rows


def best_record(path: str | Path, tuner: str | None = None) -> dict:
    """The best trial in a records file (optionally of one tuner) — AutoTVM's ``apply_history_best``."""
    rows = [r for r in load_records(path) if tuner is None or r["tuner"] == tuner]
    if not rows:
        raise ValueError(f"no records{' for tuner ' + tuner if tuner else ''} in {path}")
    return max(rows, key=lambda r: r["score"])


# --------------------------------------------------------------------------------------------
# Real measurement with TVM
# --------------------------------------------------------------------------------------------


def error_line(e: BaseException, width: int = 200) -> str:
    """``"Type: first non-empty line of the message"`` (numpy's assertion messages start with an empty line)."""
    first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
    return f"{type(e).__name__}: {first[:width]}" if first else type(e).__name__


class TemplateMeasurer:
    """``measure(indices) -> GFLOP/s``: build each config of the matmul template, check it vs numpy, time it.

    Results are cached by index, so even two tuners sharing one measurer never time a config twice;
    ``self.count`` counts real builds. Failed builds or wrong results score 0 (the error is kept).
    """

    def __init__(self, space: ConfigSpace, n: int, l: int, m: int, number: int = 1, repeat: int = 3, target=None, seed: int = 0):
        from course_lib.tuning.common import host_target
        from course_lib.tuning.matmul import make_data, matmul_module

        self.space, self.shape = space, (n, l, m)
        self.number, self.repeat = number, repeat
        self.target = target or host_target()
        self.mod = matmul_module(n, l, m)
        self.data = make_data(n, l, m, seed=seed)
        self.cache: dict[int, tuple[float, str, dict]] = {}
        self.count = 0
        self.last_errors: list[str] = []
        self.last_extra: list[dict] = []

    def measure_one(self, index: int) -> tuple[float, str, dict]:
        """(GFLOP/s, error, extras) for one config index; built and timed only the first time it is asked for."""
        from course_lib.tuning.matmul import build, gflops, gflops_of, run_and_check
        from course_lib.tuning.template import matmul_template

        if index in self.cache:
            return self.cache[index]
        self.count += 1
        t0 = time.perf_counter()
        try:
            sch = matmul_template(self.space.get(index), *self.shape, mod=self.mod)
            lib = build(sch, self.target)
            t1 = time.perf_counter()
            run_and_check(lib, self.data)
            res = gflops_of(lib, self.data, number=self.number, repeat=self.repeat)
            out = (gflops(res), "", {"median_ms": res.median_ms, "build_s": t1 - t0})
        except Exception as e:  # a config that does not build or computes the wrong thing scores 0
            out = (0.0, error_line(e), {})
        self.cache[index] = out
        return out

    def __call__(self, indices: list[int]) -> list[float]:
        results = [self.measure_one(i) for i in indices]
        self.last_errors = [r[1] for r in results]
        self.last_extra = [r[2] for r in results]
        return [r[0] for r in results]


# --------------------------------------------------------------------------------------------
# A synthetic cost function with a known optimum (tests and the notebook's "search logic" demo)
# --------------------------------------------------------------------------------------------


class SyntheticCost:
    """A smooth score over a space with one known optimum (score 1.0 there); counts calls. No timing involved."""

    def __init__(self, space: ConfigSpace, seed: int = 0, width: float = 0.35):
        rng = random.Random(seed)
        self.space = space
        self.optimum = [rng.randrange(d) for d in space.dims]
        self.width = width
        self.calls = 0
        self.seen: list[int] = []

    def score(self, index: int) -> float:
        g = self.space.genes(index)
        d2 = sum(((a - b) / max(d - 1, 1)) ** 2 for a, b, d in zip(g, self.optimum, self.space.dims))
        return math.exp(-d2 / self.width**2)

    @property
    def best_index(self) -> int:
        return self.space.index(self.optimum)

    def __call__(self, indices: list[int]) -> list[float]:
        self.calls += len(indices)
        self.seen += list(indices)
        return [self.score(i) for i in indices]
