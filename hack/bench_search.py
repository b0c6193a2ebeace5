#!/usr/bin/env python3
"""`make bench-search`: kompress's accuracy-driven search next to NNCF's accuracy control.

On the real pretrained models of `hack/bench --compare` (hack/bench_compare.py, hack/MODELS.md),
with the same accuracy budget, the same calibration and validation rows and the same thread
count, in the same run:

  NNCF          nncf.quantize_with_accuracy_control(model, calibration_dataset, validation_dataset,
                validation_fn, max_drop, drop_type=ABSOLUTE, subset_size=<calibration rows>)
                (ONNX backend, CPU: static int8 QDQ, then layers reverted to float, most
                harmful first, until the metric is within max_drop)
  kompress      `kompress run` of a CompressionJob with `passes: []` and
    static        search: {forms: [static], calibration: {method: minMax, samples: N}}
    all forms     search: {calibration: ...} (the default forms: int4, static, dynamic, weightOnly, fp16)

The metric, for both tools and for the table: embedding models, the mean cosine similarity of
the candidate's sentence embedding to the fp32 model's (fp32: 1.0; the budget is cosine >=
1 - max_drop, kompress's minCosineSimilarity); OCR, the same on the raw per-sample output;
classifiers, top-1 accuracy against the labels (budget: drop <= max_drop, kompress's
maxAccuracyDrop). Every output model is evaluated again here with the same code on the same rows.

NNCF's settings: model_type TRANSFORMER for the embedding models (its advice), without its
SmoothQuant step by default (--nncf-smooth-quant default turns it on): NNCF 3.4.0's ONNX
accuracy control restores a reverted layer's original weight but keeps the SmoothQuant Mul in
front of it, so each revert makes the model worse (MiniLM-L3: cosine 0.996 -> 0.21 with every
layer reverted). One ranking worker (each validation already uses --threads). Models with a Cast
of an initializer get it folded for both tools (NNCF's ONNX preprocessing fails on it).

Each tool runs as its own child process; wall time and peak RSS come from wait4() (the same
method for both; hack/bench_compare.py's Spawner). Models, data and the python venv (the bench
venv's pins plus nncf) are cached under ~/.cache/kompress (KOMPRESS_CACHE). A kompress build
without `spec.search` is shown as `n/a (not in this build)`; NNCF is still measured.

  python3 hack/bench_search.py [--quick] [--models a,b] [--threads N] [--max-drop D] [--no-build]
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "hack"))
sys.dont_write_bytecode = True  # no hack/__pycache__ in the tree
import bench_compare as bc  # noqa: E402

NNCF_VERSION = "3.4.0"
# The bench venv's pins, plus nncf and its direct dependencies (no torch: the ONNX backend needs
# none of the extras).
REQUIREMENTS = bc.REQUIREMENTS + [
    f"nncf=={NNCF_VERSION}", "networkx==3.6.1", "ninja==1.13.2", "openvino-telemetry==2025.2.0", "psutil==7.2.2",
    "pydot==4.0.1", "rich==15.0.0", "safetensors==0.8.0", "scikit-learn==1.9.1", "scipy==1.17.1", "tabulate==0.10.0"]
VENV = bc.CACHE / ("bench-search-venv-" + hashlib.sha256(" ".join(REQUIREMENTS).encode()).hexdigest()[:10])

QUICK_MODELS = ["digits", "minilm-l3"]
# ppocr-rec-init: PP-OCRv4 rec with its Constant-node weights in initializers (bench_compare's
# prepared form). NNCF's accuracy control on it takes tens of minutes on 2 cores (it re-ranks
# ~77 quantizers between reverts).
# Issue 20's five: two transformers, two CNNs (a classifier, a text recognizer), a detector.
FULL_MODELS = ["minilm-l3", "minilm-l6", "ppocr-rec-init", "open-nsfw", "yolov8n"]
# (tool, form label, kompress search forms, None for NNCF, or a fixed kompress recipe). Every
# kompress row runs under the same gate; the fixed recipes are what a user would write by
# hand, each form once, so the table shows whether the search beats the best of them.
STATIC_FIXED = "    - quantize: {mode: static, calibration: {method: minMax, samples: N_CALIB}}\n"
TOOLS = [
    ("NNCF", "static (AC)", None),
    ("kompress", "static", ["static"]),
    ("kompress", "all forms", []),
    ("kompress", "fixed int4", "    - quantize: {mode: weightOnly, weights: int4}\n"),
    ("kompress", "fixed static", STATIC_FIXED),
    ("kompress", "fixed dynamic", "    - quantize: {mode: dynamic}\n"),
    ("kompress", "fixed wOnly", "    - quantize: {mode: weightOnly}\n"),
    ("kompress", "fixed fp16", "    - fp16: {}\n"),
]
LAYER_OPS = ("MatMul", "Gemm", "Conv", "Gather")
SEARCH_REJECTED = re.compile(r"unknown field `search`|unknown field `forms`|not available in this build")


def ensure_venv() -> Path:
    """bench_compare's cached venv recipe with this script's requirements."""
    bc.REQUIREMENTS, bc.VENV = REQUIREMENTS, VENV
    return bc.ensure_venv()


# ---------------------------------------------------------------- the metric (both tools, and the table)

# NNCF's budget where the task gate is not a cosine (bench_compare.GATES): open_nsfw's
# minAgreement 0.95, YOLOv8n's minDetectionF1 0.9, as drops from fp32's 1.0.
KIND_MAX_DROP = {"probs": 0.05, "yolo": 0.10}


def budget(spec: dict, max_drop: float) -> dict:
    if spec["kind"] == "probs":
        return {"metric": "top-1 agreement with fp32", "max_drop": KIND_MAX_DROP["probs"]}
    if spec["kind"] == "yolo":
        return {"metric": "per-image detection F1 vs fp32", "max_drop": KIND_MAX_DROP["yolo"]}
    if spec["kind"] == "classifier":
        return {"metric": "top-1 accuracy", "max_drop": max_drop, "thresholds": {"maxAccuracyDrop": max_drop}}
    return {"metric": "mean cosine to fp32", "max_drop": max_drop,
            "thresholds": {"minCosineSimilarity": round(1.0 - max_drop, 6)}}


def per_row(spec: dict, sess, feed: dict, ref, labels):
    """The metric of each row: cosine to fp32 (embeddings as bench_compare pools them; OCR on
    the raw output), or 1/0 for a correct top-1 class."""
    import numpy as np
    if spec["kind"] == "embed":
        return (bc.outputs(sess, spec, feed) * ref).sum(1)
    if spec["kind"] == "ocr":
        return cosine_rows(raw_outputs(sess, spec, feed), ref)
    if spec["kind"] == "probs":
        return (bc.outputs(sess, spec, feed).argmax(1) == ref.argmax(1)).astype(np.float64)
    if spec["kind"] == "yolo":
        return detection_f1_rows(ref, bc.outputs(sess, spec, feed))
    return (bc.outputs(sess, spec, feed).argmax(1) == labels).astype(np.float64)


def detection_f1_rows(ref, y):
    """Per image, F1 of the candidate's detections (score > 0.25, matched by anchor and class,
    as bench_compare's det F1) against fp32's; 1.0 where neither detects anything."""
    import numpy as np
    a, b = ref[:, 4:] > 0.25, y[:, 4:] > 0.25
    tp = (a & b).sum((1, 2)).astype(np.float64)
    wrong = (a ^ b).sum((1, 2)).astype(np.float64)
    den = 2 * tp + wrong
    return np.where(den > 0, 2 * tp / np.maximum(den, 1.0), 1.0)


def reference(spec: dict, sess, feed: dict):
    """What per_row compares against: fp32's pooled embeddings or raw outputs (None for labels)."""
    if spec["kind"] == "embed":
        return bc.outputs(sess, spec, feed)
    if spec["kind"] == "ocr":
        return raw_outputs(sess, spec, feed)
    if spec["kind"] in ("probs", "yolo"):
        return bc.outputs(sess, spec, feed)
    return None


def raw_outputs(sess, spec: dict, feed: dict, chunk: int = 16):
    import numpy as np
    n = len(next(iter(feed.values())))
    y = np.concatenate([sess.run([spec["output"]], {k: v[i:i + chunk] for k, v in feed.items()})[0]
                        for i in range(0, n, chunk)])
    return y.reshape(len(y), -1).astype(np.float64)


def cosine_rows(a, b):
    import numpy as np
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(na * nb, 1e-30)


def session_from_bytes(data: bytes, threads: int):
    """bench_compare.session's options, for a model held in memory (what NNCF hands over)."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------- the model both tools get

def model_for_both(key: str) -> tuple[Path, str]:
    """bench_compare's model file, with each Cast of an initializer folded into an initializer
    (same numerics): NNCF 3.4.0's ONNX preprocessing (eliminate_nop_cast) fails with
    `AttributeError: type` on a Cast whose input is an initializer, as in ppocr-rec-init."""
    src = bc.model_path(key)
    import numpy as np
    import onnx
    from onnx import numpy_helper
    m = onnx.load(str(src), load_external_data=False)
    inits = {t.name: t for t in m.graph.initializer}
    casts = [n for n in m.graph.node if n.op_type == "Cast" and n.input[0] in inits]
    if not casts:
        return src, ""
    out = bc.MODELS_DIR / f"{src.stem}.castfold.onnx"
    if not out.exists():
        m = onnx.load(str(src))
        inits = {t.name: t for t in m.graph.initializer}
        for n in casts:
            to = next(a.i for a in n.attribute if a.name == "to")
            arr = numpy_helper.to_array(inits[n.input[0]]).astype(onnx.helper.tensor_dtype_to_np_dtype(to))
            m.graph.initializer.append(numpy_helper.from_array(np.asarray(arr), n.output[0]))
        names = {n.name for n in casts}
        keep = [n for n in m.graph.node if not (n.op_type == "Cast" and n.name in names)]
        del m.graph.node[:]
        m.graph.node.extend(keep)
        onnx.checker.check_model(m)
        onnx.save(m, str(out) + ".part")
        os.rename(str(out) + ".part", out)
    return out, f"{len(casts)} Casts of initializers folded into initializers (NNCF's ONNX preprocessing fails on them)"


# ---------------------------------------------------------------- layers left in float

def weight_inputs(node) -> list[str]:
    if node.op_type == "Gather":
        return list(node.input[:1])
    if node.op_type in ("Gemm", "Conv"):
        return list(node.input[1:2])
    return list(node.input[:2])  # MatMul: either side may be the constant


def layer_census(path: Path) -> dict:
    """MatMul/Gemm/Conv/Gather nodes whose weight is still a float32 constant (an initializer
    or a Constant node, not behind DequantizeLinear or a Cast from float16)."""
    import onnx
    m = onnx.load(str(path), load_external_data=False)
    g = m.graph
    # A Gather of a [V] or [V, 1] float table is a per-row scale lookup (kompress's int8
    # embedding form), not a weight layer.
    def weighty(dims) -> bool:
        return len(dims) >= 2 and not (len(dims) == 2 and dims[1] == 1)
    consts = {t.name: t.data_type for t in g.initializer if weighty(t.dims)}
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value" \
                and weighty(n.attribute[0].t.dims):
            consts[n.output[0]] = n.attribute[0].t.data_type
    floaty = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE)
    float_layers = [n.name or n.output[0] for n in g.node
                    if n.op_type in LAYER_OPS and any(consts.get(i) in floaty for i in weight_inputs(n))]
    return {"float_layers": float_layers, "quant_ops": bc.op_summary(path)}


# ---------------------------------------------------------------- NNCF, in its own process

def run_nncf(model: Path, out: Path, key: str, calib: Path, evald: Path, n_eval: int, n_cal: int,
             max_drop: float, threads: int, env, model_type: str, smooth_quant: str) -> dict:
    cmd = [sys.executable, Path(__file__), "--nncf", model, out, "--model-key", key, "--calib", calib, "--eval", evald,
           "--n-eval", str(n_eval), "--subset", str(n_cal), "--max-drop", str(max_drop), "--threads", str(threads),
           "--model-type", model_type, "--smooth-quant", smooth_quant]
    rc, wall, rss, so, se = bc.measure_child(cmd, env)
    res = {"cmd": " ".join(map(str, cmd)), "seconds": wall, "peak_rss": rss, "stderr": se[-3000:]}
    lines = so.strip().splitlines()
    res["log"] = [l.strip() for l in lines if re.search(
        r"Metric of|Accuracy drop|quantized operations|Reverted|reverted back|Algorithm completed|could not achieve", l)]
    if rc != 0:
        res["status"] = f"failed: {bc.short_error(se or so)}"
        return res
    res["status"] = "ok"
    res["bytes"] = out.stat().st_size
    try:
        res["child"] = json.loads(lines[-1])
    except (ValueError, IndexError):
        pass
    return res


def nncf_main(argv: list[str]) -> int:
    import resource
    ap = argparse.ArgumentParser(prog="bench_search.py --nncf")
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--model-key", required=True)
    ap.add_argument("--calib", required=True)
    ap.add_argument("--eval", required=True)
    ap.add_argument("--n-eval", type=int, required=True)
    ap.add_argument("--subset", type=int, required=True)
    ap.add_argument("--max-drop", type=float, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model-type", choices=["auto", "transformer", "none"], default="auto")
    ap.add_argument("--smooth-quant", choices=["default", "off"], default="default")
    a = ap.parse_args(argv)
    spec = bc.MODELS[a.model_key]
    import numpy as np
    import onnx
    import onnxruntime  # noqa: F401 - in the import baseline
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    model = onnx.load(a.model)
    with np.load(a.calib) as z:
        calib = {k: z[k] for k in z.files if k != "labels"}
    n_cal = len(next(iter(calib.values())))
    calib_items = [{k: v[i:i + 1] for k, v in calib.items()} for i in range(n_cal)]
    feed = bc.load_inputs(spec, Path(a.eval), a.n_eval)
    labels = None
    if spec["kind"] == "classifier":
        with np.load(a.eval) as z:
            labels = z["labels"][:a.n_eval]
    # The fp32 reference the cosine metric needs (part of the measured time, as in kompress).
    fp32_bytes = model.SerializeToString()
    ref = reference(spec, session_from_bytes(fp32_bytes, a.threads), feed)
    del fp32_bytes
    t_ref = time.perf_counter() - t0
    calls = {"n": 0, "rows": 0}

    def validation_fn(m, items):
        """NNCF hands over an onnx.ModelProto and the validation items (row indices here);
        the metric of the model, and each row's (metric mode)."""
        idx = np.array(list(items), dtype=np.int64)
        calls["n"] += 1
        calls["rows"] += len(idx)
        sess = session_from_bytes(m.SerializeToString(), a.threads)
        sub = {k: v[idx] for k, v in feed.items()}
        rows = per_row(spec, sess, sub, None if ref is None else ref[idx], None if labels is None else labels[idx])
        return float(rows.mean()), [float(x) for x in rows]

    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters
    kwargs = {}
    if a.model_type == "transformer" or (a.model_type == "auto" and spec["kind"] == "embed"):
        kwargs["model_type"] = nncf.ModelType.TRANSFORMER  # NNCF's advice for transformers
    if a.smooth_quant == "off":  # SmoothQuant runs only with model_type TRANSFORMER (MatMul alpha 0.95)
        kwargs["advanced_quantization_parameters"] = AdvancedQuantizationParameters(
            smooth_quant_alphas=AdvancedSmoothQuantParameters(convolution=-1, matmul=-1))
    result = nncf.quantize_with_accuracy_control(
        model,
        calibration_dataset=nncf.Dataset(calib_items),
        validation_dataset=nncf.Dataset(list(range(len(next(iter(feed.values()))))),
                                        lambda i: {k: v[i:i + 1] for k, v in feed.items()}),
        validation_fn=validation_fn,
        max_drop=a.max_drop,
        drop_type=nncf.DropType.ABSOLUTE,
        subset_size=a.subset,
        # One ranking worker: each validation already runs ORT with --threads threads.
        advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(num_ranking_workers=1),
        **kwargs,
    )
    onnx.save(result, a.out)
    wall = time.perf_counter() - t0
    print(json.dumps({"nncf": nncf.__version__, "tool_seconds": round(wall, 4), "reference_seconds": round(t_ref, 4),
                      "import_peak_rss": baseline, "validation_calls": calls["n"], "validation_rows": calls["rows"],
                      "calibration_items": n_cal, "subset_size": a.subset,
                      "model_type": "TRANSFORMER" if "model_type" in kwargs else None,
                      "smooth_quant": a.smooth_quant}))
    return 0


# ---------------------------------------------------------------- kompress

def search_job(path: Path, key: str, spec: dict, model: Path, evald: Path, calib: Path, n_cal: int, forms,
               thresholds: dict, threads: int) -> None:
    """A search job (forms: a list, [] for the default forms), or a fixed recipe (forms: the
    `passes:` lines) under the same gate."""
    fixed = isinstance(forms, str)
    forms_line = f"    forms: [{', '.join(forms)}]\n" if forms and not fixed else ""
    labels = "    labels: labels\n" if spec["kind"] == "classifier" else ""
    thr = "".join(f"    {k}: {v}\n" for k, v in thresholds.items())
    path.write_text(
        "apiVersion: kompress.dev/v1alpha1\nkind: CompressionJob\n"
        f"metadata: {{name: bench-search-{key}}}\n"
        "spec:\n"
        f"  model: {{uri: {model}}}\n"
        f"  dataset:\n    uri: {evald}\n{labels}"
        # A fixed recipe without a static pass may not name calibration data (spec check).
        + ("" if fixed and "static" not in forms else f"  calibration: {{dataset: {{uri: {calib}}}}}\n")
        + (f"  passes:\n{forms}" if fixed else
           "  passes: []\n"
           f"  search:\n{forms_line}    calibration: {{method: minMax, samples: {n_cal}}}\n")
        +
        f"  thresholds:\n{thr}"
        f"  evaluation: {{output: '{spec['output']}', threads: {threads}}}\n"
        f"  output: {{uri: {path.parent / path.stem}}}\n")


def task_job(path: Path, gate_yaml: str, calib: Path, n_cal: int, forms) -> None:
    """The model's task gate (bench_compare.gate_job: its dataset, labels, task metrics and
    thresholds, the job `kompress evaluate` scores every output with) around a search (forms:
    a list, [] for the default forms) or a fixed recipe (the `passes:` lines): one gate for
    every kompress row and for the final scoring of every tool's output."""
    fixed = isinstance(forms, str)
    if fixed:
        recipe = forms.replace("N_CALIB", str(n_cal))
        head = f"  calibration: {{dataset: {{uri: {calib}}}}}\n" if "static" in recipe else ""
        body = head + f"  passes:\n{recipe}"
    else:
        forms_line = f"    forms: [{', '.join(forms)}]\n" if forms else ""
        body = (f"  calibration: {{dataset: {{uri: {calib}}}}}\n  passes: []\n"
                f"  search:\n{forms_line}    calibration: {{method: minMax, samples: {n_cal}}}\n")
    text = gate_yaml.replace("  passes:\n    - quantize: {mode: dynamic}\n", body, 1)
    # The gate's few latency iterations are for scoring; a search measures latency itself.
    text = text.replace("    latency: {warmup: 1, iterations: 5}\n", "", 1)
    text = re.sub(r"  output: \{uri: [^}]*\}", f"  output: {{uri: {path.parent / path.stem}}}", text)
    assert body in text, "bench_compare.gate_job's passes line changed"
    path.write_text(text)


def run_kompress_search(job: Path, env) -> dict:
    if not bc.KOMPRESS.exists():
        return {"status": "n/a (no kompress binary; cargo build --release)", "seconds": 0.0, "peak_rss": 0}
    cmd = [bc.KOMPRESS, "run", "-f", job, "-o", "json"]
    rc, wall, rss, so, se = bc.measure_child(cmd, env)
    res = {"cmd": " ".join(map(str, cmd)), "job": job.read_text(), "seconds": wall, "peak_rss": rss,
           "stderr": se[-3000:]}
    report = None
    try:
        report = json.loads(so[so.index("{"):]) if "{" in so else None
    except ValueError:
        pass
    if report is None:
        if rc != 0 and (SEARCH_REJECTED.search(se) or any(s in se for s in bc.NOT_IN_BUILD)):
            res["status"] = "n/a (not in this build)"
        else:
            res["status"] = f"failed: {bc.short_error(se)}" if rc != 0 else "failed: no report on stdout"
        return res
    result = report.get("result", {})
    search = report.get("search") or {}
    trials = search.get("trials", [])
    pick = search.get("chosen", search.get("closest"))
    trial = next((t for t in trials if t.get("index") == pick), None)
    art = (result.get("artifact") or {}).get("uri", "")
    path = Path(art.removeprefix("file://")) if art else None
    res.update({
        "verdict": result.get("verdict"), "ratio": result.get("ratio"), "kompress_metrics": result.get("candidate"),
        "baseline_metrics": result.get("baseline"), "accuracy_drop": result.get("accuracyDrop"),
        "search": {k: search.get(k) for k in ("forms", "chosen", "closest", "stoppedBy", "seconds", "budget",
                                               "notes")},
        "precisions": {p: sum(1 for l in search.get("layers", []) if l.get("precision") == p)
                       for p in ("int4", "int8", "fp16", "fp32")},
        "trials": [{k: t.get(k) for k in ("index", "form", "kind", "ratio", "accuracyDrop", "agreement",
                                          "cosineSimilarity", "passed", "note", "seconds")}
                   | {"float_layers": len(t.get("floatLayers", []))} for t in trials],
        "chosen_trial": trial, "artifact": art,
    })
    if path is None or not path.exists():
        res["status"] = f"no candidate file ({art or 'no artifact in the report'})"
        return res
    res["status"] = "ok"
    res["path"] = str(path)
    res["bytes"] = path.stat().st_size
    return res


# ---------------------------------------------------------------- the comparison

def compare(args) -> None:
    bc.SPAWNER = bc.Spawner()  # first, while this process is still small
    import numpy as np
    import onnx
    import onnxruntime as ort
    models = args.models.split(",") if args.models else (QUICK_MODELS if args.quick else FULL_MODELS)
    for m in models:
        if m not in bc.MODELS:
            sys.exit(f"unknown model {m}; known: {', '.join(bc.MODELS)}")
    env = dict(os.environ)
    try:
        env["ORT_DYLIB_PATH"] = subprocess.run([ROOT / "hack/ort-lib"], check=True, capture_output=True,
                                               text=True).stdout.strip()
    except subprocess.CalledProcessError as e:
        print(f"hack/ort-lib failed ({e.stderr.strip()[-200:]}); kompress may not start", file=sys.stderr)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(args.threads)
    env["NNCF_CI"] = "1"  # NNCF's telemetry off (a stub; no network here anyway)
    import nncf
    git = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    cpu = bc.cpu_info()
    started = datetime.datetime.now(datetime.timezone.utc)
    header = {"date": started.strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu, "threads": args.threads,
              "onnxruntime": ort.__version__, "onnx": onnx.__version__, "nncf": nncf.__version__, "kompress": git,
              "quick": args.quick, "max_drop": args.max_drop}
    flags = " ".join(f"{f}={'yes' if v else 'no'}" for f, v in cpu["flags"].items())
    print(f"# kompress search vs NNCF accuracy control  {header['date']}  kompress {git}  nncf {nncf.__version__}  "
          f"onnxruntime {ort.__version__}")
    print(f"# CPU: {cpu['model']} ({cpu['logical_cpus']} logical CPUs) {flags}")
    print(f"# threads: {args.threads} (ORT intra-op in every session; OMP/BLAS threads of the NNCF child); "
          f"max drop {args.max_drop} absolute", flush=True)
    tmp_root = Path(tempfile.mkdtemp(prefix="kompress-search-"))
    rows = []
    try:
        for key in models:
            spec = bc.MODELS[key]
            n_eval, n_cal = spec["quick"] if args.quick else (spec["n_eval"], spec["n_calib"])
            if args.samples:
                n_cal = args.samples
            model, prep_note = model_for_both(key)
            d = bc.data_dir(spec.get("data", key))
            tmp = tmp_root / key
            tmp.mkdir()
            calib = bc.sliced(d / "calib.npz", n_cal, tmp / f"calib-{n_cal}.npz")
            evald = bc.sliced(d / "eval.npz", n_eval, tmp / f"eval-{n_eval}.npz")
            b = budget(spec, args.max_drop)
            fp32_bytes = model.stat().st_size
            census0 = layer_census(model)
            n_layers = len(census0["float_layers"])
            print(f"\n[{key}] fp32 {fp32_bytes / 1e6:.1f} MB, {n_layers} weight layers, {n_cal} calibration / "
                  f"{n_eval} validation samples, budget: {b['metric']} drop <= {b['max_drop']}", file=sys.stderr,
                  flush=True)
            # The task gate (bench_compare.GATES) for every kompress job and for the scoring of
            # every output by `kompress evaluate`; models without one keep the cosine budget.
            gate_yaml, gate_path = None, None
            if key in bc.GATES:
                ctx = {}
                if spec["kind"] == "ocr":
                    meta = {p.key: p.value for p in onnx.load(str(model), load_external_data=False).metadata_props}
                    ctx["chars"] = ["blank"] + meta["character"].split("\n") + [" "]
                    ctx["truth"] = json.loads((d / "eval-text.json").read_text())[:n_eval]
                gate_path = bc.gate_job(key, model, d, n_eval, ctx, tmp, args.threads)
                gate_yaml = gate_path.read_text()
                print(f"  gate: {bc.GATES[key]['evaluation'].splitlines()[0]}; "
                      f"{' '.join(bc.GATES[key]['thresholds'].split())}", file=sys.stderr, flush=True)
            results = []
            for tool, form, forms in TOOLS:
                if args.tools and tool.lower() not in args.tools:
                    continue
                slug = f"{tool}-{form}".replace(" ", "-").replace("(", "").replace(")", "")
                if forms is None:
                    out = tmp / f"{slug}.onnx"
                    r = run_nncf(model, out, key, calib, evald, n_eval, n_cal, args.max_drop, args.threads, env,
                                 args.nncf_model_type, args.nncf_smooth_quant)
                    if r["status"] == "ok":
                        r["path"] = str(out)
                else:
                    job = tmp / f"job-{slug}.yaml"
                    if gate_yaml is not None:
                        task_job(job, gate_yaml, calib, n_cal, forms)
                    else:
                        if isinstance(forms, str):
                            forms = forms.replace("N_CALIB", str(n_cal))
                        search_job(job, key, spec, model, evald, calib, n_cal, forms, b["thresholds"], args.threads)
                    r = run_kompress_search(job, env)
                r.update(tool=tool, form=form)
                print(f"  {tool:9} {form:12} {r['status']:40.40} {r['seconds']:8.2f} s {r['peak_rss'] / 1e6:8.1f} MB",
                      file=sys.stderr, flush=True)
                if r["status"] == "ok":
                    try:
                        c = layer_census(Path(r["path"]))
                        r["float_layers"], r["ops"] = c["float_layers"], c["quant_ops"]
                        bc.session(Path(r["path"]), args.threads)  # fails here if the output does not load
                    except Exception as e:  # noqa: BLE001 - report, do not stop the bench
                        r["status"] = f"output does not load: {str(e).splitlines()[0][:140]}"
                results.append(r)
            # The metric of every output, here, with one piece of code, on the same rows.
            feed = bc.load_inputs(spec, evald, n_eval)
            labels = None
            if spec["kind"] == "classifier":
                with np.load(evald) as z:
                    labels = z["labels"][:n_eval]
            s32 = bc.session(model, args.threads)
            ref = reference(spec, s32, feed)
            m32 = float(per_row(spec, s32, feed, ref, labels).mean())
            del s32
            for r in results:
                if r["status"] != "ok":
                    continue
                rows_m = per_row(spec, bc.session(Path(r["path"]), args.threads), feed, ref, labels)
                r["metric"] = float(rows_m.mean())
                r["metric_min_row"] = float(rows_m.min())
                r["meets_budget"] = bool(m32 - r["metric"] <= b["max_drop"] + 1e-12)
                if gate_path is not None:
                    r["gate"] = bc.gate(gate_path, Path(r["path"]), env)
            base = {"model": key, "title": spec["title"], "model_file": str(model), "prepared": prep_note,
                    "fp32_bytes": fp32_bytes, "n_eval": n_eval, "n_calib": n_cal,
                    "weight_layers": n_layers, "metric_name": b["metric"], "fp32_metric": m32, "budget": b}
            for r in results:
                r.pop("path", None)
                rows.append({**base, **r})
            print_section([x for x in rows if x["model"] == key])
    finally:
        bc.SPAWNER.close()
        shutil.rmtree(tmp_root, ignore_errors=True)
    wall = (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()
    out_dir = ROOT / "target/bench"  # where bench_compare writes its rows
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"search-{started.strftime('%Y-%m-%dT%H%M%SZ')}{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps({**header, "wall_seconds": wall, "rows": rows}, indent=1))
    print(f"\n# bench wall time {wall:.0f} s; rows written to {path.relative_to(ROOT)}")


def print_section(rs: list[dict]) -> None:
    fp = rs[0]
    print(f"\n## {fp['title']}: fp32 {fp['fp32_bytes'] / 1e6:.1f} MB, {fp['weight_layers']} weight layers "
          f"(MatMul/Gemm/Conv/Gather); {fp['metric_name']} on {fp['n_eval']} validation rows, max drop "
          f"{fp['budget']['max_drop']}; {fp['n_calib']} calibration rows")
    head = (f"{'tool':9} {'form':13} {'float layers':>12} {'size ratio':>10} {'metric (fp32 -> compressed)':>28} "
            f"{'meets budget':>12} {'task gate':>9} {'wall s':>8} {'peak RSS MB':>11}")
    print(head)
    print("-" * len(head))
    for r in rs:
        if r["status"] != "ok":
            print(f"{r['tool']:9} {r['form']:13} {r['status']}"
                  + (f"  ({r['seconds']:.2f} s)" if "n/a" not in r["status"] else ""))
            continue
        fl = f"{len(r['float_layers'])}/{r['weight_layers']}"
        met = f"{r['fp32_metric']:.4f} -> {r['metric']:.4f}"
        g = r.get("gate") or {}
        verdict = {"Passed": "pass", "Rejected": "REJECT"}.get(g.get("verdict"), g.get("status", "-")[:9])
        print(f"{r['tool']:9} {r['form']:13} {fl:>12} {r['fp32_bytes'] / r['bytes']:>10.2f} {met:>28} "
              f"{'yes' if r['meets_budget'] else 'NO':>12} {verdict:>9} {r['seconds']:>8.2f} "
              f"{r['peak_rss'] / 1e6:>11.1f}")
    notes = [f"model: {fp['prepared']}"] if fp.get("prepared") else []
    # Issue 20's check: the search's choice against the best fixed recipe under the same gate.
    passed = [r for r in rs if (r.get("gate") or {}).get("verdict") == "Passed"]
    fixed = [r for r in passed if r["tool"] == "kompress" and r["form"].startswith("fixed")]
    best = min(fixed, key=lambda r: r["bytes"], default=None)
    for r in rs:
        if r["tool"] == "kompress" and not r["form"].startswith("fixed") and r["status"] == "ok":
            g = (r.get("gate") or {}).get("verdict", "not scored")
            if best is None:
                notes.append(f"search {r['form']}: {g} at {fp['fp32_bytes'] / r['bytes']:.2f}x; no fixed recipe passes")
            else:
                notes.append(f"search {r['form']}: {g} at {fp['fp32_bytes'] / r['bytes']:.2f}x against the best "
                             f"passing fixed recipe ({best['form'].removeprefix('fixed ')}) at "
                             f"{fp['fp32_bytes'] / best['bytes']:.2f}x: size search/fixed {r['bytes'] / best['bytes']:.3f}"
                             f"{' (search at least as small)' if r['bytes'] <= best['bytes'] else ''}")
    for r in rs:
        g = r.get("gate") or {}
        if g.get("failed"):
            notes.append(f"{r['tool']} {r['form']}: task gate failed {', '.join(g['failed'])}")
    for r in rs:
        name = f"{r['tool']} {r['form']}"
        if r.get("ops"):
            notes.append(f"{name}: ops " + ", ".join(f"{k} {v}" for k, v in r["ops"].items()))
        if r.get("float_layers"):
            fl = r["float_layers"]
            notes.append(f"{name}: float: {', '.join(fl[:8])}{' ...' if len(fl) > 8 else ''}")
        c = r.get("child", {})
        if c:
            notes.append(f"{name}: NNCF {c.get('nncf')} call {c['tool_seconds']:.2f} s (fp32 reference outputs "
                         f"{c['reference_seconds']:.2f} s), {c['validation_calls']} validation_fn calls on "
                         f"{c['validation_rows']} rows, model_type {c['model_type']}, SmoothQuant {c.get('smooth_quant')}, python+nncf import RSS "
                         f"{c['import_peak_rss'] / 1e6:.0f} MB")
        for line in r.get("log", []):
            if "Metric of" in line or "Algorithm completed" in line or "reverted back" in line or "could not" in line:
                notes.append(f"{name}: {line[:160]}")
        if r["tool"] == "kompress" and r.get("trials") and r.get("search", {}).get("budget"):
            b = r["search"]["budget"]
            notes.append(f"{name}: budget " + ", ".join(
                f"{p} {b[p]['seconds']:.1f} s/{b[p]['runs']}" for p in
                ("wholeForms", "calibration", "probes", "fallback", "latency"))
                + f" (probe limit {b['probeSecondsLimit']:.0f} s); layers "
                + ", ".join(f"{k} {v}" for k, v in r.get("precisions", {}).items() if v))
            for n in r["search"].get("notes") or []:
                notes.append(f"{name}: {n[:200]}")
        if r["tool"] == "kompress" and r.get("trials"):
            s = r.get("search", {})
            pick = "chosen" if s.get("chosen") is not None else "closest"
            t = r.get("chosen_trial") or {}
            km = r.get("kompress_metrics") or {}
            notes.append(f"{name}: verdict {r.get('verdict')}, {len(r['trials'])} trials, {pick} #{s.get(pick)} "
                         f"({t.get('form')}/{t.get('kind')}, {len(t.get('floatLayers', []))} float layers), "
                         f"kompress's own: cosine {km.get('cosineSimilarity')}, accuracy drop {r.get('accuracy_drop')}, "
                         f"search {s.get('seconds')} s")
    if notes:
        print("  notes:")
        for n in notes:
            print("   ", n)
    sys.stdout.flush()


def main(argv: list[str]) -> None:
    if argv and argv[0] == "--nncf":
        sys.exit(nncf_main(argv[1:]))
    ap = argparse.ArgumentParser(prog="hack/bench_search.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--search", action="store_true", help=argparse.SUPPRESS)  # as `hack/bench --search` would pass
    ap.add_argument("--quick", action="store_true", help=f"{', '.join(QUICK_MODELS)} with fewer samples")
    ap.add_argument("--models", help=f"comma-separated, from {', '.join(bc.MODELS)}")
    ap.add_argument("--tools", help="comma-separated, from nncf, kompress (default both)")
    ap.add_argument("--threads", type=int, default=2, help="ORT intra-op threads for every session (default 2)")
    ap.add_argument("--samples", type=int, help="calibration samples (default per model)")
    ap.add_argument("--max-drop", type=float, default=0.005,
                    help="absolute metric drop allowed (default 0.005: cosine >= 0.995, accuracy -0.5 points)")
    ap.add_argument("--nncf-model-type", choices=["auto", "transformer", "none"], default="auto",
                    help="NNCF's model_type (auto: TRANSFORMER for the embedding models)")
    ap.add_argument("--nncf-smooth-quant", choices=["default", "off"], default="off",
                    help="default: NNCF's SmoothQuant (MatMul alpha 0.95) in its TRANSFORMER pipeline; off (the "
                         "bench's default): without it, as NNCF 3.4.0's ONNX revert breaks smoothed models")
    ap.add_argument("--no-build", action="store_true", help="use the kompress binary as it is")
    args = ap.parse_args(argv)
    args.tools = args.tools.lower().split(",") if args.tools else None
    py = ensure_venv()
    if Path(sys.prefix).resolve() != VENV.resolve():
        if not args.no_build:
            subprocess.run(["cargo", "build", "--release", "--locked", "--quiet"], cwd=ROOT, check=True)
        os.execv(str(py), [str(py), str(Path(__file__)), *argv, "--no-build"])
    compare(args)


if __name__ == "__main__":
    main(sys.argv[1:])
