"""Solutions of notebook 00's exercises (injected by `course run --with-solutions`; one section per id)."""

# %% [00.p90]
# Exercise 00.p90 (implement): the 90th percentile, interpolating linearly between order statistics
def p90(values):
    xs = sorted(values)
    pos = (len(xs) - 1) * 0.9
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

# %% [00.peak_gflops]
# Exercise 00.peak_gflops (predict): cores × fp32 lanes × FMA units × 2 FLOPs per FMA × GHz
my_peak_gflops = peak.cores * (peak.simd_bits // 32) * max(peak.fma_units, 1) * (2 if peak.fma_units else 1) * peak.clock_ghz

# %% [00.matmul_ms]
# Exercise 00.matmul_ms (predict): 2·n³ FLOPs at this run's GFLOP/s, in milliseconds
my_matmul_ms = 2 * big_n**3 / (gflops * 1e9) * 1e3

# %% [00.sample_count]
# Exercise 00.sample_count (explore): sample again at an interval of your choice, then read the `samples` count
my_interval = 0.05 if sample_interval != 0.05 else 0.5
with hw.UtilizationSampler(interval=my_interval) as my_sampler:
    time.sleep(sample_seconds)
my_sample_count = my_sampler.summary()[sampled_device].samples
