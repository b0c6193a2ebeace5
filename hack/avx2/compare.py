#!/usr/bin/env python3
"""Tabulate WORKDIR/out/*/result.json (from measure.py) as markdown; copy small artifacts.

Usage: compare.py WORKDIR [RESULTS_DIR]
Columns: errors vs the fp32 model run on the same (emulated) CPU, and the difference of the
same quantized model's output vs its native (VNNI host) output.
"""
import json
import os
import shutil
import sys

import numpy as np

ORDER = ["native", "qemu-Cascadelake-Server", "qemu-Haswell", "qemu-Skylake-Client", "qemu-Nehalem",
         "qemu-aarch64-cortex-a57", "qemu-aarch64-neoverse-n1", "qemu-aarch64-max"]


def main():
    work = sys.argv[1]
    dst = sys.argv[2] if len(sys.argv) > 2 else None
    outd = os.path.join(work, "out")
    labels = [l for l in ORDER if os.path.exists(os.path.join(outd, l, "result.json"))]
    labels += sorted(l for l in os.listdir(outd) if l not in labels and os.path.exists(os.path.join(outd, l, "result.json")))
    res = {l: json.load(open(os.path.join(outd, l, "result.json"))) for l in labels}
    print("## CPU as seen by the process (numpy cpu features), time, integer-GEMM probe\n")
    print("| CPU | AVX2 | AVX512F | AVX512VNNI | ASIMDDP | SVE | run s | probe u8s8: cells ≠ exact / = int16-pair-saturation model | probe u8u8 ≠ exact | probe s8s8 ≠ exact | probe ConvInteger u8s8 ≠ exact | probe ConvInteger u8u8 ≠ exact |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for l in labels:
        r = res[l]
        f = r["numpy_cpu_features"]
        p = r["probe"]
        u = p["u8s8"]
        print(f"| {l} | {int(f['AVX2'])} | {int(f['AVX512F'])} | {int(f['AVX512VNNI'])} | {int(f.get('ASIMDDP', 0))} | {int(f.get('SVE', 0))} | {r['seconds']} | "
              f"{u.get('n_cells_differ_from_exact')}/512, max Δ {u.get('max_abs_vs_exact')} / {u.get('equals_pairwise_int16_saturation_model')} | "
              f"{p['u8u8'].get('n_cells_differ_from_exact')} | {p['s8s8'].get('n_cells_differ_from_exact')} | "
              f"{p['conv_u8s8'].get('n_cells_differ_from_exact', p['conv_u8s8'].get('error'))}/{p['conv_u8s8'].get('n_cells')} | "
              f"{p['conv_u8u8'].get('n_cells_differ_from_exact', p['conv_u8u8'].get('error'))}/{p['conv_u8u8'].get('n_cells')} |")
    print()
    forms = list(res[labels[0]]["forms"].keys())
    for net in ("digits", "conv"):
        print(f"## {net}\n")
        print("| form | CPU | max abs err vs fp32 | mean abs err vs fp32 | argmax agree vs fp32 | accuracy | max abs Δ vs native (same form) | argmax ≠ native |")
        print("|---|---|---|---|---|---|---|---|")
        for key in forms:
            if not key.startswith(net + "."):
                continue
            nat = np.load(os.path.join(outd, "native", key + ".npy")) if "native" in labels else None
            for l in labels:
                v = res[l]["forms"].get(key)
                if v is None:
                    continue
                if "error" in v:
                    print(f"| {key.split('.', 1)[1]} | {l} | error: {v['error'][:80]} |||||||")
                    continue
                y = np.load(os.path.join(outd, l, key + ".npy"))
                dn = f"{np.abs(y - nat).max():.3g}" if nat is not None else "-"
                an = int((y.argmax(1) != nat.argmax(1)).sum()) if nat is not None else "-"
                print(f"| {key.split('.', 1)[1]} | {l} | {v['max_abs_err_vs_fp32']:.5f} | {v['mean_abs_err_vs_fp32']:.6f} | "
                      f"{v['argmax_agreement_vs_fp32']:.4f} | {v['accuracy']:.4f} | {dn} | {an} |")
        print()
    print("## Integer kernels in the ORT-optimized graphs (initializer input dtypes)\n")
    for key in forms:
        seen = {}
        for l in labels:
            v = res[l]["forms"].get(key, {})
            sig = (json.dumps(v.get("ops"), sort_keys=True), " ".join(sorted(set(v.get("int_kernels", [])))))
            seen.setdefault(sig, []).append(l)
        for (ops, kern), ls in seen.items():
            print(f"- `{key}` [{', '.join(ls)}]: ops {ops}; {kern or '(no integer kernel)'}")
    if dst:
        os.makedirs(dst, exist_ok=True)
        for l in labels:
            shutil.copy(os.path.join(outd, l, "result.json"), os.path.join(dst, f"{l}.json"))
            c = os.path.join(outd, l, "cpuid.txt")
            if os.path.exists(c):
                shutil.copy(c, os.path.join(dst, f"{l}.cpuid.txt"))


if __name__ == "__main__":
    main()
