"""The per-rank entry point ``python -m course_lib.parallel.worker --plan PLAN --out DIR`` (02).

Started by :func:`course_lib.parallel.launcher.launch` under ``torchrun``. Each rank joins the
process group (timeouts on every collective), computes the single-device reference logits, then
for each run of the plan: builds the strategy, checks parity, times it, samples utilisation and
writes ``DIR/run{i}_rank{r}.json``. Any exception is written to ``DIR/error_rank{r}.txt`` before the
rank exits non-zero, so the launcher can show it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path


def _with_streams(runner, streams: int):
    """A callable running the batch as ``streams`` chunks, each on its own CUDA stream (GPU only)."""
    import torch

    from course_lib.parallel.model import Batch

    if streams <= 1:
        return runner
    if not torch.cuda.is_available():
        raise RuntimeError(f"{streams} CUDA streams requested but CUDA is not available")
    pool = [torch.cuda.Stream() for _ in range(streams)]

    def fn(batch):
        outs = []
        chunks = batch.input_ids.tensor_split(streams)
        cur = torch.cuda.current_stream()
        for s, ids in zip(pool, chunks):
            s.wait_stream(cur)
            with torch.cuda.stream(s):
                outs.append(runner(Batch(ids)))
        for s in pool:
            cur.wait_stream(s)
        return None if any(o is None for o in outs) else torch.cat(outs)

    return fn


def expected_rows(runner, ref, streams: int = 1):
    """The reference rows this rank's output should equal (each stream chunk sliced like the runner slices it)."""
    import torch

    if streams <= 1:
        return ref[runner.rows(ref.shape[0])]
    parts = []
    for chunk in torch.arange(ref.shape[0]).tensor_split(streams):
        sub = ref[chunk]
        parts.append(sub[runner.rows(sub.shape[0])])
    return torch.cat(parts)


def _util_rows(summary: dict, devices: list[str]) -> list[dict]:
    rows = []
    for dev in devices:
        key = dev if dev.startswith("cuda") else "cpu:process"
        if dev.startswith("cuda") and ":" not in dev:
            key = "cuda:0"
        st = summary.get(key)
        if st is not None:
            rows.append({"device": key, "util_max": st.util_max, "util_mean": st.util_mean, "mem_max_mib": st.mem_max_mib})
    # one CPU process serving several logical "cpu" devices: report it once
    seen, out = set(), []
    for r in rows:
        if r["device"] not in seen:
            seen.add(r["device"])
            out.append(r)
    return out


def _build(run: dict, plan: dict, world, batch):
    """Build strategy ``run`` on this rank; returns (runner, seconds it took)."""
    from course_lib.parallel import strategy_module

    name = run["strategy"]
    kwargs = {}
    if name in ("pipeline", "pipelining"):
        kwargs.update(microbatches_per_batch=int(run.get("microbatches", 1)), balance=run.get("balance", "layers"),
                      seq_len=batch.seq_len)
    if name == "split":
        kwargs["devices"] = run["devices"]
    t0 = time.perf_counter()
    runner = strategy_module(name).build(plan["model"], world, **kwargs)
    return runner, time.perf_counter() - t0


def _time(fn, runner, batch, plan: dict):
    """Latency (one batch, then sync) and throughput (``qps_batches`` back to back, one sync) through ``bench``."""
    from course_lib import bench

    def one_batch():
        fn(batch)
        runner.sync()

    def batches_back_to_back():  # a pipeline overlaps consecutive batches here
        for _ in range(plan["qps_batches"]):
            fn(batch)
        runner.sync()

    lat = bench.benchmark(one_batch, name="latency", items=batch.size, unit="sequences",
                          warmup=plan["warmup"], repeat=plan["repeat"], device="cpu")
    thr = bench.benchmark(batches_back_to_back, name="throughput", items=plan["qps_batches"] * batch.size,
                          unit="sequences", warmup=0, repeat=plan["qps_rounds"], device="cpu")
    return lat, thr


def _memory(devices: list[str], util: list[dict]) -> float:
    import torch

    if any(str(d).startswith("cuda") for d in devices):
        return max(torch.cuda.max_memory_allocated(torch.device(d)) for d in set(devices)) / 2**20
    return max((u["mem_max_mib"] for u in util), default=float("nan"))


def _measure(run: dict, plan: dict, world, batch, ref):
    """Build, check parity and time one strategy under a utilisation sampler, with the run's thread count.

    Single-process strategies (``single``, ``split``) run with ``plan["single_threads"]`` threads
    (all cores: the fair one-process baseline), the others with the rank's share.
    """
    import torch

    from course_lib import hw
    from course_lib.parallel import SINGLE_PROCESS

    streams = int(run.get("streams", 1))
    threads_before = torch.get_num_threads()
    if run["strategy"] in SINGLE_PROCESS and plan.get("single_threads"):
        torch.set_num_threads(int(plan["single_threads"]))
    try:
        runner, build_s = _build(run, plan, world, batch)
        fn = _with_streams(runner, streams)
        out = fn(batch)
        runner.sync()
        parity = None
        if out is not None:
            parity = float((out.detach().float().cpu() - expected_rows(runner, ref, streams)).abs().max())
        devices = [str(d) for d in (run.get("devices") or [world.device])]
        if any(d.startswith("cuda") for d in devices):
            torch.cuda.reset_peak_memory_stats()
        with hw.UtilizationSampler(interval=plan.get("sample_interval", 0.1)) as sampler:
            lat, thr = _time(fn, runner, batch, plan)
        return dict(runner=runner, build_s=build_s, parity=parity, devices=devices, lat=lat, thr=thr,
                    sampler=sampler, threads=torch.get_num_threads())
    finally:
        torch.set_num_threads(threads_before)


def run_one(run: dict, plan: dict, world, batch, ref) -> dict:
    """Build, check parity, time and sample one strategy on this rank; returns the JSON record."""
    from course_lib import bench
    from course_lib.parallel import SINGLE_PROCESS

    name, streams = run["strategy"], int(run.get("streams", 1))
    m = _measure(run, plan, world, batch, ref)
    runner, devices, lat, thr, sampler = m["runner"], m["devices"], m["lat"], m["thr"], m["sampler"]
    util = _util_rows(sampler.summary(), devices)
    keys = {u["device"] for u in util}
    info = {k: v for k, v in runner.info.items() if isinstance(v, (int, float, str, list, bool))}
    if name == "split":
        mode = runner.info["mode"]
        info.update(transfers_per_call=runner.info["counts"]["per_call_transfers"],
                    bytes_moved_total=mode.bytes_moved, ops_total=mode.ops)
    single = name in SINGLE_PROCESS
    return {
        "strategy": name,
        "label": run.get("label", name),
        "rank": world.rank,
        "world_size": len(devices) if single else world.world_size,
        "backend": "none" if single else world.backend,
        "device": ",".join(devices),
        "batch": batch.size,
        "seq_len": batch.seq_len,
        "microbatches": int(run.get("microbatches", 1)),
        "streams": streams,
        "balance": run.get("balance", "layers"),
        "parity_max_abs_diff": m["parity"],
        "times_s": lat.times_s,
        "p10_ms": bench.percentile(lat.times_s, 10) * 1e3,
        "p50_ms": lat.median_ms,
        "p90_ms": lat.p90_ms,
        "round_times_s": thr.times_s,
        "qps": thr.throughput,  # at the median round
        "qps_p10": thr.items / bench.percentile(thr.times_s, 90),  # slow rounds give the low end
        "qps_p90": thr.items / bench.percentile(thr.times_s, 10),
        "util": util,
        "util_trace": [(round(t, 3), d, u) for t, d, u, _ in sampler.trace if d in keys],
        "peak_mem_mib": _memory(devices, util),
        "param_mib": runner.local_param_mib(),
        "build_s": m["build_s"],
        "threads": m["threads"],
        "info": info,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the plan on this rank; returns 0 (exceptions propagate after the error file is written)."""
    p = argparse.ArgumentParser(prog="course_lib.parallel.worker")
    p.add_argument("--plan", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    out = Path(args.out)
    rank = int(os.environ.get("RANK", 0))
    try:
        plan = json.loads(Path(args.plan).read_text(encoding="utf-8"))
        import torch

        if plan.get("threads"):
            torch.set_num_threads(int(plan["threads"]))
        from course_lib.parallel import SINGLE_PROCESS
        from course_lib.parallel.model import make_batch, reference_logits
        from course_lib.parallel.world import init_world

        world = init_world(timeout_s=plan.get("timeout_s", 120), backend=plan.get("backend"))
        if plan.get("fail_rank") == rank:
            raise RuntimeError(f"injected failure on rank {rank} (fail_rank={rank})")
        if plan.get("hang_rank") == rank:  # never reaches the first collective: the others must time out
            time.sleep(3600)
        batch = make_batch(plan["batch"], plan["seq_len"], seed=plan.get("seed", 1))
        ref = reference_logits(plan["model"], batch, device=world.device)
        world.sync()
        for i, run in enumerate(plan["runs"]):
            if run["strategy"] not in SINGLE_PROCESS or rank == 0:
                rec = run_one(run, plan, world, batch, ref)
                (out / f"run{i}_rank{rank}.json").write_text(json.dumps(rec), encoding="utf-8")
            world.sync()
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        return 0
    except BaseException:
        (out / f"error_rank{rank}.txt").write_text(traceback.format_exc(), encoding="utf-8")
        raise


if __name__ == "__main__":
    sys.exit(main())
