#!/usr/bin/env python3
"""Re-compute the digits dynamic int8 forms in numpy, with exact int32 accumulation and with a
model of AVX2 `vpmaddubsw` (u8*s8 products of adjacent k summed in int16 with saturation), and
compare both with what ORT produced natively (VNNI) and under qemu (AVX2, no VNNI).

Usage: simulate.py WORKDIR [AVX2_LABEL]      (after run.sh / measure.py)
"""
import os
import sys

import numpy as np
import onnx
from onnx import numpy_helper

FORMS = ("dyn_s8", "dyn_s8_rr", "kz_pc7", "kz_pc8")


def dql(x):
    """ONNX DynamicQuantizeLinear (uint8)."""
    lo, hi = min(0.0, float(x.min())), max(0.0, float(x.max()))
    s = np.float32((hi - lo) / 255.0)
    zp = np.clip(np.rint(-lo / s), 0, 255) if s > 0 else 0.0
    q = np.clip(np.rint(x / s) + zp, 0, 255)
    return q.astype(np.int64), s, int(zp)


def layers(path):
    m = onnx.load(path)
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    out = []
    for n in m.graph.node:
        if n.op_type != "MatMulInteger":
            continue
        wq = inits[n.input[1]].astype(np.int64)
        wzp = inits[n.input[3]].astype(np.int64) if len(n.input) > 3 and n.input[3] in inits else 0
        xs_name = n.input[0].replace("_quantized", "_scale")  # ORT naming
        ws = None
        for k in m.graph.node:
            if k.op_type == "Mul" and any(i in inits for i in k.input) and \
                    any(i in (xs_name, n.input[0].replace("_xq", "_xs")) for i in k.input):
                ws = [inits[i] for i in k.input if i in inits][0].astype(np.float32)
        assert ws is not None, n.name
        out.append((wq, wzp, ws))
    return out


def run(x, lys, biases, saturate):
    h = x
    for i, (wq, wzp, ws) in enumerate(lys):
        assert np.all(wzp == 0)
        q, s, zp = dql(h)
        if saturate:  # raw u8 * s8 products, adjacent-k pairs summed with int16 saturation
            prod = q[:, :, None] * wq[None, :, :]
            kk = prod.shape[1] // 2 * 2
            acc = np.clip(prod[:, 0:kk:2] + prod[:, 1:kk:2], -32768, 32767).sum(1)
            if kk < prod.shape[1]:
                acc += prod[:, kk:].sum(1)
        else:
            acc = q @ wq
        acc = acc - zp * wq.sum(0)[None, :]  # the zero-point correction is exact int32 math
        y = acc.astype(np.float32) * (np.float32(s) * ws) + biases[i]
        h = np.maximum(y, 0) if i < len(lys) - 1 else y
    return h


def main():
    work = sys.argv[1]
    avx2 = sys.argv[2] if len(sys.argv) > 2 else "qemu-Haswell"
    d = np.load(os.path.join(work, "digits", "data.npz"))
    x = d["input"].astype(np.float32)
    fp = onnx.load(os.path.join(work, "digits", "fp32.onnx"))
    fi = {i.name: numpy_helper.to_array(i) for i in fp.graph.initializer}
    biases = [fi[f"fc{i}.bias"] for i in range(3)]
    print(f"| form | sim exact vs native | sim exact vs {avx2} | sim saturating vs native | sim saturating vs {avx2} |")
    print("|---|---|---|---|---|")
    for f in FORMS:
        lys = layers(os.path.join(work, "digits", f + ".onnx"))
        ex = run(x, lys, biases, False)
        sa = run(x, lys, biases, True)
        nat = np.load(os.path.join(work, "out", "native", f"digits.{f}.npy"))
        emu = np.load(os.path.join(work, "out", avx2, f"digits.{f}.npy"))
        mx = lambda a, b: f"{np.abs(a - b).max():.3g}"
        print(f"| {f} | {mx(ex, nat)} | {mx(ex, emu)} | {mx(sa, nat)} | {mx(sa, emu)} |")


if __name__ == "__main__":
    main()
