"""Choose the featurizer, and the classifier, for a data set by the data itself, never by its test images.

Featurizer (`compare_featurizers`):

Every candidate (backbone x resolution x resize mode) featurizes the training images of the split,
and the linear SVM's cross-validation accuracy within the training set scores it, as stage 4 would
choose C. The recommendation follows the one-standard-error rule: the cheapest candidate (fewest
floating-point operations per image, counted, so the choice does not depend on a noisy timing)
whose accuracy is within one standard error (over the folds) of the best, since a difference
smaller than that is as likely to be noise as a better featurizer.

Classifier (`compare_classifiers`): part of the training images is held out; the network is refined
on the rest exactly as stage 2 would refine it, and the three classifiers (svm on the fixed features,
dnn, svmDnnRefined) are scored on the held-out images. The recommendation is again the cheapest
within one standard error of the best: svm needs no refinement at all, dnn no SVM.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imgclass.backbones import WeightsUnavailableError
from imgclass.features import FeatureCache, Featurizer
from imgclass.images import header_size
from imgclass.modelfile import ModelSpec, build_model, save_model
from imgclass.svm import LinearSvm

if TYPE_CHECKING:  # for the annotations; compare_classifiers imports what it runs
    import torch

    from imgclass.refine import RefineConfig, Refiner


@dataclass
class CandidateScore:
    spec: ModelSpec
    cv_accuracy: float | None  # mean over the folds at the chosen C; None when the candidate could not run
    cv_stderr: float | None  # standard error of that mean over the folds
    C: float | None
    gflops: float | None  # the network's floating-point operations per image, in billions (counted)
    reused: int = 0  # training images whose features came from the cache
    problem: str = ""  # why the candidate was skipped (e.g. weights not available offline)

    @property
    def name(self) -> str:
        return f"{self.spec.backbone} {self.spec.resolution}px {self.spec.resize_mode}"


def all_square(paths: Sequence[str | Path]) -> bool:
    """Whether every image is square by its header (EXIF rotation cannot change that): then crop,
    squash and pad give the network the same pixels, and scoring each would triple the work for one
    result (digits, CIFAR-style data sets)."""
    for path in paths:
        size = header_size(path)
        if size is None or size[0] != size[1]:  # unreadable: stage 3's decoding says what it is
            return False
    return True


def _gflops_per_image(model: torch.nn.Module, resolution: int) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(torch.zeros(1, 3, resolution, resolution))
    return counter.get_total_flops() / 1e9


def compare_featurizers(
    paths: Sequence[Path], labels: np.ndarray, backbones: Sequence[str], resolutions: Sequence[int],
    resize_modes: Sequence[str], svm: LinearSvm, cache_dir: Path, flip_average: bool = False,
    batch_size: int = 32, workers: int = 2, engine: str = "auto", weights_dir: str | None = None,
    use_cache: bool = True, progress: bool = True,
) -> list[CandidateScore]:
    """Score every combination by the SVM's CV accuracy on (paths, labels): training images only.

    `svm` is an unfitted LinearSvm with the settings stage 4 uses; each candidate fits a copy."""
    candidates = list(itertools.product(backbones, resolutions, resize_modes))
    built: dict[str, Any] = {}  # backbone -> network (or why it cannot be had): its weights load once
    out = []
    for n, (backbone, resolution, mode) in enumerate(candidates, 1):
        spec = ModelSpec(backbone, resolution, mode, kind="fixed")
        if progress:
            print(f"[{n}/{len(candidates)}] {backbone} at {resolution} px ({mode})", flush=True)
        if backbone not in built:
            try:
                built[backbone] = build_model(spec, pretrained=True, weights_dir=weights_dir)
            except WeightsUnavailableError as e:
                built[backbone] = e
        model = built[backbone]
        if isinstance(model, WeightsUnavailableError):
            out.append(CandidateScore(spec, None, None, None, None, problem=str(model)))
            continue
        gflops = _gflops_per_image(model, resolution)
        cache = None
        if use_cache:
            # The same bytes stage 2 writes for this spec, so stage 3 later reuses these features.
            model_file = save_model(cache_dir / f"candidate_{backbone}_{resolution}_{mode}.pt", model, spec)
            cache = FeatureCache(cache_dir, model_file, spec, flip_average, keep=len(candidates) + 4)
            model_file.unlink()  # the cache key is taken; the file is rebuilt identically when needed
        fz = Featurizer(model, spec, batch_size=batch_size, flip_average=flip_average, workers=workers,
                        engine=engine, export_dir=cache_dir)
        feats = fz.featurize_paths(paths, progress=progress, desc="training images", cache=cache).features
        fitted = copy.deepcopy(svm).fit(feats, labels)  # every setting of stage 4's SVM, unfitted
        folds = fitted.cv_fold_scores_.get(fitted.C_, [])
        out.append(CandidateScore(
            spec,
            float(np.mean(folds)) if folds else None,
            float(np.std(folds, ddof=1) / np.sqrt(len(folds))) if len(folds) > 1 else None,
            fitted.C_, gflops, reused=cache.hits if cache else 0,
            problem="" if folds else fitted.cv_note_ or "no cross-validation possible",
        ))
    return out


def write_table(path: Path, scores: Sequence[CandidateScore]) -> Path:
    """The comparison as a TSV, one line per candidate."""
    from imgclass.fileio import atomic_open

    def num(v: float | None, fmt: str) -> str:
        return "" if v is None else format(v, fmt)

    with atomic_open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("backbone\tresolution\tresize_mode\tcv_accuracy\tcv_stderr\tC\tgflops_per_image\tproblem\n")
        for s in scores:
            f.write("\t".join([s.spec.backbone, str(s.spec.resolution), s.spec.resize_mode, num(s.cv_accuracy, ".4f"),
                               num(s.cv_stderr, ".4f"), num(s.C, "g"), num(s.gflops, ".3f"), s.problem]) + "\n")
    return Path(path)


def plot_comparison(path: Path, scores: Sequence[CandidateScore], chosen: CandidateScore | None, title: str = "") -> Path:
    """Bars of CV accuracy with one-standard-error whiskers; the recommended candidate in colour."""
    from imgclass.evaluate import plt  # the file-only backend
    from imgclass.fileio import save_figure

    ran = [s for s in scores if s.cv_accuracy is not None]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(ran) + 1.5))
    y = np.arange(len(ran))
    ax.barh(y, [100 * s.cv_accuracy for s in ran], xerr=[100 * (s.cv_stderr or 0) for s in ran],
            color=["C2" if s is chosen else "C7" for s in ran], capsize=3)
    ax.set_yticks(y, [f"{s.name} ({s.gflops:.1f} GFLOPs)" for s in ran])
    best = max(ran, key=lambda s: s.cv_accuracy)
    ax.axvline(100 * (best.cv_accuracy - (best.cv_stderr or 0)), color="C2", ls="--", lw=1,
               label="one standard error below the best")
    ax.legend(loc="lower right", fontsize="small")
    low = min((100 * (s.cv_accuracy - (s.cv_stderr or 0)) for s in ran), default=0)
    ax.set(xlim=(max(0, low - 5), 100), xlabel="cross-validation accuracy on the training set (%)",
           title=title or "featurizers compared (green: recommended)")
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    return save_figure(fig, path)


def recommend(scores: Sequence[CandidateScore], prefer: ModelSpec | None = None) -> CandidateScore | None:
    """The cheapest candidate within one standard error of the best CV accuracy (None if none ran).
    Among equally cheap ones (crop and squash cost the same): `prefer` (the current parameters),
    then the higher accuracy, then the order given."""
    ran = [s for s in scores if s.cv_accuracy is not None]
    if not ran:
        return None
    best = max(ran, key=lambda s: s.cv_accuracy)
    bar = best.cv_accuracy - (best.cv_stderr or 0.0)
    within = [s for s in ran if s.cv_accuracy >= bar - 1e-12]
    return min(within, key=lambda s: (round(s.gflops, 3), s.spec != prefer, -s.cv_accuracy))


CLASSIFIERS_CHEAPEST_FIRST = ("svm", "dnn", "svmDnnRefined")


@dataclass
class ClassifierScore:
    classifier: str
    accuracy: float  # on the held-out training images
    class_averaged_accuracy: float
    stderr: float  # standard error of `accuracy` over the held-out images (held_out_stderr)
    n_val: int


def holdout_indices(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, held out) indices: `fraction` of every class held out, at least one image of each class
    that has two or more; a class with a single image stays entirely on the fit side."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"held-out fraction = {fraction}: expected a number between 0 and 1")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < 2:
            continue
        idx = rng.permutation(members)
        val.extend(idx[: min(len(idx) - 1, max(1, round(fraction * len(idx))))].tolist())
    held = np.zeros(len(labels), bool)
    held[val] = True
    return np.flatnonzero(~held), np.flatnonzero(held)


def held_out_stderr(correct: int, n: int) -> float:
    """Standard error of an accuracy of `correct` of `n` images, Agresti-Coull adjusted (two
    successes and two failures added): the plain binomial sqrt(p(1-p)/n) is 0 at 9 of 9, which
    reads as certainty and would let one image decide the recommendation."""
    p = (correct + 2) / (n + 4)
    return float(np.sqrt(p * (1 - p) / (n + 4)))


def _score(name: str, pred: np.ndarray, truth: np.ndarray) -> ClassifierScore:
    correct = int((pred == truth).sum())
    per_class = [float((pred[truth == c] == c).mean()) for c in np.unique(truth)]
    return ClassifierScore(name, correct / len(truth), float(np.mean(per_class)), held_out_stderr(correct, len(truth)),
                           len(truth))


def compare_classifiers(
    paths: Sequence[str | Path], labels: np.ndarray, classes: Sequence[str], config: RefineConfig, svm: LinearSvm,
    val_fraction: float = 0.2, seed: int = 0, progress: bool = True, spill_dir: Path | None = None,
    flip_average: bool = False,
) -> tuple[list[ClassifierScore], Refiner]:
    """Refine on the fit part of (paths, labels), training images only, with `config` (a
    RefineConfig, as stage 2), and score svm / dnn / svmDnnRefined on the held-out part.

    `flip_average`: every classifier sees the mean of an image's and its mirror image's features,
    as stage 3 computes them when `run_boFlipAverage` is on.

    `svm` is an unfitted LinearSvm with stage 4's settings; each SVM fits a copy. Returns the scores,
    cheapest classifier first, and the fitted Refiner: its `history_` (whose "test" error is the
    held-out error), and its `collapse_note_` where refining diverged, so that the dnn and
    svmDnnRefined scores are of the pretrained network stage 2 would save in its place."""
    import torch

    from imgclass.backbones import create_backbone
    from imgclass.refine import Refiner, decode_images

    paths, labels = np.array([str(x) for x in paths]), np.asarray(labels, dtype=np.int64)
    fit, val = holdout_indices(labels, val_fraction, seed)
    if not len(val) or len(np.unique(labels[fit])) < 2:
        raise ValueError(f"{len(labels)} training images are too few to hold {val_fraction:.0%} of each class out")
    refiner = Refiner(config, classes, progress=progress, spill_dir=spill_dir, held_out_name="held-out")
    refiner.fit(paths[fit], labels[fit], paths[val], labels[val])  # per-epoch held-out error, shown only
    pixels = {side: decode_images(paths[idx], config.resolution, config.resize_mode, config.workers,
                                  f"decode {side}", progress, spill_dir) for side, idx in (("fit", fit), ("held out", val))}

    def svm_prediction(feats: dict[str, torch.Tensor]) -> np.ndarray:
        fitted = copy.deepcopy(svm).fit(feats["fit"].cpu().numpy(), labels[fit], n_classes=len(classes))
        return fitted.predict(feats["held out"].cpu().numpy())

    model = refiner.model_
    refined = {side: refiner.features(model.backbone, x, flip=flip_average) for side, x in pixels.items()}
    with torch.no_grad():
        dnn = model.head(refined["held out"]).argmax(1).cpu().numpy()  # eval mode: no dropout
    body = create_backbone(config.backbone, weights_dir=config.weights_dir or None).to(refiner.device)
    body = body.to(memory_format=torch.channels_last)
    fixed = {side: refiner.features(body, x, flip=flip_average) for side, x in pixels.items()}
    preds = {"svm": svm_prediction(fixed), "dnn": dnn, "svmDnnRefined": svm_prediction(refined)}
    return [_score(name, preds[name], labels[val]) for name in CLASSIFIERS_CHEAPEST_FIRST], refiner


def recommend_classifier(scores: Sequence[ClassifierScore]) -> ClassifierScore:
    """The cheapest classifier whose held-out accuracy is within one standard error of the best."""
    best = max(scores, key=lambda s: s.accuracy)
    order = {name: i for i, name in enumerate(CLASSIFIERS_CHEAPEST_FIRST)}
    within = [s for s in scores if s.accuracy >= best.accuracy - best.stderr - 1e-12]
    return min(within, key=lambda s: order[s.classifier])


def write_classifier_table(path: Path, scores: Sequence[ClassifierScore]) -> Path:
    """The classifier comparison as a TSV, one line per classifier, cheapest first."""
    from imgclass.fileio import atomic_open

    with atomic_open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("classifier\theld_out_accuracy\tclass_averaged_accuracy\tstderr\tn_held_out\n")
        for s in scores:
            f.write(f"{s.classifier}\t{s.accuracy:.4f}\t{s.class_averaged_accuracy:.4f}\t{s.stderr:.4f}\t{s.n_val}\n")
    return Path(path)
