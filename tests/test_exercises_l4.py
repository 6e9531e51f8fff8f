"""Lesson 4 exercises: every solution passes, the blank starters are "not attempted", typical wrong answers fail
with a message that names the mistake."""

from __future__ import annotations

import pytest
from conftest import ROOT, require_extra

tvm = require_extra("tvm", "tvm")

import tvm.s_tir  # noqa: E402

from course_lib import exercises  # noqa: E402
from course_lib.exercises import l4  # noqa: E402
from course_lib.tuning import tuners  # noqa: E402

N = L = M = 512
SOLUTIONS = exercises.load_solutions(ROOT / "solutions" / "04_tvm_autotuning.py")
IDS = ["04.matmul_flops", "04.cache_write", "04.greedy_next_batch", "04.budget"]
CURVE = [0.2, 0.5, 0.5, 0.91, 0.97, 0.97]


def _solved(id: str, **extra) -> dict:
    ns = {"N": N, "L": L, "M": M, "tvm": tvm, "tuners": tuners, "budget_curve": CURVE, **extra}
    exec(SOLUTIONS[id], ns)  # noqa: S102 - the repository's own solution file
    return ns


def _fail(id: str, *args, match: str, **kwargs):
    with pytest.raises(exercises.ExerciseFailed, match=match):
        exercises.lookup(id).fn(*args, **kwargs)


def test_lesson_has_four_exercises_of_every_kind_and_a_solution_each():
    found = exercises.registered("04")
    assert [e.id for e in found] == sorted(IDS)
    assert {e.kind for e in found} == {"implement", "predict", "explore"}
    assert set(SOLUTIONS) == set(IDS)


def test_solutions_pass():
    exercises.lookup("04.matmul_flops").fn(_solved("04.matmul_flops")["my_flops"], shape=(N, L, M))
    exercises.lookup("04.cache_write").fn(_solved("04.cache_write")["my_schedule"])
    exercises.lookup("04.greedy_next_batch").fn(_solved("04.greedy_next_batch")["GreedyTuner"])
    exercises.lookup("04.budget").fn(_solved("04.budget")["my_first_90"], curve=CURVE)


def test_blank_starters_are_not_attempted(capsys):
    def blank_schedule(mod, tile_y, tile_x):
        raise NotImplementedError

    class BlankTuner(tuners.Tuner):
        def next_batch(self, batch_size):
            raise NotImplementedError  # your code here

    for args, kwargs in (
        (("04.matmul_flops", None), {"shape": (N, L, M)}),
        (("04.cache_write", blank_schedule), {}),
        (("04.greedy_next_batch", BlankTuner), {}),
        (("04.budget", None), {"curve": CURVE}),
    ):
        exercises.check(*args, **kwargs)
    assert capsys.readouterr().out.count("not attempted yet") == 4


def test_flops_names_the_typical_mistakes():
    _fail("04.matmul_flops", N * L * M, shape=(N, L, M), match="a MAC is two FLOPs")
    _fail("04.matmul_flops", (2 * L - 1) * N * M, shape=(N, L, M), match="strict count")
    _fail("04.matmul_flops", 2 * N * M, shape=(N, L, M), match="count of matrix elements")
    _fail("04.matmul_flops", "lots", shape=(N, L, M), match="expected a number")
    exercises.lookup("04.matmul_flops").fn(2 * 64 * 48 * 32, shape=(64, 48, 32))


def _schedule(cache_write=True, move=True, vectorize="ji", parallel=True):
    def fn(mod, tile_y, tile_x):
        sch = tvm.s_tir.Schedule(mod)
        block = sch.get_sblock("C")
        i, j, k = sch.get_loops(block)
        io, ii = sch.split(i, factors=[None, tile_y])
        jo, ji = sch.split(j, factors=[None, tile_x])
        sch.reorder(io, jo, k, ii, ji)
        if cache_write:
            cw = sch.cache_write(block, 0, "global")
            if move:
                sch.reverse_compute_at(cw, jo)
        if vectorize:
            sch.vectorize({"ji": ji, "k": k}[vectorize])
        if parallel:
            sch.parallel(io)
        return sch

    return fn


def test_cache_write_names_the_typical_mistakes():
    _fail("04.cache_write", _schedule(cache_write=False), match="no cache_write")
    _fail("04.cache_write", _schedule(move=False), match="reverse_compute_at")
    _fail("04.cache_write", _schedule(parallel=False), match="no parallel loop")
    _fail("04.cache_write", _schedule(vectorize=None), match="j.inner is not vectorised")
    _fail("04.cache_write", lambda mod, ty, tx: mod, match="must return the s_tir.Schedule")


def test_greedy_names_the_typical_mistakes():
    class Revisits(tuners.Tuner):
        def next_batch(self, batch_size):
            return list(range(batch_size))  # 0..b-1 every time: re-measures after the first round

    class Genes(tuners.Tuner):
        def next_batch(self, batch_size):
            return [self.space.genes(i) for i in self._random_unvisited(batch_size, set())]

    class Blind(tuners.RandomTuner):
        pass

    _fail("04.greedy_next_batch", Revisits, match="already measured")
    _fail("04.greedy_next_batch", Genes, match="genes")
    _fail("04.greedy_next_batch", Blind, match="not neighbours of the best")
    _fail("04.greedy_next_batch", int, match="subclass of tuners.Tuner")


def test_budget_is_read_from_the_learners_curve():
    assert l4.first_reaching(CURVE, 0.9) == 4 and l4.first_reaching([0.1, 0.2], 0.9) == 0
    _fail("04.budget", 3, curve=CURVE, match="one too early")
    _fail("04.budget", 6, curve=CURVE, match="whole budget")
    _fail("04.budget", 2, curve=CURVE, match="does not match")
    _fail("04.budget", 5, curve=[0.1, 0.3, 0.5], match="never reached 0.9")
    exercises.lookup("04.budget").fn(0, curve=[0.1, 0.3, 0.5])
