"""Active learning: the selection criteria on scores with a known answer, then a tiny real model
(EfficientNet-Lite0 at 64 px + SVM) scoring unlabelled images, and terminal labelling via stdin."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, SCRIPTS, write_image
from imgclass.active import (
    Candidate,
    apply_labels,
    label_interactively,
    read_log,
    score_images,
    select_uncertain,
    uncertainty,
    unlabelled_images,
)
from imgclass.annotations import FIXES_FILE
from imgclass.data import list_images, make_split
from imgclass.evaluate import compute_metrics, format_confusions, format_table
from imgclass.provenance import file_hash
from imgclass.synthetic import generate_demo_dataset

# Four images, four classes; each criterion has a different most-uncertain image:
#   T: lowest top score (0.30); M: smallest margin (0.50 - 0.49); E: flattest (highest entropy).
PROBS = np.array([
    [0.97, 0.01, 0.01, 0.01],  # C: confident
    [0.30, 0.28, 0.27, 0.15],  # T
    [0.50, 0.49, 0.01, 0.00],  # M
    [0.31, 0.23, 0.23, 0.23],  # E
])


@pytest.mark.parametrize("criterion, expected", [("topScore", [1, 3]), ("margin", [2, 1]), ("entropy", [3, 1])])
def test_each_criterion_picks_the_expected_images(criterion: str, expected: list[int]) -> None:
    assert select_uncertain(PROBS, 2, criterion, probabilities=True).tolist() == expected
    order = select_uncertain(PROBS, 10, criterion, probabilities=True).tolist()
    assert sorted(order) == [0, 1, 2, 3] and order[-1] == 0  # the confident image comes last


def test_svm_scores_and_bad_input() -> None:
    # SVM decision values (not probabilities): margin and top score work on the raw values,
    # entropy on their softmax.
    svm = np.array([[2.0, -1.0, -1.5], [0.1, 0.0, -2.0], [-0.8, -0.9, -0.7], [1.0, -3.0, 0.2]])
    assert select_uncertain(svm, 1, "margin").tolist() == [1]  # 0.1 vs 0.0
    assert select_uncertain(svm, 1, "topScore").tolist() == [2]  # best score is negative
    assert select_uncertain(svm, 1, "entropy").tolist() == [2]  # three nearly equal scores
    assert np.all(np.diff(uncertainty(svm, "margin")[[1, 3, 0]]) < 0)
    with pytest.raises(ValueError, match="allowed values are margin, topScore, entropy"):
        uncertainty(svm, "random")
    with pytest.raises(ValueError, match="at least 2 classes"):
        uncertainty(np.ones((3, 1)))


def test_apply_labels_copies_and_logs(tmp_path: Path) -> None:
    src = tmp_path / "unlabelled"
    src.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (src / name).write_bytes(name.encode() * 10)
    images = tmp_path / "images"
    (images / "dotted").mkdir(parents=True)
    (images / "dotted" / "a.jpg").write_bytes(b"another photo with the same name")
    log = tmp_path / "log.tsv"
    copied = apply_labels({src / "a.jpg": "dotted", src / "b.jpg": "-"}, ["dotted", "striped"], images, log)
    assert copied == [images / "dotted" / "a_1.jpg"] and copied[0].read_bytes() == (src / "a.jpg").read_bytes()
    assert (src / "a.jpg").is_file()  # copied, not moved
    assert read_log(log) == {file_hash(src / "a.jpg"): "dotted", file_hash(src / "b.jpg"): "-"}
    assert unlabelled_images(src, log) == [(src / "c.jpg").resolve()]
    # A name no log line can hold (not UTF-8) is left out with the reason, not a crash when logged.
    (src / os.fsdecode(b"d\xe9.jpg")).write_bytes(b"d" * 10)
    left_out: list[tuple[str, str]] = []
    assert unlabelled_images(src, log, left_out) == [(src / "c.jpg").resolve()]
    assert left_out == [("d\\xe9.jpg", "the file name is not valid UTF-8 (written in another system's encoding, "
                                      "e.g. unpacked from a zip made on Windows): rename the file")]
    with pytest.raises(ValueError, match="'leopard' is not a class"):
        apply_labels({src / "c.jpg": "leopard"}, ["dotted", "striped"], images, log)
    # The same image labelled again (an interrupted earlier run) is not copied twice.
    assert apply_labels({src / "a.jpg": "dotted"}, ["dotted", "striped"], images, log) == [images / "dotted" / "a_1.jpg"]


def test_a_copy_of_a_photo_already_in_the_data_set_is_not_filed_under_another_class(tmp_path: Path) -> None:
    images = tmp_path / "images"
    (images / "dotted").mkdir(parents=True)
    (images / "dotted" / "IMG_1.jpg").write_bytes(b"the same photo" * 10)
    (images / "dotted" / "IMG_2.jpg").write_bytes(b"another photo!" * 10)  # same size, other content
    src = tmp_path / "unlabelled"
    src.mkdir()
    (src / "copy.jpg").write_bytes(b"the same photo" * 10)
    (src / "new.jpg").write_bytes(b"a new photo!!!" * 10)
    classes, log = ["dotted", "striped"], tmp_path / "log.tsv"
    with pytest.raises(ValueError, match=r"copy.jpg: the same image \(by content\) is in the data set already, as "
                                         r".*IMG_1.jpg \(class dotted\); not copying it into 'striped'"):
        apply_labels({src / "copy.jpg": "striped"}, classes, images, log)
    printed: list[str] = []
    ask, _ = _typing("striped")
    cands = [Candidate(src / "copy.jpg", np.array([0.5, 0.5]), 0.0), Candidate(src / "new.jpg", np.array([0.5, 0.5]), 0.0)]
    copied = label_interactively(cands, classes, images, log, input_fn=ask, print_fn=lambda *a: printed.append(" ".join(map(str, a))))
    assert copied == [images / "striped" / "new.jpg"]
    assert "copy.jpg: same image as" in printed[0] and "(class dotted); not asked" in printed[0]
    # Its own class again: logged, not copied a second time; a sub-folder stage 1 reads is looked in too.
    assert apply_labels({src / "copy.jpg": "dotted"}, classes, images, log) == [images / "dotted" / "IMG_1.jpg"]
    assert sorted(p.name for p in (images / "dotted").iterdir()) == ["IMG_1.jpg", "IMG_2.jpg"]
    assert read_log(log)[file_hash(src / "copy.jpg")] == "dotted"
    (images / "dotted" / "2019").mkdir()
    (images / "dotted" / "2019" / "IMG_0.jpg").write_bytes(b"an old photo!!" * 10)
    (src / "old.jpg").write_bytes(b"an old photo!!" * 10)
    with pytest.raises(ValueError, match=r"old.jpg: the same image .* as .*2019.IMG_0.jpg \(class dotted\)"):
        apply_labels({src / "old.jpg": "striped"}, classes, images, log)
    # ... but not one stage 1 skips (dotted/_duplicates/, where dedupImages.py sets copies aside).
    (images / "dotted" / "_duplicates").mkdir()
    (images / "dotted" / "_duplicates" / "IMG_9.jpg").write_bytes(b"a set aside!!!" * 10)
    (src / "aside.jpg").write_bytes(b"a set aside!!!" * 10)
    assert apply_labels({src / "aside.jpg": "striped"}, classes, images, log) == [images / "striped" / "aside.jpg"]


def test_a_copy_of_a_relabelled_or_excluded_photo_takes_its_class_from_the_fixes_file(tmp_path: Path) -> None:
    images = tmp_path / "images"
    (images / "dotted").mkdir(parents=True)
    (images / "striped").mkdir()
    (images / "dotted" / "leo.jpg").write_bytes(b"a leopard photo" * 10)
    (images / "dotted" / "bad.jpg").write_bytes(b"a blurred photo" * 10)
    (images / FIXES_FILE).write_text("dotted/leo.jpg\tstriped\ndotted/bad.jpg\tEXCLUDE\n", encoding="utf-8")
    src = tmp_path / "unlabelled"
    src.mkdir()
    (src / "leo_copy.jpg").write_bytes(b"a leopard photo" * 10)
    (src / "bad_copy.jpg").write_bytes(b"a blurred photo" * 10)
    classes, log = ["dotted", "striped"], tmp_path / "log.tsv"
    # Stage 1 reads leo.jpg as striped: its folder's class is the wrong answer now, the fixed one is right.
    with pytest.raises(ValueError, match=r"leo_copy.jpg: .* as .*leo.jpg \(class striped\); not copying it into 'dotted'"):
        apply_labels({src / "leo_copy.jpg": "dotted"}, classes, images, log)
    assert apply_labels({src / "leo_copy.jpg": "striped"}, classes, images, log) == [images / "dotted" / "leo.jpg"]
    assert read_log(log)[file_hash(src / "leo_copy.jpg")] == "striped"
    with pytest.raises(ValueError, match=rf"bad_copy.jpg: .* as .*bad.jpg \(left out by EXCLUDE in {FIXES_FILE}\)"):
        apply_labels({src / "bad_copy.jpg": "dotted"}, classes, images, log)
    known: list = []
    assert unlabelled_images(src, None, images_dir=images, in_dataset=known) == []
    assert sorted((p.name, c) for p, c, _ in known) == [("bad_copy.jpg", "EXCLUDE"), ("leo_copy.jpg", "striped")]


def _candidates(folder: Path, n: int, scores: np.ndarray) -> list[Candidate]:
    """n distinct small files in `folder` (content is all the labelling steps read), with `scores`."""
    folder.mkdir()
    for i in range(n):
        (folder / f"{i}.jpg").write_bytes(bytes([i]) * 20)
    return [Candidate(folder / f"{i}.jpg", scores, 0.1) for i in range(n)]


def _typing(*answers: str) -> tuple[Callable[[str], str], list[str]]:
    """An input() that gives `answers` in turn, then Ctrl-D (EOFError), and the prompts it was shown."""
    given = iter(answers)
    prompts: list[str] = []

    def ask(prompt: str) -> str:
        prompts.append(prompt)
        try:
            return next(given)
        except StopIteration:
            raise EOFError from None

    return ask, prompts


def test_label_interactively_understands_numbers_names_prefixes_skip_and_quit(tmp_path: Path) -> None:
    cands = _candidates(tmp_path / "u", 5, np.array([0.2, 0.5, 0.3]))
    answers = iter(["2", "what?", "Stri", "s", "dotted", "q"])
    printed: list[str] = []
    images = tmp_path / "images"
    copied = label_interactively(cands, ["dotted", "leopard", "striped"], images, tmp_path / "log.tsv",
                                 input_fn=lambda prompt: next(answers), print_fn=lambda *a: printed.append(" ".join(map(str, a))))
    assert [p.relative_to(images).as_posix() for p in copied] == ["leopard/0.jpg", "striped/1.jpg", "dotted/3.jpg"]
    assert any("'what?' is not one of" in line for line in printed)
    assert "leopard 0.5" in printed[0]  # shows the model's top guess
    assert [line for line in printed if line.startswith("    ")] == [
        "    -> leopard", "    'what?' is not one of: 1=dotted  2=leopard  3=striped, s=skip (for good), q=quit",
        "    -> striped", "    skipped (not asked again)", "    -> dotted"]
    assert len(read_log(tmp_path / "log.tsv")) == 4  # image 4 was never answered (quit)


def test_classes_named_by_numbers_are_answered_by_name_not_menu_position(tmp_path: Path) -> None:
    """Digits "0"-"9": typing 3 means the class "3" (menu position 3 would be "2")."""
    cands = _candidates(tmp_path / "u", 3, np.full(10, 0.1))
    ask, prompts = _typing("3", "0", "9")
    images = tmp_path / "images"
    copied = label_interactively(cands, [str(d) for d in range(10)], images, tmp_path / "log.tsv",
                                 input_fn=ask, print_fn=lambda *a: None)
    assert [p.relative_to(images).as_posix() for p in copied] == ["3/0.jpg", "0/1.jpg", "9/2.jpg"]
    assert "1=0" not in prompts[0] and "0  1  2" in prompts[0]


def test_classes_named_like_the_skip_and_quit_letters_can_be_chosen(tmp_path: Path) -> None:
    """Sizes S, M, L, q: "S" and "q" are those classes; "-" skips, Ctrl-D stops."""
    cands = _candidates(tmp_path / "u", 4, np.full(4, 0.25))
    ask, prompts = _typing("S", "q", "-")
    images = tmp_path / "images"
    copied = label_interactively(cands, ["L", "M", "S", "q"], images, tmp_path / "log.tsv",
                                 input_fn=ask, print_fn=lambda *a: None)
    assert [p.relative_to(images).as_posix() for p in copied] == ["S/0.jpg", "q/1.jpg"]
    assert list(read_log(tmp_path / "log.tsv").values()) == ["S", "q", "-"]  # image 3 unanswered (Ctrl-D)
    assert "-=skip (for good), Ctrl-D=quit" in prompts[0]


def test_labels_go_to_the_training_side_of_a_data_set_split_in_advance(tmp_path: Path) -> None:
    # Stage 1 reads only train/ and test/ of such a data set: a copy into images/<class>/ would be lost.
    images = tmp_path / "images"
    for side, seed in (("train", 1), ("test", 5)):
        for k, c in enumerate(("dotted", "striped")):
            for i in range(2):
                write_image(images / side / c / f"{i}.jpg", (200, 40 + 150 * k, 40), seed=seed + i)
    new = write_image(tmp_path / "u" / "new.jpg", (200, 40, 40), seed=99)
    before = make_split(images).train
    assert apply_labels({new: "dotted"}, ["dotted", "striped"], images, tmp_path / "log.tsv") == [
        images / "train" / "dotted" / "new.jpg"]
    after = make_split(images)
    assert len(after.train) == len(before) + 1 and "train/dotted/new.jpg" in [p for p, _ in after.train]


def _unlabelled(folder: Path, n: int = 3) -> list[Path]:
    folder.mkdir(parents=True)
    out = []
    for i in range(n):
        out.append(folder / f"{'abc'[i]}.jpg")
        out[-1].write_bytes(bytes([i + 1]) * 50)  # distinct contents
    return out


def test_answers_follow_the_images_when_the_folder_is_moved(tmp_path: Path) -> None:
    """The log knows an image by its content: moving or renaming the unlabelled folder does not make
    it ask again, nor lets a second answer copy the same photo into a second class folder."""
    a, b, c = _unlabelled(tmp_path / "new_photos")
    images, log, classes = tmp_path / "images", tmp_path / "log.tsv", ["dotted", "striped"]
    answers = iter(["dotted", "s"])
    label_interactively([Candidate(a, np.array([0.6, 0.4]), 0.2), Candidate(b, np.array([0.5, 0.5]), 0.0)],
                        classes, images, log, input_fn=lambda prompt: next(answers), print_fn=lambda *x: None)
    assert unlabelled_images(tmp_path / "new_photos", log) == [c.resolve()]

    moved = tmp_path / "sorted_later" / "photos"
    moved.parent.mkdir()
    (tmp_path / "new_photos").rename(moved)
    assert unlabelled_images(moved, log) == [(moved / "c.jpg").resolve()]
    # Asked anyway (a candidate list made before): not asked again, not copied into a second class.
    printed: list[str] = []
    copied = label_interactively([Candidate(moved / "a.jpg", np.array([0.4, 0.6]), 0.2)], classes, images, log,
                                 input_fn=lambda prompt: "striped",
                                 print_fn=lambda *x: printed.append(" ".join(map(str, x))))
    assert copied == [] and not (images / "striped").exists()
    assert "not asked again" in printed[0] and "dotted" in printed[0]
    with pytest.raises(ValueError, match="already labelled 'dotted'"):
        apply_labels({moved / "a.jpg": "striped"}, classes, images, log)
    assert sorted(p.relative_to(images).as_posix() for p in images.rglob("*.jpg")) == ["dotted/a.jpg"]
    # the log still names each image by its path, for people reading it
    lines = log.read_text(encoding="utf-8").splitlines()
    assert lines[0].split("\t") == ["image", "label", "copied_to", "content"]
    assert lines[1].split("\t") == [str(a.resolve()), "dotted", "dotted/a.jpg", file_hash(moved / "a.jpg")]


def test_logs_from_before_the_content_column_are_still_read(tmp_path: Path) -> None:
    a, b, c = _unlabelled(tmp_path / "u")
    images, log, classes = tmp_path / "images", tmp_path / "log.tsv", ["dotted", "striped"]
    (images / "dotted").mkdir(parents=True)
    (images / "dotted" / "a.jpg").write_bytes(a.read_bytes())
    log.write_text(f"image\tlabel\tcopied_to\n{a.resolve()}\tdotted\tdotted/a.jpg\n{b.resolve()}\t-\t\n",
                   encoding="utf-8")
    assert read_log(log) == {str(a.resolve()): "dotted", str(b.resolve()): "-"}
    assert unlabelled_images(tmp_path / "u", log) == [c.resolve()]
    with pytest.raises(ValueError, match="already labelled 'dotted'"):
        apply_labels({a: "striped"}, classes, images, log)
    assert apply_labels({c: "striped"}, classes, images, log) == [images / "striped" / "c.jpg"]
    lines = log.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "image\tlabel\tcopied_to\tcontent" and len(lines) == 4
    assert read_log(log) == {str(a.resolve()): "dotted", str(b.resolve()): "-", file_hash(c): "striped"}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DATA_DIR with a 6-per-class demo data set, a real EfficientNet-Lite0 at 64 px and its SVM,
    plus a folder of 9 unlabelled images (other seed, names that do not give the class away)."""
    from imgclass.features import Featurizer
    from imgclass.modelfile import ModelSpec, build_model, save_model
    from imgclass.svm import LinearSvm

    data = tmp_path_factory.mktemp("al")
    images = data / "images" / "tiny"
    generate_demo_dataset(images, images_per_class=6, seed=0, progress=False)
    extra = data / "extra"
    generate_demo_dataset(extra, images_per_class=3, seed=11, progress=False)
    unlabelled = data / "unlabelled"
    unlabelled.mkdir()
    for n, p in enumerate(sorted(extra.rglob("*.jpg"))):
        shutil.copyfile(p, unlabelled / f"img{n:02d}.jpg")
    spec = ModelSpec("efficientnet_lite0", 64, "squash", kind="fixed")
    model = build_model(spec, pretrained=True)
    proc = data / "proc" / "tiny"
    save_model(proc / "model_fixed.pt", model, spec)
    classes = ["dotted", "leopard", "striped"]
    paths = [p for c in classes for p in list_images(images / c)]
    labels = np.repeat(np.arange(3), 6)
    feats = Featurizer(model, spec, batch_size=32, workers=0, export_dir=data / "onnx").featurize_paths(
        paths, progress=False).features
    LinearSvm([1.0], cv_folds=2).fit(feats, labels).save(proc / "svm_fixed.npz", classes)
    return data


def test_real_model_ranks_unlabelled_images_by_uncertainty(tiny_model: Path) -> None:
    proc = tiny_model / "proc" / "tiny"
    paths = unlabelled_images(tiny_model / "unlabelled")
    scored = score_images(paths, proc / "model_fixed.pt", proc / "svm_fixed.npz", workers=0, progress=False,
                          export_dir=tiny_model / "onnx")
    assert scored.classes == ["dotted", "leopard", "striped"] and scored.scores.shape == (9, 3)
    cands = scored.candidates(4, "margin")
    margins = {p: float(np.diff(np.sort(s)[-2:])[0]) for p, s in zip(scored.paths, scored.scores)}
    picked = [c.path for c in cands]
    # The four picked have the four smallest margins, smallest first.
    assert [margins[p] for p in picked] == sorted(margins.values())[:4]
    assert max(margins[p] for p in picked) <= min(margins[p] for p in paths if p not in picked)


def _run_al(data: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "IMGCLASS_DATA_DIR": str(data), "IMGCLASS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, str(SCRIPTS / "activeLearning.py"), str(data / "unlabelled"), "--set", "datasetName=tiny",
         "--set", "run_workers=0", "--set", "al_numImages=3", *args],
        input=stdin, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT,
    )


def test_script_labels_from_stdin_and_the_next_split_trains_on_them(tiny_model: Path) -> None:
    before = {c: len(list_images(tiny_model / "images" / "tiny" / c)) for c in ("dotted", "leopard", "striped")}
    proc = _run_al(tiny_model, stdin="1\nnonsense\nleo\ns\n")
    assert proc.returncode == 0, proc.stderr
    assert "9 unlabelled images scored; the 3 most uncertain by 'margin'" in proc.stdout
    assert "copied 2 labelled image(s)" in proc.stdout and "not one of" in proc.stdout
    results = tiny_model / "results" / "tiny" / "svm"
    assert (results / "active_learning_candidates.png").stat().st_size > 1000
    ranked = (results / "active_learning_candidates.tsv").read_text().splitlines()
    assert ranked[0].split("\t") == ["rank", "image", "uncertainty_margin", "dotted", "leopard", "striped"]
    first, second = (Path(line.split("\t")[1]) for line in ranked[1:3])
    images = tiny_model / "images" / "tiny"
    assert (images / "dotted" / first.name).read_bytes() == first.read_bytes()
    assert (images / "leopard" / second.name).read_bytes() == second.read_bytes()
    after = {c: len(list_images(images / c)) for c in before}
    assert after == {"dotted": before["dotted"] + 1, "leopard": before["leopard"] + 1, "striped": before["striped"]}
    split = make_split(images, 0.75, 0)
    in_split = {p for p, _ in split.train + split.test}
    assert f"dotted/{first.name}" in in_split and f"leopard/{second.name}" in in_split

    # The next round does not ask about the three answered images again; a broken file is left out
    # and not counted as scored.
    broken = tiny_model / "unlabelled" / "broken.jpg"
    broken.write_bytes(b"not an image")
    try:
        proc = _run_al(tiny_model, "--no-prompt")
    finally:
        broken.unlink()
    assert proc.returncode == 0, proc.stderr
    assert "6 unlabelled images scored" in proc.stdout and "left out: " in proc.stdout and "broken.jpg" in proc.stdout
    assert first.name not in proc.stdout and second.name not in proc.stdout
    assert "3 image(s) answered in an earlier round (labelled or skipped, active_learning.tsv): not asked again" in proc.stdout
    # Photos the data set holds already (by content) take no slot: pointed at a class folder of the
    # data set, or a folder holding copies of its photos, the round has nothing to ask.
    copies = tiny_model / "copies"
    shutil.copytree(images / "striped", copies)
    try:
        env = {**os.environ, "IMGCLASS_DATA_DIR": str(tiny_model), "IMGCLASS_OFFLINE": "1"}
        proc = subprocess.run([sys.executable, str(SCRIPTS / "activeLearning.py"), str(copies), "--no-prompt",
                               "--set", "datasetName=tiny", "--set", "run_workers=0"],
                              capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    finally:
        shutil.rmtree(copies)
    assert proc.returncode == 0, proc.stderr
    assert f"{before['striped']} image(s) already in the data set (the same file content, e.g. " in proc.stdout
    assert "not scored, not asked" in proc.stdout and "no unlabelled images left in" in proc.stdout, proc.stdout


def test_script_without_a_model_says_which_stage_to_run(tmp_path: Path) -> None:
    (tmp_path / "unlabelled").mkdir()
    generate_demo_dataset(tmp_path / "unlabelled", images_per_class=1, progress=False)
    proc = _run_al(tmp_path)
    assert proc.returncode == 1 and "run scripts/1_prepareData.py, then scripts/2_refineDNN.py, then scripts/3_runDNN.py, then scripts/4_trainSVM.py first" in proc.stderr and "Traceback" not in proc.stderr


def test_score_images_script_scores_a_folder_offline_and_names_bad_files(tiny_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "new photos"
    shutil.copytree(tiny_model / "unlabelled", folder / "batch 1")
    (folder / "broken.jpg").write_bytes(b"not an image")
    # A name that is not UTF-8 (a zip made on Windows) used to stop the run before anything was written.
    non_utf8 = os.fsdecode(b"caf\xe9.jpg")
    shutil.copy(next((folder / "batch 1").iterdir()), folder / non_utf8)
    (folder / "_old" / "x").mkdir(parents=True)  # skipped, as stage 1 skips _duplicates/, and said
    shutil.copy(next((folder / "batch 1").iterdir()), folder / "_old" / "x" / "a.jpg")
    env = {**os.environ, "IMGCLASS_DATA_DIR": str(tiny_model), "IMGCLASS_OFFLINE": "1", "IMGCLASS_TRACKING": "0"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "scoreImages.py"), str(folder), "--set", "datasetName=tiny", "--set", "run_workers=0"],
        capture_output=True, text=True, env=env, timeout=300, cwd=ROOT,
    )
    # Files left out make the exit status 1 (as 6_callWebservice.py's), the others scored and written.
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "note: not scored (folders starting with _ are skipped, as stage 1 skips them): _old/ (1 image)" in proc.stdout
    assert "left out: broken.jpg: not an image" in proc.stdout and "9 images scored with svm of tiny" in proc.stdout
    assert "left out: caf\\xe9.jpg: the file name is not valid UTF-8" in proc.stdout
    assert proc.stdout.rstrip().endswith("2 file(s) not scored (listed above and on the page): exit status 1")
    rows = [line.split("\t") for line in (tiny_model / "results" / "tiny" / "svm" / "scores_new photos.tsv").read_text().splitlines()]
    assert rows[0] == ["image", "predicted", "dotted", "leopard", "striped"] and len(rows) == 10
    # The same scores as the library gives for those files, and the predicted class is the top one.
    proc_dir = tiny_model / "proc" / "tiny"
    ref = score_images(sorted((folder / "batch 1").iterdir()), proc_dir / "model_fixed.pt", proc_dir / "svm_fixed.npz",
                       flip_average=False, workers=0, progress=False, export_dir=tmp_path / "onnx")
    assert [r[0] for r in rows[1:]] == [f"batch 1/{p.name}" for p in ref.paths]
    np.testing.assert_allclose(np.array([[float(v) for v in r[2:]] for r in rows[1:]]), ref.scores, rtol=1e-4, atol=1e-4)
    assert [r[1] for r in rows[1:]] == [ref.classes[i] for i in ref.scores.argmax(axis=1)]
    page = (tiny_model / "results" / "tiny" / "svm" / "scores_new photos.html").read_text()
    assert page.count('class="card new"') == 9 and "one section per predicted class" in page
    # Whoever opens the page later learns what was not scored, and what the numbers are.
    assert "not scored (2)" in page and "<li>broken.jpg: not an image (unrecognised file format, 12 bytes)</li>" in page
    assert "SVM decision values" in page
    srcs = re.findall(r'<img loading="lazy" src="([^"]+)"', page)
    page_dir = tiny_model / "results" / "tiny" / "svm"
    # The links (URL-quoted: "batch 1" is "batch%201") reach the photos.
    assert len(srcs) == 9 and all((page_dir / urllib.parse.unquote(src)).resolve().is_file() for src in srcs)
    # One photo named on its own is scored too (it was "no such folder"), under its own name.
    one = ref.paths[0]
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "scoreImages.py"), str(one), "--set", "datasetName=tiny", "--set", "run_workers=0"],
        capture_output=True, text=True, env=env, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 0 and "1 image scored with svm of tiny" in proc.stdout, proc.stderr
    single = (page_dir / f"scores_{one.stem}.tsv").read_text().splitlines()
    assert len(single) == 2 and single[1].split("\t")[:2] == [one.name, rows[1][1]]
    # A name no output line can hold: the file is named with the reason, nothing is written.
    tabbed = shutil.copy(one, tmp_path / "a\tb.jpg")
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "scoreImages.py"), str(tabbed), "--set", "datasetName=tiny", "--set", "run_workers=0"],
        capture_output=True, text=True, env=env, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error: a\\tb.jpg: the file or folder name") and "rename it" in proc.stderr, proc.stderr
    assert not (page_dir / "scores_a\tb.tsv").exists()
    # Nothing that decodes: an error, and no empty table or page that would read as a result.
    (junk := tmp_path / "junk").mkdir()
    (junk / "notes.jpg").write_text("a text file")
    (junk / "empty.png").write_bytes(b"")
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "scoreImages.py"), str(junk), "--set", "datasetName=tiny", "--set", "run_workers=0"],
        capture_output=True, text=True, env=env, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 1 and "none of its 2 image file(s) could be scored" in proc.stderr, proc.stderr
    assert "left out: empty.png: empty file (0 bytes)" in proc.stdout and not (page_dir / "scores_junk.tsv").exists()


def test_score_images_script_evaluates_a_folder_laid_out_by_class(tiny_model: Path, tmp_path: Path) -> None:
    """A folder of photos collected later, sorted into the model's class folders: evaluated as stage 5
    evaluates the test set (the same metrics, table and page), without touching the data set's split;
    a class folder the model never learnt is named and scored without a label, as are loose photos."""
    folder = tmp_path / "camera 2"
    shutil.copytree(tiny_model / "extra", folder)  # dotted/, leopard/, striped/: 3 photos each, another seed
    # A striped photo filed under dotted, in a sub-folder (read as stage 1 reads class folders): a mistake.
    odd = folder / "dotted" / "2024" / "odd.jpg"
    odd.parent.mkdir()
    shutil.move(folder / "striped" / "striped_0000.jpg", odd)
    (folder / "zebra").mkdir()  # no class of the model
    shutil.copy(folder / "leopard" / "leopard_0000.jpg", folder / "zebra" / "z.jpg")
    shutil.copy(folder / "leopard" / "leopard_0001.jpg", folder / "loose.jpg")  # in no class folder
    # A photo of the data set itself, which the classifier may have learnt: counted, but said.
    trained_on = sorted((tiny_model / "images" / "tiny" / "leopard").glob("leopard_*.jpg"))[0]
    shutil.copy(trained_on, folder / "leopard" / "from_training.jpg")
    env = {**os.environ, "IMGCLASS_DATA_DIR": str(tiny_model), "IMGCLASS_OFFLINE": "1", "IMGCLASS_TRACKING": "0"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "scoreImages.py"), str(folder), "--set", "datasetName=tiny", "--set", "run_workers=0"],
        capture_output=True, text=True, env=env, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert ("note: zebra/ (1 image): no class of the model is named 'zebra' (its classes: dotted, leopard, striped): "
            "scored without a label, not counted in the metrics") in proc.stdout
    assert f"note: 1 image(s) directly in {folder}, in no class folder: scored without a label" in proc.stdout
    # (The labelling test above may have copied more of these photos into the data set: counted by content.)
    in_dataset = {file_hash(f) for f in (tiny_model / "images" / "tiny").rglob("*.jpg")}
    copies = [f for c in ("dotted", "leopard", "striped") for f in (folder / c).rglob("*.jpg") if file_hash(f) in in_dataset]
    assert folder / "leopard" / "from_training.jpg" in copies
    assert (f"note: {len(copies)} of the 10 labelled images are in the data set already (the same file content, e.g. "
            in proc.stdout and "the classifier may have been trained on them" in proc.stdout)
    out = tiny_model / "results" / "tiny" / "svm"
    rows = [line.split("\t") for line in (out / "scores_camera 2.tsv").read_text().splitlines()]
    assert rows[0] == ["image", "true", "predicted", "dotted", "leopard", "striped"] and len(rows) == 1 + 12
    true = {r[0]: r[1] for r in rows[1:]}
    assert true["dotted/2024/odd.jpg"] == "dotted" and true["zebra/z.jpg"] == "" and true["loose.jpg"] == ""
    assert true["striped/striped_0001.jpg"] == "striped"
    # The metrics are compute_metrics' of the labelled photos' scores (as the TSV has them), nothing else.
    classes = ["dotted", "leopard", "striped"]
    known = [r for r in rows[1:] if r[1]]
    scores = np.array([[float(v) for v in r[3:]] for r in known])
    ref = compute_metrics(scores, np.array([classes.index(r[1]) for r in known]), classes)
    metrics = json.loads((out / "metrics_camera 2.json").read_text(encoding="utf-8"))
    assert metrics["n_labelled"] == 10 and metrics["in_dataset"] == len(copies) and metrics["not_labelled"] == {
        "unknown_class_folders": {"zebra": 1}, "outside_class_folders": 1}
    assert metrics["dataset"] == "tiny" and metrics["classifier"] == "svm"
    assert metrics["confusion_matrix"] == ref["confusion_matrix"] and metrics["classes"] == classes
    assert metrics["overall_accuracy"] == ref["overall_accuracy"]
    assert metrics["class_averaged_accuracy"] == ref["class_averaged_accuracy"]
    for c in classes:
        assert metrics["per_class"][c] == pytest.approx(ref["per_class"][c], abs=1e-6)
    assert [metrics["per_class"][c]["n"] for c in classes] == [4, 4, 2]
    # The same table and mistakes stage 5 prints; the misfiled photo is the mistake (the model sees stripes).
    assert format_table(metrics) in proc.stdout
    assert true["dotted/2024/odd.jpg"] != [r for r in rows[1:] if r[0] == "dotted/2024/odd.jpg"][0][2]
    assert format_confusions(metrics) in proc.stdout and "dotted -> striped: 1" in proc.stdout
    for png in ("roc_camera 2.png", "confusion_camera 2.png"):
        assert (out / png).stat().st_size > 5000
    # The page is stage 5's kind: the mistakes first (true -> predicted), the unlabelled photos after.
    page = (out / "scores_camera 2.html").read_text()
    cards = re.findall(r'<div class="card (\w+)"[^>]*>.*?<small>([^<]+)</small></div>', page)
    wrong = [name for state, name in cards if state == "err"]
    assert "dotted/2024/odd.jpg" in wrong and len(wrong) == len(known) - sum(np.diag(metrics["confusion_matrix"]))
    assert cards[0] == ("err", wrong[0]) and '<h3 id="s0">misclassified' in page
    odd_card = re.search(r'<div class="card err"[^>]*>(?:(?!</div>).)*dotted/2024/odd.jpg</small>', page).group(0)
    assert "<b>dotted &rarr; striped</b>" in odd_card
    assert {name for state, name in cards if state == "new"} == {"zebra/z.jpg", "loose.jpg"}
    assert "no known class, predicted" in page and "Accuracy " in page and "roc_camera%202.png" in page

    # The folder sorted otherwise (no folder named after a class): scored as before, and the metrics of
    # the earlier run removed rather than left beside scores they no longer describe.
    for c in classes:
        (folder / c).rename(folder / f"batch {c}")
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "scoreImages.py"), str(folder), "--set", "datasetName=tiny", "--set", "run_workers=0"],
        capture_output=True, text=True, env=env, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "note: removed metrics_camera 2.json, roc_camera 2.png, confusion_camera 2.png of an earlier run" in proc.stdout
    assert (out / "scores_camera 2.tsv").read_text().splitlines()[0].split("\t")[:2] == ["image", "predicted"]
    assert not any((out / f).exists() for f in ("metrics_camera 2.json", "roc_camera 2.png", "confusion_camera 2.png"))
    assert 'class="card err"' not in (out / "scores_camera 2.html").read_text()


def test_score_images_on_a_folder_named_train_leaves_stage_5s_train_metrics_alone(tiny_model: Path, tmp_path: Path) -> None:
    """A folder named train/ (a split made in advance) gave metrics_train.json, roc_train.png and
    confusion_train.png beside the TSV: stage 5 --on train's files in the same results folder. Scored
    unlabelled, the run deleted them as 'of an earlier run'; evaluated, it overwrote them."""
    data = tmp_path / "data"
    shutil.copytree(tiny_model, data, ignore=shutil.ignore_patterns("featcache", "results"))
    results = data / "results" / "tiny" / "svm"
    results.mkdir(parents=True)
    stage5 = {f"{kind}_train{ext}": f"stage 5 --on train {kind}".encode()
              for kind, ext in (("metrics", ".json"), ("roc", ".png"), ("confusion", ".png"))}
    for name, content in stage5.items():
        (results / name).write_bytes(content)
    env = {**os.environ, "IMGCLASS_DATA_DIR": str(data), "IMGCLASS_OFFLINE": "1", "IMGCLASS_TRACKING": "0"}
    unlabelled = tmp_path / "batch" / "train"
    shutil.copytree(data / "unlabelled", unlabelled)
    labelled = tmp_path / "split" / "Train"
    for c in ("dotted", "striped"):
        shutil.copytree(data / "images" / "tiny" / c, labelled / c)
    for folder in (unlabelled, labelled):
        proc = subprocess.run(
            [sys.executable, str(SCRIPTS / "scoreImages.py"), str(folder), "--set", "datasetName=tiny",
             "--set", "run_workers=0"],
            capture_output=True, text=True, env=env, timeout=300, cwd=ROOT,
        )
        assert proc.returncode == 0, proc.stderr
        assert "removed metrics_train.json" not in proc.stdout, proc.stdout
        for name, content in stage5.items():
            assert (results / name).read_bytes() == content, (folder, name)
    # The labelled folder's own metrics are written, under a name of their own.
    metrics = json.loads((results / "metrics_scores_Train.json").read_text(encoding="utf-8"))
    n = sum(1 for c in ("dotted", "striped") for _ in list_images(labelled / c))
    assert metrics["n_labelled"] == n and (results / "roc_scores_Train.png").stat().st_size > 5000


def test_score_images_script_runs_the_network_with_the_engine_run_engine_names(tiny_model: Path, tmp_path: Path) -> None:
    """run_engine = "torch": PyTorch runs the network (no ONNX export is written), with the same scores."""
    data = tmp_path / "data"
    shutil.copytree(tiny_model, data, ignore=shutil.ignore_patterns("featcache", "results"))
    env = {**os.environ, "IMGCLASS_DATA_DIR": str(data), "IMGCLASS_OFFLINE": "1", "IMGCLASS_TRACKING": "0"}
    scores = {}
    for engine in ("torch", "onnx"):
        out = tmp_path / f"{engine}.tsv"
        proc = subprocess.run(
            [sys.executable, str(SCRIPTS / "scoreImages.py"), str(data / "unlabelled"), "--set", "datasetName=tiny",
             "--set", "run_workers=0", "--set", f"run_engine={engine}", "--out", str(out)],
            capture_output=True, text=True, env=env, timeout=300, cwd=ROOT,
        )
        assert proc.returncode == 0, proc.stderr
        exported = list((data / "proc" / "tiny").rglob("*.onnx"))
        assert bool(exported) == (engine == "onnx"), exported
        scores[engine] = np.array([[float(v) for v in line.split("\t")[2:]] for line in out.read_text().splitlines()[1:]])
    assert scores["torch"].shape == (9, 3)
    np.testing.assert_allclose(scores["torch"], scores["onnx"], rtol=1e-3, atol=1e-3)


def test_the_candidates_sheet_shows_small_scores_with_their_digits_and_short_names(tmp_path: Path) -> None:
    """SVM decision values near 0 read "-0.00" and "0.00" with 2 decimals; 60-character class names
    ran over the neighbouring captions, and the second row's captions up into the first row's pictures."""
    from imgclass.active import plot_candidates

    classes = ["Long-sleeve women's blouse with small polka dots, navy blue",
               "Long-sleeve women's blouse with small polka dots, red", "c"]
    candidates = []
    for i in range(7):  # two rows of 5
        write_image(tmp_path / f"photo_with_a_rather_long_file_name_{i}.jpg", (200, 30, 30), size=(40, 120))
        candidates.append(Candidate(tmp_path / f"photo_with_a_rather_long_file_name_{i}.jpg",
                                    np.array([-0.0004, -0.001, 0.0003]), 0.1))
    fig = plot_candidates(candidates, classes)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes = [ax for ax in fig.axes if ax.images]
    captions = [ax.get_title() for ax in axes]
    assert len(captions) == 7 and not any(re.search(r"-0\.0+(?!\d)", c) for c in captions)
    lines = captions[0].splitlines()
    assert lines[1].endswith(" 0.0003") and lines[2].endswith(" -0.0004")  # 3 significant digits
    names = [line.rsplit(" ", 1)[0] for line in lines[1:]]
    assert names[0] == "c" and names[1] != classes[0] and len(names[1]) <= 24 and "…" in lines[0]
    for ax in axes:
        caption = ax.title.get_window_extent(renderer)
        for other in axes:
            assert not caption.overlaps(other.images[0].get_window_extent(renderer))
            assert other is ax or not caption.overlaps(other.title.get_window_extent(renderer))
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_a_file_given_for_the_folder_of_unlabelled_images_is_named_as_a_file(tmp_path: Path) -> None:
    photo = tmp_path / "new" / "a.jpg"
    write_image(photo, (200, 30, 30))
    # "no such folder" read as a typo in a path that is there.
    with pytest.raises(ValueError, match=f"a file; give the folder of unlabelled images it is in \\({re.escape(str(photo.parent))}\\)"):
        unlabelled_images(photo)
    with pytest.raises(FileNotFoundError, match="no such folder of unlabelled images"):
        unlabelled_images(tmp_path / "nothing")
    # From the shell: one line, not a traceback (the model is not needed to say it).
    proc = subprocess.run([sys.executable, str(SCRIPTS / "activeLearning.py"), str(photo), "--no-prompt"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "IMGCLASS_DATA_DIR": str(tmp_path), "IMGCLASS_TRACKING": "0"})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"error: {photo}: a file; give the folder of unlabelled images it is in" in proc.stderr
