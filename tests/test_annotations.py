"""Annotation fixes: recorded in the data set's annotations_fixes.tsv, honoured by the split, files untouched."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest

from PIL import Image

from conftest import run_script, write_image
from imgclass.annotations import EXCLUDE, FIXES_FILE, AnnotationBrowser, AnnotationError, read_fixes, unwritable_note
from imgclass.data import DatasetError, load_split, make_split


def _files(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*.jpg")}


def test_fixes_move_and_exclude_images_in_the_split(color_dataset: Path) -> None:
    before = _files(color_dataset)
    b = AnnotationBrowser(color_dataset, page_size=4)
    assert b.classes == ["blue", "green", "red"] and b.n_pages("red") == 2 and len(b.page("red", 1)) == 2
    b.move("red/red_0.jpg", "blue")
    b.exclude("green/green_1.jpg")
    b.move("red/red_2.jpg", "green")
    b.reset("red/red_2.jpg")  # changed my mind: back to its folder's class, and off the file
    assert read_fixes(color_dataset) == {"red/red_0.jpg": "blue", "green/green_1.jpg": EXCLUDE}
    assert b.label_of("red/red_0.jpg") == "blue" and b.summary() == {"blue": ["red/red_0.jpg"], EXCLUDE: ["green/green_1.jpg"]}

    split = make_split(color_dataset, 0.5, seed=1)
    labels = {p: split.classes[y] for p, y in split.train + split.test}
    assert labels["red/red_0.jpg"] == "blue" and labels["red/red_2.jpg"] == "red"
    assert "green/green_1.jpg" not in labels and ("green/green_1.jpg", f"marked {EXCLUDE} in {FIXES_FILE}") in split.excluded
    assert len(labels) == 17
    assert _files(color_dataset) == before  # the user's images are never moved or rewritten


def test_bad_fixes_are_clear_errors(color_dataset: Path) -> None:
    b = AnnotationBrowser(color_dataset)
    with pytest.raises(AnnotationError, match="'purple' is not one of"):
        b.move("red/red_0.jpg", "purple")
    with pytest.raises(AnnotationError, match="not an image of"):
        b.exclude("red/nope.jpg")
    (color_dataset / FIXES_FILE).write_text("red/red_0.jpg\tpurple\n")
    with pytest.raises(AnnotationError, match=r"red_0.jpg is moved to 'purple', which is not a class"):
        make_split(color_dataset)
    (color_dataset / "green").rename(color_dataset / "green ")  # a space no table shows
    (color_dataset / FIXES_FILE).write_text("red/red_0.jpg\tGreen\n")
    with pytest.raises(AnnotationError, match=r"'Green', which is not a class \(the class folder is 'green ', with a "
                                              r"space at its start or end, .*: rename the folder\)"):
        make_split(color_dataset)
    (color_dataset / "green ").rename(color_dataset / "green")
    with pytest.raises(AnnotationError, match=r"'Green', which is not a class \(did you mean 'green'\? names must"):
        make_split(color_dataset)
    # Every image of a class given to another (merging a misnamed class): the error says why it is empty.
    (color_dataset / FIXES_FILE).write_text("".join(f"red/red_{i}.jpg\tgreen\n" for i in range(6)))
    with pytest.raises(DatasetError, match=r"class 'red' has no usable images; annotations_fixes.tsv gives its 6 "):
        make_split(color_dataset)
    (color_dataset / FIXES_FILE).write_text("# comment\nred/red_0.jpg blue\n")
    with pytest.raises(AnnotationError, match=r"line 2: expected 'path<TAB>new_class'"):
        read_fixes(color_dataset)
    # Saved as "ANSI" (Latin-1): named with its line, not a bare codec error.
    (color_dataset / FIXES_FILE).write_bytes("red/red_0.jpg\tblue\nred/caf\u00e9.jpg\tEXCLUDE\n".encode("latin-1"))
    with pytest.raises(AnnotationError, match=r"annotations_fixes.tsv, line 2: not UTF-8 text \(byte 0xe9\); save"):
        read_fixes(color_dataset)
    # With a byte-order mark and the byte at a line's start: counted in the file's bytes, the mark's three
    # made the newline before it fall outside the count (line 1).
    (color_dataset / FIXES_FILE).write_bytes(b"\xef\xbb\xbfred/red_0.jpg\tblue\n\xe9.jpg\tEXCLUDE\n")
    with pytest.raises(AnnotationError, match=r"annotations_fixes.tsv, line 2: not UTF-8 text \(byte 0xe9\)"):
        read_fixes(color_dataset)


def test_stage1_honours_the_fixes_file(color_dataset: Path) -> None:
    data_dir = color_dataset.parents[1]
    (color_dataset / FIXES_FILE).write_text("blue/blue_3.jpg\tEXCLUDE\ngreen/green_0.jpg\tred\nred/deleted_since.jpg\tblue\n")
    out = run_script("1_prepareData.py", "--set", "datasetName=colors", data_dir=data_dir).stdout
    assert f"left out: blue/blue_3.jpg: marked EXCLUDE in {FIXES_FILE}" in out
    split = load_split(data_dir / "proc" / "colors" / "split.json")
    labels = {p: split.classes[y] for p, y in split.train + split.test}
    assert labels["green/green_0.jpg"] == "red" and "blue/blue_3.jpg" not in labels
    assert f"note: {FIXES_FILE}: red/deleted_since.jpg: no such image (deleted since, or mistyped" in out
    # What the file did is said, so an edit is seen to take effect.
    assert f"note: {FIXES_FILE} applied: 1 image(s) relabelled (green -> red 1), 1 left out" in out


def test_stage1_rerun_says_images_were_relabelled_on_their_sides(color_dataset: Path) -> None:
    data_dir = color_dataset.parents[1]
    args = ["--set", "datasetName=colors", "--set", "leakageCheck=off"]  # noisy colours look alike to dhash
    run_script("1_prepareData.py", *args, data_dir=data_dir)
    (color_dataset / FIXES_FILE).write_text("green/green_0.jpg\tred\ngreen/green_1.jpg\tblue\n")
    out = run_script("1_prepareData.py", *args, data_dir=data_dir).stdout
    # Not "the same split" without a word: two images changed class, keeping their sides.
    assert "note: the same split as the earlier split.json (18 images; 2 of them relabelled since " \
           "(annotations_fixes.tsv)" in out, out
    split = load_split(data_dir / "proc" / "colors" / "split.json")
    tested = sum(p in ("green/green_0.jpg", "green/green_1.jpg") for p, _ in split.test)
    # A relabelled test image changes what the test figures measure: said so.
    assert (f", {tested} of those test images: test results are not comparable" in out) == bool(tested), out
    (color_dataset / FIXES_FILE).write_text("".join(f"{p}\tred\n" for p, y in split.test if split.classes[y] != "red"))
    out = run_script("1_prepareData.py", *args, data_dir=data_dir).stdout
    assert "of those test images: test results are not comparable with those of earlier runs" in out, out


def test_fixes_that_match_no_image_are_named_by_stage1(color_dataset: Path) -> None:
    # A hand-edited line with the wrong letter case, or an accent typed composed for a file whose
    # name macOS wrote decomposed, changed nothing without a word; "./" in front now just works.
    data_dir = color_dataset.parents[1]
    nfd = unicodedata.normalize("NFD", "caf\u00e9.jpg")
    write_image(color_dataset / "red" / nfd, (200, 40, 40), seed=9)
    (color_dataset / FIXES_FILE).write_text("Red/red_1.jpg\tblue\n./red/red_2.jpg\tEXCLUDE\n"
                                            "red/caf\u00e9.jpg\tEXCLUDE\n", encoding="utf-8")
    out = run_script("1_prepareData.py", "--set", "datasetName=colors", data_dir=data_dir).stdout
    assert "note: annotations_fixes.tsv: Red/red_1.jpg: no such image (did you mean red/red_1.jpg?" in out
    assert ("note: annotations_fixes.tsv: red/caf\u00e9.jpg: no such image (the file's name has the same letters, "
            "its accents encoded otherwise") in out and repr(f"red/{nfd}") in out
    assert f"left out: red/red_2.jpg: marked EXCLUDE in {FIXES_FILE}" in out
    assert out.count(f"note: {FIXES_FILE}: ") == 2
    assert f"note: {FIXES_FILE} applied: 0 image(s) relabelled, 1 left out" in out
    # A fix appended for an image fixed above: the later line counts, and the disagreement is named.
    with open(color_dataset / FIXES_FILE, "a", encoding="utf-8") as f:
        f.write("red/red_2.jpg\tblue\n")
    out = run_script("1_prepareData.py", "--set", "datasetName=colors", data_dir=data_dir).stdout
    assert (f"note: {FIXES_FILE}: red/red_2.jpg is fixed on lines 2 (EXCLUDE) and 4 (blue): the later line counts; "
            "delete the other") in out, out
    assert "red/red_2.jpg" in load_split(data_dir / "proc" / "colors" / "split.json").sides()  # blue, not left out


def test_thumbnails_and_pages_render(color_dataset: Path) -> None:
    write_image(color_dataset / "red" / "big.jpg", (200, 40, 40), size=(900, 600))
    (color_dataset / "red" / "broken.jpg").write_bytes(b"not an image")
    b = AnnotationBrowser(color_dataset, page_size=8, thumb=64)
    for p in b.page("red", 0):
        img = Image.open(io.BytesIO(b.thumbnail(p)))
        assert max(img.size) <= 64
    fig = b.show("red", 0, columns=4)
    assert len([ax for ax in fig.axes if ax.images]) == 8
    with pytest.raises(AnnotationError, match="pages are 0 to 0"):
        b.page("red", 1)


def test_widget_pager_records_the_chosen_label(color_dataset: Path) -> None:
    pytest.importorskip("ipywidgets")
    b = AnnotationBrowser(color_dataset, page_size=4, thumb=48)
    ui = b.widget("red")
    (cls_box, page_box), grid, status = ui.children[0].children, ui.children[1], ui.children[2]
    assert len(grid.children) == 4 and page_box.max == 1
    image, label, menu, checked = grid.children[1].children
    assert label.value == "red_1.jpg" and menu.value == "red" and image.value[:2] == b"\xff\xd8"
    assert checked.value is False
    menu.value = "blue"  # what picking a label in the menu does
    assert read_fixes(color_dataset) == {"red/red_1.jpg": "blue"} and "red/red_1.jpg: blue" in status.value
    assert checked.value is True  # a label a person set is settled
    grid.children[2].children[2].value = EXCLUDE
    assert read_fixes(color_dataset)["red/red_2.jpg"] == EXCLUDE
    # Ticking the box confirms the label as filed; unticking it takes the line away (and a move with it).
    grid.children[3].children[3].value = True
    assert read_fixes(color_dataset)["red/red_3.jpg"] == "red" and "red/red_3.jpg: red checked" in status.value
    checked.value = False
    assert "red/red_1.jpg" not in read_fixes(color_dataset) and menu.value == "red"
    # Back to its folder's class from the menu: no line, and the status says so rather than "recorded".
    menu.value = "green"
    menu.value = "red"
    assert "red/red_1.jpg" not in read_fixes(color_dataset) and checked.value is False
    assert "its folder&#x27;s class: no line in annotations_fixes.tsv" in status.value  # (HTML-escaped)
    # Left out by a call in another cell since the page was drawn: ticking says why it cannot be
    # confirmed (an observer's exception would only reach the log), and the menu and box show the file.
    _, _, menu3, box3 = grid.children[0].children
    b.exclude("red/red_0.jpg")
    box3.value = True
    assert "is left out (EXCLUDE): there is no label to confirm" in status.value
    assert menu3.value == EXCLUDE and box3.value is True and read_fixes(color_dataset)["red/red_0.jpg"] == EXCLUDE
    assert b.summary() == {EXCLUDE: ["red/red_0.jpg", "red/red_2.jpg"], "CONFIRMED": ["red/red_3.jpg"]}
    page_box.value = 1
    assert [c.children[1].value for c in grid.children] == ["red_4.jpg", "red_5.jpg"]
    cls_box.value = "green"
    assert [c.children[1].value for c in grid.children][0] == "green_0.jpg" and page_box.max == 1


def test_fixes_file_saved_with_a_byte_order_mark(color_dataset: Path) -> None:
    # Edited in Notepad or Excel, the file starts with a BOM: line 1 must still name red/red_0.jpg.
    text = "\ufeffred/red_0.jpg\tblue\r\ngreen/green_1.jpg\tEXCLUDE\r\n"
    (color_dataset / FIXES_FILE).write_bytes(text.encode("utf-8"))
    assert read_fixes(color_dataset) == {"red/red_0.jpg": "blue", "green/green_1.jpg": EXCLUDE}
    split = make_split(color_dataset, 0.5, seed=1)
    labels = {p: split.classes[y] for p, y in split.train + split.test}
    assert labels["red/red_0.jpg"] == "blue" and "green/green_1.jpg" not in labels
    # Saved from a spreadsheet with its header row: a header, not an image named "path".
    (color_dataset / FIXES_FILE).write_bytes(("\ufeffPath\tNew class\r\n" + text[1:]).encode("utf-8"))
    assert read_fixes(color_dataset) == {"red/red_0.jpg": "blue", "green/green_1.jpg": EXCLUDE}


def test_a_data_set_split_in_advance_has_its_classes_inside_the_split_folders(tmp_path: Path) -> None:
    root = tmp_path / "images" / "kaggle"
    for side in ("Training", "Testing"):
        for cls, color in (("dotted", (200, 30, 30)), ("striped", (30, 30, 200))):
            for n in range(2):
                write_image(root / side / cls / f"{cls}_{n}.jpg", color, seed=n)
    b = AnnotationBrowser(root)
    assert b.classes == ["dotted", "striped"]  # not ["Testing", "Training"]
    assert b.page("dotted") == ["Training/dotted/dotted_0.jpg", "Training/dotted/dotted_1.jpg",
                                "Testing/dotted/dotted_0.jpg", "Testing/dotted/dotted_1.jpg"]
    b.move("Training/dotted/dotted_1.jpg", "striped")
    b.exclude("Testing/striped/striped_0.jpg")
    with pytest.raises(AnnotationError, match="'Testing' is not one of dotted, striped"):
        b.move("Training/dotted/dotted_0.jpg", "Testing")
    split = make_split(root)
    labels = {p: split.classes[y] for p, y in split.train + split.test}
    assert labels["Training/dotted/dotted_1.jpg"] == "striped" and "Testing/striped/striped_0.jpg" not in labels


def test_widget_pager_shows_file_names_as_text_not_html(color_dataset: Path) -> None:
    """The status line is an HTML widget: a photo named '<img src=x onerror=...>.jpg' must not run."""
    pytest.importorskip("ipywidgets")
    write_image(color_dataset / "red" / "<img src=x onerror=alert(1)>.jpg", (200, 40, 40))
    b = AnnotationBrowser(color_dataset, page_size=20, thumb=48)
    ui = b.widget("red")
    grid, status = ui.children[1], ui.children[2]
    cell = next(c for c in grid.children if c.children[1].value.startswith("<img"))
    cell.children[2].value = "blue"
    assert "&lt;img src=x onerror=alert(1)&gt;.jpg: blue" in status.value and "<img" not in status.value


def test_a_fix_left_behind_by_a_renamed_class_folder_points_to_the_image(color_dataset: Path) -> None:
    # leopard/ renamed animalprint/: its "EXCLUDE" line silently lapsed and the photo came back.
    data_dir = color_dataset.parents[1]
    (color_dataset / FIXES_FILE).write_text("red/red_3.jpg\tEXCLUDE\n")
    (color_dataset / "red").rename(color_dataset / "crimson")
    out = run_script("1_prepareData.py", "--set", "datasetName=colors", data_dir=data_dir).stdout
    assert (f"note: {FIXES_FILE}: red/red_3.jpg: no such image (did you mean crimson/red_3.jpg, the one image of "
            "that name?") in out, out


def test_a_view_pages_chosen_images_of_several_classes_and_fixes_them(color_dataset: Path, tmp_path: Path) -> None:
    from imgclass.suspects import Suspect, read_suspects, write_suspects

    tsv = write_suspects(tmp_path / "label_suspects.tsv", [Suspect("red/red_1.jpg", "red", "blue", 1.5),
                                                             Suspect("green/gone.jpg", "green", "red", 0.5),
                                                             Suspect("blue/blue_2.jpg", "blue", "green", 0.25)])
    suspects = read_suspects(tsv)
    assert [(s.image, s.label, s.predicted, s.margin) for s in suspects][0] == ("red/red_1.jpg", "red", "blue", 1.5)
    b = AnnotationBrowser(color_dataset, page_size=8, thumb=64)
    gone = b.add_view("label suspects", [s.image for s in suspects], [f"looks {s.predicted}" for s in suspects])
    assert gone == ["green/gone.jpg"] and b.page("label suspects") == ["red/red_1.jpg", "blue/blue_2.jpg"]
    b.move("red/red_1.jpg", "blue")  # fixed from the view as from its class page
    assert read_fixes(color_dataset) == {"red/red_1.jpg": "blue"}
    assert b.confirm("blue/blue_2.jpg") == "blue" and b.is_checked("blue/blue_2.jpg")  # looked, and it is blue
    assert read_fixes(color_dataset) == {"red/red_1.jpg": "blue", "blue/blue_2.jpg": "blue"}
    fig = b.show("label suspects")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    # As the PNG numbers them; a label confirmed as filed says so.
    assert titles == ["1: blue\nred_1.jpg\nlooks blue", "2: blue (checked)\nblue_2.jpg\nlooks green"]
    assert b.confirm("red/red_1.jpg") == "blue" and read_fixes(color_dataset)["red/red_1.jpg"] == "blue"  # keeps a move
    b.exclude("green/green_0.jpg")
    with pytest.raises(AnnotationError, match=r"green_0.jpg is left out \(EXCLUDE\): there is no label to confirm"):
        b.confirm("green/green_0.jpg")
    b.reset("blue/blue_2.jpg")
    assert not b.is_checked("blue/blue_2.jpg")
    with pytest.raises(AnnotationError, match="view 'red': a class has that name"):
        b.add_view("red", [])
    (tmp_path / "other.tsv").write_text("image\tclass\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"other.tsv: not a label suspects file"):
        read_suspects(tmp_path / "other.tsv")


@contextlib.contextmanager
def _read_only(folder: Path) -> Iterator[None]:
    """`folder` unwritable for this process: by its permissions, or, for root (whom permissions do not
    stop), by a read-only bind mount of it; skipped where neither can be had."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True).returncode == 0
    if not mounted:
        pytest.skip("root, and no bind mount to make a read-only folder with")
    try:
        if subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], capture_output=True).returncode != 0:
            pytest.skip("root, and no read-only remount")
        yield
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


def test_a_read_only_data_set_folder_says_how_to_record_fixes_anyway(color_dataset: Path) -> None:
    # A colleague's folder, a network share or /kaggle/input, linked as the data set: the fixes file
    # cannot go there, and a folder of links to its class folders takes it instead.
    browser = AnnotationBrowser(color_dataset)
    with _read_only(color_dataset):
        note = unwritable_note(color_dataset)
        assert note is not None and f"{color_dataset} is read-only here" in note and "ln -s" in note
        with pytest.raises(AnnotationError, match=f"{FIXES_FILE} cannot be written in it: make the data set folder a folder of links"):
            browser.move("red/red_0.jpg", "green")
    assert not (color_dataset / FIXES_FILE).exists() and unwritable_note(color_dataset) is None
    # The way the note gives: a real folder of links to the class folders takes the fixes.
    linked = color_dataset.parent / "colors_links"
    linked.mkdir()
    for cls in ("red", "green", "blue"):
        (linked / cls).symlink_to(color_dataset / cls)
    assert AnnotationBrowser(linked).move("red/red_0.jpg", "green") == "green"
    assert read_fixes(linked) == {"red/red_0.jpg": "green"}


@pytest.mark.parametrize(("linked", "relative"), [(False, False), (True, False), (False, True)],
                         ids=["real folder", "linked folder", "real folder, relative DATA_DIR"])
def test_the_read_only_notes_commands_make_a_folder_of_links_when_pasted_into_a_shell(
        color_dataset: Path, linked: bool, relative: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # The note's commands globbed the folder's old name after moving it away: for a real folder that
    # matched nothing, and ln made one link named '*' to nowhere; a name with a space split in two.
    # With DATA_DIR relative ("data", "."), the links pointed at a relative path, which a link reads
    # from its own folder: every class folder a dangling link.
    folder = color_dataset.parent / "my photos"
    if linked:
        folder.symlink_to(color_dataset)
        readonly_target = color_dataset
    else:
        color_dataset.rename(folder)
        readonly_target = folder
    monkeypatch.chdir(color_dataset.parent.parent)  # where the commands are pasted, below
    with _read_only(readonly_target):
        note = unwritable_note(folder.relative_to(color_dataset.parent.parent) if relative else folder)
    assert note is not None
    commands = note.split("instead (", 1)[1].rsplit("), which keeps", 1)[0]
    subprocess.run(["bash", "-c", commands], check=True, capture_output=True, cwd=color_dataset.parent.parent)
    assert folder.is_dir() and not folder.is_symlink()
    assert sorted(p.name for p in folder.iterdir()) == ["blue", "green", "red"]
    assert all((folder / c).is_symlink() and (folder / c / f"{c}_0.jpg").is_file() for c in ("blue", "green", "red"))
    assert AnnotationBrowser(folder).move("red/red_0.jpg", "green") == "green"
    assert read_fixes(folder) == {"red/red_0.jpg": "green"}
