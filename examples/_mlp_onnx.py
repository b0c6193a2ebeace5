"""Shared helpers for the kompress example scripts.

Builds a plain MLP as an ONNX graph by hand with ``onnx.helper`` (no skl2onnx):

    input  float32 [batch, 64]
    -> MatMul(W0 [in,out]) -> Add(b0) -> Relu -> ... -> MatMul(Wk) -> Add(bk)
    -> logits float32 [batch, n_classes]

and loads / splits scikit-learn's bundled ``load_digits`` data set
(1,797 8x8 greyscale images, pixel values 0..16, 10 classes; no download).
Preprocessing is done in the data set, not in the model: pixels / 16.0, so the
model input is float32 in [0, 1].
"""

from __future__ import annotations

import numpy as np

OPSET = 17
IR_VERSION = 9  # well within what onnxruntime 1.31 loads; opset 17 needs IR >= 8
PRODUCER = "kompress-examples"
PRODUCER_VERSION = "1"

SPLIT_SEED = 0
TEST_SIZE = 540
CALIB_SIZE = 256


def load_digits_split():
    """Return (x_train, y_train, x_test, y_test); x float32 in [0,1], y int64.

    Stratified split with a fixed seed: 1,257 train / 540 test.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    ds = load_digits()
    x = (ds.data.astype(np.float32) / np.float32(16.0)).astype(np.float32)
    y = ds.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=TEST_SIZE, stratify=y, random_state=SPLIT_SEED, shuffle=True
    )
    return (
        np.ascontiguousarray(x_tr, dtype=np.float32),
        np.ascontiguousarray(y_tr, dtype=np.int64),
        np.ascontiguousarray(x_te, dtype=np.float32),
        np.ascontiguousarray(y_te, dtype=np.int64),
    )


def calib_subset(x_train, n=CALIB_SIZE, seed=SPLIT_SEED):
    """A fixed, seeded subset of the training inputs for static-quant calibration."""
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.permutation(len(x_train))[:n])
    return np.ascontiguousarray(x_train[idx], dtype=np.float32)


def build_mlp_model(weights, biases, *, graph_name, doc_string, metadata):
    """Build an ONNX ModelProto for an MLP.

    weights: list of float32 arrays shaped [in, out] (sklearn's ``coefs_`` layout)
    biases:  list of float32 arrays shaped [out]     (sklearn's ``intercepts_``)
    ReLU between layers, none after the last one (output = logits).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    assert len(weights) == len(biases) and len(weights) >= 1
    n_in = int(weights[0].shape[0])
    n_out = int(weights[-1].shape[1])

    nodes = []
    inits = []
    cur = "input"
    n_layers = len(weights)
    for i, (w, b) in enumerate(zip(weights, biases)):
        w = np.ascontiguousarray(w, dtype=np.float32)
        b = np.ascontiguousarray(b, dtype=np.float32)
        assert w.ndim == 2 and b.shape == (w.shape[1],), (w.shape, b.shape)
        if i > 0:
            assert w.shape[0] == weights[i - 1].shape[1]
        wn, bn = f"fc{i}.weight", f"fc{i}.bias"
        inits.append(numpy_helper.from_array(w, wn))
        inits.append(numpy_helper.from_array(b, bn))
        mm = f"fc{i}.matmul"
        last = i == n_layers - 1
        add_out = "logits" if last else f"fc{i}.add"
        nodes.append(helper.make_node("MatMul", [cur, wn], [mm], name=f"fc{i}/MatMul"))
        nodes.append(helper.make_node("Add", [mm, bn], [add_out], name=f"fc{i}/Add"))
        if last:
            cur = add_out
        else:
            relu = f"fc{i}.relu"
            nodes.append(helper.make_node("Relu", [add_out], [relu], name=f"fc{i}/Relu"))
            cur = relu

    graph = helper.make_graph(
        nodes,
        graph_name,
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", n_in])],
        outputs=[helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n_out])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name=PRODUCER,
        producer_version=PRODUCER_VERSION,
        doc_string=doc_string,
    )
    model.ir_version = IR_VERSION
    model.model_version = 1
    helper.set_model_props(model, {str(k): str(v) for k, v in metadata.items()})
    onnx.checker.check_model(model, full_check=True)
    return model


def save_model(model, path):
    """Serialize deterministically and write to ``path``; returns byte count."""
    data = model.SerializeToString(deterministic=True)
    with open(path, "wb") as f:
        f.write(data)
    return len(data)


def save_npz(path, **arrays):
    """Uncompressed numpy .npz (np.savez, not savez_compressed)."""
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def ort_logits(model_path, x, threads=1, batch=None):
    """Run the model with onnxruntime on CPU, returns logits."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    if batch is None:
        return sess.run(["logits"], {"input": x})[0]
    outs = [sess.run(["logits"], {"input": x[i : i + batch]})[0] for i in range(0, len(x), batch)]
    return np.concatenate(outs, axis=0)
