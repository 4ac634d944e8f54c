"""Active learning: score a folder of unlabelled images, ask for the labels of the most uncertain ones.

The current model (stages 2-4: network and SVM, or the refined network for classifier = "dnn")
ranks the images by al_criterion; the al_numImages most uncertain are listed, drawn, and asked for
one by one (class number or name, s = skip, q = quit). Labelled images are COPIED into
DATA_DIR/images/<datasetName>/<class>/ (train/<class>/ in a data set split in advance); rerun stages 1-5 to train on them. Answers are logged in
proc/<datasetName>/active_learning.tsv by image content, so an answered image is not asked again
even after FOLDER is moved or renamed.
"""


from pathlib import Path

from imgclass.active import (class_words, label_interactively, plot_candidates, score_with_trained_model, unlabelled_images,
                             write_candidates)
from imgclass.cli import parse_stage, run_stage, stage_parser
from imgclass.provenance import StaleFilesError

parser = stage_parser(
    __doc__.splitlines()[0],
    reads="FOLDER of unlabelled images, proc/<datasetName>/model_*.pt, svm_*.npz and features_<kind>_train.npz (mirror averaging, provenance)",
    writes="images/<datasetName>/<class>/ (copies), proc/<datasetName>/active_learning.tsv (answers), "
           "results/<datasetName>/<classifier>/active_learning_candidates.{tsv,png}",
)
parser.add_argument("folder", help="folder of unlabelled images (searched recursively)")
parser.add_argument("--no-prompt", action="store_true", help="only list and draw the candidates; ask nothing")


def main() -> int:
    args, p = parse_stage(parser)
    log = p.proc_dir / "active_learning.tsv"
    left_out: list[tuple[str, str]] = []
    known: list[tuple[Path, str, Path]] = []
    earlier: list[Path] = []
    paths = unlabelled_images(args.folder, log, left_out, p.images_dir, known, earlier)
    for name, problem in left_out:
        print(f"left out: {name}: {problem}")
    if earlier:
        print(f"{len(earlier)} image(s) answered in an earlier round (labelled or skipped, {log.name}): not asked again")
    if known:
        image, cls, there = known[0]
        print(f"{len(known)} image(s) already in the data set (the same file content, e.g. {image.name} = "
              f"{there.relative_to(p.images_dir).as_posix()}, {class_words(cls)}): not scored, not asked")
    if not paths:
        print(f"no unlabelled images left in {args.folder} (answers so far: {log})")
        return 0
    scored = score_with_trained_model(paths, p)
    for path, problem in scored.failed:
        print(f"left out: {path}: {problem}")
    cands = scored.candidates(p.al_numImages, p.al_criterion)
    out = p.results_dir
    tsv = write_candidates(out / "active_learning_candidates.tsv", cands, scored.classes, p.al_criterion)
    png = out / "active_learning_candidates.png"
    plot_candidates(cands, scored.classes, png)
    print(f"{len(scored.paths)} unlabelled images scored; the {len(cands)} most uncertain by {p.al_criterion!r}: {tsv}, {png}")
    if args.no_prompt:
        for n, c in enumerate(cands, 1):
            print(f"  {n:>3}. {c.path}  " + ", ".join(f"{k} {s:.3g}" for k, s in c.ranked(scored.classes)))
        return 0
    copied = label_interactively(cands, scored.classes, p.images_dir, log)
    print(f"copied {len(copied)} labelled image(s) into {p.images_dir}; answers logged in {log}")
    if copied:
        print("rerun scripts/1_prepareData.py ... 5_evaluate.py to train and evaluate with them")
    return 0


if __name__ == "__main__":
    run_stage(main, (StaleFilesError,))
