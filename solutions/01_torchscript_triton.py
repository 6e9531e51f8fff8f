"""Solutions of notebook 01_torchscript_triton (one section per exercise id; `course run --with-solutions` fills them in)."""

# %% [01.gp_params]
# Exercise 01.gp_params (predict): parameters of the GlobalPointer head
# one Linear(hidden → types × head_size × 2): a query and a key of head_size per type, weight + bias
hidden = multitask.SIZES[model_size][1]  # 128 for tiny
my_gp_params = (hidden + 1) * len(data.ENTITY_TYPES) * 64 * 2

# %% [01.decode_spans]
# Exercise 01.decode_spans (implement): span logits [types, L, L] → sorted (type, start, end), start <= end
def decode_token_spans(logits, threshold=0.0):
    types, starts, ends = np.where(np.asarray(logits) > threshold)
    return sorted((int(t), int(s), int(e)) for t, s, e in zip(types, starts, ends) if s <= e)

# %% [01.batching_stanza]
# Exercise 01.batching_stanza (implement): the dynamic_batching block of a config.pbtxt
def dynamic_batching_stanza(preferred_batch_size, max_queue_delay_us):
    sizes = ", ".join(str(int(b)) for b in preferred_batch_size)
    return ("dynamic_batching {\n"
            f"  preferred_batch_size: [ {sizes} ]\n"
            f"  max_queue_delay_microseconds: {int(max_queue_delay_us)}\n"
            "}")

# %% [01.queue_delay]
# Exercise 01.queue_delay (explore): a delay that makes a lone client wait at least 10 ms longer
explore_delay_us = 50000  # 50 ms: with one client there is nobody to merge with, so it waits the whole delay
