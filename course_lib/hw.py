"""What hardware am I on — devices, GPU count, utilisation sampling, visible skips, versions.

Introduced in ``00_environment.ipynb``; every later lesson uses :func:`device`,
:class:`UtilizationSampler` and :func:`have_gpus` / :func:`require_gpus`.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field

import psutil


class SkipLesson(Exception):
    """Raised when a notebook (or a whole lesson) cannot run here; the message is a human sentence.

    The runner reports the notebook as *skipped* with this sentence as its reason, never as a pass.
    """


# --------------------------------------------------------------------------------------------
# Devices
# --------------------------------------------------------------------------------------------


def _nvml():
    """Initialised ``pynvml`` module, or ``None`` when there is no NVIDIA driver (or no package)."""
    try:
        import pynvml  # from nvidia-ml-py

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # no driver, no library, no permission: all mean "no NVIDIA GPU here"
        return None


def gpu_count() -> int:
    """Number of CUDA GPUs torch can use (0 on a CPU-only machine or a CPU build of torch)."""
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        return 0


def device(prefer: str | None = None) -> str:
    """The best device torch can use: ``"cuda"``, then ``"mps"``, then ``"cpu"``.

    ``prefer`` (e.g. ``"cpu"``) forces a choice; an unavailable preference raises ``ValueError``.
    """
    import torch

    available = ["cpu"]
    if torch.cuda.is_available():
        available.insert(0, "cuda")
    elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        available.insert(0, "mps")
    if prefer is None:
        return available[0]
    kind = prefer.split(":")[0]
    if kind not in available:
        raise ValueError(f"device {prefer!r} is not available here (available: {', '.join(available)})")
    return prefer


def _gpu_phrase(n: int) -> str:
    return f"{n} GPU" if n == 1 else f"{n} GPUs"


def require_gpus(n: int, what: str = "this lesson") -> int:
    """Raise :class:`SkipLesson` unless at least ``n`` GPUs are present; returns the count found."""
    found = gpu_count()
    if found < n:
        raise SkipLesson(f"skipped: {what} needs {_gpu_phrase(n)} (found {found})")
    return found


def skip_note(reason: str) -> str:
    """Show a visible skip note in the notebook output (and stdout); returns the sentence."""
    text = reason if reason.lower().startswith("skipped") else f"skipped: {reason}"
    line = f"⏭  {text}"
    try:  # a Markdown callout in Jupyter, plain text elsewhere
        from IPython import get_ipython
        from IPython.display import Markdown, display

        if get_ipython() is not None:
            display(Markdown(f"> **⏭ {text}**"))
        else:
            print(line)
    except ImportError:
        print(line)
    from course_lib import report  # late import: report imports nothing from here

    report.note_skip(text)
    return text


def have_gpus(n: int, what: str) -> bool:
    """True when ``n`` GPUs are present; otherwise show the skip note for ``what`` and return False.

    For GPU-only *sections* of a notebook that otherwise runs on CPU::

        if hw.have_gpus(1, "CUDA-stream sweep"):
            ...
    """
    try:
        require_gpus(n, what)
        return True
    except SkipLesson as e:
        skip_note(str(e))
        return False


# --------------------------------------------------------------------------------------------
# Optional dependencies and progress bars: the one way every lesson does them
# --------------------------------------------------------------------------------------------

EXTRA_OF_LESSON = {0: "core", 1: "deploy", 2: "parallel", 3: "llm", 4: "tvm", 5: "ptq"}


class MissingDependency(ImportError):
    """An optional package a lesson needs is not installed; the message says how to install it."""


def require(module: str, extra: str | None = None, *, what: str | None = None, install: str | None = None):
    """Import ``module`` or raise :class:`MissingDependency` naming the command that installs it.

    ``extra`` is the course's pip extra that brings it (``pip install -e '.[EXTRA]'``); ``install``
    overrides the command for packages outside the extras (e.g. ``pip install tensorrt``)::

        tvm = hw.require("tvm", "tvm")
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        how = install or (f"pip install -e '.[{extra}]'" if extra else f"pip install {module.split('.')[0]}")
        need = f" for {what}" if what else ""
        raise MissingDependency(f"{module} is needed{need}; install it with: {how}") from e


RUNNER_ENV = "COURSE_RUNNER"  # set by the ``course`` runner for the kernels it starts


def under_runner() -> bool:
    """True inside a notebook executed by ``course run`` (papermill), False in JupyterLab or a shell."""
    return os.environ.get(RUNNER_ENV) == "1"


def progress(iterable=None, **kwargs):
    """A tqdm progress bar: one updating line in JupyterLab and a terminal, off under the runner.

    Executed notebooks (``course run``) are read later as documents: a progress bar there is only
    noise on stderr, so it is disabled; pass ``disable=True`` to turn it off elsewhere too.
    """
    kwargs["disable"] = bool(kwargs.get("disable", False)) or under_runner()
    if kwargs["disable"]:  # tqdm.auto warns on import in a kernel without ipywidgets; a disabled bar needs none
        from tqdm.std import tqdm
    else:
        from tqdm.auto import tqdm
    return tqdm(iterable, **kwargs)


# --------------------------------------------------------------------------------------------
# Utilisation sampling
# --------------------------------------------------------------------------------------------


@dataclass
class DeviceStats:
    """Max/mean utilisation (percent) and memory (MiB) of one device over a sampling window."""

    device: str
    util_max: float
    util_mean: float
    mem_max_mib: float
    mem_mean_mib: float
    samples: int

    def as_row(self) -> dict:
        return dict(self.__dict__)


@dataclass
class UtilizationSampler:
    """Background thread sampling per-GPU utilisation and memory (pynvml), or CPU when no GPU.

    Use as a context manager around the work to observe::

        with hw.UtilizationSampler(interval=0.1) as s:
            run_benchmark()
        s.summary()   # {device: DeviceStats}

    On NVIDIA machines it reports ``cuda:i`` for each GPU (``nvmlDeviceGetUtilizationRates``,
    ``nvmlDeviceGetMemoryInfo``). Without a driver it falls back to psutil and reports
    ``cpu:system`` (all cores, percent of the machine, memory in use) and ``cpu:process``
    (this process and its children, percent of the machine, resident memory).
    """

    interval: float = 0.1
    gpus: list[int] | None = None  # None: all GPUs nvml sees
    pid: int | None = None  # process to attribute for the CPU fallback (default: this one)
    backend: str = field(init=False, default="")
    trace: list[tuple[float, str, float, float]] = field(init=False, default_factory=list)

    def __post_init__(self):
        if not self.interval > 0:
            raise ValueError(f"interval must be > 0 seconds, got {self.interval!r}")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml = _nvml()
        self._handles = []
        if self._nvml is not None:
            count = self._nvml.nvmlDeviceGetCount()
            ids = list(range(count)) if self.gpus is None else list(self.gpus)
            self._handles = [(i, self._nvml.nvmlDeviceGetHandleByIndex(i)) for i in ids if i < count]
        self.backend = "pynvml" if self._handles else "psutil"
        self._proc = psutil.Process(self.pid or os.getpid())

    # -- one sample ---------------------------------------------------------------------------
    def _procs(self):
        try:
            return [self._proc, *self._proc.children(recursive=True)]
        except psutil.Error:
            return [self._proc]

    def sample_once(self) -> list[tuple[str, float, float]]:
        """Take one sample now: a list of ``(device, util_percent, mem_mib)``."""
        out = []
        if self._handles:
            nv = self._nvml
            for i, h in self._handles:
                util = float(nv.nvmlDeviceGetUtilizationRates(h).gpu)
                mem = nv.nvmlDeviceGetMemoryInfo(h).used / 2**20
                out.append((f"cuda:{i}", util, mem))
            return out
        ncpu = psutil.cpu_count() or 1
        sys_util = psutil.cpu_percent(interval=None)
        proc_util, rss = 0.0, 0.0
        for p in self._procs():
            try:
                proc_util += p.cpu_percent(interval=None)
                rss += p.memory_info().rss
            except psutil.Error:
                continue
        out.append(("cpu:system", float(sys_util), psutil.virtual_memory().used / 2**20))
        out.append(("cpu:process", min(100.0, proc_util / ncpu), rss / 2**20))
        return out

    # -- thread -------------------------------------------------------------------------------
    def _run(self):
        t0 = time.perf_counter()
        while not self._stop.wait(self.interval):
            now = time.perf_counter() - t0
            for dev, util, mem in self.sample_once():
                self.trace.append((now, dev, util, mem))

    def start(self) -> "UtilizationSampler":
        if self._thread is not None:
            raise RuntimeError("this sampler is already running; use a new one per window")
        self.sample_once()  # primes psutil's cpu_percent counters (first call always returns 0)
        self._thread = threading.Thread(target=self._run, name="UtilizationSampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict[str, DeviceStats]:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        if not self.trace:  # a window shorter than one interval still gets one sample
            for dev, util, mem in self.sample_once():
                self.trace.append((0.0, dev, util, mem))
        return self.summary()

    def __enter__(self) -> "UtilizationSampler":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- results ------------------------------------------------------------------------------
    def summary(self) -> dict[str, DeviceStats]:
        """Max/mean utilisation and memory per device over the samples taken so far."""
        by_dev: dict[str, list[tuple[float, float]]] = {}
        for _, dev, util, mem in self.trace:
            by_dev.setdefault(dev, []).append((util, mem))
        return {
            dev: DeviceStats(
                device=dev,
                util_max=max(u for u, _ in vals),
                util_mean=statistics.fmean(u for u, _ in vals),
                mem_max_mib=max(m for _, m in vals),
                mem_mean_mib=statistics.fmean(m for _, m in vals),
                samples=len(vals),
            )
            for dev, vals in by_dev.items()
        }

    def frame(self):
        """All samples as a pandas DataFrame (columns: t, device, util, mem_mib) for plotting."""
        import pandas as pd

        return pd.DataFrame(self.trace, columns=["t", "device", "util", "mem_mib"])


# --------------------------------------------------------------------------------------------
# Versions and hardware report
# --------------------------------------------------------------------------------------------

# (display name, distribution name, pinned version or None) — the packages notebook 00 lists; the pin is
# only the fallback when there is no lock file (an installed package without the repository).
PACKAGES: list[tuple[str, str, str | None]] = [
    ("torch", "torch", "2.13.0"),
    ("numpy", "numpy", None),
    ("pandas", "pandas", None),
    ("transformers", "transformers", None),
    ("tritonclient", "tritonclient", None),
    ("nvidia-pytriton", "nvidia-pytriton", "0.7.0"),
    ("deepspeed", "deepspeed", None),
    ("gguf", "gguf", None),
    ("llama-cpp-python", "llama-cpp-python", "0.3.36"),
    ("tvm", "apache-tvm", "0.27.0.post1"),
    ("tvm-ffi", "apache-tvm-ffi", "0.1.14.post1"),
    ("xgboost", "xgboost-cpu", None),
    ("pytorch-quantization", "pytorch-quantization", "2.1.3"),
    ("modelopt", "nvidia-modelopt", None),
    ("onnx", "onnx", None),
    ("onnxruntime", "onnxruntime", None),
    ("pycocotools", "pycocotools", None),
    ("papermill", "papermill", None),
]

# The command that installs exactly the locked versions (README, "Quick start"; run in the repository).
FIX_COMMAND = "pip install -c ci/constraints.txt -e '.[all,dev]'"


def _norm(name: str) -> str:
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def _dist_version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def lock_file():
    """The course's lock, ``ci/constraints.txt`` in the repository (it may be absent for an installed package)."""
    from course_lib import paths

    return paths.repo_root() / "ci" / "constraints.txt"


def locked_versions(path=None) -> dict[str, str]:
    """``{normalised distribution name: version}`` from the lock file; ``{}`` when there is none."""
    from pathlib import Path

    f = Path(path) if path else lock_file()
    out: dict[str, str] = {}
    if not f.is_file():
        return out
    for line in f.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line and not line.startswith("-"):
            name, ver = line.split("==", 1)
            out[_norm(name.split("[")[0].strip())] = ver.split(";")[0].strip()
    return out


def _same_version(installed: str, locked: str) -> bool:
    """Installed matches locked, ignoring a local label (``2.13.0+cpu`` is the lock's ``2.13.0``)."""
    return installed.split("+")[0] == locked.split("+")[0]


def versions(lock: dict[str, str] | None = None) -> list[dict]:
    """Installed vs locked version of each package the course lists; ``ok``/``mark`` flag any difference.

    Reads package metadata only (nothing is imported), so it never raises ImportError. ``locked`` comes
    from ``ci/constraints.txt`` (the versions CI proved); without a lock file the course's exact pins
    are used. A package in neither (e.g. DeepSpeed, optional) is shown without a mark.
    """
    lock = locked_versions() if lock is None else lock
    rows = [{"package": "python", "version": platform.python_version(), "locked": "", "ok": True, "mark": ""}]
    for name, dist, pin in PACKAGES:
        v = _dist_version(dist)
        if v is None and dist == "xgboost-cpu":
            v = _dist_version("xgboost")
        want = lock.get(_norm(dist)) or (pin if not lock else None)
        if want:
            ok = v is not None and _same_version(v, want)
            mark = "✓" if ok else "✗"
        else:
            ok, mark = True, ""
        rows.append({"package": name, "version": v or "not installed", "locked": want or "", "ok": ok, "mark": mark})
    return rows


def drift(lock: dict[str, str] | None = None) -> list[dict]:
    """Every locked package whose installed version differs from the lock (or is missing): ``[]`` = no drift."""
    lock = locked_versions() if lock is None else lock
    out = []
    for name, want in sorted(lock.items()):
        v = _dist_version(name)
        if v is None or not _same_version(v, want):
            out.append({"package": name, "version": v or "not installed", "locked": want, "mark": "✗"})
    return out


# --------------------------------------------------------------------------------------------
# CPU features: which instruction sets this CPU has (the kernel path a library picks depends on them)
# --------------------------------------------------------------------------------------------

# canonical ISA name -> the names it has in /proc/cpuinfo "flags" (x86) or "Features" (aarch64)
_X86_ISA = {
    "sse4_2": ("sse4_2",), "avx": ("avx",), "avx2": ("avx2",), "fma": ("fma",), "f16c": ("f16c",),
    "avx_vnni": ("avx_vnni",), "avx512f": ("avx512f",), "avx512bw": ("avx512bw",), "avx512vl": ("avx512vl",),
    "avx512_vnni": ("avx512_vnni",), "avx512_bf16": ("avx512_bf16",), "avx512_fp16": ("avx512_fp16",),
    "amx_tile": ("amx_tile",), "amx_int8": ("amx_int8",), "amx_bf16": ("amx_bf16",),
}
_ARM_ISA = {
    "neon": ("asimd", "neon"), "fp16": ("fphp", "asimdhp"), "dotprod": ("asimddp",), "i8mm": ("i8mm",),
    "bf16": ("bf16",), "sve": ("sve",), "sve2": ("sve2",), "sme": ("sme",),
}
# macOS: sysctl key (value 1 = present) -> canonical name; Intel Macs list x86 flags in machdep.cpu.*features
_MAC_ARM_KEYS = {
    "hw.optional.AdvSIMD": "neon", "hw.optional.neon": "neon", "hw.optional.arm.FEAT_FP16": "fp16",
    "hw.optional.arm.FEAT_DotProd": "dotprod", "hw.optional.arm.FEAT_I8MM": "i8mm", "hw.optional.arm.FEAT_BF16": "bf16",
    "hw.optional.arm.FEAT_SME": "sme",
}
# aarch64 /proc/cpuinfo names the core by implementer and part number, not by a model name
_ARM_VENDORS = {"0x41": "ARM", "0x61": "Apple", "0xc0": "Ampere", "0x48": "HiSilicon", "0x51": "Qualcomm", "0x4e": "NVIDIA"}
_ARM_PARTS = {
    ("0x41", "0xd0c"): "Neoverse-N1 (e.g. AWS Graviton2)", ("0x41", "0xd40"): "Neoverse-V1 (e.g. AWS Graviton3)",
    ("0x41", "0xd49"): "Neoverse-N2", ("0x41", "0xd4f"): "Neoverse-V2 (e.g. AWS Graviton4, NVIDIA Grace)",
    ("0x41", "0xd08"): "Cortex-A72 (e.g. Raspberry Pi 4)", ("0x41", "0xd0b"): "Cortex-A76",
}


def _kv_lines(text: str) -> list[tuple[str, str]]:
    out = []
    for line in text.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            out.append((k.strip(), v.strip()))
    return out


def _first(pairs, key: str) -> str:
    return next((v for k, v in pairs if k == key), "")


def parse_cpuinfo(text: str, machine: str = "") -> dict:
    """``{"vendor", "model", "isa"}`` from the text of Linux's ``/proc/cpuinfo`` (x86 ``flags`` or aarch64 ``Features``).

    A pure function over the text, so the tests feed it the cpuinfo of CPUs they do not run on. ``isa`` is a sorted
    list of canonical names (``avx2``, ``avx512f``, ``avx512_vnni``, ``amx_int8``, ``neon``, ``sve``...).
    """
    pairs = _kv_lines(text)
    flags = set(_first(pairs, "flags").split())
    features = set(_first(pairs, "Features").split())
    is_arm = bool(features) or machine.lower().startswith(("aarch64", "arm"))
    isa = set()
    for name, aliases in (_ARM_ISA if is_arm else _X86_ISA).items():
        if any(a in (features if is_arm else flags) for a in aliases):
            isa.add(name)
    if is_arm:
        impl, part = _first(pairs, "CPU implementer").lower(), _first(pairs, "CPU part").lower()
        vendor = _ARM_VENDORS.get(impl, f"implementer {impl}" if impl else "unknown")
        model = _first(pairs, "model name") or _ARM_PARTS.get((impl, part)) or (f"{vendor} part {part}" if part else "unknown")
    else:
        raw_vendor = _first(pairs, "vendor_id")
        vendor = {"GenuineIntel": "Intel", "AuthenticAMD": "AMD"}.get(raw_vendor, raw_vendor or "unknown")
        model = _first(pairs, "model name") or "unknown"
    return {"vendor": vendor, "model": model, "isa": sorted(isa)}


def parse_sysctl(text: str) -> dict:
    """``{"vendor", "model", "isa"}`` from macOS ``sysctl`` output (``key: value`` lines); pure, like :func:`parse_cpuinfo`."""
    pairs = dict(_kv_lines(text))
    model = pairs.get("machdep.cpu.brand_string", "unknown")
    isa = {name for key, name in _MAC_ARM_KEYS.items() if pairs.get(key) == "1"}
    x86 = set((pairs.get("machdep.cpu.features", "") + " " + pairs.get("machdep.cpu.leaf7_features", "")).lower().split())
    rename = {"sse4.2": "sse4_2", "avx1.0": "avx", "avx512vnni": "avx512_vnni", "avx512bf16": "avx512_bf16"}
    for f in x86:
        f = rename.get(f, f)
        if f in _X86_ISA:
            isa.add(f)
    vendor = pairs.get("machdep.cpu.vendor") or ("Apple" if model.startswith("Apple") else "unknown")
    vendor = {"GenuineIntel": "Intel", "AuthenticAMD": "AMD"}.get(vendor, vendor)
    return {"vendor": vendor, "model": model, "isa": sorted(isa)}


def _torch_capability() -> str:
    """What ATen's CPU dispatch picked on this CPU (``AVX512``, ``AVX2``, ``DEFAULT``...), or ``"unknown"``."""
    try:
        import torch

        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # no torch, or a torch without this function
        return "unknown"


def cpu_features(cpuinfo: str | None = None, machine: str | None = None) -> dict:
    """This CPU: ``arch``, ``vendor``, ``model``, ``isa`` (sorted ISA extensions), ``torch_capability``, ``logical_cpus``.

    Read from ``/proc/cpuinfo`` on Linux and ``sysctl`` on macOS (``cpuinfo`` text can be passed instead). Lessons use
    it where a kernel path depends on the CPU (MLAS's int8 path, TVM's target, llama.cpp's build); notebook 00 shows it.
    """
    machine = machine or platform.machine()
    info = None
    if cpuinfo is not None:
        info = parse_cpuinfo(cpuinfo, machine)
    elif sys.platform.startswith("linux"):
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                info = parse_cpuinfo(f.read(), machine)
        except OSError:
            info = None
    elif sys.platform == "darwin":
        import subprocess

        try:
            out = subprocess.run(["sysctl", "-a"], capture_output=True, text=True, timeout=10).stdout
            info = parse_sysctl(out)
        except (OSError, subprocess.SubprocessError):
            info = None
    if info is None:
        info = {"vendor": "unknown", "model": platform.processor() or machine, "isa": []}
    return {"arch": machine, **info, "torch_capability": _torch_capability(), "logical_cpus": os.cpu_count() or 1}


def isa_label(isa) -> str:
    """The ISA extensions that decide a CPU kernel's path, as a short phrase: ``"AVX-512, VNNI, BF16; no AMX"``."""
    isa = set(isa)
    if isa & set(_ARM_ISA):
        names = [("neon", "NEON"), ("dotprod", "dotprod"), ("i8mm", "i8mm"), ("bf16", "BF16"), ("sve", "SVE"),
                 ("sve2", "SVE2"), ("sme", "SME")]
        return ", ".join(label for key, label in names if key in isa) or "no SIMD flags found"
    if "avx512f" in isa:
        parts = ["AVX-512"] + [label for key, label in (("avx512_vnni", "VNNI"), ("avx512_bf16", "BF16"),
                                                           ("avx512_fp16", "FP16")) if key in isa]
    elif "avx2" in isa:
        parts = ["AVX2" + (" + FMA" if "fma" in isa else "")] + (["AVX-VNNI"] if "avx_vnni" in isa else []) + ["no AVX-512"]
    elif "avx" in isa:
        parts = ["AVX", "no AVX2"]
    elif isa:
        parts = ["SSE only"]
    else:
        return "no SIMD flags found"
    amx = [k.split("_")[1].upper() for k in ("amx_int8", "amx_bf16") if k in isa]
    if isa & {"avx512f", "avx2"}:
        parts.append("AMX-" + "/".join(amx) if amx else "no AMX")
    return ", ".join(parts[:-1]) + "; " + parts[-1] if len(parts) > 1 else parts[0]


def cpu_summary(features: dict | None = None) -> str:
    """One line naming this CPU: ``"AMD EPYC (x86_64: AVX-512, VNNI, BF16; no AMX), 2 threads"``."""
    f = features or cpu_features()
    n = f.get("logical_cpus", os.cpu_count() or 1)
    return f"{f['model']} ({f['arch']}: {isa_label(f['isa'])}), {n} thread{'s' if n != 1 else ''}"


BLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def thread_pools() -> list[dict]:
    """The BLAS and OpenMP libraries loaded in this process (threadpoolctl): library, version, kernel, threads.

    ``architecture`` is the kernel family OpenBLAS picked for this CPU (e.g. ``Cooperlake``, ``Haswell``); the
    environment variables that change it or the thread count are in :func:`blas_env`. ``[]`` without threadpoolctl.
    """
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keys = ("user_api", "internal_api", "prefix", "version", "architecture", "threading_layer", "num_threads")
    return [{k: info.get(k) for k in keys} for info in threadpool_info()]


def blas_env() -> dict[str, str]:
    """The environment variables set here that steer BLAS kernels and threads (``OPENBLAS_CORETYPE``...)."""
    return {k: os.environ[k] for k in BLAS_ENV if k in os.environ}


def _cpu_model() -> str:
    model = cpu_features()["model"]
    return model if model != "unknown" else (platform.processor() or platform.machine())


def hardware() -> list[dict]:
    """One row per compute device: the CPU, then each GPU (name, memory) or a 'none' row."""
    vm = psutil.virtual_memory()
    rows = [
        {
            "device": "cpu",
            "name": _cpu_model(),
            "cores": f"{psutil.cpu_count(logical=False) or '?'} physical / {psutil.cpu_count()} logical",
            "memory_gib": round(vm.total / 2**30, 1),
        }
    ]
    nv = _nvml()
    if nv is not None and nv.nvmlDeviceGetCount() > 0:
        for i in range(nv.nvmlDeviceGetCount()):
            h = nv.nvmlDeviceGetHandleByIndex(i)
            name = nv.nvmlDeviceGetName(h)
            rows.append(
                {
                    "device": f"cuda:{i}",
                    "name": name.decode() if isinstance(name, bytes) else name,
                    "cores": "",
                    "memory_gib": round(nv.nvmlDeviceGetMemoryInfo(h).total / 2**30, 1),
                }
            )
    else:
        rows.append({"device": "gpu", "name": "none (no NVIDIA driver found)", "cores": "", "memory_gib": 0.0})
    return rows


def summary_line() -> str:
    """One line: python, torch, device, GPU count — printed by the first cell of every lesson."""
    torch_v = _dist_version("torch") or "not installed"
    n = gpu_count()
    return (
        f"python {platform.python_version()} · torch {torch_v} · {psutil.cpu_count()} CPU threads · "
        f"{_gpu_phrase(n) if n else 'no GPU'} · {sys.platform}"
    )
