"""Stage 4: train a linear SVM on the training features, choosing C by cross-validation on them."""

from pathlib import Path

from imgclass.cli import do_not_track, parse_stage, run_stage, stage_parser
from imgclass.data import load_split, since_split_notes
from imgclass.featureset import FeatureSet, changed_images_note
from imgclass.fileio import require_file
from imgclass.provenance import (MODEL_SETTINGS, StaleFilesError, check_features_settings, check_same_source,
                                 check_split_settings, unrecorded_note)
from imgclass.suspects import label_check
from imgclass.svm import LinearSvm

parser = stage_parser(
    __doc__.splitlines()[0],
    reads="DATA_DIR/proc/<datasetName>/features_<fixed|refined>_train.npz (and split.json and "
          "model_<fixed|refined>.pt, to check they belong together)",
    writes="DATA_DIR/proc/<datasetName>/svm_<fixed|refined>.npz, and DATA_DIR/results/<datasetName>/<classifier>/"
           "label_suspects.tsv and .png (training images the cross-validation gave another class)",
)


def main() -> int:
    _, p = parse_stage(parser)
    if p.classifier == "dnn":
        print("classifier = 'dnn' scores with the refined network itself: no SVM to train. (The label check, "
              "label_suspects.tsv, comes with an SVM: stages 2-4 with --set classifier=svm list the training "
              "images that look like another class.)")
        do_not_track()  # it did nothing: recorded, it would start a run of its own with no results
        return 0
    p.require_stage_outputs(features=["train"])
    train = FeatureSet.load(p.features_path("train"), made_with_keys=MODEL_SETTINGS)
    check_same_source(p.require_model(), p.features_path("train"),
                      split_file=require_file(p.split_path, "scripts/1_prepareData.py"))
    # Before the SVM is written: a network setting changed and stage 2 forgotten is refused here, not at stage 5.
    split = load_split(p.split_path)
    check_split_settings(split.settings, p, p.split_path.name)  # the first of the stages to rerun, named first
    check_features_settings(train, p, p.features_path("train").name)
    svm = LinearSvm.from_params(p, progress=True)
    svm.features_source, svm.split_hash = train.source, train.split_hash
    svm.fit(train.features, train.labels, n_classes=len(train.classes), classes=train.classes)
    if svm.cv_scores_:
        kind = "class-averaged accuracy" if svm.balance_classes else "accuracy"
        folds = f"{svm.cv_folds_used_} folds"
        if svm.cv_folds_limited_by_:  # a fold needs an image of every class: the smallest class sets the limit
            folds += (f", not svm_cvFolds = {svm.cv_folds}: {svm.cv_folds_limited_by_} has {svm.cv_folds_used_} "
                      "training images")
        print(f"cross-validation {kind} on the training set ({folds}):")
    for c, score in svm.cv_scores_.items():
        mark = "  <- chosen" if c == svm.C_ else ""
        print(f"  C = {c:<8g} {100 * score:6.2f}%{mark}")
    if svm.cv_note_:
        print(f"note: {svm.cv_note_}")
    out = svm.save(p.svm_path, train.classes)
    print(f"wrote {out} (C = {svm.C_:g}, {len(train)} training images)")
    # (Not where stage 2 saved the pretrained network in place of a diverged one: nothing was learned.)
    refined = p.model_kind == "refined" and not _collapsed(p.model_path)
    for line in label_check(svm.cv_val_scores_, train.labels, train.paths, train.classes, p.images_dir,
                            p.results_dir, refined):
        print(line)
    for note in [*since_split_notes(split, p.images_dir, p.split_path),
                 *filter(None, [changed_images_note(train, p.images_dir, "training"),
                                unrecorded_note(train.made_with, p.features_path("train").name, "scripts/3_runDNN.py")])]:
        print(f"note: {note}")
    return 0


def _collapsed(model_path: Path) -> bool:
    """Whether stage 2 saved the pretrained network for a refinement that diverged."""
    from imgclass.modelfile import load_model_extra  # torch: 2 s of a stage of seconds, for refined models only

    return bool(load_model_extra(model_path).get("collapse_note"))


if __name__ == "__main__":
    run_stage(main, (StaleFilesError,))
