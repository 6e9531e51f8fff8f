"""Solutions of notebook 03_llm_quantization (one section per exercise id; injected by `course run --with-solutions`)."""

# %% [03.pack_int4]
# Exercise 03.pack_int4 (implement): pack eight int4 codes per int32 word, column 8c+n in bits 4n..4n+3
def pack_int4(q):
    rows, cols = q.shape
    nib = (q.to(torch.int64) & 0xF).view(rows, cols // 8, 8)           # two's complement nibbles
    words = (nib << torch.arange(0, 32, 4)).sum(dim=-1)                 # nibble n at bit 4n
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)

# %% [03.unpack_int4]
# Exercise 03.unpack_int4 (implement): the exact inverse, sign-extending each nibble
def unpack_int4(words):
    left = (28 - torch.arange(0, 32, 4)).to(torch.int32)               # nibble n to the top 4 bits
    return ((words[:, :, None] << left) >> 28).flatten(1)              # arithmetic shift sign-extends

# %% [03.group_scales]
# Exercise 03.group_scales (implement): float32 absmax scales per row and group of consecutive columns
def group_scales(w, bits, group_size):
    rows, cols = w.shape
    amax = w.float().reshape(rows, cols // group_size, group_size).abs().amax(dim=-1)
    amax = torch.where(amax == 0, torch.ones_like(amax), amax)         # all-zero group: any scale is exact
    return amax / (2 ** (bits - 1) - 1)

# %% [03.layer_bytes]
# Exercise 03.layer_bytes (predict): bytes of gate_proj (1536 × 576) as a per-row QLinear
my_int8_bytes = 1536 * 576 + 4 * 1536      # one byte per weight + one float32 scale per row
my_int4_bytes = 1536 * 576 // 2 + 4 * 1536  # half a byte per weight + the same scales

# %% [03.decode_ceiling]
# Exercise 03.decode_ceiling (predict): the most tokens/s a memory-bound decoder can reach
my_ceiling = given_bandwidth_gb_s * 1e9 / int8_bytes_per_token

# %% [03.group_size]
# Exercise 03.group_size (explore): measure int4 at another group size, then say which group size won
other_group = 32 if group_size != 32 else 64
ppl_other = measure_int4_zh(other_group)
lower_group = other_group if ppl_other < ppl_df.loc["int4g", "zh"] else group_size
