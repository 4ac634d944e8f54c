"""Choosing the featurizer by cross-validation on the training set (scripts/selectFeaturizer.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import run_script
from imgclass.data import load_split
from imgclass.features import Featurizer
from imgclass.modelfile import ModelSpec, build_model
from imgclass.selection import CandidateScore, recommend
from imgclass.svm import LinearSvm


def _score(backbone: str, mode: str, acc: float, se: float, gflops: float) -> CandidateScore:
    return CandidateScore(ModelSpec(backbone, 224, mode), acc, se, 1.0, gflops)


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
    run_script("0_downloadData.py", *args, data_dir=tmp_path)
    run_script("1_prepareData.py", *args, data_dir=tmp_path)
    images = tmp_path / "images" / "fashionTextureDemo"
    split = load_split(tmp_path / "proc" / "fashionTextureDemo" / "split.json")
    for path, _ in split.test:  # the test images are gone: the script must not need them
        (images / path).unlink()
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
