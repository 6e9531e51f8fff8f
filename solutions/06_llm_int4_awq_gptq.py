"""Solutions of notebook 06_llm_int4_awq_gptq (one section per exercise id; injected by `course run --with-solutions`)."""

# %% [06.gptq_column]
# Exercise 06.gptq_column (implement): round column 0, push its error onto the later columns of the block
def gptq_column(wb, hrow, scale):
    q = torch.clamp(torch.round(wb[:, 0] / scale), -8, 7)     # RTN for this one column
    err = (wb[:, 0] - q * scale) / hrow[0]                     # its error, over the Cholesky diagonal
    return q, wb - err[:, None] * hrow[None, :]                # the later columns compensate

# %% [06.awq_channels]
# Exercise 06.awq_channels (predict): the 4 input channels of layer 0's W_pack that AWQ scales up most
my_channels = x_mean.topk(4).indices.tolist()   # s = x_mean**alpha: the loudest activations get the largest s

# %% [06.damping]
# Exercise 06.damping (explore): a damping (fraction of H's mean diagonal) that keeps the Cholesky stable
my_damp = 0.01   # GPTQ's default: enough to make H + λI positive definite, small enough to keep H's shape

# %% [06.calib_size]
# Exercise 06.calib_size (explore): two calibration sizes, measured, and which one gave the lower held-out error
n_small, n_large = 32, 1024
err_small, err_large = measure_layer_error(n_small), measure_layer_error(n_large)
lower = n_small if err_small < err_large else n_large
