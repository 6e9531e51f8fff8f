"""A real Triton Inference Server on 127.0.0.1 (nvidia-pytriton) serving the traced model (notebook 01).

``nvidia-pytriton`` ships a real ``tritonserver`` binary whose only backend is Python: the traced TorchScript
model runs inside a ``@batch`` Python function, and Triton's dynamic batcher (``dynamic_batching`` in the model
config) merges concurrent requests into one call. Facts this module works around (found while building the
lesson): the Python-backend stub links the *system* ``libpython``, so ``LD_LIBRARY_PATH`` must point at the
running interpreter's ``LIBDIR``; pytriton forces ``numpy<2``.
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
from course_lib.deploy.client import INPUT_NAMES, wait_ready

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
