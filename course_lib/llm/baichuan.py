"""Baichuan's decoder-only transformer, written from the architecture (notebook 03).

Baichuan-7B and Baichuan-13B are LLaMA-style decoders with two differences that matter here:

* q, k and v come out of ONE fused linear layer ``self_attn.W_pack`` (rows: q, then k, then v),
  so a quantizer sees one big matrix per layer instead of three;
* Baichuan-7B rotates q/k with RoPE, Baichuan-13B adds an ALiBi bias to the attention scores
  instead (no position embedding at all). :class:`BaichuanConfig` ``position_embedding``
  selects ``"rope"`` or ``"alibi"``.

The rest is the LLaMA recipe: pre-norm RMSNorm, SwiGLU MLP (``gate_proj``, ``up_proj``,
``down_proj``), ``o_proj``, an untied or tied ``lm_head``. Grouped-query attention (fewer k/v heads
than q heads, as SmolLM2 uses) is supported: ``W_pack`` then has ``q`` rows + 2 × ``kv`` rows.

Parameter names follow Baichuan's checkpoints (``model.layers.N.self_attn.W_pack.weight`` ...),
so :func:`load_baichuan_checkpoint` reads a real Baichuan folder (``config.json`` + ``*.bin`` or
``*.safetensors``) directly.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from course_lib import hw


def _check_positive_int(cfg, name: str) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"BaichuanConfig.{name} must be a positive int, got {value!r}")


@dataclass
class BaichuanConfig:
    """Hyper-parameters of a Baichuan-style decoder (notebook 03)."""

    vocab_size: int = 64000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # None = same as num_attention_heads (Baichuan itself)
    head_dim: int | None = None  # None = hidden_size // num_attention_heads
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    position_embedding: str = "rope"  # "rope" (Baichuan-7B) or "alibi" (Baichuan-13B)
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    pad_token_id: int | None = 0

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "max_position_embeddings"):
            _check_positive_int(self, name)
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        _check_positive_int(self, "num_key_value_heads")
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                                 f"({self.num_attention_heads}) unless head_dim is given")
            self.head_dim = self.hidden_size // self.num_attention_heads
        _check_positive_int(self, "head_dim")
        if not (isinstance(self.rms_norm_eps, (int, float)) and self.rms_norm_eps > 0):
            raise ValueError(f"rms_norm_eps must be a number > 0, got {self.rms_norm_eps!r}")
        if self.position_embedding not in ("rope", "alibi"):
            raise ValueError(f"position_embedding must be 'rope' or 'alibi', got {self.position_embedding!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )

    @classmethod
    def baichuan_7b(cls) -> "BaichuanConfig":
        """Baichuan-7B's published configuration (RoPE, 32 layers, hidden 4096)."""
        return cls(vocab_size=64000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                   num_attention_heads=32, max_position_embeddings=4096, position_embedding="rope")

    @classmethod
    def baichuan_13b(cls) -> "BaichuanConfig":
        """Baichuan-13B's published configuration (ALiBi, 40 layers, hidden 5120)."""
        return cls(vocab_size=64000, hidden_size=5120, intermediate_size=13696, num_hidden_layers=40,
                   num_attention_heads=40, max_position_embeddings=4096, position_embedding="alibi")

    @classmethod
    def from_baichuan_json(cls, data: dict) -> "BaichuanConfig":
        """Read a Baichuan ``config.json`` dict (7B has ``max_position_embeddings`` → RoPE, 13B ``model_max_length`` → ALiBi)."""
        if not isinstance(data, dict):
            raise TypeError(f"a Baichuan config must be a JSON object (dict), got {type(data).__name__}")
        if "position_embedding" in data:
            pos = data["position_embedding"]
        else:
            pos = "rope" if "max_position_embeddings" in data else "alibi"
        max_len = data.get("max_position_embeddings", data.get("model_max_length", 4096))
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in data.items() if k in names}
        kw.update(position_embedding=pos, max_position_embeddings=max_len)
        return cls(**kw)

    def to_dict(self) -> dict:
        """Plain dict (what :func:`save_baichuan_checkpoint` writes as ``config.json``)."""
        return dataclasses.asdict(self)

    @property
    def q_size(self) -> int:
        """Rows of W_pack that belong to q."""
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        """Rows of W_pack that belong to k (and as many to v)."""
        return self.num_key_value_heads * self.head_dim


# ----------------------------------------------------------------------------------------------
# building blocks


class RMSNorm(nn.Module):
    """Root-mean-square layer norm (no mean subtraction, no bias), computed in float32 (notebook 03)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype=torch.float32):
    """cos and sin tables (len(positions), head_dim) for rotary position embedding (notebook 03)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim))
    freqs = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (batch, heads, seq, head_dim) queries/keys by the RoPE tables (notebook 03)."""
    return x * cos + _rotate_half(x) * sin


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """ALiBi's per-head slopes (geometric, interleaved for non-powers of two), as Baichuan-13B uses (notebook 03)."""

    def power_of_2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n_heads).is_integer():
        slopes = power_of_2(n_heads)
    else:
        closest = 2 ** math.floor(math.log2(n_heads))
        slopes = power_of_2(closest) + power_of_2(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(slopes, dtype=torch.float32)


def attention_bias(cfg: BaichuanConfig, q_len: int, past_len: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Additive attention bias (heads or 1, q_len, past_len + q_len): causal mask, plus ALiBi for 13B-style models."""
    k_len = past_len + q_len
    q_pos = torch.arange(past_len, k_len, device=device)[:, None]
    k_pos = torch.arange(k_len, device=device)[None, :]
    causal = torch.zeros(q_len, k_len, device=device, dtype=torch.float32)
    causal = causal.masked_fill(k_pos > q_pos, float("-inf"))
    if cfg.position_embedding == "alibi":
        # slope_h * (j - i): the same as Baichuan's slope_h * j up to a per-row constant, which softmax ignores
        rel = (k_pos - q_pos).to(torch.float32)
        bias = alibi_slopes(cfg.num_attention_heads).to(device)[:, None, None] * rel[None]
        return (bias + causal[None]).to(dtype)
    return causal[None].to(dtype)


class BaichuanAttention(nn.Module):
    """Self-attention with the fused ``W_pack`` (q|k|v rows), ``o_proj``, RoPE or ALiBi, GQA and a KV cache."""

    def __init__(self, cfg: BaichuanConfig):
        super().__init__()
        self.cfg = cfg
        self.W_pack = nn.Linear(cfg.hidden_size, cfg.q_size + 2 * cfg.kv_size, bias=False)
        self.o_proj = nn.Linear(cfg.q_size, cfg.hidden_size, bias=False)

    def forward(self, x, cos=None, sin=None, bias=None, past=None):
        cfg = self.cfg
        b, t, _ = x.shape
        qkv = self.W_pack(x)
        q, k, v = qkv.split([cfg.q_size, cfg.kv_size, cfg.kv_size], dim=-1)
        q = q.view(b, t, cfg.num_attention_heads, cfg.head_dim).transpose(1, 2)
        k = k.view(b, t, cfg.num_key_value_heads, cfg.head_dim).transpose(1, 2)
        v = v.view(b, t, cfg.num_key_value_heads, cfg.head_dim).transpose(1, 2)
        if cfg.position_embedding == "rope":
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        present = (k, v)  # cached before the GQA repeat: the cache stays kv_heads wide
        rep = cfg.num_attention_heads // cfg.num_key_value_heads
        if rep > 1:
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = out.transpose(1, 2).reshape(b, t, cfg.q_size)
        return self.o_proj(out), present


class BaichuanMLP(nn.Module):
    """SwiGLU feed-forward: ``down_proj(silu(gate_proj(x)) * up_proj(x))`` (notebook 03)."""

    def __init__(self, cfg: BaichuanConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class BaichuanLayer(nn.Module):
    """One pre-norm decoder layer: x + attn(norm(x)), then + mlp(norm(x)) (notebook 03)."""

    def __init__(self, cfg: BaichuanConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = BaichuanAttention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = BaichuanMLP(cfg)

    def forward(self, x, cos=None, sin=None, bias=None, past=None):
        h, present = self.self_attn(self.input_layernorm(x), cos, sin, bias, past)
        x = x + h
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, present


class BaichuanModel(nn.Module):
    """Embeddings + decoder layers + final norm (``model.*`` in Baichuan's state dict)."""

    def __init__(self, cfg: BaichuanConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(BaichuanLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, input_ids, past_key_values=None):
        cfg = self.cfg
        b, t = input_ids.shape
        past_len = 0 if not past_key_values else past_key_values[0][0].shape[2]
        x = self.embed_tokens(input_ids)
        cos = sin = None
        if cfg.position_embedding == "rope":
            pos = torch.arange(past_len, past_len + t, device=input_ids.device)
            cos, sin = rope_cos_sin(pos, cfg.head_dim, cfg.rope_theta, dtype=x.dtype)
        bias = attention_bias(cfg, t, past_len, device=input_ids.device, dtype=x.dtype)
        presents = []
        for i, layer in enumerate(self.layers):
            x, present = layer(x, cos, sin, bias, None if not past_key_values else past_key_values[i])
            presents.append(present)
        return self.norm(x), presents


class BaichuanForCausalLM(nn.Module):
    """Baichuan-style causal LM with generation, streaming, ``chat()`` and ``quantize(bits)`` (notebook 03)."""

    def __init__(self, cfg: BaichuanConfig):
        super().__init__()
        self.config = cfg
        self.model = BaichuanModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.quantized_bits: int | None = None

    # -- forward ---------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, past_key_values=None, use_cache: bool = False,
                last_only: bool = False):
        """Logits (batch, seq, vocab) and, with ``use_cache``, the new KV cache; HF-like return object."""
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"input_ids must be an integer tensor of token ids, got {input_ids.dtype}")
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        past_len = 0 if not past_key_values else past_key_values[0][0].shape[2]
        if self.config.position_embedding == "alibi" and past_len + input_ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence of {past_len + input_ids.shape[1]} tokens exceeds max_position_embeddings="
                f"{self.config.max_position_embeddings}"
            )
        h, presents = self.model(input_ids, past_key_values)
        if last_only:
            h = h[:, -1:]
        logits = self.lm_head(h)
        return SimpleNamespace(logits=logits, past_key_values=presents if use_cache else None)

    # -- quantization ----------------------------------------------------------------------
    def quantize(self, bits: int, group_size: int | None = None, kernel: str = "reference",
                 lm_head: bool = False) -> "BaichuanForCausalLM":
        """Replace W_pack, o_proj, gate/up/down_proj of every layer by QLinear(bits); returns self (like Baichuan's).

        ``kernel="fast"`` runs them through the fused kernel of course_lib.llm.fast; ``lm_head=True``
        quantizes the LM head too (the embedding table stays float).
        """
        from course_lib.llm.quant import quantize_model

        return quantize_model(self, bits, group_size=group_size, kernel=kernel, lm_head=lm_head)

    # -- generation ------------------------------------------------------------------------
    @torch.no_grad()
    def stream_ids(self, input_ids: torch.Tensor, max_new_tokens: int = 64, do_sample: bool = False,
                   temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, eos_token_id=None,
                   use_cache: bool = True, generator: torch.Generator | None = None,
                   repetition_penalty: float = 1.0) -> Iterator[int]:
        """Yield new token ids one at a time (greedy or sampled, see :func:`decode_stream`), using the KV cache
        unless ``use_cache=False``."""
        def step(step_in, past, seq):
            if use_cache:
                out = self(step_in, past_key_values=past, use_cache=True, last_only=True)
                return out.logits[0, -1], out.past_key_values
            return self(seq, last_only=True).logits[0, -1], None

        yield from decode_stream(step, input_ids, max_new_tokens, do_sample=do_sample, temperature=temperature,
                                 top_k=top_k, top_p=top_p, eos_token_id=eos_token_id, generator=generator,
                                 repetition_penalty=repetition_penalty)

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int = 64, **kw) -> torch.Tensor:
        """Prompt + generated ids as one (1, n) tensor (see :meth:`stream_ids` for the options)."""
        ids = torch.as_tensor(input_ids)
        if ids.dim() == 1:
            ids = ids[None]
        new = list(self.stream_ids(ids, max_new_tokens=max_new_tokens, **kw))
        return torch.cat([ids, torch.tensor([new], dtype=ids.dtype, device=ids.device)], dim=1)

    def stream_text(self, tokenizer, input_ids, **kw) -> Iterator[str]:
        """Yield decoded text pieces as tokens arrive (holds back incomplete UTF-8 characters)."""
        new: list[int] = []
        shown = ""
        for tok in self.stream_ids(input_ids, **kw):
            if tok in _eos_ids(tokenizer, kw.get("eos_token_id")):
                break
            new.append(tok)
            text = tokenizer.decode(new, skip_special_tokens=True)
            if text.endswith("\ufffd"):
                continue  # a multi-byte character split across tokens: wait for the rest
            if len(text) > len(shown):
                yield text[len(shown):]
                shown = text

    def chat(self, tokenizer, messages: list[dict], stream: bool = False, max_new_tokens: int = 128,
             max_context: int | None = None, **kw):
        """Answer the last user message (Baichuan-style API): a string, or a generator of text pieces if ``stream``."""
        ids, _ = build_chat_input(tokenizer, messages, max_new_tokens=max_new_tokens,
                                  max_context=max_context or self.config.max_position_embeddings)
        kw.setdefault("eos_token_id", _eos_ids(tokenizer, None))
        gen = self.stream_text(tokenizer, ids, max_new_tokens=max_new_tokens, **kw)
        if stream:
            return gen
        return "".join(gen)


def _eos_ids(tokenizer, explicit) -> list[int]:
    if explicit is not None:
        return [explicit] if isinstance(explicit, int) else list(explicit)
    out = []
    if getattr(tokenizer, "eos_token_id", None) is not None:
        out.append(tokenizer.eos_token_id)
    return out


def decode_stream(step, input_ids, max_new_tokens: int = 64, do_sample: bool = False, temperature: float = 1.0,
                  top_k: int = 0, top_p: float = 1.0, eos_token_id=None, generator: torch.Generator | None = None,
                  repetition_penalty: float = 1.0) -> Iterator[int]:
    """The decoding loop shared by the eager model and the one-graph decoder: yield new token ids one at a time.

    ``step(step_in, past, seq) -> (logits of the last position, new past)`` runs the network on the new ids
    ``step_in`` (the whole prompt first, then one token), continuing from ``past`` (None at the start); ``seq`` is
    the prompt plus every token so far. Greedy, or sampled with temperature / top-k / top-p; ``repetition_penalty``
    > 1 (Baichuan's chat uses 1.1) divides positive / multiplies negative logits of tokens already in the sequence,
    as transformers does.
    """
    if repetition_penalty <= 0:
        raise ValueError("repetition_penalty must be > 0")
    if max_new_tokens < 0:
        raise ValueError("max_new_tokens must be >= 0")
    if do_sample and temperature <= 0:
        raise ValueError("temperature must be > 0 when sampling")
    ids = torch.as_tensor(input_ids)
    if ids.dim() == 1:
        ids = ids[None]
    if ids.shape[0] != 1:
        raise ValueError("generation supports one sequence at a time (batch size 1)")
    if ids.shape[1] == 0:
        raise ValueError("cannot generate from an empty prompt")
    eos = set([eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or []))
    past, seq, step_in = None, ids, ids
    for _ in range(max_new_tokens):
        logits, past = step(step_in, past, seq)
        logits = logits.float()
        if repetition_penalty != 1.0:
            seen = seq[0].unique()
            picked = logits[seen]
            logits[seen] = torch.where(picked > 0, picked / repetition_penalty, picked * repetition_penalty)
        nxt = _choose(logits, do_sample, temperature, top_k, top_p, generator)
        yield nxt
        if nxt in eos:
            return
        step_in = torch.tensor([[nxt]], device=ids.device)
        seq = torch.cat([seq, step_in], dim=1)


def _choose(logits, do_sample, temperature, top_k, top_p, generator) -> int:
    if not do_sample:
        return int(logits.argmax())
    logits = logits / temperature
    if top_k and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1.0:
        sp, si = probs.sort(descending=True)
        keep = sp.cumsum(0) - sp < top_p
        probs = torch.zeros_like(probs).scatter(0, si[keep], sp[keep])
        probs = probs / probs.sum()
    return int(torch.multinomial(probs, 1, generator=generator))


def build_chat_input(tokenizer, messages: list[dict], max_new_tokens: int = 128,
                     max_context: int = 2048) -> tuple[torch.Tensor, bool]:
    """(prompt ids (1, n), truncated?) for a chat history; keeps the most recent tokens if it is too long."""
    if not messages:
        raise ValueError("messages is empty: give at least one {'role': 'user', 'content': ...}")
    for m in messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"each message needs 'role' and 'content', got {m!r}")
    if messages[-1]["role"] != "user":
        raise ValueError("the last message must come from the user")
    if not str(messages[-1]["content"]).strip():
        raise ValueError("the last user message is empty")
    if getattr(tokenizer, "chat_template", None):
        out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out
    else:
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        ids = tokenizer(text + "<|im_start|>assistant\n")["input_ids"]
    ids = list(ids)
    budget = max(1, max_context - max_new_tokens)
    truncated = len(ids) > budget
    if truncated:
        ids = ids[-budget:]
    return torch.tensor([ids]), truncated


# ----------------------------------------------------------------------------------------------
# checkpoints on disk


def save_baichuan_checkpoint(model: BaichuanForCausalLM, folder: str | Path, fmt: str = "safetensors") -> Path:
    """Write ``config.json`` + weights in Baichuan's layout (``.safetensors`` or ``pytorch_model.bin``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(model.config.to_dict(), indent=1))
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    if fmt == "safetensors":
        hw.require("safetensors.torch", "llm").save_file(sd, str(folder / "model.safetensors"))
    elif fmt == "bin":
        torch.save(sd, folder / "pytorch_model.bin")
    else:
        raise ValueError(f"fmt must be 'safetensors' or 'bin', got {fmt!r}")
    return folder


def _read_config(cfg_file: Path) -> BaichuanConfig:
    try:
        data = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{cfg_file} is not valid JSON ({e})") from None
    try:
        return BaichuanConfig.from_baichuan_json(data)
    except TypeError as e:
        raise ValueError(f"{cfg_file} is not a Baichuan config: {e}") from None


def _read_weights(files: list[Path]) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            if f.suffix == ".safetensors":
                sd.update(hw.require("safetensors.torch", "llm").load_file(str(f)))
            else:
                sd.update(torch.load(f, map_location="cpu", weights_only=True))
        except hw.MissingDependency:
            raise
        except Exception as e:  # truncated file, not a checkpoint, pickle that is not weights-only ...
            raise ValueError(f"cannot read weights from {f}: {type(e).__name__}: {e}") from None
    return sd


def _check_shapes(model: nn.Module, sd: dict[str, torch.Tensor]) -> None:
    expected = model.state_dict()
    wrong = [f"{k}: checkpoint {tuple(v.shape)} vs config {tuple(expected[k].shape)}"
             for k, v in sd.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    if wrong:
        raise ValueError(f"checkpoint does not match its config.json ({len(wrong)} tensor(s)): " + "; ".join(wrong[:3]))


def load_baichuan_checkpoint(folder: str | Path, dtype=torch.float32) -> BaichuanForCausalLM:
    """Load a Baichuan checkpoint folder (config.json + *.safetensors or *.bin shards) into BaichuanForCausalLM."""
    folder = Path(folder)
    cfg_file = folder / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{cfg_file} not found: a Baichuan checkpoint folder holds config.json and weights")
    cfg = _read_config(cfg_file)
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors or pytorch_model*.bin weights in {folder}")
    sd = _read_weights(files)
    with torch.device("meta"):
        model = BaichuanForCausalLM(cfg)
    if cfg.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    _check_shapes(model, sd)
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    missing = [m for m in missing if not (cfg.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match the Baichuan layout: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.to(dtype).eval()
