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


def gpipe_schedule(num_stages: int, num_microbatches: int) -> list[list[tuple[int, int]]]:
    """The forward GPipe schedule: step ``t`` runs ``(stage s, micro-batch t - s)`` on every stage where it exists (02).

    ``m + S - 1`` steps; stage ``s`` idles for ``S - 1`` of them (the bubble).
    """
    if num_stages < 1 or num_microbatches < 1:
        raise ValueError(f"need at least one stage and one micro-batch, got {num_stages}, {num_microbatches}")
    steps = []
    for t in range(num_microbatches + num_stages - 1):
        steps.append([(s, t - s) for s in range(num_stages) if 0 <= t - s < num_microbatches])
    return steps


def gpipe_latency(stage_times, microbatches: int) -> float:
    """Time of ONE batch through a GPipe pipeline: ``sum(T)/m + (m-1)·max(T)/m`` (02).

    ``stage_times`` are the times each stage needs for the whole batch; a micro-batch takes ``T/m``
    on a stage (perfect scaling, no communication). The first micro-batch crosses every stage,
    the other ``m - 1`` follow at the pace of the slowest stage.
    """
    ts = [float(t) for t in stage_times]
    if not ts or microbatches < 1:
        raise ValueError("need stage times and at least one micro-batch")
    m = microbatches
    return sum(ts) / m + (m - 1) * max(ts) / m


def pipeline_qps(stage_times, batch: int, microbatches: int, streaming: bool = False) -> float:
    """Predicted sequences/s: one batch at a time (``batch / gpipe_latency``), or batches back to back
    (``streaming``: the slowest stage sets the pace, ``batch / max(T)``) (02)."""
    if streaming:
        return batch / max(float(t) for t in stage_times)
    return batch / gpipe_latency(stage_times, microbatches)
