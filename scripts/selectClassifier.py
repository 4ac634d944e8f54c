"""Choose between svm, dnn and svmDnnRefined for YOUR data, on images held out of its training set.

A part (--val-fraction) of each class's training images in split.json (stage 1) is held out; the
network is refined on the rest with PARAMETERS.py's rf_* and aug_* values, as stage 2 would refine
it, and the three classifiers are scored on the held-out images: svm (Part 1, an SVM on the fixed
pretrained features), dnn and svmDnnRefined (Part 2). The test images are never read. The
recommendation is the cheapest classifier within one standard error of the best (svm needs no
refinement; dnn needs no SVM). It takes about as long as stage 2.
"""

import numpy as np

from imgclass.cli import parse_stage, run_stage, stage_parser
from imgclass.data import load_split
from imgclass.fileio import require_file
from imgclass.refine import RefineConfig, plot_history
from imgclass.selection import compare_classifiers, recommend_classifier, write_classifier_table
from imgclass.svm import LinearSvm

parser = stage_parser(
    __doc__.splitlines()[0],
    reads="DATA_DIR/proc/<datasetName>/split.json and the training images",
    writes="DATA_DIR/results/<datasetName>/classifier_selection.tsv and classifier_selection_curves.png",
)
parser.add_argument("--val-fraction", type=float, default=0.2, metavar="F",
                    help="part of each class's training images held out to score the classifiers (default 0.2)")


def main() -> int:
    args, p = parse_stage(parser)
    if not 0 < args.val_fraction < 1:  # said before its summary line ("nan% of each class held out")
        parser.error(f"--val-fraction {args.val_fraction}: expected a number between 0 and 1 (0.2: a fifth of each class)")
    split = load_split(require_file(p.split_path, "scripts/1_prepareData.py"), p.images_dir, sides=("train",))
    paths = [p.images_dir / path for path, _ in split.train]
    labels = np.array([y for _, y in split.train])
    svm = LinearSvm.from_params(p, progress=True)  # minutes of fits per candidate on large data sets
    print(f"{len(paths)} training images of {p.datasetName}; {args.val_fraction:.0%} of each class held out to "
          f"score svm, dnn and svmDnnRefined; the test images are not used; flip averaging "
          f"{'on' if p.run_boFlipAverage else 'off'} (run_boFlipAverage, as stage 3)")
    scores, refiner = compare_classifiers(paths, labels, split.classes, RefineConfig.from_params(p), svm,
                                          args.val_fraction, p.randomSeed, spill_dir=p.proc_dir,
                                          flip_average=p.run_boFlipAverage)
    chosen = recommend_classifier(scores)
    print(f"\n{'classifier':<15} {'held-out accuracy':>19} {'class-averaged':>15}   ({scores[0].n_val} images)")
    for s in scores:
        marks = ("  <- recommended" if s is chosen else "") + \
                ("  (current parameters)" if s.classifier == p.classifier else "")
        print(f"{s.classifier:<15} {100 * s.accuracy:10.2f}% ± {100 * s.stderr:5.2f} "
              f"{100 * s.class_averaged_accuracy:14.2f}%{marks}")
    fit = len(paths) - scores[0].n_val
    capped = 0 < p.rf_maxTrainImages < fit
    refined_on = f"{p.rf_maxTrainImages} (rf_maxTrainImages) of {fit}" if capped else str(fit)
    if capped:
        print(f"note: dnn and svmDnnRefined were refined on {refined_on} images; the svm row's SVM used all {fit}")
    out = p.results_dir.parent
    tsv = write_classifier_table(out / "classifier_selection.tsv", scores)
    if refiner.fallback_ == "pretrained":  # the rows of the two refined classifiers are not of a refined network
        print("note: refining diverged on these images (the warning above): the dnn and svmDnnRefined rows are of the "
              "PRETRAINED network with a last layer fitted on its features, which stage 2 would save in its place; "
              "try the warning's remedies, then compare again")
    elif refiner.fallback_ == "first fit":
        print("note: training the last layer made it worse (the warning above): the dnn row is of the last layer "
              "fitted on the pretrained features, which stage 2 would save in its place")
    png = plot_history(refiner.history_, out / "classifier_selection_curves.png",
                       title=f"{p.datasetName}: refining on {refined_on} training images",
                       held_out="error on the held-out training images")
    print(f"\nrecommended (the cheapest within one standard error of the best): {chosen.classifier}. "
          f"To use it, set in PARAMETERS.py or pass to stages 2-5:\n  --set classifier={chosen.classifier}")
    print(f"wrote {tsv} and {png}")
    return 0


if __name__ == "__main__":
    run_stage(main, (FloatingPointError,))
