"""Score a folder of new images with the trained classifier, offline: one line per image in a TSV.

Uses the model of stages 2-4 as stage 5 and the web service do (the network and its SVM, or the
refined network's probabilities for classifier = "dnn"), with the same preprocessing as stage 3.
No web service needed. Files that do not decode are listed (here and on the page) and left out; the
others are scored, and the exit status is then 1, as 6_callWebservice.py's (none scored: no output).
A page beside the TSV shows the images grouped by predicted class, the least confident first.

A folder laid out as a data set (sub-folders named after the model's classes, as stage 1 reads
them) is also evaluated, without touching the data set's split: each image's class folder is its
true class, and the metrics stage 5 computes (accuracy, per class, ROC, confusion) are printed and
written beside the TSV as metrics_<folder>.json, roc_<folder>.png and confusion_<folder>.png; the
page then shows the mistakes first (true -> predicted), as stage 5's browser.html. A sub-folder
named after no class of the model (a class it never learnt) is named, and its images are scored
without a label, as are images directly in the folder: they are not counted in the metrics.
"""

import datetime
import os
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np

from imgclass.active import class_in_dataset, class_words, score_with_trained_model
from imgclass.cli import parse_stage, run_stage, stage_parser
from imgclass.data import (FolderLabels, find_split_folders, folder_labels, list_folder_images, name_problem,
                           skipped_below, skipped_note, unread_images_note)
from imgclass.evaluate import (compute_metrics, few_test_images_notes, format_confusions, format_table, majority_note,
                               plot_confusion, plot_roc, write_browser, write_predictions)
from imgclass.fileio import write_json
from imgclass.params import Params
from imgclass.provenance import StaleFilesError, file_hash
from imgclass.terminal import first_few, ljust, name_column

parser = stage_parser(
    __doc__.splitlines()[0],
    reads="FOLDER of images (or one image), proc/<datasetName>/model_*.pt, svm_*.npz and features_<kind>_train.npz (mirror averaging, provenance)",
    writes="results/<datasetName>/<classifier>/scores_<folder name>.tsv (or --out): image, predicted class, "
           "one score per class; beside it, the same name .html: the images by predicted class. A FOLDER with "
           "sub-folders named after the model's classes is evaluated too: a true class column in the TSV, the page "
           "with the mistakes first, and beside them metrics_<folder>.json, roc_<folder>.png, confusion_<folder>.png "
           "(with --out NAME.tsv: metrics_NAME.json, ...)",
)
parser.add_argument("folder", help="folder of images to score (searched recursively), or one image file; laid out "
                    "as a data set (FOLDER/<class>/...jpg, classes named as the model's), each image's class folder "
                    "is its true class, and the classifier is evaluated on them as stage 5 does (a folder named after "
                    "no class of the model is named and its images scored without a label)")
parser.add_argument("--out", default=None, help="TSV to write (default: results/<datasetName>/<classifier>/scores_<folder>.tsv, "
                    "scores_<image name>.tsv for one image)")


def main() -> int:
    args, p = parse_stage(parser)
    if args.out and Path(args.out).suffix.lower() in (".html", ".htm"):
        # The page is written beside the TSV under the same name with .html: it would overwrite it.
        parser.error(f"--out {args.out}: name the TSV (e.g. scores.tsv); the page goes beside it as .html")
    if args.out and Path(args.out).is_dir():
        # Said before scoring: after it, the TSV's rename onto the folder ended in an IsADirectoryError traceback.
        parser.error(f"--out {args.out}: a folder; name the TSV to write in it (e.g. {Path(args.out) / 'scores.tsv'})")
    if args.out and (where := Path(args.out).absolute().parent).is_dir() and not os.access(where, os.W_OK):
        # Also said before scoring, which may take an hour, rather than at the first write after it.
        parser.error(f"--out {args.out}: the folder {where} is not writable by this user; name a TSV in a writable one")
    target = Path(args.folder)
    left_out: list[tuple[str, str]] = []
    if target.is_file():  # one photo: scored where it lies, its name for the output's
        if bad := name_problem(target.name):  # no output file could hold it, as in a folder
            raise ValueError(f"{bad[0]}: {bad[1]}")
        folder, rel, name = target.parent, [target.name], target.stem
    elif target.is_dir():
        folder, rel, name = target, list_folder_images(target, left_out), target.resolve().name
        if skipped := skipped_below(folder):
            print(f"note: not scored (folders starting with _ are skipped, as stage 1 skips them): {skipped_note(skipped)}")
        if unread := unread_images_note(folder, "scored"):
            print(f"note: {unread}")
    else:
        raise FileNotFoundError(f"{target}: no such file or folder")
    for shown_name, problem in left_out:
        print(f"left out: {shown_name}: {problem}")
    if not rel:
        raise FileNotFoundError(f"{folder}: no image files in this folder" + (" that can be scored" if left_out else ""))
    scored = score_with_trained_model([folder / r for r in rel], p)
    for path, problem in scored.failed:
        left_out.append((path.relative_to(folder).as_posix(), problem))
        print(f"left out: {left_out[-1][0]}: {problem}")
    if not scored.paths:  # nothing to write: an empty table and page would read as a result
        raise ValueError(f"{target}: none of its {len(left_out)} image file(s) could be scored (reasons above)")
    out = Path(args.out) if args.out else p.results_dir / f"scores_{name}.tsv"
    names = [path.relative_to(folder).as_posix() for path in scored.paths]
    truth = folder_labels(folder, names, scored.classes) if target.is_dir() else None
    if truth is None and target.is_dir() and find_split_folders(folder) is not None:
        print(f"note: {folder} is split in advance (train/ and test/ folders): scored without labels; to evaluate "
              "the classifier on its class folders, give the test folder itself")
    # The metrics' files, beside the TSV: metrics_<folder>.json for scores_<folder>.tsv, metrics_X.json for --out X.tsv.
    tag = out.stem.removeprefix("scores_") or out.stem
    if tag.casefold() == "train":
        # metrics_train.json, roc_train.png, confusion_train.png are stage 5 --on train's, in the same
        # results folder (a case-blind file system reads Train as train): a folder named train/ would
        # overwrite them, or delete them as an earlier run's when scored unlabelled.
        tag = f"scores_{tag}"
    evaluated = {kind: out.with_name(f"{kind}_{tag}{ext}")
                 for kind, ext in (("metrics", ".json"), ("roc", ".png"), ("confusion", ".png"))}
    # Written last, removed first (as stage 5's metrics.json): an interrupted run, or a run on the folder
    # no longer laid out by class, leaves none that would read as this run's.
    earlier = [f.name for f in evaluated.values() if f.is_file()]
    evaluated["metrics"].unlink(missing_ok=True)
    labels = None
    if truth is not None:
        describe_labels(truth, folder, scored.classes)
        if truth.n_labelled:
            labels = np.array(truth.labels)
        else:
            print("note: no image of a class folder could be scored: no metrics")
    if labels is None:
        for f in evaluated.values():
            f.unlink(missing_ok=True)
        if earlier:
            print(f"note: removed {', '.join(earlier)} of an earlier run: this one scored no labelled image")
    write_predictions(out, names, labels, scored.scores, scored.classes)
    score_kind = "probability" if scored.probabilities else "svm_decision"
    title = f"{name}: scored by {p.classifier} of {p.datasetName}"
    metrics = None
    if labels is not None:
        known = labels >= 0
        metrics = evaluation(p, folder, truth, compute_metrics(scored.scores[known], labels[known], scored.classes))
        # Copies of the data set's photos: the classifier may have learnt them, and they flatter the figures.
        index: dict = {}
        copies = [(names[i], there) for i in np.flatnonzero(known)
                  if (there := class_in_dataset(scored.paths[i], p.images_dir, index)) is not None]
        metrics["in_dataset"] = len(copies)
        plot_roc(scored.scores[known], labels[known], scored.classes, evaluated["roc"], title=f"ROC: {title}")
        plot_confusion(metrics["confusion_matrix"], scored.classes, evaluated["confusion"],
                       title=f"Confusion: {title}", counts_file=evaluated["metrics"].name)
    page = write_browser(out.with_suffix(".html"), folder, names, labels, scored.scores, scored.classes,
                         title=title if labels is None else f"{title}, against its class folders",
                         score_kind=score_kind, left_out=left_out, progress=True,
                         figures=[] if labels is None else [evaluated["roc"], evaluated["confusion"]])
    if metrics is not None:
        write_json(evaluated["metrics"], metrics)
    counts = Counter(scored.classes[i] for i in scored.scores.argmax(axis=1))
    print(f"{len(names)} image{'' if len(names) == 1 else 's'} scored with {p.classifier} of {p.datasetName}:")
    shown, width = name_column(scored.classes, at_least=15)
    print(f"  {ljust('predicted', width)} {'images':>6}")
    for c in scored.classes:
        print(f"  {ljust(shown[c], width)} {counts[c]:>6}")
    if metrics is not None:
        print(f"against their class folders ({metrics['n_labelled']} labelled image(s)):")
        print(format_table(metrics))
        if mistakes := format_confusions(metrics):
            print(mistakes)
        notes = [*few_test_images_notes(metrics, "labelled"), *filter(None, [majority_note(metrics, [])])]
        if copies:
            copy, (c, there) = copies[0]
            notes.append(f"{len(copies)} of the {metrics['n_labelled']} labelled images are in the data set already "
                         f"(the same file content, e.g. {copy} as {there.relative_to(p.images_dir).as_posix()}, {class_words(c)}): "
                         "the classifier may have been trained on them, so these figures may be better than on "
                         "new photos; remove them from FOLDER to measure new photos alone")
        for note in notes:
            print(f"note: {note}")
        print(f"wrote {out}, {page} (the mistakes first: true -> predicted), {evaluated['metrics'].name}, "
              f"{evaluated['roc'].name} and {evaluated['confusion'].name}")
    else:
        print(f"wrote {out} and {page} (the images by predicted class, least confident first)")
    if left_out:  # as 6_callWebservice.py: a script or cron job running this can tell
        print(f"{len(left_out)} file(s) not scored (listed above and on the page): exit status 1")
        return 1
    return 0


def describe_labels(truth: FolderLabels, folder: Path, classes: list[str]) -> None:
    """Say which images have no true class, and why: a class folder the model does not know (it never
    learnt the class, or the name differs), or no class folder at all."""
    for sub, n in truth.unknown.items():
        folded = unicodedata.normalize("NFC", sub).casefold()  # as folder_labels compares: one Unicode form
        alike = [c for c in classes if unicodedata.normalize("NFC", c).casefold() == folded]
        print(f"note: {sub}/ ({n} image{'' if n == 1 else 's'}): no class of the model is named {sub!r}"
              + (f" (it has {alike[0]!r}: names must match exactly)" if alike else f" (its classes: {first_few(classes, 10)})")
              + ": scored without a label, not counted in the metrics")
    if truth.outside:
        print(f"note: {truth.outside} image(s) directly in {folder}, in no class folder: scored without a label, "
              "not counted in the metrics")


def evaluation(p: Params, folder: Path, truth: FolderLabels, metrics: dict) -> dict:
    """metrics_<folder>.json: compute_metrics' figures (as stage 5's metrics.json) with what was scored
    and by which classifier, so that a file found later says what it measured."""
    return {
        "dataset": p.datasetName,
        "classifier": p.classifier,
        "folder": str(folder.resolve()),
        "n_labelled": truth.n_labelled,
        "not_labelled": {"unknown_class_folders": truth.unknown, "outside_class_folders": truth.outside},
        **metrics,
        "provenance": {"model_file_hash": file_hash(p.model_path),
                       "svm_file_hash": file_hash(p.svm_path) if p.classifier != "dnn" else ""},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


if __name__ == "__main__":
    run_stage(main, (StaleFilesError,))
