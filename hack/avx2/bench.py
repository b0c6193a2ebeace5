#!/usr/bin/env python3
"""Native-only speed check (qemu timings are meaningless): U8S8 vs U8U8 dynamic int8 on THIS CPU.

Usage: bench.py WORKDIR
Random 4-layer MLP 1024->1024 (fp32), batch 64, single thread; median of 30 runs after warm-up.
"""
import os
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_models import kompress_like  # noqa: E402


def main():
    work = os.path.join(sys.argv[1], "bench")
    os.makedirs(work, exist_ok=True)
    rng = np.random.default_rng(0)
    D, L, B = 1024, 4, 64
    nodes, inits, x = [], [], "input"
    for i in range(L):
        inits.append(numpy_helper.from_array((rng.standard_normal((D, D)) / np.sqrt(D)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Relu", [f"m{i}"], [f"r{i}"] if i < L - 1 else ["logits"]))
        x = f"r{i}"
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["b", D])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", D])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    p = lambda f: os.path.join(work, f + ".onnx")
    onnx.save(m, p("fp32"))
    quantize_dynamic(p("fp32"), p("dyn_s8"), weight_type=QuantType.QInt8)
    quantize_dynamic(p("fp32"), p("dyn_u8"), weight_type=QuantType.QUInt8)
    kompress_like(p("fp32"), p("kz_pc7"), 63)
    kompress_like(p("fp32"), p("kz_pcu8"), 127, unsigned=True)
    xin = rng.uniform(0, 1, (B, D)).astype(np.float32)
    ort.set_default_logger_severity(3)
    for f in ("fp32", "dyn_s8", "dyn_u8", "kz_pc7", "kz_pcu8"):
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        s = ort.InferenceSession(p(f), so, providers=["CPUExecutionProvider"])
        for _ in range(5):
            s.run(None, {"input": xin})
        ts = []
        for _ in range(30):
            t = time.perf_counter()
            s.run(None, {"input": xin})
            ts.append(time.perf_counter() - t)
        ts.sort()
        print(f"{f:8s} median {ts[15] * 1e3:7.3f} ms   min {ts[0] * 1e3:7.3f} ms")


if __name__ == "__main__":
    main()
