"""Score a folder of new images with the trained classifier, offline: one line per image in a TSV.

Uses the model of stages 2-4 as stage 5 and the web service do (the network and its SVM, or the
refined network's probabilities for classifier = "dnn"), with the same preprocessing as stage 3.
No web service needed. Files that do not decode are listed (here and on the page) and left out; the
others are scored, and the exit status is then 1, as 6_callWebservice.py's (none scored: no output).
A page beside the TSV shows the images grouped by predicted class, the least confident first.
"""

from collections import Counter
from pathlib import Path

from imgclass.active import score_with_trained_model
from imgclass.cli import parse_stage, run_stage, stage_parser
from imgclass.data import list_folder_images, name_problem, skipped_below, skipped_note, unread_images_note
from imgclass.evaluate import write_browser, write_predictions
from imgclass.provenance import StaleFilesError
from imgclass.terminal import ljust, name_column

parser = stage_parser(
    __doc__.splitlines()[0],
    reads="FOLDER of images (or one image), proc/<datasetName>/model_*.pt, svm_*.npz and features_<kind>_train.npz (mirror averaging, provenance)",
    writes="results/<datasetName>/<classifier>/scores_<folder name>.tsv (or --out): image, predicted class, "
           "one score per class; beside it, the same name .html: the images by predicted class",
)
parser.add_argument("folder", help="folder of images to score (searched recursively), or one image file")
parser.add_argument("--out", default=None, help="TSV to write (default: results/<datasetName>/<classifier>/scores_<folder>.tsv, "
                    "scores_<image name>.tsv for one image)")


def main() -> int:
    args, p = parse_stage(parser)
    if args.out and Path(args.out).suffix.lower() in (".html", ".htm"):
        # The page is written beside the TSV under the same name with .html: it would overwrite it.
        parser.error(f"--out {args.out}: name the TSV (e.g. scores.tsv); the page goes beside it as .html")
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
    write_predictions(out, names, None, scored.scores, scored.classes)
    page = write_browser(out.with_suffix(".html"), folder, names, None, scored.scores, scored.classes,
                         title=f"{name}: scored by {p.classifier} of {p.datasetName}",
                         score_kind="probability" if scored.probabilities else "svm_decision", left_out=left_out,
                         progress=True)
    counts = Counter(scored.classes[i] for i in scored.scores.argmax(axis=1))
    print(f"{len(names)} image{'' if len(names) == 1 else 's'} scored with {p.classifier} of {p.datasetName}:")
    shown, width = name_column(scored.classes, at_least=15)
    print(f"  {ljust('predicted', width)} {'images':>6}")
    for c in scored.classes:
        print(f"  {ljust(shown[c], width)} {counts[c]:>6}")
    print(f"wrote {out} and {page} (the images by predicted class, least confident first)")
    if left_out:  # as 6_callWebservice.py: a script or cron job running this can tell
        print(f"{len(left_out)} file(s) not scored (listed above and on the page): exit status 1")
        return 1
    return 0


if __name__ == "__main__":
    run_stage(main, (StaleFilesError,))
