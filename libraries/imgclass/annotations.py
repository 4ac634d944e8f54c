"""Annotation fixes: move an image to another class, or exclude it, without touching the user's files.

The fixes live in `annotations_fixes.tsv` in the data set folder, one line per image:
`path<TAB>new_class` or `path<TAB>EXCLUDE`, the path relative to the data set folder as in
`split.json` (e.g. `dotted/IMG_0012.jpg`). Stage 1 (imgclass.data.make_split) applies them, so a fix
takes effect at the next `1_prepareData.py`, and deleting a line undoes it. A line that gives an
image its own folder's class changes nothing but says a person checked the label: stage 4's label
check no longer lists it (nor any image whose class a line sets).

`AnnotationBrowser` is what notebooks/showImages.ipynb uses to page through a class's images and
record fixes; `browser.widget()` is the interactive version when ipywidgets is installed.
"""

from __future__ import annotations

import errno
import html
import io
import os
import shlex
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from imgclass.fileio import atomic_open, undecodable_line
from imgclass.images import ImageDecodeError, load_rgb

FIXES_FILE = "annotations_fixes.tsv"
EXCLUDE = "EXCLUDE"
CONFIRMED = "CONFIRMED"  # AnnotationBrowser.summary's key for labels confirmed as filed (not a word of the file)
_HEADER = ("# Annotation fixes, applied by scripts/1_prepareData.py (the image files are never moved).\n"
           "# path (relative to this folder)<TAB>new class, or EXCLUDE to leave the image out, or its own\n"
           "# class: label checked and right (stage 4's label check stops listing the image)\n")


class AnnotationError(ValueError):
    """The fixes file or a requested fix is invalid; the message names the file and line or value."""


def _norm(path: str) -> str:
    path = path.strip().replace("\\", "/")
    return path[2:] if path.startswith("./") else path


def read_fixes(images_dir: str | Path, repeated: list[str] | None = None) -> dict[str, str]:
    """{image path: new class or EXCLUDE} from the data set's fixes file ({} when there is none). An
    image fixed on two lines takes the later line's fix; given `repeated`, a note on each such image
    whose lines disagree is appended to it (an edit of the earlier line would otherwise do nothing)."""
    path = Path(images_dir) / FIXES_FILE
    if not path.is_file():
        return {}
    fixes: dict[str, str] = {}
    lines: dict[str, int] = {}
    # utf-8-sig: a file edited in Notepad or Excel starts with a byte-order mark.
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:  # saved as "ANSI" (Latin-1, cp1252): an accented name is not UTF-8
        raise AnnotationError(f"{path}, line {undecodable_line(e)}: not UTF-8 text (byte {e.object[e.start]:#x}); save the file as "
                              "UTF-8") from None
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.rstrip("\n").split("\t")
        # A header line, as a spreadsheet saves one (or label_suspects.tsv's, its first two fields
        # copied as stage 4 advises): not an image named "path".
        if not fixes and [p.strip().lower().replace(" ", "_") for p in parts] in (
                ["path", "new_class"], ["path", "class"], ["image", "predicted"]):
            continue
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise AnnotationError(f"{path}, line {n}: expected 'path<TAB>new_class' or 'path<TAB>{EXCLUDE}', got {line.strip()!r}")
        image, target = _norm(parts[0]), parts[1].strip()
        if repeated is not None and image in fixes and fixes[image] != target:
            repeated.append(f"{image} is fixed on lines {lines[image]} ({fixes[image]}) and {n} ({target}): "
                            "the later line counts; delete the other")
        fixes[image], lines[image] = target, n
    return fixes


def unwritable_note(images_dir: str | Path) -> str | None:
    """Why the fixes file cannot be written in the data set folder, with the way around it; None
    where it can (as far as the permissions tell: a read-only file system shows only on writing)."""
    folder = Path(images_dir)
    if not folder.is_dir() or os.access(folder, os.W_OK):
        return None
    return _unwritable(folder)


def _unwritable(folder: Path) -> str:
    # A folder shared read-only (a colleague's, a network drive, /kaggle/input) still takes fixes
    # through a data set folder of links to its class folders: the fixes file then lies in that folder.
    # The links point where the class folders are once the mv has run: a link's target stays put, but
    # a real folder is then at FOLDER.link (its old name, globbed after the mkdir, matches nothing).
    # Quoted, so that a path with spaces or quotes can be pasted into a shell as it is. The links'
    # targets are absolute: a link reads a relative target from its own folder, and `folder` is
    # relative when DATA_DIR is ("data", ".").
    moved = f"{folder}.link"
    source = folder.resolve() if folder.is_symlink() else f"{os.path.abspath(folder)}.link"
    return (f"{folder} is read-only here, so {FIXES_FILE} cannot be written in it: make the data set folder a "
            f"folder of links to the class folders instead (mv {shlex.quote(str(folder))} {shlex.quote(moved)}; "
            f"mkdir {shlex.quote(str(folder))}; ln -s {shlex.quote(str(source))}/* {shlex.quote(str(folder))}/), "
            "which keeps the photos where they are")


def write_fixes(images_dir: str | Path, fixes: dict[str, str]) -> Path:
    path = Path(images_dir) / FIXES_FILE
    try:
        with atomic_open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write(_HEADER)
            for image, target in sorted(fixes.items()):
                f.write(f"{image}\t{target}\n")
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        raise AnnotationError(f"{_unwritable(Path(images_dir))} ({e.strerror})") from e
    return path


def apply_fixes(per_class: dict[str, list[str]], fixes: dict[str, str], where: str | Path = FIXES_FILE,
                ) -> tuple[dict[str, list[str]], list[str]]:
    """Per-class image lists with the fixes applied, and the images excluded by them.

    A fix naming a class that is not one of the data set's class folders is an error; fixes for
    images no longer in the data set are ignored (the image was deleted since)."""
    classes = list(per_class)
    out: dict[str, list[str]] = {c: [] for c in classes}
    excluded: list[str] = []
    for c, paths in per_class.items():
        for p in paths:
            target = fixes.get(p, c)
            if target == EXCLUDE:
                excluded.append(p)
            elif target in out:
                out[target].append(p)
            else:
                # A folder "striped " (a space at the end) prints as "striped" everywhere: say which it is.
                near = [k for k in classes if k.strip().casefold() == target.strip().casefold()]
                hint = (f"(classes: {', '.join(classes)}; or {EXCLUDE})" if not near else
                        f"(the class folder is {near[0]!r}, with a space at its start or end, which a line of the "
                        "file cannot hold: rename the folder)" if near[0] != near[0].strip() else
                        f"(did you mean {near[0]!r}? names must match exactly)")
                raise AnnotationError(f"{where}: {p} is moved to {target!r}, which is not a class {hint}")
    return {c: sorted(v) for c, v in out.items()}, excluded


def unmatched_fixes(fixes: dict[str, str], paths: Iterable[str]) -> list[str]:
    """Notes on the fixes that name no image of `paths` (the data set's, relative to its folder):
    deleted since, or mistyped. A name that differs only in letter case or Unicode form (macOS
    writes accents decomposed) is pointed out, since to the eye the line looks right."""
    paths = set(paths)
    loose = {unicodedata.normalize("NFC", p).casefold(): p for p in sorted(paths)}
    # A class folder renamed (leopard/ to animalprint/) leaves its fixes behind: the same file name
    # in another folder is most likely the image meant, and an EXCLUDE would otherwise silently lapse.
    by_name: dict[str, list[str]] = {}
    for p in sorted(paths):
        by_name.setdefault(p.rsplit("/", 1)[-1], []).append(p)
    notes = []
    for image in sorted(set(fixes) - paths):
        near = loose.get(unicodedata.normalize("NFC", image).casefold())
        elsewhere = by_name.get(image.rsplit("/", 1)[-1], [])
        if near and unicodedata.normalize("NFC", near) == unicodedata.normalize("NFC", image):
            # They print alike: say how they differ, or the hint reads as nonsense.
            hint = (f" (the file's name has the same letters, its accents encoded otherwise (composed or "
                    f"decomposed, as macOS writes them): copy the name from the file, {near!r})")
        elif near:
            hint = f" (did you mean {near}? names must match exactly)"
        elif len(elsewhere) == 1:
            hint = (f" (did you mean {elsewhere[0]}, the one image of that name? a class folder renamed or the file "
                    f"moved: correct the line, or the fix does nothing)")
        else:
            hint = " (deleted since, or mistyped: the fix does nothing)"
        notes.append(f"{image}: no such image{hint}")
    return notes


class AnnotationBrowser:
    """Pages through a data set's images per class and records fixes in its annotations_fixes.tsv.

    >>> b = AnnotationBrowser(p.images_dir)
    >>> b.show("dotted", page=0)           # a grid of thumbnails, each titled with its number and path
    >>> b.move("dotted/img_003.jpg", "striped"); b.exclude("dotted/img_007.jpg")
    """

    def __init__(self, images_dir: str | Path, page_size: int = 12, thumb: int = 160) -> None:
        # data imports this module for read_fixes
        from imgclass.data import find_split_folders, list_class_dirs, list_images

        if page_size < 1 or thumb < 16:
            raise ValueError(f"page_size {page_size} must be >= 1 and thumb {thumb} >= 16")
        self.images_dir = Path(images_dir)
        # A data set split in advance (train/ and test/, Training/ and Testing/) has its classes
        # inside those folders, as stage 1 reads it; a class's page shows its images from both.
        folders = find_split_folders(self.images_dir)
        roots = [self.images_dir] if folders is None else [folders[0], folders[1]]
        self.classes = list_class_dirs(roots[0])
        if not self.classes:
            raise AnnotationError(f"{roots[0]} holds no class folders")
        self.page_size, self.thumb = page_size, thumb
        self.images = {c: [p.relative_to(self.images_dir).as_posix() for r in roots for p in list_images(r / c)]
                       for c in self.classes}
        self.views: dict[str, list[str]] = {}  # pages of chosen images across classes (add_view)
        self.captions: dict[str, str] = {}  # a line shown under an image's title in `show`

    def add_view(self, name: str, images: Sequence[str], captions: Sequence[str] = ()) -> list[str]:
        """Page through chosen images of any class under `name`, as through a class (stage 4's label
        suspects: `add_view("label suspects", [s.image for s in read_suspects(path)])`); fixes work
        as on a class page. Images no longer in the data set are left out and returned."""
        if name in self.classes:
            raise AnnotationError(f"view {name!r}: a class has that name")
        known = {p for paths in self.images.values() for p in paths}
        images = [_norm(i) for i in images]
        self.views[name] = [i for i in images if i in known]
        for image, caption in zip(images, captions):
            self.captions[image] = caption
        return [i for i in images if i not in known]

    @property
    def fixes(self) -> dict[str, str]:
        return read_fixes(self.images_dir)

    def n_pages(self, cls: str) -> int:
        return max(1, -(-len(self._class_images(cls)) // self.page_size))

    def _class_images(self, cls: str) -> list[str]:
        if cls in self.views:
            return self.views[cls]
        if cls not in self.images:
            raise AnnotationError(f"class {cls!r} is not one of {', '.join([*self.classes, *self.views])}")
        return self.images[cls]

    def page(self, cls: str, page: int = 0) -> list[str]:
        """The image paths on one page of a class (the folder it is in, whatever its fixes say)."""
        if not 0 <= page < self.n_pages(cls):
            raise AnnotationError(f"page {page} of class {cls!r}: pages are 0 to {self.n_pages(cls) - 1}")
        return self._class_images(cls)[page * self.page_size:(page + 1) * self.page_size]

    def label_of(self, image: str) -> str:
        """The class the image will have after the fixes, or EXCLUDE."""
        image = _norm(image)
        return self.fixes.get(image, self._folder_class(image))

    def _folder_class(self, image: str) -> str:
        for c, paths in self.images.items():
            if image in paths:
                return c
        raise AnnotationError(f"{image!r} is not an image of {self.images_dir} (paths are like "
                              f"{self.images[self.classes[0]][0] if self.images[self.classes[0]] else 'class/file.jpg'!r})")

    def _set(self, image: str, target: str, keep_line: bool = False) -> str:
        image = _norm(image)
        folder = self._folder_class(image)
        fixes = self.fixes
        if target == folder and not keep_line:
            fixes.pop(image, None)  # back to its folder's class: no fix needed
        else:
            fixes[image] = target
        write_fixes(self.images_dir, fixes)
        return target

    def confirm(self, image: str) -> str:
        """Record that a person checked the image's label (its folder's class, or the class a fix gave
        it) and found it right: stage 4's label check stops listing it. `reset` takes it back."""
        label = self.label_of(image)
        if label == EXCLUDE:
            raise AnnotationError(f"{image} is left out ({EXCLUDE}): there is no label to confirm (reset it first)")
        return self._set(image, label, keep_line=True)

    def is_checked(self, image: str) -> bool:
        """Whether the fixes file settles the image's label (moved, left out or confirmed)."""
        return _norm(image) in self.fixes

    def move(self, image: str, new_class: str) -> str:
        if new_class not in self.classes:
            raise AnnotationError(f"class {new_class!r} is not one of {', '.join(self.classes)}")
        return self._set(image, new_class)

    def exclude(self, image: str) -> str:
        return self._set(image, EXCLUDE)

    def reset(self, image: str) -> str:
        return self._set(image, self._folder_class(_norm(image)))

    def thumbnail(self, image: str) -> bytes:
        """A JPEG thumbnail (large JPEGs decode at reduced scale, so paging stays quick)."""
        try:
            img = load_rgb(self.images_dir / image, min_size=self.thumb)
        except ImageDecodeError:
            from PIL import Image

            img = Image.new("RGB", (self.thumb, self.thumb), (200, 60, 60))  # undecodable: a red tile
        img.thumbnail((self.thumb, self.thumb))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)
        return buf.getvalue()

    def show(self, cls: str, page: int = 0, columns: int = 6) -> Any:
        """A matplotlib figure of one page; titles are 'number: label' (numbered from 1, as stage 4's
        contact sheet numbers its suspects; label in red when moved or left out, "(checked)" after it
        when confirmed)."""
        import matplotlib.pyplot as plt
        from PIL import Image

        from imgclass.fonts import fit_fonts

        paths = self.page(cls, page)
        rows = max(1, -(-len(paths) // columns))
        fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.4 * rows), squeeze=False,
                                 layout="constrained")
        fixes = self.fixes
        for ax in axes.flat:
            ax.axis("off")
        for i, (ax, p) in enumerate(zip(axes.flat, paths)):
            ax.imshow(Image.open(io.BytesIO(self.thumbnail(p))))
            folder = self._folder_class(p)  # (a view's images are of several classes)
            label = fixes.get(p, folder)
            checked = " (checked)" if p in fixes and label == folder else ""
            caption = f"\n{self.captions[p]}" if p in self.captions else ""
            ax.set_title(f"{page * self.page_size + i + 1}: {label}{checked}\n{Path(p).name}{caption}", fontsize=8,
                         color="red" if label != folder else "black")
        fig.suptitle(f"{cls}: page {page + 1} of {self.n_pages(cls)}")
        fit_fonts(fig)  # class and file names in any script
        return fig

    def widget(self, cls: str | None = None) -> Any:
        """Interactive pager (ipywidgets): a class and page chooser; under each image a label menu, and a
        box ticked where the fixes file settles its label (tick it to confirm the label as it is)."""
        import ipywidgets as w

        choices = [*self.classes, EXCLUDE]
        cls_box = w.Dropdown(options=[*self.classes, *self.views], value=cls or self.classes[0], description="class")
        page_box = w.BoundedIntText(value=0, min=0, max=self.n_pages(cls_box.value) - 1, description="page")
        grid = w.GridBox(layout=w.Layout(grid_template_columns=f"repeat(6, {self.thumb + 20}px)"))
        status = w.HTML()

        syncing = []  # non-empty while the menus and boxes are set to match the file (not a user's pick)

        def sync(image: str, menu: Any, checked: Any) -> None:
            syncing.append(image)
            try:
                menu.value, checked.value = self.label_of(image), self.is_checked(image)
            finally:
                syncing.pop()

        def on_label(change: dict, image: str, menu: Any, checked: Any) -> None:
            if syncing:
                return
            target = change["new"]
            try:
                self.move(image, target) if target != EXCLUDE else self.exclude(image)
                # An HTML widget: a file named "<img src=x onerror=...>.jpg" must show as text, not run.
                status.value = html.escape(f"{image}: {target} (" + (
                    f"recorded in {FIXES_FILE})" if self.is_checked(image) else
                    f"its folder's class: no line in {FIXES_FILE}; tick 'checked' to confirm it)"))
            except AnnotationError as e:  # (an observer's exception would go to the log, not the cell)
                status.value = html.escape(str(e))
            sync(image, menu, checked)  # a move settles the label; back to the folder's class does not

        def on_checked(change: dict, image: str, menu: Any, checked: Any) -> None:
            if syncing:
                return
            try:
                if change["new"]:
                    self.confirm(image)
                    status.value = html.escape(f"{image}: {self.label_of(image)} checked (recorded in {FIXES_FILE})")
                else:
                    self.reset(image)
                    status.value = html.escape(f"{image}: back to its folder's class {self.label_of(image)}, "
                                               f"unchecked (its line removed from {FIXES_FILE})")
            except AnnotationError as e:  # e.g. left out by a call in another cell since the page was drawn
                status.value = html.escape(str(e))
            sync(image, menu, checked)  # the file is the truth: the menu and box show it

        def render(*_: Any) -> None:
            page_box.max = self.n_pages(cls_box.value) - 1
            cells = []
            for p in self.page(cls_box.value, min(page_box.value, page_box.max)):
                menu = w.Dropdown(options=choices, value=self.label_of(p), layout=w.Layout(width=f"{self.thumb}px"))
                # Ticked: a person checked the label (stage 4's label check stops listing the image).
                checked = w.Checkbox(value=self.is_checked(p), description="checked", indent=False)
                menu.observe(lambda ch, p=p, m=menu, box=checked: on_label(ch, p, m, box), names="value")
                checked.observe(lambda ch, p=p, m=menu, box=checked: on_checked(ch, p, m, box), names="value")
                caption = [w.Label(self.captions[p])] if p in self.captions else []
                cells.append(w.VBox([w.Image(value=self.thumbnail(p), format="jpeg"), w.Label(Path(p).name), *caption,
                                     menu, checked]))
            grid.children = cells

        def on_class(_: Any) -> None:  # a new class starts at its first page
            page_box.unobserve(render, names="value")
            page_box.value = 0
            page_box.observe(render, names="value")
            render()

        cls_box.observe(on_class, names="value")
        page_box.observe(render, names="value")
        render()
        return w.VBox([w.HBox([cls_box, page_box]), grid, status])

    def summary(self) -> dict[str, Sequence[str]]:
        """The recorded fixes grouped by their target (a class or EXCLUDE; CONFIRMED: labels confirmed
        as filed, which move nothing)."""
        out: dict[str, list[str]] = {}
        for image, target in sorted(self.fixes.items()):
            known = any(image in paths for paths in self.images.values())
            out.setdefault(CONFIRMED if known and target == self._folder_class(image) else target, []).append(image)
        return out
