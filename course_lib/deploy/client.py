"""The client side of lesson 1's Triton server: requests with tritonclient, and the load test (notebook 01).

Every function takes the server's ``host:port`` URL; none starts a server (that is :mod:`course_lib.deploy.server`).
One ``tritonclient.http`` client per thread (a shared one hung).
"""

from __future__ import annotations

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


def start_command(model_path: str | Path | None = None, port: int = 8000) -> str:
    """The shell command that starts this lesson's server (shown when none is running) (notebook 01)."""
    return "python -m course_lib.deploy.serve" + (f" --model {model_path}" if model_path else "") + (
        f" --port {port}" if port != 8000 else "")


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


def query(texts: list[str], port: int = 8000, host: str = "127.0.0.1", model: str = "address",
          max_seq_length: int = 64) -> list[dict]:
    """Clean addresses with a running server of this lesson: area + entities per text (notebook 01)."""
    from course_lib.deploy.features import load_tokenizer

    return clean_addresses(f"{host}:{port}", load_tokenizer(), texts, model, max_seq_length)
