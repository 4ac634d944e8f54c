"""Compare Part-2 recipes on a validation set held out of each TRAINING set (the test set is not read).

    flock /tmp/imgclass_cpu.lock python benchmarks/select_refine_recipe.py [--seeds 0 1 2] [--set NAME=VALUE ...]

For each seed, stage 1's split is made as usual and its test side is ignored; the training side is
split again (stratified, 80/20) into fit and validation images. The network is refined on the fit
images with PARAMETERS.py's rf_* / aug_* values (overridable with --set), then several ways of
scoring are measured on the validation images, from one training run:
- head:        the network as trained (what `classifier = "dnn"` gave before rf_boRefitLastLayer);
- refit:       the last layer fitted again on the refined features of the un-augmented fit images;
- +flip:       (with --flip) either of those, with the features of each image averaged with its mirror image's;
- svm refined: a linear SVM (C by CV on the fit images) on the refined features ("svmDnnRefined");
- svm fixed:   the same SVM on the pretrained network's features (Part 1), for reference;
- refit logloss: the refit network's mean cross-entropy on the validation images (lower is better;
  finer-grained than accuracy, which moves in steps of one image).
With rf_averageLastEpochs >= 2 the same training run scores twice: the last epoch's weights (rows as
above) and the averaged weights (rows prefixed "avg"), a paired comparison.
Defaults in PARAMETERS.py were chosen with this script, never with test accuracy.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from imgclass.backbones import create_backbone
from imgclass.data import make_split
from imgclass.fileio import write_json
from imgclass.modelfile import ImageClassifier
from imgclass.params import Params, load_params, parse_overrides
from imgclass.refine import RefineConfig, Refiner, decode_images
from imgclass.selection import holdout_indices
from imgclass.svm import LinearSvm

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "fashionTexture"


def head_scores(model: ImageClassifier, feats: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of the model's last layer on these features."""
    with torch.no_grad():
        logits = model.head(torch.from_numpy(feats))
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels)).item()
    return float((logits.argmax(1).numpy() == labels).mean()), loss


def score(refiner: Refiner, model: ImageClassifier, fit_pixels: torch.Tensor, fit_labels: np.ndarray,
          val_pixels: torch.Tensor, val_labels: np.ndarray, p: Params, seed: int, flip: bool) -> dict[str, float]:
    """Validation scores of one refined network: as trained, last layer refit, SVM on its features.
    `fit_pixels`: the fit images decoded as stage 3 decodes them (as the Refiner's refit and stage 4 see them)."""
    refit = copy.deepcopy(model)
    refiner.fit_last_layer(refit, fit_pixels, torch.from_numpy(fit_labels), what="the refined features")
    out = {}
    for f in (False, True) if flip else (False,):
        tag = "+flip" if f else ""
        fv = refiner.features(model.backbone, val_pixels, f).cpu().numpy()
        out["head" + tag] = head_scores(model, fv, val_labels)[0]
        out["refit" + tag], loss = head_scores(refit, fv, val_labels)
        if not f:
            out["refit logloss"] = loss
        svm = LinearSvm(p.svm_CVals, p.svm_boL2Normalize, p.svm_cvFolds, seed).fit(
            refiner.features(model.backbone, fit_pixels, f).cpu().numpy(), fit_labels)
        out["svm refined" + tag] = float((svm.predict(fv) == val_labels).mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of class folders")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--val-fraction", type=float, default=0.2, help="part of each training set held out")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--flip", action="store_true", help="also score with flip averaging (slower)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args()
    p = load_params(overrides=parse_overrides(args.overrides))

    rows = []
    for seed in args.seeds:
        split = make_split(args.data, p.ratioTrainTest, seed, p.imagesSplitBy, check_decode=False)
        paths = np.array([str(args.data / path) for path, _ in split.train])
        labels = np.array([y for _, y in split.train])
        fit, val = holdout_indices(labels, args.val_fraction, seed + 1000)
        config = RefineConfig.from_params(p)
        config = RefineConfig(**{**config.__dict__, "seed": seed, "refit_last_layer": False})
        refiner = Refiner(config, split.classes, progress=True)
        t0 = time.perf_counter()
        refiner.fit(paths[fit], labels[fit], paths[val], labels[val])  # validation error per epoch, reported only
        seconds = time.perf_counter() - t0
        # Decoded straight to the input side, as stage 3 decodes them (until 2026-11-30 the fit images
        # came from the training cache, decoded 15% larger and resized again: other features).
        fit_pixels = decode_images(paths[fit], config.resolution, config.resize_mode, config.workers, progress=False)
        val_pixels = decode_images(paths[val], config.resolution, config.resize_mode, config.workers, progress=False)
        row: dict[str, float | int] = {"seed": seed, "n_fit": len(fit), "n_val": len(val), "seconds": round(seconds)}
        models = {"": refiner.model_}
        if refiner.last_epoch_state_ is not None:  # the last epoch's weights, and their average
            last = copy.deepcopy(refiner.model_)
            last.load_state_dict(refiner.last_epoch_state_)
            models = {"": last, "avg ": refiner.model_}
        for prefix, model in models.items():
            row.update({prefix + k: v for k, v in score(refiner, model, fit_pixels, labels[fit], val_pixels,
                                                         labels[val], p, seed, args.flip).items()})
        body = create_backbone(config.backbone, weights_dir=config.weights_dir or None)
        fixed = [refiner.features(body, pixels).cpu().numpy() for pixels in (fit_pixels, val_pixels)]
        svm = LinearSvm(p.svm_CVals, p.svm_boL2Normalize, p.svm_cvFolds, seed).fit(fixed[0], labels[fit])
        row["svm fixed"] = float((svm.predict(fixed[1]) == labels[val]).mean())
        rows.append(row)
        print(json.dumps(row), flush=True)

    keys = [k for k in rows[0] if k not in ("seed", "n_fit", "n_val", "seconds")]
    print(f"\nvalidation accuracy ({rows[0]['n_val']} held-out training images per seed), overrides {args.overrides}")
    print("| scoring | " + " | ".join(f"seed {r['seed']}" for r in rows) + " | mean |")
    print("| --- " * (len(rows) + 2) + "|")
    for k in keys:
        if k.endswith("logloss"):
            vals = [float(r[k]) for r in rows]
            print(f"| {k} | " + " | ".join(f"{v:.4f}" for v in vals) + f" | {np.mean(vals):.4f} |")
        else:
            vals = [100 * float(r[k]) for r in rows]
            print(f"| {k} | " + " | ".join(f"{v:.2f}%" for v in vals) + f" | {np.mean(vals):.2f}% |")
    print(f"training time per seed: {np.mean([r['seconds'] for r in rows]):.0f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, {"rows": rows, "overrides": args.overrides})


if __name__ == "__main__":
    main()
