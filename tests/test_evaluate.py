from __future__ import annotations

import html
import os
import re
import urllib.parse
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from imgclass.evaluate import (compute_metrics, format_confusions, format_table, plot_confusion, plot_roc,
                               write_browser, write_predictions)


def test_metrics_follow_the_tutorial_definitions() -> None:
    classes = ["a", "b", "c"]
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    pred = np.array([0, 0, 0, 1, 1, 1, 2, 0])
    scores = np.eye(3)[pred] + 0.01 * np.arange(8)[:, None]
    m = compute_metrics(scores, labels, classes)
    assert m["overall_accuracy"] == pytest.approx(6 / 8)
    assert m["class_averaged_accuracy"] == pytest.approx((3 / 4 + 1 + 1 / 2) / 3)
    # AUC of "a" by hand from its score column: three of its images (1.00, 1.01, 1.02) outscore three of
    # the others (0.04-0.06) but not the fourth (1.07); its fourth image (0.03) outscores none: 9 of 16 pairs.
    assert m["per_class"]["a"] == {"accuracy": 0.75, "precision": 0.75, "auc": pytest.approx(9 / 16), "n": 4}
    # precision: of the images given the class, the fraction that are of it (b: 2 of 3, one of them an "a")
    assert [m["per_class"][c]["precision"] for c in classes] == [0.75, pytest.approx(2 / 3), 1.0]
    assert format_table(m).splitlines()[2].split()[3] == "66.67%"  # b's row: name, n, accuracy, precision
    assert m["confusion_matrix"] == [[3, 1, 0], [0, 2, 0], [1, 0, 1]]
    perfect = compute_metrics(np.eye(3)[labels], labels, classes)
    assert all(v["auc"] == 1.0 for v in perfect["per_class"].values())
    assert "class-avg" in format_table(m) and "75.00%" in format_table(m)
    # 1 image each: a -> b and c -> a; ties keep the classes' order
    assert format_confusions(m).splitlines() == ["most frequent mistakes (true -> predicted: images):",
                                                 "  a -> b: 1", "  c -> a: 1"]
    assert format_confusions(perfect) == ""


def test_the_most_frequent_mistakes_come_first_and_are_limited() -> None:
    from imgclass.evaluate import top_confusions

    cm = [[5, 0, 3, 1], [2, 7, 0, 0], [0, 0, 9, 0], [1, 0, 4, 2]]
    m = {"classes": ["w", "x", "y", "z"], "confusion_matrix": cm}
    assert top_confusions(m, n=3) == [("z", "y", 4), ("w", "y", 3), ("x", "w", 2)]
    assert len(top_confusions(m, n=10)) == 5  # only the non-zero off-diagonal cells
    # Printed, the rest are counted, so that 5 lines do not pass for every mistake.
    assert format_confusions(m, n=3).splitlines()[-1] == ("  ... and 2 more pair(s), 2 image(s): the confusion matrix "
                                                          "has them all")


def test_auc_is_none_for_a_class_with_no_images_and_shapes_are_checked() -> None:
    m = compute_metrics(np.array([[0.9, 0.1], [0.8, 0.2]]), np.array([0, 0]), ["x", "y"])
    assert m["per_class"]["y"] == {"accuracy": None, "precision": None, "auc": None, "n": 0}  # never answered either
    assert m["per_class"]["x"]["precision"] == 1.0
    with pytest.raises(ValueError, match="do not match"):
        compute_metrics(np.zeros((3, 2)), np.zeros(2, dtype=int), ["x", "y"])
    with pytest.raises(ValueError, match="labels must be class indices 0 to 1; got -1 to 1"):  # not the last class
        compute_metrics(np.eye(2)[[0, 1, 1]], np.array([0, 1, -1]), ["x", "y"])
    with pytest.raises(ValueError, match=r"1 image\(s\) have scores that are not finite"):
        compute_metrics(np.array([[0.9, 0.1], [np.nan, 0.2]]), np.array([0, 1]), ["x", "y"])


def test_plots_and_pages_are_written(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 5)
    scores = np.eye(3)[labels] + rng.normal(0, 0.4, (15, 3))
    classes = ["dotted", "leopard", "striped"]
    roc = plot_roc(scores, labels, classes, tmp_path / "out" / "roc.png")
    cm = plot_confusion(compute_metrics(scores, labels, classes)["confusion_matrix"], classes, tmp_path / "out" / "cm.png")
    for p in (roc, cm):
        with Image.open(p) as img:
            assert img.format == "PNG" and img.size[0] > 300
    paths = [f"{classes[y]}/{i}.jpg" for i, y in enumerate(labels)]
    tsv = write_predictions(tmp_path / "out" / "pred.tsv", paths, labels, scores, classes)
    lines = tsv.read_text().splitlines()
    assert lines[0].split("\t") == ["image", "true", "predicted", *classes] and len(lines) == 16
    page = write_browser(tmp_path / "out" / "b.html", tmp_path / "images", paths, labels, scores, classes, "t").read_text()
    assert page.count('class="card') == 15 and "../images/dotted/0.jpg" in page
    assert not list((tmp_path / "out").glob(".*tmp"))  # atomic writes leave no temp files


def test_the_page_finds_the_photos_from_a_linked_data_dir_with_linked_photos(tmp_path: Path) -> None:
    # ~/imgclass_data -> /mnt/big/imgclass_data (a bigger disk), whose images/<name> -> /mnt/big/photos:
    # the link was computed between the resolved folders, "../../../../photos/..." from the page, which
    # the browser joins to the address the stage printed (~/imgclass_data/results/...): ~/../photos.
    from conftest import write_image

    disk = tmp_path / "mnt" / "big"
    (disk / "imgclass_data" / "images").mkdir(parents=True)
    write_image(disk / "photos" / "dotted" / "a b.jpg", (200, 40, 40))
    (disk / "imgclass_data" / "images" / "shirts").symlink_to(disk / "photos")
    data_dir = tmp_path / "home" / "imgclass_data"
    data_dir.parent.mkdir()
    data_dir.symlink_to(disk / "imgclass_data")
    page_path = data_dir / "results" / "shirts" / "svm" / "browser.html"
    write_browser(page_path, data_dir / "images" / "shirts", ["dotted/a b.jpg"], np.array([0]),
                  np.array([[1.0, -1.0]]), ["dotted", "striped"], "t")
    links = [html.unescape(u) for u in re.findall(r'<img loading="lazy" src="([^"]+)"', page_path.read_text())]
    assert len(links) == 1
    for link in links:
        for page_dir in (page_path.parent, page_path.parent.resolve()):  # opened as printed, or where it lies
            assert os.path.isfile(os.path.normpath(os.path.join(page_dir, urllib.parse.unquote(link)))), (page_dir, link)


def test_class_averaged_auc_is_the_mean_of_the_per_class_aucs() -> None:
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1, 2], 6)
    scores = np.eye(3)[labels] + rng.normal(0, 0.7, (18, 3))
    m = compute_metrics(scores, labels, ["a", "b", "c"])
    aucs = [v["auc"] for v in m["per_class"].values()]
    assert min(aucs) < 1.0  # the noise makes this a real average, not 1.0 by construction
    assert m["class_averaged_auc"] == pytest.approx(np.mean(aucs))
    assert format_table(m).splitlines()[-1].endswith(f"{m['class_averaged_auc']:.4f}")


def test_roc_with_many_classes_keeps_the_legend_short_and_off_the_title() -> None:
    from imgclass.evaluate import ROC_LEGEND_MAX, roc_figure

    rng = np.random.default_rng(2)
    k = 40
    classes = [f"class_with_a_long_name_{i:02d}" for i in range(k)]
    labels = np.repeat(np.arange(k), 3)
    scores = np.eye(k)[labels] + rng.normal(0, 0.5, (3 * k, k))
    fig = roc_figure(scores, labels, classes, title="ROC: many")
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(texts) == 6 and texts[0].startswith("all 40 classes pooled")
    aucs = {c: v["auc"] for c, v in compute_metrics(scores, labels, classes)["per_class"].items()}
    weakest = sorted(aucs, key=aucs.get)[:5]
    assert [t.split(": ", 1)[1].split(" (AUC")[0] for t in texts[1:]] == weakest
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert not ax.get_legend().get_window_extent(renderer).overlaps(ax.title.get_window_extent(renderer))
    assert len(ax.lines) == k + 1 + 5 + 1  # every class, the pooled curve, the five named, the diagonal
    few = roc_figure(scores[:30, :10], labels[:30], classes[:10])
    assert len(few.axes[0].get_legend().get_texts()) == 10 == ROC_LEGEND_MAX


def test_a_roc_legend_too_wide_for_the_plot_goes_below_it() -> None:
    from imgclass.evaluate import roc_figure

    labels = np.repeat(np.arange(3), 4)
    scores = np.eye(3)[labels] + np.random.default_rng(0).normal(0, 0.6, (12, 3))

    def legend_and_axes(classes: list[str]) -> tuple:
        fig = roc_figure(scores, labels, classes)
        fig.draw_without_rendering()
        return fig.axes[0].get_legend().get_window_extent(), fig.axes[0].get_window_extent()

    legend, area = legend_and_axes(["dotted", "leopard", "striped"])
    assert area.contains(legend.x0, legend.y0) and area.contains(legend.x1, legend.y1)  # short names: inside
    legend, area = legend_and_axes(["dotted", "leopard", "a very long class name for striped garments with many words"])
    assert legend.y1 < area.y0  # below the plot, the curves all visible


def test_predictions_read_back_names_that_start_with_a_quote(tmp_path: Path) -> None:
    # predictions.tsv is plain tab-separated text: a class (and so a path) named '"best"' is a name,
    # not a quoted field, and an unmatched '"' must not swallow the lines after it.
    from imgclass.results import Predictions

    classes = ['"best"', '"odd']
    paths = ['"best"/shirt.jpg', '"odd/x.jpg', '"best"/plain.jpg']
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6]])
    tsv = write_predictions(tmp_path / "p.tsv", paths, np.array([0, 1, 0]), scores, classes)
    back = Predictions.load(tsv)
    assert back.classes == classes and [r.image for r in back.rows] == paths
    assert [(r.true, r.predicted) for r in back.rows] == [('"best"', '"best"'), ('"odd', '"odd'), ('"best"', '"odd')]
    assert back.rows[1].scores == {'"best"': 0.2, '"odd': 0.8}


def test_predictions_keep_confident_scores_apart(tmp_path: Path) -> None:
    # A refined network's probabilities are float32; near 1 they differ only in the 7th digit.
    from imgclass.results import Predictions

    scores = np.array([[0.99999994, 6e-8], [0.9999997, 3e-7], [0.9999995, 5e-7]], np.float32)
    tsv = write_predictions(tmp_path / "p.tsv", ["a/1.jpg", "a/2.jpg", "a/3.jpg"], np.array([0, 0, 0]), scores, ["a", "b"])
    back = Predictions.load(tsv)
    assert np.array_equal(np.array([[r.scores["a"], r.scores["b"]] for r in back.rows], np.float32), scores)
    assert all(r.scores["a"] < 1.0 for r in back.rows)


def test_a_grid_of_test_images_keeps_each_rows_titles_off_the_images_above(tmp_path: Path) -> None:
    """Four lines of title (true -> predicted, top 3) over square images: one tight_layout pass left
    them over the foot of the images of the row above (12 px on the digits)."""
    from PIL import Image

    from imgclass.results import Predictions

    classes = [f"digit_{w}_handwritten" for w in ("zero", "one", "two", "three")]
    rng = np.random.default_rng(0)
    paths = []
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        paths.append(f"{i}.png")
    tsv = write_predictions(tmp_path / "p.tsv", paths, np.arange(12) % 4, rng.normal(size=(12, 4)), classes)
    fig = Predictions.load(tsv).show(tmp_path, count=12, columns=4)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes = fig.axes
    for above, below in zip(axes[:8], axes[4:]):
        assert below.title.get_window_extent(renderer).y1 <= above.images[0].get_window_extent(renderer).y0 + 0.5


def test_tables_line_up_with_wide_and_decomposed_class_names() -> None:
    """"点" takes two terminal columns and the accent of a decomposed "é" (macOS folder names) none:
    padded by len(), their rows were shifted by one column against the others."""
    import unicodedata

    from imgclass.terminal import display_width

    classes = ["dotted", "点点", unicodedata.normalize("NFD", "Rayé")]
    assert [display_width(c) for c in classes] == [6, 4, 4]
    labels = np.repeat(np.arange(3), 4)
    scores = np.eye(3)[labels] + np.random.default_rng(0).normal(0, 0.6, (12, 3))
    rows = format_table(compute_metrics(scores, labels, classes)).splitlines()[1:4]
    assert len({display_width(r) for r in rows}) == 1, rows


def test_first_few_names_some_and_counts_the_rest() -> None:
    from imgclass.terminal import first_few

    assert first_few(["a", "b"]) == "a, b" and first_few(["a", "b", "c"]) == "a, b, c"
    assert first_few(["a", "b", "c", "d", "e"]) == "a, b, c and 2 more" and first_few([], 5) == ""


def test_browser_pages_are_in_sections_with_links_to_each(tmp_path: Path) -> None:
    import re

    classes = ["dotted", "leopard", "striped"]
    labels = np.array([0, 0, 0, 1, 1, 2])
    scores = np.array([[0.9, 0.1, 0.0], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1],  # the last dotted one wrong
                       [0.1, 0.8, 0.1], [0.0, 0.4, 0.6],                     # a leopard taken for striped
                       [0.1, 0.1, 0.8]])
    paths = [f"{classes[y]}/{i}.jpg" for i, y in enumerate(labels)]
    page = write_browser(tmp_path / "b.html", tmp_path, paths, labels, scores, classes, "t").read_text()
    headings = re.findall(r'<h3 id="(s\d+)">([^<]*)</h3>', page)
    assert [h for _, h in headings] == ["misclassified (2)", "dotted: correct (2)", "leopard: correct (1)",
                                        "striped: correct (1)"]
    assert all(f'href="#{anchor}"' in page for anchor, _ in headings)
    mistakes = page.split('<h3 id="s1">')[0]
    assert mistakes.index("dotted/2.jpg") < mistakes.index("leopard/4.jpg")  # the more confident mistake first
    dotted = page.split('<h3 id="s1">')[1].split('<h3 id="s2">')[0]
    assert dotted.index("dotted/1.jpg") < dotted.index("dotted/0.jpg")  # the least confident first
    new = write_browser(tmp_path / "n.html", tmp_path, paths, None, scores, classes, "n").read_text()
    assert re.findall(r"<h3 [^>]*>([^<]*)</h3>", new) == ["predicted dotted (2)", "predicted leopard (2)",
                                                          "predicted striped (2)"]
    assert new.count('class="card new"') == 6


def test_long_class_names_are_shortened_in_tables_unless_two_would_read_alike() -> None:
    from imgclass.terminal import display_width, name_column, shorten

    long_a = "Horizontal stripes, thin and high frequency, on a pale background"
    long_b = "Horizontal stripes, thick and low frequency, on a pale background"
    assert shorten("dotted", 40) == "dotted"
    cut = shorten(long_a, 40)
    assert display_width(cut) == 40 and cut.startswith("Horizontal stripes, ") and cut.endswith("background")
    assert display_width(shorten("条纹图案" * 10, 15)) <= 15  # wide characters count two columns
    shown, width = name_column(["dotted", long_a, long_b], at_least=12)
    assert width == 40 and shown["dotted"] == "dotted" and len(set(shown.values())) == 3
    assert shown[long_a].startswith("Horizontal stripes, thin")  # where the two differ is kept
    same_ends = [f"Horizontal stripes, {m * 40}, on a pale background" for m in "xy"]  # differ in the middle only
    assert all(shorten(same_ends[0], 20, share) == shorten(same_ends[1], 20, share) for share in (0.5, 0.8, 0.2))
    shown, width = name_column(same_ends, at_most=20)  # shortened they would read alike: shown whole
    assert shown == {n: n for n in same_ends} and width == len(same_ends[0])
    m = compute_metrics(np.eye(3)[[0, 1, 2, 0]], np.array([0, 1, 2, 1]), ["dotted", long_a, long_b])
    assert max(display_width(line) for line in format_table(m).splitlines()) < 80


def test_classes_with_few_test_images_are_named() -> None:
    from imgclass.evaluate import few_test_images_notes

    labels = np.array([0] * 6 + [1] * 2 + [2])
    m = compute_metrics(np.eye(3)[labels], labels, ["plenty", "two", "one"])
    assert few_test_images_notes(m) == ["fewer than 5 test images: two (2), one (1); their accuracy and AUC rest on "
                                        "very few photos: read them as rough, and add images where you can"]
    labels = np.repeat([0, 1], 5)
    assert few_test_images_notes(compute_metrics(np.eye(2)[labels], labels, ["a", "b"])) == []


def test_roc_enlarges_the_top_left_corner_when_every_auc_is_high() -> None:
    from imgclass.evaluate import roc_figure

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 40)
    easy = np.eye(4)[labels] * 3 + rng.normal(0, 0.6, (160, 4))
    fig = roc_figure(easy, labels, list("abcd"))
    (zoom,) = fig.axes[0].child_axes
    left, right = zoom.get_xlim()
    assert left == 0 and 0.01 <= right <= 0.2 and zoom.get_ylim()[1] > 1.0
    assert len(zoom.lines) == 4  # every curve, enlarged
    hard = np.eye(4)[labels] + rng.normal(0, 0.9, (160, 4))
    assert not roc_figure(hard, labels, list("abcd")).axes[0].child_axes  # curves apart: nothing to enlarge
    # One class harder (AUC 0.93): the others still crowd the corner, so it is still enlarged.
    mixed = easy.copy()
    mixed[:, 3] = np.eye(4)[labels][:, 3] * 3 + rng.normal(0, 1.4, 160)
    ax = roc_figure(mixed, labels, list("abcd")).axes[0]
    assert len(ax.child_axes) == 1 and ax.child_axes[0].get_ylim()[0] > 0.8
    assert [t.get_text() for t in ax.get_legend().get_texts()][3].startswith("d (AUC 0.9")


def test_an_auc_that_rounds_to_one_is_not_shown_as_perfect() -> None:
    from imgclass.evaluate import roc_figure

    labels = np.repeat(np.arange(2), [1000, 3])
    scores = np.zeros((1003, 2))
    scores[:, 1] = np.r_[np.linspace(0, 1, 1000), 0.9995, 2, 3]  # one negative above one positive: AUC 0.99967
    (legend,) = [t.get_text() for t in roc_figure(scores, labels, ["ok", "defect"]).axes[0].get_legend().get_texts()]
    assert legend == "defect vs ok (AUC > 0.999)"


def test_two_classes_get_one_roc_curve_of_the_rarer_class() -> None:
    from imgclass.evaluate import roc_figure

    rng = np.random.default_rng(3)
    labels = np.array([0] * 30 + [1] * 4)  # 30 "ok", 4 "defect"
    p_defect = np.clip(0.3 * labels + rng.uniform(0, 0.7, len(labels)), 0, 1)
    scores = np.stack([1 - p_defect, p_defect], axis=1)
    ax = roc_figure(scores, labels, ["ok", "defect"]).axes[0]
    auc_defect = compute_metrics(scores, labels, ["ok", "defect"])["per_class"]["defect"]["auc"]
    # The "ok" curve is the same ranking mirrored, with the same AUC: drawn once, for the rarer class.
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [f"defect vs ok (AUC {auc_defect:.3f})"]
    assert ax.get_title() == "ROC curve (defect vs ok)" and len(ax.lines) == 2  # the curve and the diagonal
    assert ax.get_xlabel() == "False positive rate"  # (no "no curve for ok")


def test_roc_says_why_a_curve_is_missing_and_enlarges_only_what_the_plot_cannot_show() -> None:
    from imgclass.evaluate import roc_figure

    # A rare class with no test image: no curve at all in a two-class problem, and the plot says why.
    labels = np.zeros(30, dtype=int)
    ax = roc_figure(np.eye(2)[labels], labels, ["ok", "defect"]).axes[0]
    assert ax.get_legend() is None and any("every image scored is of one class (ok)" in t.get_text() for t in ax.texts)
    # Three classes, one never scored: named under the axis.
    labels = np.repeat([0, 1], 10)
    ax = roc_figure(np.eye(3)[labels], labels, ["a", "b", "c"]).axes[0]
    assert "no curve for c: no image of it scored" in ax.get_xlabel()
    # Perfect curves: no corner worth enlarging.
    assert not roc_figure(np.eye(3)[labels], labels, ["a", "b", "c"]).axes[0].child_axes
    # A near-perfect "defect vs ok" curve steps right by 1/30 (30 "ok" images): the full plot shows its
    # steps, no inset (it used to span false positive rates 0 to 0.01).
    labels = np.array([0] * 30 + [1] * 4)
    scores = np.eye(2)[labels] * 1.0
    scores[30, :] = [0.6, 0.4]  # one defect below two "ok" images
    scores[0, :] = [0.55, 0.45]
    scores[1, :] = [0.52, 0.48]
    assert compute_metrics(scores, labels, ["ok", "defect"])["per_class"]["defect"]["auc"] >= 0.97
    assert not roc_figure(scores, labels, ["ok", "defect"]).axes[0].child_axes
    # With 300 "ok" images the steps are 1/300: the corner is enlarged (the step of the "ok" curve, not
    # drawn, 1/4 here, hid it).
    labels = np.array([0] * 300 + [1] * 4)
    scores = np.eye(2)[labels] * 1.0
    scores[300, :] = [0.6, 0.4]
    scores[:6, :] = [[0.55, 0.45], [0.54, 0.46], [0.53, 0.47], [0.52, 0.48], [0.51, 0.49], [0.505, 0.495]]
    assert len(roc_figure(scores, labels, ["ok", "defect"]).axes[0].child_axes) == 1


def test_a_class_without_test_images_and_a_majority_accuracy_are_said() -> None:
    from imgclass.evaluate import few_test_images_notes, majority_note

    labels = np.zeros(30, dtype=int)  # the one "defect" photo went to train: none to test
    m = compute_metrics(np.eye(2)[labels], labels, ["ok", "defect"])
    assert m["class_averaged_accuracy"] == 1.0  # of "ok" alone, which the table and a note now say
    assert format_table(m).splitlines()[-1].endswith("(over 1 of 2 classes)")
    assert few_test_images_notes(m)[0].startswith("no test image of defect: not measured at all, and the "
                                                  "class-averaged accuracy and AUC are of the other class only")
    # 30 "ok" and 4 "defect", every image answered "ok": 88% overall is the majority's share.
    labels = np.array([0] * 30 + [1] * 4)
    m = {**compute_metrics(np.eye(2)[np.zeros(34, dtype=int)], labels, ["ok", "defect"]), "classifier": "svm"}
    assert majority_note(m) == ("the overall accuracy (88.24%) is no more than always answering ok would score on "
                                "these images (30 of 34): read the class-averaged accuracy (50.00%), and consider "
                                "svm_boBalanceClasses = True")
    assert majority_note(m, suggest=[]).endswith("(50.00%)")  # the classifier's balancing is on already
    assert majority_note(m, ["rf_boBalanceTrainingSet"]).endswith("and consider rf_boBalanceTrainingSet = True")
    # Equal classes and a weak model: true, but balancing would not help, so not suggested.
    equal = np.repeat([0, 1], 10)
    weak = compute_metrics(np.eye(2)[np.zeros(20, dtype=int)], equal, ["ok", "defect"])
    assert majority_note(weak).endswith("read the class-averaged accuracy (50.00%)")
    good = compute_metrics(np.eye(2)[labels], labels, ["ok", "defect"])
    assert majority_note(good) is None and format_table(good).splitlines()[-1].endswith("1.0000")


def test_small_svm_scores_keep_their_digits_and_sign_on_the_page(tmp_path: Path) -> None:
    from imgclass.evaluate import score_text

    assert [score_text(v) for v in (0.98765, -1.5, 0.000412, -0.00003, 0.0)] == ["0.988", "-1.500", "0.000412", "-3e-05", "0"]
    labels = np.array([0, 1])
    page = write_browser(tmp_path / "b.html", tmp_path, ["a/1.jpg", "b/2.jpg"], labels,
                         np.array([[0.0004, -0.0004], [-0.0002, 0.0002]]), ["a", "b"], "t",
                         score_kind="svm_decision").read_text()
    assert "<li>a: 0.0004</li>" in page and "-0.000<" not in page and "not probabilities" in page


LONG_NAMES = ["Long-sleeve women's blouse with small polka dots, navy blue",
              "Long-sleeve women's blouse with small polka dots, red",
              *(f"Category number {i} with an exceptionally long descriptive name" for i in range(13))]


def test_long_class_names_are_shortened_and_kept_apart_in_the_plots() -> None:
    """Whole, 60-character names made tick labels that pushed the confusion matrix into a corner and
    a ROC legend wider than the plot."""
    from imgclass.evaluate import PLOT_NAME_COLUMNS, confusion_figure, roc_figure

    k = len(LONG_NAMES)
    fig = confusion_figure(np.eye(k, dtype=int) * 3, LONG_NAMES)
    fig.canvas.draw()
    ax = fig.axes[0]
    for ticks in (ax.get_xticklabels(), ax.get_yticklabels()):
        names = [t.get_text() for t in ticks]
        assert len(set(names)) == k and all(len(n) <= PLOT_NAME_COLUMNS for n in names)
    assert names[0].startswith("Long-sleeve women's") and names[0].endswith("blue") and "…" in names[0]
    short = confusion_figure(np.eye(3, dtype=int), ["dotted", "leopard", "striped"])
    short.canvas.draw()
    assert [t.get_text() for t in short.axes[0].get_xticklabels()] == ["dotted", "leopard", "striped"]  # whole

    labels = np.repeat(np.arange(4), 5)
    scores = np.eye(4)[labels] + np.random.default_rng(0).normal(0, 0.6, (20, 4))
    texts = [t.get_text() for t in roc_figure(scores, labels, LONG_NAMES[:4]).axes[0].get_legend().get_texts()]
    names = [t.split(" (AUC")[0] for t in texts]
    assert len(set(names)) == 4 and all(len(n) <= PLOT_NAME_COLUMNS for n in names)
    # Two classes: "A vs B" in the title too, on a line of its own when long.
    two = roc_figure(scores[:10, :2], labels[:10], LONG_NAMES[:2]).axes[0]
    title = two.get_title().splitlines()
    assert title[0] == "ROC curve" and len(title[1]) <= 2 * PLOT_NAME_COLUMNS + 6
    plt.close("all")


def _roc_of(k: int, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    labels = np.repeat(np.arange(k), per_class)
    return np.eye(k)[labels] * 3 + np.random.default_rng(seed).normal(0, 0.6, (per_class * k, k)), labels


@pytest.mark.parametrize("k, per_class, seed", [(7, 40, 0), (25, 10, 1), (12, 40, 2)])
def test_the_roc_legend_keeps_off_the_enlarged_corner(k: int, per_class: int, seed: int) -> None:
    """7 classes (a legend of 7 lines) and 25 (the pooled curve and the 5 weakest) put the legend in
    the lower right up into the inset of the top-left corner."""
    from imgclass.evaluate import roc_figure

    scores, labels = _roc_of(k, per_class, seed)
    fig = roc_figure(scores, labels, [f"c{i}" for i in range(k)])
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    (inset,) = ax.child_axes  # these scores are good enough for one
    legend = ax.get_legend().get_window_extent(renderer)
    assert not legend.overlaps(inset.get_tightbbox(renderer))
    assert not legend.overlaps(ax.xaxis.label.get_window_extent(renderer))  # below the axis title, if below
    plt.close(fig)


def test_a_roc_legend_below_the_plot_stays_under_a_two_line_axis_title() -> None:
    from imgclass.evaluate import roc_figure

    labels = np.repeat(np.arange(3), 4)  # "d", never scored, is named under the axis: two lines
    scores = np.eye(4)[labels] + np.random.default_rng(0).normal(0, 0.6, (12, 4))
    fig = roc_figure(scores, labels, ["dotted", "leopard", "a very long class name for striped garments", "d"])
    fig.canvas.draw()
    ax = fig.axes[0]
    xlabel, legend = ax.xaxis.label.get_window_extent(), ax.get_legend().get_window_extent()
    assert "no curve for d" in ax.get_xlabel() and legend.y1 < xlabel.y0
    plt.close(fig)


def test_long_class_names_in_the_results_browser_wrap(tmp_path: Path) -> None:
    """(test_webpage checks it in a real browser, where Chromium is installed.)"""
    import re

    from imgclass.evaluate import write_browser

    page = write_browser(tmp_path / "b.html", tmp_path, ["a/1.jpg"], np.array([0]), np.array([[0.9, 0.1]]),
                         ["x" * 200, "b"], "t").read_text()
    rules = dict(re.findall(r"([\w.,# ]+)\{([^}]*)\}", page.split("<style>")[1].split("</style>")[0]))
    assert any("nav" in [s.strip() for s in selector.split(",")] and "overflow-wrap:anywhere" in body for selector, body in rules.items())


def test_table_never_shows_a_perfect_score_that_is_not() -> None:
    # 2 of 20,001 images wrong; one "b" image ranked below one "a" image: AUC 0.99995, accuracy 99.995%.
    labels = np.array([0] * 20000 + [1])
    scores = np.eye(2)[labels].astype(float)
    scores[0] = [0.4, 0.6]  # an "a" image answered "b", and scoring above the one "b" image
    scores[-1] = [0.45, 0.55]
    m = compute_metrics(scores, labels, ["a", "b"])
    assert 0.9999 < m["per_class"]["a"]["accuracy"] < 1 and 0.9999 < m["per_class"]["a"]["auc"] < 1
    name, n, accuracy, precision, roc = format_table(m).splitlines()[1].split()
    assert (accuracy, precision, roc) == ("99.99%", "100.00%", "0.9999")  # 99.995% and 0.99995 rounded up before
    assert format_table(compute_metrics(np.eye(2)[labels], labels, ["a", "b"])).splitlines()[1].endswith("1.0000")


def test_class_averaged_auc_leaves_out_a_class_without_test_images() -> None:
    # A class with no test images has no ROC curve: counted as 0 in the mean, it would pull the
    # class-averaged AUC down by a third here. AUC of a and of b by hand: 7 of 9 pairs each.
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([[.9, .1, 0], [.8, .2, 0], [.3, .7, 0], [.4, .6, 0], [.2, .8, 0], [.6, .4, 0]])
    m = compute_metrics(scores, labels, ["a", "b", "c"])
    assert m["per_class"]["c"]["auc"] is None
    assert [m["per_class"][c]["auc"] for c in "ab"] == [pytest.approx(7 / 9)] * 2
    assert m["class_averaged_auc"] == pytest.approx(7 / 9)


def test_a_failed_predictions_write_keeps_the_old_file(tmp_path: Path) -> None:
    # Stage 5 rewriting predictions.tsv and failing half-way (here a label with no class, on the second
    # line) must leave the earlier file whole, not a truncated one that reads as fewer predictions.
    path = write_predictions(tmp_path / "p.tsv", ["a/1.jpg"], np.array([0]), np.array([[0.9, 0.1]]), ["a", "b"])
    before = path.read_bytes()
    with pytest.raises(IndexError):
        write_predictions(path, ["c/9.jpg", "b/2.jpg"], np.array([1, 5]), np.array([[0.3, 0.7], [0.2, 0.8]]), ["a", "b"])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["p.tsv"]  # no temp file left behind


def test_results_page_thumbnails_are_shown_with_progress_and_old_ones_deleted(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Thumbnails of TIFFs are made with a progress bar (3000 large TIFFs took minutes with nothing
    printed); a rerun on fewer images deletes those no longer shown (each rerun on a moved or changed
    set left a folder's worth behind), and keeps files in the folder that are not thumbnails."""
    from imgclass.evaluate import write_browser

    images = tmp_path / "images"
    (images / "a").mkdir(parents=True)
    paths = [f"a/{n}.tif" for n in range(3)]
    for rel in paths:
        Image.new("RGB", (64, 48), (200, 30, 30)).save(images / rel)
    page = tmp_path / "results" / "browser.html"
    thumbs = tmp_path / "results" / "browser_thumbs"
    write_browser(page, images, paths, np.zeros(3, int), np.tile([[0.9, 0.1]], (3, 1)), ["a", "b"], progress=True)
    assert "page thumbnails" in capsys.readouterr().err and len(list(thumbs.glob("*.jpg"))) == 3
    (thumbs / "notes.jpg").write_text("mine")
    write_browser(page, images, paths[:1], np.zeros(1, int), np.array([[0.9, 0.1]]), ["a", "b"])
    left = sorted(f.name for f in thumbs.iterdir())
    assert len(left) == 2 and "notes.jpg" in left
    shown = next(name for name in left if name != "notes.jpg")
    assert f"browser_thumbs/{shown}" in page.read_text()


def test_a_large_photo_is_shown_through_a_thumbnail_linked_to_it(tmp_path: Path) -> None:
    """A phone photo's 12 megapixels in a 180 px card made the browser read gigabytes for a big test
    set: above THUMBNAIL_ABOVE_PIXELS the card shows a thumbnail, and a click opens the photo itself."""
    from imgclass.evaluate import THUMBNAIL_ABOVE_PIXELS, write_browser

    images = tmp_path / "images"
    (images / "a").mkdir(parents=True)
    side = int(THUMBNAIL_ABOVE_PIXELS ** 0.5) + 8
    Image.new("RGB", (side, side), (30, 120, 200)).save(images / "a" / "big photo.jpg")
    Image.new("RGB", (320, 240), (200, 30, 30)).save(images / "a" / "small.jpg")
    page = write_browser(tmp_path / "results" / "browser.html", images, ["a/big photo.jpg", "a/small.jpg"],
                         np.zeros(2, int), np.tile([[0.9, 0.1]], (2, 1)), ["a", "b"]).read_text()
    thumbs = list((tmp_path / "results" / "browser_thumbs").glob("*.jpg"))
    assert len(thumbs) == 1
    with Image.open(thumbs[0]) as t:
        assert max(t.size) <= 360
    assert (f'<a href="../images/a/big%20photo.jpg"><img loading="lazy" src="browser_thumbs/{thumbs[0].name}"'
            in page), page
    assert '<img loading="lazy" src="../images/a/small.jpg"' in page  # small enough to show as it is


def test_a_confusion_matrix_without_counts_names_the_metrics_file_it_belongs_with(tmp_path: Path) -> None:
    """Stage 5 --on train writes metrics_train.json; its confusion_train.png said 'counts in metrics.json'
    (the test side's)."""
    from imgclass.evaluate import confusion_figure, plot_confusion

    k = 400
    cm = np.diag(np.full(k, 3))
    names = [f"class {i}" for i in range(k)]
    for counts_file in ("metrics.json", "metrics_train.json"):
        fig = confusion_figure(cm, names, counts_file=counts_file)
        assert fig.axes[0].get_title().endswith(f"counts in {counts_file})"), fig.axes[0].get_title()
        plt.close(fig)
    assert plot_confusion(cm, names, tmp_path / "confusion_train.png", counts_file="metrics_train.json").is_file()


def test_a_confusion_matrix_of_hundreds_of_classes_keeps_names_and_counts_from_overlapping() -> None:
    """At 500 classes the figure, at its largest, had 5 pt counts spilling out of their cells and names
    overlapping: past CONFUSION_MIN_COUNT_INCHES a cell shows no count, past CONFUSION_MIN_NAME_INCHES
    every n-th name is shown, and the title says so."""
    from imgclass.evaluate import confusion_figure

    for k, step, counts in ((40, 1, True), (240, 1, True), (360, 2, False), (700, 3, False), (900, 4, False)):
        cm = np.diag(np.full(k, 3)) + np.roll(np.eye(k, dtype=int), 1, axis=1)
        fig = confusion_figure(cm, [f"class {i}" for i in range(k)])
        ax = fig.axes[0]
        names = [t.get_text() for t in ax.get_yticklabels()]
        assert names == [f"class {i}" for i in range(0, k, step)], (k, names[:3])
        assert (len(ax.texts) == 2 * k) is counts, (k, len(ax.texts))  # a count in each non-zero cell, or none
        assert ("class named" in ax.get_title()) is (step > 1)
        if step > 1:  # it said "every 2th", "every 3th"
            assert f"every {step}{ {2: 'nd', 3: 'rd'}.get(step, 'th')} class named" in ax.get_title(), ax.get_title()
        assert ("counts in metrics.json" in ax.get_title()) is not counts
        plt.close(fig)


def _seen_by(colour: str, deficiency: str) -> np.ndarray:
    """CIE L*a*b* of an sRGB colour as a protanope or deuteranope sees it (Machado, Oliveira and
    Fernandes 2009, severity 1, in linear RGB)."""
    from matplotlib.colors import to_rgb

    machado = {"protan": [[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216], [-0.003882, -0.048116, 1.051998]],
               "deutan": [[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413], [-0.011820, 0.042940, 0.968881]]}
    c = np.array(to_rgb(colour))
    linear = np.clip(np.array(machado[deficiency]) @ np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4), 0, 1)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ linear
    f = np.cbrt(np.maximum(xyz / [0.95047, 1.0, 1.08883], 0.008856))
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def test_roc_curves_stay_apart_for_colour_blind_readers_and_the_title_says_one_vs_rest() -> None:
    """fashionTexture's three ROC curves were matplotlib's blue, orange and green: orange and green
    are one colour to a protanope (CIE76 distance 4.6), and leopard's and striped's curves lie on top
    of each other. A stage's own title ("ROC: data / svm / test") replaced the one that said each
    curve is one class against the rest; the diagonal was an unnamed grey line."""
    from itertools import combinations

    from matplotlib.colors import to_hex

    from imgclass.evaluate import roc_figure

    labels = np.repeat(np.arange(10), 6)
    scores = np.eye(10)[labels] + np.random.default_rng(0).normal(0, 0.7, (60, 10))
    classes = [f"c{i}" for i in range(10)]
    for k in (3, 7):
        ax = roc_figure(scores[labels < k][:, :k], labels[labels < k], classes[:k], title="ROC: data / svm / test").axes[0]
        curves = [line for line in ax.lines if not line.get_label().startswith("_")]
        assert len(curves) == k
        for deficiency in ("protan", "deutan"):
            for a, b in combinations(curves, 2):
                distance = np.linalg.norm(_seen_by(a.get_color(), deficiency) - _seen_by(b.get_color(), deficiency))
                assert distance > 15, (deficiency, to_hex(a.get_color()), to_hex(b.get_color()), distance)
        assert ax.get_title() == "ROC: data / svm / test\n(each class vs the rest)"
        assert "chance" in [t.get_text() for t in ax.texts]
    # Past the palette, a colour comes back with another line style: no two curves drawn alike.
    ax = roc_figure(scores, labels, classes).axes[0]
    styles = [(to_hex(line.get_color()), str(line.get_linestyle())) for line in ax.lines if not line.get_label().startswith("_")]
    assert len(styles) == 10 == len(set(styles))
    plt.close("all")


def test_roc_says_when_perfect_curves_hide_each_other() -> None:
    """The demo data set's three classes all scored AUC 1: the three curves ran up the left edge and
    along the top on top of each other, one green line showed, and the legend named three."""
    from imgclass.evaluate import roc_figure

    labels = np.repeat(np.arange(3), 5)
    perfect = np.eye(3)[labels]
    xlabel = roc_figure(perfect, labels, ["dotted", "leopard", "striped"]).axes[0].get_xlabel()
    assert xlabel.splitlines() == ["False positive rate", "(dotted, leopard, striped: perfect, drawn one on top of the other)"]
    noisy = perfect + np.random.default_rng(0).normal(0, 0.8, perfect.shape)
    assert roc_figure(noisy, labels, ["dotted", "leopard", "striped"]).axes[0].get_xlabel() == "False positive rate"
    plt.close("all")


def test_the_results_page_opens_with_the_accuracy_and_the_figures(tmp_path: Path) -> None:
    """browser.html was 139 photos and no word of how well the classifier did: the accuracy was in
    the terminal and metrics.json, the ROC curves and confusion matrix in PNGs beside it, unlinked."""
    import re
    import urllib.parse

    images = tmp_path / "images"
    paths = []
    for i, c in enumerate(["a", "a", "a", "b"]):
        (images / c).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 30), (200, 30 * i, 30)).save(images / c / f"{i}.jpg")
        paths.append(f"{c}/{i}.jpg")
    labels = np.array([0, 0, 0, 1])
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.2, 0.8]])  # a: 2 of 3 right, b: 1 of 1
    out = tmp_path / "results"
    out.mkdir()
    figures = [out / "roc.png", out / "confusion.png"]
    for f in figures:
        Image.new("RGB", (50, 50)).save(f)
    page = write_browser(out / "browser.html", images, paths, labels, scores, ["a", "b"], "t", figures=figures).read_text()
    assert "<b>Accuracy 75.00%</b> (3 of 4), class-averaged 83.33%." in page
    shown = [(out / urllib.parse.unquote(src)).resolve() for src in re.findall(r'<p class="figs">.*?</p>', page)[0].split('src="')[1:]
             for src in [src.split('"')[0]]]
    assert shown == [f.resolve() for f in figures]
    # New images (no labels): no accuracy to state, no figures asked for.
    new = write_browser(out / "new.html", images, paths, None, scores, ["a", "b"], "n").read_text()
    assert "Accuracy" not in new and 'class="figs"' not in new


@pytest.mark.parametrize("k, count", [(300, 3), (360, 3), (400, 3), (440, 3), (300, 30), (240, 150)])
def test_confusion_names_and_counts_as_drawn_do_not_overlap(k: int, count: int) -> None:
    """The thresholds were taken against the figure's width / k, 1.4 times a cell as drawn (the colour
    bar and margins take the rest): from 370 to 444 classes every name overlapped its neighbours,
    and counts of 100 or more spilled out of their cells from 235 classes. Measured on the drawn figure."""
    from imgclass.evaluate import confusion_figure

    fig = confusion_figure(np.diag(np.full(k, count)), [f"class {i}" for i in range(k)])
    ax = fig.axes[0]
    fig.canvas.draw()
    names = [label.get_window_extent() for label in ax.get_yticklabels()]
    assert not any(a.overlaps(b) for a, b in zip(names, names[1:])), (k, len(names))
    cell = ax.get_window_extent().width / k
    # The names below, at 45 degrees: apart across their lines by their spacing * sin 45, at least a line.
    spacing = cell * (ax.get_xticks()[1] - ax.get_xticks()[0])
    assert spacing * np.sin(np.radians(45)) >= names[0].height, (k, spacing, names[0].height)
    assert all(t.get_window_extent().width < cell for t in ax.texts), (k, count)  # no count spills over
    assert ("counts in metrics.json" in ax.get_title()) is (not ax.texts)
    plt.close(fig)
