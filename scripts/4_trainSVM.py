"""Stage 4: train a linear SVM on the training features, choosing C by cross-validation on them."""

from imgclass.annotations import FIXES_FILE, AnnotationError, read_fixes
from imgclass.cli import do_not_track, parse_stage, run_stage, stage_parser
from imgclass.data import load_split, since_split_notes
from imgclass.featureset import FeatureSet
from imgclass.modelfile import load_model_extra
from imgclass.fileio import require_file
from imgclass.params import Params
from imgclass.provenance import MODEL_SETTINGS, StaleFilesError, check_model_settings, check_same_source
from imgclass.suspects import (
    FEW_IMAGES, SHOWN, Suspect, find_suspects, plot_suspects, small_classes, write_suspects,
)
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
    check_model_settings(train.settings, p, p.features_path("train").name)
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
    if svm.cv_val_scores_ is not None:
        found = find_suspects(svm.cv_val_scores_, train.labels, train.paths, train.classes)
        # A label a person set or confirmed in the fixes file is settled: listing it again at every
        # run would bury the ones still to look at.
        try:
            settled = read_fixes(p.images_dir)
        except AnnotationError:  # broken since stage 1 read it: every suspect listed (the note below says why)
            settled = {}
        listed = [s for s in found if s.image not in settled]
        report_suspects(p, listed, len(found) - len(listed))
        small = small_classes(train.labels, train.classes)
        few = [c for c in small if any(s.label == c for s in listed)]
        if few and len(small) < len(train.classes):  # (every class small: the order is unchanged, and so is the doubt)
            has, its = ("has", "its") if len(few) == 1 else ("have", "their")
            print(f"  note: {', '.join(few)} {has} fewer than {FEW_IMAGES} training images: a fit that left one out "
                  f"learned the class from the few others, so {its} own photos are often disputed for that alone; "
                  f"{its} suspects come last (add images to judge them)")
    else:  # an earlier run's list would pass for this one's (and showImages.ipynb pages through it)
        for f in (p.results_dir / "label_suspects.tsv", p.results_dir / "label_suspects.png"):
            f.unlink(missing_ok=True)
        print("label check: none without cross-validation (see the note above)")
    for note in since_split_notes(load_split(p.split_path), p.images_dir, p.split_path):
        print(f"note: {note}")
    return 0


def report_suspects(p: Params, suspects: list[Suspect], settled: int) -> None:
    """Write and name the training images whose label the cross-validation disputes (`settled` more
    are disputed whose label the fixes file sets or confirms)."""
    tsv, png = p.results_dir / "label_suspects.tsv", p.results_dir / "label_suspects.png"
    write_suspects(tsv, suspects)
    if settled:
        print(f"label check: {settled} disputed training image(s) not listed: {FIXES_FILE} sets or confirms their "
              "label")
    if not suspects:
        png.unlink(missing_ok=True)  # an earlier run's sheet would show images no longer disputed
        print(f"label check: the cross-validation gave every {'other ' if settled else ''}training image its own "
              f"class ({tsv})")
        return
    plot_suspects(suspects, p.images_dir, png)
    print(f"label check: {len(suspects)} training image(s) given another class by the cross-validation fit that "
          f"did not see them, most confident first (look at them: a wrong label shows; {tsv}; drawn: the first "
          f"{min(SHOWN, len(suspects))} in {png}):")
    for s in suspects[:5]:
        print(f"  {s.image}: filed {s.label}, looks {s.predicted} (margin {s.margin:.2f})")
    print(f"  a wrong label is fixed by the line 'image<TAB>class' (or EXCLUDE) in {p.images_dir / FIXES_FILE} "
          "(the TSV's first two fields are that line), then rerun the stages from 1; a right one is confirmed by "
          "the line 'image<TAB>its own class', and is not listed again")
    if p.model_kind == "refined" and not load_model_extra(p.model_path).get("collapse_note"):
        # (Not where stage 2 saved the pretrained network in place of a diverged one: nothing was learned.)
        print("  (the refined network has learned the training labels, wrong ones too: classifier = 'svm' "
              "finds more of them)")


if __name__ == "__main__":
    run_stage(main, (StaleFilesError,))
