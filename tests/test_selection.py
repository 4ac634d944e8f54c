"""Choosing the featurizer by cross-validation on the training set (scripts/selectFeaturizer.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import run_script
from imgclass.data import Split, load_split
from imgclass.features import Featurizer
from imgclass.modelfile import ModelSpec, build_model
from imgclass.selection import CandidateScore, recommend
from imgclass.svm import LinearSvm


def _score(backbone: str, mode: str, acc: float, se: float, gflops: float) -> CandidateScore:
    return CandidateScore(ModelSpec(backbone, 224, mode), acc, se, 1.0, gflops)


def _demo_without_test_images(tmp_path: Path, args: list[str]) -> tuple[Path, Split]:
    """Stages 0 and 1 on the demo set, then its test images deleted: what runs next must not need them."""
    run_script("0_downloadData.py", *args, data_dir=tmp_path)
    run_script("1_prepareData.py", *args, data_dir=tmp_path)
    images = tmp_path / "images" / "fashionTextureDemo"
    split = load_split(tmp_path / "proc" / "fashionTextureDemo" / "split.json")
    for path, _ in split.test:
        (images / path).unlink()
    return images, split


def test_the_one_standard_error_rule_prefers_the_cheapest_close_candidate() -> None:
    small = _score("efficientnet_lite0", "crop", 0.90, 0.02, 0.8)
    big = _score("efficientnet_lite2", "crop", 0.91, 0.02, 1.2)
    assert recommend([big, small]) is small  # 1 point better is within one standard error: the cheaper one
    much_better = _score("efficientnet_lite2", "squash", 0.95, 0.01, 1.2)
    assert recommend([small, big, much_better]) is much_better  # beyond the error bar: the better one
    squash = _score("efficientnet_lite0", "squash", 0.905, 0.02, 0.8)
    assert recommend([small, squash]) is squash  # equal cost: the higher accuracy ...
    assert recommend([small, squash], prefer=small.spec) is small  # ... unless the current parameters are as close
    skipped = CandidateScore(ModelSpec("resnet50", 224, "crop"), None, None, None, None, problem="no weights")
    assert recommend([skipped]) is None and recommend([skipped, small]) is small


def test_script_scores_candidates_on_training_images_only(tmp_path: Path) -> None:
    args = ["--set", "datasetName=fashionTextureDemo", "--set", "demoImagesPerClass=8", "--set", "rf_inputResolution=64",
            "--set", "svm_cvFolds=3", "--set", "run_workers=0"]
    images, split = _demo_without_test_images(tmp_path, args)
    bad = run_script("selectFeaturizer.py", *args, "--resolutions", "64", "2000", data_dir=tmp_path, check=False)
    assert bad.returncode == 2 and "--resolutions 2000: expected 32 to 1024 pixels" in bad.stderr, bad.stderr
    assert "candidates" not in bad.stdout  # refused before any candidate's work
    proc = run_script("selectFeaturizer.py", *args, "--backbones", "efficientnet_lite0", "efficientnet_lite1",
                      "--resize-modes", "crop", "squash", data_dir=tmp_path)
    assert f"{len(split.train)} training images of fashionTextureDemo; 4 candidates; the test images are not used" in proc.stdout
    rows = [line.split("\t") for line in (tmp_path / "results" / "fashionTextureDemo" / "featurizer_selection.tsv").read_text().splitlines()]
    assert rows[0][:4] == ["backbone", "resolution", "resize_mode", "cv_accuracy"] and len(rows) == 5
    assert (tmp_path / "results" / "fashionTextureDemo" / "featurizer_selection.png").stat().st_size > 2000
    scores = {(r[0], r[2]): float(r[3]) for r in rows[1:]}
    # The figure is the SVM's cross-validation accuracy at its chosen C, as the library computes it.
    spec = ModelSpec("efficientnet_lite1", 64, "squash")
    feats = Featurizer(build_model(spec), spec, flip_average=False, workers=0, export_dir=tmp_path / "onnx").featurize_paths(
        [images / p for p, _ in split.train], progress=False).features
    svm = LinearSvm(cv_folds=3, workers=1).fit(feats, np.array([y for _, y in split.train]))
    assert scores[("efficientnet_lite1", "squash")] == pytest.approx(svm.cv_scores_[svm.C_], abs=1e-4)
    assert "recommended (the cheapest within one standard error of the best)" in proc.stdout
    assert "--set rf_pretrainedModel=efficientnet_lite" in proc.stdout
    # A second run reuses every candidate's features from the cache.
    again = run_script("selectFeaturizer.py", *args, "--backbones", "efficientnet_lite0", "efficientnet_lite1",
                       "--resize-modes", "crop", "squash", data_dir=tmp_path)
    assert f"(features of {4 * len(split.train)} image(s) came from the cache of earlier runs)" in again.stdout


def test_a_backbone_without_weights_is_skipped_with_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))  # no ResNet weights there; downloads are off
    args = ["--set", "demoImagesPerClass=4", "--set", "rf_inputResolution=64", "--set", "svm_cvFolds=2"]
    run_script("0_downloadData.py", *args, data_dir=tmp_path)
    run_script("1_prepareData.py", *args, data_dir=tmp_path)
    proc = run_script("selectFeaturizer.py", *args, "--backbones", "resnet18", "--resize-modes", "crop",
                      data_dir=tmp_path, check=False)
    assert proc.returncode == 1
    assert "resnet18 64px crop" in proc.stdout and "skipped: resnet18: weights file resnet18-f37072fd.pth not found" in proc.stdout
    assert "no candidate could be scored" in proc.stdout


# -- choosing the classifier (scripts/selectClassifier.py) -----------------------------------------

def test_holdout_takes_a_share_of_every_class_and_leaves_single_images_to_fit() -> None:
    from imgclass.selection import holdout_indices

    labels = np.array([0] * 10 + [1] * 5 + [2] * 1 + [3] * 2)
    fit, val = holdout_indices(labels, 0.2, seed=0)
    assert sorted(np.concatenate([fit, val]).tolist()) == list(range(len(labels)))
    assert np.bincount(labels[val], minlength=4).tolist() == [2, 1, 0, 1]  # at least one, never a whole class
    assert np.array_equal(val, holdout_indices(labels, 0.2, seed=0)[1])  # seeded
    with pytest.raises(ValueError, match="between 0 and 1"):
        holdout_indices(labels, 1.0, seed=0)


def test_the_cheapest_classifier_within_one_standard_error_is_recommended() -> None:
    from imgclass.selection import ClassifierScore, recommend_classifier

    def s(name: str, acc: float) -> ClassifierScore:
        return ClassifierScore(name, acc, acc, float(np.sqrt(acc * (1 - acc) / 100)), 100)

    close = [s("svmDnnRefined", 0.93), s("dnn", 0.92), s("svm", 0.91)]  # SE of 93% over 100 images: 2.6 points
    assert recommend_classifier(close).classifier == "svm"
    apart = [s("svm", 0.85), s("dnn", 0.95), s("svmDnnRefined", 0.96)]
    assert recommend_classifier(apart).classifier == "dnn"


def test_select_classifier_scores_on_held_out_training_images_only(tmp_path: Path) -> None:
    from imgclass.selection import ClassifierScore, holdout_indices, recommend_classifier

    args = ["--set", "datasetName=fashionTextureDemo", "--set", "demoImagesPerClass=10", "--set", "rf_inputResolution=64",
            "--set", "svm_cvFolds=2", "--set", "run_workers=0", "--set", "rf_workers=0", "--set", "rf_maxEpochs=2",
            "--set", "rf_averageLastEpochs=0", "--set", "rf_mbSize=8", "--set", "run_boFlipAverage=True"]
    images, split = _demo_without_test_images(tmp_path, args)
    proc = run_script("selectClassifier.py", *args, "--val-fraction", "0.3", data_dir=tmp_path)
    assert f"{len(split.train)} training images of fashionTextureDemo; 30% of each class held out" in proc.stdout
    assert "flip averaging on (run_boFlipAverage, as stage 3)" in proc.stdout
    assert "epoch   2/2" in proc.stdout and "held-out error" in proc.stdout and "test error" not in proc.stdout
    # The held-out error is what the choice is made by: not "reported only", as the test error is in stage 2.
    assert "saved model (" in proc.stdout and "reported only" not in proc.stdout
    results = tmp_path / "results" / "fashionTextureDemo"
    rows = [line.split("\t") for line in (results / "classifier_selection.tsv").read_text().splitlines()]
    assert rows[0] == ["classifier", "held_out_accuracy", "class_averaged_accuracy", "stderr", "n_held_out"]
    labels = np.array([y for _, y in split.train])
    fit, val = holdout_indices(labels, 0.3, seed=0)
    assert [r[0] for r in rows[1:]] == ["svm", "dnn", "svmDnnRefined"] and {r[4] for r in rows[1:]} == {str(len(val))}
    scores = [ClassifierScore(r[0], float(r[1]), float(r[2]), float(r[3]), int(r[4])) for r in rows[1:]]
    for sc in scores:  # whole images out of the held-out ones
        assert sc.accuracy * len(val) == pytest.approx(round(sc.accuracy * len(val)), abs=0.01)
    assert f"recommended (the cheapest within one standard error of the best): {recommend_classifier(scores).classifier}" in proc.stdout
    assert (results / "classifier_selection_curves.png").stat().st_size > 2000
    # The svm row is what stages 3 and 4 give when trained on the fit images and scored on the held-out ones
    # with flip averaging on (stage 3's ONNX path against the refiner's PyTorch features: allow one image).
    spec = ModelSpec("efficientnet_lite0", 64, "crop")
    feats = Featurizer(build_model(spec), spec, flip_average=True, workers=0, export_dir=tmp_path / "onnx").featurize_paths(
        [images / p for p, _ in split.train], progress=False).features
    svm = LinearSvm(cv_folds=2, workers=1).fit(feats[fit], labels[fit])
    assert abs(float((svm.predict(feats[val]) == labels[val]).mean()) - scores[0].accuracy) <= 1 / len(val) + 1e-9


def test_compare_classifiers_refuses_a_training_set_too_small_to_hold_images_out() -> None:
    from imgclass.refine import RefineConfig
    from imgclass.selection import compare_classifiers

    # One image per class: nothing can be held out without emptying a class; refused before any decoding.
    with pytest.raises(ValueError, match="3 training images are too few to hold 20% of each class out"):
        compare_classifiers(["a.jpg", "b.jpg", "c.jpg"], np.array([0, 1, 2]), ["x", "y", "z"],
                            RefineConfig(resolution=64), LinearSvm())


def _arrow(seed: int, size: int = 64) -> np.ndarray:
    """A bright wedge pointing left on a noisy background: its mirror image points right."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
    top, tip = int(rng.integers(8, 20)), int(rng.integers(6, 14))
    for x in range(tip, size - 6):
        half = (x - tip) * (size - 2 * top) // (2 * (size - 6 - tip))
        img[size // 2 - half: size // 2 + half + 1, x] = (235, 220, 60)
    return img


def test_compare_classifiers_scores_flip_averaged_features_when_asked(tmp_path: Path) -> None:
    """Left- and right-pointing wedges differ only by a mirror: the flip-averaged features (stage 3 with
    run_boFlipAverage) cannot tell them apart, the plain ones can. compare_classifiers must score what
    stage 3 would compute, so with flip_average=True every classifier is at chance."""
    from PIL import Image

    from imgclass.refine import RefineConfig
    from imgclass.selection import compare_classifiers

    paths, labels = [], []
    for i in range(24):
        for label, name in ((0, "left"), (1, "right")):
            img = _arrow(1000 * label + i)
            path = tmp_path / f"{name}_{i}.png"
            Image.fromarray(img if label == 0 else img[:, ::-1]).save(path)
            paths.append(path)
            labels.append(label)
    labels = np.array(labels)
    svm = LinearSvm(cv_folds=2, workers=1)
    # Control: without flip averaging, the fixed features separate the two directions.
    spec = ModelSpec("efficientnet_lite0", 64, "crop")
    plain = Featurizer(build_model(spec), spec, flip_average=False, workers=0, export_dir=tmp_path / "onnx")
    assert max(LinearSvm(cv_folds=2, workers=1).fit(plain.featurize_paths(paths, progress=False).features, labels)
               .cv_scores_.values()) >= 0.9
    config = RefineConfig(resolution=64, max_epochs=1, mb_size=8, workers=0, average_last_epochs=0)
    scores, _ = compare_classifiers(paths, labels, ["left", "right"], config, svm, val_fraction=0.5,
                                    progress=False, flip_average=True)
    assert [s.classifier for s in scores] == ["svm", "dnn", "svmDnnRefined"]
    for s in scores:  # 24 held-out images; mirror-blind features cannot do much better than half of them
        assert s.n_val == 24 and s.accuracy <= 0.75, s


def test_a_perfect_score_on_few_held_out_images_still_has_an_error_bar() -> None:
    """9 of 9 held out: the plain binomial error is 0 ("100.00% ± 0.00"), as if one image more or
    less could not change the ranking."""
    import math

    from imgclass.selection import held_out_stderr

    assert held_out_stderr(9, 9) == pytest.approx(math.sqrt((11 / 13) * (2 / 13) / 13)) and held_out_stderr(9, 9) > 0.09
    assert held_out_stderr(0, 9) == held_out_stderr(9, 9)
    # With many images it is the plain binomial error, near enough.
    assert held_out_stderr(900, 1000) == pytest.approx(math.sqrt(0.9 * 0.1 / 1000), rel=0.01)


def test_resize_modes_are_one_candidate_when_every_image_is_square(tmp_path: Path) -> None:
    """Digits, CIFAR-style sets: crop, squash and pad give the same pixels; scored thrice for one result."""
    from PIL import Image

    from imgclass.selection import all_square

    for i, size in enumerate([(32, 32), (64, 64), (40, 30)]):
        Image.new("L", size).save(tmp_path / f"{i}.pgm")
    square = [tmp_path / "0.pgm", tmp_path / "1.pgm"]
    assert all_square(square) and not all_square([*square, tmp_path / "2.pgm"])
    (tmp_path / "broken.png").write_bytes(b"not an image")
    assert not all_square([*square, tmp_path / "broken.png"])  # unknown: every mode is scored
    Image.MAX_IMAGE_PIXELS, limit = 100, Image.MAX_IMAGE_PIXELS  # a file over Pillow's pixel guard
    try:
        assert not all_square(square)
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def test_select_classifier_refuses_a_val_fraction_outside_0_1_before_anything(tmp_path: Path) -> None:
    for bad in ("0", "1", "nan", "-0.2"):  # said after its summary line ("nan% ... held out"), as a "held-out fraction"
        proc = run_script("selectClassifier.py", "--val-fraction", bad, data_dir=tmp_path, check=False)
        assert proc.returncode == 2 and f"--val-fraction {float(bad)}: expected a number between 0 and 1" in proc.stderr, \
            proc.stderr
        assert "held out" not in proc.stdout

