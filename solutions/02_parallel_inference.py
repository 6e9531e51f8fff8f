"""Solutions of 02_parallel_inference (one section per exercise id; injected by ``course run --with-solutions``)."""

# %% [02.colwise_linear]
# Exercise 02.colwise_linear (implement): column-parallel Linear — shard, compute per rank, all-gather
def column_parallel_linear(x, weight, bias, world_size):
    w_shards = weight.chunk(world_size, dim=0)  # rank r owns output features r*k .. (r+1)*k - 1
    b_shards = bias.chunk(world_size, dim=0)
    partials = [torch.nn.functional.linear(x, w, b) for w, b in zip(w_shards, b_shards)]
    return partials, torch.cat(partials, dim=-1)  # the all-gather, along the feature dim

# %% [02.gpipe_schedule]
# Exercise 02.gpipe_schedule (implement): which (stage, micro-batch) pairs run at each step of a GPipe forward
def gpipe_schedule(num_stages, num_microbatches):
    steps = []
    for t in range(num_microbatches + num_stages - 1):
        steps.append([(s, t - s) for s in range(num_stages) if 0 <= t - s < num_microbatches])
    return steps

# %% [02.pipeline_qps]
# Exercise 02.pipeline_qps (predict): sequences/s of ONE batch through the pipeline with m micro-batches
def predict_pipeline_qps(stage_ms, batch, m):
    one_batch_s = sum(stage_ms) / 1e3 / m + (m - 1) * max(stage_ms) / 1e3 / m   # first trip + the rest, slowest pace
    return batch / one_batch_s

# %% [02.best_microbatches]
# Exercise 02.best_microbatches (explore): sweep one more micro-batch count, then read the best m off your table
sweep_m = sorted(set(pipeline_microbatches) | {next(m for m in range(2, batch + 1) if m not in pipeline_microbatches)})
new_m = [m for m in sweep_m if m not in pipeline_microbatches]
sres = launch([Run("pipeline", microbatches=m) for m in new_m], world_size=world_size, model=model_preset, batch=batch,
              seq_len=seq_len, warmup=warmup, repeat=repeat, qps_batches=qps_batches, qps_rounds=qps_rounds,
              threads=threads, timeout_s=launch_timeout_s, collective_timeout_s=collective_timeout_s)
sweep = pd.concat([hand.reset_index()[["microbatches", "qps", "qps_p10", "qps_p90"]],
                   sres.frame[["microbatches", "qps", "qps_p10", "qps_p90"]]], ignore_index=True)
display(sweep)
my_best_m = int(sweep.loc[sweep["qps"].idxmax(), "microbatches"])
