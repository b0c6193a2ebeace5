#!/usr/bin/env python3
"""Build the fp32 + int8 model forms compared in hack/avx2 (run natively, once).

Usage: make_models.py WORKDIR

Writes WORKDIR/<net>/<form>.onnx and WORKDIR/<net>/data.npz (input, labels) for
  net = digits  (examples/digits/model.onnx, eval.npz; labels from the data set)
  net = conv    (random-weight 4-layer conv net, seeded; labels = fp32 argmax)

Forms (onnxruntime.quantization 1.31.1 unless noted):
  fp32            the float model
  dyn_s8          quantize_dynamic QInt8 weights, per_channel=False, reduce_range=False (8-bit)
  dyn_s8_rr       same, reduce_range=True (7-bit weights)
  dyn_u8          quantize_dynamic QUInt8 weights (U8U8)
  qdq_s8s8        quantize_static QDQ, act QInt8,  weight QInt8, MinMax, 128 calib samples
  qdq_u8s8        quantize_static QDQ, act QUInt8, weight QInt8
  qdq_u8s8_rr     same, reduce_range=True
  kz_pc7          hand-built equivalent of kompress `mode: dynamic, perChannel: true`
                  (DynamicQuantizeLinear -> MatMulInteger(W_q int8 symmetric, zp 0, per-column
                  scale) -> Cast -> Mul), weights clipped to [-63, 63] (kompress default 7-bit)
  kz_pc8          same with [-127, 127] (kompress reduceRange: false)
  kz_pcu8         same grid as kz_pc8 stored as uint8 + 128 with zero point 128 (U8U8, per channel);
                  not a kompress form today, a candidate
"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                      QuantType, quantize_dynamic, quantize_static)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
N_CALIB = 128


class Reader(CalibrationDataReader):
    def __init__(self, name, x):
        self.it = iter([{name: x[i:i + 1]} for i in range(len(x))])

    def get_next(self):
        return next(self.it, None)


def kompress_like(src, dst, qmax, unsigned=False):
    """MatMul(x, W) with W an initializer -> DQL + MatMulInteger + Cast + Mul (per column)."""
    m = onnx.load(src)
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    new_nodes = []
    for n in g.node:
        if n.op_type != "MatMul" or n.input[1] not in inits:
            new_nodes.append(n)
            continue
        w = numpy_helper.to_array(inits[n.input[1]]).astype(np.float32)  # [K, N]
        amax = np.abs(w).max(axis=0)
        scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)  # per output column
        wq = np.clip(np.rint(w / scale), -qmax, qmax)
        # unsigned: same symmetric grid stored as uint8 with zero point 128 (U8U8 kernels)
        wq, zp = ((wq + 128).astype(np.uint8), np.full(w.shape[1], 128, np.uint8)) if unsigned else \
            (wq.astype(np.int8), np.zeros(w.shape[1], np.int8))
        b = n.input[1]
        g.initializer.remove(inits[b])
        g.initializer.extend([
            numpy_helper.from_array(wq, b + "_q"),
            numpy_helper.from_array(zp, b + "_zp"),
            numpy_helper.from_array(scale, b + "_scale"),
        ])
        x, y = n.input[0], n.output[0]
        new_nodes += [
            helper.make_node("DynamicQuantizeLinear", [x], [y + "_xq", y + "_xs", y + "_xzp"]),
            helper.make_node("MatMulInteger", [y + "_xq", b + "_q", y + "_xzp", b + "_zp"], [y + "_i32"]),
            helper.make_node("Cast", [y + "_i32"], [y + "_f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [y + "_xs", b + "_scale"], [y + "_s"]),
            helper.make_node("Mul", [y + "_f", y + "_s"], [y]),
        ]
    del g.node[:]
    g.node.extend(new_nodes)
    onnx.checker.check_model(m)
    onnx.save(m, dst)


def conv_net(path, seed=0):
    """Random 4-layer conv net: [N,3,16,16] -> 10 logits. He-init weights, small biases."""
    rng = np.random.default_rng(seed)
    shapes = [(16, 3, 3, 3), (32, 16, 3, 3), (32, 32, 3, 3), (10, 32, 3, 3)]
    strides = [1, 2, 1, 1]
    inits, nodes, x = [], [], "input"
    for i, (s, st) in enumerate(zip(shapes, strides)):
        fan_in = s[1] * s[2] * s[3]
        w = (rng.standard_normal(s) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        b = (rng.standard_normal(s[0]) * 0.05).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"conv{i}.weight"), numpy_helper.from_array(b, f"conv{i}.bias")]
        y = f"conv{i}"
        nodes.append(helper.make_node("Conv", [x, f"conv{i}.weight", f"conv{i}.bias"], [y],
                                      pads=[1, 1, 1, 1], strides=[st, st], kernel_shape=[3, 3]))
        if i < 3:
            nodes.append(helper.make_node("Relu", [y], [y + ".relu"]))
            x = y + ".relu"
        else:
            x = y
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"]),
              helper.make_node("Flatten", ["gap"], ["logits"], axis=1)]
    graph = helper.make_graph(
        nodes, "conv4", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="hack-avx2")
    m.ir_version = 9
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, path)
    x = rng.uniform(0.0, 1.0, size=(128, 3, 16, 16)).astype(np.float32)
    return x


def build(net_dir, fp32, x, labels, matmul_only):
    import onnxruntime as ort
    os.makedirs(net_dir, exist_ok=True)
    p = lambda f: os.path.join(net_dir, f + ".onnx")
    if os.path.abspath(fp32) != os.path.abspath(p("fp32")):
        onnx.save(onnx.load(fp32), p("fp32"))
    if labels is None:
        s = ort.InferenceSession(p("fp32"), providers=["CPUExecutionProvider"])
        labels = s.run(None, {"input": x})[0].argmax(1).astype(np.int64)
    np.savez(os.path.join(net_dir, "data.npz"), input=x, labels=labels)
    src = p("fp32")
    quantize_dynamic(src, p("dyn_s8"), weight_type=QuantType.QInt8, per_channel=False, reduce_range=False)
    quantize_dynamic(src, p("dyn_s8_rr"), weight_type=QuantType.QInt8, per_channel=False, reduce_range=True)
    quantize_dynamic(src, p("dyn_u8"), weight_type=QuantType.QUInt8, per_channel=False, reduce_range=False)
    calib = x[:N_CALIB]
    for form, act, rr in [("qdq_s8s8", QuantType.QInt8, False), ("qdq_u8s8", QuantType.QUInt8, False),
                          ("qdq_u8s8_rr", QuantType.QUInt8, True)]:
        quantize_static(src, p(form), Reader("input", calib), quant_format=QuantFormat.QDQ,
                        activation_type=act, weight_type=QuantType.QInt8, per_channel=False,
                        reduce_range=rr, calibrate_method=CalibrationMethod.MinMax)
    if matmul_only:
        kompress_like(src, p("kz_pc7"), 63)
        kompress_like(src, p("kz_pc8"), 127)
        kompress_like(src, p("kz_pcu8"), 127, unsigned=True)


def main():
    work = sys.argv[1]
    d = np.load(os.path.join(REPO, "examples", "digits", "eval.npz"))
    build(os.path.join(work, "digits"), os.path.join(REPO, "examples", "digits", "model.onnx"),
          d["input"].astype(np.float32), d["labels"].astype(np.int64), matmul_only=True)
    os.makedirs(os.path.join(work, "conv"), exist_ok=True)
    cp = os.path.join(work, "conv", "fp32.onnx")
    x = conv_net(cp)
    build(os.path.join(work, "conv"), cp, x, None, matmul_only=False)
    for net in ("digits", "conv"):
        print(net, sorted(f for f in os.listdir(os.path.join(work, net))))


if __name__ == "__main__":
    main()
