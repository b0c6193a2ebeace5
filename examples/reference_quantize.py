#!/usr/bin/env python3
"""Reference int8 dynamic quantization with onnxruntime, for benchmarks.

    python3 examples/reference_quantize.py IN.onnx OUT.onnx [--per-channel]

Runs ``onnxruntime.quantization.quantize_dynamic(IN, OUT,
weight_type=QuantType.QInt8, per_channel=...)`` and prints one JSON object:

  wall_seconds            time spent in quantize_dynamic only
  peak_rss_bytes          ru_maxrss of this process after quantizing (KiB * 1024;
                          includes the python + onnxruntime import baseline)
  baseline_peak_rss_bytes ru_maxrss just before quantize_dynamic was called
  input_bytes / output_bytes / size_ratio (output / input)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time


def _maxrss_bytes() -> int:
    # Linux reports ru_maxrss in KiB (macOS in bytes; we only support Linux here).
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", help="fp32 ONNX model")
    ap.add_argument("output", help="where to write the int8 model")
    ap.add_argument("--per-channel", action="store_true", help="per-channel weight scales")
    args = ap.parse_args()

    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    baseline = _maxrss_bytes()
    t0 = time.perf_counter()
    quantize_dynamic(args.input, args.output, weight_type=QuantType.QInt8, per_channel=args.per_channel)
    wall = time.perf_counter() - t0
    peak = _maxrss_bytes()

    in_b = os.path.getsize(args.input)
    out_b = os.path.getsize(args.output)
    print(json.dumps({
        "tool": "onnxruntime.quantization.quantize_dynamic",
        "onnxruntime": onnxruntime.__version__,
        "weight_type": "QInt8",
        "per_channel": args.per_channel,
        "input": args.input,
        "output": args.output,
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
