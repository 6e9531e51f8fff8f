"""Lesson 2 (02_parallel_inference): parity of every strategy on 2 gloo ranks, the dispatch-mode mover,
uneven stage splits, fail-fast launches and clear errors on bad input."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
from conftest import require_extra

transformers = require_extra("transformers", "parallel")

from course_lib.parallel import Run, launch, strategy_module  # noqa: E402
from course_lib.parallel import deepspeed_tp, split  # noqa: E402
from course_lib.parallel.launcher import LaunchTimeout, RankFailed, check_world  # noqa: E402
from course_lib.parallel.model import bert_config, make_batch, reference_logits, split_layers  # noqa: E402
from course_lib.parallel.pipeline import microbatches  # noqa: E402
from course_lib.parallel.fsdp import rows_of  # noqa: E402
from course_lib.parallel.world import StrategyUnavailable, World, WorldSizeError  # noqa: E402

TINY = {"preset": "tiny"}  # 3 layers, hidden 64, 2 heads, vocab 21128


# ------------------------------------------------------------------ pure functions
def test_uneven_stage_split():
    assert split_layers(3, 2) == [range(0, 2), range(2, 3)]
    assert split_layers(5, 3) == [range(0, 2), range(2, 4), range(4, 5)]
    assert split_layers(12, 4) == [range(0, 3), range(3, 6), range(6, 9), range(9, 12)]
    bounds = split_layers(7, 3)
    assert sum(len(b) for b in bounds) == 7 and max(map(len, bounds)) - min(map(len, bounds)) <= 1
    with pytest.raises(ValueError, match="cannot split 2 encoder layers over 3 pipeline stages"):
        split_layers(2, 3)


def test_flops_balanced_split_moves_layers_off_the_head_stage():
    from course_lib.parallel.model import balanced_layers, stage_flops

    even = split_layers(12, 4)
    bal = balanced_layers("base", 4, 128)
    assert sum(len(b) for b in bal) == 12 and bal[0].start == 0 and bal[-1].stop == 12
    assert all(a.stop == b.start for a, b in zip(bal, bal[1:]))
    assert max(stage_flops("base", bal, 128)) < max(stage_flops("base", even, 128))
    # no layer at all on the last stage when the head alone outweighs everything else
    assert [len(b) for b in balanced_layers("tiny", 2, 16)] == [3, 0]
    with pytest.raises(ValueError, match="balance must be"):
        Run("pipeline", balance="magic")


def test_microbatches_and_fsdp_rows_cover_the_batch():
    assert microbatches(10, 4) == [slice(0, 3), slice(3, 6), slice(6, 8), slice(8, 10)]
    with pytest.raises(ValueError, match="micro-batches"):
        microbatches(2, 3)
    assert [rows_of(r, 3, 8) for r in range(3)] == [slice(0, 3), slice(3, 6), slice(6, 8)]
    with pytest.raises(ValueError, match="at least 4"):
        rows_of(0, 4, 2)


def test_assign_by_size_known_answer():
    class P:
        def __init__(self, n):
            self.n = n

        def numel(self):
            return self.n

    params = [("a", P(50)), ("b", P(25)), ("c", P(25))]
    # cumulative starts 0, 50, 75 of 100 -> devices 0, 1, 1 with two devices; 0, 2, 3 with four
    assert split.assign_by_size(params, 2) == {"a": 0, "b": 1, "c": 1}
    assert split.assign_by_size(params, 4) == {"a": 0, "b": 2, "c": 3}


def test_mover_picks_highest_device_and_counts_transfers():
    mode = split.MoveToHighestDevice(["cpu", "cpu", "cpu"])
    a = split.tag(torch.ones(4), 0)
    b = split.tag(torch.full((4,), 2.0), 2)
    c0 = split.tag(torch.ones(4), 1)
    with mode:
        c = a + b  # a moves 0 -> 2
        d = c * 3  # already on 2: no move
        e = torch.stack([a, c0])  # a (0) and c0 (1): a moves to 1
    assert split.logical_device(c) == 2 and split.logical_device(d) == 2 and split.logical_device(e) == 1
    assert mode.transfers == 2
    assert mode.bytes_moved == 2 * 4 * 4
    assert torch.equal(d, torch.full((4,), 9.0))
    assert mode.target([a, b, c0]) == 2


def test_split_strategy_parity_in_process():
    cfg = bert_config("tiny")
    batch = make_batch(4, 16)
    ref = reference_logits(cfg, batch)
    runner = strategy_module("split").build(cfg, World(devices=["cpu"] * 3))
    out = runner(batch)
    assert float((out - ref).abs().max()) < 1e-5
    # the embedding (tied with the MLM decoder) sits on device 0, the head's tail on device 2:
    assert runner.info["counts"]["per_call_transfers"] > 0
    assert runner.info["params_per_device"][0] > 0 and runner.info["params_per_device"][-1] > 0


# ------------------------------------------------------------------ bad input
def test_world_size_larger_than_devices_is_refused():
    cores = os.cpu_count() or 1
    with pytest.raises(WorldSizeError, match=f"world_size={cores + 1} CPU ranks on {cores} CPU cores"):
        check_world(cores + 1, device="cpu")
    if torch.cuda.device_count() < 64:
        with pytest.raises(WorldSizeError, match="needs 64 GPUs"):
            check_world(64, device="cuda")
    with pytest.raises(WorldSizeError, match="positive integer"):
        check_world(0)
    with pytest.raises(WorldSizeError):
        launch(["tensor"], world_size=cores + 1, device="cpu")


def test_unknown_strategy_and_bad_tp_split():
    with pytest.raises(ValueError, match="unknown strategy 'magic'"):
        Run("magic")
    with pytest.raises(ValueError, match="num_attention_heads \\(2\\) divisible by 3"):
        strategy_module("tensor").build(TINY, World(world_size=3))


def test_deepspeed_missing_is_a_skip_with_reason(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    reason = deepspeed_tp.unavailable_reason()
    assert "DeepSpeed is not installed" in reason and "--no-build-isolation" in reason
    with pytest.raises(StrategyUnavailable, match="not installed"):
        deepspeed_tp.build(TINY, World())
    res = launch(["deepspeed"], world_size=1, model=TINY)  # nothing to run: no process started
    assert list(res.skipped) == ["deepspeed"] and "not installed" in res.skipped["deepspeed"]
    assert res.frame.empty


def test_deepspeed_without_gpu_is_a_skip_with_reason():
    if importlib.util.find_spec("deepspeed") is None:
        assert "not installed" in deepspeed_tp.unavailable_reason(gpus=0)
    else:
        assert "needs CUDA GPUs" in deepspeed_tp.unavailable_reason(gpus=0)


# ------------------------------------------------------------------ real 2-rank gloo runs
@pytest.mark.slow
def test_every_strategy_matches_single_on_two_gloo_ranks(tmp_path):
    runs = ["single", "tensor", "fsdp", "split", Run("pipeline"), Run("pipeline", microbatches=2),
            Run("pipelining", microbatches=2), Run("pipeline", microbatches=2, balance="flops"), "deepspeed"]
    res = launch(runs, world_size=2, model=TINY, batch=4, seq_len=16, warmup=1, repeat=2,
                 device="cpu", out_dir=tmp_path, timeout_s=240)
    df = res.frame.set_index("strategy")
    assert list(df.index) == ["single", "tensor", "fsdp", "split", "pipeline", "pipeline m=2", "pipelining m=2",
                              "pipeline m=2 (flops)"]
    for label, diff in df["parity_max_abs_diff"].items():
        assert diff < 1e-4, f"{label}: max abs diff {diff}"
    assert (df["qps_p10"] <= df["qps"]).all() and (df["qps"] <= df["qps_p90"]).all()
    assert (df["p10_ms"] <= df["p50_ms"]).all() and (df["p50_ms"] <= df["p90_ms"]).all()
    # the single-process strategies get every core, the distributed ones each rank's share
    cores = os.cpu_count() or 1
    assert df.loc["single", "threads"] == cores and df.loc["split", "threads"] == cores
    assert df.loc["tensor", "threads"] == max(1, cores // 2)
    assert df.loc["tensor", "world_size"] == 2 and df.loc["single", "world_size"] == 1
    # uneven split: 3 layers over 2 stages
    assert df.loc["pipeline", "info"]["layers_per_stage"] == [2, 1]
    # head-aware split: the vocab-sized decoder outweighs all 3 tiny layers, so the last stage keeps only the head
    assert df.loc["pipeline m=2 (flops)", "info"]["layers_per_stage"] == [3, 0]
    # FSDP holds about half the parameters per rank
    assert df.loc["fsdp", "param_mib_per_rank"] < 0.6 * df.loc["single", "param_mib_per_rank"]
    assert df.loc["split", "info"]["transfers_per_call"] > 0
    # per-rank rows: both ranks for distributed strategies, rank 0 only for single-process ones
    ranks = res.ranks
    assert sorted(ranks[ranks.label == "tensor"]["rank"]) == [0, 1]
    assert list(ranks[ranks.label == "single"]["rank"]) == [0]
    if importlib.util.find_spec("deepspeed") is None:
        assert "not installed" in res.skipped["deepspeed"]
    tr = res.traces
    assert set(tr[tr.label == "tensor"]["rank"]) == {0, 1} and (tr["util"] >= 0).all()


@pytest.mark.slow
def test_a_failing_rank_fails_the_run_fast_with_its_error(tmp_path):
    with pytest.raises(RankFailed) as err:
        launch(["tensor"], world_size=2, model=TINY, batch=2, seq_len=8, device="cpu",
               fail_rank=1, timeout_s=120, collective_timeout_s=30, out_dir=tmp_path)
    # torchrun tore the job down on rank 1's exception: neither limit had to fire
    assert not isinstance(err.value, LaunchTimeout)
    assert "injected failure on rank 1" in str(err.value).splitlines()[0]
    assert "--- rank1 ---" in str(err.value)
    assert (tmp_path / "error_rank1.txt").exists()


@pytest.mark.slow
def test_a_stalled_rank_trips_the_collective_timeout(tmp_path):
    with pytest.raises(RankFailed) as err:
        launch(["tensor"], world_size=2, model=TINY, batch=2, seq_len=8, device="cpu",
               hang_rank=1, collective_timeout_s=5, timeout_s=150, out_dir=tmp_path)
    assert not isinstance(err.value, LaunchTimeout), "the whole-job limit fired, not the collective timeout"
    first = str(err.value).splitlines()[0]
    # rank 0's barrier gave up after the collective timeout and names the rank that never arrived
    assert "Ranks 1 failed to pass monitoredBarrier in 5000 ms" in first, first
    assert "--- rank0 ---" in str(err.value)


@pytest.mark.slow
def test_a_job_past_its_wall_clock_limit_is_killed(tmp_path):
    with pytest.raises(LaunchTimeout, match="the 1-rank job ran past its 3 s limit and was killed"):
        launch(["single"], world_size=1, model=TINY, device="cpu", timeout_s=3, out_dir=tmp_path)
    # killed before it could finish: no rank wrote a result
    assert not list(tmp_path.glob("run*_rank*.json"))


def test_communication_estimates_known_answer():
    from course_lib.parallel import analysis
    from course_lib.parallel.model import build_model, param_count

    rows = {r["strategy"]: r for r in analysis.communication(TINY, world_size=2, batch=4, seq_len=16)}
    act_mib = 4 * 16 * 64 * 4 / 2**20
    # tensor: 2 all-reduces per layer x 3 layers, ring all-reduce sends 2(N-1)/N = 1x the tensor per rank
    assert rows["tensor"]["messages"] == 6
    assert rows["tensor"]["mib_sent_per_rank"] == pytest.approx(6 * act_mib)
    # fsdp: half of all parameter bytes leave each rank per forward (tied decoder weight counted once)
    params_mib = param_count(build_model(TINY)) * 4 / 2**20
    assert rows["fsdp"]["mib_sent_per_rank"] == pytest.approx(params_mib / 2)
    assert rows["pipeline"]["mib_sent_per_rank"] == pytest.approx(act_mib)


def test_stream_chunks_map_to_the_right_reference_rows():
    from course_lib.parallel.base import Runner
    from course_lib.parallel.worker import expected_rows

    ref = torch.arange(8.0)[:, None]
    # an FSDP-like runner on rank 1 of 2 takes the second half of whatever batch it gets
    runner = Runner("x", World(rank=1, world_size=2), lambda b: None, rows=lambda b: rows_of(1, 2, b))
    assert expected_rows(runner, ref, 1).flatten().tolist() == [4, 5, 6, 7]
    assert expected_rows(runner, ref, 2).flatten().tolist() == [2, 3, 6, 7]


def test_parity_check_catches_a_wrong_output():
    """The worker's parity number is a real comparison: the right reference gives ~0, a wrong one does not."""
    from course_lib.parallel.worker import run_one

    cfg = bert_config("tiny")
    batch = make_batch(3, 8)
    plan = {"model": {"preset": "tiny"}, "warmup": 0, "repeat": 2, "qps_batches": 2, "qps_rounds": 2,
            "single_threads": 1, "sample_interval": 0.05}
    good = run_one({"strategy": "single"}, plan, World(), batch, reference_logits(cfg, batch))
    other_weights = reference_logits(cfg, batch, seed=1)
    bad = run_one({"strategy": "single"}, plan, World(), batch, other_weights)
    assert good["parity_max_abs_diff"] <= 1e-6
    assert bad["parity_max_abs_diff"] > 1e-2
    assert good["threads"] == 1 and len(good["times_s"]) == 2 and len(good["round_times_s"]) == 2
    assert good["qps_p10"] <= good["qps"] <= good["qps_p90"]


def test_default_scratch_folder_is_removed(monkeypatch, tmp_path):
    """Without ``out_dir`` the ranks' files go to a scratch folder under the course cache, removed after reading."""
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    with pytest.raises(LaunchTimeout):
        launch(["single"], world_size=1, model=TINY, device="cpu", timeout_s=0.5)
    assert (tmp_path / "l2").is_dir() and not list((tmp_path / "l2").iterdir())


def test_gpipe_prediction_known_answers():
    from course_lib.parallel import analysis

    assert analysis.gpipe_schedule(2, 3) == [[(0, 0)], [(0, 1), (1, 0)], [(0, 2), (1, 1)], [(1, 2)]]
    # equal stages: latency (m + S - 1) * T / m
    assert analysis.gpipe_latency([1.0, 1.0], 4) == pytest.approx(5 / 4)
    # one micro-batch: the stages run one after another
    assert analysis.gpipe_latency([1.0, 3.0], 1) == pytest.approx(4.0)
    assert analysis.pipeline_qps([0.1, 0.3], 8, 4, streaming=True) == pytest.approx(8 / 0.3)
    assert analysis.pipeline_qps([0.1, 0.3], 8, 2) == pytest.approx(8 / (0.2 + 0.15))


def test_pipeline_stage_times_follow_the_split():
    from course_lib.parallel.pipeline import stage_times

    before = torch.get_num_threads()
    res = stage_times(TINY, [range(0, 3), range(3, 3)], make_batch(2, 8), warmup=0, repeat=2, threads=1)
    assert [r.name for r in res] == ["stage 0", "stage 1"] and all(len(r.times_s) == 2 for r in res)
    assert torch.get_num_threads() == before  # the thread count is restored
