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
