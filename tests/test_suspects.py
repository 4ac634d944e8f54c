"""Label suspects: stage 4 lists the training images its cross-validation gives another class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_script, write_image
from imgclass.annotations import FIXES_FILE, read_fixes
from imgclass.suspects import TSV_COLUMNS, find_suspects, write_suspects
from imgclass.svm import ABSENT_SCORE, LinearSvm

COLORS = {"red": (200, 40, 40), "green": (40, 190, 60), "blue": (40, 60, 200)}


def test_disagreements_are_listed_most_confident_first_and_read_back_as_fixes(tmp_path: Path) -> None:
    scores = np.array([[2.0, -1.0, -1.0],   # right
                       [-1.0, 1.5, -0.5],   # class 0 filed, looks 1 by 2.5
                       [0.1, 0.2, -1.0],    # class 0 filed, looks 1 by 0.1
                       [ABSENT_SCORE, 0.3, -0.2],  # its class was in no training fold: cannot be judged
                       [-1.0, -1.0, 0.5]], np.float32)
    labels = np.array([0, 0, 0, 0, 2])
    images = ["a/1.jpg", "a/2.jpg", "a/3.jpg", "a/4.jpg", "c/5.jpg"]
    found = find_suspects(scores, labels, images, ["a", "b", "c"])
    assert [(s.image, s.label, s.predicted) for s in found] == [("a/2.jpg", "a", "b"), ("a/3.jpg", "a", "b")]
    assert found[0].margin == pytest.approx(2.5) and found[1].margin == pytest.approx(0.1)
    with pytest.raises(ValueError, match=r"do not match"):
        find_suspects(scores[:4], labels, images, ["a", "b", "c"])
    # The TSV's first two fields are a line of annotations_fixes.tsv.
    tsv = write_suspects(tmp_path / "label_suspects.tsv", found)
    lines = tsv.read_text(encoding="utf-8").splitlines()
    assert lines[0].split("\t") == list(TSV_COLUMNS)
    # (Its header too, `cut -f1,2` of the whole file: read as a header, not as an image named "image".)
    (tmp_path / FIXES_FILE).write_text("\n".join("\t".join(line.split("\t")[:2]) for line in lines), encoding="utf-8")
    assert read_fixes(tmp_path) == {"a/2.jpg": "b", "a/3.jpg": "b"}


def test_a_class_of_a_few_training_images_has_its_suspects_last() -> None:
    """Each fold's fit learns such a class from two or three photos, so its own photos are disputed
    for its size: listed first, they were the user's first advice to relabel a correct photo."""
    from imgclass.suspects import FEW_IMAGES, small_classes

    labels = np.array([0] * 20 + [1] * 3)
    scores = np.zeros((23, 2), np.float32)
    scores[:, 0] = 1.0  # every image looks like class a
    scores[5] = [-0.2, 0.3]  # an "a" that looks like b, by 0.5
    scores[20] = [2.0, -1.0]  # a "b" that looks like a, by 3.0: the larger margin, but of a class of 3
    found = find_suspects(scores, labels, [str(i) for i in range(23)], ["a", "b"])
    assert [s.image for s in found][0] == "5" and {s.image for s in found[1:]} == {"20", "21", "22"}
    assert small_classes(labels, ["a", "b", "c"]) == ["b"] and FEW_IMAGES > 3
    assert small_classes(np.array([0] * FEW_IMAGES + [1] * FEW_IMAGES), ["a", "b"]) == []


def test_the_contact_sheet_tells_apart_long_class_names_that_begin_alike() -> None:
    from imgclass.suspects import Suspect, sheet_captions

    seven, one = "handwritten_digit_class_seven_with_or_without_the_crossbar", "handwritten_digit_class_one"
    captions = sheet_captions([Suspect("a/" + "x" * 40 + ".png", seven, one, 1.25), Suspect("b/y.png", one, seven, 0.5)])
    first = captions[0].splitlines()
    assert first[0].startswith("1. x") and "…" in first[0] and len(first[0]) <= 3 + 24
    filed, looks = first[1].removeprefix("filed "), first[2].removeprefix("looks ").removesuffix(" (+1.250)")
    assert filed != looks and len(filed) <= 20 and len(looks) <= 20 and "…" in filed
    assert captions[1].splitlines()[1:] == [f"filed {looks}", f"looks {filed} (+0.500)"]  # the same name each time


def test_out_of_fold_scores_come_from_fits_that_did_not_see_the_image() -> None:
    rng = np.random.default_rng(0)
    centres = np.eye(3, 16) * 4
    x = np.concatenate([centres[c] + rng.normal(size=(20, 16)) for c in range(3)]).astype(np.float32)
    y = np.repeat(np.arange(3), 20)
    y[5] = 2  # a class-0 point filed under class 2: the final SVM learns the wrong label, the folds do not
    svm = LinearSvm(c_values=[0.1, 1.0, 100.0], cv_folds=4, workers=1).fit(x, y)
    assert svm.cv_val_scores_ is not None and svm.cv_val_scores_.shape == (60, 3)
    assert svm.cv_val_scores_[5].argmax() == 0
    suspects = find_suspects(svm.cv_val_scores_, y, [str(i) for i in range(60)], ["a", "b", "c"])
    assert suspects[0].image == "5" and suspects[0].predicted == "a"
    # They are the chosen C's: their accuracy is its cross-validation score (4 equal folds of 15).
    assert (svm.cv_val_scores_.argmax(axis=1) == y).mean() == pytest.approx(svm.cv_scores_[svm.C_])
    assert LinearSvm(cv_folds=2, workers=1).fit(x[[0, 1, 25]], np.array([0, 0, 1])).cv_val_scores_ is None  # no CV


def test_stage4_finds_a_photo_filed_under_the_wrong_class_and_a_fix_clears_it(tmp_path: Path) -> None:
    root = tmp_path / "images" / "colors"
    for c, rgb in COLORS.items():
        for i in range(8):
            write_image(root / "train" / c / f"{c}_{i}.jpg", rgb, seed=i)
        for i in range(2):
            write_image(root / "test" / c / f"{c}_t{i}.jpg", rgb, seed=20 + i)
    write_image(root / "train" / "blue" / "really_red.jpg", COLORS["red"], seed=99)  # the wrong folder
    args = ["--set", "datasetName=colors", "--set", "rf_inputResolution=64", "--set", "svm_cvFolds=3",
            "--set", "leakageCheck=off"]
    for script in ("1_prepareData.py", "2_refineDNN.py", "3_runDNN.py"):
        run_script(script, *args, data_dir=tmp_path)
    out = run_script("4_trainSVM.py", *args, data_dir=tmp_path).stdout
    results = tmp_path / "results" / "colors" / "svm"
    rows = [line.split("\t") for line in (results / "label_suspects.tsv").read_text(encoding="utf-8").splitlines()]
    assert rows[1][:3] == ["train/blue/really_red.jpg", "red", "blue"], rows
    assert "  train/blue/really_red.jpg: filed blue, looks red (margin " in out
    with Image.open(results / "label_suspects.png") as sheet:  # a contact sheet, drawn
        assert min(sheet.size) > 150 and np.asarray(sheet.convert("L")).std() > 10
    # The user takes the suggestion: the image is red from stage 1 on, and no longer disputed.
    (root / FIXES_FILE).write_text("\t".join(rows[1][:2]) + "\n", encoding="utf-8")
    for script in ("1_prepareData.py", "3_runDNN.py"):
        run_script(script, *args, data_dir=tmp_path)
    out = run_script("4_trainSVM.py", *args, data_dir=tmp_path).stdout
    assert "really_red" not in out
    assert "really_red" not in (results / "label_suspects.tsv").read_text(encoding="utf-8")
    # Or the user looks and finds the label right after all: a line giving its own class settles it too.
    (root / FIXES_FILE).write_text("train/blue/really_red.jpg\tblue\n", encoding="utf-8")
    assert "annotations_fixes.tsv applied: 0 image(s) relabelled, 0 left out, 1 confirmed as filed" in run_script(
        "1_prepareData.py", *args, data_dir=tmp_path).stdout
    run_script("3_runDNN.py", *args, data_dir=tmp_path)
    out = run_script("4_trainSVM.py", *args, data_dir=tmp_path).stdout
    assert "label check: 1 disputed training image(s) not listed: annotations_fixes.tsv sets or confirms" in out
    assert "really_red" not in (results / "label_suspects.tsv").read_text(encoding="utf-8")
    # A fixes file broken after stage 1 read it does not undo stage 4's SVM: noted, every suspect listed.
    (root / FIXES_FILE).write_text("train/blue/really_red.jpg blue\n", encoding="utf-8")
    out = run_script("4_trainSVM.py", *args, data_dir=tmp_path).stdout
    assert "note: " in out and "line 1: expected 'path<TAB>new_class'" in out
    assert "train/blue/really_red.jpg\tred\tblue" in (results / "label_suspects.tsv").read_text(encoding="utf-8")
    # One training image a class: no cross-validation, so no check; the earlier list does not linger.
    for c in COLORS:
        for f in sorted((root / "train" / c).iterdir())[1:]:
            f.unlink()
    (root / FIXES_FILE).unlink()
    for script in ("1_prepareData.py", "3_runDNN.py"):
        run_script(script, *args, data_dir=tmp_path)
    out = run_script("4_trainSVM.py", *args, data_dir=tmp_path).stdout
    assert "label check: none without cross-validation" in out
    assert not (results / "label_suspects.tsv").exists() and not (results / "label_suspects.png").exists()


def test_the_contact_sheet_says_what_it_shows_and_what_the_margin_is(tmp_path: Path) -> None:
    """label_suspects.png is opened on its own, later: it showed twenty photos captioned
    "looks striped (+1.115)" and nowhere said what they were or what the number is."""
    import matplotlib.pyplot as plt

    from imgclass.images import contact_sheet
    from imgclass.suspects import SHOWN, Suspect, plot_suspects, sheet_title

    images = tmp_path / "images"
    suspects = [Suspect(f"a/{i}.jpg", "a", "b", 1.0 - i / 100) for i in range(SHOWN + 4)]
    for i in range(SHOWN + 4):
        write_image(images / "a" / f"{i}.jpg", COLORS["red"], seed=i)
    png = plot_suspects(suspects, images, tmp_path / "label_suspects.png")
    assert png.is_file()
    title = sheet_title(len(suspects), SHOWN)
    assert f"the {SHOWN} most confident of {SHOWN + 4}" in title and "(+x)" in title and FIXES_FILE in title
    assert "all 3, most confident first" in sheet_title(3, 3) and "1 image" in sheet_title(1, 1)
    # One picture makes a sheet 3 inches wide: the title wraps to it, and is the sheet's title, not
    # the last picture's caption (the loop over captions used the same name).
    fig = contact_sheet([(images / "a" / "0.jpg", "1. 0.jpg")], title=sheet_title(1, 1))
    suptitle = fig.get_suptitle()
    assert suptitle.startswith("Label suspects:") and "1. 0.jpg" not in suptitle
    extent = fig._suptitle.get_window_extent(fig.canvas.get_renderer())
    assert extent.width <= fig.bbox.width
    plt.close("all")
