"""The model bundle stage 6 writes and the web service reads: everything needed to score a photo.

A bundle is a folder holding
- `model.onnx`: ONE network from a preprocessed image tensor (N, 3, R, R) float32, normalised like
  `features.Preprocess.normalize`, to class scores (N, K). Everything after decoding is folded in:
  the backbone, the mirror-image averaging of stage 3 (`run_boFlipAverage`), and then either the L2
  normalisation + linear SVM (classifiers "svm" and "svmDnnRefined": SVM decision values, like
  stage 5) or the refined network's head + softmax (classifier "dnn": probabilities);
- `bundle.json`: the class names, the preprocessing (resolution, resize mode, mean, std), the
  training metrics of stage 5 (only if they describe this model and SVM), the SHA-256 of
  model.onnx, and a content hash used as model version.

Reading a bundle (`load_bundle`) needs neither torch nor pickle: a server loads it with ONNX Runtime
only. torch is imported by the export functions alone.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgclass.backbones import static_padding
from imgclass.cpus import usable_cpus
from imgclass.fileio import atomic_path, read_json, write_json

MODEL_FILE = "model.onnx"
BUNDLE_FILE = "bundle.json"
BUNDLE_FORMAT = 1
INPUT_NAME = "image"
OUTPUT_NAME = "scores"
SCORE_KINDS = {"svm": "svm_decision", "svmDnnRefined": "svm_decision", "dnn": "probability"}
EXPORT_TOLERANCE = 1e-4  # the ONNX model must give torch's scores to within this on a probe batch


class BundleError(ValueError):
    """A bundle folder is missing, incomplete or damaged; the message names the file."""


@dataclass(frozen=True)
class Bundle:
    """A bundle as read from disk (no model loaded)."""

    path: Path
    classes: tuple[str, ...]
    classifier: str
    score_kind: str  # "svm_decision" (unbounded, higher is better) or "probability" (0-1, sums to 1)
    resolution: int
    resize_mode: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    flip_average: bool
    version: str
    metrics: dict[str, Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)  # the whole bundle.json

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    def normalize(self, images: np.ndarray) -> np.ndarray:
        """(N, R, R, 3) uint8 -> (N, 3, R, R) float32, the same arithmetic as Preprocess.normalize."""
        mean = np.asarray(self.mean, np.float32).reshape(1, 3, 1, 1) * np.float32(255.0)
        std = np.asarray(self.std, np.float32).reshape(1, 3, 1, 1) * np.float32(255.0)
        x = np.ascontiguousarray(images.transpose(0, 3, 1, 2)).astype(np.float32)
        return (x - mean) / std


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _version(model_sha256: str, contract: dict[str, Any]) -> str:
    """Same model file and same way of feeding it -> same version, whenever it was exported."""
    text = model_sha256 + json.dumps(contract, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_bundle(folder: str | Path, verify: bool = True) -> Bundle:
    """Read bundle.json (and, with `verify`, check model.onnx is the file it was written with)."""
    folder = Path(folder)
    meta_path, model_path = folder / BUNDLE_FILE, folder / MODEL_FILE
    if not meta_path.is_file() or not model_path.is_file():
        raise BundleError(f"{folder}: not a model bundle (needs {BUNDLE_FILE} and {MODEL_FILE}); "
                          f"make one with scripts/6_deploy.py --no-serve")
    try:
        info = read_json(meta_path)
        if not isinstance(info, dict):  # valid JSON, but e.g. a list: name the file, not an AttributeError
            raise BundleError(f"a JSON {type(info).__name__}, not an object")
        if info.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"format {info.get('format')!r}, this code reads format {BUNDLE_FORMAT}")
        pre = info["preprocessing"]
        bundle = Bundle(
            path=folder,
            classes=tuple(str(c) for c in info["classes"]),
            classifier=str(info["classifier"]),
            score_kind=str(info["score_kind"]),
            resolution=int(pre["resolution"]),
            resize_mode=str(pre["resize_mode"]),
            mean=tuple(float(v) for v in pre["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in pre["std"]),  # type: ignore[arg-type]
            flip_average=bool(pre["flip_average"]),
            version=str(info["model_version"]),
            metrics=info.get("metrics"),
            info=info,
        )
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
        raise BundleError(f"{meta_path}: damaged bundle description ({e})") from e
    if verify and _sha256(model_path) != info.get("model_sha256"):
        raise BundleError(f"{model_path}: does not match {BUNDLE_FILE} (half-written or edited); export the bundle again")
    return bundle


def _scoring_net(model: Any, flip_average: bool, head: str, svm: Any = None) -> Any:
    """A torch module: preprocessed images -> class scores, the computation stages 3-5 do in steps.

    head: "svm" (L2-normalise if the SVM was trained so, then coef/intercept) or "softmax" (the
    refined network's own linear head, then softmax, like features.Featurizer's probabilities).
    """
    import torch

    from imgclass.modelfile import ImageClassifier

    body = model.backbone if isinstance(model, ImageClassifier) else model

    class ScoringNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = body
            if head == "softmax":
                self.head = model.head
            else:
                self.register_buffer("coef", torch.as_tensor(np.asarray(svm.coef_, np.float32)))
                self.register_buffer("intercept", torch.as_tensor(np.asarray(svm.intercept_, np.float32)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if flip_average:
                # One pass over image and mirror image together, then the mean: what stage 3 does.
                n = x.shape[0]
                both = self.body(torch.cat([x, x.flip(3)]))
                feats = (both[:n] + both[n:]) / 2
            else:
                feats = self.body(x)
            if head == "softmax":
                return torch.softmax(self.head(feats), dim=1)
            if svm.l2_normalize:
                feats = feats / torch.clamp(torch.linalg.vector_norm(feats, dim=1, keepdim=True), min=1e-12)
            return feats @ self.coef.T + self.intercept

    return ScoringNet().eval()


def export_model(
    model: Any,
    spec: Any,
    out_dir: str | Path,
    classifier: str,
    svm: Any = None,
    flip_average: bool = True,
    metrics: dict[str, Any] | None = None,
    source: dict[str, Any] | None = None,
    opset: int = 17,
    metrics_left_out: str = "",
) -> Bundle:
    """Write a bundle for an in-memory model (+ SVM) and check the ONNX model reproduces it.
    `metrics_left_out`: why stage 5's metrics are not included (recorded in bundle.json)."""
    import torch

    if classifier not in SCORE_KINDS:
        raise ValueError(f"classifier = {classifier!r}: allowed values are {', '.join(SCORE_KINDS)}")
    if classifier == "svm" and spec.kind != "fixed":
        raise ValueError(f"classifier 'svm' scores the fixed (pretrained) network, but the model is {spec.kind!r}")
    if classifier in ("dnn", "svmDnnRefined") and spec.kind != "refined":
        raise ValueError(f"classifier {classifier!r} needs the refined network (model_refined.pt from "
                         f"scripts/2_refineDNN.py), but the model is {spec.kind!r}")
    if classifier == "dnn":
        classes = tuple(spec.classes)
        if not classes:
            raise ValueError("the refined model names no classes")
    else:
        if svm is None:
            raise ValueError(f"classifier {classifier!r} needs the SVM of scripts/4_trainSVM.py")
        classes = tuple(str(c) for c in getattr(svm, "classes", ()) or ())
        if not classes:
            raise ValueError("the SVM file names no classes: retrain it with scripts/4_trainSVM.py")
        if len(classes) != len(svm.intercept_):
            raise ValueError(f"the SVM has {len(svm.intercept_)} outputs but names {len(classes)} classes")
        if spec.kind == "refined" and spec.classes and tuple(spec.classes) != classes:
            raise ValueError(f"the SVM's classes {list(classes)} differ from the refined model's {list(spec.classes)}")

    res = spec.resolution
    net = _scoring_net(static_padding(model, res), flip_average, "softmax" if classifier == "dnn" else "svm", svm)
    probe = torch.randn(2, 3, res, res, generator=torch.Generator().manual_seed(0))
    out_dir = Path(out_dir)
    model_path = out_dir / MODEL_FILE
    with atomic_path(model_path) as tmp:
        with torch.inference_mode():
            expected = net(probe).numpy()
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notes
            torch.onnx.export(
                net, (probe,), str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=opset, dynamo=False,
            )
        got = _run_onnx(tmp, probe.numpy())
        err = float(np.abs(got - expected).max())
        if not err <= EXPORT_TOLERANCE:
            raise RuntimeError(f"the exported ONNX model differs from the torch model by {err:.2e} (> {EXPORT_TOLERANCE})")

    preprocessing = {
        "resolution": res,
        "resize_mode": spec.resize_mode,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "flip_average": bool(flip_average),
        "input": f"{INPUT_NAME}: float32 (N, 3, {res}, {res}), RGB, (pixel - 255*mean) / (255*std)",
    }
    contract = {"classes": list(classes), "classifier": classifier, "preprocessing": preprocessing}
    model_sha = _sha256(model_path)
    info = {
        "format": BUNDLE_FORMAT,
        "model_version": _version(model_sha, contract),
        "model_sha256": model_sha,
        "classifier": classifier,
        "score_kind": SCORE_KINDS[classifier],
        "classes": list(classes),
        "backbone": spec.backbone,
        "preprocessing": preprocessing,
        "svm_C": getattr(svm, "C_", None),
        "metrics": metrics,
        "metrics_left_out": None if metrics else (metrics_left_out or "no metrics given"),
        "source": source or {},
        "export_check_max_abs_error": err,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(out_dir / BUNDLE_FILE, info)  # written last: a bundle is complete once this exists
    return load_bundle(out_dir)


def export_bundle(
    model_path: str | Path,
    out_dir: str | Path,
    classifier: str,
    svm_path: str | Path | None = None,
    flip_average: bool = True,
    metrics_path: str | Path | None = None,
    dataset: str = "",
) -> Bundle:
    """Export the files stages 2-5 wrote (model_*.pt, svm_*.npz, metrics.json) as a bundle."""
    from imgclass.fileio import require_file
    from imgclass.modelfile import load_model
    from imgclass.svm import LinearSvm

    model, spec = load_model(model_path)
    svm = None
    if classifier != "dnn":
        svm = LinearSvm.load(require_file(svm_path, "scripts/4_trainSVM.py")) if svm_path else None
    metrics, left_out = None, "no metrics file given"
    if metrics_path is not None:
        classes = spec.classes if classifier == "dnn" else getattr(svm, "classes", ())
        metrics, left_out = stage5_metrics(metrics_path, classes, model_path, svm_path if svm else None, flip_average)
    source = {"dataset": dataset, "model_file": str(model_path), "svm_file": str(svm_path) if svm else None}
    return export_model(model, spec, out_dir, classifier, svm=svm, flip_average=flip_average,
                        metrics=metrics, source=source, metrics_left_out=left_out)


def stage5_metrics(
    metrics_path: str | Path, classes: Any, model_path: str | Path, svm_path: str | Path | None = None,
    flip_average: bool = True,
) -> tuple[dict[str, Any] | None, str]:
    """Stage 5's metrics.json if it describes this model file (+ SVM file) as they are now, else
    (None, why not): stage 4 (or 2 and 3) rerun without stage 5 leaves the metrics of an earlier
    classifier beside the files, and a bundle must not show that classifier's accuracy as its own.

    The classes must be the bundle's; then the provenance stage 5 records (the features source it
    evaluated, the SVM file's hash) must match the files; a metrics.json written before stage 5
    recorded them must at least be newer than the files (modification times)."""
    from imgclass.provenance import features_source, file_hash

    path, model_path = Path(metrics_path), Path(model_path)
    if not path.is_file():
        return None, f"no {path.name}"
    try:
        metrics = read_json(path)
    except (OSError, ValueError) as e:
        return None, f"{path.name} unreadable ({e})"
    if not isinstance(metrics, dict):
        return None, f"{path.name} is not a JSON object"
    if [str(c) for c in metrics.get("classes") or []] != [str(c) for c in classes]:
        return None, (f"{path.name} is for the classes {', '.join(map(str, metrics.get('classes') or [])) or '(none)'}, "
                      f"the bundle's are {', '.join(map(str, classes))}")
    made = metrics.get("provenance") if isinstance(metrics.get("provenance"), dict) else {}
    written = path.stat().st_mtime_ns
    files = [(model_path, "features_source", lambda f: features_source(f, flip_average))]
    if svm_path is not None:
        files.append((Path(svm_path), "svm_file_hash", file_hash))
    for f, key, fingerprint in files:
        recorded = made.get(key)
        if recorded:
            if recorded != fingerprint(f):
                return None, f"{path.name} evaluated an earlier {f.name} (or other features)"
        elif f.stat().st_mtime_ns > written:
            return None, f"{path.name} is older than {f.name}"
    return metrics, ""


def cpu_session(path: str | Path, threads: int = 0, processes: int = 1) -> Any:
    """An ONNX Runtime CPU session as stage 3 and the service run it: `threads` (0 = the usable
    cores, shared out among `processes` sessions running side by side, e.g. the service's worker
    processes, so that they do not fight over the cores) for one operator at a time, full graph
    optimisation, and no busy-waiting, because idle ONNX Runtime threads would otherwise spin after
    each batch on the cores that decoding (and HTTP handling) need between batches."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or max(1, usable_cpus() // max(1, processes))
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _run_onnx(path: str | Path, x: np.ndarray) -> np.ndarray:
    return cpu_session(path).run(None, {INPUT_NAME: x})[0]
