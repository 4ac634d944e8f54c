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
    contact_sheet([(Path(images_dir) / s.image, caption) for s, caption in zip(suspects, captions)], path)
    return Path(path)


def sheet_captions(suspects: Sequence[Suspect]) -> list[str]:
    """The contact sheet's caption of each suspect: number, file name, class filed under and looked
    like, margin; long names cut short with a "…" in the middle and kept apart (classes that share a
    long beginning, cut at 20 characters, all read the same)."""
    from imgclass.terminal import name_column, shorten

    names, _ = name_column(sorted({c for s in suspects for c in (s.label, s.predicted)}), at_most=20)
    return [f"{n}. {shorten(Path(s.image).name, 24)}\nfiled {names[s.label]}\nlooks {names[s.predicted]} "
            f"(+{s.margin:.2f})" for n, s in enumerate(suspects, 1)]


__all__ = ["FEW_IMAGES", "SHOWN", "TSV_COLUMNS", "Suspect", "find_suspects", "plot_suspects", "read_suspects",
           "sheet_captions", "small_classes", "write_suspects"]
