from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import SCRIPTS
from imgclass.fileio import (DamagedFileError, atomic_open, hold_lock, load_npz, read_json, same_name_groups, save_npz,
                             write_json)


def test_damaged_files_are_named_when_read(tmp_path: Path) -> None:
    split = tmp_path / "split.json"
    split.write_text("{garbage")
    with pytest.raises(DamagedFileError, match=r"split\.json: not valid JSON"):
        read_json(split)
    good = save_npz(tmp_path / "features_fixed_train.npz", features=np.ones((2, 3), np.float32))
    for name, data in (("text.npz", b"junk"), ("truncated.npz", good.read_bytes()[:100])):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DamagedFileError, match=rf"{name}: not a \.npz file written by this pipeline"):
            load_npz(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        load_npz(tmp_path / "missing.npz")
    assert load_npz(good)["features"].shape == (2, 3)


def test_valid_files_of_the_wrong_kind_are_named_not_a_traceback(tmp_path: Path) -> None:
    """A features file where the SVM should be, a metrics.json copied over split.json, a torch file of
    someone else's: each reader names the file and the stage that writes it (they raised KeyError)."""
    from imgclass.data import load_split
    from imgclass.modelfile import load_model_extra
    from imgclass.provenance import check_same_source, flip_average_of_stage3
    from imgclass.svm import LinearSvm

    foreign = save_npz(tmp_path / "svm_fixed.npz", features=np.ones((2, 3), np.float32))
    with pytest.raises(DamagedFileError, match=r"svm_fixed\.npz: not an SVM file written by scripts/4_trainSVM\.py"):
        LinearSvm.load(foreign)
    split = write_json(tmp_path / "split.json", {"accuracy": 0.9})
    with pytest.raises(DamagedFileError, match=r"split\.json: not a split written by scripts/1_prepareData\.py"):
        load_split(split)
    import torch

    torch.save({"weights": torch.zeros(2)}, tmp_path / "model_refined.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    for name in ("model_refined.pt", "junk.pt"):
        with pytest.raises(ValueError, match=rf"{name}: not a model file written by scripts/2_refineDNN\.py"):
            load_model_extra(tmp_path / name)
    # A truncated features file reaching the provenance checks of stage 6 and active learning.
    features = tmp_path / "features_fixed_train.npz"
    features.write_bytes(save_npz(tmp_path / "whole.npz", features=np.ones((50, 3)), flip_average=np.array(True),
                                  features_source=np.array("x")).read_bytes()[:200])
    with pytest.raises(DamagedFileError, match=r"features_fixed_train\.npz: not a \.npz file"):
        flip_average_of_stage3(features, requested=False)
    with pytest.raises(DamagedFileError, match=r"features_fixed_train\.npz: not a \.npz file"):
        check_same_source(tmp_path / "model_refined.pt", features)
    assert load_npz(tmp_path / "whole.npz", keys=("flip_average", "absent")) == {"flip_average": np.array(True)}


@pytest.mark.parametrize("where", ["train", "test", "moved"])
def test_a_split_with_a_list_in_place_of_an_image_path_is_named_when_read(tmp_path: Path, where: str) -> None:
    """It loaded, and stage 1 rerun on it ended in "TypeError: unhashable type: 'list'"."""
    from imgclass.data import load_split

    d = {"classes": ["a", "b"], "method": "random", "train": [["a/1.jpg", 0], ["b/2.jpg", 1]], "test": [["a/3.jpg", 0]],
         "moved": ["a/3.jpg"]}
    if where == "moved":
        d["moved"] = [["a/3.jpg"]]
    else:
        d[where][0][0] = ["a/1.jpg"]
    split = write_json(tmp_path / "split.json", d)
    with pytest.raises(DamagedFileError, match=r"split\.json: not a split written by scripts/1_prepareData\.py "
                                               r"\(TypeError: \['a/[13]\.jpg'\] in place of an image path\)"):
        load_split(split)


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = write_json(tmp_path / "metrics.json", {"accuracy": 0.9})
    with pytest.raises(RuntimeError), atomic_open(path, "w") as f:
        f.write('{"accura')
        raise RuntimeError("crash half-way")
    assert read_json(path) == {"accuracy": 0.9} and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_get_the_mode_open_would_give(tmp_path: Path, umask: int) -> None:
    """Not mkstemp's private 0600: a web service in a container (another user) reads the bundle."""
    old = os.umask(umask)
    try:
        json_file = write_json(tmp_path / "a.json", {"x": 1})
        npz_file = save_npz(tmp_path / "b.npz", x=np.zeros(3))
        with atomic_open(tmp_path / "c.txt") as f:
            f.write("text")
        with open(tmp_path / "plain.txt", "w") as f:  # what open() gives, for comparison
            f.write("text")
    finally:
        os.umask(old)
    want = 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == want
    for path in (json_file, npz_file, tmp_path / "c.txt"):
        assert stat.S_IMODE(path.stat().st_mode) == want, path


def test_json_keeps_names_readable_and_still_writes_names_that_are_not_utf8(tmp_path: Path) -> None:
    """split.json is read by people too: "Rayé" as such, not "Ray\\u00e9"; a file name decoded with
    surrogate escapes (not UTF-8) cannot be written so, and is escaped instead of failing the stage."""
    path = write_json(tmp_path / "split.json", {"classes": ["Rayé", "点"]})
    assert '"Rayé"' in path.read_text(encoding="utf-8") and read_json(path) == {"classes": ["Rayé", "点"]}
    odd = os.fsdecode(b"caf\xe9.jpg")
    path = write_json(tmp_path / "odd.json", {"image": odd, "class": "Rayé"})
    assert path.read_bytes().isascii() and read_json(path) == {"image": odd, "class": "Rayé"}


@pytest.mark.skipif(sys.platform == "win32", reason="advisory locks: POSIX")
def test_a_held_lock_names_its_holder_to_another_process_and_is_released_when_that_ends(tmp_path: Path) -> None:
    lock = tmp_path / "proc" / ".refine.lock"
    probe = [sys.executable, "-c", f"from imgclass.fileio import hold_lock; print(repr(hold_lock({str(lock)!r})))"]
    assert subprocess.run(probe, capture_output=True, text=True, check=True).stdout.strip() == "None"  # free
    assert hold_lock(lock) is None and hold_lock(lock) is None  # this process holds it, and may ask again
    assert lock.read_text() == str(os.getpid())
    other = subprocess.run(probe, capture_output=True, text=True, check=True).stdout.strip()
    assert other == repr(str(os.getpid()))  # refused, with the holder's process id


def test_names_the_file_system_tells_apart_are_no_group_and_the_probe_leaves_nothing(tmp_path: Path) -> None:
    # Linux's file systems tell case and Unicode forms apart: no two of these are one name here (on
    # macOS the first two would be one, and the last two too). The probe asks the real file system.
    names = ["Dotted", "dotted", "striped", "Ray\u00e9", "Raye\u0301", "striped"]
    assert same_name_groups(names, tmp_path) == []
    assert list(tmp_path.iterdir()) == []  # its temporary folder is gone
    # Two spellings this file system does take for one file ("./x" is x): grouped, in their order.
    assert same_name_groups(["y", "x", "./y", "z", "./x"], tmp_path) == [["y", "./y"], ["x", "./x"]]
    (tmp_path / "kept").mkdir()
    assert same_name_groups(["a"], tmp_path) == [] and [p.name for p in tmp_path.iterdir()] == ["kept"]


@pytest.mark.skipif(sys.platform == "win32", reason="advisory locks: POSIX")
def test_a_lock_held_shared_for_an_instant_by_lock_holder_is_taken_not_refused(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """lock_holder probes by taking the lock shared for an instant (stage 3 asking whether stage 2
    runs): a stage 2 starting in that instant was refused, told that the last stage 2 (process
    99999999, long ended) was refining. Here the instant is another process's: it holds the lock
    shared until hold_lock has met it once, then lets go."""
    import fcntl
    import time
    import types

    from imgclass import fileio

    lock = tmp_path / "proc" / ".refine.lock"
    lock.parent.mkdir()
    lock.write_text("99999999")  # what the last holder wrote
    # The probe lets go when told (a line on stdin), not after a fixed 0.1 s: on a loaded machine this
    # process could be scheduled again only after those 0.1 s, and then found no lock to be refused by.
    probe = subprocess.Popen(
        [sys.executable, "-c", f"import fcntl, sys\nf = open({str(lock)!r})\nfcntl.flock(f, fcntl.LOCK_SH)\n"
                               "print('held', flush=True)\nsys.stdin.readline()\nfcntl.flock(f, fcntl.LOCK_UN)"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    waits: list[float] = []

    def sleep(seconds: float) -> None:  # hold_lock waits here after it met the probe's lock: end the instant
        if not waits:
            assert probe.stdin is not None
            probe.stdin.write("release\n")
            probe.stdin.flush()
        waits.append(seconds)
        time.sleep(seconds)

    monkeypatch.setattr(fileio, "time", types.SimpleNamespace(monotonic=time.monotonic, sleep=sleep))
    try:
        assert probe.stdout is not None and probe.stdout.readline().strip() == "held"
        with open(lock) as f, pytest.raises(BlockingIOError):  # the probe's lock is there now
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert hold_lock(lock) is None
    finally:
        probe.communicate("", timeout=10)
    assert waits, "hold_lock never met the probe's lock: nothing tested"
    assert lock.read_text() == str(os.getpid())


def test_a_folder_not_writable_by_the_user_is_named_not_the_temp_file(color_dataset: Path, tmp_path: Path) -> None:
    # A proc/ folder made by a colleague (or by root): the error named '.split.json.x1y2.tmp'.
    proc_dir = tmp_path / "proc" / "colors"
    proc_dir.mkdir(parents=True)
    proc_dir.chmod(0o555)
    # root writes anywhere: without the capability to override permissions it is bound by them as the owner.
    prefix = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("root, and no setpriv to drop the capability to override permissions")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]
    env = {**os.environ, "IMGCLASS_DATA_DIR": str(tmp_path), "IMGCLASS_OFFLINE": "1", "IMGCLASS_TRACKING": "0"}
    try:
        proc = subprocess.run([*prefix, sys.executable, str(SCRIPTS / "1_prepareData.py"), "--set", "datasetName=colors"],
                              capture_output=True, text=True, env=env, timeout=600)
    finally:
        proc_dir.chmod(0o755)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"the folder {proc_dir} is not writable by this user" in proc.stderr and ".tmp" not in proc.stderr, proc.stderr
    assert list(proc_dir.iterdir()) == []


def test_a_file_outside_data_dir_in_an_unwritable_folder_keeps_the_systems_words_for_callers(tmp_path: Path) -> None:
    """atomic_path's error put its whole advice (DATA_DIR included) in strerror: the read-only data
    set note, which ends in '(strerror)', then told to move DATA_DIR after giving its own way around,
    and printed '[Errno 13] cannot write ...'; scoreImages.py --out in a read-only folder outside
    DATA_DIR was told only to move DATA_DIR."""
    folder = tmp_path / "read-only"
    (folder / "red").mkdir(parents=True)
    folder.chmod(0o555)
    prefix = []
    if os.geteuid() == 0:  # as in the test above: root is bound by permissions only without the capability
        if shutil.which("setpriv") is None:
            pytest.skip("root, and no setpriv to drop the capability to override permissions")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]
    code = ("import sys\nfrom imgclass.annotations import AnnotationError, write_fixes\nfrom imgclass.fileio import write_json\n"
            "try:\n    write_json(sys.argv[1] + '/scores.json', {})\nexcept PermissionError as e:\n"
            "    print(e)\n    print(e.strerror)\n"
            "try:\n    write_fixes(sys.argv[1], {'red/1.jpg': 'blue'})\nexcept AnnotationError as e:\n    print(e)\n")
    try:
        proc = subprocess.run([*prefix, sys.executable, "-c", code, str(folder)], capture_output=True, text=True,
                              timeout=600)
    finally:
        folder.chmod(0o755)
    assert proc.returncode == 0, proc.stderr
    message, strerror, note = proc.stdout.splitlines()
    assert message.startswith(f"cannot write {folder / 'scores.json'}: the folder {folder} is not writable by this "
                              "user; make it writable, or write elsewhere"), message
    assert strerror == os.strerror(13)
    assert note.endswith(f"which keeps the photos where they are ({os.strerror(13)})"), note
    assert list(folder.iterdir()) == [folder / "red"]


def test_tsvs_end_lines_with_newline_as_on_windows(tmp_path, monkeypatch):
    """On Windows open() in text mode writes "\\n" as "\\r\\n" unless newline= says otherwise: the TSVs
    (and annotations_fixes.tsv, which a person then edits and shares) differed from Linux's, and a
    moved.tsv appended to from both mixed the two. Simulated here by giving open() Windows' default."""
    import builtins

    from imgclass import annotations, fileio
    from imgclass.evaluate import write_predictions
    from imgclass.selection import ClassifierScore, write_classifier_table

    def windows_open(file, mode="r", *args, **kwargs):  # type: ignore[no-untyped-def]
        if "b" not in mode and not args:
            kwargs.setdefault("newline", "\r\n")
        return builtins.open(file, mode, *args, **kwargs)

    monkeypatch.setattr(fileio, "open", windows_open, raising=False)  # atomic_open opens through it
    written = [
        annotations.write_fixes(tmp_path, {"dotted/a.jpg": "striped"}),
        write_predictions(tmp_path / "predictions.tsv", ["dotted/a.jpg"], np.array([0]), np.array([[0.9, 0.1]]),
                          ["dotted", "striped"]),
        write_classifier_table(tmp_path / "classifiers.tsv", [ClassifierScore("svm", 0.9, 0.9, 0.01, 10)]),
    ]
    for path in written:
        data = path.read_bytes()
        assert b"\n" in data and b"\r" not in data, path
