"""Label suspects: training images whose cross-validated prediction disagrees with their label.

Stage 4 chooses C by cross-validation, so each training image has been scored once by an SVM that
never saw it. A photo filed under the wrong class is then most often given its true class, with a
clear margin, while the final SVM (which trained on the wrong label) and stage 5 on the training
set (`--on train`) mostly repeat the wrong label back. Stage 4 lists the disagreements, most
confident first, and draws the first of them, for the user to look at and fix in
annotations_fixes.tsv. A suspect is a question, not a verdict: a hard photo of its class disagrees too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgclass.fileio import write_tsv
from imgclass.terminal import name_column, score_text, shorten
from imgclass.svm import ABSENT_SCORE

TSV_COLUMNS = ("image", "predicted", "label", "margin")
SHOWN = 20  # suspects drawn on the contact sheet
# A class with fewer training images than this is learned by each fold's fit from a handful (2 of 3):
# its own photos are disputed for its size, not their labels (60 / 15 / 4 photos a class: the first
# two suspects were 2 of the 3 striped training photos, both plainly striped). They come last.
FEW_IMAGES = 10


@dataclass(frozen=True)
class Suspect:
    image: str  # relative to the data set folder, as annotations_fixes.tsv names images
    label: str  # the class it is filed under (after the fixes file)
    predicted: str  # the class the cross-validation fit that did not see it gave it
    margin: float  # the predicted class's score minus the label's (SVM decision values): > 0


def find_suspects(val_scores: np.ndarray, labels: np.ndarray, images: Sequence[str],
                  classes: Sequence[str]) -> list[Suspect]:
    """The images whose top score in `val_scores` (LinearSvm.cv_val_scores_) is not their label's,
    largest margin first, those filed under a class of fewer than FEW_IMAGES training images after
    the others (`small_classes` names them). An image of a class its fold's fit never saw (a class
    with one training image) cannot be judged and is left out."""
    scores, y = np.asarray(val_scores), np.asarray(labels)
    if scores.shape != (len(images), len(classes)) or len(y) != len(images):
        raise ValueError(f"scores {scores.shape}, {len(y)} labels, {len(images)} images and {len(classes)} classes "
                         "do not match")
    predicted = scores.argmax(axis=1)
    own = scores[np.arange(len(y)), y]
    found = [Suspect(images[i], classes[y[i]], classes[predicted[i]], float(scores[i, predicted[i]] - own[i]))
             for i in np.flatnonzero((predicted != y) & (own > ABSENT_SCORE / 2))]
    few = set(small_classes(y, classes))
    return sorted(found, key=lambda s: (s.label in few, -s.margin, s.image))


def small_classes(labels: np.ndarray, classes: Sequence[str]) -> list[str]:
    """The classes with fewer than FEW_IMAGES (but some) training images among `labels`."""
    counts = np.bincount(np.asarray(labels), minlength=len(classes))
    return [c for c, n in zip(classes, counts) if 0 < n < FEW_IMAGES]


def write_suspects(path: str | Path, suspects: Sequence[Suspect]) -> Path:
    """A TSV of the suspects (TSV_COLUMNS); its first two fields read as a line of annotations_fixes.tsv
    that relabels the image as predicted."""
    return write_tsv(path, TSV_COLUMNS, ((s.image, s.predicted, s.label, f"{s.margin:.4g}") for s in suspects))


def read_suspects(path: str | Path) -> list[Suspect]:
    """The suspects of a file `write_suspects` wrote, in its order."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    if not lines or lines[0].split("\t") != list(TSV_COLUMNS):
        raise ValueError(f"{path}: not a label suspects file written by scripts/4_trainSVM.py (its first line is "
                         f"{chr(9).join(TSV_COLUMNS)!r})")
    out = []
    for n, line in enumerate(lines[1:], 2):
        fields = line.split("\t")
        try:
            out.append(Suspect(fields[0], fields[2], fields[1], float(fields[3])))
        except (IndexError, ValueError):
            raise ValueError(f"{path}, line {n}: expected {len(TSV_COLUMNS)} tab-separated fields, got {line!r}") from None
    return out


def plot_suspects(suspects: Sequence[Suspect], images_dir: str | Path, path: str | Path, shown: int = SHOWN) -> Path:
    """A contact sheet of the first `shown` suspects: file name, label, predicted class and margin."""
    from imgclass.images import contact_sheet

    captions = sheet_captions(suspects[:shown])
    contact_sheet([(Path(images_dir) / s.image, caption) for s, caption in zip(suspects, captions)], path,
                  title=sheet_title(len(suspects), len(captions)))
    return Path(path)


def sheet_title(found: int, shown: int) -> str:
    """What the contact sheet shows, and what its "(+0.7)" is: the PNG is opened on its own, later,
    without stage 4's lines beside it."""
    which = (f"the {shown} most confident of {found}" if shown < found else "1 image" if found == 1
             else f"all {found}, most confident first")
    return (f"Label suspects: training images that cross-validation gave another class ({which})\n"
            "(+x): the score of the class it looks minus that of the class it is filed under. "
            "A wrong label is fixed in annotations_fixes.tsv")


def sheet_captions(suspects: Sequence[Suspect]) -> list[str]:
    """The contact sheet's caption of each suspect: number, file name, class filed under and looked
    like, margin; long names cut short with a "…" in the middle and kept apart (classes that share a
    long beginning, cut at 20 characters, all read the same)."""

    names, _ = name_column(sorted({c for s in suspects for c in (s.label, s.predicted)}), at_most=20)
    return [f"{n}. {shorten(Path(s.image).name, 24)}\nfiled {names[s.label]}\nlooks {names[s.predicted]} "
            f"(+{score_text(s.margin)})" for n, s in enumerate(suspects, 1)]


def label_check(val_scores: np.ndarray | None, labels: np.ndarray, images: Sequence[str], classes: Sequence[str],
                images_dir: str | Path, results_dir: str | Path, refined: bool = False) -> list[str]:
    """Stage 4's label check: write label_suspects.tsv and .png in `results_dir` for the training
    images the cross-validation (`val_scores`, LinearSvm.cv_val_scores_) gives another class, and
    return what to tell the user, line by line. Images whose label the data set's fixes file sets or
    confirms are settled and not listed. `refined`: the features are of a network refined on these
    labels (it learned the wrong ones too). Without cross-validation (None) the files of an earlier
    run are removed: they would pass for this run's."""
    from imgclass.annotations import FIXES_FILE, AnnotationError, read_fixes, unwritable_note

    results_dir, images_dir = Path(results_dir), Path(images_dir)
    tsv, png = results_dir / "label_suspects.tsv", results_dir / "label_suspects.png"
    if val_scores is None:
        for f in (tsv, png):
            f.unlink(missing_ok=True)
        return ["label check: none without cross-validation (see the note above)"]
    found = find_suspects(val_scores, labels, images, classes)
    # A label a person set or confirmed in the fixes file is settled: listing it again at every run
    # would bury the ones still to look at.
    try:
        settled = read_fixes(images_dir)
    except AnnotationError:  # broken since stage 1 read it: every suspect listed (stage 4's notes say why)
        settled = {}
    suspects = [s for s in found if s.image not in settled]
    png.unlink(missing_ok=True)  # an earlier run's sheet; gone first, so that an interrupted run leaves none
    write_suspects(tsv, suspects)
    lines = []
    if n_settled := len(found) - len(suspects):
        lines.append(f"label check: {n_settled} disputed training image(s) not listed: {FIXES_FILE} sets or confirms "
                     "their label")
    if not suspects:
        return lines + [f"label check: the cross-validation gave every {'other ' if n_settled else ''}training image "
                        f"its own class ({tsv})"]
    plot_suspects(suspects, images_dir, png)
    lines.append(f"label check: {len(suspects)} training image(s) given another class by the cross-validation fit "
                 f"that did not see them, most confident first (look at them: a wrong label shows; {tsv}; drawn: the "
                 f"first {min(SHOWN, len(suspects))} in {png}):")
    lines += [f"  {s.image}: filed {s.label}, looks {s.predicted} (margin {score_text(s.margin)})" for s in suspects[:5]]
    lines.append(f"  a wrong label is fixed by the line 'image<TAB>class' (or EXCLUDE) in {images_dir / FIXES_FILE} "
                 "(the TSV's first two fields are that line), then rerun the stages from 1; a right one is confirmed "
                 "by the line 'image<TAB>its own class', and is not listed again")
    if note := unwritable_note(images_dir):
        lines.append(f"  ({note})")
    if refined:
        lines.append("  (the refined network has learned the training labels, wrong ones too: classifier = 'svm' "
                     "finds more of them)")
    small = small_classes(labels, classes)
    few = [c for c in small if any(s.label == c for s in suspects)]
    if few and len(small) < len(classes):  # (every class small: the order is unchanged, and so is the doubt)
        has, its = ("has", "its") if len(few) == 1 else ("have", "their")
        lines.append(f"  note: {', '.join(few)} {has} fewer than {FEW_IMAGES} training images: a fit that left one out "
                     f"learned the class from the few others, so {its} own photos are often disputed for that alone; "
                     f"{its} suspects come last (add images to judge them)")
    return lines


__all__ = ["FEW_IMAGES", "SHOWN", "TSV_COLUMNS", "Suspect", "find_suspects", "label_check", "plot_suspects", "read_suspects",
           "sheet_captions", "sheet_title", "small_classes", "write_suspects"]
