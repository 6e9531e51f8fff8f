"""The fast weight-only int8 / int4 kernel behind ``kernel="fast"`` (notebook 03, section 7).

The seed's ``QLinear`` dequantises its whole weight to float on every call and then runs a float GEMV: it reads the
small integer weight *and* writes and re-reads a float copy, so it is slower than ``nn.Linear``. Decoding one token at
batch 1 is memory-bound (every weight is read once per token, two flops per weight), so a kernel that reads the
packed integers directly should win by the byte ratio. :mod:`course_lib.llm.kernel_bench` measured the candidates;
the one used by models is onnxruntime's contrib op ``MatMulNBits`` (MLAS) with ``accuracy_level=4``: MLAS quantizes
the activation vector to int8 per block and computes int8·int8 dot products (AVX-512 VNNI / AMX / AVX2 / NEON, chosen
by MLAS from the CPU's features), reading 1 byte (int8) or half a byte (int4) per weight — what llama.cpp does for
Q8_0/Q4 weights. It is the ``kernel="fast"`` of :meth:`QLinear.set_kernel` and ``model.quantize(bits, group_size,
kernel="fast")``. This module imports nothing from ``quant``: ``quant`` imports it.

Layout conversion (once, at ``set_kernel``): MatMulNBits stores unsigned codes with an implicit zero point (``q + 128``
for 8 bits, ``q + 8`` for 4 bits, two 4-bit codes per byte, low nibble first) in blocks of ``block_size`` columns with
one float32 scale per (row, block). Blocks are at most 32 columns (:data:`ACT_BLOCK`, the activation rounding block):
a per-row scale or a group of 64 is repeated for every block it covers (the same numbers, exactly). onnxruntime
pre-packs the initializers into its own tiled layout, so the fast layer holds a second copy of the weights next to
the reference storage (which stays, for ``state_dict`` and the reference path).

Threads: each layer gets the thread count that measured faster *on this machine* for its shape and format — one
thread or all of torch's — in a one-time calibration cached under the course cache (:func:`choose_threads`). A
batch-1 GEMV over a small matrix can finish before a second (non-spinning) thread wakes up on one CPU, and gain from
it on another; a fixed rule was wrong on one of the two CPU families the course was tried on.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Callable

import numpy as np
import torch

from course_lib import paths

KERNELS = ("reference", "fast")
FAST_BITS = (4, 8)
FAST_GROUP_SIZES = (16, 32, 64, 128, 256)  # MatMulNBits block sizes: powers of two >= 16
FAST_ACCURACY_LEVEL = 4  # int8 activations, int8 dot products (0 = float32 compute, slow for 8 bits)
# With accuracy_level 4, MLAS rounds the activation vector to int8 per block of the weight's block size, so the
# block also sets the activation error. Measured on SmolLM2 (perplexity zh / en vs the reference path of the same
# format, 2 × 512 tokens): int8 per row, block 64 +0.98 % / +0.26 %, block 32 +0.41 % / +0.26 %, block 16
# +0.39 % / -0.26 %; int4 g64, block 64 -0.03 % / +0.53 %, block 32 -0.13 % / +0.24 %. So the block is at most 32
# values (llama.cpp's Q8_0 block, the one it rounds activations to as well): a per-row scale, or a group of 64, is
# the same scale repeated for each block of 32 — the weights are unchanged, 4 bytes of scale per 32 weights.
ACT_BLOCK = 32
PER_ROW_BLOCKS = (32, 16)
THREADS_CACHE = "fast_threads.json"  # under paths.cache_dir("l3"): the calibrated thread count per shape


def check_fast_config(bits, group_size, in_features: int) -> int:
    """The MatMulNBits block size for (bits, group_size, in_features); ValueError naming what is supported."""
    if isinstance(bits, bool) or bits not in FAST_BITS:
        raise ValueError(f"kernel 'fast' supports bits {FAST_BITS}, got {bits!r}")
    if group_size is None:  # per-row scale, repeated per block of 32 (see ACT_BLOCK)
        for block in PER_ROW_BLOCKS:
            if in_features % block == 0:
                return block
        raise ValueError(f"kernel 'fast' needs in_features to be a multiple of 16 for per-row scales, got {in_features}")
    if group_size not in FAST_GROUP_SIZES:
        raise ValueError(f"kernel 'fast' supports group_size None (per row) or {FAST_GROUP_SIZES}, got {group_size!r}")
    return min(int(group_size), ACT_BLOCK)  # a larger group: its scale repeated for each block of 32


def to_matmulnbits(q: torch.Tensor, scale: torch.Tensor, bits: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """One-time layout conversion: signed codes (out, in) + scales → MatMulNBits' (B uint8 (out, blocks, bytes), scales).

    Runs on the CPU whatever device the codes live on (the result is onnxruntime's CPU initializer)."""
    q, scale = q.detach().cpu(), scale.detach().cpu()
    out_f, in_f = q.shape
    n_blocks = in_f // block
    s = scale.to(torch.float32)
    s = s[:, None].expand(out_f, n_blocks) if s.dim() == 1 else s.repeat_interleave(s.shape[1] and n_blocks // s.shape[1], dim=1)
    if bits == 8:
        b = (q.to(torch.int16) + 128).to(torch.uint8).view(out_f, n_blocks, block)
    else:
        u = (q.to(torch.int16) + 8).to(torch.uint8)
        b = (u[:, 0::2] | (u[:, 1::2] << 4)).view(out_f, n_blocks, block // 2)  # low nibble = even column
    return b.contiguous().numpy(), s.contiguous().reshape(-1).numpy()


def session_options(threads: int, spin: bool = False):
    """onnxruntime options of every lesson-3 session: ``threads`` intra-op threads; ``spin``: may they spin when idle?

    onnxruntime's default lets idle pool threads spin, waiting for the next parallel operator. A ``FastLinear``
    session runs one operator and hands back to torch, whose own threads then need the cores: no spinning
    (``spin=False``). A whole decoding step in one session (:class:`course_lib.llm.onnx_decode.GraphDecoder`) runs
    hundreds of operators back to back; there spinning saves a thread wake-up per operator (``spin=True``).
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return so


def matmulnbits_session(b: np.ndarray, scales: np.ndarray, bits: int, block: int, in_features: int,
                        threads: int | None = None, accuracy_level: int = FAST_ACCURACY_LEVEL):
    """An onnxruntime session computing Y = A @ dequant(B).T with the weights as initializers (pre-packed once)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    out_f = b.shape[0]
    node = helper.make_node("MatMulNBits", ["A", "B", "S"], ["Y"], domain="com.microsoft", K=in_features,
                            N=out_f, bits=bits, block_size=block, accuracy_level=accuracy_level)
    graph = helper.make_graph(
        [node], "qlinear",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", in_features])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", out_f])],
        initializer=[numpy_helper.from_array(b, "B"), numpy_helper.from_array(scales, "S")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    so = session_options(threads or torch.get_num_threads())
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


# ----------------------------------------------------------------------------------------------
# threads: measured once per machine, shape and format


def _cpu_name() -> str:
    from course_lib import hw

    feats = getattr(hw, "cpu_features", None)
    if feats is not None:
        try:
            f = feats()
            return f"{f.get('model', '?')} [{torch.backends.cpu.get_cpu_capability()}]"
        except Exception:  # helper not ready on this branch: fall back to our own read
            pass
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith(("model name", "Model"))), "")
    except OSError:
        import platform

        model = platform.processor() or platform.machine()
    return f"{model} [{torch.backends.cpu.get_cpu_capability()}]"


def _threads_cache():
    return paths.cache_dir("l3") / THREADS_CACHE


def _per_call_s(sess, a: np.ndarray, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        sess.run(None, {"A": a})
    return (time.perf_counter() - t0) / calls


def calibrate_threads(b, s, bits, block, in_features, max_threads: int, rounds: int = 7, calls: int = 20) -> dict:
    """Time a batch-1 call with 1 and with ``max_threads`` threads in interleaved rounds → {threads: median s/call}.

    The rounds are :func:`course_lib.bench.interleaved`'s: a sample is the mean of ``calls`` calls of one session, taken
    after the other session's threads stopped spinning."""
    from course_lib import bench

    a = np.random.default_rng(0).standard_normal((1, in_features), dtype=np.float32)
    sessions = {n: matmulnbits_session(b, s, bits, block, in_features, n) for n in sorted({1, max_threads})}
    for sess in sessions.values():
        _per_call_s(sess, a, 3)  # warm: the first run allocates
    res = bench.interleaved({str(n): functools.partial(_per_call_s, sess, a, calls) for n, sess in sessions.items()},
                            rounds=rounds, warmup=0, unit="calls", self_timed=True)
    return {n: res[str(n)].median_s for n in sessions}


def choose_threads(b, s, bits: int, block: int, in_features: int, max_threads: int | None = None) -> int:
    """1 or ``max_threads`` (default torch's): whichever measured faster here for this shape and format.

    Measured once (:func:`calibrate_threads`, ~0.3 s per shape) and cached in ``paths.cache_dir("l3")/fast_threads.json``
    keyed by CPU model, ISA, shape, format and ``max_threads``; delete that file (or call :func:`forget_thread_choices`)
    to measure again, e.g. after the machine's load changed."""
    max_threads = int(max_threads or torch.get_num_threads())
    if max_threads <= 1:
        return 1
    key = f"{_cpu_name()}|{b.shape[0]}x{in_features}|int{bits}|block{block}|max{max_threads}"
    path = _threads_cache()
    try:
        table = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    except (OSError, ValueError):
        table = {}  # a damaged cache is measured again
    if key in table and "threads" in table[key]:
        return int(table[key]["threads"])
    t = calibrate_threads(b, s, bits, block, in_features, max_threads)
    best = min(t, key=t.get)
    table[key] = {"threads": best, "us_per_call": {str(n): round(v * 1e6, 2) for n, v in t.items()}}
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(table, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
    return best


def forget_thread_choices() -> None:
    """Delete the cached thread calibration (the next fast layer measures again)."""
    _threads_cache().unlink(missing_ok=True)


class FastLinear:
    """Batch-any fused int8/int4 weight-only matmul through MatMulNBits; the callable behind ``kernel='fast'``.

    ``threads``: onnxruntime threads for this layer; None = :func:`choose_threads` (1 or torch's thread count,
    whichever measured faster for this shape on this machine). ``self.threads`` says which was used."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bits: int, group_size: int | None,
                 bias: torch.Tensor | None = None, threads: int | None = None):
        self.out_features, self.in_features = q.shape
        self.block = check_fast_config(bits, group_size, self.in_features)
        b, s = to_matmulnbits(q, scale, bits, self.block)
        self.threads = int(threads or choose_threads(b, s, bits, self.block, self.in_features))
        self.session = matmulnbits_session(b, s, bits, self.block, self.in_features, self.threads)
        self.bias = None if bias is None else bias.detach().cpu()
        self.nbytes = b.nbytes + s.nbytes + (self.bias.nbytes if self.bias is not None else 0)  # what each call reads

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        a = x.detach().reshape(-1, self.in_features).to(torch.float32).contiguous()  # inference only: no autograd
        y = torch.from_numpy(self.session.run(None, {"A": a.numpy()})[0])
        if self.bias is not None:
            y = y + self.bias.to(torch.float32)
        return y.view(*x.shape[:-1], self.out_features).to(x.dtype)


def _devices(model) -> set[str]:
    return {str(p.device) for p in model.parameters()} | {str(b.device) for b in model.buffers()}


def require_cpu(model) -> None:
    """ValueError (one line) when any weight of ``model`` is off the CPU: 'fast' is onnxruntime's CPU kernel."""
    off_cpu = sorted(d for d in _devices(model) if d != "cpu")
    if off_cpu:
        raise ValueError(f"kernel 'fast' runs on the CPU (onnxruntime MatMulNBits) but the model is on "
                         f"{', '.join(off_cpu)}: quantize a CPU copy (model.cpu()) or use kernel='reference'")


def check_kernel(kernel: str, bits: int, group_size, model=None) -> None:
    """ValueError (naming what is supported) unless ``kernel`` handles (bits, group_size) on every target layer.

    'fast' is a CPU kernel (onnxruntime's CPU provider): a model with weights on another device is refused here,
    before any layer changes, instead of failing in ``.numpy()`` half-way through quantizing."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel == "fast":
        in_sizes = {576}  # SmolLM2's hidden size when no model is given
        if model is not None:
            require_cpu(model)
            in_sizes = {m.in_features for m in model.modules() if isinstance(m, torch.nn.Linear)} or in_sizes
        for k in sorted(in_sizes):
            if group_size is not None and isinstance(group_size, int) and group_size in FAST_GROUP_SIZES and k % group_size:
                continue  # QLinear reports a group that does not divide in_features
            check_fast_config(bits, group_size, k)


def make_kernel(layer, kernel: str, threads: int | None = None) -> Callable | None:
    """The callable for ``QLinear.set_kernel``: None for 'reference', a :class:`FastLinear` for 'fast'."""
    if kernel == "reference":
        return None
    if kernel != "fast":
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if layer.weight.device.type != "cpu":
        raise ValueError(f"kernel 'fast' runs on the CPU (onnxruntime MatMulNBits) but this layer is on "
                         f"{layer.weight.device}: move it to the CPU first or use kernel='reference'")
    return FastLinear(layer.int_weight(), layer.scale, layer.bits, layer.group_size, layer.bias, threads)


def thread_counts(model) -> dict[str, int]:
    """{layer name: onnxruntime threads} of every fast layer of ``model`` (what each layer really used)."""
    out = {}
    for name, m in model.named_modules():
        impl = getattr(m, "_kernel_impl", None)
        if isinstance(impl, FastLinear):
            out[name] = impl.threads
    return out


def describe_threads(model) -> str:
    """One line: how many fast layers ran on how many threads, e.g. '150 layers × 1 thread, lm_head × 2 threads'."""
    counts = thread_counts(model)
    if not counts:
        return f"{torch.get_num_threads()} (torch)"
    by_n: dict[int, list[str]] = {}
    for name, n in counts.items():
        by_n.setdefault(n, []).append(name)
    parts = []
    for n, names in sorted(by_n.items()):
        label = names[0] if len(names) == 1 else f"{len(names)} layers"
        parts.append(f"{label} × {n} thread{'s' if n > 1 else ''}")
    return ", ".join(parts)
