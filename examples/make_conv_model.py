#!/usr/bin/env python3
"""Generate an 8-layer conv model (random He-normal weights) and data, for static
quantization benchmarks.

    python3 examples/make_conv_model.py [--out /tmp/kompress-conv8] [--rows 512]

input float32 [batch, 3, 32, 32] 'input' -> 8 x (Conv 3x3 + bias, ReLU) with
32, 32, 64, 64, 128, 128, 128, 128 channels (stride 2 at layers 3, 5, 7) ->
GlobalAveragePool -> Flatten -> Gemm (transB=1, bias) -> 'logits' [batch, 10],
opset 17. Weights are seeded random (numpy default_rng(0)): outputs are not
meaningful classes, so compare models by agreement with fp32, not accuracy.

Writes model.onnx, eval.npz ('input' [rows, 3, 32, 32], 'labels' = the fp32
model's argmax, so accuracy equals agreement with fp32) and calib.npz
('input' [rows, 3, 32, 32], other seeded rows).
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/kompress-conv8")
    ap.add_argument("--rows", type=int, default=512)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    x, cin = "input", 3
    for i, (cout, stride) in enumerate(
        [(32, 1), (32, 1), (64, 2), (64, 1), (128, 2), (128, 1), (128, 2), (128, 1)]
    ):
        w = (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2.0 / (cin * 9))).astype(np.float32)
        b = (rng.standard_normal(cout) * 0.05).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"conv{i}.weight"), numpy_helper.from_array(b, f"conv{i}.bias")]
        nodes.append(helper.make_node("Conv", [x, f"conv{i}.weight", f"conv{i}.bias"], [f"conv{i}"],
                                      name=f"conv{i}", pads=[1, 1, 1, 1], strides=[stride, stride]))
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"], name=f"relu{i}"))
        x, cin = f"relu{i}", cout
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool"], name="pool"))
    nodes.append(helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"))
    w = (rng.standard_normal((10, cin)) * np.sqrt(2.0 / cin)).astype(np.float32)
    inits += [numpy_helper.from_array(w, "fc.weight"), numpy_helper.from_array(np.zeros(10, np.float32), "fc.bias")]
    nodes.append(helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1))
    g = helper.make_graph(
        nodes, "conv8",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="kompress-examples")
    m.ir_version = 9
    onnx.checker.check_model(m)
    path = os.path.join(args.out, "model.onnx")
    onnx.save(m, path)

    import onnxruntime as ort

    ev = rng.standard_normal((args.rows, 3, 32, 32)).astype(np.float32)
    cal = rng.standard_normal((args.rows, 3, 32, 32)).astype(np.float32)
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    labels = np.concatenate([s.run(None, {"input": ev[i:i + 64]})[0].argmax(1) for i in range(0, len(ev), 64)])
    np.savez(os.path.join(args.out, "eval.npz"), input=ev, labels=labels.astype(np.int64))
    np.savez(os.path.join(args.out, "calib.npz"), input=cal)
    print(path, os.path.getsize(path), "bytes")


if __name__ == "__main__":
    main()
