"""course_lib.claims: a comparison sentence states a direction only when the p10–p90 spreads separate."""

import json

import pytest

from course_lib import claims, report


@pytest.fixture(autouse=True)
def _no_claims(monkeypatch):
    monkeypatch.setattr(claims, "_claims", [])


def test_disjoint_spreads_state_the_direction_with_the_callers_words():
    c = claims.compare("traced", [10, 11, 12, 11], "eager", [20, 21, 22, 23], higher_is_better=False,
                       quantity="latency", unit="ms", better="faster", worse="slower")
    assert c.direction == claims.LOWER and c.a_better and c.separated
    assert str(c).startswith("traced was faster than eager here (latency p10–p90 ")
    assert "ms)" in str(c)
    worse = claims.compare("A", [10, 11, 12], "B", [20, 21, 22], higher_is_better=True, better="faster", worse="slower")
    assert worse.direction == claims.LOWER and not worse.a_better and "A was slower than B" in str(worse)
    assert claims.audit(c) is None and claims.audit(worse) is None


def test_overlapping_spreads_are_not_separable_even_when_the_medians_differ():
    c = claims.compare("balanced", [100, 120, 140], "equal", [90, 110, 130], quantity="QPS")
    assert c.direction == claims.NONE and not c.separated
    assert str(c).startswith("balanced and equal are not separable here (QPS p10–p90 ")
    assert "overlap" in str(c) and claims.audit(c) is None


def test_a_single_sample_never_states_a_direction():
    c = claims.compare("A", [1.0], "B", [2.0])
    assert c.direction == claims.NONE
    bad = {**claims.recorded()[-1], "direction": claims.LOWER}
    assert "single sample" in claims.audit(bad)


def test_spread_is_p10_p50_p90_and_rejects_bad_input():
    assert claims.spread(range(11)) == (1.0, 5.0, 9.0)
    with pytest.raises(ValueError):
        claims.spread([])
    with pytest.raises(ValueError):
        claims.spread([1.0, float("nan")])
    with pytest.raises(ValueError, match="p10 <= p90"):
        claims.compare_spreads("A", (3, 2, 1), "B", (1, 2, 3))
    assert claims.compare_spreads("A", (1, 5, 3), "B", (4, 5, 6)).a_p50 == 3  # a centre outside its range is clamped


def test_compare_spreads_uses_the_given_summaries():
    c = claims.compare_spreads("A", (5.0, 6.0, 7.0), "B", (1.0, 2.0, 3.0), n_a=4, n_b=4, better="faster", worse="slower")
    assert c.direction == claims.HIGHER and "A was faster than B" in str(c)
    assert claims.compare_spreads("A", (1.0, 3.0), "B", (2.0, 4.0)).direction == claims.NONE


def test_audit_fails_an_overlapping_but_directional_claim():
    honest = claims.compare("A", [10, 12, 14], "B", [11, 13, 15])
    lie = {**claims.recorded()[-1], "direction": claims.HIGHER, "sentence": "A was better than B here"}
    assert claims.audit(honest) is None
    problem = claims.audit(lie)
    assert problem and "overlap" in problem and "'A' vs 'B'" in problem
    assert claims.audit({**lie, "direction": claims.LOWER})  # the other way round is just as unsupported
    assert "unknown direction" in claims.audit({**lie, "direction": "sideways"})
    assert "malformed" in claims.audit({"a": "A"})


def test_claims_go_to_a_side_file_next_to_the_runners_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv(report.ENV_VAR, str(tmp_path / ".01_demo.metrics.json"))
    assert claims.side_file() == tmp_path / ".01_demo.claims.json"
    claims.compare("A", [1, 2, 3], "B", [7, 8, 9])
    claims.compare("C", [1, 2, 3], "D", [2, 3, 4])
    got = claims.read_side_file(tmp_path / ".01_demo.claims.json")
    assert [(c["a"], c["direction"]) for c in got] == [("A", claims.LOWER), ("C", claims.NONE)]
    assert json.loads((tmp_path / ".01_demo.claims.json").read_text())["claims"][0]["b_p90"] == pytest.approx(8.8)
    assert claims.read_side_file(tmp_path / "absent.json") == []


def test_no_side_file_outside_the_runner(tmp_path):
    assert claims.side_file() is None
    claims.compare("A", [1, 2], "B", [3, 4], record=True)
    assert len(claims.recorded()) == 1
    claims.compare("A", [1, 2], "B", [3, 4], record=False)
    assert len(claims.recorded()) == 1


def test_shown_records_the_sentence_the_reader_sees_with_the_claims_direction(monkeypatch):
    monkeypatch.setattr(claims, "_claims", [])
    c = claims.compare_spreads("A", (10, 11, 12), "B", (20, 21, 22), record=False)
    assert claims.recorded() == []
    out = claims.shown(c, "A → B: 2× slower, outside the run-to-run spread")
    (rec,) = claims.recorded()
    assert rec["sentence"] == str(out) == "A → B: 2× slower, outside the run-to-run spread"
    assert rec["direction"] == claims.LOWER and claims.audit(rec) is None


def test_lesson4_matmul_compare_is_audited_like_every_claim(monkeypatch):
    """tuning.matmul.compare takes its direction from claims and records the sentence it returns."""
    from course_lib import bench
    from course_lib.tuning import matmul

    monkeypatch.setattr(claims, "_claims", [])

    def res(name, secs):
        return bench.BenchResult(name=name, times_s=list(secs), items=2e9, unit="FLOP")

    slow, fast, noisy = res("slow", [2.0, 2.1, 2.2]), res("fast", [1.0, 1.05, 1.1]), res("noisy", [1.0, 1.5, 2.3])
    text, text_noisy = matmul.compare(slow, fast), matmul.compare(slow, noisy)
    assert "faster, outside the run-to-run spread" in text and "within the run-to-run spread" in text_noisy
    assert matmul.separated(slow, fast) and not matmul.separated(slow, noisy)
    recs = claims.recorded()
    assert [r["sentence"] for r in recs] == [text, text_noisy]
    assert recs[0]["direction"] == claims.HIGHER and recs[1]["direction"] == claims.NONE
    assert all(claims.audit(r) is None for r in recs)


def test_worded_picks_the_callers_sentence_by_direction_and_records_it(monkeypatch):
    monkeypatch.setattr(claims, "_claims", [])
    up = claims.compare_spreads("A", (20, 21, 22), "B", (10, 11, 12), record=False)
    down = claims.compare_spreads("A", (10, 11, 12), "B", (20, 21, 22), record=False)
    flat = claims.compare_spreads("A", (10, 15, 20), "B", (12, 14, 22), record=False)
    words = dict(higher="up", lower="down", none="flat")
    assert [claims.worded(c, **words) for c in (up, down, flat)] == ["up", "down", "flat"]
    assert [r["sentence"] for r in claims.recorded()] == ["up", "down", "flat"]
    assert all(claims.audit(r) is None for r in claims.recorded())
