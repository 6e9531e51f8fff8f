"""A real Triton Inference Server on 127.0.0.1 (nvidia-pytriton) serving the traced model, and a tritonclient load test.

Introduced in ``01_torchscript_triton.ipynb``. ``nvidia-pytriton`` ships a real ``tritonserver`` binary
whose only backend is Python: the traced TorchScript model runs inside a ``@batch`` Python function,
and Triton's dynamic batcher (``dynamic_batching`` in the model config) merges concurrent requests
into one call. ::

    with TritonServer("model.pt", dynamic_batching=True) as srv:
        cls, ner = infer(srv.url, feats.as_numpy(), srv.name)
        row = load_test(srv.url, srv.name, payload, concurrency=16, n_requests=256)

Facts this module works around (see ``shared/toolchain.md``): the Python-backend stub links the
*system* ``libpython``, so ``LD_LIBRARY_PATH`` must point at the running interpreter's ``LIBDIR``;
pytriton forces ``numpy<2``; one ``tritonclient.http`` client per thread (a shared one hung).
"""

from __future__ import annotations

import os
import socket
import sys
import sysconfig
import threading
import time
from pathlib import Path

from course_lib.deploy import missing_extra

INPUT_NAMES = ("input_ids", "token_type_ids", "attention_mask")
OUTPUT_NAMES = ("cls_logits", "ner_logits")


class ServerNotRunning(ConnectionError):
    """No Triton server answers at the URL (the message says how to start one) (notebook 01)."""


class TritonRequestError(RuntimeError):
    """Triton rejected a request; the message holds Triton's own error text verbatim (notebook 01)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (bind to port 0 and read it back) (notebook 01)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def fix_libpython_path() -> str:
    """Prepend this interpreter's ``LIBDIR`` to ``LD_LIBRARY_PATH`` (the Python-backend stub needs *this* libpython) (notebook 01)."""
    libdir = sysconfig.get_config_var("LIBDIR") or str(Path(sys.base_prefix) / "lib")
    cur = os.environ.get("LD_LIBRARY_PATH", "")
    if libdir not in cur.split(":"):
        os.environ["LD_LIBRARY_PATH"] = f"{libdir}:{cur}" if cur else libdir
    return libdir


def start_command(model_path: str | Path = "model.pt", port: int = 8000) -> str:
    """The shell command that starts this lesson's server (shown when none is running) (notebook 01)."""
    return f"python -m course_lib.deploy.serve --model {model_path} --http-port {port}"


def _server_pids() -> list[int]:
    import psutil

    me = psutil.Process()
    out = []
    for p in me.children(recursive=True):
        try:
            if "tritonserver" in p.name() or "triton_python_backend_stub" in p.name():
                out.append(p.pid)
        except psutil.Error:
            continue
    return out


class TritonServer:
    """Context manager: start tritonserver (pytriton) on 127.0.0.1 serving a traced model; stop it on exit (notebook 01).

    ``dynamic_batching=False`` serves with batching support but no dynamic batcher (each request runs
    alone). ``unbatched_twin`` (a model name) also serves the same model *without* the dynamic batcher under
    that name, so both can be measured on one server, interleaved. Start and stop have timeouts; on exit any ``tritonserver``/stub process we started that is
    still alive is killed by pid, so a failure never leaves an orphaned server behind.
    """

    def __init__(self, model, name: str = "address", dynamic_batching: bool = True, max_batch_size: int = 64,
                 max_queue_delay_microseconds: int = 2000, preferred_batch_size: tuple[int, ...] | None = None,
                 host: str = "127.0.0.1", http_port: int | None = None, start_timeout_s: float = 60.0,
                 torch_threads: int | None = None, verbose: bool = False, log_file: str | Path | None = None,
                 unbatched_twin: str | None = None):
        self.model_arg = model
        self.name = name
        self.dynamic_batching = dynamic_batching
        self.max_batch_size = max_batch_size
        self.max_queue_delay_microseconds = max_queue_delay_microseconds
        self.preferred_batch_size = preferred_batch_size
        self.host = host
        self.http_port = http_port
        self.start_timeout_s = start_timeout_s
        self.torch_threads = torch_threads
        self.verbose = verbose
        self.log_file = Path(log_file) if log_file else None  # None: a file in the course cache (l1/)
        self.unbatched_twin = unbatched_twin
        # every batch each model function received (server side), by model name
        self.batch_sizes_by_model: dict[str, list[int]] = {name: []}
        if unbatched_twin:
            self.batch_sizes_by_model[unbatched_twin] = []
        self.batch_sizes = self.batch_sizes_by_model[name]
        self._triton = None
        self.startup_s: float | None = None

    @property
    def url(self) -> str:
        """``host:port`` of the HTTP endpoint (what ``tritonclient.http`` takes)."""
        return f"{self.host}:{self.http_port}"

    def _load_model(self):
        import torch

        if isinstance(self.model_arg, (str, Path)):
            return torch.jit.load(str(self.model_arg), map_location="cpu").eval()
        return self.model_arg.eval()

    def __enter__(self) -> "TritonServer":
        try:
            import numpy as np
            import torch
            from pytriton.decorators import batch
            from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
            from pytriton.triton import Triton, TritonConfig
        except ImportError:  # pragma: no cover
            raise missing_extra("nvidia-pytriton") from None
        fix_libpython_path()
        model = self._load_model()
        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)

        def make_infer_fn(sizes: list[int]):
            @batch
            def infer_fn(input_ids, token_type_ids, attention_mask):
                sizes.append(int(input_ids.shape[0]))
                with torch.no_grad():
                    c, n = model(torch.from_numpy(input_ids), torch.from_numpy(token_type_ids),
                                 torch.from_numpy(attention_mask))
                return {"cls_logits": c.numpy(), "ner_logits": n.numpy()}

            return infer_fn

        self.http_port = self.http_port or free_port(self.host)
        if self.log_file is None:
            from course_lib import paths

            self.log_file = paths.cache_dir("l1") / "tritonserver.log"
        cfg = TritonConfig(http_address=self.host, http_port=self.http_port, grpc_address=self.host,
                           grpc_port=free_port(self.host), metrics_port=free_port(self.host),
                           exit_timeout_secs=5, log_verbose=1 if self.verbose else 0, log_file=self.log_file)
        batcher = (DynamicBatcher(max_queue_delay_microseconds=self.max_queue_delay_microseconds,
                                  preferred_batch_size=list(self.preferred_batch_size or []) or None)
                   if self.dynamic_batching else None)
        t0 = time.perf_counter()
        self._triton = Triton(config=cfg)
        try:
            variants = [(self.name, batcher)] + ([(self.unbatched_twin, None)] if self.unbatched_twin else [])
            for model_name, model_batcher in variants:
                self._triton.bind(
                    model_name=model_name,
                    infer_func=make_infer_fn(self.batch_sizes_by_model[model_name]),
                    inputs=[Tensor(name=n, dtype=np.int64, shape=(-1,)) for n in INPUT_NAMES],
                    outputs=[Tensor(name="cls_logits", dtype=np.float32, shape=(-1,)),
                             Tensor(name="ner_logits", dtype=np.float32, shape=(-1, -1, -1))],
                    config=ModelConfig(max_batch_size=self.max_batch_size, batcher=model_batcher),
                    strict=False,
                )
            # run() in *this* thread: pytriton starts tritonserver with a parent-death signal, and on Linux the
            # "parent" is the creating thread — run it in a helper thread and the server gets SIGTERM as soon
            # as that thread ends. pytriton bounds the start with two module constants (120 s for the server,
            # 60 s for the model); we set both to our timeout for the duration of the start.
            import pytriton.triton as _pt

            saved = (_pt.DEFAULT_TRITON_STARTUP_TIMEOUT_S, _pt.WAIT_FORM_MODEL_TIMEOUT_S)
            _pt.DEFAULT_TRITON_STARTUP_TIMEOUT_S = _pt.WAIT_FORM_MODEL_TIMEOUT_S = self.start_timeout_s
            try:
                self._triton.run()
            finally:
                _pt.DEFAULT_TRITON_STARTUP_TIMEOUT_S, _pt.WAIT_FORM_MODEL_TIMEOUT_S = saved
            for model_name, _ in variants:
                wait_ready(self.url, model_name, timeout_s=self.start_timeout_s)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.perf_counter() - t0
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the server (pytriton's stop, then kill by pid whatever of ours is still alive)."""
        import psutil

        tr, self._triton = self._triton, None
        if tr is not None:
            th = threading.Thread(target=tr.stop, daemon=True)
            th.start()
            th.join(timeout_s)
        deadline = time.time() + 5
        while _server_pids() and time.time() < deadline:
            time.sleep(0.2)
        for pid in _server_pids():
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass

    def __exit__(self, *exc) -> None:
        self.stop()


def _client(url: str, timeout_s: float):
    try:
        import tritonclient.http as httpclient
    except ImportError:  # pragma: no cover
        raise missing_extra("tritonclient[http]") from None
    return httpclient.InferenceServerClient(url, connection_timeout=timeout_s, network_timeout=timeout_s)


def check_server(url: str, timeout_s: float = 3.0) -> None:
    """Raise :class:`ServerNotRunning` (with the start command) unless a Triton server is live at ``url`` (notebook 01)."""
    client = _client(url, timeout_s)
    try:
        live = client.is_server_live()
    except Exception as e:  # noqa: BLE001 - refused, timed out, DNS: all mean "not running here"
        live, why = False, f"{type(e).__name__}: {e}"
    else:
        why = "server answered but is not live"
    finally:
        client.close()  # an open keep-alive connection makes tritonserver's shutdown wait its exit timeout
    if not live:
        port = url.rsplit(":", 1)[-1]
        raise ServerNotRunning(
            f"no Triton server is running at http://{url} ({why}).\n"
            f"Start one with: {start_command(port=int(port) if port.isdigit() else 8000)}\n"
            f"or, in the NGC container: tritonserver --model-repository=<model_repository>"
        )


def wait_ready(url: str, model: str, timeout_s: float = 60.0) -> None:
    """Poll until ``model`` is ready at ``url``; TimeoutError after ``timeout_s`` (notebook 01)."""
    deadline = time.time() + timeout_s
    last = ""
    while time.time() < deadline:
        client = _client(url, 2.0)
        try:
            if client.is_model_ready(model):
                return
        except Exception as e:  # noqa: BLE001
            last = str(e)
        finally:
            client.close()
        time.sleep(0.2)
    raise TimeoutError(f"model {model!r} not ready at {url} after {timeout_s:.0f}s {last}")


def served_config(url: str, model: str = "address", timeout_s: float = 5.0) -> dict:
    """The model configuration the running server actually uses (Triton's JSON view of config.pbtxt) (notebook 01)."""
    check_server(url, timeout_s)
    client = _client(url, timeout_s)
    try:
        return client.get_model_config(model)
    finally:
        client.close()


def _make_inputs(arrays: dict):
    import tritonclient.http as httpclient

    inputs = []
    for name in INPUT_NAMES:
        if name not in arrays:
            raise ValueError(f"missing input {name!r} (need {', '.join(INPUT_NAMES)})")
        arr = arrays[name]
        x = httpclient.InferInput(name, list(arr.shape), "INT64")
        x.set_data_from_numpy(arr.astype("int64", copy=False))
        inputs.append(x)
    return inputs


def infer(url: str, arrays: dict, model: str = "address", timeout_s: float = 10.0, client=None):
    """One request: ``arrays`` = {input name: int64 array [batch, seq]} → (cls_logits, ner_logits) numpy arrays (notebook 01).

    :class:`ServerNotRunning` if nothing listens at ``url``; :class:`TritonRequestError` carrying Triton's
    message verbatim if the server rejects the request (wrong shape, dtype, unknown model...).
    """
    from tritonclient.utils import InferenceServerException

    own = client is None
    if own:
        check_server(url, timeout_s=min(timeout_s, 3.0))
        client = _client(url, timeout_s)
    try:
        res = client.infer(model, _make_inputs(arrays))
    except InferenceServerException as e:
        raise TritonRequestError(f"Triton rejected the request: {e.message()}") from None
    finally:
        if own:
            client.close()
    return res.as_numpy("cls_logits"), res.as_numpy("ner_logits")


def clean_addresses(url: str, tokenizer, texts: list[str], model: str = "address", max_seq_length: int = 64,
                    timeout_s: float = 10.0) -> list[dict]:
    """The whole service through Triton: texts → ``input2feature`` → request → area + entity spans (notebook 01)."""
    from course_lib.deploy.data import AREAS
    from course_lib.deploy.features import decode_spans, input2feature

    f = input2feature(tokenizer, texts, max_seq_length, pad_to_max=True)
    cls_logits, ner_logits = infer(url, f.as_numpy(), model, timeout_s=timeout_s)
    spans = decode_spans(ner_logits, f)
    out = []
    for t, c, s, note in zip(texts, cls_logits, spans, _notes(f)):
        if not t.strip():  # the model would still output an argmax; an empty field has no area
            out.append({"text": t, "area": None, "entities": [], "note": "empty address: nothing to classify"})
        else:
            out.append({"text": t, "area": AREAS[int(c.argmax())], "entities": s, "note": note})
    return out


def _notes(f) -> list[str]:
    notes, it = [], iter(f.notes)
    for cut in f.truncated:
        notes.append(next(it) if cut else "")
    return notes


def load_test(url: str, model: str, payloads: list[dict], concurrency: int, n_requests: int,
              timeout_s: float = 60.0) -> dict:
    """``n_requests`` requests from ``concurrency`` threads (one client each); throughput and p50/p95 latency (notebook 01).

    Requests cycle through ``payloads`` (each a dict of int64 arrays, usually batch 1). Errors are counted,
    not hidden: the row says how many failed and the first error.
    """
    from course_lib.bench import percentile

    check_server(url)
    if concurrency < 1 or n_requests < 1:
        raise ValueError("concurrency and n_requests must be >= 1")
    lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(n_requests))

    def worker():
        client = _client(url, timeout_s)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            inputs = _make_inputs(payloads[i % len(payloads)])
            t0 = time.perf_counter()
            try:
                client.infer(model, inputs)
                dt = time.perf_counter() - t0
                with lock:
                    lat.append(dt)
            except Exception as e:  # noqa: BLE001 - counted and reported
                with lock:
                    errors.append(str(e))
        client.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s * max(1, n_requests))
    wall = time.perf_counter() - t0
    row = {"concurrency": concurrency, "requests": len(lat), "errors": len(errors), "seconds": wall,
           "throughput_rps": len(lat) / wall if wall > 0 else 0.0,
           "p50_ms": percentile(lat, 50) * 1e3 if lat else float("nan"),
           "p95_ms": percentile(lat, 95) * 1e3 if lat else float("nan"),
           "latencies_s": lat}
    if errors:
        row["first_error"] = errors[0]
    return row


def sweep(model, payloads: list[dict], concurrencies=(1, 4, 16, 64), requests_per_level: int = 128,
          max_queue_delay_microseconds: int = 2000, max_batch_size: int = 64, torch_threads: int | None = None,
          rounds: int = 2, progress: bool = True):
    """Throughput and p50/p95 latency at each concurrency, with and without dynamic batching (notebook 01).

    One server hosts the model twice — ``address`` (dynamic batcher) and ``address_nodb`` (none) — and the two
    are measured **interleaved** (``rounds`` alternating rounds per concurrency, order flipped each round), so a
    load spike from another process on a shared machine hits both alike. Each round sends
    ``max(requests_per_level, 2 * concurrency) / rounds`` requests. Returns a pandas DataFrame, one row per
    (dynamic_batching, concurrency): pooled p50/p95, total requests / total time, batch sizes the server formed.
    """
    import pandas as pd

    from course_lib.bench import percentile

    names = {True: "address", False: "address_nodb"}
    rows = []
    with TritonServer(model, name=names[True], unbatched_twin=names[False], max_batch_size=max_batch_size,
                      max_queue_delay_microseconds=max_queue_delay_microseconds, torch_threads=torch_threads) as srv:
        for c in concurrencies:
            n = max(1, max(requests_per_level, 2 * c) // rounds)
            acc = {dyn: {"lat": [], "sec": 0.0, "err": 0, "first_error": None} for dyn in names}
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
                    a["first_error"] = a["first_error"] or row.get("first_error")
            for dyn in (True, False):
                a, bs = acc[dyn], srv.batch_sizes_by_model[names[dyn]]
                rows.append({"dynamic_batching": dyn, "concurrency": c, "requests": len(a["lat"]),
                             "errors": a["err"], "seconds": a["sec"],
                             "throughput_rps": len(a["lat"]) / a["sec"] if a["sec"] > 0 else 0.0,
                             "p50_ms": percentile(a["lat"], 50) * 1e3 if a["lat"] else float("nan"),
                             "p95_ms": percentile(a["lat"], 95) * 1e3 if a["lat"] else float("nan"),
                             "mean_batch": sum(bs) / len(bs) if bs else float("nan"),
                             "max_batch": max(bs) if bs else 0, "first_error": a["first_error"]})
                if progress:
                    r = rows[-1]
                    print(f"dynamic_batching={dyn!s:5} concurrency={c:3d}: {r['throughput_rps']:.1f} req/s, "
                          f"p50 {r['p50_ms']:.1f} ms, p95 {r['p95_ms']:.1f} ms, mean batch {r['mean_batch']:.1f}")
    return pd.DataFrame(rows).sort_values(["dynamic_batching", "concurrency"], ascending=[False, True],
                                          ignore_index=True)


def plot_sweep(df):
    """Throughput and p95 latency vs concurrency, with and without dynamic batching (two panels); returns the figure (notebook 01)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator, ScalarFormatter

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for dyn, g in df.groupby("dynamic_batching"):
        label = "dynamic batching" if dyn else "no dynamic batching"
        a1.plot(g["concurrency"], g["throughput_rps"], marker="o", label=label)
        a2.plot(g["concurrency"], g["p95_ms"], marker="o", label=label)
    for ax, yl in ((a1, "throughput (requests/s)"), (a2, "p95 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(df["concurrency"].unique()))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Triton (pytriton, Python backend) serving the traced BertMultitask")
    fig.tight_layout()
    return fig


def batching_speedup(df) -> float:
    """Throughput with / without dynamic batching at the highest concurrency measured in a :func:`sweep` table (notebook 01)."""
    top = df["concurrency"].max()
    on = df[(df.concurrency == top) & df.dynamic_batching]["throughput_rps"].iloc[0]
    off = df[(df.concurrency == top) & ~df.dynamic_batching]["throughput_rps"].iloc[0]
    return float(on / off)


def main(argv: list[str] | None = None) -> int:
    """``python -m course_lib.deploy.serve --model model.pt``: serve a traced model until Ctrl-C (notebook 01)."""
    import argparse

    ap = argparse.ArgumentParser(description="Serve a traced BertMultitask with Triton (pytriton) on 127.0.0.1")
    ap.add_argument("--model", required=True, help="TorchScript file (model_repository/<name>/1/model.pt)")
    ap.add_argument("--name", default="address")
    ap.add_argument("--http-port", type=int, default=8000)
    ap.add_argument("--no-dynamic-batching", action="store_true")
    args = ap.parse_args(argv)
    with TritonServer(args.model, name=args.name, http_port=args.http_port,
                      dynamic_batching=not args.no_dynamic_batching) as srv:
        print(f"serving {args.name!r} at http://{srv.url} (Ctrl-C to stop)")
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
