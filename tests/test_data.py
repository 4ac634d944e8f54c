from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import run_script, write_image
from imgclass.data import (
    DatasetError, Split, balance_notes, check_disjoint, balancing_off, class_counts, exact_duplicates_across, folder_labels,
    list_images, load_split, make_split, save_split,
)


def test_random_split_is_seeded_stratified_and_disjoint(color_dataset: Path) -> None:
    a = make_split(color_dataset, ratio=0.5, seed=1)
    b = make_split(color_dataset, ratio=0.5, seed=1)
    c = make_split(color_dataset, ratio=0.5, seed=2)
    assert a.train == b.train and a.test == b.test
    assert a.train != c.train
    assert a.classes == ["blue", "green", "red"]
    assert a.counts() == {k: {"train": 3, "test": 3} for k in a.classes}
    assert not {p for p, _ in a.train} & {p for p, _ in a.test}
    # labels agree with the folder each image is in
    for p, y in a.train + a.test:
        assert p.split("/")[0] == a.classes[y]


def test_every_class_gets_a_test_image_even_with_few_images(tmp_path: Path) -> None:
    for c in ("a", "b"):
        for i in range(2):
            write_image(tmp_path / c / f"{i}.png", (10, 200, 30), seed=i)
    s = make_split(tmp_path, ratio=0.9, seed=0)
    assert s.counts() == {"a": {"train": 1, "test": 1}, "b": {"train": 1, "test": 1}}


def test_subdir_split_keeps_each_subfolder_on_one_side(tmp_path: Path) -> None:
    for c in ("dotted", "striped"):
        for g in range(4):
            for i in range(3):
                write_image(tmp_path / c / f"item{g}" / f"{i}.jpg", (100, 100, 100), seed=g * 10 + i)
    s = make_split(tmp_path, ratio=0.5, seed=0, split_by="subdir")
    groups = lambda side: {"/".join(p.split("/")[:2]) for p, _ in side}  # noqa: E731
    assert not groups(s.train) & groups(s.test)
    assert s.method == "subdir"
    assert s.counts()["dotted"] == {"train": 6, "test": 6}


def test_dedicated_test_images_fix_the_test_set(color_dataset: Path) -> None:
    (color_dataset / "dedicatedTestImages.tsv").write_text("# test images\nred/red_0.jpg\nblue/blue_5.jpg\ngreen/green_1.jpg\n")
    s = make_split(color_dataset, ratio=0.5, seed=0)
    assert sorted(p for p, _ in s.test) == ["blue/blue_5.jpg", "green/green_1.jpg", "red/red_0.jpg"]
    assert len(s.train) == 15 and s.method == "dedicatedTestImages.tsv"
    # A list with no image yet: the remedy is the list, not ratioTrainTest (which it overrides).
    (color_dataset / "dedicatedTestImages.tsv").write_text("# test images\n")
    with pytest.raises(DatasetError, match="the test set is empty: list test images in dedicatedTestImages.tsv, or "
                                           "delete it for a random split"):
        make_split(color_dataset)
    (color_dataset / "dedicatedTestImages.tsv").write_text("purple/x.jpg\n")
    with pytest.raises(DatasetError, match="line 1"):
        make_split(color_dataset)
    # A spreadsheet's header line is skipped; a file name without its class folder is an error,
    # named, on the first line too (skipped as a header, its image went to train without a word).
    (color_dataset / "dedicatedTestImages.tsv").write_text("red_0.jpg\nblue/blue_5.jpg\n")
    with pytest.raises(DatasetError, match="line 1: 'red_0.jpg'"):
        make_split(color_dataset)
    for header in ("image\tlabel", "class/filename"):  # the README's own name of the column, too
        (color_dataset / "dedicatedTestImages.tsv").write_text(f"{header}\nred/red_0.jpg\tred\n")
        assert [p for p, _ in make_split(color_dataset).test] == ["red/red_0.jpg"]
    (color_dataset / "dedicatedTestImages.tsv").write_text("image\tlabel\nred/red_0.jpg\tred\nred_1.jpg\tred\n")
    with pytest.raises(DatasetError, match="line 3: 'red_1.jpg'"):
        make_split(color_dataset)


def test_dedicated_test_images_in_the_tutorials_two_column_format(color_dataset: Path) -> None:
    # The CNTK tutorial's dedicatedTestImages.tsv is class<TAB>filename (its 1_prepareData.py joined
    # the columns with "/"); its first line was taken for a header and dropped, the second refused.
    (color_dataset / "dedicatedTestImages.tsv").write_text("red\tred_0.jpg\nblue\tblue_5.jpg\n")
    s = make_split(color_dataset)
    assert sorted(p for p, _ in s.test) == ["blue/blue_5.jpg", "red/red_0.jpg"]
    assert s.method == "dedicatedTestImages.tsv"
    # A listed image that is not there is still named, in this format too.
    (color_dataset / "dedicatedTestImages.tsv").write_text("red\tred_0.jpg\nblue\tblue_99.jpg\n")
    with pytest.raises(DatasetError, match="blue/blue_99.jpg"):
        make_split(color_dataset)


def test_train_test_folders_are_used_and_must_agree(tmp_path: Path) -> None:
    for side, n in (("train", 3), ("val", 2)):
        for c in ("cat", "dog"):
            for i in range(n):
                write_image(tmp_path / side / c / f"{i}.jpg", (90, 90, 90), seed=i)
    s = make_split(tmp_path)
    assert len(s.train) == 6 and len(s.test) == 4 and "val" in s.method
    assert all(p.startswith("train/") for p, _ in s.train)
    # A rare class without a test image: trained on, noted by stage 1 (as for a random split).
    write_image(tmp_path / "train" / "bird" / "0.jpg", (1, 2, 3))
    s = make_split(tmp_path)
    assert s.classes == ["bird", "cat", "dog"] and len(s.train) == 7 and len(s.test) == 4
    assert any("no test image: bird" in note for note in balance_notes(s))
    write_image(tmp_path / "val" / "fish" / "0.jpg", (1, 2, 3))
    with pytest.raises(DatasetError, match="val/ has classes that train/ has not: fish"):
        make_split(tmp_path)
    # Kaggle's unlabelled test/: images straight in the folder, no class folders.
    import shutil

    shutil.rmtree(tmp_path / "val")
    write_image(tmp_path / "test" / "0001.jpg", (1, 2, 3))
    with pytest.raises(DatasetError, match=r"test: no class folders.*or make train/ the data set"):
        make_split(tmp_path)


def test_rules_outranked_by_a_split_made_in_advance_are_named(tmp_path: Path, color_dataset: Path) -> None:
    """A test list beside train/ and test/ folders, or imagesSplitBy = 'subdir' there, was ignored
    without a word: the user believed their list or rule made the split."""
    from imgclass.data import unused_rule_notes

    for side in ("train", "test"):
        for c in ("cat", "dog"):
            write_image(tmp_path / side / c / "0.jpg", (90, 90, 90))
    (tmp_path / "dedicatedTestImages.tsv").write_text("train/cat/0.jpg\n")
    s = make_split(tmp_path)
    notes = unused_rule_notes(s, tmp_path, "subdir")
    assert notes == ["dedicatedTestImages.tsv is not read: the folders train/ test/ set the split; to test on the "
                     "images it lists, move them into test/<class>/",
                     "imagesSplitBy = 'subdir' does not apply: the folders train/ test/ set the test set"]
    assert unused_rule_notes(s, tmp_path, "filename") == notes[:1]
    (color_dataset / "dedicatedTestImages.tsv").write_text("red/red_0.jpg\n")
    listed = make_split(color_dataset, split_by="subdir")
    assert unused_rule_notes(listed, color_dataset, "subdir") == [
        "imagesSplitBy = 'subdir' does not apply: dedicatedTestImages.tsv set the test set"]
    (color_dataset / "dedicatedTestImages.tsv").unlink()
    assert unused_rule_notes(make_split(color_dataset, split_by="subdir"), color_dataset, "subdir") == []


def test_split_folders_are_recognised_in_the_names_downloaded_data_sets_use(tmp_path: Path) -> None:
    # Kaggle-style Training/ and Testing/ must not become two classes "Training" and "Testing".
    for side, n in (("Training", 3), ("Testing", 2), ("valid", 1)):
        for c in ("glioma", "meningioma"):
            for i in range(n):
                write_image(tmp_path / side / c / f"{i}.jpg", (90, 90, 90), seed=i)
    s = make_split(tmp_path)
    assert s.classes == ["glioma", "meningioma"]
    assert len(s.train) == 6 and all(p.startswith("Training/") for p, _ in s.train)
    assert len(s.test) == 4 and all(p.startswith("Testing/") for p, _ in s.test)
    assert s.method == "folders Training/ Testing/ (valid/ not used)"


def test_undecodable_files_are_listed_and_left_out(color_dataset: Path) -> None:
    (color_dataset / "red" / "broken.jpg").write_bytes(b"not a jpeg at all")
    s = make_split(color_dataset)
    assert [p for p, _ in s.excluded] == ["red/broken.jpg"]
    assert "red/broken.jpg" not in {p for p, _ in s.train + s.test}


def test_images_outside_the_class_folders_are_named_as_left_out(color_dataset: Path, tmp_path: Path) -> None:
    write_image(color_dataset / "stray photo.jpg", (5, 5, 5))
    (color_dataset / "README.txt").write_text("not an image, not reported")
    s = make_split(color_dataset)
    assert s.excluded == [("stray photo.jpg", "not in a class sub-folder")]
    for side in ("train", "test"):
        for c in ("cat", "dog"):
            write_image(tmp_path / side / c / "0.jpg", (90, 90, 90))
    write_image(tmp_path / "train" / "loose.png", (1, 2, 3))
    assert make_split(tmp_path).excluded == [("train/loose.png", "not in a class sub-folder")]
    # Beside train/ and test/ nothing is read: photos dropped there, and other folders, are named.
    write_image(tmp_path / "new.jpg", (4, 4, 4))
    write_image(tmp_path / "cat" / "more.jpg", (4, 4, 4))
    s = make_split(tmp_path)
    assert ("new.jpg", "not in a class sub-folder") in s.excluded and "(cat/ not used)" in s.method


def test_how_to_give_a_class_test_images_follows_the_split_rule(tmp_path: Path) -> None:
    """Adding photos to the class folder gives a class test images only in a random split."""
    from imgclass.data import test_image_hint

    folders = Split(["a"], [("train/a/0.jpg", 0)], [], method="folders train/ test/")
    assert test_image_hint(folders).startswith("put some of its photos in test/<class>/")
    assert test_image_hint(Split(["a"], [], [], method="dedicatedTestImages.tsv")).startswith("list some of its images in")
    assert "a second sub-folder" in test_image_hint(Split(["a"], [], [], method="subdir"))
    assert test_image_hint(Split(["a"], [], [], method="random")).startswith("add images")
    for c in ("cat", "dog"):
        write_image(tmp_path / "train" / c / "0.jpg", (90, 90, 90))
    write_image(tmp_path / "test" / "cat" / "0.jpg", (90, 90, 90))
    note = next(n for n in balance_notes(make_split(tmp_path)) if n.startswith("no test image: dog;"))
    assert note.endswith("put some of its photos in test/<class>/ (the test side of a split made in advance)")


def test_a_missing_data_set_names_the_one_probably_meant(tmp_path: Path) -> None:
    """datasetName typed in another case or a letter short: the data set meant is named."""
    images = tmp_path / "images"
    for name in ("photos", "shirts"):
        (images / name).mkdir(parents=True)
    for typed in ("Photos", "photo"):
        with pytest.raises(DatasetError, match=r"does not exist: .*; did you mean datasetName = 'photos'\?"):
            make_split(images / typed)
    with pytest.raises(DatasetError, match=r"; data sets in .*images: photos, shirts$"):
        make_split(images / "zzz")


def test_clear_errors_for_unusable_folders(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        make_split(tmp_path / "missing")
    write_image(tmp_path / "only" / "a.jpg", (1, 1, 1))
    with pytest.raises(DatasetError, match="at least two class folders"):
        make_split(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="'empty' has no usable images: add photos to it, or remove the folder$"):
        make_split(tmp_path)
    # An unpacked archive's extra folder level: the message points at the class folders inside.
    for c in ("cats", "dogs"):
        write_image(tmp_path / "nested" / "petImages" / c / "0.jpg", (1, 1, 1))
    with pytest.raises(DatasetError, match=r"found petImages; petImages/ holds the folders cats, dogs: move them up"):
        make_split(tmp_path / "nested")


def test_split_round_trips_and_counts(color_dataset: Path, tmp_path: Path) -> None:
    s = make_split(color_dataset)
    path = save_split(s, tmp_path / "proc" / "split.json")
    assert load_split(path) == s
    assert class_counts(color_dataset) == {"blue": 6, "green": 6, "red": 6}
    with pytest.raises(FileNotFoundError, match="1_prepareData.py"):
        load_split(tmp_path / "nope.json")


def test_exact_duplicates_across_the_split_are_found(color_dataset: Path) -> None:
    s = make_split(color_dataset, ratio=0.5, seed=0)
    train_img = next(p for p, y in s.train if p.startswith("red/"))
    test_img = next(p for p, y in s.test if p.startswith("red/"))
    (color_dataset / test_img).write_bytes((color_dataset / train_img).read_bytes())
    assert exact_duplicates_across(s, color_dataset, progress=False) == [(train_img, test_img)]


def test_unequal_and_tiny_classes_are_pointed_out() -> None:
    from imgclass.data import Split, balance_notes

    def split(sizes: dict[str, int]) -> Split:
        classes = list(sizes)
        train = [(f"{c}/{i}.jpg", k) for k, c in enumerate(classes) for i in range(sizes[c])]
        return Split(classes, train, [(f"{c}/t.jpg", k) for k, c in enumerate(classes)])

    assert balance_notes(split({"a": 30, "b": 10, "c": 8})) == []  # under 4x, every class has 5 or more
    unequal, few = balance_notes(split({"a": 40, "b": 10, "c": 3}))
    assert "'a' has 40 training images, 'c' 3 (13x)" in unequal and "svm_boBalanceClasses = True" in unequal
    assert few.startswith("fewer than 5 training images: c (3);")
    assert balance_notes(split({"a": 40, "b": 10}), suggest=[]) == []  # the options are on already
    assert balance_notes(split({"a": 40, "b": 10})) != []
    # Only the switches the classifier uses, and only those still off: an SVM's balancing does not
    # balance a refined network's training.
    assert balancing_off("svm", {"svm_boBalanceClasses": False, "rf_boBalanceTrainingSet": False}) == ["svm_boBalanceClasses"]
    assert balancing_off("dnn", {"svm_boBalanceClasses": True, "rf_boBalanceTrainingSet": False}) == ["rf_boBalanceTrainingSet"]
    assert balancing_off("svmDnnRefined", {"svm_boBalanceClasses": True, "rf_boBalanceTrainingSet": False}) \
        == ["rf_boBalanceTrainingSet"]
    assert balancing_off("svm", {"svm_boBalanceClasses": True, "rf_boBalanceTrainingSet": False}) == []
    (dnn_note,) = balance_notes(split({"a": 40, "b": 10}), ["rf_boBalanceTrainingSet"])
    assert dnn_note.endswith("consider rf_boBalanceTrainingSet = True (refinement)")
    # Two folders that print alike: one class split in two by accident?
    nfc, nfd = "p\u00fcnktchen", "pu\u0308nktchen"
    case, form = balance_notes(split({"Stripes": 10, "stripes": 10, nfc: 10, nfd: 10}))
    assert case == "classes 'Stripes', 'stripes' differ only in letter case: one class split in two? merge the folders if so"
    assert form.startswith(f"classes {nfc!r}, {nfd!r} differ only in Unicode form (NFC/NFD)")
    # A space at the end of a folder's name shows in no table: two rows "striped", 0% and 100%.
    (space,), both = balance_notes(split({"striped": 10, "striped ": 10})), balance_notes(split({"Dots": 10, " dots": 10}))
    assert space == ("classes 'striped', 'striped ' differ only in spaces at the start or end: one class split in two? "
                     "merge the folders if so")
    assert both[0].startswith("classes 'Dots', ' dots' differ only in spaces at the start or end and letter case")
    # A folder made from a name pasted with a byte-order mark prints as the other class.
    (mark,) = balance_notes(split({"circle": 10, "\ufeffcircle": 10}))
    assert mark.startswith("classes 'circle', '\\ufeffcircle' differ only in invisible characters (byte-order mark")


def test_classes_named_train_and_test_are_told_how_they_are_read(tmp_path: Path) -> None:
    root = tmp_path / "vehicles"
    for c in ("bus", "train", "test"):
        for i in range(3):
            write_image(root / c / f"{c}_{i}.jpg", (40 * i, 90, 200), seed=i)
    with pytest.raises(DatasetError, match=r"no class folders.*read as a split made in advance; if they are classes "
                                           r"of yours, beside bus, rename them, e\.g\. train/ to trains/"):
        make_split(root)
    (root / "train").rename(root / "trains")
    assert make_split(root).classes == ["bus", "test", "trains"]


def test_images_in_a_symlinked_subfolder_are_found(tmp_path: Path) -> None:
    # cat/batch2 -> ~/external: Python 3.11's rglob does not follow directory links, so these were lost.
    root = tmp_path / "ds"
    for c in ("cat", "dog"):
        for i in range(2):
            write_image(root / c / f"{i}.jpg", (90, 90, 90), seed=i)
    external = tmp_path / "external"
    for i in range(3):
        write_image(external / f"x{i}.jpg", (10, 10, 10), seed=i)
    write_image(external / ".thumbs" / "t.jpg", (10, 10, 10))  # hidden folder: still skipped
    try:
        (root / "cat" / "batch2").symlink_to(external, target_is_directory=True)
        (external / "again").symlink_to(external, target_is_directory=True)  # a loop must end
        (root / "dog" / "up").symlink_to(root / "dog", target_is_directory=True)
    except OSError as e:
        pytest.skip(f"cannot create symlinks here: {e}")
    names = [p.relative_to(root).as_posix() for p in list_images(root / "cat")]
    assert names == ["cat/0.jpg", "cat/1.jpg", "cat/batch2/x0.jpg", "cat/batch2/x1.jpg", "cat/batch2/x2.jpg"]
    assert class_counts(root) == {"cat": 5, "dog": 2}
    s = make_split(root, ratio=0.5, seed=0)
    assert s.counts()["cat"]["train"] + s.counts()["cat"]["test"] == 5


def test_one_file_linked_into_two_classes_keeps_one_class_or_none(color_dataset: Path, tmp_path: Path) -> None:
    """A link from one class into another (red/shared -> ../green), or back up the tree, read the
    same photos under two labels without a word; a dangling link vanished silently."""
    root = color_dataset
    external = tmp_path / "external"
    for i in range(2):
        write_image(external / f"x{i}.jpg", (10, 10, 10), seed=i)
    try:
        (root / "red" / "shared").symlink_to(root / "green", target_is_directory=True)
        (root / "red" / "ext").symlink_to(external, target_is_directory=True)  # the same outside folder ...
        (root / "blue" / "ext").symlink_to(external, target_is_directory=True)  # ... in two classes
        (root / "green" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    except OSError as e:
        pytest.skip(f"cannot create symlinks here: {e}")

    def check(split: Split) -> dict[str, str]:
        labels = {p: split.classes[y] for p, y in split.train + split.test}
        assert sorted(labels) == sorted(f"{c}/{c}_{i}.jpg" for c in ("red", "green", "blue") for i in range(6))
        assert all(labels[p] == p.split("/")[0] for p in labels)
        return dict(split.excluded)

    why = check(make_split(root, ratio=0.5, seed=0))
    assert why["red/shared/green_0.jpg"] == ("the same file as green/green_0.jpg (class green), reached through a "
                                             "link: one file cannot have two classes")
    assert why["red/ext/x1.jpg"] == why["blue/ext/x1.jpg"] == (
        "one file linked into the classes blue, red: which is it? move it into one of them")
    assert why["green/gone.jpg"] == f"a link to {tmp_path / 'nowhere.jpg'}, which does not exist"
    assert len(why) == 6 + 2 * 2 + 2  # the dangling link is seen through red/shared too
    # A link back up the tree in one class reads every other class again: those listings go.
    for link in ("shared", "ext"):
        (root / "red" / link).unlink()
    (root / "blue" / "ext").unlink()
    (root / "blue" / "up").symlink_to(root, target_is_directory=True)
    why = check(make_split(root, ratio=0.5, seed=0))
    assert why["blue/up/red/red_3.jpg"] == ("the same file as red/red_3.jpg (class red), reached through a link: "
                                            "one file cannot have two classes")
    assert len(why) == 6 + 6 + 2  # the dangling link, in green and in blue/up/green


def test_a_class_folder_linked_to_a_sub_folder_of_another_class_keeps_its_images(tmp_path: Path) -> None:
    """kittens -> cat/kittens: the images lie in both classes' real folders; the innermost, the
    kittens class, keeps them (they were left out of both, and stage 1 stopped). A second name for a
    photo inside its own class (cat/best.jpg -> 0.jpg) does not cost it its class either, and it is
    counted once (twice, it weighed double in training, or counted twice in the test figures)."""
    root = tmp_path / "ds"
    for i in range(3):
        write_image(root / "cat" / f"{i}.jpg", (90, 90, 90), seed=i)
        write_image(root / "cat" / "kittens" / f"k{i}.jpg", (200, 90, 90), seed=i)
        write_image(root / "dog" / f"{i}.jpg", (10, 10, 10), seed=i)
    try:
        (root / "kittens").symlink_to(root / "cat" / "kittens", target_is_directory=True)
        (root / "cat" / "best.jpg").symlink_to(root / "cat" / "0.jpg")
        (root / "cat" / "00_copy.jpg").symlink_to(root / "cat" / "1.jpg")  # the link's name sorts first
        (root / "dog" / "0_cat.jpg").symlink_to(root / "cat" / "0.jpg")
    except OSError as e:
        pytest.skip(f"cannot create symlinks here: {e}")
    split = make_split(root, ratio=0.5, seed=0)
    labels = {p: split.classes[y] for p, y in split.train + split.test}
    assert {p for p, c in labels.items() if c == "kittens"} == {f"kittens/k{i}.jpg" for i in range(3)}
    assert {p for p, c in labels.items() if c == "cat"} == {"cat/0.jpg", "cat/1.jpg", "cat/2.jpg"}
    assert dict(split.excluded) == {
        "cat/best.jpg": "the same file as cat/0.jpg, reached through a link: counted once",
        "cat/00_copy.jpg": "the same file as cat/1.jpg, reached through a link: counted once",
        **{f"cat/kittens/k{i}.jpg": f"the same file as kittens/k{i}.jpg (class kittens), reached through a link: "
                                    "one file cannot have two classes" for i in range(3)},
        "dog/0_cat.jpg": "the same file as cat/0.jpg (class cat), reached through a link: one file cannot have two classes"}
    # Reached through a linked folder (DATA_DIR linked elsewhere; macOS's /tmp): the same file is kept.
    (tmp_path / "linked").symlink_to(root, target_is_directory=True)
    assert make_split(tmp_path / "linked", ratio=0.5, seed=0).excluded == split.excluded
    # A class whose every image is another class's file: stage 1 says why it has none left.
    for i in range(3):
        (root / "dog" / f"{i}.jpg").unlink()
    with pytest.raises(DatasetError, match=r"class 'dog' has no usable images \(1 left out, e\.g\. dog/0_cat\.jpg: the same file"):
        make_split(root, ratio=0.5, seed=0)


def test_a_class_without_training_images_stops_and_one_without_test_images_is_noted(color_dataset: Path) -> None:
    # dedicatedTestImages.tsv listing every image of a class leaves nothing to learn it from.
    (color_dataset / "dedicatedTestImages.tsv").write_text(
        "red/red_0.jpg\ngreen/green_0.jpg\n" + "".join(f"blue/blue_{i}.jpg\n" for i in range(6)))
    with pytest.raises(DatasetError, match=r"no training image: 'blue'.*dedicatedTestImages.tsv"):
        make_split(color_dataset)
    (color_dataset / "dedicatedTestImages.tsv").unlink()
    # A one-image class goes to train at any ratio (round(0.5) is 0, which put it in test alone).
    write_image(color_dataset / "bird" / "0.jpg", (1, 2, 3))
    for ratio in (0.5, 0.75):
        s = make_split(color_dataset, ratio=ratio, seed=0)
        assert s.counts()["bird"] == {"train": 1, "test": 0}
        assert any(n.startswith("no test image: bird;") for n in balance_notes(s))


def test_dedicated_test_file_saved_with_a_byte_order_mark(color_dataset: Path) -> None:
    # Notepad and Excel start a UTF-8 file with a BOM; line 1 must still read as red/red_0.jpg.
    (color_dataset / "dedicatedTestImages.tsv").write_bytes(
        "\ufeffred/red_0.jpg\r\nblue/blue_5.jpg\r\ngreen/green_1.jpg\r\n".encode("utf-8"))
    s = make_split(color_dataset)
    assert sorted(p for p, _ in s.test) == ["blue/blue_5.jpg", "green/green_1.jpg", "red/red_0.jpg"]


def test_dedicated_test_file_saved_as_ansi_names_the_file_and_line(color_dataset: Path) -> None:
    """Excel's tab-delimited text on Windows is cp1252: stage 1 said only "'utf-8' codec can't decode
    byte 0xe9 in position 30", naming neither the file nor the line (annotations_fixes.tsv did)."""
    (color_dataset / "dedicatedTestImages.tsv").write_bytes("red/red_0.jpg\r\nblue/caf\xe9.jpg\r\n".encode("cp1252"))
    with pytest.raises(DatasetError, match=r"dedicatedTestImages\.tsv, line 2: not UTF-8 text \(byte 0xe9\); save the "
                                           r"file as UTF-8"):
        make_split(color_dataset)
    # Lines ended by a lone \r (Excel for Mac's tab-delimited text), and a byte-order mark before a list
    # joined on in another encoding: the line counted was 1, and one too few.
    for text in ("red/red_0.jpg\rgreen/green_1.jpg\rblue/caf\xe9.jpg\r", "\ufeffred/red_0.jpg\ngreen/green_1.jpg\nblue/caf\xe9.jpg"):
        data = text.encode("cp1252") if text[0] != "\ufeff" else b"\xef\xbb\xbf" + text[1:].encode("cp1252")
        (color_dataset / "dedicatedTestImages.tsv").write_bytes(data)
        with pytest.raises(DatasetError, match=r"dedicatedTestImages\.tsv, line 3: not UTF-8 text \(byte 0xe9\)"):
            make_split(color_dataset)


def test_stage1_names_skipped_folders_and_classes_without_test_images(color_dataset: Path) -> None:
    from imgclass.data import skipped_folders

    write_image(color_dataset / "_duplicates" / "red" / "red_0.jpg", (200, 40, 40))
    write_image(color_dataset / "_duplicates" / "blue_1.jpg", (40, 60, 200))
    write_image(color_dataset / ".misc" / "a.png", (1, 1, 1))
    (color_dataset / "_empty").mkdir()  # holds no image: not worth a word
    write_image(color_dataset / "bird" / "0.jpg", (1, 2, 3))
    # Inside a class folder too: `dedupImages.py DATA/images/colors/red --remove` sets copies aside in
    # red/_duplicates/, and they must not go back into training.
    write_image(color_dataset / "red" / "_duplicates" / "red_0.jpg", (200, 40, 40))
    write_image(color_dataset / "red" / "_new" / "deep" / "red_9.jpg", (200, 40, 40))
    write_image(color_dataset / "red" / ".thumbs" / "red_0.jpg", (200, 40, 40))  # hidden: not named
    assert [p.name for p in list_images(color_dataset / "red")] == sorted(p.name for p in (color_dataset / "red").glob("*.jpg"))
    assert skipped_folders(color_dataset) == [(".misc", 1), ("_duplicates", 2), ("red/_duplicates", 1), ("red/_new", 1)]
    data_dir = color_dataset.parents[1]
    out = run_script("1_prepareData.py", "--set", "datasetName=colors", "--set", "leakageCheck=off",
                     data_dir=data_dir).stdout
    assert ("note: not read (folders starting with _ or . are skipped, beside the classes and inside them): "
            ".misc/ (1 image), _duplicates/ (2 images), red/_duplicates/ (1 image), red/_new/ (1 image)") in out
    assert "note: no test image: bird;" in out
    split = load_split(data_dir / "proc" / "colors" / "split.json")
    assert split.classes == ["bird", "blue", "green", "red"]
    used = [p for p, _ in split.train + split.test]
    assert len(used) == 19 and not [p for p in used if "/_" in p or "/." in p], used


def test_names_that_are_not_utf8_are_left_out_or_named(color_dataset: Path) -> None:
    """A zip made on Windows, unpacked on Linux, leaves names in cp1252 bytes: a file so named is left
    out with the reason (it would fail later, when a stage writes its path to a UTF-8 file), a class
    folder so named stops stage 1 with the folder named, never a traceback."""
    import os
    import shutil

    try:
        bad_file = color_dataset / "red" / os.fsdecode(b"caf\xe9.jpg")
        write_image(bad_file, (200, 40, 40))
    except (OSError, UnicodeError):
        pytest.skip("this file system takes only UTF-8 names")
    data_dir = color_dataset.parents[1]
    args = ("--set", "datasetName=colors", "--set", "leakageCheck=off")
    out = run_script("1_prepareData.py", *args, data_dir=data_dir).stdout
    assert "red/caf\\xe9.jpg" in out
    split = load_split(data_dir / "proc" / "colors" / "split.json")
    assert split.excluded == [("red/caf\\xe9.jpg", "the file name is not valid UTF-8 (written in another system's "
                               "encoding, e.g. unpacked from a zip made on Windows): rename the file")]
    assert len(split.train) + len(split.test) == 18
    shutil.move(color_dataset / "red", color_dataset / os.fsdecode(b"r\xe9d"))
    proc = run_script("1_prepareData.py", *args, data_dir=data_dir, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "the class folder name 'r\\xe9d' is not valid UTF-8" in proc.stderr and "rename the folder" in proc.stderr


def test_names_with_a_tab_or_line_break_are_left_out_or_named(color_dataset: Path) -> None:
    """Every later stage writes paths into tab-separated files, a path a line: a name with a tab
    would shift the columns of predictions.tsv, one with a line break split its line."""
    import shutil

    write_image(color_dataset / "red" / "two\tcolumns.jpg", (200, 40, 40), seed=3)
    write_image(color_dataset / "red" / "two\nlines.jpg", (200, 40, 40), seed=4)
    split = make_split(color_dataset)
    assert sorted(split.excluded) == [
        ("red/two\\nlines.jpg", "the file or folder name holds a tab or line break, which the pipeline's "
                                "tab-separated files cannot hold: rename it"),
        ("red/two\\tcolumns.jpg", "the file or folder name holds a tab or line break, which the pipeline's "
                                  "tab-separated files cannot hold: rename it")]
    assert len(split.train) + len(split.test) == 18
    shutil.move(color_dataset / "red", color_dataset / "re\td")
    with pytest.raises(DatasetError, match=r"the class folder name 're\\td' holds a tab or line break"):
        make_split(color_dataset)


def test_stage1_prints_class_names_the_console_cannot_encode(color_dataset: Path) -> None:
    """A console whose encoding lacks the characters (Windows cp1252 and Chinese class names; here
    ASCII and 'café'): escapes in the output, and the split is still written."""
    import os
    import shutil
    import subprocess
    import sys

    from conftest import ROOT, SCRIPTS

    shutil.move(color_dataset / "red", color_dataset / "café")
    data_dir = color_dataset.parents[1]
    env = {**os.environ, "IMGCLASS_DATA_DIR": str(data_dir), "IMGCLASS_OFFLINE": "1", "IMGCLASS_TRACKING": "0",
           "PYTHONIOENCODING": "ascii"}
    proc = subprocess.run([sys.executable, str(SCRIPTS / "1_prepareData.py"), "--set", "datasetName=colors",
                           "--set", "leakageCheck=off"], capture_output=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode("ascii", "replace")
    assert b"caf\\xe9" in proc.stdout
    assert load_split(data_dir / "proc" / "colors" / "split.json").classes == ["blue", "café", "green"]


def test_a_split_made_in_advance_with_no_usable_test_image_or_a_non_utf8_test_class(tmp_path: Path) -> None:
    import os

    from imgclass.data import shown

    for c in ("cat", "dog"):
        write_image(tmp_path / "train" / c / "0.jpg", (90, 90, 90))
        (tmp_path / "test" / c).mkdir(parents=True)
        (tmp_path / "test" / c / "1.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match=r"test: no usable test image in its class folders; 2 left out, e.g. test/cat/1.jpg: "):
        make_split(tmp_path)
    for c in ("cat", "dog"):
        (tmp_path / "test" / c / "1.jpg").unlink()
    with pytest.raises(DatasetError, match=r"test: no usable test image in its class folders$"):
        make_split(tmp_path)
    try:
        write_image(tmp_path / "test" / os.fsdecode(b"d\xf6g") / "0.jpg", (1, 2, 3))
    except (OSError, UnicodeError):
        return  # a file system that takes only UTF-8 names
    with pytest.raises(DatasetError, match=r"test: the class folder name 'd\\xf6g' is not valid UTF-8"):
        make_split(tmp_path)
    assert shown("a\ud800b") == "a\\ud800b"  # a lone surrogate standing for no byte (Windows names)


def test_images_gone_since_stage_1_are_named_when_the_split_is_loaded(color_dataset: Path, tmp_path: Path) -> None:
    path = save_split(make_split(color_dataset, ratio=0.5, seed=0), tmp_path / "split.json")
    assert load_split(path, color_dataset).train  # all there
    moved = sorted(color_dataset.glob("red/*"))[0]
    moved.rename(tmp_path / moved.name)
    with pytest.raises(FileNotFoundError, match=rf"1 image\(s\) that split.json lists are gone from {color_dataset} "
                                                rf"\(moved or deleted since stage 1\): 'red/{moved.name}'; "
                                                r"rerun scripts/1_prepareData.py"):
        load_split(path, color_dataset)
    assert load_split(path).classes  # without the images folder, not checked
    side = "train" if any(rel == f"red/{moved.name}" for rel, _ in load_split(path).train) else "test"
    other = "test" if side == "train" else "train"
    assert load_split(path, color_dataset, sides=(other,)).classes  # the select scripts read the training side only


def test_photos_dropped_straight_into_the_data_set_folder_are_pointed_out(tmp_path: Path) -> None:
    """Stage 0 and stage 1 on a folder of photos with no class folders yet, and stage 0 on a
    misspelt data set name: each says what it found and what to do."""
    images = tmp_path / "images"
    for i in range(3):
        write_image(images / "shirts" / f"IMG_{i}.jpg", (40 * i, 0, 0))
    hint = r"3 images lie directly in it \(e.g. IMG_0.jpg\), where no class is: move them into one sub-folder per class"
    with pytest.raises(DatasetError, match=rf"found none; {hint}$"):
        make_split(images / "shirts")
    proc = run_script("0_downloadData.py", "--set", "datasetName=shirts", data_dir=tmp_path, check=False)
    assert proc.returncode == 1 and "shirts holds no class folders. Put your photos in" in proc.stderr, proc.stderr
    assert re.search(hint, proc.stderr)
    proc = run_script("0_downloadData.py", "--set", "datasetName=shirt", data_dir=tmp_path, check=False)
    assert proc.returncode == 1 and "shirt does not exist." in proc.stderr
    assert proc.stderr.rstrip().endswith("did you mean datasetName = 'shirts'?"), proc.stderr
    # One class folder, and an empty one beside it: stage 0 says what stage 1 will refuse.
    (images / "shirts" / "striped").mkdir()
    for photo in (images / "shirts").glob("IMG_*.jpg"):
        photo.rename(images / "shirts" / "striped" / photo.name)
    proc = run_script("0_downloadData.py", "--set", "datasetName=shirts", data_dir=tmp_path)
    assert "already holds 1 class folder; nothing to do." in proc.stdout
    assert "note: one class folder only: stage 1 needs two or more" in proc.stdout, proc.stdout
    (images / "shirts" / "dotted").mkdir()
    proc = run_script("0_downloadData.py", "--set", "datasetName=shirts", data_dir=tmp_path)
    assert "note: no image files in dotted: stage 1 needs an image in every class folder" in proc.stdout, proc.stdout


def test_a_growing_data_set_keeps_every_image_on_its_side(color_dataset: Path) -> None:
    # Weeks later: photos added to a class, some deleted, one excluded by a fix. Splitting anew
    # moved about half of each changed class between train and test (and the test set with it).
    first = make_split(color_dataset, ratio=0.5, seed=3)
    assert first.settings == {"randomSeed": 3, "ratioTrainTest": 0.5, "imagesSplitBy": "filename"}
    assert make_split(color_dataset, ratio=0.5, seed=3, previous=first).train == first.train  # nothing new
    for i in range(6, 14):
        write_image(color_dataset / "red" / f"red_{i}.jpg", (200, 40, 40), seed=i)
    (color_dataset / "green" / "green_0.jpg").unlink()
    (color_dataset / "annotations_fixes.tsv").write_text("blue/blue_1.jpg\tEXCLUDE\n")
    later = make_split(color_dataset, ratio=0.5, seed=3, previous=first)
    before, after = first.sides(), later.sides()
    assert all(after[p] == side for p, side in before.items() if p in after)  # no image changed sides
    assert set(before) - set(after) == {"green/green_0.jpg", "blue/blue_1.jpg"}
    assert later.counts()["red"] == {"train": 7, "test": 7}  # the 8 new red photos brought red to its share
    anew = make_split(color_dataset, ratio=0.5, seed=3)
    assert any(anew.sides()[p] != side for p, side in before.items() if p in after), "the test does not test"


def test_an_image_moved_to_another_class_folder_keeps_its_side(color_dataset: Path) -> None:
    """A relabel moves the file (stage 0 when a URL list gives its URL another label, or a person): a
    test image became a new one at its new path, and went to train as likely as not, the test set
    losing it without a word."""
    from imgclass.data import moved_images, split_change_note

    first = make_split(color_dataset, ratio=0.5, seed=3)
    sides = first.sides()
    tested = next(p for p in sorted(sides) if p.startswith("red/") and sides[p] == "test")
    trained = next(p for p in sorted(sides) if p.startswith("red/") and sides[p] == "train")
    for path in (tested, trained):
        (color_dataset / path).rename(color_dataset / "blue" / path.split("/")[1])
    later = make_split(color_dataset, ratio=0.5, seed=3, previous=first)
    after = later.sides()
    assert after["blue/" + tested.split("/")[1]] == "test" and after["blue/" + trained.split("/")[1]] == "train"
    assert dict(later.test)["blue/" + tested.split("/")[1]] == later.classes.index("blue")
    assert split_change_note(first, later) == (
        "kept the side of 18 images of the earlier split.json (test images stay test images, so results stay "
        "comparable; --resplit to split anew); 2 of them relabelled since (annotations_fixes.tsv, or moved to "
        "another class folder), 1 of those test images: test results are not comparable with those of earlier "
        "runs (their test labels differ)")
    # A name that two gone files had, or two new ones have, says nothing of which is which.
    assert moved_images({"a/x.jpg": 5, "b/x.jpg": 5}, {"c/x.jpg": 5}) == {}
    assert moved_images({"a/x.jpg": 5}, {"b/x.jpg": 5, "c/x.jpg": 5}) == {}
    assert moved_images({"a/x.jpg": 5, "a/y.jpg": 1}, {"a/y.jpg": 1, "b/sub/x.jpg": 5}) == {"b/sub/x.jpg": "a/x.jpg"}
    assert moved_images({"a/IMG_0007.JPG": 5}, {"b/IMG_0007.JPG": 6}) == {}  # another photo, named alike
    # One photo deleted, another of the same name (a camera's next batch) added to another class: a new
    # image, not a relabel of the old one.
    again = make_split(color_dataset, ratio=0.5, seed=3, previous=later)
    assert split_change_note(later, again).startswith("the same split")
    gone = next(p for p, side in after.items() if p.startswith("green/") and side == "test")
    (color_dataset / gone).unlink()
    write_image(color_dataset / "red" / gone.split("/")[1], (200, 40, 40), seed=77, size=(64, 40))
    other = make_split(color_dataset, ratio=0.5, seed=3, previous=again)
    note = split_change_note(again, other)
    assert "relabelled" not in note and "1 new:" in note and "1 of its images gone" in note, note


def test_other_settings_split_anew_and_say_why(color_dataset: Path) -> None:
    from imgclass.data import split_change_note

    first = make_split(color_dataset, ratio=0.5, seed=3)
    for i in range(6, 10):
        write_image(color_dataset / "red" / f"red_{i}.jpg", (200, 40, 40), seed=i)
    other_seed = make_split(color_dataset, ratio=0.5, seed=4, previous=first)
    assert other_seed.sides() == make_split(color_dataset, ratio=0.5, seed=4).sides()
    assert split_change_note(first, other_seed) == ("split anew (randomSeed 3 -> 4): earlier test images may be in train "
                                                   "now, so test results are not comparable with those of runs on the "
                                                   "earlier split")
    kept = make_split(color_dataset, ratio=0.5, seed=3, previous=first)
    assert split_change_note(first, kept).startswith("kept the side of 18 images of the earlier split.json")
    assert "4 new: 2 to train, 2 to test" in split_change_note(first, kept)
    # A split.json of an earlier version records no settings (nor sizes): where these settings make
    # it of its own images, it was made with them, and its sides are kept (the first stage 1 after an
    # upgrade split a grown data set anew).
    old = {k: v for k, v in first.to_json().items() if k not in ("settings", "moved", "sizes")}
    unrecorded = Split.from_json(old)
    assert make_split(color_dataset, ratio=0.5, seed=3, previous=unrecorded).sides() == kept.sides()
    assert split_change_note(unrecorded, kept).startswith("kept the side of 18 images of the earlier split.json")
    assert make_split(color_dataset, ratio=0.5, seed=4, previous=unrecorded).sides() == other_seed.sides()
    assert split_change_note(unrecorded, other_seed).startswith(
        "split anew (the earlier split.json, of an earlier version, does not record its settings, and these do not "
        "split its images as it does)")
    # Its moved images are matched by name alone (it has no sizes).
    tested = next(p for p, side in sorted(first.sides().items()) if p.startswith("blue/") and side == "test")
    (color_dataset / tested).rename(color_dataset / "green" / tested.split("/")[1])
    moved = make_split(color_dataset, ratio=0.5, seed=3, previous=unrecorded)
    assert moved.sides()["green/" + tested.split("/")[1]] == "test"
    assert "1 of those test images: test results are not comparable" in split_change_note(unrecorded, moved)


def test_a_subdir_split_keeps_sub_folders_and_sends_new_photos_of_a_test_item_to_test(tmp_path: Path) -> None:
    for g in range(4):
        for i in range(3):
            write_image(tmp_path / "dotted" / f"item{g}" / f"{i}.jpg", (100, 100, 100), seed=g * 10 + i)
            write_image(tmp_path / "striped" / f"item{g}" / f"{i}.jpg", (10, 100, 100), seed=g * 10 + i)
    first = make_split(tmp_path, ratio=0.5, seed=0, split_by="subdir")
    test_item = sorted({p.split("/")[1] for p, _ in first.test if p.startswith("dotted/")})[0]
    write_image(tmp_path / "dotted" / test_item / "new.jpg", (100, 100, 100), seed=99)  # another photo of it
    for g in range(4, 8):
        write_image(tmp_path / "dotted" / f"item{g}" / "0.jpg", (100, 100, 100), seed=g)
    later = make_split(tmp_path, ratio=0.5, seed=0, split_by="subdir", previous=first)
    after = later.sides()
    assert all(after[p] == side for p, side in first.sides().items())
    assert after[f"dotted/{test_item}/new.jpg"] == "test"  # the same garment is never on both sides
    groups = lambda side: {"/".join(p.split("/")[:2]) for p, _ in later.side(side)}  # noqa: E731
    assert not groups("train") & groups("test")
    assert len({g for g in groups("test") if g.startswith("dotted/")}) == 4  # 2 of the 4 new items to test


def test_a_subdir_split_whose_training_folders_are_all_gone_keeps_every_image(tmp_path: Path) -> None:
    """A class's training sub-folders deleted since: one of its test folders becomes its training
    folder, every image of it, none lost between the sides."""
    import shutil

    for c, rgb in (("cat", (100, 100, 100)), ("dog", (10, 100, 100))):
        for g in "abcd":
            for i in range(2):
                write_image(tmp_path / c / g / f"{i}.jpg", rgb, seed=ord(g) * 10 + i)
    first = make_split(tmp_path, ratio=0.75, seed=0, split_by="subdir")
    test_folders = sorted({p.split("/")[1] for p, y in first.test if p.startswith("cat/")})
    for g in set("abcd") - set(test_folders):
        shutil.rmtree(tmp_path / "cat" / g)
    write_image(tmp_path / "cat" / test_folders[0] / "new.jpg", (100, 100, 100), seed=99)
    later = make_split(tmp_path, ratio=0.75, seed=0, split_by="subdir", previous=first)
    cats = sorted(p for p, _ in later.train + later.test if p.startswith("cat/"))
    assert cats == sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "cat").rglob("*.jpg"))
    assert later.counts()["cat"]["train"] >= 1 and not later.excluded


def test_stage1_rerun_keeps_the_split_and_resplit_makes_a_new_one(color_dataset: Path) -> None:
    data_dir = color_dataset.parents[1]
    args = ("--set", "datasetName=colors", "--set", "leakageCheck=off", "--set", "ratioTrainTest=0.5")
    run_script("1_prepareData.py", *args, data_dir=data_dir)
    for i in range(6, 10):
        write_image(color_dataset / "red" / f"red_{i}.jpg", (200, 40, 40), seed=i)
    out = run_script("1_prepareData.py", *args, data_dir=data_dir).stdout
    assert "note: kept the side of 18 images of the earlier split.json" in out and "4 new: 2 to train, 2 to test" in out
    out = run_script("1_prepareData.py", *args, data_dir=data_dir).stdout
    assert "note: the same split as the earlier split.json (22 images)" in out
    out = run_script("1_prepareData.py", *args, "--resplit", data_dir=data_dir).stdout
    assert "note: split anew (--resplit)" in out  # the new photos' sides differ between the two ways


def test_later_stages_name_images_added_and_fixes_edited_since_stage1(color_dataset: Path, tmp_path: Path) -> None:
    import os

    from imgclass.data import since_split_notes

    (color_dataset / "red" / "broken.jpg").write_bytes(b"not an image")  # left out by stage 1: not "new"
    write_image(color_dataset / "red" / os.fsdecode(b"caf\xe9.jpg"), (200, 40, 40))  # a name stage 1 leaves out
    write_image(color_dataset / "loose.jpg", (1, 2, 3))  # outside every class folder: stage 1 names it
    write_image(color_dataset / "_duplicates" / "red" / "x.jpg", (200, 40, 40))  # not a class
    split = make_split(color_dataset)
    split_path = save_split(split, tmp_path / "split.json")
    assert since_split_notes(split, color_dataset, split_path) == []
    write_image(color_dataset / "green" / "new_1.jpg", (40, 190, 60), seed=50)
    (color_dataset / "annotations_fixes.tsv").write_text("red/red_1.jpg\tEXCLUDE\n")
    os.utime(split_path, (1_000_000, 1_000_000))  # stage 1 ran long before both
    notes = since_split_notes(split, color_dataset, split_path)
    assert len(notes) == 2 and notes[0].startswith("1 image file(s) in ") and "green/new_1.jpg" in notes[0]
    assert notes[1].startswith("annotations_fixes.tsv changed after stage 1 wrote split.json: 1 fix(es) not applied "
                               "yet (red/red_1.jpg)")
    # A label confirmed as filed changes nothing in the split: no rerun is asked for.
    (color_dataset / "annotations_fixes.tsv").write_text("red/red_1.jpg\tred\n")
    assert len(since_split_notes(split, color_dataset, split_path)) == 1
    (color_dataset / "annotations_fixes.tsv").write_text("red/red_1.jpg\tEXCLUDE\n")
    (color_dataset / "red" / "red_0.jpg").unlink()  # stage 5 scores its features still: said
    notes = since_split_notes(split, color_dataset, split_path)
    assert len(notes) == 3 and notes[1] == (f"1 image(s) that split.json lists are gone from {color_dataset} (moved or "
                                            "deleted since stage 1: 'red/red_0.jpg'): the results still count them; "
                                            "rerun scripts/1_prepareData.py, then the stages after it")


def test_later_stages_name_a_class_folder_added_or_removed_since_stage1(color_dataset: Path, tmp_path: Path) -> None:
    import shutil

    from imgclass.data import since_split_notes

    split = make_split(color_dataset)
    split_path = save_split(split, tmp_path / "split.json")
    write_image(color_dataset / "purple" / "p_0.jpg", (120, 40, 160))
    write_image(color_dataset / "purple" / "p_1.jpg", (130, 40, 150), seed=3)
    notes = since_split_notes(split, color_dataset, split_path)
    assert len(notes) == 1 and "2 image file(s)" in notes[0]
    assert "among them new class folder(s) purple, which the model cannot predict yet" in notes[0]
    shutil.rmtree(color_dataset / "purple")
    shutil.rmtree(color_dataset / "red")
    notes = since_split_notes(split, color_dataset, split_path)
    assert len(notes) == 1 and "; class folder(s) red gone or empty)" in notes[0], notes


def test_a_class_whose_training_images_are_all_gone_gets_one_back(color_dataset: Path) -> None:
    first = make_split(color_dataset, ratio=0.5, seed=3)
    for rel, _ in first.train:
        if rel.startswith("red/"):
            (color_dataset / rel).unlink()
    later = make_split(color_dataset, ratio=0.5, seed=3, previous=first)  # was: "no training image: 'red'"
    assert later.counts()["red"] == {"train": 1, "test": 2}
    assert all(later.sides()[p] == side for p, side in first.sides().items() if not p.startswith("red/"))


def test_images_the_leakage_check_moved_are_checked_again_on_a_rerun(tmp_path: Path) -> None:
    # The earlier split.json holds the split after the leakage check moved a test image to train:
    # kept as a training image for good, another leakageCheck or dedup_threshold changed nothing.
    from imgclass.data import split_change_note
    from imgclass.dedup import Leak, keep_leaks_in_train

    for c in ("a", "b"):
        for i in range(8):
            write_image(tmp_path / c / f"{i}.jpg", (10 + 30 * i, 100, 200 if c == "a" else 20), seed=i)
    plain = make_split(tmp_path, ratio=0.5, seed=1)
    test_a = [p for p, _ in plain.test if p.startswith("a/")]
    train_a = [p for p, _ in plain.train if p.startswith("a/")]
    checked = keep_leaks_in_train(plain, [Leak(train_a[0], test_a[0], 3, True)])
    assert checked.moved == [test_a[0]] and checked.sides()[test_a[0]] == "train"
    again = make_split(tmp_path, ratio=0.5, seed=1, previous=Split.from_json(checked.to_json()))
    assert again.sides() == plain.sides()  # back in test, where the leakage check may move it once more
    assert keep_leaks_in_train(again, [Leak(train_a[0], test_a[0], 3, True)]).sides() == checked.sides()
    assert split_change_note(checked, again).endswith("1 changed sides (near duplicates the leakage check judges "
                                                      "otherwise now, or a class whose training images are all gone)")


def test_images_stage1_never_reads_are_not_called_added(tmp_path: Path) -> None:
    from imgclass.data import since_split_notes

    for side in ("train", "test", "val"):
        for c in ("a", "b"):
            write_image(tmp_path / side / c / "0.jpg", (200, 40, 40) if c == "a" else (40, 40, 200))
            write_image(tmp_path / side / c / "1.jpg", (200, 40, 40) if c == "a" else (40, 40, 200), seed=1)
    write_image(tmp_path / "other" / "z.jpg", (1, 2, 3))
    split = make_split(tmp_path)
    assert split.method.startswith("folders train/ test/")
    path = save_split(split, tmp_path.parent / f"{tmp_path.name}_split.json")
    assert since_split_notes(split, tmp_path, path) == []  # val/ and other/ are not used by stage 1 at all
    write_image(tmp_path / "train" / "a" / "2.jpg", (200, 40, 40), seed=2)
    notes = since_split_notes(split, tmp_path, path)
    assert len(notes) == 1 and "train/a/2.jpg" in notes[0] and "keep their sides" not in notes[0]


def test_small_training_images_point_to_a_lower_resolution(color_dataset: Path) -> None:
    from imgclass.data import small_images_note

    split = make_split(color_dataset)  # 48 x 40 photos
    note = small_images_note(split, color_dataset, 320)
    assert note.startswith("the training images are small for rf_inputResolution = 320 (median shorter side 40 px): "
                           "each is enlarged 8x") and note.endswith("--resolutions 64 128 224 320")
    assert small_images_note(split, color_dataset, 64) == ""  # 40 px for 64: enlarged less than 2x, not worth a word
    out = run_script("1_prepareData.py", "--set", "datasetName=colors", "--set", "leakageCheck=off",
                     data_dir=color_dataset.parents[1]).stdout
    assert "note: the training images are small for rf_inputResolution = 320" in out


def test_subdir_splits_and_near_names_of_the_test_list_are_noted(tmp_path: Path) -> None:
    from imgclass.data import dedicated_file_hint, split_change_note, subdir_notes

    # A class of an 18-photo and a 2-photo session: whichever goes to test, the share is far off.
    for i in range(18):
        write_image(tmp_path / "leopard" / "session1" / f"{i}.jpg", (200, 100, 40), seed=i)
    for i in range(2):
        write_image(tmp_path / "leopard" / "session2" / f"{i}.jpg", (200, 100, 40), seed=50 + i)
    for s_ in range(4):
        for i in range(3):
            write_image(tmp_path / "dotted" / f"s{s_}" / f"{i}.jpg", (40, 40, 200), seed=10 * s_ + i)
    split = make_split(tmp_path, ratio=0.75, seed=0, split_by="subdir")
    notes = subdir_notes(split, 0.75)
    assert len(notes) == 1 and notes[0].startswith("leopard: ") and "keeps each of its 2 sub-folders whole" in notes[0]
    flat = tmp_path / "flat"
    for c in ("a", "b"):
        for i in range(4):
            write_image(flat / c / f"{i}.jpg", (9, 9, 9), seed=i)
    assert subdir_notes(make_split(flat, split_by="subdir"), 0.75)[0].startswith(
        "imagesSplitBy = 'subdir', but no class folder has sub-folders")
    assert subdir_notes(make_split(flat), 0.75) == []  # a random split: nothing to say
    # A list of test images saved under another name would be passed over without a word.
    assert dedicated_file_hint(flat) is None
    (flat / "dedicatedTestImages.tsv.bak").write_text("a/0.jpg\n")  # a backup: kept on purpose
    assert dedicated_file_hint(flat) is None
    (flat / "dedicatedtestimages.txt").write_text("a/0.jpg\n")
    assert dedicated_file_hint(flat).startswith("dedicatedtestimages.txt is not read: the list of test images must be "
                                                "named dedicatedTestImages.tsv exactly")
    # Another rule than the earlier split's: said, also when the new one is not a random split.
    random_split = make_split(flat)
    (flat / "dedicatedtestimages.txt").rename(flat / "dedicatedTestImages.tsv")
    listed = make_split(flat, previous=random_split)
    assert split_change_note(random_split, listed).startswith(
        "split another way than the earlier split.json (random -> dedicatedTestImages.tsv)")


def test_netpbm_and_targa_images_are_read_and_formats_not_read_are_named(tmp_path: Path) -> None:
    """Research data sets come as .ppm (GTSRB's traffic signs) or .pgm (the ORL faces): such a class
    was "a class with no usable images". Formats still not read (camera raw, JPEG 2000) are named."""
    from PIL import Image

    from imgclass.data import unread_images, unread_images_note

    for c in ("cat", "dog"):
        for i in range(2):
            write_image(tmp_path / c / f"{i}.jpg", (90, 90, 90), seed=i)
    (tmp_path / "owl").mkdir()
    for i in range(3):
        Image.new("L", (32, 32), 40 * i).save(tmp_path / "owl" / f"{i}.pgm")
    Image.new("RGB", (16, 16), (9, 90, 9)).save(tmp_path / "owl" / "3.ppm")
    Image.new("RGB", (16, 16), (90, 9, 9)).save(tmp_path / "owl" / "4.tga")
    split = make_split(tmp_path, ratio=0.5)
    owl = sorted(p for p, y in split.train + split.test if split.classes[y] == "owl")
    assert owl == ["owl/0.pgm", "owl/1.pgm", "owl/2.pgm", "owl/3.ppm", "owl/4.tga"] and not split.excluded
    (tmp_path / "fox").mkdir()
    for i in range(3):
        (tmp_path / "fox" / f"IMG_{i}.NEF").write_bytes(b"camera raw")
    (tmp_path / "fox" / "notes.txt").write_text("not an image: not named")
    (tmp_path / "_old").mkdir()
    (tmp_path / "_old" / "x.cr2").write_bytes(b"raw")  # skipped folders stay skipped
    with pytest.raises(DatasetError, match=r"class 'fox' has no usable images; not read: 3 \.nef file\(s\) below "
                                           r".*fox, a format the pipeline does not read \(it reads \.jpg, .*convert them"):
        make_split(tmp_path)
    write_image(tmp_path / "fox" / "4.jpg", (9, 9, 9))
    (tmp_path / "cat" / "scan.jp2").write_bytes(b"jpeg 2000")
    split = make_split(tmp_path)
    assert len(split.train) + len(split.test) == 10
    assert unread_images(tmp_path) == {".nef": 3, ".jp2": 1}
    assert unread_images_note(tmp_path, "scored").startswith("not scored: 3 .nef, 1 .jp2 file(s) below ")
    assert unread_images_note(tmp_path / "dog") == ""


def test_a_folder_link_back_up_the_tree_is_followed_once(tmp_path: Path) -> None:
    """The check for images in formats not read walked a link back up the tree for ever: stage 1 hung."""
    from imgclass.data import unread_images

    for c in ("cat", "dog"):
        for i in range(2):
            write_image(tmp_path / c / f"{i}.jpg", (90, 90, 90), seed=i)
        (tmp_path / c / "up").symlink_to("..", target_is_directory=True)
    (tmp_path / "cat" / "IMG_1.CR2").write_bytes(b"raw")
    assert unread_images(tmp_path) == {".cr2": 1}
    assert len(make_split(tmp_path).train) + len(make_split(tmp_path).test) == 4


def test_an_interrupted_demo_generation_is_finished_by_the_next_stage_0(tmp_path: Path) -> None:
    """Ctrl-C or a kill while stage 0 draws the demo images left some of them; the rerun said
    'nothing to do', so stage 1 split a data set with a class or two missing or cut short."""
    from imgclass.synthetic import CLASSES, README_FILE, generate_demo_dataset

    demo = tmp_path / "images" / "fashionTextureDemo"
    generate_demo_dataset(demo, images_per_class=4, seed=0, progress=False)
    (demo / README_FILE).unlink()  # the generator writes it last: as if stopped before the end
    for c in CLASSES[1:]:
        for f in (demo / c).iterdir():
            f.unlink()
        (demo / c).rmdir()
    proc = run_script("0_downloadData.py", "--set", "demoImagesPerClass=4", data_dir=tmp_path)
    assert "the demo data set was not finished" in proc.stdout, proc.stdout
    assert all(len(list((demo / c).glob("*.jpg"))) == 4 for c in CLASSES)
    assert (demo / README_FILE).is_file()
    proc = run_script("0_downloadData.py", "--set", "demoImagesPerClass=4", data_dir=tmp_path)
    assert "already holds 3 class folders; nothing to do." in proc.stdout, proc.stdout
    assert "note:" not in proc.stdout
    # Another demoImagesPerClass on a finished demo changes nothing, and says so (it passed in silence).
    proc = run_script("0_downloadData.py", "--set", "demoImagesPerClass=6", data_dir=tmp_path)
    assert ("note: demoImagesPerClass = 6, but these demo images were generated with 4 per class, and are kept"
            in proc.stdout), proc.stdout
    assert all(len(list((demo / c).glob("*.jpg"))) == 4 for c in CLASSES)


def test_each_class_gets_the_nearest_whole_share_of_training_images(tmp_path: Path) -> None:
    for i in range(9):
        write_image(tmp_path / "a" / f"{i}.png", (200, 30, 30), seed=i)
    for i in range(5):
        write_image(tmp_path / "b" / f"{i}.png", (30, 30, 200), seed=i)
    s = make_split(tmp_path, ratio=0.75, seed=0)
    # 9 x 0.75 = 6.75 -> 7 and 5 x 0.75 = 3.75 -> 4: rounded, not cut down to 6 and 3 (a 67% and a 60% split)
    assert s.counts() == {"a": {"train": 7, "test": 2}, "b": {"train": 4, "test": 1}}


def test_a_single_image_on_both_sides_is_refused() -> None:
    # The safety net under every split rule: one shared image is already a test image trained on.
    split = Split(["a"], [("a/1.jpg", 0), ("a/2.jpg", 0)], [("a/2.jpg", 0)])
    with pytest.raises(DatasetError, match="share 1 image.*a/2.jpg"):
        check_disjoint(split)


def test_folder_labels_takes_a_class_folder_in_the_other_unicode_form_for_its_class(tmp_path: Path) -> None:
    """scoreImages.py on a folder copied from a Mac, whose class folder "rayé" is decomposed (e and a
    combining accent), against a model whose class "rayé" is composed: it looked like the class and was
    called a class the model does not know, its images scored without a label."""
    composed, decomposed = "ray\u00e9", "raye\u0301"
    for name in (decomposed, "dotted", "zebra"):
        (tmp_path / name).mkdir()
    paths = [f"{decomposed}/a.jpg", "dotted/b.jpg", "zebra/c.jpg", "loose.jpg"]
    truth = folder_labels(tmp_path, paths, ["dotted", composed])
    assert truth is not None and truth.labels == [1, 0, -1, -1]
    assert truth.unknown == {"zebra": 1} and truth.outside == 1 and truth.n_labelled == 2
    # The only class folder in the other form: still a labelled folder, not an unlabelled one.
    only = tmp_path / "only"
    (only / decomposed).mkdir(parents=True)
    assert folder_labels(only, [f"{decomposed}/a.jpg"], ["dotted", composed]).labels == [1]
