from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imgclass.featureset import FeatureSet
from imgclass.fileio import DamagedFileError, load_npz, save_npz


def test_what_stage_3_writes_reads_back_whole_or_header_only(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    written = FeatureSet(["dotted/a.jpg", "striped/b.jpg"], np.array([0, 1]), ["dotted", "striped"],
                         rng.normal(size=(2, 5)).astype(np.float32), probs=np.array([[0.9, 0.1], [0.2, 0.8]]),
                         flip_average=True, source="abc", split_hash="def",
                         made_with={"rf_inputResolution": 320, "rf_resizeMode": "crop"},
                         refined_with={"rf_maxEpochs": 8, "rf_lrPerMb": [0.0003, 0.0001]})
    path = written.save(tmp_path / "features_refined_test.npz")
    back = FeatureSet.load(path, made_with_keys=("rf_inputResolution", "rf_resizeMode", "rf_pretrainedModel"))
    assert (back.paths, back.labels.tolist(), back.classes, back.flip_average, back.source, back.split_hash) == (
        written.paths, [0, 1], written.classes, True, "abc", "def")
    assert back.made_with == {"rf_inputResolution": 320, "rf_resizeMode": "crop"} and len(back) == 2
    assert back.refined_with == FeatureSet.load(path, header_only=True).refined_with == written.refined_with
    np.testing.assert_array_equal(back.features, written.features)
    np.testing.assert_array_equal(back.probs, written.probs)
    header = FeatureSet.load(path, header_only=True)
    assert (header.classes, header.source, header.flip_average, len(header), header.probs) == (
        written.classes, "abc", True, 0, None)
    # Fixed features have no probabilities; a file from before provenance was recorded says nothing.
    plain = FeatureSet(["a.jpg"], np.array([0]), ["a"], np.zeros((1, 3), np.float32)).save(tmp_path / "old.npz")
    assert "flip_average" not in load_npz(plain)
    old = FeatureSet.load(plain)
    assert (old.probs, old.flip_average, old.source, old.refined_with) == (None, None, "", {})


def test_a_file_that_is_not_stage_3s_is_named(tmp_path: Path) -> None:
    other = save_npz(tmp_path / "features_fixed_train.npz", coef=np.zeros((2, 3)))
    with pytest.raises(DamagedFileError, match=r"features_fixed_train\.npz: not a features file written by "
                                               r"scripts/3_runDNN\.py \(it has no paths, labels, classes, features\)"):
        FeatureSet.load(other)
    with pytest.raises(FileNotFoundError, match=r"missing\.npz not found: run scripts/3_runDNN\.py first"):
        FeatureSet.load(tmp_path / "missing.npz")


def test_image_files_changed_after_stage_3_read_them_are_named(tmp_path: Path) -> None:
    import os

    from imgclass.featureset import changed_images, changed_images_note, file_stats

    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (tmp_path / name).write_bytes(b"photo " + name.encode())
    paths = ["a.jpg", "b.jpg", "c.jpg"]
    from imgclass.provenance import file_hash

    (tmp_path / "d.jpg").write_bytes(b"photo d")
    paths = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    fs = FeatureSet(paths, np.zeros(4, np.int64), ["x"], np.zeros((4, 2), np.float32),
                    file_stats=file_stats([tmp_path / p for p in paths]),
                    file_hashes=[file_hash(tmp_path / p) for p in paths])
    back = FeatureSet.load(fs.save(tmp_path / "f.npz"))
    assert back.file_hashes == fs.file_hashes
    assert changed_images(back, tmp_path) == [] and changed_images_note(back, tmp_path, "test") is None

    def later(name: str) -> None:  # a modification time a second on
        st = os.stat(tmp_path / name)
        os.utime(tmp_path / name, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))

    (tmp_path / "a.jpg").write_bytes(b"another photo")  # replaced under its name
    later("b.jpg")  # copied without its time (cp -r): the same photo
    (tmp_path / "c.jpg").unlink()  # gone: since_split_notes names it
    (tmp_path / "d.jpg").write_bytes(b"photo D")  # edited, the same size
    later("d.jpg")
    assert changed_images(back, tmp_path) == ["a.jpg", "d.jpg"]
    assert changed_images_note(back, tmp_path, "test").startswith("2 test image file(s) changed since "
                                                                  "scripts/3_runDNN.py computed their features (a.jpg, d.jpg:")
    # Without the hashes (or one that could not be read) the time alone tells.
    fs.file_hashes = None
    assert changed_images(FeatureSet.load(fs.save(tmp_path / "f.npz")), tmp_path) == ["a.jpg", "b.jpg", "d.jpg"]
    # A features file from before the stats were recorded: nothing to compare, nothing said.
    fs.file_stats = None
    assert changed_images(FeatureSet.load(fs.save(tmp_path / "f.npz")), tmp_path) == []
