#!/usr/bin/env python3
"""Run every model form (and a synthetic integer-GEMM probe) under the current CPU.

Usage: measure.py WORKDIR LABEL
Run it natively or under `qemu-x86_64 -cpu MODEL`. Writes
  WORKDIR/out/LABEL/<net>.<form>.npy        raw outputs (for cross-CPU comparisons)
  WORKDIR/out/LABEL/<net>.<form>.opt.onnx   ORT-optimized graph (SessionOptions.optimized_model_filepath)
  WORKDIR/out/LABEL/result.json             metrics, op lists, probe results, CPU features
Single-threaded (intra_op_num_threads=1); each data set runs as ONE batch, so dynamic
quantization sees the whole batch's activation range (scale depends on the batch).
"""
import json
import os
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

NETS = ("digits", "conv")
FORMS = ("fp32", "dyn_s8", "dyn_s8_rr", "dyn_u8", "qdq_s8s8", "qdq_u8s8", "qdq_u8s8_rr", "kz_pc7", "kz_pc8", "kz_pcu8")
INT_OPS = {"MatMulInteger", "QLinearMatMul", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
           "ConvInteger", "QLinearConv", "QGemm", "DynamicQuantizeLinear", "QuantizeLinear",
           "DequantizeLinear", "QLinearAdd", "QLinearGlobalAveragePool"}

SHORT = {"INT8": "s8", "UINT8": "u8", "FLOAT": "f32", "INT32": "i32"}


def cpu_features():
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as f
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__ as f
    keys = ("AVX", "AVX2", "FMA3", "AVX512F", "AVX512BW", "AVX512VNNI", "ASIMD", "ASIMDDP", "SVE")
    return {k: bool(f.get(k)) for k in keys}


def session(path, opt_path=None):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if opt_path:
        so.optimized_model_filepath = opt_path
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def op_summary(opt_path):
    """Op types in the optimized graph, plus the dtypes of initializer inputs of integer ops."""
    m = onnx.load(opt_path)
    inits = {i.name: TensorProto.DataType.Name(i.data_type) for i in m.graph.initializer}
    ops, detail = [], []
    for n in m.graph.node:
        ops.append(n.op_type)
        if n.op_type in INT_OPS - {"DequantizeLinear", "QuantizeLinear", "DynamicQuantizeLinear"}:
            types = ",".join(f"in{i}:{SHORT.get(inits[x], inits[x])}" for i, x in enumerate(n.input) if x in inits)
            detail.append(f"{n.op_type}({types})")
    counts = {}
    for o in ops:
        counts[o] = counts.get(o, 0) + 1
    return counts, detail


def probe():
    """MatMulInteger on random full-range bytes vs exact int32 and vs a model of
    vpmaddubsw (int16-saturating sums of adjacent-k product pairs, then exact int32)."""
    rng = np.random.default_rng(1)
    M, K, N = 16, 64, 32
    res = {}
    for name, at, bt in (("u8s8", np.uint8, np.int8), ("u8u8", np.uint8, np.uint8), ("s8s8", np.int8, np.int8)):
        lo = lambda t: np.iinfo(t).min
        hi = lambda t: np.iinfo(t).max
        a = rng.integers(lo(at), hi(at), size=(M, K), endpoint=True).astype(at)
        b = rng.integers(lo(bt), hi(bt), size=(K, N), endpoint=True).astype(bt)
        # one row / column of extreme values: guaranteed int16 overflow of a pair sum
        b[:, 0] = hi(bt) if bt is np.uint8 or at is np.uint8 else lo(bt)
        a[0, :] = hi(at) if at is np.uint8 else lo(at)
        exact = a.astype(np.int64) @ b.astype(np.int64)
        prod = a.astype(np.int64)[:, :, None] * b.astype(np.int64)[None, :, :]  # M,K,N
        pairs = prod[:, 0::2, :] + prod[:, 1::2, :]
        sat = np.clip(pairs, -32768, 32767).sum(axis=1)
        tt = {np.uint8: TensorProto.UINT8, np.int8: TensorProto.INT8}
        g = helper.make_graph(
            [helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "probe",
            [helper.make_tensor_value_info("A", tt[at], [M, K])],
            [helper.make_tensor_value_info("Y", TensorProto.INT32, [M, N])],
            [numpy_helper.from_array(b, "B")])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 9
        try:
            y = session(m.SerializeToString()).run(None, {"A": a})[0].astype(np.int64)
            res[name] = {
                "max_abs_vs_exact": int(np.abs(y - exact).max()),
                "n_cells_differ_from_exact": int((y != exact).sum()),
                "equals_pairwise_int16_saturation_model": bool((y == sat).all()),
                "sat_model_differs_from_exact_cells": int((sat != exact).sum()),
            }
        except Exception as e:  # noqa: BLE001
            res[name] = {"error": str(e)[:300]}
    # ConvInteger (what quantize_dynamic emits for Conv): u8 x, s8 / u8 w, 3x3, pad 1.
    C, O, H = 16, 8, 6
    for name, wt in (("conv_u8s8", np.int8), ("conv_u8u8", np.uint8)):
        x = rng.integers(0, 255, size=(1, C, H, H), endpoint=True).astype(np.uint8)
        w = rng.integers(np.iinfo(wt).min, np.iinfo(wt).max, size=(O, C, 3, 3), endpoint=True).astype(wt)
        x[0, :, :3, :3] = 255
        w[0] = np.iinfo(wt).max
        xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (1, 1), (1, 1)))
        exact = np.zeros((1, O, H, H), np.int64)
        for i in range(H):
            for j in range(H):
                exact[0, :, i, j] = np.tensordot(w.astype(np.int64), xp[0, :, i:i + 3, j:j + 3], axes=3)
        g = helper.make_graph(
            [helper.make_node("ConvInteger", ["X", "W"], ["Y"], pads=[1, 1, 1, 1], kernel_shape=[3, 3])], "probe",
            [helper.make_tensor_value_info("X", TensorProto.UINT8, [1, C, H, H])],
            [helper.make_tensor_value_info("Y", TensorProto.INT32, [1, O, H, H])],
            [numpy_helper.from_array(w, "W")])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 9
        try:
            y = session(m.SerializeToString()).run(None, {"X": x})[0].astype(np.int64)
            res[name] = {"max_abs_vs_exact": int(np.abs(y - exact).max()),
                         "n_cells_differ_from_exact": int((y != exact).sum()), "n_cells": int(y.size)}
        except Exception as e:  # noqa: BLE001
            res[name] = {"error": str(e)[:300]}
    return res


def main():
    ort.set_default_logger_severity(3)
    work, label = sys.argv[1], sys.argv[2]
    out = os.path.join(work, "out", label)
    os.makedirs(out, exist_ok=True)
    t0 = time.time()
    result = {"label": label, "ort": ort.__version__, "numpy_cpu_features": cpu_features(), "probe": probe(),
              "forms": {}}
    for net in NETS:
        d = np.load(os.path.join(work, net, "data.npz"))
        x, labels = d["input"], d["labels"]
        ref = None
        for form in FORMS:
            path = os.path.join(work, net, form + ".onnx")
            if not os.path.exists(path):
                continue
            key = f"{net}.{form}"
            opt = os.path.join(out, key + ".opt.onnx")
            try:
                s = session(path, opt)
                y = s.run(None, {"input": x})[0]
            except Exception as e:  # noqa: BLE001
                result["forms"][key] = {"error": str(e)[:300]}
                continue
            np.save(os.path.join(out, key + ".npy"), y)
            if form == "fp32":
                ref = y
            err = np.abs(y - ref)
            counts, detail = op_summary(opt)
            result["forms"][key] = {
                "max_abs_err_vs_fp32": float(err.max()),
                "mean_abs_err_vs_fp32": float(err.mean()),
                "argmax_agreement_vs_fp32": float((y.argmax(1) == ref.argmax(1)).mean()),
                "accuracy": float((y.argmax(1) == labels).mean()),
                "ops": counts,
                "int_kernels": detail,
            }
            print(f"{label:16s} {key:20s} max {err.max():.5f} mean {err.mean():.6f} "
                  f"agree {(y.argmax(1) == ref.argmax(1)).mean():.4f} acc {(y.argmax(1) == labels).mean():.4f}",
                  flush=True)
    result["seconds"] = round(time.time() - t0, 1)
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result["probe"]), result["numpy_cpu_features"], f"{result['seconds']}s")


if __name__ == "__main__":
    main()
