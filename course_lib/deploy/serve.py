"""Lesson 1's serving experiment and command line: a real Triton server (nvidia-pytriton), its client, the sweep.

Introduced in ``01_torchscript_triton.ipynb``. The pieces live in three modules — :mod:`course_lib.deploy.server`
(the PyTriton server), :mod:`course_lib.deploy.client` (requests and the load test) and this one (the
batching sweep, its plot, the command line); every public name of the first two is importable from here. ``nvidia-pytriton`` ships a real ``tritonserver`` binary
whose only backend is Python: the traced TorchScript model runs inside a ``@batch`` Python function,
and Triton's dynamic batcher (``dynamic_batching`` in the model config) merges concurrent requests
into one call. ::

    with TritonServer("model.pt", dynamic_batching=True) as srv:
        cls, ner = infer(srv.url, feats.as_numpy(), srv.name)
        row = load_test(srv.url, srv.name, payload, concurrency=16, n_requests=256)

Facts this module works around (found while building the lesson): the Python-backend stub links the
*system* ``libpython``, so ``LD_LIBRARY_PATH`` must point at the running interpreter's ``LIBDIR``;
pytriton forces ``numpy<2``; one ``tritonclient.http`` client per thread (a shared one hung).

From a shell::

    python -m course_lib.deploy.serve                                   # serve notebook 01's model.pt on port 8000
    python -m course_lib.deploy.serve --query "上海市徐汇区漕溪北路88号"   # ask that server (another terminal)
"""


from __future__ import annotations

import sys
import time

from course_lib import hw
from course_lib.deploy.client import (INPUT_NAMES, OUTPUT_NAMES, ServerNotRunning, TritonRequestError,  # noqa: F401
                                      check_payloads, check_server, clean_addresses, infer, load_test, query,
                                      served_config, start_command, wait_ready)
from course_lib.deploy.server import (PortInUse, TritonServer, bind_model, default_model_path,  # noqa: F401
                                      fix_libpython_path, free_port, load_model, make_infer_fn, port_in_use)
from course_lib.deploy.server import _server_pids  # noqa: F401  (the tests check that no server is orphaned)

__all__ = [  # notebook 01 and the tests use these as ``serve.NAME``
    "INPUT_NAMES", "OUTPUT_NAMES", "PortInUse", "ServerNotRunning", "TritonRequestError", "TritonServer",
    "batching_speedup", "bind_model", "check_payloads", "check_server", "clean_addresses", "default_model_path",
    "fix_libpython_path", "free_port", "infer", "load_model", "load_test", "main", "make_infer_fn", "plot_sweep",
    "port_in_use", "query", "served_config", "start_command", "sweep", "wait_ready",
]


def sweep(model, payloads: list[dict], concurrencies=(1, 4, 16, 64), requests_per_level: int = 128,
          max_queue_delay_microseconds: int = 2000, max_batch_size: int = 64, threads: int | None = None,
          rounds: int = 3):
    """Throughput and p50/p95 latency at each concurrency, with and without dynamic batching (notebook 01).

    One server hosts the model twice — ``address`` (dynamic batcher) and ``address_nodb`` (none) — and the two
    are measured **interleaved** (``rounds`` alternating rounds per concurrency, order flipped each round), so a
    load spike from another process on a shared machine hits both alike. Each round sends
    ``max(requests_per_level / rounds, 2 * concurrency)`` requests (every client sends at least two). Returns a pandas DataFrame, one row per
    (dynamic_batching, concurrency): pooled p50/p95, total requests / total time, the throughput of each round
    (``rps_rounds``, its min and max: the spread), the batch sizes the server formed.
    """
    import pandas as pd

    from course_lib.bench import percentile

    check_payloads(payloads)
    names = {True: "address", False: "address_nodb"}
    rows = []
    with TritonServer(model, name=names[True], unbatched_twin=names[False], max_batch_size=max_batch_size,
                      max_queue_delay_microseconds=max_queue_delay_microseconds, threads=threads) as srv:
        for c in hw.progress(list(concurrencies), desc="concurrency levels"):
            n = max(1, requests_per_level // rounds, 2 * c)
            acc = {dyn: {"lat": [], "sec": 0.0, "err": 0, "first_error": None, "rps": []} for dyn in names}
            for dyn in names:  # warm-up: connections, first calls
                load_test(srv.url, names[dyn], payloads, concurrency=min(c, 4), n_requests=8)
            for bs in srv.batch_sizes_by_model.values():
                bs.clear()
            for r in range(rounds):
                for dyn in ((True, False) if r % 2 == 0 else (False, True)):
                    row = load_test(srv.url, names[dyn], payloads, concurrency=c, n_requests=n)
                    a = acc[dyn]
                    a["lat"] += row["latencies_s"]
                    a["sec"] += row["seconds"]
                    a["err"] += row["errors"]
                    a["rps"].append(row["throughput_rps"])
                    a["first_error"] = a["first_error"] or row.get("first_error")
            for dyn in (True, False):
                a, bs = acc[dyn], srv.batch_sizes_by_model[names[dyn]]
                rows.append({"dynamic_batching": dyn, "concurrency": c, "requests": len(a["lat"]),
                             "errors": a["err"], "seconds": a["sec"],
                             "throughput_rps": len(a["lat"]) / a["sec"] if a["sec"] > 0 else 0.0,
                             "rps_min": min(a["rps"]), "rps_max": max(a["rps"]), "rps_rounds": a["rps"],
                             "p50_ms": percentile(a["lat"], 50) * 1e3 if a["lat"] else float("nan"),
                             "p95_ms": percentile(a["lat"], 95) * 1e3 if a["lat"] else float("nan"),
                             "mean_batch": sum(bs) / len(bs) if bs else float("nan"),
                             "max_batch": max(bs) if bs else 0, "first_error": a["first_error"]})
    return pd.DataFrame(rows).sort_values(["dynamic_batching", "concurrency"], ascending=[False, True],
                                          ignore_index=True)


def plot_sweep(df):
    """Throughput (with its min–max over rounds) and p50/p95 latency vs concurrency, with and without dynamic batching (notebook 01).

    Both value axes start at zero. Returns the figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator, ScalarFormatter

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for dyn, g in df.groupby("dynamic_batching"):
        label = "dynamic batching" if dyn else "no dynamic batching"
        color = "C0" if dyn else "C1"
        if {"rps_min", "rps_max"} <= set(g.columns):
            err = [g["throughput_rps"] - g["rps_min"], g["rps_max"] - g["throughput_rps"]]
            a1.errorbar(g["concurrency"], g["throughput_rps"], yerr=err, marker="o", capsize=3, color=color, label=label)
        else:
            a1.plot(g["concurrency"], g["throughput_rps"], marker="o", color=color, label=label)
        a2.plot(g["concurrency"], g["p50_ms"], marker="o", color=color, label=f"{label}, p50")
        a2.plot(g["concurrency"], g["p95_ms"], marker="^", ls="--", color=color, label=f"{label}, p95")
    for ax, yl in ((a1, "throughput (requests/s)\n(bars: min–max over rounds)"), (a2, "latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(df["concurrency"].unique()))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_ylim(bottom=0)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Triton (pytriton, Python backend) serving the traced BertMultitask")
    fig.tight_layout()
    return fig


def batching_speedup(df, concurrency: int | None = None) -> tuple[float, float, float]:
    """Throughput with / without dynamic batching at ``concurrency`` (default: the highest measured) in a :func:`sweep` table (notebook 01).

    Returns ``(pooled ratio, lowest, highest per-round ratio)``: the rounds were interleaved pairs, so each
    round gives its own ratio, and their range is the spread of the measurement.
    """
    c = df["concurrency"].max() if concurrency is None else concurrency
    sel = df[df.concurrency == c]
    if sel.empty:
        raise ValueError(f"no rows at concurrency {c}; the sweep measured {sorted(df.concurrency.unique())}")
    on, off = sel[sel.dynamic_batching].iloc[0], sel[~sel.dynamic_batching].iloc[0]
    ratio = float(on["throughput_rps"] / off["throughput_rps"])
    if "rps_rounds" in sel.columns:
        per_round = [a / b for a, b in zip(on["rps_rounds"], off["rps_rounds"]) if b > 0]
        if per_round:
            return ratio, min(per_round), max(per_round)
    return ratio, ratio, ratio


def _wait_for_stop() -> None:
    """Block until Ctrl-C or SIGTERM (``kill PID``), so the server stops cleanly either way."""
    import signal

    def _term(signum, frame):
        raise KeyboardInterrupt

    saved = signal.signal(signal.SIGTERM, _term)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, saved)


def main(argv: list[str] | None = None) -> int:
    """``python -m course_lib.deploy.serve [--model model.pt] [--port N] [--query TEXT ...]`` (notebook 01).

    Without ``--query``: serve the traced model until Ctrl-C (or SIGTERM). With ``--query``: send the texts to a server
    already running on ``--port`` and print one JSON line per text. Errors are one line on stderr, exit code 1 (2 for a bad ``--port``).
    """
    import argparse
    import json

    ap = argparse.ArgumentParser(
        prog="python -m course_lib.deploy.serve",
        description="Serve notebook 01's traced BertMultitask with Triton (pytriton) on 127.0.0.1, or query it.",
        epilog='example: python -m course_lib.deploy.serve   then, in another terminal:\n'
               '         python -m course_lib.deploy.serve --query "上海市徐汇区漕溪北路88号"',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help=f"TorchScript file (default: {default_model_path()})")
    ap.add_argument("--name", default="address", help="model name on the server (default: address)")
    ap.add_argument("--port", "--http-port", dest="port", type=int, default=8000, help="HTTP port (default: 8000)")
    ap.add_argument("--no-dynamic-batching", action="store_true")
    ap.add_argument("--query", nargs="+", metavar="TEXT", help="ask a running server to clean these addresses")
    args = ap.parse_args(argv)
    if not 1 <= args.port <= 65535:
        print(f"error: --port must be a TCP port between 1 and 65535, got {args.port}", file=sys.stderr)
        return 2
    try:
        if args.query:
            for out in query(args.query, port=args.port, model=args.name):
                print(json.dumps(out, ensure_ascii=False))
            return 0
        with TritonServer(args.model or default_model_path(), name=args.name, http_port=args.port,
                          dynamic_batching=not args.no_dynamic_batching) as srv:
            print(f"serving {args.name!r} at http://{srv.url} (Ctrl-C to stop); query it with:\n"
                  f"  python -m course_lib.deploy.serve --query \"上海市徐汇区漕溪北路88号\""
                  + (f" --port {args.port}" if args.port != 8000 else ""), flush=True)
            _wait_for_stop()
    except (FileNotFoundError, PortInUse, ServerNotRunning, TritonRequestError, hw.MissingDependency,
            TimeoutError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
