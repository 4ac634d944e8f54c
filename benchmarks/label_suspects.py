"""How well stage 4's label check finds wrong labels: plant some in a real data set and look.

    python benchmarks/label_suspects.py [--data ../shared/datasets/fashionTexture] [--seeds 0 1 2]
                                        [--wrong 0.03] [--set NAME=VALUE ...]

Every image is featurized once with the parameters of PARAMETERS.py (overridable with --set), as
stage 3 does. Per seed: the split of stage 1, then a fraction `--wrong` of the training images gets
another class at random (the labels only: no file is touched), stage 4's SVM is fitted and its
suspects listed (imgclass.suspects). Printed per seed: how many planted labels are among the
suspects at all, and among the first 2x as many as were planted (what a user looks through), and
how many suspects there are in all (the rest are the data set's hard photos, or its own label slips).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from imgclass.data import make_split
from imgclass.features import Featurizer
from imgclass.modelfile import ModelSpec, build_model
from imgclass.params import load_params, parse_overrides
from imgclass.suspects import find_suspects
from imgclass.svm import LinearSvm

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "fashionTexture"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of class folders")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--wrong", type=float, default=0.03, help="fraction of training images given a wrong label")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE")
    args = ap.parse_args()
    if not 0 < args.wrong < 0.5:
        raise SystemExit(f"--wrong {args.wrong}: expected a fraction between 0 and 0.5")
    p = load_params(overrides=parse_overrides(args.overrides))

    first = make_split(args.data, p.ratioTrainTest, args.seeds[0], p.imagesSplitBy)
    every = sorted(first.train + first.test)
    index = {path: i for i, (path, _) in enumerate(every)}
    spec = ModelSpec(p.rf_pretrainedModel, p.rf_inputResolution, p.rf_resizeMode)
    fz = Featurizer(build_model(spec, weights_dir=p.rf_weightsDir or None), spec, p.run_mbSize,
                    p.run_boFlipAverage, p.run_workers)
    t0 = time.perf_counter()
    feats = fz.featurize_paths([args.data / path for path, _ in every]).features
    print(f"data: {args.data} ({len(every)} images, classes {', '.join(first.classes)}); "
          f"{spec.backbone} @ {spec.resolution} px featurized in {time.perf_counter() - t0:.0f} s")
    print(f"{'seed':>4}  {'train':>5}  {'planted':>7}  {'found':>5}  {'in first 2x':>11}  {'suspects':>8}  {'fit s':>5}")
    found_all, found_top, planted_all = 0, 0, 0
    for seed in args.seeds:
        split = make_split(args.data, p.ratioTrainTest, seed, p.imagesSplitBy, check_decode=False)
        rows = np.array([index[path] for path, _ in split.train])
        labels = np.array([y for _, y in split.train])
        rng = np.random.default_rng(seed)
        wrong = rng.choice(len(rows), max(1, round(args.wrong * len(rows))), replace=False)
        k = len(split.classes)
        labels[wrong] = (labels[wrong] + rng.integers(1, k, len(wrong))) % k  # another class, at random
        t0 = time.perf_counter()
        svm = LinearSvm.from_params(p).fit(feats[rows], labels, n_classes=k, classes=split.classes)
        fit_s = time.perf_counter() - t0
        names = [str(i) for i in range(len(rows))]
        suspects = [int(s.image) for s in find_suspects(svm.cv_val_scores_, labels, names, split.classes)]
        planted = set(wrong.tolist())
        found = len(planted & set(suspects))
        top = len(planted & set(suspects[:2 * len(planted)]))
        found_all, found_top, planted_all = found_all + found, found_top + top, planted_all + len(planted)
        print(f"{seed:>4}  {len(rows):>5}  {len(planted):>7}  {found:>5}  {top:>11}  {len(suspects):>8}  {fit_s:>5.1f}")
    print(f"planted labels found: {found_all} of {planted_all} ({100 * found_all / planted_all:.0f}%), "
          f"{found_top} among the first 2x as many suspects ({100 * found_top / planted_all:.0f}%)")


if __name__ == "__main__":
    main()
