"""agent/onnx_torch.py, operator by operator: a small graph with every operator it supports (the shape arithmetic
of an attention block, a strided convolution, QDQ quantization per tensor and per channel) against onnxruntime
running the same graph without optimizations, i.e. literally."""

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from agent.onnx_torch import OnnxGraph  # noqa: E402


def _model(tmp_path):
    rng = np.random.default_rng(0)
    C, T, D, H = 4, 10, 8, 2

    def init(name, a):
        return numpy_helper.from_array(np.asarray(a), name)

    wq = rng.integers(-127, 128, size=(D, C, 3)).astype(np.int8)  # conv weight, int8 per output channel
    inits = [
        init("in_scale", np.float32(0.05)), init("in_zp", np.uint8(128)),
        init("w_q", wq), init("w_scale", (rng.random(D) * 0.01 + 0.005).astype(np.float32)),
        init("w_zp", np.zeros(D, np.int8)), init("conv_b", rng.standard_normal(D).astype(np.float32)),
        init("ln_w", rng.standard_normal(D).astype(np.float32)), init("ln_b", rng.standard_normal(D).astype(np.float32)),
        init("gemm_w", rng.standard_normal((D, D)).astype(np.float32)), init("gemm_b", rng.standard_normal(D).astype(np.float32)),
        init("two", np.float32(2.0)), init("half", np.float32(0.5)),
        init("idx", np.array([0, 2, 1, 3], np.int64)), init("heads", np.array([H, D // H], np.int64)),
        init("s0", np.array([0], np.int64)), init("s2", np.array([2], np.int64)), init("ax", np.array([1], np.int64)),
        init("big", np.array([2 ** 63 - 1], np.int64)), init("red_axes", np.array([1], np.int64)),
        init("act_scale", np.float32(0.02)), init("act_zp", np.uint8(100)),
    ]
    N = helper.make_node
    nodes = [
        N("QuantizeLinear", ["x", "in_scale", "in_zp"], ["xq"]),
        N("DequantizeLinear", ["xq", "in_scale", "in_zp"], ["xd"]),
        N("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], axis=0),
        N("Conv", ["xd", "w", "conv_b"], ["c"], pads=[1, 1], strides=[2]),  # (B, D, T/2)
        N("Transpose", ["c"], ["ct"], perm=[0, 2, 1]),  # (B, T', D)
        N("LayerNormalization", ["ct", "ln_w", "ln_b"], ["ln"], axis=-1, epsilon=1e-5),
        N("MatMul", ["ln", "gemm_w"], ["mm"]),
        N("Add", ["mm", "gemm_b"], ["lin"]),
        N("Div", ["lin", "two"], ["d"]), N("Erf", ["d"], ["e"]), N("Mul", ["e", "half"], ["g"]),
        N("Tanh", ["g"], ["th"]), N("Sub", ["lin", "th"], ["sb"]),
        N("QuantizeLinear", ["sb", "act_scale", "act_zp"], ["sq"]),  # a per-tensor activation QDQ pair (fused)
        N("DequantizeLinear", ["sq", "act_scale", "act_zp"], ["sd"]),
        N("Shape", ["sd"], ["shp"]),  # (B, T', D) -> (B, T', H, D/H) by shape arithmetic, as an attention block
        N("Slice", ["shp", "s0", "s2"], ["bt"]),
        N("Concat", ["bt", "heads"], ["newshape"], axis=0),
        N("Reshape", ["sd", "newshape"], ["r4"]),
        N("Shape", ["r4"], ["shp4"]), N("Gather", ["shp4", "idx"], ["perm_shape"], axis=0),
        N("Slice", ["perm_shape", "s2", "big"], ["tail"]),
        N("Transpose", ["r4"], ["r4t"], perm=[0, 2, 1, 3]),  # (B, H, T', D/H)
        N("Softmax", ["r4t"], ["sm"], axis=2),
        N("ReduceSum", ["sm", "red_axes"], ["rs"], keepdims=0),  # (B, T', D/H)
        N("Gemm", ["rs_flat", "gemm_w_half", "gemm_b_half"], ["gm"], transB=1),
        N("Sigmoid", ["gm"], ["y"]),
    ]
    # Gemm wants 2-D: flatten rs to (B*T', D/H) with a constant shape
    nodes.insert(-2, N("Reshape", ["rs", "flat"], ["rs_flat"]))
    inits += [init("flat", np.array([-1, D // H], np.int64)),
              init("gemm_w_half", rng.standard_normal((3, D // H)).astype(np.float32)),
              init("gemm_b_half", rng.standard_normal(3).astype(np.float32))]
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", C, T])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3]),
                           helper.make_tensor_value_info("tail", TensorProto.INT64, [2])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    onnx.checker.check_model(m)
    path = tmp_path / "t.onnx"
    onnx.save(m, str(path))
    return path


def test_operators_match_onnxruntime_literally(tmp_path):
    path = _model(tmp_path)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    g = OnnxGraph(path, "cpu")
    fused = sum(1 for fn, *_ in g.plan if getattr(fn, "__name__", "") == "fq")
    assert fused == 2  # the input's and the activation's Q/DQ pairs; the weight's DequantizeLinear was folded
    x = np.random.default_rng(1).standard_normal((3, 4, 10)).astype(np.float32) * 3
    ref = sess.run(["y"], {"x": x})[0]
    ours = g(torch.from_numpy(x)).numpy()
    assert ours.shape == ref.shape == (3 * 5, 3)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_unsupported_operator_is_named_at_load(tmp_path):
    N = helper.make_node
    g = helper.make_graph([N("Relu", ["x"], ["h"]), N("Cos", ["h"], ["y"])], "t",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "u.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    with pytest.raises(NotImplementedError, match="Cos, Relu"):
        OnnxGraph(path, "cpu")
