"""Lesson 1's exercise checks: the solutions pass, blank starters are 'not attempted', typical mistakes are named."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ROOT, require_extra

require_extra("transformers", "deploy")
require_extra("tritonclient.grpc.model_config_pb2", "deploy")

from course_lib import exercises  # noqa: E402
from course_lib.deploy import data  # noqa: E402
from course_lib.deploy import model as multitask  # noqa: E402
from course_lib.exercises import l1  # noqa: E402

SOLUTIONS = exercises.load_solutions(ROOT / "solutions" / "01_torchscript_triton.py")


def solved(id: str, **env) -> dict:
    ns = {"np": np, "data": data, **env}
    exec(SOLUTIONS[id], ns)
    return ns


def fails(id: str, *args, match: str, **kwargs):
    with pytest.raises(exercises.ExerciseFailed, match=match):
        exercises.lookup(id).fn(*args, **kwargs)


def test_four_exercises_of_three_kinds_are_registered():
    found = exercises.registered("01")
    assert len(found) >= 4 and {e.kind for e in found} == {"implement", "predict", "explore"}
    assert set(SOLUTIONS) == {e.id for e in found}


# ------------------------------------------------------------------------------------------ 01.gp_params


@pytest.fixture(scope="module")
def tiny():
    return multitask.BertMultitask(multitask.bert_config(1000, "tiny"), len(data.AREAS), len(data.ENTITY_TYPES))


def test_gp_params(tiny):
    gp = tiny.global_pointer
    answer = solved("01.gp_params", multitask=multitask, model_size="tiny")["my_gp_params"]
    assert answer == sum(p.numel() for p in gp.parameters()) == 129 * 7 * 128
    exercises.lookup("01.gp_params").fn(answer, measured=gp)
    with pytest.raises(exercises.NotAttempted):
        exercises.lookup("01.gp_params").fn(None, measured=gp)
    fails("01.gp_params", 128 * 7 * 128, measured=gp, match="bias")
    fails("01.gp_params", answer // 2, measured=gp, match="BOTH the query and the key")
    fails("01.gp_params", answer + 32, measured=gp, match="inv_freq .* is a buffer")
    fails("01.gp_params", 12345, measured=gp, match="the head has 115,584 parameters")


# ------------------------------------------------------------------------------------------ 01.decode_spans


def test_decode_spans_solution_and_mistakes():
    check = exercises.lookup("01.decode_spans").fn
    check(solved("01.decode_spans")["decode_token_spans"])

    def blank(logits, threshold=0.0):
        raise NotImplementedError

    with pytest.raises(exercises.NotAttempted):
        check(blank)

    def off_by_one(logits, threshold=0.0):
        return [(t, s, e + 1) for t, s, e in l1.reference_token_spans(logits, threshold)]

    def transposed(logits, threshold=0.0):
        return l1.reference_token_spans(np.swapaxes(logits, 1, 2), threshold)

    def no_triangle(logits, threshold=0.0):
        return [tuple(map(int, x)) for x in zip(*np.where(logits > threshold))]

    def fixed_zero(logits, threshold=0.0):
        return l1.reference_token_spans(logits, 0.0)

    fails("01.decode_spans", off_by_one, match="one past the last token")
    fails("01.decode_spans", transposed, match="transposed")
    fails("01.decode_spans", no_triangle, match="start <= end")
    fails("01.decode_spans", fixed_zero, match="strictly greater|use the threshold")
    fails("01.decode_spans", lambda logits, threshold=0.0: "spans", match="tuples of ints")


# ------------------------------------------------------------------------------------------ 01.batching_stanza


def test_batching_stanza_solution_and_mistakes():
    check = exercises.lookup("01.batching_stanza").fn
    check(solved("01.batching_stanza")["dynamic_batching_stanza"])

    def blank(preferred_batch_size, max_queue_delay_us):
        raise NotImplementedError

    with pytest.raises(exercises.NotAttempted):
        check(blank)
    fails("01.batching_stanza", lambda p, d: f"dynamic_batching {{ max_queue_delay_microseconds: {d} }}",
          match="preferred_batch_size is missing")
    fails("01.batching_stanza", lambda p, d: f"dynamic_batching {{ preferred_batch_size: {list(p)} }}",
          match="max_queue_delay_microseconds is missing")
    fails("01.batching_stanza", lambda p, d: f"preferred_batch_size: {list(p)}\nmax_queue_delay_microseconds: {d}",
          match="inside a `dynamic_batching")
    fails("01.batching_stanza",
          lambda p, d: f"dynamic_batching {{ preferred_batch_size: {list(p)} max_queue_delay_microseconds: {d // 1000} }}",
          match="microseconds, not milliseconds")
    fails("01.batching_stanza", lambda p, d: f"dynamic_batching {{ max_queue_delay: {d} }}", match="Triton's parser rejects it")


# ------------------------------------------------------------------------------------------ 01.queue_delay


def _table(extra_ms: float):
    import pandas as pd

    return pd.DataFrame({"dynamic_batching": [True, False, True, False], "concurrency": [1, 1, 16, 16],
                         "p50_ms": [8.0 + extra_ms, 8.0, 30.0, 40.0]})


def test_queue_delay_solution_and_mistakes():
    check = exercises.lookup("01.queue_delay").fn
    delay = solved("01.queue_delay")["explore_delay_us"]
    check(delay, measured=_table(delay / 1000))
    with pytest.raises(exercises.NotAttempted):
        check(None, measured=_table(20))
    with pytest.raises(exercises.NotAttempted):
        check(delay, measured=None)  # no server: nothing measured
    fails("01.queue_delay", 20, measured=_table(0.5), match="the field is in microseconds")
    fails("01.queue_delay", 5000, measured=_table(5.0), match="needs ≥ 10 ms")
    fails("01.queue_delay", 10_000_000, measured=_table(10_000), match="between 0 and 200000")
