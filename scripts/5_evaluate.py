"""Stage 5: score the test set (or the training set) and report accuracy, ROC curves and confusion."""

import datetime
from pathlib import Path

from imgclass.cli import parse_stage, run_stage, stage_parser
from imgclass.data import balancing_off, load_split, since_split_notes, test_image_hint
from imgclass.evaluate import (compute_metrics, few_test_images_notes, format_confusions, format_table, majority_note,
                               plot_confusion, plot_roc, write_browser, write_predictions)
from imgclass.featureset import FeatureSet, changed_images_note
from imgclass.fileio import read_json, require_file, write_json
from imgclass.provenance import (MODEL_SETTINGS, StaleFilesError, check_features_settings, check_model_settings,
                                 check_same_source, check_split_settings, file_hash, unrecorded_note)
from imgclass.svm import LinearSvm

parser = stage_parser(
    __doc__.splitlines()[0],
    reads="DATA_DIR/proc/<datasetName>/split.json, model_*.pt, features_*.npz and svm_*.npz",
    writes="DATA_DIR/results/<datasetName>/<classifier>/: metrics.json, roc.png, confusion.png, predictions.tsv, browser.html (+ browser_thumbs/); with --on train: the same names with _train",
)
parser.add_argument("--on", choices=("test", "train"), default=None, help="which side to score (default: eval_set)")


def main() -> int:
    args, p = parse_stage(parser)
    side = args.on or p.eval_set
    p.require_stage_outputs(features=dict.fromkeys([side, "train"]), svm=p.classifier != "dnn")
    data = FeatureSet.load(p.features_path(side), made_with_keys=MODEL_SETTINGS)
    n_train = len(data) if side == "train" else len(FeatureSet.load(p.features_path("train")))
    classes, labels = data.classes, data.labels
    extra = {}
    svm = None if p.classifier == "dnn" else LinearSvm.load(p.svm_path)
    check_same_source(p.require_model(), p.features_path(side),
                      svm.features_source if svm else "", str(p.svm_path) if svm else "",
                      split_file=require_file(p.split_path, "scripts/1_prepareData.py"),
                      svm_split_hash=svm.split_hash if svm else "", svm_classes=svm.classes if svm else (),
                      train_features=p.features_path("train"))
    # Stage 3 records the network it used; older files do not (then the parameters are reported).
    made_with = data.made_with
    split = load_split(p.split_path)
    check_split_settings(split.settings, p, p.split_path.name)  # the first of the stages to rerun, named first
    check_features_settings(data, p, p.features_path(side).name)
    if svm is not None:  # or the run history would credit these results to SVM settings not used
        check_model_settings(svm.settings(), p, p.svm_path.name, rerun="scripts/4_trainSVM.py")
    if svm is None:
        if data.probs is None:
            raise ValueError(f"{p.features_path(side)} has no class probabilities: rerun stages 2 and 3 with classifier = 'dnn'")
        scores = data.probs
    else:
        scores = svm.decision_function(data.features)
        extra["svm_C"] = svm.C_
    metrics = {
        "dataset": p.datasetName,
        "classifier": p.classifier,
        "backbone": made_with.get("rf_pretrainedModel", p.rf_pretrainedModel),
        "resolution": int(made_with.get("rf_inputResolution", p.rf_inputResolution)),
        "eval_set": side,
        "n_train": n_train,
        "n_test": len(labels) if side == "test" else None,
        **compute_metrics(scores, labels, classes),
        **extra,
        # What was evaluated, so that stage 6 embeds these metrics only in a bundle of the same files.
        "provenance": {"features_source": data.source,
                       "svm_file_hash": file_hash(p.svm_path) if svm else ""},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    out = p.results_dir
    suffix = "" if side == "test" else "_train"
    title = f"{p.datasetName} / {p.classifier} / {side}"
    # metrics.json goes first and comes back last: an interrupted run leaves none, rather than the
    # earlier model's beside this one's plots (stage 6 and compareRuns read it as the results).
    (out / f"metrics{suffix}.json").unlink(missing_ok=True)
    plot_roc(scores, labels, classes, out / f"roc{suffix}.png", title=f"ROC: {title}")
    # With too many classes for counts in the cells, its title sends the reader to the metrics file.
    plot_confusion(metrics["confusion_matrix"], classes, out / f"confusion{suffix}.png", title=f"Confusion: {title}",
                   counts_file=f"metrics{suffix}.json")
    paths = data.paths
    write_predictions(out / f"predictions{suffix}.tsv", paths, labels, scores, classes)
    write_browser(out / f"browser{suffix}.html", p.images_dir, paths, labels, scores, classes, title=title,
                  score_kind="svm_decision" if svm else "probability", progress=True,
                  figures=[out / f"roc{suffix}.png", out / f"confusion{suffix}.png"])
    write_json(out / f"metrics{suffix}.json", metrics)
    print(format_table(metrics))
    if mistakes := format_confusions(metrics):
        print(mistakes)
    balancing = balancing_off(p.classifier, p.as_dict())  # the switches the classifier uses that are off
    notes = [*few_test_images_notes(metrics, side, test_image_hint(split)), *filter(None, [majority_note(metrics, balancing)]),
             *since_split_notes(split, p.images_dir, p.split_path),
             *filter(None, [changed_images_note(data, p.images_dir, side), other_side_note(out, side, metrics),
                            unrecorded_note(data.made_with, p.features_path(side).name, "scripts/3_runDNN.py")])]
    for note in notes:
        print(f"note: {note}")
    print(f"results in {out}: metrics{suffix}.json, roc{suffix}.png, confusion{suffix}.png, "
          f"predictions{suffix}.tsv, browser{suffix}.html (open it in a web browser: the {side} images with "
          "their scores)")
    return 0


def other_side_note(out: Path, side: str, metrics: dict) -> str | None:
    """A note when the other side's results beside these (written by an earlier run of this stage)
    are of another model or SVM: stage 2 or 4 ran again since, and they sit there as if current."""
    other, suffix = ("train", "_train") if side == "test" else ("test", "")
    path = out / f"metrics{suffix}.json"
    try:
        before = read_json(path).get("provenance")
    except (OSError, ValueError, AttributeError):  # none, or not ours: nothing to compare
        return None
    if before is None or before == metrics["provenance"]:
        return None
    return (f"the {other} side's results in {out} ({path.name}, predictions{suffix}.tsv, browser{suffix}.html, ...) "
            f"are of an earlier model or SVM: rerun this stage with --on {other} to bring them up to date")


if __name__ == "__main__":
    run_stage(main, (StaleFilesError,), on_interrupt="metrics.json (metrics_train.json with --on train) is written "
                                                    "last, so there is none now; the other result files may be of the "
                                                    "earlier run: rerun the stage")
