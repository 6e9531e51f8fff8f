"""Back-of-the-envelope communication per batch for each strategy — ``02_parallel_inference.ipynb``.

Counts what each rank has to send per forward pass of one batch (fp32), with ring collectives:
an all-reduce of ``S`` bytes sends ``2 (N-1)/N · S`` per rank, an all-gather of ``S`` bytes in
total sends ``(N-1)/N · S`` per rank. It explains the measured ordering; it does not predict time.
"""

from __future__ import annotations

from course_lib.parallel.model import as_config


def communication(model_config, world_size: int, batch: int, seq_len: int, microbatches: int = 1,
                  bytes_per_value: int = 4) -> list[dict]:
    """Rows (strategy, messages per batch, MiB sent per rank per batch, what is sent) for N ranks (02)."""
    cfg = as_config(model_config)
    n, L, h = world_size, cfg.num_hidden_layers, cfg.hidden_size
    act = batch * seq_len * h * bytes_per_value  # one activation tensor [batch, seq, hidden]
    params = _param_bytes(cfg, bytes_per_value)
    mib = 2**20
    rows = [
        {"strategy": "single", "messages": 0, "mib_sent_per_rank": 0.0, "what": "nothing"},
        {"strategy": "tensor", "messages": 2 * L, "mib_sent_per_rank": 2 * L * 2 * (n - 1) / n * act / mib,
         "what": f"2 all-reduces of the activations per layer ({L} layers), every batch"},
        {"strategy": "fsdp", "messages": L + 1, "mib_sent_per_rank": (n - 1) / n * params / mib,
         "what": "all-gather of every layer's weights, every batch (weights move, activations stay)"},
        {"strategy": "pipeline", "messages": 2 * microbatches * (n - 1),
         "mib_sent_per_rank": act / mib if n > 1 else 0.0,
         "what": f"activations once per stage boundary ({n - 1} boundaries), header + tensor per micro-batch"},
    ]
    return rows


def _param_bytes(cfg, bytes_per_value: int) -> int:
    h, i, v, L = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_hidden_layers
    layer = 4 * (h * h + h) + (h * i + i) + (i * h + h) + 4 * h  # q,k,v,o + MLP + 2 LayerNorms
    emb = (v + cfg.max_position_embeddings + cfg.type_vocab_size) * h + 2 * h
    head = (h * h + h) + 2 * h + v  # transform + LayerNorm + decoder bias (decoder weight tied)
    return (L * layer + emb + head) * bytes_per_value
