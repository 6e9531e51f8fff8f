"""Solutions of 05_yolov7_ptq (one section per exercise id; injected by ``course run --with-solutions``)."""

# %% [05.fold_bn]
# Exercise 05.fold_bn (implement): return (weight', bias') so that conv2d(x, weight', bias') == bn(conv(x))
def fold_bn(weight, bias, bn):
    """weight (out, in, kh, kw); bias (out,) or None; bn an eval-mode nn.BatchNorm2d (weight, bias, running_mean, running_var, eps)."""
    sigma = (bn.running_var + bn.eps).sqrt()
    scale = bn.weight.detach() / sigma
    b = torch.zeros_like(bn.running_mean) if bias is None else bias
    return weight * scale.view(-1, 1, 1, 1), bn.bias.detach() + (b - bn.running_mean) * scale

# %% [05.percentile_amax]
# Exercise 05.percentile_amax (implement): the amax pytorch-quantization's percentile calibration picks
def percentile_amax(counts, edges, percentile):
    """counts: np.ndarray (bins,); edges: np.ndarray (bins + 1,); percentile in percent, e.g. 99.99. Returns a float."""
    cdf = np.cumsum(counts / counts.sum())
    idx = int(np.searchsorted(cdf, percentile / 100))
    return float(edges[idx])

# %% [05.calib_batches]
# Exercise 05.calib_batches (explore): calibrate on fewer batches, score on the selection split
my_n_batches = 1
q_few = pq.calibrate(pq.quantize_model(fused, "max" if best == "max" else "histogram"), calib_batches[:my_n_batches],
                     best, percentile=percentile, stride=calib_stride)
my_map_few = coco_eval.evaluate(q_few, sel_imgs, coco_sel)["map"]

# %% [05.int8_weight_bytes]
# Exercise 05.int8_weight_bytes (predict): bytes of the weights and biases stored in the int8 Q/DQ ONNX file
my_int8_weight_bytes = 4 * fused.num_params()  # the Q/DQ file keeps float32 weights; the runtime quantizes them
