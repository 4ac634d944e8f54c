"""Near-duplicate detection (dhash, 256 bits) on generated photo-like images and their copies,
the dry-run / move-aside script, and stage 1's leakage check."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from conftest import FASHION, run_script, write_image
from imgclass.data import Split, list_class_dirs, make_split
from imgclass.dedup import (
    apply_leakage_check,
    DEFAULT_THRESHOLD,
    DuplicateReport,
    Leak,
    check_leaks,
    find_duplicates,
    image_hash,
    keep_leaks_in_train,
    mirrored_hash,
    move_duplicates,
    pairwise_close,
    write_leaks,
)
from imgclass.synthetic import generate_demo_dataset

N_PER_CLASS = 5


@pytest.fixture(scope="module")
def originals(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """15 distinct photo-like images (3 classes x 5) from the synthetic generator."""
    root = tmp_path_factory.mktemp("orig")
    generate_demo_dataset(root, images_per_class=N_PER_CLASS, seed=3, progress=False)
    (root / "README.txt").unlink()
    return root


def _copy(src: Path, dst: Path, scale: float, quality: int, fmt: str = "JPEG") -> Path:
    """A re-sized and re-compressed copy, as another web site would serve it."""
    img = Image.open(src).convert("RGB")
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
    dst.parent.mkdir(parents=True, exist_ok=True)
    img.save(dst, fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return dst


COPIES = {"half_q60": (0.5, 60), "bigger_q90": (1.5, 90), "same_q30": (1.0, 30), "png": (0.8, 0)}


@pytest.fixture
def with_copies(originals: Path, tmp_path: Path) -> tuple[Path, dict[str, list[str]]]:
    """The originals plus, for two of them, every kind of copy and a byte-identical duplicate."""
    root = tmp_path / "ds"
    shutil.copytree(originals, root)
    expected = {}
    for rel in ("dotted/dotted_0001.jpg", "striped/striped_0003.jpg"):
        src = root / rel
        cls = rel.split("/")[0]
        group = [rel]
        for tag, (scale, q) in COPIES.items():
            ext = ".png" if tag == "png" else ".jpg"
            dst = root / cls / "web" / f"{src.stem}_{tag}{ext}"
            _copy(src, dst, scale, q, "PNG" if tag == "png" else "JPEG")
            group.append(dst.relative_to(root).as_posix())
        exact = root / cls / f"{src.stem}_exact.jpg"
        shutil.copyfile(src, exact)
        group.append(exact.relative_to(root).as_posix())
        expected[rel] = sorted(group)
    return root, expected


@pytest.mark.parametrize("n_bits", [256, 100])  # 100: the last 64-bit word is padded with zeros
def test_pairwise_close_matches_brute_force(n_bits: int) -> None:
    rng = np.random.default_rng(0)
    bits = rng.random((70, n_bits)) < 0.5
    bits[5] = bits[3]
    bits[9] = bits[3] ^ (np.arange(n_bits) < 7)  # 7 bits away from image 3
    brute = [(i, j, int((bits[i] != bits[j]).sum())) for i in range(70) for j in range(i + 1, 70)]
    for threshold in (0, 7, n_bits // 2 - 18):
        want = [t for t in brute if t[2] <= threshold]
        assert sorted(pairwise_close(bits, threshold, max_pairs=16 * 70)) == want  # blocks of 16 rows
        assert sorted(pairwise_close(bits, threshold)) == want  # one block
    other = bits[:10]
    want = [(i, j, int((bits[i] != other[j]).sum())) for i in range(70) for j in range(10)]
    assert sorted(pairwise_close(bits, 7, other=other, max_pairs=9 * 10)) == sorted(t for t in want if t[2] <= 7)
    assert pairwise_close(bits[:0], 7, other=other) == []


def test_finds_resized_and_recompressed_copies_and_keeps_distinct_images_apart(with_copies) -> None:
    root, expected = with_copies
    report = find_duplicates(root, progress=False)
    assert len(report.paths) == 3 * N_PER_CLASS + 2 * (len(COPIES) + 1)
    assert sorted(sorted(g) for g in report.groups) == sorted(expected.values())
    # Exact pass: the byte-identical copy (and nothing distinct) shares the original's hash.
    for group in report.exact:
        assert len({image_hash(root / p) for p in group}) == 1
    assert any(set(g) >= {"dotted/dotted_0001.jpg", "dotted/dotted_0001_exact.jpg"} for g in report.exact)
    assert not report.cross_class_groups() and not report.failed
    # Each group keeps its copy with the most pixels (the 1.5x one here), first; the others are moved.
    assert [g[0] for g in report.groups] == [_kept(g) for g in sorted(expected.values())]
    for g in report.groups:
        w, h = report.sizes[g[0]]
        assert all(w * h > report.sizes[p][0] * report.sizes[p][1] for p in g[1:]) and g[1:] == sorted(g[1:])
    assert {kept for _, kept in report.to_move} == {g[0] for g in report.groups}
    assert len(report.to_move) == 2 * (len(COPIES) + 1)


def _kept(group: list[str]) -> str:
    return next(p for p in group if p.endswith("_bigger_q90.jpg"))


def test_the_copy_with_the_most_pixels_is_kept_then_the_largest_file_then_the_first_path(originals: Path,
                                                                                       tmp_path: Path) -> None:
    root = tmp_path / "ds"
    shutil.copytree(originals, root)
    src = root / "dotted" / "dotted_0001.jpg"
    _copy(src, root / "dotted" / "0_thumbnail.jpg", 0.3, 90)  # sorts first, fewer pixels
    _copy(src, root / "dotted" / "1_recompressed.jpg", 1.0, 20)  # as many pixels, a smaller file
    shutil.copyfile(root / "striped" / "striped_0002.jpg", root / "striped" / "0_same_bytes.jpg")
    report = find_duplicates(root, progress=False)
    assert (root / "dotted" / "1_recompressed.jpg").stat().st_size < src.stat().st_size
    assert report.groups == [["dotted/dotted_0001.jpg", "dotted/0_thumbnail.jpg", "dotted/1_recompressed.jpg"],
                             ["striped/0_same_bytes.jpg", "striped/striped_0002.jpg"]]  # a tie: the first path
    assert report.exact == [["striped/0_same_bytes.jpg", "striped/striped_0002.jpg"]]
    assert report.bits_between("dotted/0_thumbnail.jpg", "dotted/dotted_0001.jpg") == \
        report.bits_between("dotted/dotted_0001.jpg", "dotted/0_thumbnail.jpg") is not None


def test_distinct_images_are_far_apart(originals: Path) -> None:
    report = find_duplicates(originals, threshold=3 * DEFAULT_THRESHOLD, progress=False)
    assert report.groups == [] and len(report.paths) == 3 * N_PER_CLASS


def test_a_threshold_at_which_unrelated_images_match_is_refused(originals: Path, tmp_path: Path) -> None:
    for bad in (-1, 128, 300):  # of 256 bits, unrelated images differ in about 128
        with pytest.raises(ValueError, match=rf"threshold = {bad}: expected 0 to 127 \(bits of 256"):
            find_duplicates(originals, threshold=bad, progress=False)
    proc = run_script("dedupImages.py", str(originals), "--threshold", "300", "--remove", data_dir=tmp_path, check=False)
    assert proc.returncode == 1 and "error: threshold = 300: expected 0 to 127" in proc.stderr, proc.stderr
    assert not (originals / "_duplicates").exists()


def test_script_is_a_dry_run_unless_asked_and_moves_never_deletes(with_copies, tmp_path: Path) -> None:
    root, expected = with_copies
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    out = run_script("dedupImages.py", str(root), data_dir=tmp_path).stdout
    assert "dry run: nothing moved" in out and "images: 10 duplicates within 15 bits of another image, in 2 groups (3 of them with an identical hash)" in out
    w, h = Image.open(root / "dotted/web/dotted_0001_bigger_q90.jpg").size
    assert f"keep dotted/web/dotted_0001_bigger_q90.jpg ({w}x{h})" in out
    after = {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name != "duplicates.tsv"}
    assert after == before
    assert len((root / "duplicates.tsv").read_text().splitlines()) == 1 + 10

    out = run_script("dedupImages.py", str(root), "--remove", data_dir=tmp_path).stdout
    assert "moved 10 image(s)" in out
    dup = root / "_duplicates"
    moved = sorted(p.relative_to(dup).as_posix() for p in dup.rglob("*") if p.is_file() and p.name != "moved.tsv")
    assert moved == sorted(p for g in expected.values() for p in g if p != _kept(g))
    for group in expected.values():  # the kept image is still in place, the copies are not
        assert (root / _kept(group)).is_file() and not any((root / p).exists() for p in group if p != _kept(group))
    for p in moved:  # moved byte for byte, not re-encoded
        assert (dup / p).read_bytes() == before[root / p]
    log = (dup / "moved.tsv").read_text().splitlines()
    assert log[0] == "moved\tduplicate_of" and len(log) == 11
    # The data set loader ignores _duplicates/, and a second run finds nothing left to move.
    assert list_class_dirs(root) == ["dotted", "leopard", "striped"]
    split = make_split(root, 0.75, 0)
    assert len(split.train) + len(split.test) == 3 * N_PER_CLASS
    out = run_script("dedupImages.py", str(root), "--remove", data_dir=tmp_path).stdout
    assert "0 duplicates within" in out and "moved 0 image(s)" in out


def test_same_photo_in_two_classes_is_flagged_and_bad_files_are_reported(originals: Path, tmp_path: Path) -> None:
    root = tmp_path / "ds"
    shutil.copytree(originals, root)
    _copy(root / "leopard/leopard_0002.jpg", root / "dotted/looks_dotted.jpg", 0.7, 70)
    (root / "dotted" / "broken.jpg").write_bytes(b"<html>not an image</html>")
    report = find_duplicates(root, progress=False)
    assert report.cross_class_groups() == [["leopard/leopard_0002.jpg", "dotted/looks_dotted.jpg"]]
    assert [p for p, _ in report.failed] == ["dotted/broken.jpg"] and "not an image" in report.failed[0][1]
    # Which label is right is for a person to decide: not moved unless asked.
    assert move_duplicates(report) == [] and (root / "dotted/looks_dotted.jpg").is_file()
    moved = move_duplicates(report, cross_class=True)  # the smaller copy goes
    assert [m.relative_to(root).as_posix() for _, m in moved] == ["_duplicates/dotted/looks_dotted.jpg"]


def test_remove_leaves_groups_spanning_classes_unless_forced(originals: Path, tmp_path: Path) -> None:
    root = tmp_path / "ds"
    shutil.copytree(originals, root)
    _copy(root / "leopard/leopard_0002.jpg", root / "dotted/looks_dotted.jpg", 0.7, 70)  # two labels
    _copy(root / "striped/striped_0001.jpg", root / "striped/copy.jpg", 0.5, 60)  # one label
    out = run_script("dedupImages.py", str(root), "--remove", data_dir=tmp_path).stdout
    assert "moved 1 image(s)" in out and "1 group(s) spanning class folders left in place" in out
    assert (root / "striped/striped_0001.jpg").is_file() and not (root / "striped/copy.jpg").exists()
    assert (root / "dotted/looks_dotted.jpg").is_file() and (root / "leopard/leopard_0002.jpg").is_file()
    out = run_script("dedupImages.py", str(root), "--remove", "--force", data_dir=tmp_path).stdout
    assert "--force: moving the duplicates of the 1 group(s) that span class folders too" in out
    # Pixels chose the copy kept, not its label: which label stays is said, group by group.
    assert "    leopard/leopard_0002.jpg: stays leopard, its copies in dotted moved" in out
    assert "moved 1 image(s)" in out and not (root / "dotted/looks_dotted.jpg").exists()
    assert len((root / "_duplicates" / "moved.tsv").read_text().splitlines()) == 1 + 2


def test_label_fixes_decide_the_class_and_an_excluded_copy_is_never_the_one_kept(originals: Path, tmp_path: Path) -> None:
    """The same photo under two labels, the wrong one excluded in the notebook (annotations_fixes.tsv):
    it was kept, being the larger copy, with --force, and the right one moved aside, so the photo
    left training without a word. Now the fixed labels decide: one class, nothing to force."""
    from imgclass.annotations import write_fixes

    root = tmp_path / "ds"
    shutil.copytree(originals, root)
    _copy(root / "leopard/leopard_0002.jpg", root / "dotted/big_copy.jpg", 1.5, 95)  # more pixels than the original
    _copy(root / "striped/striped_0001.jpg", root / "dotted/striped_copy.jpg", 0.7, 70)
    report = find_duplicates(root, progress=False)
    assert sorted(report.cross_class_groups()) == [["dotted/big_copy.jpg", "leopard/leopard_0002.jpg"],
                                                   ["striped/striped_0001.jpg", "dotted/striped_copy.jpg"]]
    write_fixes(root, {"dotted/big_copy.jpg": "EXCLUDE", "dotted/striped_copy.jpg": "striped"})
    report = find_duplicates(root, progress=False)
    assert report.cross_class_groups() == []
    assert sorted(report.groups) == [["leopard/leopard_0002.jpg", "dotted/big_copy.jpg"],
                                     ["striped/striped_0001.jpg", "dotted/striped_copy.jpg"]]
    out = run_script("dedupImages.py", str(root), "--remove", data_dir=tmp_path).stdout
    assert "dotted/big_copy.jpg (" in out and "excluded by annotations_fixes.tsv" in out
    assert "labelled striped by annotations_fixes.tsv" in out and "moved 1 image(s)" in out
    # The excluded copy is out of training already: left where its fix names it (moved, the fix named
    # a missing file, which stage 1 pointed out at every run).
    assert (root / "leopard/leopard_0002.jpg").is_file() and (root / "dotted/big_copy.jpg").is_file()
    assert not (root / "dotted/striped_copy.jpg").exists()
    # The relabelled copy was moved aside: its fix names a file in _duplicates/, which is no news.
    from imgclass.data import fix_notes, make_split

    applied = "annotations_fixes.tsv applied: 0 image(s) relabelled, 1 left out"  # big_copy.jpg
    assert fix_notes(make_split(root, progress=False), root) == [applied]
    # dedupImages.py run on the class folder alone sets it aside in dotted/_duplicates/: no news either.
    (root / "dotted" / "_duplicates").mkdir()
    shutil.move(root / "_duplicates" / "dotted" / "striped_copy.jpg", root / "dotted" / "_duplicates" / "striped_copy.jpg")
    assert fix_notes(make_split(root, progress=False), root) == [applied]
    # ... and run on a deeper folder (dotted/2019/, or train/dotted/ of a data set split in advance).
    write_fixes(root, {"dotted/big_copy.jpg": "EXCLUDE", "dotted/striped_copy.jpg": "striped",
                       "dotted/2019/gone.jpg": "striped"})
    (root / "dotted" / "2019" / "_duplicates").mkdir(parents=True)
    shutil.copy(root / "dotted" / "_duplicates" / "striped_copy.jpg", root / "dotted" / "2019" / "_duplicates" / "gone.jpg")
    assert fix_notes(make_split(root, progress=False), root) == [applied]
    shutil.rmtree(root / "dotted" / "2019")
    write_fixes(root, {"dotted/big_copy.jpg": "EXCLUDE", "dotted/striped_copy.jpg": "striped"})
    (root / "dotted" / "_duplicates" / "striped_copy.jpg").unlink()  # deleted for good: said
    assert fix_notes(make_split(root, progress=False), root) == [applied,
        "annotations_fixes.tsv: dotted/striped_copy.jpg: no such image (deleted since, or mistyped: the fix does nothing)"]


def test_cross_class_groups_in_a_data_set_split_in_advance(tmp_path: Path) -> None:
    for side in ("train", "test"):
        for cls in ("dotted", "striped"):
            (tmp_path / side / cls).mkdir(parents=True)
    report = DuplicateReport(tmp_path, DEFAULT_THRESHOLD, [], [], groups=[
        ["test/dotted/x.jpg", "train/dotted/x2.jpg"],  # one class on both sides of the split
        ["train/dotted/y.jpg", "train/striped/y.jpg"],  # two classes
    ])
    assert report.cross_class_groups() == [["train/dotted/y.jpg", "train/striped/y.jpg"]]
    assert report.moves() == [("train/dotted/x2.jpg", "test/dotted/x.jpg")]


def test_a_linked_class_folder_is_scanned_once(originals: Path, tmp_path: Path) -> None:
    root, elsewhere = tmp_path / "ds", tmp_path / "elsewhere"
    shutil.copytree(originals / "dotted", root / "dotted")
    shutil.copytree(originals / "striped", elsewhere / "striped")
    _copy(elsewhere / "striped/striped_0001.jpg", elsewhere / "striped/copy.jpg", 0.5, 60)
    os.symlink(elsewhere / "striped", root / "striped")  # a class kept elsewhere, as README suggests
    os.symlink(root, root / "dotted" / "loop")  # a link back up the tree
    report = find_duplicates(root, progress=False)
    assert len(report.paths) == 2 * N_PER_CLASS + 1 and "striped/copy.jpg" in report.paths
    assert report.groups == [["striped/striped_0001.jpg", "striped/copy.jpg"]]


def test_an_interrupted_move_lists_every_file_it_moved(with_copies, monkeypatch: pytest.MonkeyPatch) -> None:
    root, _ = with_copies
    report = find_duplicates(root, progress=False)
    real, calls = shutil.move, []

    def interrupted(src: Path, dst: Path) -> object:
        calls.append(src)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(shutil, "move", interrupted)
    with pytest.raises(KeyboardInterrupt):
        move_duplicates(report)
    dup = root / "_duplicates"
    log = [line.split("\t") for line in (dup / "moved.tsv").read_text().splitlines()]
    on_disk = sorted(p.relative_to(dup).as_posix() for p in dup.rglob("*") if p.is_file() and p.name != "moved.tsv")
    assert log[0] == ["moved", "duplicate_of"] and sorted(r[0] for r in log[1:]) == on_disk and len(on_disk) == 2


def test_leakage_check_finds_a_planted_duplicate_across_the_split(originals: Path, tmp_path: Path) -> None:
    root = tmp_path / "ds"
    shutil.copytree(originals, root)
    _copy(root / "striped/striped_0000.jpg", root / "striped/from_another_site.jpg", 0.6, 50)
    classes = ["dotted", "leopard", "striped"]
    files = {c: sorted(p.relative_to(root).as_posix() for p in (root / c).iterdir()) for c in classes}
    train = [(p, i) for i, c in enumerate(classes) for p in files[c] if p != "striped/striped_0000.jpg" and not p.endswith("_0004.jpg")]
    test = [(p, i) for i, c in enumerate(classes) for p in files[c] if p == "striped/striped_0000.jpg" or p.endswith("_0004.jpg")]
    split = Split(classes, train, test)
    leaks = check_leaks(split, root, progress=False).leaks
    assert [(x.train, x.test, x.same_class) for x in leaks] == [("striped/from_another_site.jpg", "striped/striped_0000.jpg", True)]
    fixed = keep_leaks_in_train(split, leaks)
    assert ("striped/striped_0000.jpg", 2) in fixed.train and ("striped/striped_0000.jpg", 2) not in fixed.test
    assert len(fixed.train) == len(train) + 1 and len(fixed.test) == len(test) - 1
    assert check_leaks(fixed, root, progress=False).leaks == []
    # Stage 1's step: "report" lists the pair and leaves it; "move" moves it; either way the TSV lists it.
    listed = tmp_path / "proc" / "near_duplicates.tsv"
    reported = apply_leakage_check(split, root, "report", DEFAULT_THRESHOLD, listed)
    bits = leaks[0].distance
    assert reported.split is split and reported.lines == [
        f"near duplicates across the split ({bits} bits): striped/from_another_site.jpg (train) ~ striped/striped_0000.jpg "
        "(test)", "leakageCheck = 'report': left as they are; test accuracy may be optimistic"], reported.lines
    assert listed.read_text().count("striped/striped_0000.jpg") == 1
    moved = apply_leakage_check(split, root, "move", DEFAULT_THRESHOLD, listed)
    assert moved.split.sides() == fixed.sides() and moved.lines[-1] == (
        "moved 1 test image(s) with a same-class near duplicate in train to train")
    with pytest.raises(ValueError, match="mode = 'off': expected 'report' or 'move'"):
        apply_leakage_check(split, root, "off", DEFAULT_THRESHOLD, listed)


def test_a_new_copy_of_an_earlier_test_image_joins_it_in_test(originals: Path, tmp_path: Path) -> None:
    """Photos added weeks later: a new near copy of a test image of the kept split took that test image
    out of the test set (to train, with its copy); now the new one joins it in test, unless that test
    image has a copy in train anyway, when both go to train as before."""
    from imgclass.dedup import settle_leaks

    root = tmp_path / "ds"
    shutil.copytree(originals, root)
    classes = ["dotted", "leopard", "striped"]
    files = {c: sorted(p.relative_to(root).as_posix() for p in (root / c).iterdir()) for c in classes}
    # The earlier split: _0000 and _0004 of each class in test; and (leakageCheck = 'report' then) an old
    # copy of striped_0004 in train.
    _copy(root / "striped/striped_0004.jpg", root / "striped/old_train_copy.jpg", 0.8, 80)
    earlier = {p: ("test" if p.endswith(("_0000.jpg", "_0004.jpg")) else "train") for c in classes for p in files[c]}
    earlier["striped/old_train_copy.jpg"] = "train"
    # New since: a copy of dotted_0000 and one of striped_0004, both given to train by the split.
    _copy(root / "dotted/dotted_0000.jpg", root / "dotted/new_copy.jpg", 0.6, 50)
    _copy(root / "striped/striped_0004.jpg", root / "striped/new_copy.jpg", 0.7, 60)
    train = [(p, classes.index(p.split("/")[0])) for p, side in earlier.items() if side == "train"]
    train += [("dotted/new_copy.jpg", 0), ("striped/new_copy.jpg", 2)]
    test = [(p, classes.index(p.split("/")[0])) for p, side in earlier.items() if side == "test"]
    split = Split(classes, sorted(train, key=lambda t: (t[1], t[0])), sorted(test, key=lambda t: (t[1], t[0])))
    check = check_leaks(split, root, progress=False)
    assert {(x.train, x.test) for x in check.leaks} == {("dotted/new_copy.jpg", "dotted/dotted_0000.jpg"),
                                                       ("striped/new_copy.jpg", "striped/striped_0004.jpg"),
                                                       ("striped/old_train_copy.jpg", "striped/striped_0004.jpg")}
    settled, _ = settle_leaks(split, check, root, earlier)
    sides = settled.sides()
    assert sides["dotted/dotted_0000.jpg"] == "test" and sides["dotted/new_copy.jpg"] == "test"  # joined it
    # striped_0004 has an old copy in train: it goes there, and the new copy with it.
    assert sides["striped/striped_0004.jpg"] == "train" and sides["striped/new_copy.jpg"] == "train"
    assert check_leaks(settled, root, progress=False).leaks == []
    assert settled.moved == ["striped/striped_0004.jpg"]
    # A class whose only training image is a new copy of its test image: it stays in train (joining
    # would leave the class nothing to learn from), its test copy goes there too, as before.
    lone = Split(["a", "b"], [("a/n1.jpg", 0), ("b/x.jpg", 1)], [("a/t.jpg", 0), ("a/u.jpg", 0), ("b/y.jpg", 1)])
    kept = keep_leaks_in_train(lone, [Leak("a/n1.jpg", "a/t.jpg", 2, True)], {"a/t.jpg": "test", "a/u.jpg": "test"})
    assert kept.counts()["a"] == {"train": 2, "test": 1} and kept.sides()["a/n1.jpg"] == "train"
    # Without an earlier split (a first run, --resplit) every test image of a pair goes to train.
    plain, _ = settle_leaks(split, check, root)
    assert plain.sides()["dotted/dotted_0000.jpg"] == "train" and plain.sides()["dotted/new_copy.jpg"] == "train"


def test_stage1_rerun_keeps_an_earlier_test_image_that_a_new_photo_copies(originals: Path, tmp_path: Path) -> None:
    images = tmp_path / "images" / "ds"
    shutil.copytree(originals, images)
    run_script("1_prepareData.py", "--set", "datasetName=ds", data_dir=tmp_path)
    split_file = tmp_path / "proc" / "ds" / "split.json"
    first = Split.from_json(json.loads(split_file.read_text()))
    test_image = next(p for p, _ in first.test if p.startswith("leopard/"))
    for n in range(3):  # copies from other sites; some of them the split gives to train
        _copy(images / test_image, images / "leopard" / f"web_{n}.jpg", 0.5 + 0.1 * n, 50 + 10 * n)
    out = run_script("1_prepareData.py", "--set", "datasetName=ds", data_dir=tmp_path).stdout
    again = Split.from_json(json.loads(split_file.read_text()))
    assert {p for p, _ in again.test} >= {p for p, _ in first.test}, out  # no earlier test image left test
    assert all(again.sides()[f"leopard/web_{n}.jpg"] == "test" for n in range(3))
    # 8 leopard images now: 2 of them test images, so one new copy went to test and two to train.
    assert "moved 0 test image(s) with a same-class near duplicate in train to train; 2 new image(s) joined " in out, out


def test_a_class_whose_last_test_image_is_a_copy_is_named(originals: Path, tmp_path: Path) -> None:
    """Each class keeps a test image: where the one left is a copy of a training image, its accuracy
    measures memory, which stage 1 now says (it printed the pair among others, and moved the rest)."""
    images = tmp_path / "images" / "ds"
    for c in ("dotted", "leopard", "striped"):
        shutil.copytree(originals / c, images / "train" / c)
        (images / "test" / c).mkdir(parents=True)
    shutil.move(images / "train" / "dotted" / "dotted_0004.jpg", images / "test" / "dotted" / "dotted_0004.jpg")
    shutil.move(images / "train" / "striped" / "striped_0004.jpg", images / "test" / "striped" / "striped_0004.jpg")
    _copy(images / "train" / "leopard" / "leopard_0001.jpg", images / "test" / "leopard" / "copy.jpg", 0.7, 60)
    out = run_script("1_prepareData.py", "--set", "datasetName=ds", data_dir=tmp_path).stdout
    assert ("note: leopard: test image(s) with a near copy in train stay in test, so that the class keeps a test "
            "image; its accuracy there measures memory as much as recognition") in out, out


def test_leakage_check_finds_a_mirrored_copy_across_the_split(originals: Path, tmp_path: Path) -> None:
    """A copy flipped left-right (and recompressed) is far from its original by dhash, and the
    more of a leak with run_boFlipAverage, which scores every image with its mirror image."""
    root = tmp_path / "ds"
    shutil.copytree(originals, root)
    flipped = ImageOps.mirror(Image.open(root / "leopard/leopard_0001.jpg").convert("RGB"))
    flipped.save(root / "leopard/flipped.jpg", "JPEG", quality=70)
    plain = image_hash(root / "leopard/flipped.jpg") - image_hash(root / "leopard/leopard_0001.jpg")
    assert plain > DEFAULT_THRESHOLD  # missed without the mirror
    classes = ["dotted", "leopard", "striped"]
    files = {c: sorted(p.relative_to(root).as_posix() for p in (root / c).iterdir()) for c in classes}
    split = Split(classes, [(p, i) for i, c in enumerate(classes) for p in files[c] if p != "leopard/flipped.jpg"],
                  [("leopard/flipped.jpg", 1)])
    leaks = check_leaks(split, root, progress=False).leaks
    assert [(x.train, x.test, x.same_class, x.mirrored) for x in leaks] == [
        ("leopard/leopard_0001.jpg", "leopard/flipped.jpg", True, True)]
    assert leaks[0].distance <= DEFAULT_THRESHOLD < plain
    assert write_leaks(tmp_path / "near.tsv", leaks).read_text().splitlines()[1].endswith("\tTrue\tTrue")


def test_dedup_finds_a_mirrored_copy_and_says_so(originals: Path, tmp_path: Path) -> None:
    """dedupImages.py compared hashes as they are only: a flipped copy, which stage 1's leakage check
    found, was missed (53-129 bits as they are, 0-3 as mirror images, on real photos)."""
    root = tmp_path / "ds"
    shutil.copytree(originals, root)
    ImageOps.mirror(Image.open(root / "leopard/leopard_0001.jpg").convert("RGB")).save(
        root / "leopard/flipped.jpg", "JPEG", quality=70)
    report = find_duplicates(root, progress=False)
    assert report.groups == [["leopard/flipped.jpg", "leopard/leopard_0001.jpg"]] or \
        report.groups == [["leopard/leopard_0001.jpg", "leopard/flipped.jpg"]]
    assert report.is_mirrored("leopard/leopard_0001.jpg", "leopard/flipped.jpg")
    assert report.bits_between("leopard/flipped.jpg", "leopard/leopard_0001.jpg") <= DEFAULT_THRESHOLD
    out = run_script("dedupImages.py", str(root), data_dir=tmp_path).stdout
    assert " bits, mirrored)" in out or " bit, mirrored)" in out, out
    rows = (root / "duplicates.tsv").read_text().splitlines()
    assert rows[0] == "group\tkept\tduplicate\tbits\tmirrored" and rows[1].endswith("\tyes")
    # An image is never its own copy, however symmetric: a mirror-symmetric picture alone forms no group.
    alone = tmp_path / "alone"
    (alone / "a").mkdir(parents=True)
    half = np.random.default_rng(0).integers(0, 255, (64, 32, 3), dtype=np.uint8)
    Image.fromarray(np.concatenate([half, half[:, ::-1]], axis=1)).save(alone / "a" / "symmetric.png")
    symmetric = find_duplicates(alone, progress=False)
    assert symmetric.groups == [] and symmetric.distances == {} and symmetric.mirrored == set()


def test_a_folder_without_class_folders_has_its_copies_moved(originals: Path, tmp_path: Path) -> None:
    """A flat folder (a scrape before sorting): every image was its own "class", so every group
    was said to span class folders and --remove moved nothing."""
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in sorted(originals.rglob("*.jpg")):
        shutil.copyfile(f, flat / f.name)
    _copy(flat / "dotted_0001.jpg", flat / "dotted_0001_small.jpg", 0.5, 60)
    report = find_duplicates(flat, progress=False)
    assert report.groups == [["dotted_0001.jpg", "dotted_0001_small.jpg"]] and report.cross_class_groups() == []
    out = run_script("dedupImages.py", str(flat), "--remove", data_dir=tmp_path).stdout
    assert "moved 1 image(s)" in out and "class folders" not in out, out
    assert not (flat / "dotted_0001_small.jpg").exists() and (flat / "_duplicates" / "dotted_0001_small.jpg").is_file()


def test_a_dry_run_that_cannot_write_its_list_still_lists_the_groups(originals: Path, tmp_path: Path) -> None:
    """A read-only folder (a mounted archive) failed the dry run after printing the groups. A folder
    in the list's place fails the write as read-only does, and does so for root too."""
    root = tmp_path / "ro"
    shutil.copytree(originals, root)
    _copy(root / "dotted/dotted_0001.jpg", root / "dotted/copy.jpg", 0.5, 60)
    (root / "duplicates.tsv").mkdir()
    proc = run_script("dedupImages.py", str(root), data_dir=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "group 1: keep dotted/dotted_0001.jpg" in proc.stdout
    assert f"note: could not write duplicates.tsv into {root}" in proc.stdout and (root / "duplicates.tsv").is_dir()
    # --remove there stops before its first move, in one line (it went on to a traceback).
    proc = run_script("dedupImages.py", str(root), "--remove", data_dir=tmp_path, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"cannot write into {root}" in proc.stderr and "nothing moved" in proc.stderr
    assert (root / "dotted/copy.jpg").is_file() and not (root / "_duplicates").exists()


def test_stage1_keeps_near_duplicates_on_one_side(originals: Path, tmp_path: Path) -> None:
    root = tmp_path / "images" / "leaky"
    shutil.copytree(originals, root)
    _copy(root / "dotted/dotted_0002.jpg", root / "dotted/resized_copy.jpg", 0.5, 60)
    # The dedicated test list puts the original in test; its copy lands in train.
    # (dotted_0001 keeps class dotted tested once its leaking image moves to train)
    (root / "dedicatedTestImages.tsv").write_text(
        "dotted/dotted_0001.jpg\ndotted/dotted_0002.jpg\nleopard/leopard_0000.jpg\nstriped/striped_0000.jpg\n"
    )
    out = run_script("1_prepareData.py", "--set", "datasetName=leaky", data_dir=tmp_path).stdout
    assert "near duplicates across the split" in out and "dotted/resized_copy.jpg (train) ~ dotted/dotted_0002.jpg (test)" in out
    split = json.loads((tmp_path / "proc" / "leaky" / "split.json").read_text())
    assert ["dotted/dotted_0002.jpg", 0] in split["train"]
    assert [p for p, _ in split["test"]] == ["dotted/dotted_0001.jpg", "leopard/leopard_0000.jpg", "striped/striped_0000.jpg"]

    out = run_script("1_prepareData.py", "--set", "datasetName=leaky", "--set", "leakageCheck=report", data_dir=tmp_path).stdout
    assert "leakageCheck = 'report'" in out
    split = json.loads((tmp_path / "proc" / "leaky" / "split.json").read_text())
    assert ["dotted/dotted_0002.jpg", 0] in split["test"]


@pytest.mark.realdata
def test_real_photos_hash_quickly_and_have_no_false_duplicates() -> None:
    if not FASHION.is_dir():
        pytest.skip(f"{FASHION} not found")
    report = find_duplicates(FASHION / "leopard", progress=False)
    assert len(report.paths) > 100 and not report.failed
    assert report.groups == []  # measured: the closest two distinct photos are 19 bits apart


def test_stage1_names_a_photo_filed_under_two_classes_on_one_side(originals: Path, tmp_path: Path) -> None:
    """A copy in another class folder on the same side of the split (both train, both test) is no leak,
    but a label conflict: one label is wrong, and the model is taught both."""
    from imgclass.dedup import label_conflicts

    root = tmp_path / "images" / "twice"
    shutil.copytree(originals, root)
    _copy(root / "dotted/dotted_0002.jpg", root / "striped/also_here.jpg", 0.7, 60)  # scraped by two queries
    mirror = Image.open(root / "leopard/leopard_0003.jpg").transpose(Image.FLIP_LEFT_RIGHT)
    mirror.save(root / "dotted/mirrored_leopard.jpg")  # and a mirrored one
    (root / "dedicatedTestImages.tsv").write_text(
        "dotted/dotted_0001.jpg\nleopard/leopard_0000.jpg\nstriped/striped_0000.jpg\n")
    out = run_script("1_prepareData.py", "--set", "datasetName=twice", data_dir=tmp_path).stdout
    assert "label conflicts: 2 near-duplicate pair(s) on one side of the split filed under different classes" in out
    assert "  dotted/dotted_0002.jpg (dotted) ~ striped/also_here.jpg (striped), both train, " in out
    assert "  dotted/mirrored_leopard.jpg (dotted) ~ leopard/leopard_0003.jpg (leopard), both train, " in out
    assert " bits, mirrored\n" in out
    tsv = tmp_path / "proc" / "twice" / "label_conflicts.tsv"
    rows = [line.split("\t") for line in tsv.read_text(encoding="utf-8").splitlines()]
    assert rows[0] == ["image_a", "class_a", "image_b", "class_b", "side", "bits", "mirrored"] and len(rows) == 3
    # One label confirmed is not both: the pair is still listed. Nor do two moves that give the copies
    # two classes settle anything: they make a conflict.
    (root / "annotations_fixes.tsv").write_text("dotted/mirrored_leopard.jpg\tdotted\n"
                                                "dotted/dotted_0003.jpg\tleopard\nleopard/leopard_0002.jpg\tstriped\n")
    shutil.copy(root / "leopard/leopard_0002.jpg", root / "dotted/dotted_0003.jpg")
    out = run_script("1_prepareData.py", "--set", "datasetName=twice", data_dir=tmp_path).stdout
    assert "label conflicts: 3 near-duplicate pair(s)" in out
    assert "  dotted/dotted_0003.jpg (leopard) ~ leopard/leopard_0002.jpg (striped), both train, 0 bits" in out
    # The user decides: the striped copy is wrong (EXCLUDE), the mirrored leopard is both (confirmed twice).
    (root / "dotted/dotted_0003.jpg").unlink()
    (root / "annotations_fixes.tsv").write_text(
        "striped/also_here.jpg\tEXCLUDE\ndotted/mirrored_leopard.jpg\tdotted\nleopard/leopard_0003.jpg\tleopard\n")
    out = run_script("1_prepareData.py", "--set", "datasetName=twice", data_dir=tmp_path).stdout
    assert "label conflicts" not in out and tsv.read_text(encoding="utf-8").count("\n") == 1
    # Pairs across the split are the leakage check's, not conflicts; distinct photos are neither.
    split = Split(["dotted", "striped"], [("dotted/dotted_0002.jpg", 0)], [("striped/also_here.jpg", 1)])
    check = check_leaks(split, root, progress=False)
    assert [leak.same_class for leak in check.leaks] == [False] and label_conflicts(split, check.hashes) == []
    split = Split(["dotted", "striped"], [("dotted/dotted_0002.jpg", 0), ("striped/striped_0001.jpg", 1)], [])
    assert label_conflicts(split, check_leaks(split, root, progress=False).hashes) == []
    out = run_script("1_prepareData.py", "--set", "datasetName=twice", "--set", "leakageCheck=off",
                     data_dir=tmp_path).stdout
    assert not tsv.exists() and not (tsv.parent / "near_duplicates.tsv").exists()  # none checked: none listed


def test_leak_move_keeps_cross_class_copies_and_a_test_image_per_class() -> None:
    from imgclass.dedup import Leak

    split = Split(["a", "b"], [("a/t1", 0), ("b/t2", 1)], [("a/x", 0), ("a/y", 1 - 1), ("b/z", 1)])
    leaks = [
        Leak("a/t1", "a/x", 3, True),   # same class: moves
        Leak("a/t1", "a/y", 4, True),   # same class, but it is class a's last test image: stays
        Leak("a/t1", "b/z", 2, False),  # another class: a labelling question, reported, not moved
    ]
    fixed = keep_leaks_in_train(split, leaks)
    assert sorted(p for p, _ in fixed.test) == ["a/y", "b/z"]
    assert ("a/x", 0) in fixed.train and len(fixed.train) == 3


def test_stage1_reports_an_identical_file_once_in_either_mode(originals: Path, tmp_path: Path) -> None:
    root = tmp_path / "images" / "same"
    shutil.copytree(originals, root)
    shutil.copy(root / "dotted/dotted_0002.jpg", root / "dotted/exact_copy.jpg")
    (root / "dedicatedTestImages.tsv").write_text(
        "dotted/dotted_0001.jpg\ndotted/dotted_0002.jpg\nleopard/leopard_0000.jpg\nstriped/striped_0000.jpg\n"
    )
    args = ["--set", "datasetName=same", "--set", "leakageCheck=report"]
    out = run_script("1_prepareData.py", *args, data_dir=tmp_path).stdout
    assert "(0 bits): dotted/exact_copy.jpg (train) ~ dotted/dotted_0002.jpg (test)" in out
    assert "identical files on both sides" not in out
    out = run_script("1_prepareData.py", "--set", "datasetName=same", "--set", "leakageCheck=off", data_dir=tmp_path).stdout
    assert "near duplicates" not in out
    assert "identical files on both sides: dotted/exact_copy.jpg (train) and dotted/dotted_0002.jpg (test)" in out


def test_typical_distance_measures_how_far_apart_distinct_images_lie() -> None:
    from imgclass.dedup import lookalike_note, typical_distance

    rng = np.random.default_rng(1)
    photos = rng.random((200, 256)) < 0.5  # independent bits: distinct images ~100 bits apart
    photos[100:120] = photos[:20] ^ (rng.random((20, 256)) < 0.01)  # 20 copies, a few bits off
    nearest = np.array([min(int((photos[i] != photos[j]).sum()) for j in range(200) if j != i) for i in range(200)])
    want = float(np.median(nearest[nearest > DEFAULT_THRESHOLD]))
    assert typical_distance(photos, DEFAULT_THRESHOLD) == want  # the copies do not pull it down
    assert typical_distance(photos, DEFAULT_THRESHOLD, max_pairs=7 * 200) == want  # in blocks of 7 rows
    assert want > 60 and lookalike_note(want, DEFAULT_THRESHOLD) is None
    sampled = typical_distance(photos, DEFAULT_THRESHOLD, sample=50)
    assert sampled is not None and abs(sampled - want) <= 6
    # Look-alikes: every image a few random bits from one pattern (uniform backgrounds, tiny images).
    alike = rng.random(256) < 0.5
    alike = alike[None, :] ^ (rng.random((200, 256)) < 0.05)
    typical = typical_distance(alike, DEFAULT_THRESHOLD)
    assert typical is not None and typical < 3 * DEFAULT_THRESHOLD
    note = lookalike_note(typical, DEFAULT_THRESHOLD)
    assert note and f"lower the threshold (dedup_threshold or --threshold) to about {int(typical) // 3 - 1}" in note
    assert typical_distance(photos[:5], DEFAULT_THRESHOLD) is None  # too few images to tell


def _digits(root: Path, per_class: int = 50) -> Path:
    """Real handwritten digits (sklearn's 8x8 scans, shipped with it), three classes, as 32 px PNGs:
    distinct images that dhash sees as alike (black background, few pixels)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for label in (0, 1, 7):
        for n, i in enumerate(np.flatnonzero(digits.target == label)[:per_class]):
            (root / str(label)).mkdir(parents=True, exist_ok=True)
            pixels = (digits.images[i] * 255 / 16).astype(np.uint8)
            Image.fromarray(pixels).resize((32, 32), Image.NEAREST).save(root / str(label) / f"{n:03d}.png")
    return root


def test_look_alike_images_are_reported_not_moved(tmp_path: Path) -> None:
    root = _digits(tmp_path / "images" / "digits")
    args = ["--set", "datasetName=digits", "--set", "track_enabled=False"]
    out = run_script("1_prepareData.py", *args, data_dir=tmp_path).stdout
    assert "note: this data set's images look alike to dhash" in out
    assert "leakageCheck = 'move': nothing moved" in out and "moved " not in out
    assert "where you know the data set holds no copies, set leakageCheck = 'off' rather than lowering" in out
    rows = [line.split("\t") for line in (tmp_path / "proc" / "digits" / "near_duplicates.tsv").read_text().splitlines()]
    assert rows[0] == ["train", "test", "bits", "same_class", "mirrored"] and len(rows) > 11  # more pairs than are printed
    assert out.count("near duplicates across the split") == 10 and f"all {len(rows) - 1} in " in out
    split = json.loads((tmp_path / "proc" / "digits" / "split.json").read_text())
    assert {r[1] for r in rows[1:]} <= {p for p, _ in split["test"]}  # every flagged test image still tested
    # At the threshold the note suggests, the data no longer looks alike, and what is that close moves.
    suggested = int(out.split("to about ")[1].split()[0])
    out = run_script("1_prepareData.py", *args, "--set", f"dedup_threshold={suggested}", data_dir=tmp_path).stdout
    assert "this data set's images look alike" not in out
    # A class whose own images still look alike at that threshold (1s are much alike) keeps its pairs.
    flagged = set(out.split("note: the images of ")[1].split(" look alike")[0].split(", ")) if "within their class" in out else set()
    assert flagged <= {"0", "1", "7"} and len(flagged) < 3
    close = {r[1] for r in rows[1:] if int(r[2]) <= suggested and r[3] == "True" and r[1].split("/")[0] not in flagged}
    assert ("moved " in out) == bool(close)
    split = json.loads((tmp_path / "proc" / "digits" / "split.json").read_text())
    assert not close & {p for p, _ in split["test"]}
    # dedupImages --remove refuses to move look-alikes unless forced.
    proc = run_script("dedupImages.py", *args, "--remove", data_dir=tmp_path, check=False)
    assert proc.returncode == 1 and "not moving anything" in proc.stdout and not (root / "_duplicates").exists()
    proc = run_script("dedupImages.py", *args, "--remove", "--force", data_dir=tmp_path)
    assert "moved " in proc.stdout and (root / "_duplicates" / "moved.tsv").is_file()


def test_script_leaves_out_names_no_output_file_can_hold(tmp_path: Path) -> None:
    """A name that is not UTF-8 (a zip made on Windows) or holds a tab is left out with the reason,
    as stage 1 leaves it out; before, writing duplicates.tsv stopped the run."""
    import os

    root = tmp_path / "ds"
    for i in range(3):
        write_image(root / "a" / f"{i}.jpg", (200, 40, 40), seed=i)
    write_image(root / "a" / os.fsdecode(b"caf\xe9.jpg"), (200, 40, 40), seed=0)
    write_image(root / "a" / "tab\there.jpg", (200, 40, 40), seed=0)
    out = run_script("dedupImages.py", str(root), data_dir=tmp_path).stdout
    assert "skipped: a/caf\\xe9.jpg: the file name is not valid UTF-8" in out
    assert "skipped: a/tab\\there.jpg: the file or folder name holds a tab or line break" in out
    assert "3 images" in out and (root / "duplicates.tsv").read_text().startswith("group\tkept")


def _colour_stripes(folder: Path, n: int, seed: int = 5) -> None:
    """Vertical stripes of random colours, periods and phases: distinct pictures, much alike in grey."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    x = np.arange(96)
    for i in range(n):
        period = rng.uniform(10, 16)
        on = ((x + rng.uniform(0, period)) % period) < period / 2
        row = np.where(on[:, None], rng.integers(0, 256, 3), rng.integers(0, 256, 3))
        arr = np.repeat(row[None], 72, axis=0) + rng.normal(0, 6, (72, 96, 3))
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(folder / f"{i:02d}.png")


def test_a_class_whose_own_images_look_alike_keeps_its_test_images_and_label_conflicts_come_first(
        tmp_path: Path) -> None:
    # Stripes of many colours among classes of photos: the data set as a whole does not look alike to
    # dhash, so the data-set-wide note stays silent, and the check moved distinct stripe pictures out
    # of the class's test set. Now judged per class: named, and not moved.
    root = tmp_path / "images" / "mixed"
    generate_demo_dataset(root, images_per_class=8, seed=4, progress=False)
    (root / "README.txt").unlink()
    _colour_stripes(root / "gradient", 40)
    for i in range(11):  # dotted copies of leopard photos: label problems, farther apart than the gradients
        shutil.copy(sorted((root / "leopard").iterdir())[i % 8], root / "dotted" / f"copy_{i}.jpg")
    out = run_script("1_prepareData.py", "--set", "datasetName=mixed", data_dir=tmp_path).stdout
    assert "note: this data set's images look alike" not in out  # not the data-set-wide note
    assert "note: the images of gradient look alike to dhash within their class" in out, out
    split = json.loads((tmp_path / "proc" / "mixed" / "split.json").read_text())
    assert sum(1 for p, _ in split["test"] if p.startswith("gradient/")) == 10  # none moved
    shown = [line for line in out.splitlines() if line.startswith("near duplicates across the split")]
    across = [line for line in shown if "DIFFERENT classes" in line]
    assert across and shown[:len(across)] == across  # the label problems come first, whatever their distance


def test_stage1_names_a_class_the_leak_move_nearly_emptied(originals: Path, tmp_path: Path) -> None:
    # A class of distinct photos, three of which are also there as copies, the copies all test images:
    # moving them leaves the class one test image, which stage 1 now says (it said only "moved 3").
    root = tmp_path / "images" / "burst"
    generate_demo_dataset(root, images_per_class=16, seed=6, progress=False)
    (root / "README.txt").unlink()
    dotted = sorted((root / "dotted").iterdir())
    for i in range(3):
        _copy(dotted[i], root / "dotted" / f"copy_{i}.jpg", 0.8, 85)
    (root / "dedicatedTestImages.tsv").write_text("dotted/copy_0.jpg\ndotted/copy_1.jpg\ndotted/copy_2.jpg\n"
                                                  f"dotted/{dotted[5].name}\nleopard/leopard_0000.jpg\n"
                                                  "striped/striped_0000.jpg\n")
    out = run_script("1_prepareData.py", "--set", "datasetName=burst", data_dir=tmp_path).stdout
    assert "within their class" not in out and "this data set's images look alike" not in out, out
    assert "moved 3 test image(s)" in out
    assert "note: dotted: 3 of its 4 test images moved, 1 left" in out, out


def test_looks_alike_tells_a_class_of_look_alikes_from_one_of_photos_with_a_few_copies() -> None:
    from imgclass.dedup import looks_alike

    rng = np.random.default_rng(3)
    photos = rng.random((60, 256)) < 0.5  # distinct: ~100 bits apart
    with_copies = np.concatenate([photos, photos[:12] ^ (rng.random((12, 256)) < 0.01)])
    stripes = (rng.random(256) < 0.5)[None, :] ^ (rng.random((60, 256)) < 0.06)  # one pattern, ~30 bits apart
    gradients = np.repeat((rng.random(256) < 0.5)[None, :], 12, axis=0)  # one hash: look-alikes, or copies?
    few_with_copies = np.concatenate([photos[:5], np.repeat(photos[:1], 6, axis=0)])
    assert not looks_alike(photos, DEFAULT_THRESHOLD) and not looks_alike(with_copies, DEFAULT_THRESHOLD)
    assert looks_alike(stripes, DEFAULT_THRESHOLD)
    assert not looks_alike(gradients, DEFAULT_THRESHOLD) and not looks_alike(few_with_copies, DEFAULT_THRESHOLD)
    assert not looks_alike(stripes[:8], DEFAULT_THRESHOLD)  # too few images to tell


def test_dedup_leaves_groups_of_a_look_alike_class_in_place_and_moves_the_copies(originals: Path,
                                                                                 tmp_path: Path) -> None:
    root = tmp_path / "ds"
    shutil.copytree(originals, root)
    generate_demo_dataset(root, images_per_class=N_PER_CLASS + 8, seed=9, progress=False)  # more photos
    _colour_stripes(root / "gradient", 40)
    _copy(root / "dotted" / "dotted_0001.jpg", root / "dotted" / "copy_a.jpg", 0.5, 60)
    _copy(root / "dotted" / "dotted_0001.jpg", root / "dotted" / "copy_b.png", 0.8, 0, "PNG")
    proc = run_script("dedupImages.py", str(root), "--remove", data_dir=tmp_path)
    assert "note: the images of gradient look alike to dhash within their class" in proc.stdout, proc.stdout
    assert "this data set's images look alike" not in proc.stdout
    assert len(list((root / "gradient").iterdir())) == 40  # none moved
    moved = (root / "_duplicates" / "moved.tsv").read_text().splitlines()[1:]
    assert sorted(line.split("\t")[0] for line in moved) == ["dotted/copy_a.jpg", "dotted/copy_b.png"], moved
    assert "group(s) of look-alike classes left in place" in proc.stdout


def test_image_hash_is_the_256_bit_hash_the_threshold_is_for(tmp_path: Path) -> None:
    # DEFAULT_THRESHOLD is in bits of 256: a 64-bit hash would make it four times as loose.
    p = write_image(tmp_path / "a.png", (120, 60, 30), size=(64, 48), seed=3)
    h = image_hash(p)
    assert h.hash.size == 256
    assert h == mirrored_hash(p).plain


def test_stage1_rerun_reuses_hashes_of_unchanged_images_and_rereads_changed_ones(originals: Path,
                                                                                  tmp_path: Path) -> None:
    """Stage 1 records each image's dhashes with its size and modification time; a rerun reuses them
    for unchanged files (no decoding) and reads a changed file again: one replaced by a copy of a
    test image is caught as a leak, one replaced by a broken file is left out."""
    from imgclass.dedup import HASH_CACHE_FILE, HashCache

    images = tmp_path / "images" / "ds"
    shutil.copytree(originals, images)
    args = ("--set", "datasetName=ds", "--set", "leakageCheck=report")
    run_script("1_prepareData.py", *args, data_dir=tmp_path)
    cache_file = tmp_path / "proc" / "ds" / HASH_CACHE_FILE
    first = Split.from_json(json.loads((tmp_path / "proc" / "ds" / "split.json").read_text()))
    cached = HashCache(cache_file).unchanged(images)
    assert set(cached) == set(first.sides())  # every image of the split, none other
    rel = first.train[0][0]
    assert cached[rel] == mirrored_hash(images / rel)  # what a fresh decode gives
    # Edited photos: one train image becomes a copy of a test image of its class, another a broken file.
    cls = rel.split("/")[0]
    test_of_class = next(p for p, _ in first.test if p.startswith(f"{cls}/"))
    _copy(images / test_of_class, images / rel, 0.7, 60)
    broken = next(p for p, _ in first.train if p != rel)
    (images / broken).write_bytes(b"not a photo any more")
    assert set(HashCache(cache_file).unchanged(images)) == set(first.sides()) - {rel, broken}
    out = run_script("1_prepareData.py", *args, data_dir=tmp_path).stdout
    assert f"{rel} (train) ~ {test_of_class} (test)" in out, out
    assert f"left out: {broken}: not an image" in out, out
    again = HashCache(cache_file)
    assert again.unchanged(images)[rel] == mirrored_hash(images / rel) and broken not in again.entries
    # A cache that cannot be read is ignored: everything is checked and hashed again, with the same result.
    cache_file.write_text("{ damaged")
    fresh = run_script("1_prepareData.py", *args, data_dir=tmp_path).stdout
    assert f"{rel} (train) ~ {test_of_class} (test)" in fresh and f"left out: {broken}: not an image" in fresh, fresh
    assert set(HashCache(cache_file).unchanged(images)) == set(first.sides()) - {broken}


def test_stage1_rerun_does_not_decode_a_file_whose_size_and_time_are_unchanged(originals: Path,
                                                                             tmp_path: Path) -> None:
    """The rerun trusts size and modification time, as the feature cache does: bytes overwritten in
    place with both restored are not read again (this is what makes the rerun fast); touching the
    file makes it read, and found broken."""
    images = tmp_path / "images" / "ds"
    shutil.copytree(originals, images)
    args = ("--set", "datasetName=ds")
    run_script("1_prepareData.py", *args, data_dir=tmp_path)
    victim = images / "dotted" / "dotted_0002.jpg"
    st = victim.stat()
    victim.write_bytes(b"x" * st.st_size)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    out = run_script("1_prepareData.py", *args, data_dir=tmp_path).stdout
    assert "left out" not in out, out  # not decoded: the hashes of the last run were reused
    os.utime(victim)  # now changed
    out = run_script("1_prepareData.py", *args, data_dir=tmp_path).stdout
    assert "left out: dotted/dotted_0002.jpg: not an image" in out, out


def test_the_hash_cache_tells_apart_two_photos_of_one_size_and_time_that_swapped_paths(tmp_path: Path) -> None:
    """Two photos of one size and modification time (one archive, BMPs of one shape) swapped class
    folders: size and time alone took both for unchanged, and each path kept the other's dhash, so
    the leakage check compared the wrong pictures. The inode tells them apart."""
    from imgclass.dedup import HashCache, path_stats

    rels = ["cat/1.bmp", "dog/1.bmp"]
    for rel, colour in zip(rels, ((200, 20, 20), (20, 20, 200))):
        (tmp_path / rel).parent.mkdir()
        img = Image.new("RGB", (64, 48), colour)
        img.paste((255, 255, 255), (0, 0, 20 if colour[0] > 100 else 44, 48))  # not one flat colour: distinct dhashes
        img.save(tmp_path / rel)
        os.utime(tmp_path / rel, ns=(1_700_000_000_000_000_000,) * 2)
    hashes = {rel: mirrored_hash(tmp_path / rel) for rel in rels}
    assert hashes[rels[0]] != hashes[rels[1]]
    HashCache(tmp_path / "h.json").save(hashes, path_stats(tmp_path, rels))
    assert HashCache(tmp_path / "h.json").unchanged(tmp_path) == hashes  # untouched: all reused
    (tmp_path / rels[0]).rename(tmp_path / "swap.bmp")
    (tmp_path / rels[1]).rename(tmp_path / rels[0])
    (tmp_path / "swap.bmp").rename(tmp_path / rels[1])
    assert path_stats(tmp_path, rels)[rels[0]][:2] == path_stats(tmp_path, rels)[rels[1]][:2]  # same size and time
    assert HashCache(tmp_path / "h.json").unchanged(tmp_path) == {}  # both hashed again
