from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imgclass.fileio import save_npz
from imgclass.provenance import StaleFilesError, check_same_source, features_source


def _features(path: Path, source: str | None, flip: bool = False) -> Path:
    extra = {} if source is None else {"features_source": np.array(source)}
    return save_npz(path, features=np.zeros((2, 4), np.float32), flip_average=np.array(flip), **extra)


def test_the_source_follows_the_model_file_content_and_the_mirror_averaging(tmp_path: Path) -> None:
    model = tmp_path / "model_fixed.pt"
    model.write_bytes(b"weights A")
    a = features_source(model, False)
    assert features_source(model, False) == a != features_source(model, True)
    model.write_bytes(b"weights B")
    assert features_source(model, False) != a


def test_stale_features_and_a_stale_svm_are_refused_with_the_stage_to_rerun(tmp_path: Path) -> None:
    model = tmp_path / "model_fixed.pt"
    model.write_bytes(b"weights A")
    feats = _features(tmp_path / "features_fixed_test.npz", features_source(model, True), flip=True)
    check_same_source(model, feats)  # consistent: nothing raised
    check_same_source(model, feats, features_source(model, True), "svm_fixed.npz")
    with pytest.raises(StaleFilesError, match="svm_fixed.npz was trained on features of another model.*4_trainSVM"):
        check_same_source(model, feats, features_source(model, False), "svm_fixed.npz")
    model.write_bytes(b"weights B")  # stage 2 ran again
    with pytest.raises(StaleFilesError, match="earlier model_fixed.pt.*rerun scripts/3_runDNN.py, then scripts/4_trainSVM.py"):
        check_same_source(model, feats, "", "svm_fixed.npz")
    with pytest.raises(StaleFilesError, match=r"rerun scripts/3_runDNN.py$"):
        check_same_source(model, feats)
    # Files from before sources were recorded are not judged.
    check_same_source(model, _features(tmp_path / "old.npz", None), "anything", "svm_fixed.npz")


def test_features_of_an_earlier_split_are_refused(tmp_path: Path) -> None:
    from imgclass.provenance import split_hash

    model = tmp_path / "model_fixed.pt"
    model.write_bytes(b"weights A")
    split = tmp_path / "split.json"
    split.write_text('{"train": ["a/1.jpg"], "test": ["b/2.jpg"]}')
    feats = save_npz(tmp_path / "features_fixed_train.npz", features=np.zeros((1, 4), np.float32),
                     flip_average=np.array(False), features_source=np.array(features_source(model, False)),
                     split_hash=np.array(split_hash(split)))
    check_same_source(model, feats, split_file=split)
    split.write_text('{"train": ["b/2.jpg"], "test": ["a/1.jpg"]}')  # stage 1 ran again with another seed
    with pytest.raises(StaleFilesError, match="earlier split.json .stage 1 ran again since.: rerun scripts/3_runDNN.py"):
        check_same_source(model, feats, split_file=split)
    check_same_source(model, feats)  # without a split file to compare, only the model is checked


def test_features_of_an_earlier_split_name_stage_2_first_when_the_network_learned_from_that_split(tmp_path: Path) -> None:
    """Refined features: stage 3 would refuse the refined network in turn, so the whole chain is named."""
    import torch

    from imgclass.modelfile import ModelSpec, save_model
    from imgclass.provenance import split_hash

    split = tmp_path / "split.json"
    split.write_text('{"train": ["a/1.jpg"], "test": ["b/2.jpg"]}')
    model = save_model(tmp_path / "model_refined.pt", torch.nn.Linear(2, 2),
                       ModelSpec("efficientnet_lite0", 64, kind="refined", classes=("a", "b")),
                       extra={"split_hash": split_hash(split)})
    feats = save_npz(tmp_path / "features_refined_test.npz", features=np.zeros((1, 4), np.float32),
                     flip_average=np.array(False), features_source=np.array(features_source(model, False)),
                     split_hash=np.array(split_hash(split)))
    check_same_source(model, feats, split_file=split)
    split.write_text('{"train": ["b/2.jpg"], "test": ["a/1.jpg"]}')  # stage 1 ran again with another seed
    with pytest.raises(StaleFilesError, match=r"earlier split.json \(stage 1 ran again since\): rerun "
                                              r"scripts/2_refineDNN.py, then scripts/3_runDNN.py, then scripts/4_trainSVM.py$"):
        check_same_source(model, feats, "", "svm_refined.npz", split_file=split)


def test_an_svm_of_another_split_or_other_classes_is_refused(tmp_path: Path) -> None:
    """The fixed network never changes, so the model check cannot notice stage 1 rerun (another seed,
    new photos, a renamed class folder) before stage 3 but not stage 4."""
    model = tmp_path / "model_fixed.pt"
    model.write_bytes(b"weights A")
    source = features_source(model, False)
    feats = save_npz(tmp_path / "features_fixed_test.npz", features=np.zeros((2, 4), np.float32),
                     flip_average=np.array(False), features_source=np.array(source), split_hash=np.array("new"),
                     classes=np.array(["cat", "dog"]))
    check_same_source(model, feats, source, "svm_fixed.npz", svm_split_hash="new", svm_classes=["cat", "dog"])
    check_same_source(model, feats, source, "svm_fixed.npz")  # an SVM file from before these were recorded
    with pytest.raises(StaleFilesError, match="svm_fixed.npz was trained on the training images of another split "
                                              "than features_fixed_test.npz .*rerun scripts/4_trainSVM.py"):
        check_same_source(model, feats, source, "svm_fixed.npz", svm_split_hash="old", svm_classes=["cat", "dog"])
    # A class folder renamed so that the sorted order changes: same count, scores under the wrong names.
    with pytest.raises(StaleFilesError, match=r"trained for the classes \['dog', 'cat'\], but features_fixed_test.npz "
                                              r"has \['cat', 'dog'\]: rerun scripts/4_trainSVM.py"):
        check_same_source(model, feats, source, "svm_fixed.npz", svm_split_hash="new", svm_classes=["dog", "cat"])
    # The same from an SVM file written before split hashes were recorded (the classes were).
    with pytest.raises(StaleFilesError, match="trained for the classes"):
        check_same_source(model, feats, source, "svm_fixed.npz", svm_classes=["dog", "cat"])


@pytest.mark.parametrize("classifier, rerun", [("svm", "3_runDNN.py, 4_trainSVM.py"),
                                               ("dnn", "2_refineDNN.py, 3_runDNN.py"),
                                               ("svmDnnRefined", "2_refineDNN.py, 3_runDNN.py, 4_trainSVM.py")])
def test_a_classifier_of_an_earlier_split_is_not_used_on_new_images(tmp_path: Path, classifier: str, rerun: str) -> None:
    """Stage 6, scoreImages.py and activeLearning.py after stage 1 ran again: the classifier learned
    from the old split, the parameters (and the tracked run) describe the new one."""
    from imgclass.params import load_params
    from imgclass.provenance import check_trained_on_split, split_hash

    p = load_params(overrides={"DATA_DIR": str(tmp_path), "datasetName": "shirts", "classifier": classifier})
    check_trained_on_split(p)  # no split, no features: nothing to compare
    p.split_path.parent.mkdir(parents=True)
    p.split_path.write_text('{"train": ["a/1.jpg"], "test": ["b/2.jpg"]}')
    save_npz(p.features_path("train"), features=np.zeros((1, 4), np.float32), flip_average=np.array(False),
             features_source=np.array("x"), split_hash=np.array(split_hash(p.split_path)))
    check_trained_on_split(p)
    p.split_path.write_text('{"train": ["b/2.jpg"], "test": ["a/1.jpg"]}')  # stage 1 ran again with another seed
    with pytest.raises(StaleFilesError, match=rf"the {classifier} classifier of 'shirts' learned from the training "
                                              rf"images of an earlier split.json \(stage 1 ran again since\): "
                                              rf"rerun {rerun} and 5_evaluate.py in scripts/"):
        check_trained_on_split(p)


def test_a_split_hashes_alike_with_or_without_its_records(color_dataset: Path, tmp_path: Path) -> None:
    # split.json gained "settings" and "moved" (2026-12-01), "sizes" (2026-12-03): a data folder of an earlier version,
    # stage 1 rerun with nothing changed, read every model and features file as stale.
    import json

    from imgclass.data import make_split, save_split
    from imgclass.provenance import file_hash, split_hash

    split = make_split(color_dataset)
    new = save_split(split, tmp_path / "new.json")
    old = tmp_path / "old.json"  # as the earlier version wrote it, byte for byte
    old.write_text(json.dumps({k: v for k, v in split.to_json().items() if k not in ("settings", "moved", "sizes")},
                              indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    assert file_hash(old) != file_hash(new) and split_hash(old) == split_hash(new) == file_hash(old)
    other = save_split(make_split(color_dataset, seed=5), tmp_path / "other.json")
    assert split_hash(other) != split_hash(new)  # another split is another hash


def test_settings_are_compared_by_value_and_the_c_grid_in_any_order() -> None:
    from imgclass.provenance import check_model_settings

    made = {"svm_CVals": [10.0, 1.0], "rf_inputResolution": 224, "svm_boL2Normalize": True}
    check_model_settings(made, {"svm_CVals": [1, 10, 10], "rf_inputResolution": 224.0, "svm_boL2Normalize": True}, "svm.npz")
    with pytest.raises(StaleFilesError, match=r"svm.npz was made with svm_CVals = \[10.0, 1.0\], but the parameters "
                                              r"now say \[1, 100\]: give the same values again \(--set svm_CVals=\[10.0,1.0\]"):
        check_model_settings(made, {"svm_CVals": [1, 100], "rf_inputResolution": 224, "svm_boL2Normalize": True}, "svm.npz")
    with pytest.raises(StaleFilesError, match="svm_boL2Normalize = True"):  # True is no 1.0 here
        check_model_settings(made, {"svm_CVals": [1, 10], "rf_inputResolution": 224, "svm_boL2Normalize": 1.0}, "svm.npz")


def test_scoring_new_images_says_when_the_trained_network_sees_them_otherwise_than_the_parameters(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """scoreImages.py / activeLearning.py score with the classifier as trained (stage 6 refuses the
    difference instead): a backbone or resolution given to them alone must not pass unnoticed."""
    import torch

    from imgclass.modelfile import ModelSpec, save_model
    from imgclass.params import load_params
    from imgclass.provenance import trained_classifier

    p = load_params(overrides={"DATA_DIR": str(tmp_path), "classifier": "dnn", "rf_pretrainedModel": "efficientnet_lite0",
                               "rf_inputResolution": 64, "rf_resizeMode": "crop"})
    save_model(p.model_path, torch.nn.Linear(2, 2),
               ModelSpec("efficientnet_lite0", 64, resize_mode="crop", kind="refined", classes=("a", "b")))
    assert trained_classifier(p)[0] == p.model_path
    assert "note" not in capsys.readouterr().out  # the same settings: nothing to say
    other = p.replace(rf_pretrainedModel="resnet18", rf_inputResolution=128)
    assert trained_classifier(other)[0] == p.model_path  # scored as trained, not refused
    out = capsys.readouterr().out
    assert "rf_pretrainedModel = 'resnet18', rf_inputResolution = 128" in out
    assert "made with rf_pretrainedModel = 'efficientnet_lite0', rf_inputResolution = 64" in out
    trained_classifier(other, flip_note=False)  # stage 6 refuses it itself (check_trained_settings)
    assert capsys.readouterr().out == ""


# Stage 3 with stage 1 rerun by another process once stage 3 has read split.json (here: while stage 3
# loads the network, so the timing is fixed, not raced): argv[1] is scripts/, the rest stage 3's options.
_STAGE_3_WHILE_STAGE_1_RERUNS = """
import os, runpy, subprocess, sys
import imgclass.modelfile
from PIL import Image
scripts, options = sys.argv[1], sys.argv[2:]
load_model = imgclass.modelfile.load_model
def load_model_while_stage_1_reruns(*args, **kwargs):
    red = os.path.join(os.environ["IMGCLASS_DATA_DIR"], "images", "colors", "red")
    for i in range(3):  # new photos, then stage 1 in another shell
        Image.new("RGB", (48, 40), (120 + 40 * i, 10, 10)).save(os.path.join(red, f"new_{i}.png"))
    subprocess.run([sys.executable, os.path.join(scripts, "1_prepareData.py"), *options], check=True,
                   capture_output=True)
    return load_model(*args, **kwargs)
imgclass.modelfile.load_model = load_model_while_stage_1_reruns
sys.argv = ["3_runDNN.py", *options]
runpy.run_path(os.path.join(scripts, "3_runDNN.py"), run_name="__main__")
"""


def test_features_made_while_stage_1_reruns_are_of_the_split_stage_3_read(color_dataset: Path) -> None:
    """Stage 3 hashed split.json again when it saved the features: rewritten meanwhile by stage 1 in
    another shell (photos added), the features of the old split carried the new split's hash, and
    stage 4 trained on them without a word (27 of the 32 training images, say)."""
    import json
    import os
    import subprocess
    import sys

    from conftest import ROOT, SCRIPTS, run_script

    data = color_dataset.parents[1]
    small = ["--set", "datasetName=colors", "--set", "rf_inputResolution=64", "--set", "svm_cvFolds=3"]
    run_script("1_prepareData.py", *small, data_dir=data)
    run_script("2_refineDNN.py", *small, data_dir=data)
    env = {**os.environ, "IMGCLASS_DATA_DIR": str(data), "IMGCLASS_OFFLINE": "1", "IMGCLASS_TRACKING": "0"}
    stage3 = subprocess.run([sys.executable, "-c", _STAGE_3_WHILE_STAGE_1_RERUNS, str(SCRIPTS), *small],
                            capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert stage3.returncode == 0, stage3.stderr
    split = json.loads((data / "proc" / "colors" / "split.json").read_text())
    assert any("new_" in path for path, _ in split["train"] + split["test"])  # stage 1 did run in between
    refused = run_script("4_trainSVM.py", *small, data_dir=data, check=False)
    assert refused.returncode == 1 and ("features_fixed_train.npz was computed for an earlier split.json (stage 1 "
                                        "ran again since): rerun scripts/3_runDNN.py") in refused.stderr, refused.stderr
    run_script("3_runDNN.py", *small, data_dir=data)  # as it says: then stage 4 takes them
    run_script("4_trainSVM.py", *small, data_dir=data)


def test_train_and_test_features_of_two_stage_3_runs_name_stage_3(tmp_path: Path) -> None:
    """Two stage 3s at once (two shells, run_boFlipAverage on and off) can leave the train features of
    one and the test features of the other: stage 5 said 'rerun scripts/4_trainSVM.py', which learned
    from the same train features again, and stage 5 refused again."""
    model = tmp_path / "model_fixed.pt"
    model.write_bytes(b"weights A")
    on, off = features_source(model, True), features_source(model, False)
    train = _features(tmp_path / "features_fixed_train.npz", on, flip=True)  # the SVM learned from these
    test = _features(tmp_path / "features_fixed_test.npz", off, flip=False)
    with pytest.raises(StaleFilesError, match=r"^features_fixed_train.npz and features_fixed_test.npz were computed by "
                                              r"different runs of stage 3 \(mirror averaging on and off; .*\): "
                                              r"rerun scripts/3_runDNN.py, then scripts/4_trainSVM.py$"):
        check_same_source(model, test, on, "svm_fixed.npz", train_features=train)
    # Stage 3 rerun with the other value, stage 4 forgotten: both sides alike, the SVM is the stale one.
    _features(train, off, flip=False)
    with pytest.raises(StaleFilesError, match="another model or preprocessing .*: rerun scripts/4_trainSVM.py$"):
        check_same_source(model, test, on, "svm_fixed.npz", train_features=train)
