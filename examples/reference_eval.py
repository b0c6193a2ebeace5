#!/usr/bin/env python3
"""Reference accuracy + latency of an ONNX classifier with onnxruntime (CPU).

    python3 examples/reference_eval.py MODEL.onnx DATA.npz [--threads 1]
        [--warmup 10] [--runs 50]

DATA.npz holds ``input`` (float32 [N, F]) and ``labels`` (int64 [N]); the model
takes the first graph input and its first output is [N, classes] logits (or
probabilities).  Prints one JSON object:

  top1_accuracy       argmax(output) == labels, over all N samples (one batch)
  latency_ms.batch1   p50/p95/mean over --runs single-sample runs (sample 0)
  latency_ms.batchN   p50/p95/mean over --runs runs of the whole set as one batch
  (each after --warmup untimed runs; session with intra_op_num_threads=--threads,
  inter_op_num_threads=1, sequential execution, default graph optimizations)
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def _percentile_ms(samples_s, q):
    return round(float(np.percentile(np.asarray(samples_s) * 1e3, q)), 4)


def _bench(sess, feed_name, out_name, x, warmup, runs):
    feed = {feed_name: x}
    for _ in range(warmup):
        sess.run([out_name], feed)
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run([out_name], feed)
        ts.append(time.perf_counter() - t0)
    return {
        "batch": int(x.shape[0]),
        "p50": _percentile_ms(ts, 50),
        "p95": _percentile_ms(ts, 95),
        "mean": round(float(np.mean(ts) * 1e3), 4),
        "runs": runs,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--threads", type=int, default=1, help="intra_op_num_threads (default 1)")
    ap.add_argument("--warmup", type=int, default=10, help="untimed runs before timing (default 10)")
    ap.add_argument("--runs", type=int, default=50, help="timed runs (default 50)")
    args = ap.parse_args()

    import onnxruntime as ort

    with np.load(args.data) as d:
        x = np.ascontiguousarray(d["input"], dtype=np.float32)
        labels = np.asarray(d["labels"]).astype(np.int64)

    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    t0 = time.perf_counter()
    sess = ort.InferenceSession(args.model, so, providers=["CPUExecutionProvider"])
    load_s = time.perf_counter() - t0
    in_name = sess.get_inputs()[0].name
    out_name = sess.get_outputs()[0].name

    out = sess.run([out_name], {in_name: x})[0]
    pred = np.asarray(out).reshape(len(x), -1).argmax(axis=1)
    acc = float(np.mean(pred == labels))

    lat1 = _bench(sess, in_name, out_name, x[:1], args.warmup, args.runs)
    latn = _bench(sess, in_name, out_name, x, args.warmup, args.runs)

    print(json.dumps({
        "model": args.model,
        "data": args.data,
        "onnxruntime": ort.__version__,
        "threads": args.threads,
        "samples": int(len(x)),
        "correct": int(np.sum(pred == labels)),
        "top1_accuracy": acc,
        "session_load_seconds": round(load_s, 4),
        "latency_ms": {"batch1": lat1, "batchN": latn},
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
