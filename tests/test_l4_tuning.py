"""Lesson 4 (TVM auto-tuning): schedules, template, tuners, MetaSchedule replay, Relax model.

Timings are never asserted; every numeric check is a parity or a known answer.
"""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
from conftest import require_extra

tvm = require_extra("tvm", "tvm")

from course_lib.tuning import common, matmul, metaschedule, template, tuners  # noqa: E402

SHAPES = [(64, 48, 32), (40, 24, 56)]


# ---------------------------------------------------------------- part 1: hand schedule
@pytest.mark.parametrize("shape", SHAPES)
def test_every_schedule_step_matches_numpy(shape):
    n, l, m = shape
    mod = matmul.matmul_module(n, l, m)
    data = matmul.make_data(n, l, m, seed=sum(shape))
    steps = matmul.schedule_steps(mod, tile_y=8, tile_x=8)
    assert list(steps) == list(matmul.STEPS)
    for name, sch in steps.items():
        lib = matmul.build(sch)
        assert matmul.run_and_check(lib, data) < 1e-3, name
    script = steps["parallel"].mod.script()
    assert "T.parallel" in script and "T.vectorized" in script


def test_non_divisible_split_is_rejected_clearly():
    mod = matmul.matmul_module(30, 16, 30)
    with pytest.raises(ValueError, match="does not divide the loop extent 30"):
        matmul.hand_schedule(mod, "split", tile_y=8, tile_x=5)
    with pytest.raises(ValueError, match="unknown step"):
        matmul.hand_schedule(mod, "fuse")
    with pytest.raises(ValueError, match="positive integer"):
        matmul.matmul_module(0, 4, 4)


def test_peak_estimate_from_cpuinfo_text():
    text = "model name\t: Intel(R) Xeon(R) Processor @ 2.80GHz\nflags\t\t: fpu sse2 avx avx2 fma avx512f\n"
    est = common.peak_gflops_estimate(text, cores=2)
    # 2 cores × 16 fp32 lanes × 2 FMA units × 2 FLOP × 2.8 GHz
    assert est.gflops == pytest.approx(2 * 16 * 2 * 2 * 2.8)
    est = common.peak_gflops_estimate("flags : sse2 avx avx2 fma\ncpu MHz : 3000.0\n", cores=4)
    assert est.gflops == pytest.approx(4 * 8 * 2 * 2 * 3.0)
    assert "GFLOP/s" in est.formula()


def test_host_target_is_a_detected_cpu():
    tgt = common.host_target()
    assert str(tgt.kind) == "llvm"
    assert str(tgt.attrs["mcpu"]) == common.host_cpu()


# ---------------------------------------------------------------- part 2: template + tuners
def test_config_space_enumeration_round_trips():
    space = template.matmul_space(64, 48, 32)
    assert len(space) == int(np.prod(space.dims))
    for idx in (0, 1, len(space) // 3, len(space) - 1):
        assert space.index(space.genes(idx)) == idx
        assert space.index_of(space.get(idx)) == idx
    s = template.ConfigSpace()
    assert s.define_split("x", 48, policy="factors").choices == [1, 2, 3, 4, 6, 8, 12, 16, 24, 48]
    assert s.define_split("y", 48, policy="power2").choices == [1, 2, 4, 8, 16]
    assert s.define_split("z", 48, policy="candidate", candidates=[4, 12]).choices == [4, 12]
    with pytest.raises(ValueError, match="does not divide the loop extent 48"):
        s.define_split("w", 48, policy="candidate", candidates=[5])
    with pytest.raises(ValueError, match="unknown policy"):
        s.define_split("v", 48, policy="primes")


def test_template_configs_match_numpy():
    n, l, m = 32, 24, 16
    space = template.matmul_space(n, l, m)
    data = matmul.make_data(n, l, m, seed=3)
    mod = matmul.matmul_module(n, l, m)
    rng = np.random.default_rng(0)
    picks = [0, len(space) - 1, *rng.choice(len(space), 6, replace=False).tolist()]
    for idx in picks:
        lib = matmul.build(template.matmul_template(space.get(idx), n, l, m, mod=mod))
        assert matmul.run_and_check(lib, data) < 1e-3, space.get(idx)
    bad = dict(space.get(0), tile_x=5)
    with pytest.raises(ValueError, match="tile_x"):
        template.matmul_template(bad, n, l, m)


class _CountingMeasure:
    """Synthetic measure that records every index it is asked for."""

    def __init__(self, space):
        self.cost = tuners.SyntheticCost(space, seed=7)

    def __call__(self, indices):
        return self.cost(indices)


@pytest.mark.parametrize("name", list(tuners.TUNERS))
def test_tuner_returns_best_measured_and_never_remeasures(name, tmp_path):
    space = template.matmul_space(64, 48, 32)
    measure = _CountingMeasure(space)
    tuner = tuners.make_tuner(name, space, seed=1)
    log = tmp_path / f"{name}.jsonl"
    best = tuner.tune(measure, n_trial=24, batch_size=5, log_file=log)
    seen = measure.cost.seen
    assert len(seen) == 24 and len(set(seen)) == 24  # never re-measured
    assert best.score == max(measure.cost.score(i) for i in seen)
    assert best.index in seen
    rows = tuners.load_records(log)
    assert len(rows) == 24 and {r["index"] for r in rows} == set(seen)
    rec = tuners.best_record(log)
    assert rec["index"] == best.index and space.index_of(rec["config"]) == best.index
    # the tuning curve is the running best of the scores in the records file, in measurement order
    logged = [measure.cost.score(r["index"]) for r in sorted(rows, key=lambda r: r["n"])]
    assert tuner.curve() == [max(logged[: i + 1]) for i in range(len(logged))]
    assert [r["index"] for r in sorted(rows, key=lambda r: r["n"])] == seen


def test_tiny_space_is_exhausted_without_repeats():
    space = template.ConfigSpace()
    space.define_knob("a", [0, 1, 2])
    space.define_knob("b", [0, 1])
    for name in tuners.TUNERS:
        cost = tuners.SyntheticCost(space, seed=0)
        best = tuners.make_tuner(name, space, seed=0).tune(cost, n_trial=50, batch_size=4)
        assert sorted(cost.seen) == list(range(6))
        assert best.index == cost.best_index and best.score == pytest.approx(1.0)


@pytest.mark.slow
def test_ga_and_xgb_beat_random_on_a_known_optimum():
    space = template.matmul_space(512, 512, 512)
    mean_best = {}
    for name in ("random", "ga", "xgb"):
        scores = []
        for seed in range(3):
            cost = tuners.SyntheticCost(space, seed=100 + seed)
            kw = {"pool_size": 256} if name == "xgb" else {}
            scores.append(tuners.make_tuner(name, space, seed=seed, **kw).tune(cost, n_trial=48, batch_size=8).score)
        mean_best[name] = float(np.mean(scores))
    assert mean_best["ga"] > mean_best["random"], mean_best
    assert mean_best["xgb"] > mean_best["random"], mean_best


def test_xgb_tuner_falls_back_with_a_message(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "xgboost", None)  # makes `import xgboost` raise ImportError
    space = template.matmul_space(64, 48, 32)
    with pytest.warns(RuntimeWarning, match="xgboost is not installed"):
        tuner = tuners.XGBTuner(space, seed=0)
    assert "falls back to random" in capsys.readouterr().out
    cost = tuners.SyntheticCost(space, seed=1)
    best = tuner.tune(cost, n_trial=20, batch_size=5)
    assert len(set(cost.seen)) == 20 and best.score == max(cost.score(i) for i in cost.seen)
    name, sentence = metaschedule.cost_model_choice("xgb")
    assert name == "random" and "xgboost is not installed" in sentence


def test_template_measurer_scores_real_kernels():
    n, l, m = 32, 32, 32
    space = template.matmul_space(n, l, m)
    meas = tuners.TemplateMeasurer(space, n, l, m, number=1, repeat=1)
    idx = [0, len(space) - 1]
    scores = meas(idx)
    assert all(s > 0 for s in scores), meas.last_errors
    meas(idx)  # cached: no second build
    assert meas.count == 2


# ---------------------------------------------------------------- part 3: MetaSchedule database
def test_committed_database_replays_a_correct_kernel():
    mod = matmul.matmul_module(512, 512, 512)
    db = metaschedule.load_database(metaschedule.committed_dir("matmul_512"))
    sch = metaschedule.compile_from_database(db, mod)
    assert "sample_perfect_tile" in str(sch.trace)
    data = matmul.make_data(512, 512, 512, seed=5)
    assert matmul.run_and_check(matmul.build(sch), data) < 1e-2


def test_database_for_another_shape_says_retune():
    db = metaschedule.load_database(metaschedule.committed_dir("matmul_512"))
    with pytest.raises(metaschedule.DatabaseError, match="no tuning record for this workload"):
        metaschedule.compile_from_database(db, matmul.matmul_module(64, 64, 64))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing", "not_a_record"])
def test_corrupted_database_is_a_clear_error(tmp_path, damage):
    src = metaschedule.committed_dir("matmul_512")
    dst = tmp_path / "db"
    shutil.copytree(src, dst)
    rec = dst / metaschedule.RECORD_FILE
    text = rec.read_text()
    if damage == "truncate":
        rec.write_text(text[: len(text) // 2])
    elif damage == "garbage":
        rec.write_text("this is not json\n" + text)
    elif damage == "missing":
        (dst / metaschedule.WORKLOAD_FILE).unlink()
    else:
        rec.write_text(json.dumps([0, ["not", "a", "trace"]]) + "\n")
    with pytest.raises(metaschedule.DatabaseError, match="Re-tune"):
        metaschedule.load_database(dst)
    with pytest.raises(metaschedule.DatabaseError, match="retune_trials"):
        metaschedule.replay_or_tune(matmul.matmul_module(512, 512, 512), dst, retune_trials=0)


# ---------------------------------------------------------------- part 4: Relax model
@pytest.mark.slow
def test_relax_mlp_matches_pytorch_with_the_committed_database():
    import torch  # a core dependency: never skipped

    from course_lib.tuning import relax_model

    model = relax_model.make_mlp()
    x = torch.randn(32, 256, generator=torch.Generator().manual_seed(0))
    mod = relax_model.to_relax(model, x)
    tasks = relax_model.extract_tasks(mod)
    assert len(tasks) == 3  # three fused matmul(+bias)(+relu) kernels
    db = metaschedule.load_database(metaschedule.committed_dir("mlp"))
    run = relax_model.vm_runner(relax_model.build(mod, db))
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(run(x.numpy()), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_tune_a_tiny_matmul_then_replay_it(tmp_path):
    """The whole MetaSchedule path with the workarounds (fast builder, host-only intrinsics): tune, save, reload, replay."""
    n = 64
    mod = matmul.matmul_module(n, n, n)
    db, sentence = metaschedule.tune(mod, tmp_path / "work", trials=4, num_trials_per_iter=4, verbose=False)
    assert "cost model" in sentence
    saved = metaschedule.save_database(tmp_path / "work", tmp_path / "db")
    curve = metaschedule.tuning_curve(saved, common.matmul_flops(n, n, n))
    assert len(curve) == 4 and max(curve) > 0  # 4 trials built and measured (none timed out)
    sch = metaschedule.compile_from_database(metaschedule.load_database(saved), mod)
    assert max(metaschedule.parallel_extents(sch), default=0) >= common.physical_cores()  # require_parallel held
    assert matmul.run_and_check(matmul.build(sch), matmul.make_data(n, n, n, seed=1)) < 1e-3


def test_design_spaces_are_traces_with_sampled_decisions():
    spaces = metaschedule.design_spaces(matmul.matmul_module(64, 64, 64))
    assert len(spaces) >= 1
    assert all("sample_perfect_tile" in str(s.trace) for s in spaces)


def test_importing_the_lesson_modules_does_not_import_tvm():
    import subprocess

    code = (
        "import sys; import course_lib.tuning.tuners, course_lib.tuning.metaschedule, course_lib.tuning.relax_model; "
        "print('tvm' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_committed_mlp_database_gives_most_trials_to_the_biggest_kernel():
    """Read from the tuning records themselves (not the saved summary): the gradient task scheduler gave most of the
    128 trials to the 512×512 hidden layer, the kernel with the largest latency."""
    db_dir = metaschedule.committed_dir("mlp")
    n_records = len([ln for ln in (db_dir / metaschedule.RECORD_FILE).read_text().splitlines() if ln.strip()])
    rows = metaschedule.record_summary(db_dir)
    assert len(rows) == 3 and sum(r["trials"] for r in rows) == n_records
    weights = [r["arg_shapes"][1] for r in rows]  # (x, W, bias, out) of each fused matmul+bias(+relu) kernel
    assert sorted(map(tuple, weights)) == [(256, 512), (512, 10), (512, 512)]
    most = max(rows, key=lambda r: r["trials"])
    assert most["arg_shapes"][1] == [512, 512] and most["trials"] > n_records / 3


# ---------------------------------------------------------------- issue 15: template bug, error message, parallel kernel
@pytest.mark.parametrize("order", list(template.ORDERS))
def test_one_by_one_tile_with_cache_write_and_vectorize_is_correct(order):
    """A 1×1 tile leaves the write-back and zeroing blocks directly under j.outer (the loop holding the reduction):
    the template must not vectorise that shared loop."""
    n = l = m = 32
    cfg = dict(tile_y=1, tile_x=1, tile_k=4, order=order, cache_write=1, unroll=1, vectorize=1, parallel=1)
    lib = matmul.build(template.matmul_template(cfg, n, l, m))
    assert matmul.run_and_check(lib, matmul.make_data(n, l, m, seed=2)) < 1e-3


def test_every_cache_write_vectorize_config_of_a_small_space_is_correct():
    n, l, m = 16, 8, 16
    space = template.matmul_space(n, l, m)
    data = matmul.make_data(n, l, m, seed=4)
    mod = matmul.matmul_module(n, l, m)
    picked = [i for i in space if space.get(i)["cache_write"] and space.get(i)["vectorize"] and space.get(i)["tile_k"] == 4]
    for idx in picked[:: max(1, len(picked) // 40)]:
        lib = matmul.build(template.matmul_template(space.get(idx), n, l, m, mod=mod))
        assert matmul.run_and_check(lib, data) < 1e-3, space.get(idx)


def test_wrong_result_reports_the_max_error():
    n = l = m = 16
    data = matmul.make_data(n, l, m, seed=0)
    lib = matmul.build(matmul.hand_schedule(matmul.matmul_module(n, l, m), "parallel", 4, 4))
    data.ref = data.ref.copy()
    data.ref[3, 5] += 0.5  # pretend numpy said something else for one element
    with pytest.raises(matmul.WrongResult, match=r"max \|C - numpy\| = 0.5 at \(3, 5\), 1 of 256 elements"):
        matmul.run_and_check(lib, data)
    space = template.matmul_space(n, l, m)
    meas = tuners.TemplateMeasurer(space, n, l, m, number=1, repeat=1)
    meas.data.ref = meas.data.ref + 1.0
    assert meas([0]) == [0.0]
    assert meas.last_errors[0].startswith("WrongResult: wrong result: max |C - numpy| = 1")


def test_committed_matmul_database_runs_on_every_core_it_was_tuned_for():
    """The replayed best 512³ schedule has a parallel loop with at least num-cores iterations (of its tuning target)."""
    db_dir = metaschedule.committed_dir("matmul_512")
    sch = metaschedule.compile_from_database(metaschedule.load_database(db_dir), matmul.matmul_module(512, 512, 512))
    cores = metaschedule.tuned_num_cores(db_dir)
    assert cores >= 1
    assert "T.parallel" in sch.mod.script()
    assert max(metaschedule.parallel_extents(sch), default=0) >= cores


def test_require_parallel_rejects_a_serial_schedule():
    mod = matmul.matmul_module(64, 64, 64)
    post = metaschedule.require_parallel(2)
    serial = matmul.hand_schedule(mod, "vectorize", 8, 8)
    parallel = matmul.hand_schedule(mod, "parallel", 8, 8)
    assert metaschedule.parallel_extents(serial) == [] and metaschedule.parallel_extents(parallel) == [8]
    assert post.apply(serial) is False and post.apply(parallel) is True
    assert metaschedule.require_parallel(16).apply(parallel) is False  # 8 parallel iterations cannot feed 16 cores


def test_tuning_scratch_folders_live_under_the_course_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    d = metaschedule.scratch_dir("probe")
    (d / "x").write_text("1")
    assert d == tmp_path / "l4" / "probe"
    assert not any(metaschedule.scratch_dir("probe").iterdir())  # fresh each time


def test_error_line_skips_the_empty_first_line_of_numpy_messages():
    assert tuners.error_line(AssertionError("\nNot equal to tolerance rtol=1e-4\n...")) == "AssertionError: Not equal to tolerance rtol=1e-4"
    assert tuners.error_line(AssertionError("")) == "AssertionError"


def test_committed_mlp_database_best_kernels_all_run_in_parallel():
    """Each of the three kernels' best record (lowest measured time) has a Parallel instruction in its trace."""
    db_dir = metaschedule.committed_dir("mlp")
    best = {}
    for line in (db_dir / metaschedule.RECORD_FILE).read_text().splitlines():
        if not line.strip():
            continue
        w, rec = json.loads(line)
        if rec[1]:
            t = sum(rec[1]) / len(rec[1])
            if w not in best or t < best[w][0]:
                best[w] = (t, rec)
    assert len(best) == 3
    for w, (_, rec) in best.items():
        assert any(inst[0] == "Parallel" for inst in rec[0][0]), f"workload {w}: best schedule has no parallel loop"
        assert int(rec[2].get("num-cores", 1)) >= 1


# ---------------------------------------------------------------- tuned for which CPU: works on any host (x86 or aarch64)
def test_database_target_is_read_and_compared_without_assuming_this_cpu():
    tuned = metaschedule.tuned_target(metaschedule.committed_dir("matmul_512"))
    assert tuned.get("kind", "llvm") == "llvm" and str(tuned.get("mcpu")) and int(tuned.get("num-cores", 1)) >= 1
    host = common.host_target()
    # the comparison is exactly "same mcpu and same num-cores", whichever CPU runs the test
    expect = str(tuned.get("mcpu")) == str(host.attrs["mcpu"]) and int(tuned.get("num-cores", 1)) == int(host.attrs["num-cores"])
    assert metaschedule.same_target(tuned, host) is expect
    assert metaschedule.same_target({"mcpu": "znver4", "num-cores": 2}, {"mcpu": "znver4", "num-cores": 2})
    assert not metaschedule.same_target({"mcpu": "znver4", "num-cores": 2}, {"mcpu": "sapphirerapids", "num-cores": 2})
    assert not metaschedule.same_target({"mcpu": "neoverse-v1", "num-cores": 2}, {"mcpu": "neoverse-v1", "num-cores": 4})
    assert metaschedule.target_label({"mcpu": "apple-m2", "num-cores": 8}) == "apple-m2, 8 core(s)"
    assert metaschedule.target_label(host).startswith(str(host.attrs["mcpu"]))


def test_seeds_are_re_measured_here_and_never_write_the_committed_files(tmp_path):
    src = metaschedule.committed_dir("matmul_512")
    before = {f: (src / f).read_bytes() for f in (metaschedule.WORKLOAD_FILE, metaschedule.RECORD_FILE)}
    mod = matmul.matmul_module(512, 512, 512)
    db, n = metaschedule.seed_database(mod, tmp_path, src, top_k=2)
    assert n == 2 and len(metaschedule.seed_traces(tmp_path)) == 2
    assert {f: (src / f).read_bytes() for f in before} == before
    host = common.host_target()
    rows = [json.loads(ln) for ln in (tmp_path / metaschedule.RECORD_FILE).read_text().splitlines() if ln.strip()]
    assert len(rows) == 2 and all(r[1][2]["mcpu"] == str(host.attrs["mcpu"]) for r in rows)  # recorded for THIS target
    committed_times = {tuple(r[1][1]) for r in metaschedule._records(src)}
    assert all(tuple(r[1][1]) not in committed_times for r in rows)  # times measured here, not copied
    sch = metaschedule.compile_from_database(db, mod)
    assert str(sch.trace) in metaschedule.seed_traces(tmp_path)
    assert metaschedule.seed_traces(tmp_path / "nothing-here") == []
    with pytest.raises(metaschedule.DatabaseError, match="no tuning record"):
        metaschedule.seed_database(matmul.matmul_module(64, 64, 64), tmp_path / "other", src, top_k=1)


def test_interleaved_timing_gives_every_kernel_the_same_rounds():
    n = 64
    data = matmul.make_data(n, n, n, seed=2)
    res = matmul.time_interleaved({"hand": matmul.hand_schedule(matmul.matmul_module(n, n, n), "parallel", 8, 8),
                                   "torch": "torch", "numpy": "numpy"}, data, rounds=4, number=2)
    assert list(res) == ["hand", "torch", "numpy"]
    for r in res.values():
        assert len(r.times_s) == 4 and r.items == common.matmul_flops(n, n, n) and all(t > 0 for t in r.times_s)
    with pytest.raises(ValueError, match="schedule, 'torch' or 'numpy'"):
        matmul.time_interleaved({"x": "cublas"}, data)
    with pytest.raises(ValueError, match="rounds and number"):
        matmul.time_interleaved({"t": "torch"}, data, rounds=0)
    # a wrong schedule is caught before it is timed
    bad = matmul.hand_schedule(matmul.matmul_module(n, n, n), "parallel", 8, 8)
    data.ref[0, 0] += 1.0
    with pytest.raises(matmul.WrongResult):
        matmul.time_interleaved({"bad": bad}, data, rounds=1)


def test_separated_needs_non_overlapping_spreads():
    from course_lib.bench import BenchResult

    def r(*ts):
        return BenchResult(name="x", times_s=list(ts), items=1e9, unit="FLOP")

    assert matmul.separated(r(1.0, 1.01, 1.02), r(2.0, 2.01, 2.02))
    assert not matmul.separated(r(1.0, 1.5, 2.0), r(1.4, 1.6, 2.1))


def test_implied_clock_of_a_single_core_kernel():
    est = common.peak_gflops_estimate("model name : X @ 2.10GHz\nflags : avx2 fma avx512f\n", cores=2)
    per_core = est.gflops / est.cores  # 16 lanes x 2 FMA x 2 FLOP x 2.1 GHz = 134.4
    assert per_core == pytest.approx(134.4)
    assert common.implied_clock_ghz(per_core, est) == pytest.approx(2.1)
    assert common.implied_clock_ghz(140.2, est) == pytest.approx(140.2 / 64)  # above the nominal clock: turbo
    assert common.implied_clock_ghz(2 * 140.2, est, cores=2) == pytest.approx(140.2 / 64)


def test_torch_matmul_settings_restores_threads_and_rejects_bad_settings():
    import torch

    before = torch.get_num_threads()
    res = common.torch_matmul_settings(32, {"one": (1, "randn"), "np": (1, "numpy")}, rounds=3, number=2)
    assert torch.get_num_threads() == before
    assert list(res) == ["one", "np"] and all(len(r.times_s) == 3 and r.items == 2 * 32**3 for r in res.values())
    with pytest.raises(ValueError, match="inputs one of"):
        common.torch_matmul_settings(32, {"x": (1, "cuda")})
    with pytest.raises(ValueError, match="threads must be >= 1"):
        common.torch_matmul_settings(32, {"x": (0, "randn")})


def test_plain_tables_answers_not_a_notebook_and_restores_the_check():
    from tvm_ffi import get_global_func

    before = get_global_func(metaschedule.plain_tables.NAME)
    with metaschedule.plain_tables():
        assert get_global_func(metaschedule.plain_tables.NAME)() is False  # no widget tables, no clear_output
    assert get_global_func(metaschedule.plain_tables.NAME)() == before()


@pytest.mark.parametrize("module", ["course_lib.tuning.metaschedule", "course_lib.tuning.relax_model"])
def test_retune_entry_points_print_help_and_need_an_out_folder(module, tmp_path):
    """`python -m ... --help` prints help and tunes nothing; without --out nothing is written into the checkout."""
    import subprocess
    import sys

    help_run = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert help_run.returncode == 0 and "--out" in help_run.stdout and "--trials" in help_run.stdout
    bare = subprocess.run([sys.executable, "-m", module], capture_output=True, text=True, cwd=tmp_path)
    assert bare.returncode == 2 and "--out" in bare.stderr.strip().splitlines()[-1]
    bad = subprocess.run([sys.executable, "-m", module, "--out", str(tmp_path / "db"), "--trials", "0"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2 and "positive" in bad.stderr.strip().splitlines()[-1]
    assert list(tmp_path.iterdir()) == []
