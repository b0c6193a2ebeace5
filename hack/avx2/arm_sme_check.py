#!/usr/bin/env python3
"""Under qemu-aarch64: which emulated feature makes the s8-weight dynamic forms wrong?
Prints the HWCAPs qemu gives this process and max |output - native output| for a few digits forms.
Usage (see run_arm64.sh): arm_sme_check.py WORKDIR
"""
import struct
import sys

import numpy as np
import onnxruntime as ort

W = sys.argv[1]
d = open("/proc/self/auxv", "rb").read()
av = dict(struct.unpack("<QQ", d[i:i + 16]) for i in range(0, len(d), 16))
h, h2 = av.get(16, 0), av.get(26, 0)
print("hwcap: asimddp=%d sve=%d i8mm=%d sme=%d sme2=%d" % ((h >> 20) & 1, (h >> 22) & 1, (h2 >> 13) & 1,
                                                        (h2 >> 23) & 1, (h2 >> 37) & 1))
ort.set_default_logger_severity(3)
x = np.load(W + "/digits/data.npz")["input"]
so = ort.SessionOptions()
so.intra_op_num_threads = 1
for f in ("dyn_s8", "dyn_s8_rr", "dyn_u8", "kz_pc7", "kz_pc8", "kz_pcu8"):
    y = ort.InferenceSession(f"{W}/digits/{f}.onnx", so, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    print(f"  {f:10s} max|out - native out| {float(np.abs(y - np.load(f'{W}/out/native/digits.{f}.npy')).max()):.3g}")
