"""Part-1 accuracy (fixed backbone + linear SVM) over several random splits of a real data set.

    python benchmarks/accuracy_part1.py [--data ../shared/datasets/fashionTexture] [--seeds 0 1 2 3 4]
                                        [--set NAME=VALUE ...]

Uses the same library code as stages 1-5 with the parameters of PARAMETERS.py (overridable with
--set). Features do not depend on the split, so every image is featurized once and the split, the
CV choice of C (training images only) and the test scoring are repeated per seed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from imgclass.data import make_split
from imgclass.evaluate import compute_metrics
from imgclass.features import Featurizer
from imgclass.modelfile import ModelSpec, build_model
from imgclass.params import load_params, parse_overrides
from imgclass.svm import LinearSvm

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "fashionTexture"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of class folders")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE")
    args = ap.parse_args()
    p = load_params(overrides=parse_overrides(args.overrides))

    first = make_split(args.data, p.ratioTrainTest, args.seeds[0], p.imagesSplitBy)
    every = sorted(first.train + first.test)
    index = {path: i for i, (path, _) in enumerate(every)}
    labels = np.array([y for _, y in every])

    spec = ModelSpec(p.rf_pretrainedModel, p.rf_inputResolution, p.rf_resizeMode)
    fz = Featurizer(build_model(spec, weights_dir=p.rf_weightsDir or None), spec, p.run_mbSize,
                    p.run_boFlipAverage, p.run_workers)
    t0 = time.perf_counter()
    feats = fz.featurize_paths([args.data / path for path, _ in every]).features
    t_feat = time.perf_counter() - t0

    print(f"data: {args.data} ({len(every)} images, classes {', '.join(first.classes)})")
    print(f"backbone {spec.backbone} @ {spec.resolution} px, resize {spec.resize_mode}, "
          f"flip-average {p.run_boFlipAverage}, L2 {p.svm_boL2Normalize}; featurized in {t_feat:.0f} s")
    # "CV on train": the SVM's cross-validation accuracy within the training set at the chosen C, the
    # figure to compare settings by (it never sees the test images); the test columns are reported only.
    print(f"{'seed':>4}  {'n_train':>7}  {'n_test':>6}  {'C (CV)':>7}  {'CV on train':>11}  {'overall':>8}  {'class-avg':>9}")
    overall, averaged, cv = [], [], []
    for seed in args.seeds:
        split = make_split(args.data, p.ratioTrainTest, seed, p.imagesSplitBy, check_decode=False)
        tr = [index[path] for path, _ in split.train]
        te = [index[path] for path, _ in split.test]
        svm = LinearSvm(p.svm_CVals, p.svm_boL2Normalize, p.svm_cvFolds, seed).fit(feats[tr], labels[tr])
        m = compute_metrics(svm.decision_function(feats[te]), labels[te], split.classes)
        overall.append(m["overall_accuracy"])
        averaged.append(m["class_averaged_accuracy"])
        cv.append(svm.cv_scores_.get(svm.C_, float("nan")))
        print(f"{seed:>4}  {len(tr):>7}  {len(te):>6}  {svm.C_:>7g}  {100 * cv[-1]:10.2f}%  {100 * overall[-1]:7.2f}%  "
              f"{100 * averaged[-1]:8.2f}%")
    print(f"mean CV accuracy on the training sets {100 * np.mean(cv):.2f}%; "
          f"mean overall test accuracy {100 * np.mean(overall):.2f}% (std {100 * np.std(overall):.2f}), "
          f"class-averaged {100 * np.mean(averaged):.2f}% over seeds {args.seeds}")


if __name__ == "__main__":
    main()
