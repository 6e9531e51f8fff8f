import itertools

import pandas as pd
import pytest

from course_lib import bench


class FakeClock:
    """Each timed call takes the next duration from a list; calls to fn are counted."""

    def __init__(self, durations):
        self.now = 0.0
        self.durations = iter(durations)
        self.pending = None
        self.calls = 0

    def clock(self):
        if self.pending is None:  # start of a timed call
            self.pending = next(self.durations)
            return self.now
        self.now += self.pending
        self.pending = None
        return self.now

    def fn(self):
        self.calls += 1


def test_statistics_on_a_fake_clock():
    fc = FakeClock([0.010, 0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.007, 0.008, 0.009])
    r = bench.benchmark(fc.fn, name="fake", items=8, warmup=2, repeat=10, clock=fc.clock)
    assert fc.calls == 12  # 2 warm-up + 10 timed
    assert r.times_s == pytest.approx([0.010, 0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.007, 0.008, 0.009])
    assert r.median_ms == pytest.approx(5.5)
    assert r.min_ms == pytest.approx(1.0)
    assert r.mean_ms == pytest.approx(5.5)
    assert r.p90_ms == pytest.approx(9.1)  # numpy.percentile([1..10], 90) == 9.1
    assert r.throughput == pytest.approx(8 / 0.0055)
    row = r.as_row()
    assert row["items/s"] == pytest.approx(8 / 0.0055) and row["repeat"] == 10 and row["name"] == "fake"


def test_percentile_matches_numpy_linear():
    import numpy as np

    xs = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]
    for q in (0, 10, 50, 90, 99, 100):
        assert bench.percentile(xs, q) == pytest.approx(np.percentile(xs, q))
    with pytest.raises(ValueError):
        bench.percentile([], 50)
    with pytest.raises(ValueError):
        bench.percentile([1.0], 101)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="repeat"):
        bench.benchmark(lambda: None, repeat=0)
    with pytest.raises(ValueError, match="items"):
        bench.benchmark(lambda: None, items=0)
    with pytest.raises(ValueError, match="CUDA is not available"):
        bench.benchmark(lambda: None, device="cuda")


def test_frame_and_chart(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    rs = []
    for name, d in [("a", 0.002), ("b", 0.004)]:
        fc = FakeClock(itertools.repeat(d))
        rs.append(bench.benchmark(fc.fn, name=name, items=2, unit="tokens", repeat=3, warmup=0, clock=fc.clock))
    df = bench.to_frame(rs)
    assert isinstance(df, pd.DataFrame) and list(df["name"]) == ["a", "b"]
    assert df["tokens/s"].tolist() == pytest.approx([1000.0, 500.0])
    ax = bench.bar_chart(df)
    assert ax.get_xlabel() == "tokens/s" and len(ax.patches) == 2
    with pytest.raises(ValueError, match="not in results"):
        bench.bar_chart(df, column="nope")


def test_p10_p50_p90_names():
    import numpy as np

    fc = FakeClock([0.010, 0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.007, 0.008, 0.009])
    r = bench.benchmark(fc.fn, repeat=10, warmup=0, clock=fc.clock)
    ms = [1000 * t for t in r.times_s]
    assert r.p10_ms == pytest.approx(np.percentile(ms, 10)) == pytest.approx(1.9)
    assert r.p50_ms == r.median_ms == pytest.approx(5.5)
    assert r.p90_ms == pytest.approx(np.percentile(ms, 90))
    assert r.percentile_ms(25) == pytest.approx(np.percentile(ms, 25))
    assert r.p10_ms <= r.p50_ms <= r.p90_ms
    row = r.as_row()
    assert row["p10_ms"] == pytest.approx(1.9) and row["median_ms"] == pytest.approx(5.5)  # old names kept
    assert {"p90_ms", "min_ms", "mean_ms"} <= set(row)
    assert "p10–p90 1.900–9.100 ms" in str(r)


# ---------------------------------------------------------------------------- roofline units and legend
def test_roofline_takes_bytes_and_still_mb():
    import matplotlib

    matplotlib.use("Agg")
    from course_lib.llm import roofline

    df = roofline.ceilings(20.0, {"int8": 140e6, "int4": 70e6})
    assert list(df.bytes_per_token) == [140_000_000, 70_000_000] and list(df.mb_per_token) == [140.0, 70.0]
    assert list(df.ceiling_tokens_per_s) == pytest.approx([20e9 / 140e6, 20e9 / 70e6])
    with pytest.raises(ValueError, match="positive"):
        roofline.ceilings(20.0, {"empty": 0})
    in_bytes = [{"variant": "a", "bytes_per_token": 100e6, "tokens_per_s": 10.0}]
    in_mb = [{"variant": "a", "mb_per_token": 100.0, "tokens_per_s": 10.0}]  # notebook 03's decode table rows
    xs = [roofline.plot_roofline(20.0, pts).get_xlim() for pts in (in_bytes, in_mb)]
    assert xs[0] == xs[1]
    assert roofline.point_mb({"bytes_per_token": 5e6, "mb_per_token": 5.0}) == 5.0
    with pytest.raises(ValueError, match="disagree"):
        roofline.point_mb({"variant": "x", "bytes_per_token": 5e6, "mb_per_token": 5e6})
    with pytest.raises(ValueError, match="needs bytes_per_token"):
        roofline.plot_roofline(20.0, [{"variant": "x", "tokens_per_s": 1.0}])
    with pytest.raises(ValueError, match="no points"):
        roofline.plot_roofline(20.0, [])
    with pytest.raises(ValueError, match="bandwidth"):
        roofline.plot_roofline(0.0, in_bytes)


def test_roofline_legend_explains_the_markers():
    import matplotlib

    matplotlib.use("Agg")
    from course_lib.llm import roofline

    pts = [{"variant": "fp32", "bytes_per_token": 100e6, "tokens_per_s": 10.0, "p10": 9.0, "p90": 11.0},
           {"variant": "int8 graph", "bytes_per_token": 30e6, "tokens_per_s": 40.0, "graph": True},
           {"variant": "llama.cpp Q8_0", "bytes_per_token": 30e6, "tokens_per_s": 45.0, "peer": True}]
    ax = roofline.plot_roofline(20.0, pts)
    legend = ax.get_legend()
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts[0].startswith("ceiling: 20.0 GB/s")
    assert texts[1:] == ["eager PyTorch (course_lib)", "one onnxruntime graph per token", "llama.cpp",
                         "bar: p10–p90 of the timed runs"]
    markers = [h.get_marker() for h in legend.legend_handles[1:4]]
    assert markers == ["o", "D", "s"]  # the same markers as the points
    # only the kinds present are explained; a user's label replaces a kind's text
    ax = roofline.plot_roofline(20.0, pts[:1], labels={"eager": "my model"})
    assert [t.get_text() for t in ax.get_legend().get_texts()][1:] == ["my model", "bar: p10–p90 of the timed runs"]
    with pytest.raises(ValueError, match="unknown point kinds"):
        roofline.plot_roofline(20.0, pts, labels={"mine": "x"})


def test_compare_results_names_a_direction_only_when_spreads_separate():
    from course_lib import claims

    def result(name, durations):
        fc = FakeClock(durations)
        return bench.benchmark(fc.fn, name=name, repeat=len(durations), warmup=0, clock=fc.clock)

    fast, slow = result("fast", [0.001, 0.0011, 0.0012, 0.0013]), result("slow", [0.003, 0.0031, 0.0032, 0.0033])
    overlapping = result("noisy", [0.0009, 0.002, 0.004, 0.005])
    assert str(claims.compare_results(fast, slow, record=False)).startswith("fast was faster than slow here")
    assert str(claims.compare_results(slow, fast, record=False)).startswith("slow was slower than fast here")
    assert "not separable here" in str(claims.compare_results(fast, overlapping, record=False))


def _busy_thread():
    """A thread that burns one core (hashing releases the GIL) until its event is set."""
    import hashlib
    import threading

    stop, blob = threading.Event(), b"x" * (1 << 20)

    def run():
        while not stop.is_set():
            hashlib.sha256(blob).digest()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return stop, t


def test_settle_waits_until_the_other_threads_stop_burning_cpu():
    if bench._thread_cpu_ns() is None:  # off Linux: no per-thread CPU times, a plain sleep instead
        assert bench.settle(fallback_s=0.01) is True and bench.spin_after(lambda: None) is None
        return
    stop, t = _busy_thread()
    try:
        assert bench.settle(timeout_s=0.2) is False  # a thread still running: never called idle
        burned = bench.spin_after(lambda: None, window_s=0.2)
        assert burned > 0.2 * 200  # ms: the busy thread ran while we waited (a loaded box still gives it > 20 %)
    finally:
        stop.set()
        t.join()
    assert bench.settle(timeout_s=5.0) is True  # the state it waits for: nobody else is running


def test_pool_env_sets_tvm_threads_and_unpins_unless_the_user_chose(monkeypatch):
    from course_lib import tvmtools

    monkeypatch.delenv("TVM_NUM_THREADS", raising=False)
    monkeypatch.delenv("TVM_BIND_THREADS", raising=False)
    assert tvmtools.pool_env(3) == {"TVM_NUM_THREADS": "3", "TVM_BIND_THREADS": "0"}
    monkeypatch.setenv("TVM_BIND_THREADS", "1")  # a user's choice is kept
    monkeypatch.setenv("TVM_NUM_THREADS", "5")
    assert tvmtools.pool_env() == {"TVM_NUM_THREADS": "5", "TVM_BIND_THREADS": "1"}
    monkeypatch.delenv("TVM_NUM_THREADS")
    assert tvmtools.pool_env()["TVM_NUM_THREADS"] == str(tvmtools.physical_cores())


def test_interleaved_times_one_call_of_each_per_round_after_the_warmup_rounds():
    order = []
    calls = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    res = bench.interleaved(calls, rounds=3, warmup=1, items=4, unit="tokens", extra={"b": {"threads": 2}})
    assert order == ["a", "b"] * 4  # a, b alternate: round 0 untimed, rounds 1-3 timed
    assert list(res) == ["a", "b"]
    assert all(len(r.times_s) == 3 and r.items == 4 and r.unit == "tokens" and r.warmup == 1 for r in res.values())
    assert res["b"].extra == {"threads": 2} and res["a"].extra == {}
    with pytest.raises(ValueError, match="no callables"):
        bench.interleaved({}, rounds=1)
    with pytest.raises(ValueError, match="rounds >= 1"):
        bench.interleaved(calls, rounds=0)
    with pytest.raises(ValueError, match=r"extra names no timed callable: \['c'\]"):
        bench.interleaved(calls, rounds=1, extra={"c": {}})


def test_self_timed_callables_give_their_own_seconds_as_the_samples():
    """A callable that times itself (a mean of several calls, TVM's time_evaluator) returns its seconds per call, and
    those are the samples, in the same rounds; a value that is not a positive number is one clear line."""
    order, own = [], {"a": iter([9.0, 1.0, 2.0, 3.0]), "b": iter([9.0, 0.5, 0.25, 0.125])}

    def call(name):
        def fn():
            order.append(name)
            return next(own[name])
        return fn

    res = bench.interleaved({"a": call("a"), "b": call("b")}, rounds=3, warmup=1, items=10, unit="FLOP",
                            self_timed=True)
    assert order == ["a", "b"] * 4
    assert res["a"].times_s == [1.0, 2.0, 3.0] and res["b"].times_s == [0.5, 0.25, 0.125]  # round 0 (9.0) untimed
    assert res["a"].median_s == 2.0 and res["b"].throughput == pytest.approx(10 / 0.25)
    for bad in (None, 0.0, -1.0, float("nan"), float("inf"), "fast"):
        with pytest.raises(ValueError, match=r"^x: a self-timed callable must return its seconds per call"):
            bench.interleaved({"x": lambda bad=bad: bad}, rounds=1, warmup=0, self_timed=True)

