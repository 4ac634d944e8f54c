"""Active learning: score a folder of unlabelled images, ask for the labels of the most uncertain ones.

The current model (stages 2-4: network and SVM, or the refined network for classifier = "dnn")
ranks the images by al_criterion; the al_numImages most uncertain are listed, drawn, and asked for
one by one (class number or name, s = skip, q = quit). Labelled images are COPIED into
DATA_DIR/images/<datasetName>/<class>/; rerun stages 1-5 to train on them.
"""


from imgclass.active import label_interactively, plot_candidates, score_images, unlabelled_images, write_candidates
from imgclass.cli import parse_stage, run_stage, stage_parser
from imgclass.fileio import require_file
from imgclass.provenance import StaleFilesError, check_model_and_svm, flip_average_of_stage3

parser = stage_parser(
    __doc__.splitlines()[0],
    reads="FOLDER of unlabelled images, proc/<datasetName>/model_*.pt and svm_*.npz",
    writes="images/<datasetName>/<class>/ (copies), proc/<datasetName>/active_learning.tsv (answers), "
           "results/<datasetName>/<classifier>/active_learning_candidates.{tsv,png}",
)
parser.add_argument("folder", help="folder of unlabelled images (searched recursively)")
parser.add_argument("--no-prompt", action="store_true", help="only list and draw the candidates; ask nothing")


def main() -> int:
    args, p = parse_stage(parser)
    log = p.proc_dir / "active_learning.tsv"
    paths = unlabelled_images(args.folder, log)
    if not paths:
        print(f"no unlabelled images left in {args.folder} (answers so far: {log})")
        return 0
    model = require_file(p.model_path, "scripts/2_refineDNN.py")
    svm = None if p.classifier == "dnn" else require_file(p.svm_path, "scripts/4_trainSVM.py")
    if svm is not None:
        check_model_and_svm(model, p.features_path("train"), svm)
    flip = flip_average_of_stage3(p.features_path("train"), p.run_boFlipAverage)  # as the SVM was trained
    scored = score_images(paths, model, svm, batch_size=p.run_mbSize, flip_average=flip, workers=p.run_workers,
                          export_dir=p.feature_cache_dir)
    for path, problem in scored.failed:
        print(f"left out: {path}: {problem}")
    cands = scored.candidates(p.al_numImages, p.al_criterion)
    out = p.results_dir
    tsv = write_candidates(out / "active_learning_candidates.tsv", cands, scored.classes, p.al_criterion)
    png = out / "active_learning_candidates.png"
    plot_candidates(cands, scored.classes, png)
    print(f"{len(paths)} unlabelled images scored; the {len(cands)} most uncertain by {p.al_criterion!r}: {tsv}, {png}")
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
