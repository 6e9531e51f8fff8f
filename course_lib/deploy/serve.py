"""A real Triton Inference Server on 127.0.0.1 (nvidia-pytriton) serving the traced model, and a tritonclient load test.

Introduced in ``01_torchscript_triton.ipynb``. ``nvidia-pytriton`` ships a real ``tritonserver`` binary
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

import os
import socket
import sys
import sysconfig
import threading
import time
from pathlib import Path

from course_lib import hw
from course_lib.deploy import EXTRA

INPUT_NAMES = ("input_ids", "token_type_ids", "attention_mask")
OUTPUT_NAMES = ("cls_logits", "ner_logits")


class ServerNotRunning(ConnectionError):
    """No Triton server answers at the URL (the message says how to start one) (notebook 01)."""


class TritonRequestError(RuntimeError):
    """Triton rejected a request; the message holds Triton's own error text verbatim (notebook 01)."""


class PortInUse(OSError):
    """The HTTP port asked for is taken by another process (the message says to pass ``--port``) (notebook 01)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (bind to port 0 and read it back) (notebook 01)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something already listens on ``host:port`` (we try to bind it ourselves) (notebook 01)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def default_model_path() -> Path:
    """Where notebook 01 writes the traced model: ``<course cache>/l1/model_repository/address/1/model.pt``."""
    from course_lib import paths

    return paths.cache_dir("l1") / "model_repository" / "address" / "1" / "model.pt"


def fix_libpython_path() -> str:
    """Prepend this interpreter's ``LIBDIR`` to ``LD_LIBRARY_PATH`` (the Python-backend stub needs *this* libpython) (notebook 01)."""
    libdir = sysconfig.get_config_var("LIBDIR") or str(Path(sys.base_prefix) / "lib")
    cur = os.environ.get("LD_LIBRARY_PATH", "")
    if libdir not in cur.split(":"):
        os.environ["LD_LIBRARY_PATH"] = f"{libdir}:{cur}" if cur else libdir
    return libdir


def start_command(model_path: str | Path | None = None, port: int = 8000) -> str:
    """The shell command that starts this lesson's server (shown when none is running) (notebook 01)."""
    return "python -m course_lib.deploy.serve" + (f" --model {model_path}" if model_path else "") + (
        f" --port {port}" if port != 8000 else "")


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


def make_infer_fn(model, batch_sizes: list[int]):
    """The function Triton calls with every batch its scheduler formed: numpy arrays in, numpy arrays out (notebook 01).

    ``@batch`` stacks the requests of one batch into arrays ``[n, seq]`` and splits the outputs back per
    request. ``batch_sizes`` records each ``n`` (how many requests the dynamic batcher merged).
    """
    import torch
    from pytriton.decorators import batch

    @batch
    def infer_fn(input_ids, token_type_ids, attention_mask):
        batch_sizes.append(int(input_ids.shape[0]))
        with torch.no_grad():
            cls_logits, ner_logits = model(torch.from_numpy(input_ids), torch.from_numpy(token_type_ids),
                                           torch.from_numpy(attention_mask))
        return {"cls_logits": cls_logits.numpy(), "ner_logits": ner_logits.numpy()}

    return infer_fn


def bind_model(triton, name: str, infer_fn, max_batch_size: int = 64, max_queue_delay_microseconds: int | None = 2000,
               preferred_batch_size: tuple[int, ...] | None = None) -> None:
    """Register ``infer_fn`` with a pytriton ``Triton`` as model ``name``; no dynamic batcher when the delay is None (notebook 01)."""
    import numpy as np
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

    batcher = None
    if max_queue_delay_microseconds is not None:
        batcher = DynamicBatcher(max_queue_delay_microseconds=max_queue_delay_microseconds,
                                 preferred_batch_size=list(preferred_batch_size or []) or None)
    triton.bind(model_name=name, infer_func=infer_fn,
                inputs=[Tensor(name=n, dtype=np.int64, shape=(-1,)) for n in INPUT_NAMES],
                outputs=[Tensor(name="cls_logits", dtype=np.float32, shape=(-1,)),
                         Tensor(name="ner_logits", dtype=np.float32, shape=(-1, -1, -1))],
                config=ModelConfig(max_batch_size=max_batch_size, batcher=batcher), strict=False)


def load_model(model):
    """A TorchScript file (path) loaded on CPU in eval mode, or a module as is; a clear error for a missing file (notebook 01)."""
    import torch

    if isinstance(model, (str, Path)):
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(f"no TorchScript model at {path}: run notebook 01 (it writes "
                                    f"{default_model_path()}) or pass --model PATH/model.pt")
        return torch.jit.load(str(path), map_location="cpu").eval()
    return model.eval()


class TritonServer:
    """Context manager: start tritonserver (pytriton) on 127.0.0.1 serving a traced model; stop it on exit (notebook 01).

    ``dynamic_batching=False`` serves with batching support but no dynamic batcher (each request runs
    alone). ``unbatched_twin`` (a model name) also serves the same model *without* the dynamic batcher under
    that name, so both can be measured on one server, interleaved. Start and stop have timeouts; on exit any
    ``tritonserver``/stub process we started that is still alive is killed by pid, so a failure never leaves an
    orphaned server behind. A port that is already taken raises :class:`PortInUse` before anything starts.
    """

    def __init__(self, model, name: str = "address", dynamic_batching: bool = True, max_batch_size: int = 64,
                 max_queue_delay_microseconds: int = 2000, preferred_batch_size: tuple[int, ...] | None = None,
                 host: str = "127.0.0.1", http_port: int | None = None, start_timeout_s: float = 60.0,
                 threads: int | None = None, verbose: bool = False, log_file: str | Path | None = None,
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
        self.threads = threads
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

    def _triton_config(self):
        from pytriton.triton import TritonConfig

        if self.log_file is None:
            from course_lib import paths

            self.log_file = paths.cache_dir("l1") / "tritonserver.log"
        return TritonConfig(http_address=self.host, http_port=self.http_port, grpc_address=self.host,
                            grpc_port=free_port(self.host), metrics_port=free_port(self.host),
                            exit_timeout_secs=5, log_verbose=1 if self.verbose else 0, log_file=self.log_file,
                            allow_metrics=False, allow_gpu_metrics=False)  # no metrics: no NVML probe on CPU

    def _run(self) -> None:
        # run() in *this* thread: pytriton starts tritonserver with a parent-death signal, and on Linux the
        # "parent" is the creating thread — run it in a helper thread and the server gets SIGTERM as soon
        # as that thread ends. pytriton bounds the start with two module constants (120 s for the server,
        # 60 s for the model); we set both to our timeout for the duration of the start.
        import pytriton.triton as pt

        # pytriton 0.7 echoes the server's console lines ("Signal (2) received." on stop) to our stdout; they stay
        # in the server's log file, so the echo is switched off (private attribute, hence the guard).
        if getattr(self._triton, "_triton_server", None) is None and hasattr(self._triton, "_initialize_server"):
            self._triton._initialize_server()
        if hasattr(getattr(self._triton, "_triton_server", None), "_verbose"):
            self._triton._triton_server._verbose = self.verbose
        saved = (pt.DEFAULT_TRITON_STARTUP_TIMEOUT_S, pt.WAIT_FORM_MODEL_TIMEOUT_S)
        pt.DEFAULT_TRITON_STARTUP_TIMEOUT_S = pt.WAIT_FORM_MODEL_TIMEOUT_S = self.start_timeout_s
        try:
            self._triton.run()
        finally:
            pt.DEFAULT_TRITON_STARTUP_TIMEOUT_S, pt.WAIT_FORM_MODEL_TIMEOUT_S = saved

    def __enter__(self) -> "TritonServer":
        triton_mod = hw.require("pytriton.triton", EXTRA)
        if self.http_port and port_in_use(self.http_port, self.host):
            raise PortInUse(f"port {self.http_port} is in use (pass --port to pick another one)")
        fix_libpython_path()
        model = load_model(self.model_arg)
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        self.http_port = self.http_port or free_port(self.host)
        t0 = time.perf_counter()
        self._triton = triton_mod.Triton(config=self._triton_config())
        try:
            delays = {self.name: self.max_queue_delay_microseconds if self.dynamic_batching else None}
            if self.unbatched_twin:
                delays[self.unbatched_twin] = None
            for model_name, delay in delays.items():
                bind_model(self._triton, model_name, make_infer_fn(model, self.batch_sizes_by_model[model_name]),
                           self.max_batch_size, delay, self.preferred_batch_size)
            self._run()
            for model_name in delays:
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
    httpclient = hw.require("tritonclient.http", EXTRA)
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


def check_payloads(payloads: list[dict]) -> None:
    """ValueError naming the first payload that lacks one of the model's inputs (before any request is sent) (notebook 01)."""
    if not payloads:
        raise ValueError("no payloads to send")
    for i, p in enumerate(payloads):
        missing = [n for n in INPUT_NAMES if n not in p]
        if missing:
            raise ValueError(f"payload {i} lacks input(s) {', '.join(missing)} (each needs {', '.join(INPUT_NAMES)})")


def load_test(url: str, model: str, payloads: list[dict], concurrency: int, n_requests: int,
              timeout_s: float = 30.0, deadline_s: float = 300.0) -> dict:
    """``n_requests`` requests from ``concurrency`` threads (one client each); throughput and p50/p95 latency (notebook 01).

    Requests cycle through ``payloads`` (each a dict of int64 arrays, usually batch 1); each client sends its
    share back to back, timed by :func:`course_lib.bench.benchmark` (one timing per request). Every request is
    accounted for: ``requests`` (answered) + ``errors`` (failed, timed out after ``timeout_s``, or not sent
    because the whole test passed ``deadline_s``) = ``n_requests``; ``first_error`` says why.
    """
    from course_lib import bench

    if concurrency < 1 or n_requests < 1:
        raise ValueError("concurrency and n_requests must be >= 1")
    check_payloads(payloads)
    check_server(url)
    stop_at = time.perf_counter() + deadline_s
    outcomes: list[tuple[float, str | None]] = []  # (seconds, error or None) per request
    lock = threading.Lock()

    def client_loop(k: int, share: int):
        status: list[str | None] = []  # one entry per timed call: None = answered

        def one_request(it=iter(range(k, n_requests, concurrency))):
            i = next(it)
            if time.perf_counter() > stop_at:
                status.append(f"not sent: the load test passed its deadline of {deadline_s:.0f} s")
                return
            try:
                client.infer(model, _make_inputs(payloads[i % len(payloads)]))
                status.append(None)
            except Exception as e:  # noqa: BLE001 - counted and reported
                status.append(f"{type(e).__name__}: {e}")

        try:
            client = _client(url, timeout_s)
            try:
                r = bench.benchmark(one_request, name=f"client {k}", warmup=0, repeat=share)
            finally:
                client.close()
            rows = list(zip(r.times_s, status))
        except Exception as e:  # noqa: BLE001 - a client that could not even start: all its requests failed
            rows = [(0.0, f"{type(e).__name__}: {e}")] * share
        with lock:
            outcomes.extend(rows)

    shares = [n_requests // concurrency + (k < n_requests % concurrency) for k in range(concurrency)]
    threads = [threading.Thread(target=client_loop, args=(k, n), daemon=True) for k, n in enumerate(shares) if n]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:  # after the deadline no request starts, and one in flight ends within timeout_s
        t.join(max(0.0, stop_at - time.perf_counter()) + timeout_s + 5.0)
    wall = time.perf_counter() - t0
    with lock:
        done = list(outcomes)
    lat = [sec for sec, err in done if err is None]
    errors = [err for _, err in done if err is not None]
    if len(done) < n_requests:
        errors += [f"no answer within the deadline of {deadline_s:.0f} s"] * (n_requests - len(done))
    row = {"concurrency": concurrency, "requests": len(lat), "errors": len(errors), "seconds": wall,
           "throughput_rps": len(lat) / wall if wall > 0 else 0.0,
           "p50_ms": bench.percentile(lat, 50) * 1e3 if lat else float("nan"),
           "p95_ms": bench.percentile(lat, 95) * 1e3 if lat else float("nan"),
           "latencies_s": lat}
    if errors:
        row["first_error"] = errors[0]
    return row


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


def query(texts: list[str], port: int = 8000, host: str = "127.0.0.1", model: str = "address",
          max_seq_length: int = 64) -> list[dict]:
    """Clean addresses with a running server of this lesson: area + entities per text (notebook 01)."""
    from course_lib.deploy.features import load_tokenizer

    return clean_addresses(f"{host}:{port}", load_tokenizer(), texts, model, max_seq_length)


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
    already running on ``--port`` and print one JSON line per text. Errors are one line on stderr, exit code 1.
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
