"""Build a Triton ``config.pbtxt`` from a traced model's real I/O and validate it with Triton's own protobuf.

Introduced in ``01_torchscript_triton.ipynb``. The libtorch backend (``platform: "pytorch_libtorch"``)
feeds inputs by the ``forward`` argument names (or ``INPUT__i``) and names outputs ``<name>__<index>``.
This module reads names, dtypes and shapes from the TorchScript module itself (running it at two
sequence lengths to find the dynamic dims), writes the text, and parses it with
``tritonclient.grpc.model_config_pb2.ModelConfig`` + ``google.protobuf.text_format`` — the same
parser ``tritonserver`` uses — then checks it against the model. Nothing is written unless it passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from course_lib import hw
from course_lib.deploy import EXTRA

TORCH_TO_TRITON = {
    "torch.bool": "TYPE_BOOL", "torch.uint8": "TYPE_UINT8", "torch.int8": "TYPE_INT8", "torch.int16": "TYPE_INT16",
    "torch.int32": "TYPE_INT32", "torch.int64": "TYPE_INT64", "torch.float16": "TYPE_FP16",
    "torch.bfloat16": "TYPE_BF16", "torch.float32": "TYPE_FP32", "torch.float64": "TYPE_FP64",
}


class ConfigError(ValueError):
    """A ``config.pbtxt`` that Triton would reject or that does not match the model (one clear message) (notebook 01)."""


@dataclass
class TensorSpec:
    """One input or output: Triton name, ``TYPE_*`` data type, dims without the batch dim (-1 = dynamic) (notebook 01)."""

    name: str
    data_type: str
    dims: list[int]
    label_filename: str | None = None

    def __post_init__(self):
        self.dims = [int(d) for d in self.dims]


@dataclass
class ModelIO:
    """The real inputs and outputs of a traced model, as Triton sees them (notebook 01)."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    extra: dict = field(default_factory=dict)


def _pb():
    model_config_pb2 = hw.require("tritonclient.grpc.model_config_pb2", EXTRA)
    text_format = hw.require("google.protobuf.text_format", EXTRA)
    return model_config_pb2, text_format


def triton_dtype(dtype, what: str = "tensor") -> str:
    """Triton's ``TYPE_*`` name of a torch dtype; ConfigError naming the supported ones otherwise (notebook 01)."""
    key = str(dtype)
    if key not in TORCH_TO_TRITON:
        supported = ", ".join(k.removeprefix("torch.") for k in TORCH_TO_TRITON)
        raise ConfigError(f"{what} has dtype {key}, which has no Triton data type here (supported: {supported})")
    return TORCH_TO_TRITON[key]


def model_io(traced, example_inputs: tuple, output_names: tuple[str, ...] = ("cls_logits", "ner_logits")) -> ModelIO:
    """Names/dtypes/dims of a TorchScript module's inputs and outputs, found by running it (notebook 01).

    Input names come from the ``forward`` schema; dims that change when the sequence gets one token
    longer are dynamic (-1). Output names follow the libtorch backend's ``<name>__<index>`` convention.
    """
    import torch

    args = [a.name for a in traced.forward.schema.arguments[1:]]
    if len(args) != len(example_inputs):
        raise ConfigError(f"forward takes {len(args)} inputs {args} but {len(example_inputs)} examples were given")
    longer = tuple(torch.cat([x, x[:, -1:]], dim=1) for x in example_inputs)
    with torch.no_grad():
        out1, out2 = traced(*example_inputs), traced(*longer)
    if isinstance(out1, torch.Tensor):
        out1, out2 = (out1,), (out2,)
    if len(out1) != len(output_names):
        raise ConfigError(f"model returns {len(out1)} outputs but {len(output_names)} names were given: {output_names}")

    def _dims(a, b):  # drop the batch dim; a dim that changed with the sequence length is dynamic
        return [-1 if x != y else x for x, y in zip(a.shape[1:], b.shape[1:])]

    inputs = [TensorSpec(n, triton_dtype(x.dtype, f"input {n!r}"), _dims(x, y))
              for n, x, y in zip(args, example_inputs, longer)]
    outputs = [TensorSpec(f"{n}__{i}", triton_dtype(x.dtype, f"output {n!r}"), _dims(x, y))
               for i, (n, x, y) in enumerate(zip(output_names, out1, out2))]
    return ModelIO(inputs, outputs)


def _tensor_block(kind: str, specs: list[TensorSpec]) -> str:
    items = []
    for s in specs:
        lines = [f'    name: "{s.name}"', f"    data_type: {s.data_type}", f"    dims: [ {', '.join(map(str, s.dims))} ]"]
        if s.label_filename:
            lines.append(f'    label_filename: "{s.label_filename}"')
        items.append("  {\n" + "\n".join(lines) + "\n  }")
    return f"{kind} [\n" + ",\n".join(items) + "\n]"


def dynamic_batching_block(preferred_batch_size: tuple[int, ...] = (8, 16), max_queue_delay_microseconds: int = 500) -> str:
    """The ``dynamic_batching { ... }`` stanza of a ``config.pbtxt`` (notebook 01)."""
    lines = []
    if preferred_batch_size:
        lines.append(f"  preferred_batch_size: [ {', '.join(str(int(b)) for b in preferred_batch_size)} ]")
    lines.append(f"  max_queue_delay_microseconds: {int(max_queue_delay_microseconds)}")
    return "dynamic_batching {\n" + "\n".join(lines) + "\n}"


def build_config(
    name: str,
    io: ModelIO,
    max_batch_size: int = 64,
    dynamic_batching: bool = True,
    preferred_batch_size: tuple[int, ...] = (8, 16),
    max_queue_delay_microseconds: int = 500,
    instance_kind: str = "KIND_CPU",
    instance_count: int = 1,
    gpus: tuple[int, ...] | None = None,
    platform: str = "pytorch_libtorch",
    validate: bool = True,
) -> str:
    """The text of a ``config.pbtxt`` for ``io``; validated (parsed + checked against ``io``) unless told not to (notebook 01)."""
    parts = [f'name: "{name}"', f'platform: "{platform}"', f"max_batch_size: {int(max_batch_size)}",
             _tensor_block("input", io.inputs), _tensor_block("output", io.outputs)]
    if dynamic_batching:
        parts.append(dynamic_batching_block(preferred_batch_size, max_queue_delay_microseconds))
    group = [f"    count: {int(instance_count)}", f"    kind: {instance_kind}"]
    if gpus:
        group.append(f"    gpus: [ {', '.join(str(int(g)) for g in gpus)} ]")
    parts.append("instance_group [\n  {\n" + "\n".join(group) + "\n  }\n]")
    text = "\n".join(parts) + "\n"
    if validate:
        validate_config(text, io)
    return text


def parse_config(text: str):
    """Parse ``config.pbtxt`` text into Triton's ``ModelConfig`` protobuf; ConfigError with line:column if invalid (notebook 01)."""
    model_config_pb2, text_format = _pb()
    msg = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, msg)
    except text_format.ParseError as e:
        raise ConfigError(f"config.pbtxt does not parse as Triton's ModelConfig: {e}") from None
    return msg


def validate_config(text: str, io: ModelIO | None = None):
    """Parse ``text`` with Triton's protobuf and check it against the model's real I/O; returns the ModelConfig (notebook 01).

    Checks: platform, max_batch_size vs preferred batch sizes, instance kinds/GPUs, and — when ``io`` is
    given — that every input/output name exists in the model with the same data type and dims.
    """
    model_config_pb2, _ = _pb()
    cfg = parse_config(text)
    dt = model_config_pb2.DataType
    errors: list[str] = []
    if not cfg.name:
        errors.append("name is empty")
    if not (cfg.platform or cfg.backend):
        errors.append("neither platform nor backend is set")
    if cfg.max_batch_size < 0:
        errors.append(f"max_batch_size must be >= 0, got {cfg.max_batch_size}")
    if cfg.HasField("dynamic_batching"):
        if cfg.max_batch_size == 0:
            errors.append("dynamic_batching needs max_batch_size > 0")
        for b in cfg.dynamic_batching.preferred_batch_size:
            if b > cfg.max_batch_size or b < 1:
                errors.append(f"preferred_batch_size {b} is outside 1..max_batch_size={cfg.max_batch_size}")
    for g in cfg.instance_group:
        kind = model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind)
        if kind == "KIND_CPU" and len(g.gpus):
            errors.append(f"instance_group KIND_CPU lists gpus {list(g.gpus)}; use KIND_GPU")
        if g.count < 0:  # 0 = unset: Triton then starts one instance
            errors.append(f"instance_group count must be >= 1, got {g.count}")
    if io is not None:
        for what, got, want in (("input", cfg.input, io.inputs), ("output", cfg.output, io.outputs)):
            real = {s.name: s for s in want}
            seen = set()
            for t in got:
                seen.add(t.name)
                if t.name not in real:
                    errors.append(f"{what} {t.name!r} is not an {what} of the traced model (it has: {', '.join(real)})")
                    continue
                s = real[t.name]
                if dt.Name(t.data_type) != s.data_type:
                    errors.append(f"{what} {t.name!r}: data_type {dt.Name(t.data_type)} but the traced model uses {s.data_type}")
                if list(t.dims) != s.dims:
                    errors.append(f"{what} {t.name!r}: dims {list(t.dims)} but the traced model has {s.dims} "
                                  f"(batch dim excluded when max_batch_size > 0)")
            for n in real:
                if n not in seen:
                    errors.append(f"{what} {n!r} of the traced model is missing from the config")
    if errors:
        raise ConfigError("invalid config.pbtxt:\n  " + "\n  ".join(errors))
    return cfg


def write_repository(root: str | Path, name: str, traced, config_text: str, io: ModelIO | None = None,
                     labels: dict[str, list[str]] | None = None, version: int = 1) -> Path:
    """Write ``root/<name>/config.pbtxt``, ``root/<name>/<version>/model.pt`` and label files; validate first (notebook 01).

    Returns the model folder. Nothing is written if the config is invalid.
    """
    import torch

    validate_config(config_text, io)
    model_dir = Path(root) / name
    (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
    torch.jit.save(traced, str(model_dir / str(version) / "model.pt"))
    (model_dir / "config.pbtxt").write_text(config_text, encoding="utf-8")
    for fname, lines in (labels or {}).items():
        (model_dir / fname).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return model_dir


def tree(root: str | Path) -> str:
    """A small ``tree``-like listing of a model repository (for the notebook)."""
    root = Path(root)
    lines = [root.name + "/"]
    for p in sorted(root.rglob("*")):
        depth = len(p.relative_to(root).parts)
        size = f"  ({p.stat().st_size / 1e6:.1f} MB)" if p.is_file() and p.stat().st_size > 1e5 else ""
        lines.append("    " * depth + p.name + ("/" if p.is_dir() else "") + size)
    return "\n".join(lines)
