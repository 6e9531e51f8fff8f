"""``course gpu-check``: a short version of every GPU path of the course, each reported ok / failed / skipped.

Every lesson has GPU-only sections (CUDA training, NCCL ranks, CUDA streams, fp16, TensorRT) that a CPU
run of the course only shows as skipped. This command runs a small version of each on one GPU, in a few
minutes, and writes ``report.json`` / ``report.md`` in the schema of ``course run`` (one entry per step
under ``"notebooks"``)::

    course gpu-check --out build/gpu-check            # every step
    course gpu-check l1 l3 --out build/gpu-check      # only lesson 1 and 3's steps (prefixes of step names)
    course gpu-check --dry-run                        # list the steps and the functions each calls, run nothing
    course gpu-check --device cpu --allow-skips --out build/rehearse  # rehearsal: each step's code on the CPU

Each step calls the lessons' own code (``course_lib.deploy``, ``parallel``, ``llm``, ``tuning``,
``ptq``, ``detection``) with tiny sizes. A step is *skipped* with its reason when it cannot run here:
no CUDA GPU, a package that cannot be brought to the GPU machine (DeepSpeed, TVM, TensorRT), or a part
that needs more GPUs than there are (said in the step's notes). The command keeps going after a failed
step, records the error's last line (the full traceback goes to ``OUT/tracebacks.txt``) and exits 1 if any
step failed — or if no step ran on a CUDA GPU (no GPU, a CPU-only torch, a rehearsal), unless ``--allow-skips``:
a GPU check that checked nothing does not pass — and 0 otherwise (2 for bad input). A step that would
start after ``--budget`` seconds (default 480) is skipped with that reason. Scratch files go to ``OUT/work`` and are removed at the end.

It imports only what a step needs, when the step runs, and works with whichever torch the machine has
(nothing here requires the course's pinned ``torch==2.13.0``). ``--device cpu`` runs the same code paths
on the CPU (gloo instead of NCCL, no streams, no NVML) to catch mistakes before GPU time is spent; it is a
rehearsal, not a GPU check.
"""

from __future__ import annotations

import datetime as _dt
import importlib.util
import math
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from course_lib.runner import Layout, NotebookResult, UsageError, check_out_dir, last_line, write_reports


class StepSkipped(Exception):
    """A step cannot run here; the message is the human reason shown in the report."""


@dataclass
class Context:
    """What a step gets: the device to use, a scratch folder, and where to put metrics and notes."""

    device: str  # "cuda" (a real check) or "cpu" (rehearsal)
    work: Path  # scratch folder (removed after the run)
    gpus: int
    metrics: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    shared: dict = field(default_factory=dict)  # objects one step leaves for a later one

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def rehearsal(self) -> bool:
        return not self.cuda

    def metric(self, name: str, value: float, unit: str = "") -> float:
        self.metrics[name] = {"value": float(value), "unit": unit}
        return float(value)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def need_cuda(self, what: str) -> None:
        """Skip the step in a CPU rehearsal when it only makes sense on a GPU."""
        if self.rehearsal:
            raise StepSkipped(f"{what} needs a CUDA GPU (CPU rehearsal)")

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()


@dataclass(frozen=True)
class Step:
    name: str  # e.g. "l1.cuda_train": lesson prefix + what
    title: str  # one line: what runs
    fn: Callable[[Context], str]
    calls: tuple[str, ...] = ()  # the lessons' functions it runs, "module:attr" (``--dry-run`` lists them)
    min_gpus: int = 1


# ----------------------------------------------------------------------------------------------
# Lesson 0: torch.cuda, the timing harness on CUDA events, NVML
# ----------------------------------------------------------------------------------------------


def _torch_cuda(ctx: Context) -> str:
    import torch

    from course_lib import bench

    if ctx.cuda:
        props = torch.cuda.get_device_properties(0)
        ctx.metric("gpu.memory_gib", props.total_memory / 2**30, "GiB")
        ctx.metric("gpu.compute_capability", props.major + props.minor / 10, "sm")
        ctx.note(f"{torch.cuda.device_count()} × {props.name}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    n = 4096 if ctx.cuda else 256
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    ref = a[:256].double() @ b.double()
    ad, bd = a.to(ctx.device), b.to(ctx.device)
    got = (ad @ bd)[:256].double().cpu()
    rel = float((got - ref).abs().max() / ref.abs().max())
    ctx.metric("l0.matmul_fp32_rel_err", rel, "rel")
    # TF32 may be on for matmuls on Ampere+ GPUs: ~1e-3 relative; plain fp32 is ~1e-6
    assert rel < 5e-3, f"fp32 matmul on {ctx.device} differs from float64 by {rel:.2e}"
    out = []
    for dtype, label in ((torch.float32, "fp32"), (torch.float16, "fp16")):
        x, y = ad.to(dtype), bd.to(dtype)
        r = bench.benchmark(lambda: x @ y, name=f"matmul {n}³ {label}", warmup=3, repeat=10, device=ctx.device)
        tflops = 2 * n**3 / r.median_s / 1e12
        ctx.metric(f"l0.matmul_tflops_{label}", tflops, "TFLOP/s")
        out.append(f"{label} {tflops:.1f} TFLOP/s")
    # notebook 00's device-to-device copy (GPU memory bandwidth)
    x = torch.empty((256 if ctx.cuda else 16) * 2**20 // 4, device=ctx.device)
    r = bench.benchmark(lambda: x.clone(), name="clone", items=2 * x.numel() * 4, unit="bytes", device=ctx.device)
    ctx.metric("l0.copy_gbps", r.throughput / 1e9, "GB/s")
    timer = "CUDA events" if ctx.cuda else "perf_counter"
    return f"bench on {ctx.device} ({timer}): matmul {n}³ " + ", ".join(out) + f"; copy {r.throughput / 1e9:.0f} GB/s"


def _nvml_sampler(ctx: Context) -> str:
    ctx.need_cuda("NVML sampling")
    import threading

    import torch

    from course_lib import hw

    rows = hw.hardware()
    gpu_rows = [r for r in rows if r["device"].startswith("cuda")]
    assert gpu_rows, f"hw.hardware() found no GPU through NVML: {rows[1:]}"
    stop = threading.Event()

    def busy():
        a = torch.randn(4096, 4096, device="cuda")
        while not stop.is_set():
            a = torch.tanh(a @ a)
            torch.cuda.synchronize()

    with hw.UtilizationSampler(interval=0.05) as s:
        time.sleep(0.3)
        t = threading.Thread(target=busy)
        t.start()
        time.sleep(1.5)
        stop.set()
        t.join()
    stats = s.summary()
    assert s.backend == "pynvml", f"sampler backend is {s.backend}, expected pynvml on an NVIDIA machine"
    assert "cuda:0" in stats, f"no cuda:0 samples: {sorted(stats)}"
    u = stats["cuda:0"]
    ctx.metric("l0.nvml_util_max", u.util_max, "%")
    ctx.metric("l0.nvml_mem_max_mib", u.mem_max_mib, "MiB")
    assert u.util_max > 0, "NVML saw 0 % utilisation on cuda:0 while a matmul loop ran"
    return f"{gpu_rows[0]['name']}: sampler saw up to {u.util_max:.0f} % and {u.mem_max_mib:.0f} MiB over {u.samples} samples"


# ----------------------------------------------------------------------------------------------
# Lesson 1: CUDA training of the multitask BERT, trace on cuda:0, load with map_location
# ----------------------------------------------------------------------------------------------


def _l1_setup(ctx: Context):
    from course_lib.deploy import data, features
    from course_lib.deploy import model as M

    if "l1" not in ctx.shared:
        tok = features.load_tokenizer()
        rows = data.load_split("train")[:512]
        dev_rows = data.load_split("dev")[:64]
        ctx.shared["l1"] = (tok, rows, dev_rows, M.bert_config(len(tok), "tiny"), len(data.AREAS), len(data.ENTITY_TYPES))
    return ctx.shared["l1"]


def _l1_train(ctx: Context) -> str:
    from course_lib.deploy import model as M
    from course_lib.deploy import train as T

    tok, rows, _, cfg, n_cls, n_types = _l1_setup(ctx)
    model = M.BertMultitask(cfg, n_cls, n_types)
    steps, bs = (30 if ctx.cuda else 6), 32
    r = T.train(model, tok, rows, T.TrainConfig(epochs=steps / math.ceil(len(rows) / bs), batch_size=bs, lr=1e-3,
                                                 max_seq_length=64, progress=False, device=ctx.device))
    assert all(math.isfinite(x) for x in r.losses), "non-finite training loss"
    assert str(next(model.parameters()).device).startswith(ctx.device), "the model did not stay on the training device"
    ctx.metric("l1.train_steps", r.steps, "steps")
    ctx.metric("l1.train_loss_first", r.losses[0], "loss")
    ctx.metric("l1.train_loss_last", r.losses[-1], "loss")
    ctx.metric("l1.train_steps_per_s", r.steps / r.seconds, "steps/s")
    ctx.shared["l1_model"] = model.eval()
    return f"{r.steps} steps on {ctx.device} in {r.seconds:.1f} s, loss {r.losses[0]:.2f} → {r.losses[-1]:.2f}"


def _l1_trace(ctx: Context) -> str:
    import torch

    from course_lib.deploy import features
    from course_lib.deploy import model as M
    from course_lib.deploy import trace as TR

    tok, _, dev_rows, cfg, n_cls, n_types = _l1_setup(ctx)
    model = ctx.shared.get("l1_model") or M.BertMultitask(cfg, n_cls, n_types).eval()
    dev = "cuda:0" if ctx.cuda else "cpu"
    model = model.to(dev).eval()
    example = features.input2feature(tok, [r["text"] for r in dev_rows[:8]], 64, warn=False)
    held = features.input2feature(tok, [r["text"] for r in dev_rows], 64, warn=False)
    on_dev = tuple(x.to(dev) for x in held.as_tuple())
    with torch.no_grad():
        traced, _ = TR.trace_model(model, tuple(x.to(dev) for x in example.as_tuple()), strict=True)
        par = TR.parity(model, traced, on_dev)
    ctx.metric("l1.trace_max_abs_diff", par["max_abs_diff"], "abs")
    assert par["argmax_equal"] and par["spans_equal"], f"traced model disagrees with eager on {dev}: {par}"
    assert TR.device_constants(traced) == [], "the deployed trace baked a device constant"
    path = TR.save_traced(traced, ctx.work / "l1_traced_cuda0.pt")
    diffs = {}
    with torch.no_grad():
        ref_cls, _ = model(*on_dev)
        for target in ([dev, "cpu"] if ctx.cuda else ["cpu"]):
            loaded = TR.load_traced(path, map_location=target)
            cls, _ = loaded(*(x.to(target) for x in held.as_tuple()))
            assert cls.device.type == torch.device(target).type, f"map_location={target} ran on {cls.device}"
            diffs[target] = float((cls.float().cpu() - ref_cls.float().cpu()).abs().max())
    ctx.metric("l1.map_location_cpu_max_abs_diff", diffs["cpu"], "abs")
    # The CUDA-binding pitfall: a trace with transformers' mask helper bakes the tracing device in.
    leaky = M.BertMultitask(cfg, n_cls, n_types, device_free_mask=False).eval()
    leaky.load_state_dict(model.state_dict())
    if ctx.cuda:
        for label, m in (("leaky", leaky), ("ours", model)):
            res = TR.cuda_binding_demo(m, example.as_tuple())
            consts = sorted({str(c.get("device")) for c in res["constants"]})
            ctx.note(f"cuda_binding_demo({label}): device constants {consts or 'none'}, ran on {res['ran_on']}"
                     + (f", error: {res['error']}" if res["error"] else ""))
            if label == "ours":
                assert not res["constants"], f"our trace has device constants {consts}"
    if ctx.gpus < 2:
        ctx.note(f"the cross-GPU failure itself (trace on cuda:0, run on cuda:1) needs 2 GPUs (found {ctx.gpus})")
    where = ", ".join(f"{k}: {v:.1e}" for k, v in diffs.items())
    return f"traced on {dev} (parity {par['max_abs_diff']:.1e}); reloaded with map_location, max diff {where}"


# ----------------------------------------------------------------------------------------------
# Lesson 2: one NCCL rank, the CUDA-stream sweep, DeepSpeed
# ----------------------------------------------------------------------------------------------


def _l2_launch(ctx: Context, runs, world_size: int = 1, tag: str = "l2", **kw):
    from course_lib.parallel.launcher import launch

    opts = dict(model="tiny", batch=8, seq_len=64, warmup=1, repeat=3, timeout_s=240, collective_timeout_s=120,
                device="cuda" if ctx.cuda else "cpu", out_dir=ctx.work / tag)
    opts.update(kw)
    return launch(runs, world_size=world_size, **opts)


def _l2_nccl(ctx: Context) -> str:
    from course_lib.parallel.launcher import Run

    world = max(1, min(2, ctx.gpus)) if ctx.cuda else 1
    res = _l2_launch(ctx, [Run("single"), Run("tensor")], world_size=world, tag="l2_nccl")
    df = res.frame.set_index("strategy")
    backend = str(df.loc["tensor", "backend"])  # "single" runs outside the process group ("none")
    assert backend == ("nccl" if ctx.cuda else "gloo"), f"backend {backend}"
    for s in ("single", "tensor"):
        diff = float(df.loc[s, "parity_max_abs_diff"])
        ctx.metric(f"l2.{s}_parity", diff, "abs")
        assert diff < 1e-3, f"{s} differs from the reference by {diff:.2e}"
        ctx.metric(f"l2.{s}_qps", float(df.loc[s, "qps"]), "queries/s")
    if world < 2:
        ctx.note(f"tensor/FSDP/pipeline across ranks and the scaling chart need 2+ GPUs (found {ctx.gpus}): "
                 f"ran {world} {backend} rank")
    return f"{world} {backend} rank(s): single and tensor parity {df['parity_max_abs_diff'].max():.1e}"


def _l2_streams(ctx: Context) -> str:
    from course_lib.parallel.launcher import Run

    streams = (1, 2, 4) if ctx.cuda else (1,)
    res = _l2_launch(ctx, [Run("single", streams=s) for s in streams], tag="l2_streams", model="small",
                     batch=32, seq_len=128, repeat=10 if ctx.cuda else 2)
    df = res.frame
    parts = []
    for _, row in df.iterrows():
        s = int(row["streams"])
        ctx.metric(f"l2.streams_{s}_qps", float(row["qps"]), "queries/s")
        assert float(row["parity_max_abs_diff"]) < 1e-3, f"{s} streams: parity {row['parity_max_abs_diff']:.2e}"
        parts.append(f"{s}: {row['qps']:.0f}")
    if res.skipped:
        ctx.note("not run: " + "; ".join(f"{k}: {v}" for k, v in res.skipped.items()))
    return "QPS by stream count " + ", ".join(parts)


def _l2_deepspeed(ctx: Context) -> str:
    if importlib.util.find_spec("deepspeed") is None:
        raise StepSkipped("DeepSpeed is not installed: it builds from source against the machine's torch "
                          "(`DS_BUILD_OPS=0 pip install --no-build-isolation deepspeed`), which a machine "
                          "without registry access cannot do, and its wheel cannot be carried")
    ctx.need_cuda("DeepSpeed init_inference")
    from course_lib.parallel.launcher import Run

    res = _l2_launch(ctx, [Run("deepspeed")], tag="l2_deepspeed")
    if res.skipped:
        raise StepSkipped("; ".join(res.skipped.values()))
    diff = float(res.frame["parity_max_abs_diff"].max())
    ctx.metric("l2.deepspeed_parity", diff, "abs")
    assert diff < 1e-3, f"DeepSpeed AutoTP differs from the reference by {diff:.2e}"
    return f"init_inference on 1 rank, parity {diff:.1e}"


# ----------------------------------------------------------------------------------------------
# Lesson 3: fp16 forward and generation, QLinear on the GPU, a fused Triton kernel
# ----------------------------------------------------------------------------------------------


def _l3_fp16(ctx: Context) -> str:
    import copy

    import torch

    from course_lib.llm.convert import from_llama, tiny_llama

    ref = from_llama(tiny_llama(seed=0, vocab_size=256, hidden_size=128, layers=2, heads=4, kv_heads=2,
                                intermediate=256)).float().eval()
    ids = torch.randint(3, 256, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits32 = ref(ids).logits
        half = copy.deepcopy(ref).half().to(ctx.device)
        logits16 = half(ids.to(ctx.device)).logits.float().cpu()
    rel = float((logits16 - logits32).abs().max() / logits32.abs().max())
    ctx.metric("l3.fp16_logits_rel_diff", rel, "rel")
    assert rel < 2e-2, f"fp16 logits differ from fp32 by {rel:.2e} (relative to the largest logit)"
    gen32 = ref.generate(ids[:, :8], max_new_tokens=16)[0, 8:].tolist()
    gen16 = half.generate(ids[:, :8].to(ctx.device), max_new_tokens=16)[0, 8:].tolist()
    same = sum(int(a == b) for a, b in zip(gen32, gen16))
    ctx.metric("l3.fp16_greedy_tokens_equal", same, "of 16")
    out = [f"fp16 logits rel diff {rel:.1e}, greedy tokens equal to fp32: {same}/16"]
    for bits, group in ((8, None), (4, 32)):
        q = copy.deepcopy(ref).quantize(bits, group_size=group).half().to(ctx.device)
        qref = copy.deepcopy(ref).quantize(bits, group_size=group).float()
        with torch.no_grad():
            got = q(ids.to(ctx.device)).logits.float().cpu()
            want = qref(ids).logits
        d = float((got - want).abs().max() / want.abs().max())
        ctx.metric(f"l3.int{bits}_fp16_vs_fp32_rel_diff", d, "rel")
        assert d < 2e-2, f"int{bits} QLinear in fp16 on {ctx.device} differs from fp32 by {d:.2e}"
        out.append(f"int{bits} QLinear fp16 vs fp32 {d:.1e}")
    return "; ".join(out)


def _l3_triton(ctx: Context) -> str:
    from course_lib.llm import triton_int4

    ctx.need_cuda("the Triton int4 GEMV")
    if importlib.util.find_spec("triton") is None:
        raise StepSkipped("triton is not installed (it comes with PyPI's CUDA builds of torch)")
    res = triton_int4.gpu_check(ctx.device)
    for k, (v, unit) in res.items():
        ctx.metric(f"l3.triton_{k}", v, unit)
    layer = res["layer_speedup_vs_fp16"][0]
    ctx.note(f"target: a decoder layer's int4 GEMVs >= 1.5x fp16 F.linear ({'met' if layer >= 1.5 else 'not met'})")
    per = ", ".join(f"{k.removesuffix('_speedup_vs_fp16')} {v:.2f}x" for k, (v, _) in res.items()
                    if k.endswith("_speedup_vs_fp16") and k != "layer_speedup_vs_fp16")
    return f"int4 g64 GEMV vs fp16 F.linear at batch 1: layer {layer:.2f}x ({per}); max rel err {res['max_rel_err'][0]:.1e}"


# ----------------------------------------------------------------------------------------------
# Lesson 4: the gpu profile's budget (TVM tunes for the box's CPU)
# ----------------------------------------------------------------------------------------------


def _l4_budget(ctx: Context) -> str:
    if importlib.util.find_spec("tvm") is None:
        raise StepSkipped("TVM is not installed: apache-tvm's wheels (~100 MB) are too large to carry to the "
                          "GPU machine, which reaches no package registry")
    from course_lib.tuning import common, matmul

    cores = os.cpu_count() or 1
    mod = matmul.matmul_module(256, 256, 256)
    lib = matmul.build(matmul.hand_schedule(mod, "parallel"), target=common.host_target(num_cores=cores))
    data = matmul.make_data(256, 256, 256)
    diff = matmul.run_and_check(lib, data)
    ctx.metric("l4.hand_parallel_max_abs_diff", diff, "abs")
    ctx.note("lesson 4's gpu profile is a bigger tuning budget for the machine's CPU; this checks the build only")
    return f"hand schedule (parallel, {cores} cores) compiled and matches numpy ({diff:.1e})"


# ----------------------------------------------------------------------------------------------
# Lesson 5: the detector on CUDA, TensorRT engines
# ----------------------------------------------------------------------------------------------


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _l5_detector(ctx: Context) -> str:
    import torch

    from course_lib.detection import model as D

    torch.manual_seed(0)
    net = D.build("tiny").eval()
    x = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = _first(net(x))
        on = net.to(ctx.device)
        got = _first(on(x.to(ctx.device))).float().cpu()
        half = _first(on.half()(x.to(ctx.device).half())).float().cpu()
    scale = float(ref.abs().max())
    d32 = float((got - ref).abs().max()) / scale
    d16 = float((half - ref).abs().max()) / scale
    ctx.metric("l5.detector_fp32_rel_diff", d32, "rel")
    ctx.metric("l5.detector_fp16_rel_diff", d16, "rel")
    assert d32 < 1e-2, f"detector on {ctx.device} (fp32) differs from CPU by {d32:.2e}"
    assert d16 < 5e-2, f"detector in fp16 differs from fp32 by {d16:.2e}"
    ctx.shared["l5_net"] = net.float().cpu()
    return f"YOLOv7-tiny forward on {ctx.device}: fp32 rel diff {d32:.1e}, fp16 {d16:.1e}"


def _l5_tensorrt(ctx: Context) -> str:
    if importlib.util.find_spec("tensorrt") is None:
        raise StepSkipped("TensorRT is not installed: its wheels (`pip install 'tensorrt>=10,<11'`, over 1 GB of "
                          "CUDA libraries) cannot be carried to the GPU machine, which reaches no package registry")
    ctx.need_cuda("TensorRT")
    import torch

    from course_lib.detection import model as D
    from course_lib.ptq import onnx_utils, trt

    net = ctx.shared.get("l5_net") or D.build("tiny").eval()
    path = onnx_utils.export_onnx(net, ctx.work / "l5_fp32.onnx", img_size=128)
    engine = trt.build_engine(path, "fp16", img_size=128, max_batch=2)
    x = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = _first(net(x))
    got = trt.EngineRunner(engine)(x.cuda()).cpu()
    d = float((got - ref).abs().max() / ref.abs().max())
    ctx.metric("l5.trt_fp16_rel_diff", d, "rel")
    assert d < 5e-2, f"TensorRT fp16 engine differs from torch fp32 by {d:.2e}"
    ctx.note("the int8 engine needs the Q/DQ ONNX file from pytorch-quantization (not carried); only fp16 is checked")
    return f"fp16 engine from the course detector's ONNX, rel diff {d:.1e}"


STEPS: list[Step] = [
    Step("l0.torch_cuda", "torch.cuda basics + the timing harness on CUDA events (matmul fp32/fp16, copy bandwidth)",
         _torch_cuda,
         calls=("course_lib.bench:benchmark",)),
    Step("l0.nvml_sampler", "UtilizationSampler and hw.hardware() through NVML while a matmul loop runs",
         _nvml_sampler,
         calls=("course_lib.hw:hardware", "course_lib.hw:UtilizationSampler")),
    Step("l1.cuda_train", "lesson 1: train the tiny multitask BERT for a few steps on CUDA", _l1_train,
         calls=("course_lib.deploy.train:train", "course_lib.deploy.model:BertMultitask")),
    Step("l1.trace_map_location", "lesson 1: trace on cuda:0, reload with map_location, the CUDA-binding demo",
         _l1_trace,
         calls=("course_lib.deploy.trace:trace_model", "course_lib.deploy.trace:load_traced",
                "course_lib.deploy.trace:cuda_binding_demo")),
    Step("l2.nccl_rank", "lesson 2: single and tensor parallel on NCCL rank(s) under torchrun", _l2_nccl,
         calls=("course_lib.parallel.launcher:launch",)),
    Step("l2.cuda_streams", "lesson 2: the CUDA-stream sweep (1, 2, 4 streams) on one rank", _l2_streams,
         calls=("course_lib.parallel.launcher:launch",)),
    Step("l2.deepspeed", "lesson 2: DeepSpeed init_inference (AutoTP) on one rank", _l2_deepspeed,
         calls=("course_lib.parallel.launcher:launch",)),
    Step("l3.fp16", "lesson 3: fp16 forward and greedy generation; int8/int4 QLinear in fp16 on CUDA", _l3_fp16,
         calls=("course_lib.llm.convert:from_llama", "course_lib.llm.quant:QLinear")),
    Step("l3.triton_int4", "lesson 3: the Triton int4 GEMV vs fp16 F.linear at batch 1 on SmolLM2's shapes", _l3_triton,
         calls=("course_lib.llm.triton_int4:gpu_check",)),
    Step("l4.gpu_budget", "lesson 4: the gpu profile's tuning budget (TVM build on the machine's CPU)", _l4_budget,
         calls=("course_lib.tuning.matmul:hand_schedule", "course_lib.tuning.matmul:build")),
    Step("l5.detector_cuda", "lesson 5: the course detector's forward on CUDA in fp32 and fp16", _l5_detector,
         calls=("course_lib.detection.model:build",)),
    Step("l5.tensorrt", "lesson 5: a TensorRT fp16 engine from the detector's ONNX file", _l5_tensorrt,
         calls=("course_lib.ptq.onnx_utils:export_onnx", "course_lib.ptq.trt:build_engine")),
]


# ----------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------


def select_steps(names: list[str]) -> list[Step]:
    """Steps whose name starts with any of ``names`` (all when empty); unknown names are a UsageError."""
    if not names:
        return list(STEPS)
    chosen = [s for s in STEPS if any(s.name.startswith(n) for n in names)]
    unknown = [n for n in names if not any(s.name.startswith(n) for s in STEPS)]
    if unknown:
        raise UsageError(f"unknown step {', '.join(map(repr, unknown))} (steps: {', '.join(s.name for s in STEPS)})")
    return chosen


def _error_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {last_line(str(e)) or '(no message)'}"


def run_step(step: Step, ctx: Context) -> tuple[NotebookResult, str]:
    """Run one step; never raises for the step's own failure. Returns (result, one-line summary or reason)."""
    t0 = time.perf_counter()
    try:
        summary = step.fn(ctx) or ""
        status, error, reason = "ok", None, None
    except StepSkipped as e:
        status, error, reason, summary = "skipped", None, str(e), str(e)
    except Exception as e:  # noqa: BLE001 - a failing step is reported, the next one runs
        status, error, reason = "failed", _error_line(e), None
        summary = error
        with open(ctx.work.parent / "tracebacks.txt", "a", encoding="utf-8") as f:
            f.write(f"===== {step.name}\n{traceback.format_exc()}\n")
    notes = ([summary] if status == "ok" and summary else []) + list(ctx.notes)
    res = NotebookResult(status, time.perf_counter() - t0, error, reason, dict(ctx.metrics), notes)
    return res, summary


def machine_lines() -> list[str]:
    """GPU name, driver, CUDA and the versions that matter, for the report's header."""
    import importlib.metadata as md
    import platform

    lines = [f"python {platform.python_version()}"]
    try:
        import torch

        lines.append(f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'})")
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                p = torch.cuda.get_device_properties(i)
                lines.append(f"cuda:{i}: {p.name}, {p.total_memory / 2**30:.0f} GiB, sm {p.major}.{p.minor}")
    except Exception as e:  # noqa: BLE001 - the header never stops the report
        lines.append(f"torch: {_error_line(e)}")
    drv = nvidia_driver()
    if drv:
        lines.append(f"NVIDIA driver {drv}")
    vers = []
    for dist in ("transformers", "triton", "onnxruntime", "numpy", "deepspeed", "tensorrt", "apache-tvm"):
        try:
            vers.append(f"{dist} {md.version(dist)}")
        except md.PackageNotFoundError:
            vers.append(f"{dist} —")
    lines.append(", ".join(vers))
    return lines


def nvidia_driver() -> str | None:
    """The NVIDIA driver's version through NVML (``nvidia-ml-py``), or None without a driver or the package."""
    try:
        import pynvml

        pynvml.nvmlInit()
        drv = pynvml.nvmlSystemGetDriverVersion()
    except Exception:  # noqa: BLE001 - no driver, no library, no permission: no NVIDIA GPU here
        return None
    return drv.decode() if isinstance(drv, bytes) else str(drv)


DEFAULT_BUDGET_S = 480  # the limit: every step within 8 minutes on one GPU


def describe(step: Step) -> str:
    """``module.function`` of each lesson function a step calls (what ``--dry-run`` lists)."""
    return ", ".join(c.replace(":", ".") for c in step.calls) or f"{step.fn.__module__}.{step.fn.__name__}"


def run(names: list[str], out: str | os.PathLike, device: str = "auto", dry_run: bool = False,
        echo: Callable[[str], None] = print, budget_s: float = DEFAULT_BUDGET_S,
        allow_skips: bool = False) -> tuple[int, dict | None]:
    """Run (or, with ``dry_run``, list) the steps; returns ``(exit_status, report_dict or None)``.

    A step that would start after ``budget_s`` seconds is skipped with that reason (a step already
    running is not interrupted; lesson 2's launches have their own timeouts). Exit status 1 when a step
    failed, and also when no step ran on a CUDA GPU (no GPU, a CPU-only torch, ``--device cpu``, or every
    step skipped) unless ``allow_skips``: a GPU check that checked nothing must not pass.
    """
    from course_lib import hw

    steps = select_steps(names)
    if dry_run:
        width = max(len(s.name) for s in steps)
        for s in steps:
            echo(f"{s.name:<{width}}  {s.title}")
            echo(f"{'':<{width}}  calls {describe(s)}")
        echo(f"{len(steps)} steps (dry run: nothing executed)")
        return 0, None
    if not budget_s > 0:
        raise UsageError(f"--budget must be > 0 seconds, got {budget_s!r}")
    if device not in ("auto", "cuda", "cpu"):
        raise UsageError(f"--device must be auto, cuda or cpu, got {device!r}")
    gpus = hw.gpu_count()
    if device == "cuda" and gpus == 0:
        raise UsageError("--device cuda: no CUDA GPU is visible to torch")
    from course_lib import paths

    out_dir = Path(out).absolute()
    check_out_dir(out_dir, paths.notebooks_dir())
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / "work"  # traced models, torchrun plans, ONNX files: removed at the end
    work.mkdir(exist_ok=True)
    (out_dir / "tracebacks.txt").unlink(missing_ok=True)
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    use = "cuda" if (device == "cuda" or (device == "auto" and gpus > 0)) else ("cpu" if device == "cpu" else None)
    results: dict[str, NotebookResult] = {}
    shared: dict = {}
    if use is None:
        echo(f"no CUDA GPU found (torch sees {gpus}): every step is skipped. "
             "Run this on a GPU machine, or rehearse the code paths with --device cpu.")
    t_start = time.perf_counter()
    for s in steps:
        spent = time.perf_counter() - t_start
        if use is not None and spent > budget_s:
            reason = f"time budget of {budget_s:.0f} s spent ({spent:.0f} s) before this step"
            results[s.name] = NotebookResult("skipped", 0.0, None, reason)
            echo(f"[skipped] {s.name}: {reason}")
            continue
        if use is None:
            reason = f"needs a CUDA GPU (found {gpus})"
            results[s.name] = NotebookResult("skipped", 0.0, None, reason)
            summary = reason
        elif use == "cuda" and gpus < s.min_gpus:
            reason = f"needs {s.min_gpus} GPUs (found {gpus})"
            results[s.name] = NotebookResult("skipped", 0.0, None, reason)
            summary = reason
        else:
            ctx = Context(device=use, work=work, gpus=gpus, shared=shared)
            results[s.name], summary = run_step(s, ctx)
        r = results[s.name]
        echo(f"[{r.status:>7}] {s.name} ({r.seconds:.1f} s): {summary}")
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    profile = "gpu-check" if use != "cpu" else "gpu-check rehearsal (cpu)"
    doc = write_reports(out_dir, profile, started, results, layout=report_layout(steps))
    failed = sum(r.status == "failed" for r in results.values())
    counts = {k: sum(r.status == k for r in results.values()) for k in ("ok", "failed", "skipped")}
    echo(f"{counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped — report: {out_dir / 'report.md'}")
    gpu_ran = use == "cuda" and counts["ok"] + counts["failed"] > 0
    if not gpu_ran and not failed:
        if not allow_skips:
            echo(f"gpu-check: no step ran on a CUDA GPU ({'CPU rehearsal' if use == 'cpu' else f'torch sees {gpus} GPUs'})"
                 ", so nothing was checked: exit 1 (pass --allow-skips to accept a run without a GPU)")
            return 1, doc
        echo("gpu-check: no step ran on a CUDA GPU; accepted (--allow-skips)")
    return (1 if failed else 0), doc


def report_layout(steps: list[Step]) -> Layout:
    """``report.md`` of a GPU check: its own title, the GPU/driver/versions, and each step's title and calls."""
    titles = tuple(f"- `{s.name}`: {s.title} (calls `{describe(s)}`)" for s in steps)
    return Layout(title="GPU check report", item="step", notes_heading="Notes",
                  header=tuple(machine_lines()), sections=(("Steps", titles),))


# ----------------------------------------------------------------------------------------------
# command line (wired into ``course`` by the runner)
# ----------------------------------------------------------------------------------------------


def add_arguments(parser) -> None:
    parser.add_argument("steps", nargs="*", help="step names or prefixes, e.g. l1 l3.fp16 (default: all)")
    parser.add_argument("--out", default="build/gpu-check", help="output folder (default: build/gpu-check)")
    parser.add_argument("--dry-run", action="store_true", help="list the steps without running them")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S,
                        help=f"seconds; steps that would start later are skipped (default: {DEFAULT_BUDGET_S})")
    parser.add_argument("--device", default="auto",
                        help="auto (cuda when a GPU is visible), cuda, or cpu (a rehearsal of the code paths)")
    parser.add_argument("--allow-skips", action="store_true",
                        help="exit 0 even when no step ran on a GPU (a rehearsal); by default that exits 1")


def command(args) -> int:
    status, _ = run(args.steps, args.out, device=args.device, dry_run=args.dry_run, budget_s=args.budget,
                    allow_skips=args.allow_skips)
    return status
