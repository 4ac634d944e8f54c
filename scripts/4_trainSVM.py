"""Stage 4: train a linear SVM on the training features, choosing C by cross-validation on them."""

from imgclass.cli import parse_stage, run_stage, stage_parser
from imgclass.fileio import load_npz, require_file
from imgclass.provenance import StaleFilesError, check_same_source
from imgclass.svm import LinearSvm

parser = stage_parser(
    __doc__.splitlines()[0],
    reads="DATA_DIR/proc/<datasetName>/features_<fixed|refined>_train.npz",
    writes="DATA_DIR/proc/<datasetName>/svm_<fixed|refined>.npz",
)


def main() -> int:
    _, p = parse_stage(parser)
    if p.classifier == "dnn":
        print("classifier = 'dnn' scores with the refined network itself: no SVM to train.")
        return 0
    train = load_npz(require_file(p.features_path("train"), "scripts/3_runDNN.py"))
    check_same_source(require_file(p.model_path, "scripts/2_refineDNN.py"), p.features_path("train"),
                      split_file=require_file(p.split_path, "scripts/1_prepareData.py"))
    classes = [str(c) for c in train["classes"]]
    svm = LinearSvm.from_params(p, progress=True)
    svm.features_source = str(train["features_source"]) if "features_source" in train else ""
    svm.split_hash = str(train["split_hash"]) if "split_hash" in train else ""
    svm.fit(train["features"], train["labels"], n_classes=len(classes))
    if svm.cv_scores_:
        kind = "class-averaged accuracy" if svm.balance_classes else "accuracy"
        print(f"cross-validation {kind} on the training set ({svm.cv_folds} folds at most):")
    for c, score in svm.cv_scores_.items():
        mark = "  <- chosen" if c == svm.C_ else ""
        print(f"  C = {c:<8g} {100 * score:6.2f}%{mark}")
    if svm.cv_note_:
        print(f"note: {svm.cv_note_}")
    out = svm.save(p.svm_path, classes)
    print(f"wrote {out} (C = {svm.C_:g}, {len(train['labels'])} training images)")
    return 0


if __name__ == "__main__":
    run_stage(main, (StaleFilesError,))
