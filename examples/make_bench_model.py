#!/usr/bin/env python3
"""Generate the (larger, MatMul-heavy) benchmark model + eval set.

Default: an MLP 64 -> 1024 -> 1024 -> 1024 -> 1024 -> 10 (ReLU) trained for a
few epochs with scikit-learn's MLPClassifier (adam, random_state=0) on the same
``load_digits`` split as examples/make_digits.py (pixels / 16.0, stratified
540-sample test split, seed 0), exported by hand with onnx.helper exactly like
the digits model (MatMul + Add + Relu, opset 17, input float32 [batch,64]
'input', output float32 [batch,10] 'logits').  ~13 MB of fp32 weights: big
enough that int8 MatMuls beat fp32 on onnxruntime CPU.  Accuracy is real
(typically ~95%) but not the point.

Writes into --out (default examples/bench/, which is git-ignored):
  model.onnx    the fp32 model
  eval.npz      uncompressed npz: input float32 [540*tile, 64], labels int64
                (the digits test split, repeated --tile times)
  config.json   the parameters used; written last.  If it matches the request
                and the outputs exist, the script does nothing (use --force to
                regenerate).

Storage-throughput models: ``--random`` skips training and fills the weights
with seeded random values (He-normal, numpy default_rng(--seed)); the model's
doc_string and metadata say "RANDOM WEIGHTS" and its accuracy is chance-level.
E.g. ``--hidden 4096 --layers 4 --random --out /tmp/big`` gives a ~201 MB
model, ``--hidden 4096 --layers 3`` ~135 MB.  (--layers counts hidden layers.)

Examples:
  python3 examples/make_bench_model.py                       # examples/bench/
  python3 examples/make_bench_model.py --hidden 4096 --layers 4 --random --out /tmp/kompress-big
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _mlp_onnx as common  # noqa: E402

CONFIG_NAME = "config.json"
OUTPUTS = ("model.onnx", "eval.npz")


def _atomic_write(path, writer):
    tmp = path + ".tmp"
    writer(tmp)
    os.replace(tmp, path)


def main() -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(here, "bench"), help="output directory (default examples/bench)")
    ap.add_argument("--hidden", type=int, default=1024, help="hidden layer width (default 1024)")
    ap.add_argument("--layers", type=int, default=4, help="number of hidden layers (default 4)")
    ap.add_argument("--max-iter", type=int, default=6, help="sklearn training epochs (default 6)")
    ap.add_argument("--tile", type=int, default=1, help="repeat the 540-sample eval set N times (default 1)")
    ap.add_argument("--seed", type=int, default=0, help="training / random-weight seed (default 0)")
    ap.add_argument("--random", action="store_true",
                    help="no training: seeded random weights (storage-throughput benchmarks only)")
    ap.add_argument("--force", action="store_true", help="regenerate even if the outputs exist")
    args = ap.parse_args()
    if args.hidden < 1 or args.layers < 1 or args.tile < 1 or args.max_iter < 1:
        ap.error("--hidden, --layers, --tile and --max-iter must be >= 1")

    from importlib.metadata import version  # cheap: don't import sklearn just to skip

    config = {
        "generator": "examples/make_bench_model.py",
        "hidden": args.hidden,
        "layers": args.layers,
        "max_iter": None if args.random else args.max_iter,
        "tile": args.tile,
        "seed": args.seed,
        "random_weights": bool(args.random),
        "split_seed": common.SPLIT_SEED,
        "test_size": common.TEST_SIZE,
        "sklearn": version("scikit-learn"),
        "onnx": version("onnx"),
    }
    os.makedirs(args.out, exist_ok=True)
    cfg_path = os.path.join(args.out, CONFIG_NAME)
    if not args.force and all(os.path.exists(os.path.join(args.out, p)) for p in OUTPUTS):
        try:
            with open(cfg_path) as f:
                old = json.load(f)
        except (OSError, ValueError):
            old = None
        if old is not None and old.get("config") == config:
            print(json.dumps({"skipped": True, "reason": "outputs exist with the same config (use --force)",
                              **old}, indent=2))
            return 0

    import sklearn

    t_start = time.perf_counter()
    x_tr, y_tr, x_te, y_te = common.load_digits_split()
    n_in, n_cls = x_tr.shape[1], 10
    dims = [n_in] + [args.hidden] * args.layers + [n_cls]
    arch = "->".join(map(str, dims))

    train_s = None
    sk_acc = None
    if args.random:
        rng = np.random.default_rng(args.seed)
        weights, biases = [], []
        for i in range(len(dims) - 1):
            w = rng.standard_normal((dims[i], dims[i + 1]), dtype=np.float32)
            w *= np.float32(np.sqrt(2.0 / dims[i]))  # He-normal
            weights.append(w)
            biases.append((rng.standard_normal(dims[i + 1], dtype=np.float32) * np.float32(0.01)))
        doc = (
            f"kompress benchmark model, RANDOM WEIGHTS (not trained; seeded numpy default_rng({args.seed}), "
            f"He-normal): MLP {arch} (ReLU). For storage / quantization throughput benchmarks only; "
            "predictions are meaningless. Input 'input' float32 [batch,64], output 'logits' float32 [batch,10]. "
            "Regenerate with: python3 examples/make_bench_model.py "
            f"--hidden {args.hidden} --layers {args.layers} --random --seed {args.seed}"
        )
        meta = {
            "source": "random weights (no training data)",
            "weights": "RANDOM, seeded",
            "architecture": f"MLP {arch} relu",
        }
    else:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier

        t0 = time.perf_counter()
        clf = MLPClassifier(
            hidden_layer_sizes=(args.hidden,) * args.layers,
            activation="relu",
            solver="adam",
            max_iter=args.max_iter,
            random_state=args.seed,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # few epochs on purpose
            clf.fit(x_tr, y_tr)
        train_s = time.perf_counter() - t0
        sk_acc = float(np.mean(clf.predict(x_te) == y_te))
        weights = [np.asarray(w, dtype=np.float32) for w in clf.coefs_]
        biases = [np.asarray(b, dtype=np.float32) for b in clf.intercepts_]
        doc = (
            f"kompress benchmark model: MLP {arch} (ReLU) trained for {clf.n_iter_} epochs with scikit-learn "
            f"{sklearn.__version__} MLPClassifier(adam, random_state={args.seed}) on sklearn.datasets.load_digits. "
            "Input 'input' float32 [batch,64] = pixel values / 16.0; output 'logits' float32 [batch,10]. "
            f"Test accuracy (sklearn) {sk_acc:.4f}. Regenerate with: python3 examples/make_bench_model.py"
        )
        meta = {
            "source": "sklearn load_digits",
            "preprocessing": "pixels / 16.0 (float32, range 0..1)",
            "architecture": f"MLP {arch} relu",
            "trainer": f"scikit-learn {sklearn.__version__} MLPClassifier adam epochs={clf.n_iter_} "
                       f"random_state={args.seed}",
            "test_accuracy_sklearn": f"{sk_acc:.6f}",
        }

    meta["kompress_bench_config"] = json.dumps(config, sort_keys=True)
    model = common.build_mlp_model(weights, biases, graph_name="bench_mlp", doc_string=doc, metadata=meta)
    del weights, biases

    model_path = os.path.join(args.out, "model.onnx")
    eval_path = os.path.join(args.out, "eval.npz")
    if os.path.exists(cfg_path):
        os.remove(cfg_path)  # invalidate until everything is rewritten
    _atomic_write(model_path, lambda p: common.save_model(model, p))
    del model
    x_eval = np.ascontiguousarray(np.tile(x_te, (args.tile, 1)), dtype=np.float32)
    y_eval = np.ascontiguousarray(np.tile(y_te, args.tile), dtype=np.int64)
    _atomic_write(eval_path, lambda p: common.save_npz(p, input=x_eval, labels=y_eval))

    # Real check with onnxruntime on the written file (in batches of 540).
    logits = common.ort_logits(model_path, x_te, threads=os.cpu_count() or 1, batch=len(x_te))
    ort_acc = float(np.mean(logits.argmax(axis=1) == y_te))
    if sk_acc is not None and ort_acc != sk_acc:
        print(f"ERROR: onnxruntime accuracy {ort_acc} != sklearn {sk_acc}", file=sys.stderr)
        return 1

    result = {
        "config": config,
        "architecture": arch,
        "parameters": int(sum(dims[i] * dims[i + 1] + dims[i + 1] for i in range(len(dims) - 1))),
        "train_seconds": None if train_s is None else round(train_s, 2),
        "test_accuracy_sklearn": sk_acc,
        "test_accuracy_onnxruntime": ort_acc,
        "eval_samples": int(len(y_eval)),
        "bytes": {p: os.path.getsize(os.path.join(args.out, p)) for p in OUTPUTS},
        "total_seconds": round(time.perf_counter() - t_start, 2),
    }
    _atomic_write(cfg_path, lambda p: open(p, "w").write(json.dumps(result, indent=2) + "\n"))
    print(json.dumps({"skipped": False, **result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
