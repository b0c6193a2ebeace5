#!/usr/bin/env python3
"""Regenerate the bundled example model + data set in examples/digits/.

A small, REAL classifier for scikit-learn's bundled ``load_digits`` data set
(1,797 8x8 images, 10 classes, shipped inside scikit-learn: no download):

  * data: pixels / 16.0 -> float32 in [0, 1], stratified split with seed 0:
    1,257 train / 540 test
  * model: sklearn MLPClassifier(hidden_layer_sizes=(256, 256), relu, adam,
    random_state=0), its coefs_/intercepts_ copied into a hand-built ONNX graph
    (MatMul + Add + Relu, opset 17):  input float32 [batch, 64] ->
    64 -> 256 -> 256 -> 10 -> logits float32 [batch, 10]

Writes (into --out, default examples/digits/):
  model.onnx   the fp32 model (~330 KiB)
  eval.npz     uncompressed npz: input float32 [540, 64], labels int64 [540]
               (the held-out test split)
  calib.npz    uncompressed npz: input float32 [256, 64] (seeded subset of the
               training split, for static-quantization calibration)

Then re-loads model.onnx in onnxruntime, computes the test accuracy and checks
that it equals sklearn's ``predict`` accuracy (exit status 1 if not).

Usage:  python3 examples/make_digits.py [--out DIR]
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

HIDDEN = (256, 256)
MAX_ITER = 500
SEED = 0


def main() -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(here, "digits"), help="output directory")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    import sklearn
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    x_tr, y_tr, x_te, y_te = common.load_digits_split()

    t0 = time.perf_counter()
    clf = MLPClassifier(
        hidden_layer_sizes=HIDDEN,
        activation="relu",
        solver="adam",
        max_iter=MAX_ITER,
        random_state=SEED,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(x_tr, y_tr)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    train_s = time.perf_counter() - t0

    sk_pred = clf.predict(x_te)
    sk_acc = float(np.mean(sk_pred == y_te))
    train_acc = float(np.mean(clf.predict(x_tr) == y_tr))

    weights = [np.asarray(w, dtype=np.float32) for w in clf.coefs_]
    biases = [np.asarray(b, dtype=np.float32) for b in clf.intercepts_]
    arch = "->".join([str(weights[0].shape[0])] + [str(w.shape[1]) for w in weights])

    doc = (
        f"kompress example: MLP {arch} (ReLU) trained with scikit-learn {sklearn.__version__} "
        f"MLPClassifier(hidden_layer_sizes={HIDDEN}, activation='relu', solver='adam', "
        f"random_state={SEED}) on sklearn.datasets.load_digits (8x8 digits, 10 classes). "
        "Input 'input' float32 [batch,64] = pixel values / 16.0 (range 0..1), row-major 8x8. "
        "Output 'logits' float32 [batch,10] (argmax = digit; softmax = class probabilities). "
        f"Held-out stratified test split of {len(y_te)} samples (seed {common.SPLIT_SEED}): "
        f"sklearn accuracy {sk_acc:.4f}. Regenerate with: python3 examples/make_digits.py"
    )
    meta = {
        "source": "sklearn load_digits",
        "preprocessing": "pixels / 16.0 (float32, range 0..1)",
        "architecture": f"MLP {arch} relu",
        "trainer": f"scikit-learn {sklearn.__version__} MLPClassifier adam random_state={SEED}",
        "test_accuracy_sklearn": f"{sk_acc:.6f}",
        "labels": "0,1,2,3,4,5,6,7,8,9",
    }
    model = common.build_mlp_model(weights, biases, graph_name="digits_mlp", doc_string=doc, metadata=meta)

    model_path = os.path.join(args.out, "model.onnx")
    eval_path = os.path.join(args.out, "eval.npz")
    calib_path = os.path.join(args.out, "calib.npz")
    common.save_model(model, model_path)
    common.save_npz(eval_path, input=x_te, labels=y_te)
    calib = common.calib_subset(x_tr)
    common.save_npz(calib_path, input=calib)

    # Verify with onnxruntime on the model file as written.
    logits = common.ort_logits(model_path, x_te)
    ort_pred = logits.argmax(axis=1)
    ort_acc = float(np.mean(ort_pred == y_te))
    agree = float(np.mean(ort_pred == sk_pred))
    # sklearn's predict_proba is softmax(logits): compare log-probabilities too.
    lp = logits - logits.max(axis=1, keepdims=True)
    lp = lp - np.log(np.exp(lp).sum(axis=1, keepdims=True))
    sk_proba = clf.predict_proba(x_te)
    mask = sk_proba > 1e-6  # ignore underflowed probabilities
    max_logprob_diff = float(np.max(np.abs(lp[mask] - np.log(sk_proba[mask]))))

    report = {
        "model": os.path.relpath(model_path),
        "architecture": arch,
        "train_samples": int(len(y_tr)),
        "test_samples": int(len(y_te)),
        "calib_samples": int(len(calib)),
        "n_iter": int(clf.n_iter_),
        "converged": converged,
        "train_seconds": round(train_s, 2),
        "train_accuracy": train_acc,
        "test_accuracy_sklearn": sk_acc,
        "test_accuracy_onnxruntime": ort_acc,
        "prediction_agreement": agree,
        "max_abs_logprob_diff": max_logprob_diff,
        "bytes": {p: os.path.getsize(os.path.join(args.out, p)) for p in ("model.onnx", "eval.npz", "calib.npz")},
    }
    print(json.dumps(report, indent=2))
    if ort_acc != sk_acc or agree != 1.0:
        print("ERROR: onnxruntime accuracy/predictions differ from sklearn", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
