"""Accuracy figures, ROC curves and the confusion matrix, as the tutorial defines them.

- overall accuracy: the fraction of images whose top-scoring class is right;
- class-averaged accuracy: the mean of the per-class accuracies (recalls), so a large class cannot
  hide a poorly recognised small one;
- per class: accuracy (the tutorial's name for recall: the fraction of the class's images found),
  precision (the fraction of the images given the class that are of it: where a class is answered
  too readily, its accuracy looks fine and its precision tells), number of images and the
  one-vs-rest ROC AUC of that class's score; the mean of the AUCs is the class-averaged AUC.
"""

from __future__ import annotations

import hashlib
import html
import math
import os
import re
import urllib.parse
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: stages run from shells and servers without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import auc, roc_curve  # noqa: E402

from imgclass.cpus import usable_cpus  # noqa: E402
from imgclass.fileio import atomic_open, atomic_path, save_figure  # noqa: E402
from imgclass.fonts import lay_out  # noqa: E402
from imgclass.images import header_size, load_rgb  # noqa: E402
from imgclass.progress import progress_bar  # noqa: E402
from imgclass.terminal import auc_text, display_width, ljust, name_column, percent_text, score_text  # noqa: E402


def roc_curves(scores: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> list[tuple[str, np.ndarray, np.ndarray, float]]:
    """(class, false positive rates, true positive rates, AUC) of each class's one-vs-rest ROC curve,
    for the classes that have both positives and negatives among `labels` (a curve needs both)."""
    curves = []
    for i, c in enumerate(classes):
        positives = labels == i
        if 0 < positives.sum() < len(labels):
            fpr, tpr, _ = roc_curve(positives, scores[:, i])
            curves.append((c, fpr, tpr, auc(fpr, tpr)))
    return curves


def binary_positive(labels: np.ndarray, classes: Sequence[str]) -> int:
    """The class a two-class ROC curve is drawn for: the one with fewer images among `labels` (the
    defect, the disease: what a two-class problem is usually about), the second on a tie."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(classes))
    return 0 if counts[0] < counts[1] else 1


def compute_metrics(scores: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Metrics for scores (N, K) (higher = more likely) against true class indices (N,)."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    k = len(classes)
    if scores.ndim != 2 or scores.shape != (len(labels), k):
        raise ValueError(f"scores {scores.shape} do not match {len(labels)} labels and {k} classes")
    if len(labels) == 0:
        raise ValueError("no images to evaluate")
    if labels.min() < 0 or labels.max() >= k:  # -1 would count as the last class (numpy indexing)
        raise ValueError(f"labels must be class indices 0 to {k - 1}; got {labels.min()} to {labels.max()}")
    if not np.isfinite(scores).all():
        raise ValueError(f"{int((~np.isfinite(scores)).any(axis=1).sum())} image(s) have scores that are not finite "
                         f"(NaN or infinite): the model that made them is broken")
    pred = scores.argmax(axis=1)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (labels, pred), 1)
    aucs_by_class = {c: float(a) for c, _, _, a in roc_curves(scores, labels, classes)}
    per_class: dict[str, dict[str, Any]] = {}
    for i, c in enumerate(classes):
        n, given = int(cm[i].sum()), int(cm[:, i].sum())
        per_class[c] = {"accuracy": float(cm[i, i] / n) if n else None,
                        "precision": float(cm[i, i] / given) if given else None,  # never answered: undefined, not 0
                        "auc": aucs_by_class.get(c), "n": n}
    accs = [v["accuracy"] for v in per_class.values() if v["accuracy"] is not None]
    aucs = [v["auc"] for v in per_class.values() if v["auc"] is not None]
    return {
        "classes": list(classes),
        "overall_accuracy": float((pred == labels).mean()),
        "class_averaged_accuracy": float(np.mean(accs)),
        "class_averaged_auc": float(np.mean(aucs)) if aucs else None,
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
    }


ROC_LEGEND_MAX = 10  # more classes than this: grey curves, the pooled curve and the weakest classes named

# The ROC curves' colours (Okabe and Ito's palette, its yellow left out: faint on white). Matplotlib's
# default orange and green, the 2nd and 3rd curves, are one colour to a protanope (CIE76 distance 4.6,
# Machado et al.'s simulation); these stay 18 or more apart for protanopes and deuteranopes. Beyond
# them, the colours again with a dashed line.
ROC_COLORS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#000000")


def roc_style(i: int) -> dict[str, Any]:
    """Colour and line style of the i-th ROC curve (ROC_COLORS, dashed past the last of them)."""
    return {"color": ROC_COLORS[i % len(ROC_COLORS)], "ls": "-" if i < len(ROC_COLORS) else (0, (5, 2))}


PLOT_NAME_COLUMNS = 28  # most characters a class name takes in a plot's legend or tick labels (terminal.name_column)


ROC_ZOOM_AUC = 0.97  # most classes' AUC at least this: the ROC plot adds an enlarged top-left corner ...
ROC_ZOOM_LOWEST = 0.9  # ... unless a class's is under this: its curve would run under the inset


def _auc_text(a: float) -> str:
    """An AUC for a legend: 3 decimals, but never "1.000" for a curve that is not perfect."""
    return "> 0.999" if 0.9995 <= a < 1.0 else f"{a:.3f}"


def _enlarge_corner(ax: plt.Axes, drawn: list[tuple[np.ndarray, np.ndarray, dict]], right: float,
                    low: float) -> None:
    """An inset of the ROC plot's top-left corner, false positive rates 0 to `right`, true positive
    rates from about `low`."""
    zoom = ax.inset_axes([0.3, 0.3, 0.42, 0.42])
    for fpr, tpr, style in drawn:
        zoom.plot(fpr, tpr, **{k: v for k, v in style.items() if k != "label"})
    zoom.set(xlim=(0, right), ylim=(max(0.0, min(low, 0.98) - 0.02), 1.005), title="top left, enlarged")
    zoom.title.set_fontsize("small")
    zoom.tick_params(labelsize="x-small")
    zoom.grid(alpha=0.3)


def roc_figure(scores: np.ndarray, labels: np.ndarray, classes: Sequence[str], title: str = "") -> plt.Figure:
    """One-vs-rest ROC curve per class with its AUC in the legend; for two classes one curve, of the
    class with fewer images (`binary_positive`), since the other's is the same one mirrored.

    With many classes a legend of every curve would cover the plot, so beyond ROC_LEGEND_MAX classes
    every class is drawn thin and grey, the curve of all one-vs-rest decisions pooled (micro average)
    in black, and the few classes with the lowest AUC in colour: those are the ones worth a look.
    Long class names are shortened (PLOT_NAME_COLUMNS, kept apart: terminal.name_column); a legend
    too large for the plot's lower right, or one that would cover the enlarged corner, goes below it.
    """
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    shown, _ = name_column(classes, at_most=PLOT_NAME_COLUMNS)
    full = roc_curves(scores, labels, classes)
    missing = [shown[c] for c in classes if c not in {name for name, *_ in full}]
    drawn_classes = [list(classes).index(c) for c, *_ in full]
    curves = [(shown[c], *rest) for c, *rest in full]
    default_title = "ROC curves (one class vs rest)"
    if len(classes) == 2 and len(curves) == 2:
        # The other class's curve is this one mirrored (same AUC): two curves read as two results,
        # and with good scores one hides the other.
        pos = binary_positive(labels, classes)
        curves, drawn_classes = [(f"{shown[classes[pos]]} vs {shown[classes[1 - pos]]}", *curves[pos][1:])], [pos]
        pair = curves[0][0]
        default_title = f"ROC curve\n({pair})" if display_width(pair) > 40 else f"ROC curve ({pair})"  # fits the width
    # A curve steps right by 1 / (its class's negatives), the images of the other classes.
    fpr_step = max((1 / int((labels != y).sum()) for y in drawn_classes), default=1.0)
    many = len(curves) > ROC_LEGEND_MAX
    fig, ax = plt.subplots(figsize=(5.5, 5))
    drawn: list[tuple[np.ndarray, np.ndarray, dict]] = []  # (fpr, tpr, style) of each curve, for the zoom
    if many:
        for _, fpr, tpr, _ in curves:
            drawn.append((fpr, tpr, {"color": "grey", "lw": 0.7, "alpha": 0.35}))
        onehot = labels[:, None] == np.arange(len(classes))[None, :]
        fpr, tpr, _ = roc_curve(onehot.ravel(), scores.ravel())
        drawn.append((fpr, tpr, {"color": "black", "lw": 2.5,
                                 "label": f"all {len(curves)} classes pooled (AUC {_auc_text(auc(fpr, tpr))})"}))
        for i, (c, fpr, tpr, a) in enumerate(sorted(curves, key=lambda t: t[3])[:5]):
            drawn.append((fpr, tpr, {"lw": 1.8, **roc_style(i), "label": f"lowest: {c} (AUC {_auc_text(a)})"}))
    else:
        for i, (c, fpr, tpr, a) in enumerate(curves):
            drawn.append((fpr, tpr, {"lw": 2, **roc_style(i), "label": f"{c} (AUC {_auc_text(a)})"}))
    for fpr, tpr, style in drawn:
        ax.plot(fpr, tpr, **style)
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--")
    # Named where it runs, top right (the legend is lower right, the enlarged corner in the middle):
    # unnamed, a first-time reader took the diagonal for one more curve.
    ax.text(0.87, 0.87, "chance", rotation=45, rotation_mode="anchor", transform_rotates_text=True, ha="center",
            va="bottom", fontsize="x-small", color="grey")
    present = sorted(set(labels.tolist()))
    if len(present) == 1:  # no curve at all: say why in the plot, not with empty axes
        ax.text(0.5, 0.55, f"no ROC curve: every image scored is of one class ({shown[classes[present[0]]]})",
                transform=ax.transAxes, ha="center", fontsize="small", color="dimgrey", wrap=True,
                bbox={"facecolor": "white", "edgecolor": "none"})
    xlabel = "False positive rate"
    if missing and len(present) > 1:  # under the axis title: inside the plot it would cover a curve or the legend
        names = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        xlabel += f"\n(no curve for {names}: no image of it scored)"
    perfect = [c for c, *_, a in curves if a == 1.0]
    if len(perfect) > 1 and not many:
        # Perfect curves all run up the left edge and along the top: the last drawn hides the others,
        # and the legend names three curves where one shows.
        names = ", ".join(perfect[:4]) + (f" and {len(perfect) - 4} more" if len(perfect) > 4 else "")
        xlabel += f"\n({names}: perfect, drawn one on top of the other)"
    crowded = [(fpr, tpr) for _, fpr, tpr, a in curves if a >= ROC_ZOOM_AUC]
    aucs = [a for *_, a in curves]
    if curves and 2 * len(crowded) >= len(curves) and min(aucs) >= ROC_ZOOM_LOWEST and min(aucs) < 1.0:
        # Most curves hug the top-left corner, where at full scale they are one line (ten classes of
        # 0.97-1.00 among them): show it enlarged (perfect curves alone have no corner to show). Wide
        # enough that each of those has reached its top, from about where they leave the left edge.
        reach = max(float(fpr[np.argmax(tpr >= tpr.max() - 1e-12)]) for fpr, tpr in crowded)
        right = float(np.clip(1.5 * reach, 0.01, 0.2))
        if fpr_step <= right / 5:  # else the full plot shows the steps as well as an enlargement would
            _enlarge_corner(ax, drawn, right, min(float(np.interp(right / 20, fpr, tpr)) for fpr, tpr in crowded))
    if title and len(curves) > 1:
        # A caller's title (stage 5: data set / classifier / side) still says what each curve is: a
        # curve per class of a three-class problem is not what "ROC" alone makes a reader expect.
        title += "\n(each class vs the rest)"
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel=xlabel, ylabel="True positive rate",
           title=title or default_title)
    if curves:
        _place_legend(fig, ax, "small" if many else None)
    ax.grid(alpha=0.3)
    return fig


def _place_legend(fig: plt.Figure, ax: plt.Axes, fontsize: str | None) -> None:
    """The ROC legend in the plot's lower right, where no curve goes; but below the plot (under the
    axis title, in two columns where they fit the figure's width) when it would cover the curves
    where they start (long names, many classes) or the enlarged corner (with 7 classes, or the
    6 lines of many classes, it reached up into it)."""
    legend = ax.legend(loc="lower right", fontsize=fontsize)
    lay_out(fig)
    box, area = legend.get_window_extent(), ax.get_window_extent()
    insets = [inset.get_tightbbox() for inset in ax.child_axes]  # with its title and tick labels
    if not (box.width > 0.6 * area.width or box.height > 0.5 * area.height or any(box.overlaps(i) for i in insets)):
        return
    legend.remove()
    lay_out(fig)
    # Under the tick labels and the axis title, however many lines that takes ("no curve for ...").
    bottom = ax.transAxes.inverted().transform((0, ax.get_tightbbox().y0))[1]
    below = {"loc": "upper center", "bbox_to_anchor": (0.5, bottom - 0.02), "fontsize": fontsize}
    legend = ax.legend(**below)
    if len(legend.get_texts()) > 4:  # a long column: two, if they are no wider than the figure
        legend.remove()
        legend = ax.legend(ncols=2, **below)
        lay_out(fig)
        if legend.get_window_extent().width > fig.bbox.width:
            legend.remove()
            ax.legend(**below)


def plot_roc(scores: np.ndarray, labels: np.ndarray, classes: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Save `roc_figure` as a PNG."""
    return save_figure(roc_figure(scores, labels, classes, title), path)


def plot_confusion(cm: np.ndarray | list, classes: Sequence[str], path: str | Path, title: str = "",
                   counts_file: str = "metrics.json") -> Path:
    """Save `confusion_figure` as a PNG."""
    return save_figure(confusion_figure(cm, classes, title, counts_file), path)


# Sizes of a cell as drawn (the axes' share of the figure, beside the colour bar: about 0.7 of the
# figure's width / k), measured with matplotlib's DejaVu Sans at 5 pt.
CONFUSION_MIN_COUNT_INCHES = 0.085  # a cell narrower than this shows no count (5 pt digits spilled over)
CONFUSION_DIGIT_INCHES = 0.042  # a 5 pt digit's width: a cell shows counts only as wide as the largest
CONFUSION_MIN_NAME_INCHES = 0.078  # a 5 pt name is 0.077 in tall: rows closer show every n-th name


def _ordinal(n: int) -> str:
    """2 -> "2nd", 3 -> "3rd", 11 -> "11th", 22 -> "22nd" (the title said "every 2th class")."""
    suffix = "th" if n % 100 in (11, 12, 13) else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def confusion_figure(cm: np.ndarray | list, classes: Sequence[str], title: str = "",
                     counts_file: str = "metrics.json") -> plt.Figure:
    """The confusion matrix: counts, with each row (true class) shaded by its fraction so small
    classes read as clearly.

    Beyond 15 classes the zeros are left blank, so the mistakes stand out of the grid of numbers.
    Long class names are shortened (PLOT_NAME_COLUMNS, kept apart: terminal.name_column): whole, 60
    characters each pushed the grid into a corner of the picture. `counts_file`: where the title sends
    the reader for the counts when the cells are too small for them (stage 5 --on train: metrics_train.json).
    """
    cm = np.asarray(cm)
    k = len(classes)
    frac = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = min(max(4.5, 0.6 * k + 2.5), 40.0)
    font = 10 if k <= 15 else max(5, 10 - k // 15)
    fig, ax = plt.subplots(figsize=(size, size))
    shading = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    # Without a scale, 6 of 6 and 60 of 60 equally dark read as a mistake in the plot.
    fig.colorbar(shading, ax=ax, fraction=0.046, pad=0.04).set_label("share of the true class (row)")
    shown, _ = name_column(classes, at_most=PLOT_NAME_COLUMNS)
    names = [shown[c] for c in classes]
    # Past ~330 classes the figure, at its largest, leaves cells too small for a count (past ~230 for
    # counts of 3 digits), and past ~250 names too close for every one: then the shading alone, and
    # every n-th name (they overlapped). The cell as drawn: figure width / k was 1.4 times it, and
    # names overlapped from 370 to 444 classes, counts of 100 spilled over from 235 classes.
    ax.apply_aspect()  # the axes' box as the square cells and the colour bar leave it
    cell = ax.get_position().width * fig.get_figwidth() / k  # inches
    count_room = max(CONFUSION_MIN_COUNT_INCHES, CONFUSION_DIGIT_INCHES * len(str(int(cm.max(initial=0)))))
    # The predicted classes' names run at 45 degrees: neighbours are cell * sin 45 apart across their
    # lines, not a cell (at 360 classes their letters ran into each other). Both axes name the same ones.
    step = max(1, math.ceil(CONFUSION_MIN_NAME_INCHES / (cell * math.sin(math.radians(45)))))
    ticks = range(0, k, step)
    ax.set_xticks(ticks, names[::step], rotation=45, ha="right", rotation_mode="anchor", fontsize=font)
    ax.set_yticks(ticks, names[::step], fontsize=font)
    if cell >= count_room:
        for i in range(k):
            for j in range(k):
                if cm[i, j] or k <= 15:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=font,
                            color="white" if frac[i, j] > 0.5 else "black")
    notes = ([f"every {_ordinal(step)} class named"] if step > 1 else []) + (
        [f"counts in {counts_file}"] if cell < count_room else [])
    title = (title or "Confusion matrix") + (f"\n({'; '.join(notes)})" if notes else "")
    ax.set(xlabel="Predicted class", ylabel="True class", title=title)
    return fig


def format_table(metrics: dict[str, Any]) -> str:
    """The accuracy table stage 5 prints."""
    shown, width = name_column(metrics["classes"], at_least=12)

    def percent(value: float | None) -> str:
        return "-" if value is None else f"{percent_text(value):>8}"

    lines = [f"{'class':<{width}}  {'n':>5}  {'accuracy':>8}  {'precision':>9}  {'AUC':>6}"]
    for c, v in metrics["per_class"].items():
        roc = auc_text(v["auc"])
        # Metrics files written before precision was reported lack it: shown as "-" rather than failing.
        lines.append(f"{ljust(shown.get(c, c), width)}  {v['n']:>5}  {percent(v['accuracy']):>8}  "
                     f"{percent(v.get('precision')):>9}  {roc:>6}")
    lines.append(f"{'overall':<{width}}  {sum(v['n'] for v in metrics['per_class'].values()):>5}  "
                 f"{percent(metrics['overall_accuracy'])}")
    mean_auc = metrics.get("class_averaged_auc")
    scored = sum(1 for v in metrics["per_class"].values() if v["n"])
    of = f"  (over {scored} of {len(metrics['per_class'])} classes)" if scored < len(metrics["per_class"]) else ""
    lines.append((f"{'class-avg':<{width}}  {'':>5}  {percent(metrics['class_averaged_accuracy'])}  {'':>9}  "
                  + ("" if mean_auc is None else auc_text(mean_auc)) + of).rstrip())
    return "\n".join(lines)


FEW_TEST_IMAGES = 5  # classes with fewer test images than this are named by stage 5


def few_test_images_notes(metrics: dict[str, Any], side: str = "test", hint: str = "add images") -> list[str]:
    """Notes naming the classes with no image of `side` (the set scored), which the class-averaged
    figures then leave out (a rare class missing from a two-class test set left a class-averaged
    accuracy of 100% over the other class alone), and those whose accuracy rests on fewer than
    FEW_TEST_IMAGES images: 100% on one image reads like a fact in the table, and is a coin toss.
    `hint`: how a class gets test images under the split's rule (imgclass.data.test_image_hint)."""
    notes = []
    none = [c for c, v in metrics["per_class"].items() if v["n"] == 0]
    if none:
        others = len(metrics["per_class"]) - len(none)
        notes.append(f"no {side} image of {', '.join(none)}: not measured at all, and the class-averaged accuracy "
                     f"and AUC are of the other {'class' if others == 1 else f'{others} classes'} only"
                     + (f": {hint}" if side == "test" else ""))
    few = [f"{c} ({v['n']})" for c, v in metrics["per_class"].items() if 0 < v["n"] < FEW_TEST_IMAGES]
    if few:
        notes.append(f"fewer than {FEW_TEST_IMAGES} {side} images: {', '.join(few)}; their accuracy and AUC rest on "
                     "very few photos: read them as rough, and add images where you can")
    return notes


def majority_note(metrics: dict[str, Any], suggest: Sequence[str] | None = None) -> str | None:
    """A note when the overall accuracy is no better than always answering the largest class would
    score on the same images: on a data set of 30 "ok" and 4 "defect" photos, 88% overall is what a
    model that never finds a defect gets; the class-averaged accuracy tells. `suggest`: the balancing
    parameters to point to (data.balancing_off: those the classifier uses that are off; none: the
    options are on already); None: the one of the metrics' classifier."""
    if suggest is None:
        from imgclass.data import BALANCING_SWITCHES

        suggest = BALANCING_SWITCHES["dnn" if metrics.get("classifier") == "dnn" else "svm"]
    counts = {c: v["n"] for c, v in metrics["per_class"].items()}
    total = sum(counts.values())
    largest = max(counts, key=lambda c: counts[c])
    present = [n for n in counts.values() if n]
    if len(present) < 2 or metrics["overall_accuracy"] > counts[largest] / total:
        return None
    # Balancing is worth a try where the classes differ in size; with equal ones the model is just weak.
    unequal = max(present) >= 2 * min(present) and bool(suggest)
    return (f"the overall accuracy ({100 * metrics['overall_accuracy']:.2f}%) is no more than always answering "
            f"{largest} would score on these images ({counts[largest]} of {total}): read the class-averaged accuracy "
            f"({100 * metrics['class_averaged_accuracy']:.2f}%)"
            + (", and consider " + " and ".join(f"{name} = True" for name in suggest) if unequal else ""))


def top_confusions(metrics: dict[str, Any], n: int = 5) -> list[tuple[str, str, int]]:
    """The `n` most frequent mistakes as (true class, predicted class, images), most first; with
    many classes the confusion matrix is hard to read, and these pairs are where to look."""
    cm, classes = np.asarray(metrics["confusion_matrix"]), metrics["classes"]
    off = [(int(cm[i, j]), i, j) for i in range(len(classes)) for j in range(len(classes)) if i != j and cm[i, j]]
    off.sort(key=lambda t: (-t[0], t[1], t[2]))
    return [(classes[i], classes[j], count) for count, i, j in off[:n]]


def format_confusions(metrics: dict[str, Any], n: int = 5) -> str:
    """The most frequent mistakes, one a line, as stage 5 prints them ("" when there are none): on one
    line, a few long class names made it hundreds of characters wide."""
    every = top_confusions(metrics, n=len(metrics["classes"]) ** 2)
    pairs = every[:n]
    if not pairs:
        return ""
    shown, _ = name_column(metrics["classes"])  # shortened as in the table above
    width = max(display_width(shown[t]) for t, _, _ in pairs)
    more = every[n:]
    return "\n".join(["most frequent mistakes (true -> predicted: images):",
                      *(f"  {ljust(shown[t], width)} -> {shown[p]}: {c}" for t, p, c in pairs),
                      *([f"  ... and {len(more)} more pair(s), {sum(c for *_, c in more)} image(s): the confusion "
                         "matrix has them all"] if more else [])])


def write_predictions(path: str | Path, paths: Sequence[str], labels: np.ndarray | None, scores: np.ndarray,
                      classes: Sequence[str]) -> Path:
    """One line per image: path, true class (left out when `labels` is None: new, unlabelled
    images; empty for a label of -1, an image of no known class), predicted class, then one score
    column per class."""
    with atomic_open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\t".join(["image", *(["true"] if labels is not None else []), "predicted", *classes]) + "\n")
        for i, (p, s) in enumerate(zip(paths, scores)):
            # -1 indexes the last class in numpy: an unlabelled image would read as of that class.
            true = [] if labels is None else [classes[labels[i]] if labels[i] >= 0 else ""]
            # 9 significant digits give every float32 back exactly: a probability of 0.9999997 must not
            # read back as 1, tied with its neighbours when predictions are sorted by confidence.
            f.write("\t".join([p, *true, classes[int(np.argmax(s))], *(f"{v:.9g}" for v in s)]) + "\n")
    return Path(path)


# Image files web browsers do not display: the pages show a JPEG thumbnail made from them.
NOT_IN_BROWSERS = (".heic", ".heif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm", ".tga")


THUMBNAIL_NAME = re.compile(r"[0-9a-f]{16}\.jpg")  # how _thumbnail names its files: only those are pruned
# A photo larger than this (pixels) is shown through a thumbnail too: a page of 12-megapixel phone
# photos made the browser read gigabytes and take seconds per screen to fill its 180 px cards.
THUMBNAIL_ABOVE_PIXELS = 1_500_000


def _needs_thumbnail(source: Path) -> bool:
    """Whether a browser cannot show `source` itself, or would load far more pixels than a card shows."""
    if source.suffix.lower() in NOT_IN_BROWSERS:
        return True
    size = header_size(source)  # nothing decoded
    if size is None:  # unreadable now, or past the pixel limit no stage decodes: linked as it is
        return False
    width, height = size
    return width * height > THUMBNAIL_ABOVE_PIXELS


def _thumbnail(source: Path, folder: Path, side: int = 360) -> Path:
    """A JPEG of `source` at most `side` px, named by the source's path, made once."""
    out = folder / (hashlib.sha1(str(source.resolve()).encode()).hexdigest()[:16] + ".jpg")
    if not out.is_file() or out.stat().st_mtime < source.stat().st_mtime:
        img = load_rgb(source, min_size=side)
        img.thumbnail((side, side))
        with atomic_path(out) as tmp:
            img.save(tmp, format="JPEG", quality=85)
    return out


SCORE_MEANINGS = {
    "probability": "class probabilities (0 to 1, summing to 1)",
    "svm_decision": "SVM decision values (higher = more likely; not probabilities: they can be negative)",
}


# The results page's filter: cards whose data-t (true class) and data-p (predicted class) match the
# selects are shown, sections and their links with none are hidden. Runs on `pageshow` too: it writes
# the count, and a browser that restores the selects' values (back/forward) gets the cards to match.
FILTER_SCRIPT = """<script>
function imgFilter() {
  var t = document.getElementById("ft"), p = document.getElementById("fp");
  var tv = t ? t.value : "", pv = p.value, shown = 0, all = 0;
  document.querySelectorAll(".grid").forEach(function (grid, k) {
    var n = 0;
    grid.querySelectorAll(".card").forEach(function (card) {
      var ok = (tv === "" || card.dataset.t === tv) && (pv === "" || card.dataset.p === pv);
      card.hidden = !ok;
      if (ok) n++;
      all++;
    });
    grid.hidden = grid.previousElementSibling.hidden = n === 0;
    var link = document.querySelector('nav a[href="#s' + k + '"]');
    if (link) link.parentNode.hidden = n === 0;
    shown += n;
  });
  document.getElementById("fn").textContent =
    tv === "" && pv === "" ? all + " images" : shown + " of " + all + " images shown";
}
document.getElementById("fp").addEventListener("change", imgFilter);
if (document.getElementById("ft")) document.getElementById("ft").addEventListener("change", imgFilter);
window.addEventListener("pageshow", imgFilter);
</script>"""


def _relative_link(target: Path, page_dir: Path) -> str:
    """The relative path from the folder `page_dir` to `target`, as a link on a page there. A browser
    joins it to the page's address as the stage printed it, without resolving links: with DATA_DIR a
    link (to a bigger disk) and the photos a link to a folder beside it there, the path between the
    resolved folders climbed out of the link's folder instead ("../../../../photos" from
    ~/imgclass_data/results/x/svm is ~/../photos). That one is kept wherever it leads there too."""
    resolved = os.path.relpath(target.resolve(), page_dir.resolve())
    start = os.path.abspath(page_dir)

    def reaches(rel: str) -> bool:
        joined = os.path.normpath(os.path.join(start, rel))
        return os.path.exists(joined) and os.path.samefile(joined, target)

    if target.exists() and not reaches(resolved):
        lexical = os.path.relpath(os.path.abspath(target), start)
        if reaches(lexical):
            return lexical
    return resolved


# The results page. The viewport line: without it a phone lays the page out 980 px wide and shrinks
# it to its screen (12 px captions read as 5 px). On a narrow screen two cards a row, not one in half
# the width. A mark before each card's classes, as the border's red or green alone is one colour to a
# red-green colour-blind reader. Filled by str.format: a brace of the CSS is written twice.
PAGE_TEMPLATE = """<!doctype html><html><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:1em}} .grid{{display:flex;flex-wrap:wrap;gap:8px}}
.card{{width:180px;border:3px solid #4a4;padding:4px;font-size:12px;overflow-wrap:anywhere}} .card.err{{border-color:#d33}}
.card.ok>b::before{{content:"\\2713  "}} .card.err>b::before{{content:"\\2717  "}}
@media (max-width:480px){{.card{{width:calc(50% - 18px)}}}}
.card.new{{border-color:#888}} h3{{margin:1.2em 0 .4em}}
nav span:not([hidden])~span:not([hidden])::before{{content:" \\b7  "}}
nav{{line-height:1.6;max-height:30vh;overflow-y:auto;resize:vertical;border-bottom:1px solid #ccc}}
h2,h3,nav,ul{{overflow-wrap:anywhere}} select{{max-width:100%}}
.card img{{width:100%;height:160px;object-fit:contain;background:#eee}} ol{{margin:2px 0;padding-left:18px}}
small{{color:#666;word-break:break-all}} [hidden]{{display:none!important}}
.figs{{display:flex;flex-wrap:wrap;gap:8px}} .figs img{{width:280px;max-width:100%;border:1px solid #ccc}}</style></head><body>
<h2>{title}</h2><p>{summary}</p>{figures}{filter_bar}<nav>{jumps}</nav>{body}{tail}</body></html>"""


def _images_base(images_dir: Path, page_dir: Path) -> str:
    """The URL prefix, from a page in `page_dir`, of the images under `images_dir` ("" or ending in '/')."""
    try:
        rel_root = Path(_relative_link(images_dir, page_dir)).as_posix()
        return "" if rel_root == "." else urllib.parse.quote(rel_root) + "/"
    except ValueError:  # Windows: the images are on another drive than the page, no relative path leads there
        return images_dir.resolve().as_uri() + "/"


def _thumbnails(images_dir: Path, paths: Sequence[str], folder: Path, progress: bool) -> dict[int, Path]:
    """{index into `paths`: its thumbnail in `folder`} of the images that need one (_needs_thumbnail).
    Made before the page, in threads (Pillow decodes without the GIL), with a progress bar: 3000
    12-megapixel TIFFs take 8 minutes on one core, and stage 5 printed nothing meanwhile."""
    need = [i for i, p in enumerate(paths) if _needs_thumbnail(images_dir / p)]
    if not need:
        return {}
    with ThreadPoolExecutor(max_workers=min(8, usable_cpus())) as pool:
        made = pool.map(lambda i: _thumbnail(images_dir / paths[i], folder), need)
        return dict(zip(need, progress_bar(made, total=len(need), desc="page thumbnails", unit="img",
                                           disable=not progress)))


def _prune_thumbnails(folder: Path, kept: set[Path]) -> None:
    """Delete the thumbnails in `folder` not in `kept`, of images no longer shown (the page before this
    one showed them): each rerun on a moved or changed image set added a folder's worth (3000 TIFFs:
    106 MB). Only files named as _thumbnail names them: anything else there is not ours."""
    if not folder.is_dir():
        return
    for old in folder.iterdir():
        if THUMBNAIL_NAME.fullmatch(old.name) and old not in kept:
            old.unlink(missing_ok=True)


def _card(file: str, src: str, thumb: str | None, label: int, score: np.ndarray, classes: Sequence[str]) -> str:
    """One image's card: the picture, true &rarr; predicted class and the top 3 scores. `file`: its path
    as given, `src`: its URL from the page, `thumb`: its thumbnail's URL (None: shown itself), `label`:
    its true class, -1 for none known (new images: grey, no true class)."""
    pred = np.argmax(score)
    state = "new" if label < 0 else "ok" if pred == label else "err"
    rows = "".join(f"<li>{html.escape(classes[j])}: {score_text(score[j])}</li>" for j in np.argsort(-score)[:3])
    # The file name as alt text: an image that no longer loads shows what it was, not a blank box.
    alt = html.escape(Path(file).name)
    img = f'<img loading="lazy" src="{html.escape(src)}" alt="{alt}">'
    if thumb is not None:
        img = f'<img loading="lazy" src="{html.escape(thumb)}" alt="{alt}">'
        if Path(file).suffix.lower() not in NOT_IN_BROWSERS:  # a click shows the photo itself
            img = f'<a href="{html.escape(src)}">{img}</a>'
    head = "" if state == "new" else f"{html.escape(classes[label])} &rarr; "
    # The classes as indices (into the filter's options): short, and nothing in a name to escape.
    known = "" if state == "new" else f' data-t="{label}"'
    return (f'<div class="card {state}"{known} data-p="{pred}">{img}'
            f"<b>{head}{html.escape(classes[pred])}</b>"
            f"<ol>{rows}</ol><small>{html.escape(file)}</small></div>")


def _sections_and_summary(labels: np.ndarray | None, pred: np.ndarray, top: np.ndarray,
                          classes: Sequence[str]) -> tuple[list[tuple[str, list[int]]], str]:
    """The page's sections, (heading, image indices in the order shown), and the summary that says
    their order. With `labels`: the misclassified images (the most confident first), the correct ones
    of each class, then those of label -1 by predicted class (the least confident first in each), and
    the summary opens with the accuracy of the labelled ones. Without: by predicted class."""
    sections: list[tuple[str, list[int]]] = []

    def by_prediction(indices: list[int], heading: str) -> None:
        for j, c in enumerate(classes):
            members = sorted((i for i in indices if pred[i] == j), key=lambda i: top[i])
            if members:
                sections.append((f"{heading}{c}", members))

    everyone = range(len(pred))
    if labels is None:
        by_prediction(list(everyone), "predicted ")
        return sections, (f"{len(pred)} images, one section per predicted class, the least confident first in each; "
                          f"each card: predicted class and the top scores.")
    unlabelled = [i for i in everyone if labels[i] < 0]
    n = len(pred) - len(unlabelled)  # the labelled images, the accuracy's
    wrong = sorted((i for i in everyone if 0 <= labels[i] != pred[i]), key=lambda i: -top[i])
    if wrong:
        sections.append(("misclassified", wrong))
    for j, c in enumerate(classes):
        right = sorted((i for i in everyone if labels[i] == j and pred[i] == j), key=lambda i: top[i])
        if right:
            sections.append((f"{c}: correct", right))
    by_prediction(unlabelled, "no known class, predicted ")
    recall = [float((pred[labels == j] == j).mean()) for j in np.unique(labels[labels >= 0])]
    summary = (f"<b>Accuracy {percent_text(1 - len(wrong) / max(n, 1))}</b> ({n - len(wrong)} of "
               f"{n}), class-averaged {percent_text(float(np.mean(recall)) if recall else None)}. ")
    summary += (f"{n} images, {len(wrong)} misclassified (&#10007;, red, first, the most confident first), then "
                f"the correct ones (&#10003;, green) of each class, the least confident first; each card: true &rarr; predicted "
                f"class and the top scores.")
    if unlabelled:
        summary += (f" Then {len(unlabelled)} image(s) of no known class (grey, not counted in the accuracy), "
                    "one section per predicted class.")
    return sections, summary


def _filter_bar(labels: np.ndarray | None, pred: np.ndarray, classes: Sequence[str]) -> str:
    """Selects of the true class (with `labels`) and the predicted class, and FILTER_SCRIPT: with 40
    classes and 1000 mistakes, one class's mistakes were found by Ctrl+F. Plain inline script and no
    server, so the page still works from disk. Each option names its class's count of images."""
    def choice(key: str, what: str, of: np.ndarray) -> str:
        counts = np.bincount(of[of >= 0], minlength=len(classes))  # -1: no known class, no option
        options = "".join(f'<option value="{j}">{html.escape(c)} ({counts[j]})</option>'
                          for j, c in enumerate(classes) if counts[j])
        return f'<label>{what} <select id="f{key}"><option value="">all</option>{options}</select></label> '
    return ('<p id="filter">Show only: ' + ("" if labels is None else choice("t", "true class", labels))
            + choice("p", "predicted class", pred) + '<span id="fn"></span></p>' + FILTER_SCRIPT)


def _figures_html(figures: Sequence[str | Path], page_dir: Path) -> str:
    """The figures shown small, each linked to itself ("" without any)."""
    links = "".join(
        f'<a href="{html.escape(u)}"><img src="{html.escape(u)}" alt="{html.escape(Path(f).name)}"></a>'
        for f in figures for u in [urllib.parse.quote(Path(_relative_link(Path(f), page_dir)).as_posix())])
    return f'<p class="figs">{links}</p>' if links else ""


def write_browser(
    path: str | Path, images_dir: str | Path, paths: Sequence[str], labels: np.ndarray | None,
    scores: np.ndarray, classes: Sequence[str], title: str = "", score_kind: str = "",
    left_out: Sequence[tuple[str, str]] = (), progress: bool = False, figures: Sequence[str | Path] = (),
) -> Path:
    """A static HTML page of the scored images with their top scores, in sections with a list of
    links to them at the top (with 30 classes a flat grid of cards shows no class boundaries).

    With `labels` (evaluation): the misclassified images first (red, the most confident mistakes
    first), then the correctly classified ones of each class, the least confident first. Without
    (new images, scripts/scoreImages.py): one section per predicted class, the least confident first,
    since those are the ones to check. The page links to the original files (relative paths), so it
    is small and opens from disk. Files browsers cannot show (HEIC, TIFF) get a JPEG thumbnail in
    `<page name>_thumbs/` beside the page. `score_kind`: "probability" or "svm_decision" (as the
    exported model says it, imgclass.export), said on the page. `left_out`: (file, reason) of files
    that were not scored, listed first (whoever opens the page later has not seen the terminal).
    `progress`: a progress bar while thumbnails are made. Thumbnails of images no longer on the page
    are deleted. `figures`: pictures beside the page (stage 5: the ROC curves and the confusion
    matrix) shown small under the summary, each linked to itself; with `labels` the summary opens
    with the accuracy, so that the page alone says how well the classifier did. A label of -1: an
    image of no known class (scoreImages.py: a folder named after no class of the model, or none):
    shown after the labelled ones, one section per predicted class, and not counted in the accuracy.
    """
    path = Path(path)
    pred = scores.argmax(axis=1)
    top = scores.max(axis=1)
    if labels is not None:
        labels = np.asarray(labels)
    base = _images_base(Path(images_dir), path.parent)
    thumbs = path.parent / f"{path.stem}_thumbs"
    thumb_of = _thumbnails(Path(images_dir), paths, thumbs, progress)
    # A path is a URL here: "IMG #2.jpg" or "50% off.jpg" must not end at '#' or decode '%'.
    thumb_urls = {i: urllib.parse.quote(t.relative_to(path.parent).as_posix()) for i, t in thumb_of.items()}
    cards = [_card(p, base + urllib.parse.quote(Path(p).as_posix()), thumb_urls.get(i),
                   -1 if labels is None else labels[i], scores[i], classes) for i, p in enumerate(paths)]
    sections, summary = _sections_and_summary(labels, pred, top, classes)
    if score_kind:
        summary += f" Scores: {html.escape(SCORE_MEANINGS.get(score_kind, score_kind))}."
    tail = ""
    if left_out:  # listed on the page: whoever opens it later has not seen the terminal
        summary += f' <a href="#left-out">{len(left_out)} file(s) not scored</a>, listed at the end.'
        items = "".join(f"<li>{html.escape(name)}: {html.escape(reason)}</li>" for name, reason in left_out)
        tail = f'<h3 id="left-out">not scored ({len(left_out)})</h3><ul>{items}</ul>'
    # The list of sections scrolls in a box of at most 30% of the window: with 200 long class names it
    # was 5000 px tall, 6 screens of links before the first image.
    # A span per link, the " · " between them drawn by CSS: the filter hides a link with its separator.
    jumps = "".join(f'<span><a href="#s{k}">{html.escape(h)} ({len(m)})</a></span>' for k, (h, m) in enumerate(sections))
    body = "".join(f'<h3 id="s{k}">{html.escape(h)} ({len(m)})</h3><div class="grid">{"".join(cards[i] for i in m)}</div>'
                   for k, (h, m) in enumerate(sections))
    page = PAGE_TEMPLATE.format(title=html.escape(title), summary=summary, figures=_figures_html(figures, path.parent),
                                filter_bar=_filter_bar(labels, pred, classes) if len(paths) else "",
                                jumps=jumps, body=body, tail=tail)
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(page)
    _prune_thumbnails(thumbs, kept=set(thumb_of.values()))  # after the page: it no longer shows them
    return path
