"""Notebook 05's teaching helpers: where a Q/DQ file keeps its scales; every timed run kept for comparisons."""

import numpy as np
import pytest

from conftest import require_extra

onnx = require_extra("onnx", "l5")

from course_lib.ptq import speed  # noqa: E402


def test_qdq_parameter_bytes_finds_scales_in_constant_nodes_and_initializers(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    scale = helper.make_node("Constant", [], ["s"], value=numpy_helper.from_array(np.array(0.1, np.float32)))
    q = helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"])
    dq = helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["y"])
    zp = numpy_helper.from_array(np.array(0, np.int8), "zp")
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")  # a weight: not a Q/DQ parameter
    g = helper.make_graph([scale, q, dq], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], initializer=[zp, w])
    path = tmp_path / "qdq.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    got = speed.qdq_parameter_bytes(path)
    assert got["Constant node"] == {"tensors": 1, "bytes": 4}
    assert got["initializer"] == {"tensors": 1, "bytes": 1}
    assert got["computed"] == {"tensors": 0, "bytes": 0}


def test_qdq_parameter_bytes_of_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises((FileNotFoundError, OSError)):
        speed.qdq_parameter_bytes(tmp_path / "absent.onnx")
