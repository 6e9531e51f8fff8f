"""Convert a LLaMA-family ``transformers`` model to the Baichuan layout (notebook 03).

LLaMA keeps ``q_proj``, ``k_proj``, ``v_proj`` separate; Baichuan stacks them into one ``W_pack``
whose rows are [q rows | k rows | v rows]. With grouped-query attention (SmolLM2: 9 q heads,
3 kv heads of 64) ``W_pack`` has 576 + 2 × 192 = 960 rows. Everything else maps one to one.
HF's LLaMA weights are already permuted for the ``rotate_half`` RoPE that Baichuan-7B uses too,
so no re-ordering of rows is needed.
"""

from __future__ import annotations

import torch

from course_lib import hw
from course_lib.llm.baichuan import BaichuanConfig, BaichuanForCausalLM


def _rope_theta(hf_cfg) -> float:
    params = getattr(hf_cfg, "rope_parameters", None) or {}
    if isinstance(params, dict) and "rope_theta" in params:
        if params.get("rope_type", "default") not in ("default", None):
            raise ValueError(f"only plain RoPE is supported, got rope_type={params.get('rope_type')!r}")
        return float(params["rope_theta"])
    return float(getattr(hf_cfg, "rope_theta", 10000.0))


def config_from_llama(hf_cfg) -> BaichuanConfig:
    """BaichuanConfig (RoPE, 7B-style) equivalent to a transformers LlamaConfig."""
    if getattr(hf_cfg, "attention_bias", False) or getattr(hf_cfg, "mlp_bias", False):
        raise ValueError("LLaMA models with attention/MLP biases are not supported (Baichuan has none)")
    if getattr(hf_cfg, "hidden_act", "silu") != "silu":
        raise ValueError(f"expected a SwiGLU (silu) MLP, got hidden_act={hf_cfg.hidden_act!r}")
    return BaichuanConfig(
        vocab_size=hf_cfg.vocab_size,
        hidden_size=hf_cfg.hidden_size,
        intermediate_size=hf_cfg.intermediate_size,
        num_hidden_layers=hf_cfg.num_hidden_layers,
        num_attention_heads=hf_cfg.num_attention_heads,
        num_key_value_heads=getattr(hf_cfg, "num_key_value_heads", None) or hf_cfg.num_attention_heads,
        head_dim=getattr(hf_cfg, "head_dim", None) or hf_cfg.hidden_size // hf_cfg.num_attention_heads,
        max_position_embeddings=hf_cfg.max_position_embeddings,
        rms_norm_eps=hf_cfg.rms_norm_eps,
        rope_theta=_rope_theta(hf_cfg),
        position_embedding="rope",
        tie_word_embeddings=bool(getattr(hf_cfg, "tie_word_embeddings", False)),
        bos_token_id=getattr(hf_cfg, "bos_token_id", None),
        eos_token_id=getattr(hf_cfg, "eos_token_id", None),
        pad_token_id=getattr(hf_cfg, "pad_token_id", None),
    )


def llama_state_dict_to_baichuan(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename LLaMA parameter names to Baichuan's, concatenating q/k/v rows into ``W_pack``."""
    out: dict[str, torch.Tensor] = {}
    for name, t in sd.items():
        if any(p in name for p in (".q_proj.", ".k_proj.", ".v_proj.")):
            continue
        if "rotary_emb" in name:
            continue
        out[name] = t
    layers = sorted({int(n.split(".")[2]) for n in sd if n.startswith("model.layers.")})
    for i in layers:
        p = f"model.layers.{i}.self_attn."
        try:
            q, k, v = sd[p + "q_proj.weight"], sd[p + "k_proj.weight"], sd[p + "v_proj.weight"]
        except KeyError as e:
            raise ValueError(f"layer {i} lacks q/k/v projections ({e}); is this a LLaMA-family model?") from None
        out[p + "W_pack.weight"] = torch.cat([q, k, v], dim=0)
    return out


@torch.no_grad()
def from_llama(hf_model) -> BaichuanForCausalLM:
    """A BaichuanForCausalLM holding the same weights as a transformers LlamaForCausalLM (fused W_pack)."""
    cfg = config_from_llama(hf_model.config)
    sd = llama_state_dict_to_baichuan(hf_model.state_dict())
    dtype = next(hf_model.parameters()).dtype
    model = BaichuanForCausalLM(cfg).to(dtype)
    if cfg.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if not (cfg.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"conversion mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval()


def tiny_llama(seed: int = 0, vocab_size: int = 256, hidden_size: int = 64, layers: int = 2,
               heads: int = 4, kv_heads: int = 2, intermediate: int = 128, tie: bool = False):
    """A tiny random transformers LlamaForCausalLM (GQA) for fast tests and the CLI's --tiny mode."""
    transformers = hw.require("transformers", "llm", what="a tiny LLaMA")
    LlamaConfig, LlamaForCausalLM = transformers.LlamaConfig, transformers.LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=tie,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    cfg.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # a bit more spread than the init so logits differ meaningfully
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.08)
    return model


def load_smollm2_baichuan(dtype=torch.float32, verbose: bool = True):
    """(BaichuanForCausalLM, tokenizer): SmolLM2-135M-Instruct converted to the Baichuan layout."""
    from course_lib.llm.smollm2 import load_smollm2

    hf, tok = load_smollm2(dtype=dtype, verbose=verbose)
    model = from_llama(hf)
    del hf
    return model, tok
