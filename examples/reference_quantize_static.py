#!/usr/bin/env python3
"""Reference static int8 (QDQ) quantization with onnxruntime, for benchmarks.

    python3 examples/reference_quantize_static.py IN.onnx OUT.onnx --calibration CALIB.npz \
        [--samples 128] [--method minmax|entropy|percentile] [--percentile 99.999] \
        [--per-channel] [--activation-type int8|uint8] [--symmetric] [--reduce-range] \
        [--batch 32]

Runs ``onnxruntime.quantization.quantize_static(IN, OUT, reader,
quant_format=QuantFormat.QDQ, weight_type=QuantType.QInt8, ...)`` on the first
``--samples`` rows of every array in CALIB.npz named like a model input, fed in
order, ``--batch`` rows at a time (the order and batches kompress uses), and
prints one JSON object:

  wall_seconds            time spent in quantize_static only (calibration included)
  peak_rss_bytes          ru_maxrss of this process after quantizing (KiB * 1024;
                          includes the python + onnxruntime import baseline and the
                          calibration rows, which are read before timing starts)
  baseline_peak_rss_bytes ru_maxrss just before quantize_static was called
  input_bytes / output_bytes / size_ratio (output / input)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import sys
import time


def _maxrss_bytes() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--calibration", required=True, help=".npz with one array per model input")
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--method", choices=["minmax", "entropy", "percentile"], default="minmax")
    ap.add_argument("--percentile", type=float, default=99.999)
    ap.add_argument("--per-channel", action="store_true")
    ap.add_argument("--activation-type", choices=["int8", "uint8"], default="int8")
    ap.add_argument("--symmetric", action="store_true", help="symmetric activations")
    ap.add_argument("--reduce-range", action="store_true", help="7-bit weights")
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()

    import numpy as np
    import onnx
    import onnxruntime
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    names = [i.name for i in onnx.load(args.input, load_external_data=False).graph.input]
    with np.load(args.calibration) as z:
        data = {n: np.ascontiguousarray(z[n][: args.samples]) for n in names}
    rows = len(next(iter(data.values())))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.at = 0

        def get_next(self):
            if self.at >= rows:
                return None
            b = {n: a[self.at : self.at + args.batch] for n, a in data.items()}
            self.at += args.batch
            return b

    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[args.method]
    extra = {"ActivationSymmetric": args.symmetric}
    if args.method == "percentile":
        extra["CalibPercentile"] = args.percentile
    act = QuantType.QUInt8 if args.activation_type == "uint8" else QuantType.QInt8

    baseline = _maxrss_bytes()
    t0 = time.perf_counter()
    # quantize_static prints progress on stdout; keep stdout for the JSON.
    with contextlib.redirect_stdout(sys.stderr):
        quantize_static(
            args.input,
            args.output,
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=args.per_channel,
            reduce_range=args.reduce_range,
            activation_type=act,
            weight_type=QuantType.QInt8,
            calibrate_method=method,
            calibration_providers=["CPUExecutionProvider"],
            extra_options=extra,
        )
    wall = time.perf_counter() - t0
    peak = _maxrss_bytes()
    in_b, out_b = os.path.getsize(args.input), os.path.getsize(args.output)
    print(json.dumps({
        "tool": "onnxruntime.quantization.quantize_static",
        "onnxruntime": onnxruntime.__version__,
        "format": "QDQ",
        "method": args.method,
        "samples": rows,
        "activation_type": args.activation_type,
        "symmetric_activations": args.symmetric,
        "per_channel": args.per_channel,
        "reduce_range": args.reduce_range,
        "wall_seconds": round(wall, 4),
        "peak_rss_bytes": peak,
        "baseline_peak_rss_bytes": baseline,
        "input_bytes": in_b,
        "output_bytes": out_b,
        "size_ratio": round(out_b / in_b, 4),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
