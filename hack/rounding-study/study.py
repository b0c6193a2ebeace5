#!/usr/bin/env python3
"""How much of PP-OCRv4 rec's line-exact score is rounding luck (docs/src/benchmarks.md).

  hack/rounding-study/run blank   the classifier's CTC blank column: scale jitter, 7-bit /
                                  pair-bounded / 8-bit (rest of the model float)
  hack/rounding-study/run conv    static int8 with ops: [Conv]: every Conv scale jittered,
                                  7-bit / pair-bounded (needs KOMPRESS_BIN)

Scores are against fp32 on the bench's 100 evaluation lines: `blank` counts a line when every
time step's argmax equals fp32's, `conv` when the greedy CTC decoding equals fp32's.
"""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

CACHE = Path(os.environ.get("KOMPRESS_CACHE", Path.home() / ".cache/kompress"))
MODEL = CACHE / "bench-models/ch_PP-OCRv4_rec_infer.onnx"
DATA = CACHE / "bench-data/ppocr-rec-v1"
CLASSIFIER = "linear_85.w_0"


def session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def lines():
    d = np.load(DATA / "eval.npz")
    return d[list(d.keys())[0]][:100]


def run(path, x, outputs=None):
    s = session(path)
    outs = [s.run(outputs, {s.get_inputs()[0].name: x[i:i + 10]}) for i in range(0, len(x), 10)]
    return [np.concatenate([o[k] for o in outs]) for k in range(len(outs[0]))]


def blank():
    x = lines()
    m = onnx.load(MODEL)
    mm = next(n for n in m.graph.node if n.op_type == "MatMul" and n.input[1] == CLASSIFIER)
    m.graph.output.append(onnx.helper.make_tensor_value_info(mm.input[0], onnx.TensorProto.FLOAT, None))
    w = next(numpy_helper.to_array(n.attribute[0].t) for n in m.graph.node
             if n.op_type == "Constant" and n.output[0] == CLASSIFIER)
    with tempfile.TemporaryDirectory() as tmp:
        onnx.save(m, f"{tmp}/feat.onnx")
        probs, feats = run(f"{tmp}/feat.onnx", x, [m.graph.output[0].name, mm.input[0]])
    ref = probs.argmax(-1)
    col = w[:, 0]
    amax = np.abs(col).max()
    same = np.sign(col[:-1]) == np.sign(col[1:])
    pair = max(amax, np.where(same, np.abs(col[:-1]) + np.abs(col[1:]), 0).max())
    # argmax(softmax(l + b)) = argmax(log p + (l' - l)): only the blank logit changes.
    logp = np.log(np.maximum(probs, 1e-30))
    for name, s0 in (("7-bit", amax / 63), ("pair-bounded", pair / 127), ("8-bit", amax / 127)):
        got = []
        for j in np.linspace(1.0, 1.06, 25):
            s = s0 * j
            shift = feats @ (np.clip(np.round(col / s), -127, 127) * s - col)
            pred = logp.copy()
            pred[..., 0] += shift
            pred = pred.argmax(-1)
            got.append(np.mean([(pred[i] == ref[i]).all() for i in range(len(x))]))
        print(f"blank column, {name}: lines over 25 scale jitters 1.00-1.06: "
              f"min {min(got):.2f} mean {np.mean(got):.3f} max {max(got):.2f}")


def ctc(a):
    out, prev = [], -1
    for t in a:
        if t != prev and t != 0:
            out.append(int(t))
        prev = t
    return out


def conv():
    kompress = os.environ.get("KOMPRESS_BIN", "target/release/kompress")
    x = lines()
    ref = [ctc(r) for r in run(MODEL, x)[0].argmax(-1)]
    fp = {i.name: numpy_helper.to_array(i) for i in onnx.load(MODEL).graph.initializer}
    with tempfile.TemporaryDirectory() as tmp:
        out = {}
        for tag, extra in (("seven", ", reduceRange: true"), ("eight", ", reduceRange: false")):
            job = Path(tmp) / f"{tag}.yaml"
            job.write_text("apiVersion: kompress.dev/v1alpha1\nkind: CompressionJob\nmetadata: {name: s}\n"
                           "spec:\n  model: {uri: x}\n  dataset: {uri: x}\n  passes:\n"
                           "    - quantize: {mode: static, ops: [Conv], calibration: {method: minMax, "
                           f"samples: 32}}{extra}}}\n  output: {{uri: {tmp}}}\n")
            out[tag] = Path(tmp) / f"{tag}.onnx"
            subprocess.run([kompress, "compress", MODEL, out[tag], "-f", job, "--calibration",
                            DATA / "calib.npz"], check=True, capture_output=True)
        base = onnx.load(out["seven"])
        eight = {i.name: numpy_helper.to_array(i) for i in onnx.load(out["eight"]).graph.initializer}
        names = [i.name[:-len("_quantized")] for i in base.graph.initializer if i.name.endswith("_quantized")]
        for n in names:  # BN-folded weights have no float original: their 8-bit values stand in
            if n not in fp and n + "_scale" in eight:
                q, s = eight[n + "_quantized"].astype(np.float32), eight[n + "_scale"]
                fp[n] = q * (s.reshape((-1,) + (1,) * (q.ndim - 1)) if s.ndim else s)
        for mode in ("7-bit", "pair-bounded"):
            got = []
            for jit in (1.0, 1.01, 1.02, 1.04):
                m = onnx.ModelProto()
                m.CopyFrom(base)
                inits = {i.name: i for i in m.graph.initializer}
                for n in names:
                    w = fp[n].astype(np.float32)
                    if w.ndim != 4 or w[0].size < 2:
                        continue
                    r = w.reshape(w.shape[0], -1)
                    amax = np.abs(r).max(1)
                    pos = -np.sort(-np.where(r > 0, r, 0), 1)
                    neg = -np.sort(-np.where(r < 0, -r, 0), 1)
                    pair = np.maximum(amax, np.maximum(pos[:, 0] + pos[:, 1], neg[:, 0] + neg[:, 1]))
                    s = amax / 63 if mode == "7-bit" else pair / 127
                    s = np.where(amax > 0, s * jit, 1.0).astype(np.float32)
                    q = np.clip(np.round(r / s[:, None]), -127, 127).astype(np.int8).reshape(w.shape)
                    inits[n + "_quantized"].CopyFrom(numpy_helper.from_array(q, n + "_quantized"))
                    inits[n + "_scale"].CopyFrom(numpy_helper.from_array(s, n + "_scale"))
                onnx.save(m, f"{tmp}/v.onnx")
                pred = run(f"{tmp}/v.onnx", x)[0].argmax(-1)
                got.append(np.mean([ctc(p) == r for p, r in zip(pred, ref)]))
            print(f"static Convs, {mode}: lines at scale x1.00/1.01/1.02/1.04: "
                  + " / ".join(f"{g:.2f}" for g in got))


if __name__ == "__main__":
    {"blank": blank, "conv": conv}[sys.argv[1] if len(sys.argv) > 1 else "blank"]()
