"""Find a data set's images and split them into train and test sets.

A data set is a folder of class folders (`images/<dataset>/<class>/...`). The split is decided once,
by stage 1, and written to `proc/<dataset>/split.json`; every later stage reads that file, so all
of them agree on which image is on which side. Four ways to split, in order of precedence:

1. the folder holds `train/` and `test/` (or `val/`; `Training/`, `Testing/`, `valid/`, any case)
   folders of class folders: that split is used;
2. a `dedicatedTestImages.tsv` in the data set folder lists the test images (`class/filename`, or
   the tutorial's `class<TAB>filename`);
3. `imagesSplitBy = "subdir"`: each sub-folder of a class goes wholly to one side (e.g. several
   photos of the same garment stay together, so the test set measures unseen garments);
4. otherwise each class is split at random by `ratioTrainTest`, seeded.

The random and subdir splits keep what an earlier split.json decided, when it was made with the
same seed, ratio and rule: images (and sub-folders) keep their side, and only images new since
then are shared out, so that the test set of a growing data set stays the test set and the
results of runs weeks apart stay comparable. `make_split(previous=None)` splits anew.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import io
import os
import random
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgclass.annotations import EXCLUDE, FIXES_FILE, AnnotationError, apply_fixes, read_fixes, unmatched_fixes
from imgclass.featureset import file_stats
from imgclass.fileio import DamagedFileError, read_json, undecodable_line, write_json
from imgclass.images import IMAGE_EXTENSIONS, check_images, is_image_name
from imgclass.progress import progress_bar
from imgclass.provenance import split_hash_of
from imgclass.terminal import first_few

DEDICATED_TEST_FILE = "dedicatedTestImages.tsv"
# Folder names (any case) that mean a split made in advance, as downloaded data sets ship them:
# Kaggle's Training/Testing, Roboflow's train/valid/test, ... The first test-like name found wins.
TRAIN_FOLDER_NAMES = ("train", "training")
TEST_FOLDER_NAMES = ("test", "testing", "val", "valid", "validation")


class DatasetError(ValueError):
    """The data set folder cannot be used as it is; the message says why and what to do."""


@dataclass
class Split:
    """Which image (path relative to the data set folder) is on which side, with its class index."""

    classes: list[str]
    train: list[tuple[str, int]]
    test: list[tuple[str, int]]
    excluded: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) left out
    method: str = "random"
    settings: dict = field(default_factory=dict)  # randomSeed, ratioTrainTest, imagesSplitBy of a random split
    moved: list[str] = field(default_factory=list)  # test images the leakage check moved to train (stage 1)
    sizes: dict[str, int] = field(default_factory=dict)  # bytes of each image file when the split was made
    # provenance.split_hash of the split.json this was read from ("" for one made here): the split the
    # stage uses, whatever stage 1 in another shell writes to the file while the stage runs.
    hash: str = field(default="", compare=False)

    def side(self, name: str) -> list[tuple[str, int]]:
        if name not in ("train", "test"):
            raise ValueError(f"side {name!r}: expected 'train' or 'test'")
        return self.train if name == "train" else self.test

    def sides(self) -> dict[str, str]:
        """{image: "train" or "test"}."""
        return {p: side for side in ("train", "test") for p, _ in self.side(side)}

    def counts(self) -> dict[str, dict[str, int]]:
        out = {c: {"train": 0, "test": 0} for c in self.classes}
        for side in ("train", "test"):
            for _, label in self.side(side):
                out[self.classes[label]][side] += 1
        return out

    def to_json(self) -> dict:
        return {
            "classes": self.classes,
            "method": self.method,
            "train": [[p, int(y)] for p, y in self.train],
            "test": [[p, int(y)] for p, y in self.test],
            "excluded": [[p, r] for p, r in self.excluded],
            "settings": self.settings,
            "moved": self.moved,
            "sizes": self.sizes,
        }

    @classmethod
    def from_json(cls, d: dict) -> Split:
        return cls(
            classes=list(d["classes"]),
            train=[(_path_text(p), int(y)) for p, y in d["train"]],
            test=[(_path_text(p), int(y)) for p, y in d["test"]],
            excluded=[(_path_text(p), r) for p, r in d.get("excluded", [])],
            method=d.get("method", "random"),
            settings=dict(d.get("settings") or {}),
            moved=[_path_text(p) for p in d.get("moved") or []],
            sizes={str(k): int(v) for k, v in (d.get("sizes") or {}).items()},
        )


def _path_text(value: Any) -> str:
    """An image path of a split.json as read: a list or a number in its place (an edit gone wrong) is
    a TypeError load_split names the file for, not an 'unhashable type' traceback later in stage 1."""
    if not isinstance(value, str):
        raise TypeError(f"{value!r} in place of an image path")
    return value


def save_split(split: Split, path: str | Path) -> Path:
    return write_json(path, split.to_json())


def gone_images(split: Split, images_dir: str | Path, sides: Sequence[str] = ("train", "test")) -> list[str]:
    """The images of `sides` that `split` lists and are no longer files in `images_dir`."""
    return [rel for side in sides for rel, _ in split.side(side) if not (Path(images_dir) / rel).is_file()]


def load_split(path: str | Path, images_dir: str | Path | None = None, sides: Sequence[str] = ("train", "test")) -> Split:
    """The split stage 1 wrote; given `images_dir`, a FileNotFoundError naming the images of `sides`
    that it lists and are gone from there (moved or deleted since stage 1), before a stage spends
    minutes on the rest (the select scripts read the training side only, and check only that)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run scripts/1_prepareData.py first")
    d = read_json(path)
    try:
        split = Split.from_json(d)
        split.hash = split_hash_of(d)
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # valid JSON, but not a split
        raise DamagedFileError(f"{path}: not a split written by scripts/1_prepareData.py "
                               f"({type(e).__name__}: {e}); rerun stage 1") from None
    if images_dir is not None:
        if gone := gone_images(split, images_dir, sides):
            raise FileNotFoundError(f"{len(gone)} image(s) that {path.name} lists are gone from {images_dir} "
                                    f"(moved or deleted since stage 1): {first_few([repr(g) for g in gone])}; "
                                    "rerun scripts/1_prepareData.py "
                                    "to split the images as they are now, then the stages after it")
    return split


NOT_CLASS_PREFIXES = (".", "_")  # folders that are not classes: hidden ones, _duplicates/ (dedupImages.py)
DUPLICATES_FOLDER = "_duplicates"  # where dedupImages.py moves duplicates (inside the data set folder)
DUPLICATES_LIST = "duplicates.tsv"  # dedupImages.py's groups, in the folder it scanned


def list_class_dirs(folder: Path) -> list[str]:
    """Class folders: visible sub-folders, sorted so class indices are stable."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(NOT_CLASS_PREFIXES))


def walk_image_files(root: str | Path, skip_prefixes: tuple[str, ...] = (".",),
                     broken_links: list[Path] | None = None) -> list[Path]:
    """Image files below `root`, sorted; files and folders whose names start with `skip_prefixes`
    skipped. Linked folders are followed (cat/batch2 -> ~/external is how photos stored elsewhere join
    a class; Path.rglob does not follow them before Python 3.13), each real folder once, so a link
    back up the tree cannot loop. Links with an image's name whose target does not exist go to
    `broken_links`, when given."""
    out = []
    for folder, files in _walk_once(root, skip_prefixes):
        for name in files:
            p = Path(folder, name)
            if not name.startswith(".") and is_image_name(name):
                if p.is_file():
                    out.append(p)
                elif broken_links is not None and p.is_symlink():
                    broken_links.append(p)
    return sorted(out)


def _walk_once(root: str | Path, skip_prefixes: tuple[str, ...]) -> Iterator[tuple[str, list[str]]]:
    """(folder, file names) below `root`, linked folders followed, each real folder once (a link back
    up the tree would otherwise loop for ever), folders whose names start with `skip_prefixes` skipped."""
    seen: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(skip_prefixes)]
        yield folder, files


def list_images(class_dir: Path, broken_links: list[Path] | None = None) -> list[Path]:
    """Image files below a class folder (recursively), sorted, hidden files and folders skipped and
    folders starting with '_' too (`dedupImages.py cat --remove` sets copies aside in cat/_duplicates/),
    linked folders followed (see walk_image_files)."""
    return walk_image_files(class_dir, skip_prefixes=NOT_CLASS_PREFIXES, broken_links=broken_links)


def _one_class_per_file(listed: list[tuple[str, Path]], root: Path, base: Path) -> dict[Path, str]:
    """{file listed: why it is left out} for files that are one real file listed twice, through a
    link: under two classes (dotted/shared -> ../striped, or a link back up the tree in one class
    folder), since one file cannot teach the model two classes, or twice in one class. The file
    keeps the class whose real folder it lies in (the innermost, when a class folder is a link to a
    sub-folder of another class: kittens -> cat/kittens); it is left out of the others, or of all
    when it lies in none of them or in two classes' same folder."""
    real_dir: dict[Path, str] = {}

    def real(p: Path) -> str:
        if p.is_symlink():
            return os.path.realpath(p)
        if p.parent not in real_dir:
            real_dir[p.parent] = os.path.realpath(p.parent)
        return os.path.join(real_dir[p.parent], p.name)

    class_dir = {c: os.path.realpath(root / c) for c in {c for c, _ in listed}}  # once per class, not per file
    real_root = os.path.realpath(root)
    by_file: dict[str, list[tuple[str, Path]]] = defaultdict(list)
    for c, p in listed:
        by_file[real(p)].append((c, p))
    out: dict[Path, str] = {}
    for target, listings in by_file.items():
        if len(listings) < 2:
            continue
        classes = sorted({c for c, _ in listings})
        home: str | None = classes[0]
        if len(classes) > 1:
            homes = [c for c in classes if target.startswith(class_dir[c] + os.sep)]
            depth = {c: len(class_dir[c]) for c in homes}
            home = max(homes, key=depth.get) if homes else None
            if home is not None and list(depth.values()).count(depth[home]) > 1:
                home = None  # two classes are the same real folder
        # Counted once, also within one class (a photo linked beside itself): twice, it would weigh
        # double in training, or count twice in the test figures. The path with no link below the data
        # set's folder is kept (a link above it, to DATA_DIR say, or macOS's /tmp, is every path's).
        kept = min((p for c, p in listings if c == home),
                   key=lambda p: (real(p) != os.path.join(real_root, os.path.relpath(p, root)), p), default=None)
        for c, p in listings:
            if p == kept:
                continue
            if kept is None:
                out[p] = f"one file linked into the classes {', '.join(classes)}: which is it? move it into one of them"
            elif c == home:
                out[p] = f"the same file as {kept.relative_to(base).as_posix()}, reached through a link: counted once"
            else:
                out[p] = (f"the same file as {kept.relative_to(base).as_posix()} (class {home}), reached through a "
                          f"link: one file cannot have two classes")
    return out


def skipped_folders(images_dir: str | Path) -> list[tuple[str, int]]:
    """(folder, images) for each folder beside the class folders that is not a class because its
    name starts with '_' or '.' yet holds images, e.g. ("_duplicates", 12), and for each folder inside
    a class folder whose name starts with '_' ("cat/_duplicates"), sorted by class; stage 1 names them,
    since a class (or photos) in such a folder would otherwise vanish without a word. In a data set
    split in advance the folders inside train/ and test/ are looked at too ("train/_background")."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        return []
    folders = [images_dir]
    if (split_folders := find_split_folders(images_dir)) is not None:
        folders += split_folders[:2]
    class_parents = folders[1:] or folders
    out = []
    for folder in folders:
        for p in sorted(folder.iterdir()):
            if p.is_dir() and p.name.startswith(NOT_CLASS_PREFIXES):
                if n := len(list_images(p)):
                    out.append((p.relative_to(images_dir).as_posix(), n))
            elif p.is_dir() and folder in class_parents:  # a class folder: its own cat/_duplicates/ and the like
                prefix = p.relative_to(images_dir).as_posix()
                out += [(f"{prefix}/{sub}", n) for sub, n in skipped_below(p)]
    return out


def loose_images(folder: Path, base: Path) -> list[tuple[str, str]]:
    """Images lying directly in `folder`, outside every class folder: left out, but named, since a
    user who dropped them there most likely expected them to be used."""
    if not folder.is_dir():
        return []
    return [(shown(p.relative_to(base).as_posix()), "not in a class sub-folder")
            for p in sorted(folder.iterdir()) if p.is_file() and is_image_name(p) and not p.name.startswith(".")]


def loose_images_hint(folder: Path) -> str:
    """For a data set folder without class folders: "; its N images lie directly in it ..." when
    they do (photos copied in, the classes not yet sorted), else ""."""
    if not (loose := loose_images(folder, folder)):
        return ""
    return (f"; {len(loose)} image{'s lie' if len(loose) > 1 else ' lies'} directly in it (e.g. {loose[0][0]}), "
            "where no class is: move them into one sub-folder per class")


def class_counts(images_dir: str | Path) -> dict[str, int]:
    """Images per class folder (for reporting an existing data set); in a data set split in advance,
    per class folder of its train and test folders ("train/dotted"), the folders stage 1 reads."""
    images_dir = Path(images_dir)
    if (folders := find_split_folders(images_dir)) is not None:
        return {f"{side.name}/{c}": len(list_images(side / c)) for side in folders[:2] for c in list_class_dirs(side)}
    return {c: len(list_images(images_dir / c)) for c in list_class_dirs(images_dir)}


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def shown(name: str) -> str:
    """A file name as it can be printed and saved: a name that is not UTF-8 (unpacked from a zip made
    on Windows, copied from an old NAS) reaches Python with stand-ins for its bytes, which print() and
    UTF-8 files refuse; here those bytes appear as \\xNN."""
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that stands for no byte (possible in Windows names)
        return name.encode("utf-8", "backslashreplace").decode("utf-8")


NOT_UTF8 = "is not valid UTF-8 (written in another system's encoding, e.g. unpacked from a zip made on Windows)"
# Later stages write paths into tab-separated files (predictions.tsv, near_duplicates.tsv), one a line.
TAB_OR_BREAK = "holds a tab or line break, which the pipeline's tab-separated files cannot hold"


def _has_tab_or_break(name: str) -> bool:
    return any(ch in name for ch in "\t\n\r")


def name_problem(rel: str) -> tuple[str, str] | None:
    """(the name as it can be shown, why it is left out) for a path no output file can hold, else None."""
    if not _is_utf8(rel):  # the outputs are UTF-8 files (split.json, predictions.tsv, duplicates.tsv)
        return shown(rel), f"the file name {NOT_UTF8}: rename the file"
    if _has_tab_or_break(rel):
        return repr(rel)[1:-1], f"the file or folder name {TAB_OR_BREAK}: rename it"
    return None


def _check_folder_names(names: list[str], where: Path) -> None:
    if bad := [c for c in names if not _is_utf8(c)]:
        raise DatasetError(f"{shown(str(where))}: the class folder name '{shown(bad[0])}' {NOT_UTF8}: rename the folder")
    if bad := [c for c in names if _has_tab_or_break(c)]:
        raise DatasetError(f"{shown(str(where))}: the class folder name {bad[0]!r} {TAB_OR_BREAK}: rename the folder")


def _check_classes(classes: list[str], where: Path) -> None:
    _check_folder_names(classes, where)
    if len(classes) < 2:
        found = ", ".join(classes) if classes else "none"
        hint = ""
        if len(classes) == 1 and len(inner := list_class_dirs(where / classes[0])) >= 2:
            # An unpacked archive often adds one folder level: <dataset>/<archive name>/<class>/...
            hint = (f"; {classes[0]}/ holds the folders {', '.join(inner[:5])}{', ...' if len(inner) > 5 else ''}: "
                    f"move them up one level, or put their parent folder in DATA_DIR/images/ as the data set")
        else:
            hint = loose_images_hint(where)
        raise DatasetError(
            f"{where}: need at least two class folders (one sub-folder per class), found {found}{hint}"
        )


# Checks that image files decode: (paths, progress) -> the problem of each, None where it decodes.
DecodeCheck = Callable[[Sequence[Path], bool], list[str | None]]


def _collect(root: Path, classes: list[str], excluded: list[tuple[str, str]], base: Path, check: bool | DecodeCheck,
             progress: bool = False, allow_empty: bool = False,
             decoded_before: Collection[str] = ()) -> dict[str, list[str]]:
    """Per class, decodable image paths relative to `base`; undecodable ones go to `excluded`.
    A class without a usable image is an error, unless `allow_empty` (the test side of a split made in advance).
    `check`: True decodes each file with check_images, a function is called instead of it.
    `decoded_before`: paths (relative to `base`) known to decode, unchanged since: not decoded again."""
    broken: list[Path] = []
    listed = [(c, p) for c in classes for p in list_images(root / c, broken)]
    excluded += [(shown(p.relative_to(base).as_posix()), f"a link to {shown(os.readlink(p))}, which does not exist")
                 for p in broken]
    twice = _one_class_per_file(listed, root, base)
    listed = [(c, p) for c, p in listed if p not in twice]
    excluded += [(shown(p.relative_to(base).as_posix()), why) for p, why in twice.items()]
    problems: list[str | None] = [None] * len(listed)
    if check:
        todo = [i for i, (_, p) in enumerate(listed) if p.relative_to(base).as_posix() not in decoded_before]
        check_fn = check if callable(check) else check_images
        for i, problem in zip(todo, check_fn([listed[i][1] for i in todo], progress and bool(todo))):
            problems[i] = problem
    out: dict[str, list[str]] = {c: [] for c in classes}
    for (c, p), problem in zip(listed, problems):
        rel = p.relative_to(base).as_posix()
        if bad_name := name_problem(rel):
            excluded.append(bad_name)
        elif problem:
            excluded.append((rel, problem))
        else:
            out[c].append(rel)
    # The user's label fixes (annotations_fixes.tsv): relabel or leave out, never move the files.
    found = {c: list(v) for c, v in out.items()}
    out, dropped = apply_fixes(out, read_fixes(base), base / FIXES_FILE)
    excluded += [(rel, f"marked {EXCLUDE} in {FIXES_FILE}") for rel in dropped]
    for c, good in out.items():
        if not good and not allow_empty:
            gone = [(p, why) for p, why in excluded if p.startswith(f"{(root / c).relative_to(base).as_posix()}/")]
            relabelled = [p for p in found[c] if p not in dropped]  # all moved to other classes by the fixes
            if not found[c] and not gone and (unread := unread_images_note(root / c)):
                raise DatasetError(f"{root / c}: class {c!r} has no usable images; {unread}")
            raise DatasetError(f"{root / c}: class {c!r} has no usable images" + (
                f" ({len(gone)} left out, e.g. {gone[0][0]}: {gone[0][1]})" if gone else "") + (
                f"; {FIXES_FILE} gives its {len(relabelled)} other image(s) to other classes: to merge the class "
                f"into another, move its files there (stage 1 needs each class folder to keep an image)"
                if relabelled else "" if gone else ": add photos to it, or remove the folder"))
    return out


def _train_share(n: int, ratio: float) -> int:
    """How many of a class's n images go to train. Every class gets a training image, and a test
    image when it has two or more; a lone image goes to train (round(0.5) is 0, which put it in test
    with nothing to learn the class from)."""
    n_train = max(round(n * ratio), 1)
    return min(n_train, n - 1) if n >= 2 else n_train


def _split_list(items: list, ratio: float, rng: random.Random) -> tuple[list, list]:
    items = list(items)
    rng.shuffle(items)
    n_train = _train_share(len(items), ratio)
    return sorted(items[:n_train]), sorted(items[n_train:])


def _split_keeping(items: list, ratio: float, rng: random.Random, earlier: dict) -> tuple[list, list]:
    """_split_list, except that items with a side in `earlier` ("train" / "test") keep it: the new
    ones go to test until the class has its share there (as far as they reach), the rest to train.
    With no item seen before it is exactly _split_list, so a first split does not depend on this."""
    kept_train = [x for x in items if earlier.get(x) == "train"]
    kept_test = [x for x in items if earlier.get(x) == "test"]
    if not kept_train and not kept_test:
        return _split_list(items, ratio, rng)
    new = sorted(x for x in items if x not in earlier)
    rng.shuffle(new)
    to_test = min(len(new), max(0, len(items) - _train_share(len(items), ratio) - len(kept_test)))
    train, test = kept_train + new[to_test:], kept_test + new[:to_test]
    if not train and test:  # a class always keeps a training image, also when its earlier ones are all gone
        pick = rng.choice(sorted(set(test) - set(kept_test)) or sorted(test))  # a new image, where there is one
        test.remove(pick)
        train.append(pick)
    return sorted(train), sorted(test)


def file_sizes(root: str | Path, paths: Iterable[str]) -> dict[str, int]:
    """{path: size in bytes} of the files under `root` that can be read (Split.sizes)."""
    paths = list(paths)
    stats = file_stats([Path(root) / p for p in paths])
    return {p: int(size) for p, (size, _) in zip(paths, stats) if size >= 0}


def moved_images(before: Mapping[str, int], now: Mapping[str, int]) -> dict[str, str]:
    """{path now: path before} of image files moved to another folder: `before` and `now` give each
    image's size in bytes; a path of `before` gone from `now` and a path of `now` new since are one file
    where they have the same file name, which no other gone or new path has, and the same size (cameras
    name photos IMG_0007.JPG batch after batch: a name alone would make another photo the moved one;
    a size of -1 in `before`, unknown, is taken as the same).
    A relabel moves a file so (stage 0, when a URL list gives its URL another label; a person dragging
    a photo to its right class folder)."""
    def by_name(paths: Iterable[str]) -> dict[str, list[str]]:
        named: dict[str, list[str]] = defaultdict(list)
        for path in paths:
            named[path.rsplit("/", 1)[-1]].append(path)
        return named

    gone, new = by_name(p for p in before if p not in now), by_name(p for p in now if p not in before)
    return {new[name][0]: old[0] for name, old in gone.items()
            if len(old) == 1 and len(new.get(name, ())) == 1 and before[old[0]] in (-1, now[new[name][0]])}


def earlier_sides(previous: Split | None, settings: dict, now: Mapping[str, int] | None = None) -> tuple[dict[str, str], str]:
    """The side of each image in `previous` (an earlier split.json) as its rule decided it, when it
    was made with the same `settings` (a random split's: randomSeed, ratioTrainTest, imagesSplitBy,
    as Split.settings records them); else none, and why it cannot be kept (""
    without a previous split). Images the leakage check moved count as test images, their side before
    the check: stage 1 checks them again, so that another leakageCheck or dedup_threshold takes effect.
    `now`: the images there are now, with their sizes; those moved to another class folder
    (moved_images, against the sizes `previous` recorded) keep the side they had (a relabelled test
    image would otherwise be new, and go to train as likely as not)."""
    if previous is None:
        return {}, ""
    if previous.method not in ("random", "subdir"):
        return {}, f"the earlier split was made another way ({previous.method})"
    if not previous.settings and not _made_with(previous, settings):
        return {}, ("the earlier split.json, of an earlier version, does not record its settings, and these do not "
                    "split its images as it does")
    made = previous.settings or settings  # (inferred by _made_with for an earlier version's split.json)
    changed = [f"{k} {made.get(k)!r} -> {v!r}" for k, v in settings.items() if made.get(k) != v]
    if changed:
        return {}, ", ".join(changed)
    sides = {**previous.sides(), **{p: "test" for p in previous.moved}}
    # (A split.json of an earlier version has no sizes: its moved images are matched by name alone.)
    moves = moved_images(previous.sizes or {p: -1 for p in sides}, now or {})
    return {**sides, **{path: sides[was] for path, was in moves.items() if was in sides}}, ""


def _made_with(previous: Split, settings: dict) -> bool:
    """Whether a random split.json that does not record its settings (written before 2026-12-01) is what
    these settings make of its own images: then it was made with them, and its sides can be kept."""
    if previous.method != "random" or settings.get("imagesSplitBy") != "filename":
        return False
    per_class = {c: sorted(p for p, y in previous.train + previous.test if y == i) for i, c in enumerate(previous.classes)}
    again = _split_random(list(previous.classes), per_class, [], settings["ratioTrainTest"], settings["randomSeed"],
                          "filename", None, {})
    return again.sides() == previous.sides()


def split_change_note(previous: Split | None, split: Split, resplit: bool = False) -> str:
    """What stage 1 did with an earlier split.json, given the final `split` (after the leakage check):
    kept its sides (and where the new images went), or split anew and why; "" for a first split or a
    split made in advance (folders, test list)."""
    if previous is None:
        return ""
    now, before = split.sides(), previous.sides()
    # Sides are kept by path, and by file name for an image moved to another folder (earlier_sides);
    # a label fix (annotations_fixes.tsv) or such a move changes the class, not the side.
    moves = moved_images(previous.sizes or {p: -1 for p in before}, split.sizes) if split.method == "random" else {}
    was = {p: previous.classes[y] for p, y in previous.train + previous.test if y < len(previous.classes)}
    was.update({path: was[old] for path, old in moves.items() if old in was})
    relabelled = [p for p, y in split.train + split.test if p in was and was[p] != split.classes[y]]
    tested = len(set(relabelled) & {p for p, _ in split.test})
    how = "annotations_fixes.tsv, or moved to another class folder" if moves else "annotations_fixes.tsv"
    since = (f"; {len(relabelled)} of them relabelled since ({how})" if relabelled else "") + (
        f", {tested} of those test images: test results are not comparable with those of earlier runs (their "
        "test labels differ)" if tested else "")
    if now == before:
        return f"the same split as the earlier split.json ({len(now)} images{since})"
    if split.method not in ("random", "subdir"):
        if previous.method.split()[0] != split.method.split()[0]:  # (folders: the user's own to change)
            return (f"split another way than the earlier split.json ({previous.method} -> {split.method}): test "
                    "results are not comparable with those of runs on the earlier split")
        return ""
    _, why = earlier_sides(previous, split.settings)
    if resplit or why:
        # Runs on the earlier split only: a seeded split with settings set back (ratio 0.8 -> 0.75) is
        # again the one that earlier runs with these settings had, on the same images.
        return (f"split anew ({'--resplit' if resplit else why}): earlier test images may be in train now, so "
                "test results are not comparable with those of runs on the earlier split")
    before = {**before, **{path: before[old] for path, old in moves.items()}}  # a moved image is no new one
    gone = sum(1 for p in previous.sides() if p not in now and p not in moves.values())
    new = [side for p, side in now.items() if p not in before]
    changed = sum(1 for p, side in now.items() if p in before and before[p] != side)
    parts = [f"kept the side of {len(now) - len(new) - changed} images of the earlier split.json (test images stay "
             f"test images, so results stay comparable; --resplit to split anew){since}"]
    if new:
        parts.append(f"{len(new)} new: {new.count('train')} to train, {new.count('test')} to test")
    if gone:
        parts.append(f"{gone} of its images gone (deleted, moved, renamed or left out now)")
    if changed:
        parts.append(f"{changed} changed sides (near duplicates the leakage check judges otherwise now, or a class "
                     "whose training images are all gone)")
    return "; ".join(parts)


def _group_of(rel_path: str) -> str:
    """For imagesSplitBy='subdir': `class/sub/.../file` belongs to group `class/sub`; an image lying
    directly in the class folder is a group of its own."""
    parts = rel_path.split("/")
    return "/".join(parts[:2]) if len(parts) > 2 else rel_path


def _read_dedicated(path: Path, classes: list[str]) -> set[str]:
    test = set()
    first = True
    # utf-8-sig: a list saved by Notepad or Excel starts with a byte-order mark.
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:  # saved as "ANSI" (Excel's tab-delimited text): said as for annotations_fixes.tsv
        raise DatasetError(f"{path}, line {undecodable_line(e)}: not UTF-8 text (byte {e.object[e.start]:#x}); save the file as "
                           "UTF-8") from None
    with io.StringIO(text, newline=None) as f:  # lines end where open() ends them
        for n, line in enumerate(f, 1):
            line = line.strip().replace("\\", "/")
            if not line or line.startswith("#"):
                continue
            fields = line.split("\t")
            entry = fields[0]
            if len(fields) > 1 and entry in classes and fields[1].strip() and "/" not in fields[1]:
                # The tutorial's own format: class<TAB>filename (its 1_prepareData.py joined a line's
                # columns with "/"). Without this, its first line was skipped as a header and the next
                # one refused.
                entry = f"{entry}/{fields[1].strip()}"
            # A first line such as "image<TAB>label" (a list exported from a spreadsheet or another
            # tool) is a header: neither a folder nor a file extension, so no image's name. So is
            # "class/filename", as the README names the column. ("dotted0.jpg", a slip, is an error.)
            if first and (("/" not in entry and "." not in entry) or entry.lower() == "class/filename"):
                first = False
                continue
            first = False
            if entry.split("/")[0] not in classes or "/" not in entry:
                raise DatasetError(
                    f"{path}, line {n}: {entry!r} is not 'class/filename' with a class among {', '.join(classes)}"
                )
            test.add(entry)
    return test


def find_split_folders(images_dir: Path) -> tuple[Path, Path, list[Path]] | None:
    """(train folder, test folder, other split-like folders left unused) when the data set comes split
    in advance, else None. Names are matched in any case, so Kaggle's `Training/` and `Testing/` are
    not taken for two classes."""
    if not images_dir.is_dir():
        return None
    subdirs = {p.name.lower(): p for p in sorted(images_dir.iterdir()) if p.is_dir()}
    train = next((subdirs[n] for n in TRAIN_FOLDER_NAMES if n in subdirs), None)
    tests = [subdirs[n] for n in TEST_FOLDER_NAMES if n in subdirs]
    if train is None or not tests:
        return None
    return train, tests[0], tests[1:]


def other_datasets_hint(images_dir: Path) -> str:
    """The data sets beside a missing one, the likely one first: datasetName=Photos for photos/."""
    try:
        others = sorted(d.name for d in images_dir.parent.iterdir() if d.is_dir() and not d.name.startswith("."))
    except OSError:  # no images/ folder at all: a new DATA_DIR
        return ""
    if not others:
        return ""
    near = [d for d in others if d.lower() == images_dir.name.lower()] or difflib.get_close_matches(
        images_dir.name, others, n=1, cutoff=0.6)
    if near:
        return f"; did you mean datasetName = {near[0]!r}?"
    shown = ", ".join(others[:10]) + (", ..." if len(others) > 10 else "")
    return f"; data sets in {images_dir.parent}: {shown}"


def make_split(
    images_dir: str | Path,
    ratio: float = 0.75,
    seed: int = 0,
    split_by: str = "filename",
    check_decode: bool | DecodeCheck = True,
    progress: bool = False,
    previous: Split | None = None,
    decoded_before: Collection[str] = (),
) -> Split:
    """Decide the train/test split of a data set folder (see the module docstring for the rules).
    `previous`: the split.json of an earlier run, whose sides a random or subdir split keeps (if it
    was made with the same seed, ratio and rule: `earlier_sides`). `decoded_before`: images (paths
    relative to `images_dir`) that an earlier run decoded and that have not changed since
    (dedup.HashCache.unchanged): not decoded again to check them. `check_decode`: False leaves files
    unchecked, a function (paths, progress) -> problems checks them in place of check_images (stage 1
    hashes each image as it decodes it, rather than decoding it twice)."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise DatasetError(
            f"{images_dir} does not exist: put one sub-folder of images per class there, "
            f"or run scripts/0_downloadData.py{other_datasets_hint(images_dir)}"
        )
    if split_by not in ("filename", "subdir"):
        raise ValueError(f"split_by {split_by!r}: allowed values are 'filename', 'subdir'")
    folders = find_split_folders(images_dir)
    if folders is not None:
        split = _split_from_folders(images_dir, *folders, check_decode, progress, decoded_before)
    else:
        classes = list_class_dirs(images_dir)
        _check_classes(classes, images_dir)
        excluded = loose_images(images_dir, images_dir)
        per_class = _collect(images_dir, classes, excluded, images_dir, check_decode, progress,
                             decoded_before=decoded_before)
        dedicated = images_dir / DEDICATED_TEST_FILE
        if dedicated.is_file():
            split = _split_dedicated(dedicated, classes, per_class, excluded)
        else:
            sizes = file_sizes(images_dir, (p for c in classes for p in per_class[c]))
            split = _split_random(classes, per_class, excluded, ratio, seed, split_by, previous, sizes)
        _check_trained(split, images_dir)
    check_disjoint(split)
    # What moved_images compares a later run's files with.
    split.sizes = file_sizes(images_dir, split.sides())
    return split


def _split_from_folders(
    images_dir: Path, train_dir: Path, test_dir: Path, unused: list[Path], check_decode: bool | DecodeCheck,
    progress: bool,
    decoded_before: Collection[str] = (),
) -> Split:
    """The split the user made in advance: train/ and test/ folders with class folders in each."""
    excluded: list[tuple[str, str]] = []
    train_name, test_name = train_dir.name, test_dir.name
    classes = list_class_dirs(train_dir)
    test_classes = list_class_dirs(test_dir)
    if not test_classes:
        # Kaggle's test/ often holds the competition's unlabelled images, straight in the folder.
        # Or train/ and test/ are two classes of the user's (vehicles: bus, train, ...).
        others = [d for d in list_class_dirs(images_dir)
                  if d not in (train_name, test_name, *(u.name for u in unused))]
        raise DatasetError(
            f"{test_dir}: no class folders, so its images have no labels to measure accuracy with: "
            f"sort them into class folders as in {train_name}/, or make {train_name}/ the data set "
            f"(its class folders straight in the data set folder, {test_name}/ moved out or renamed "
            f"_{test_name}/) to split it at random"
            + (f". (Folders named {train_name}/ and {test_name}/ are read as a split made in advance; if "
               f"they are classes of yours, beside {first_few(others)}, rename them, e.g. {train_name}/ to "
               f"{train_name}s/)" if others else "")
        )
    _check_classes(classes, train_dir)
    _check_folder_names(test_classes, test_dir)
    if unknown := [c for c in test_classes if c not in classes]:
        raise DatasetError(
            f"{images_dir}: {test_name}/ has classes that {train_name}/ has not: {', '.join(unknown)} "
            f"(a model cannot learn them from no training image; {train_name}/ has {', '.join(classes) or 'none'})"
        )
    # Beside train/ and test/ nothing is read: photos dropped there (or a second train folder) are named.
    excluded += loose_images(images_dir, images_dir) + loose_images(train_dir, images_dir) + loose_images(test_dir, images_dir)
    unused = [*unused, *(d for d in sorted(images_dir.iterdir()) if d.is_dir() and d not in (train_dir, test_dir, *unused)
                         and not d.name.startswith(NOT_CLASS_PREFIXES))]
    tr = _collect(train_dir, classes, excluded, images_dir, check_decode, progress, decoded_before=decoded_before)
    # A rare class may have no test image in a split made in advance: noted by stage 1, as for a random split.
    te = _collect(test_dir, classes, excluded, images_dir, check_decode, progress, allow_empty=True,
                  decoded_before=decoded_before)
    if not any(te.values()):
        left_out = [(p, why) for p, why in excluded if p.startswith(f"{test_name}/")]
        raise DatasetError(f"{shown(str(test_dir))}: no usable test image in its class folders" + (
            f"; {len(left_out)} left out, e.g. {left_out[0][0]}: {left_out[0][1]}" if left_out else ""))
    split = Split(
        classes,
        [(p, i) for i, c in enumerate(classes) for p in tr[c]],
        [(p, i) for i, c in enumerate(classes) for p in te[c]],
        excluded,
        method=f"folders {train_name}/ {test_name}/" + "".join(f" ({u.name}/ not used)" for u in unused),
    )
    _check_trained(split, train_dir)
    return split


def _split_dedicated(
    dedicated: Path, classes: list[str], per_class: dict[str, list[str]], excluded: list[tuple[str, str]]
) -> Split:
    """The test images are those listed in the data set's dedicated test file; the rest train."""
    test_set = _read_dedicated(dedicated, classes)
    known = {p for paths in per_class.values() for p in paths}
    missing = sorted(test_set - known - {p for p, _ in excluded})
    if missing:
        raise DatasetError(f"{dedicated}: listed images not found in the data set: {', '.join(missing[:5])}")
    train = [(p, i) for i, c in enumerate(classes) for p in per_class[c] if p not in test_set]
    test = [(p, i) for i, c in enumerate(classes) for p in per_class[c] if p in test_set]
    return Split(classes, train, test, excluded, DEDICATED_TEST_FILE, {})


def _split_random(
    classes: list[str], per_class: dict[str, list[str]], excluded: list[tuple[str, str]],
    ratio: float, seed: int, split_by: str, previous: Split | None, sizes: Mapping[str, int],
) -> Split:
    """A seeded random split per class, of images or (split_by "subdir") of their sub-folders,
    keeping the sides of an earlier split made with the same settings."""
    settings = {"randomSeed": seed, "ratioTrainTest": ratio, "imagesSplitBy": split_by}
    # (In a subdir split a sub-folder is the unit: an image moved to another class folder joins its side there.)
    earlier, _ = earlier_sides(previous, settings, sizes if split_by != "subdir" else None)
    train: list[tuple[str, int]] = []
    test: list[tuple[str, int]] = []
    for i, c in enumerate(classes):
        # One generator per class, seeded by class name: adding a class leaves the others' split as is.
        rng = random.Random(f"{seed}:{c}")
        if split_by == "subdir":
            groups: dict[str, list[str]] = defaultdict(list)
            for p in per_class[c]:
                groups[_group_of(p)].append(p)
            # A sub-folder with a test image before is a test folder (stage 1's leakage check
            # may have moved single images of it to train: those stay there).
            group_side = {g: ("test" if any(earlier.get(p) == "test" for p in ps) else "train")
                          for g, ps in groups.items() if any(p in earlier for p in ps)}
            tr_groups, te_groups = _split_keeping(sorted(groups), ratio, rng, group_side)
            # Every image of a training folder: one with a test image before is a test folder that
            # _split_keeping moved to train, since the class's earlier training folders are all gone.
            tr_paths = [p for g in tr_groups for p in groups[g]]
            te_paths = [p for g in te_groups for p in groups[g] if earlier.get(p, "test") == "test"]
            tr_paths += [p for g in te_groups for p in groups[g] if earlier.get(p) == "train"]
        else:
            tr_paths, te_paths = _split_keeping(per_class[c], ratio, rng, earlier)
        # Each image on exactly one side: one lost here would vanish from the split with no word.
        assert sorted(tr_paths + te_paths) == sorted(per_class[c]), f"split of {c!r} lost or doubled images"
        train += [(p, i) for p in sorted(tr_paths)]
        test += [(p, i) for p in sorted(te_paths)]
    return Split(classes, train, test, excluded, "subdir" if split_by == "subdir" else "random", settings)


def _check_trained(split: Split, where: Path) -> None:
    """Every class has a training image: a class the model never saw can never be predicted, so its
    test images would only count as errors. (A class with no test image is merely noted, see
    balance_notes: the model still learns it, only its accuracy cannot be measured.)"""
    untrained = [c for c, n in split.counts().items() if not n["train"]]
    if untrained:
        it = "it" if len(untrained) == 1 else "them"
        why = (f"{DEDICATED_TEST_FILE} lists every image of {it}: leave at least one out of that file"
               if split.method == DEDICATED_TEST_FILE else f"add images to {it}")
        raise DatasetError(f"{where}: no training image: {', '.join(map(repr, untrained))}; {why}")


IMBALANCE_RATIO = 4.0  # largest / smallest training class from which stage 1 points to the balancing options
FEW_TRAINING_IMAGES = 5  # classes with fewer training images than this are named by stage 1


BALANCING_SWITCHES = {"svm": ("svm_boBalanceClasses",), "dnn": ("rf_boBalanceTrainingSet",),
                      "svmDnnRefined": ("rf_boBalanceTrainingSet", "svm_boBalanceClasses")}
_SWITCH_ROLE = {"svm_boBalanceClasses": "SVM", "rf_boBalanceTrainingSet": "refinement"}


def balancing_off(classifier: str, switches_on: Mapping[str, bool]) -> list[str]:
    """The class-balancing parameters that `classifier` uses and `switches_on` has off."""
    return [name for name in BALANCING_SWITCHES.get(classifier, ()) if not switches_on.get(name)]


def balance_notes(split: Split, suggest: Sequence[str] = ("svm_boBalanceClasses", "rf_boBalanceTrainingSet")) -> list[str]:
    """Notes on class sizes that change how to train and read the results: a training set whose
    largest class has IMBALANCE_RATIO times the images of its smallest (an SVM or network trained
    for overall accuracy can then give up the small class; `suggest`: the balancing parameters to
    point to, those the classifier uses that are off (balancing_off); none: no such note), classes
    with too few training images to learn or cross-validate well, and classes with no test image
    (trained on, but their accuracy cannot be measured); and classes whose names print alike
    (alike_class_notes: one class split in two by accident?)."""
    counts = split.counts()
    train = {c: n["train"] for c, n in counts.items()}
    notes = []
    small, large = min(train, key=train.get), max(train, key=train.get)
    if train[small] and train[large] / train[small] >= IMBALANCE_RATIO and suggest:
        switches = " and ".join(f"{name} = True ({_SWITCH_ROLE.get(name, 'balancing')})" for name in suggest)
        notes.append(f"classes of unequal size: {large!r} has {train[large]} training images, {small!r} "
                     f"{train[small]} ({train[large] / train[small]:.0f}x); the overall accuracy then "
                     f"favours the large classes: read the class-averaged accuracy, and consider {switches}")
    few = [f"{c} ({n})" for c, n in train.items() if n < FEW_TRAINING_IMAGES]
    if few:
        notes.append(f"fewer than {FEW_TRAINING_IMAGES} training images: {', '.join(few)}; "
                     "too few photos to learn a class from well: add more where you can")
    notes += alike_class_notes(split.classes)
    untested = [c for c, n in counts.items() if not n["test"]]
    if untested:
        it = "it is" if len(untested) == 1 else "they are"
        notes.append(f"no test image: {', '.join(untested)}; trained on but never tested, so the "
                     f"results cannot say how well {it} recognised: {test_image_hint(split)}")
    return notes


def subdir_notes(split: Split, ratio: float) -> list[str]:
    """Notes on a split by sub-folder (imagesSplitBy = "subdir"): classes whose sub-folders differ so
    much in size that their test images are under half or over twice their share (a class of an 18-photo
    and a 2-photo session had 18 of 20 in test, and stage 1 only blamed its few training images), and
    a data set with no sub-folder at all, where "subdir" is a random split of single images."""
    if split.method != "subdir":
        return []
    groups: dict[int, set[str]] = defaultdict(set)
    for path, y in split.train + split.test:
        groups[y].add(_group_of(path))
    if all(_group_of(path) == path for path, _ in split.train + split.test):  # every image a group of its own
        return ["imagesSplitBy = 'subdir', but no class folder has sub-folders: each image was split on its own, "
                "as by a random split"]
    notes = []
    counts = split.counts()
    for y, c in enumerate(split.classes):
        n, test = counts[c]["train"] + counts[c]["test"], counts[c]["test"]
        expected = n * (1 - ratio)
        sub = len(groups[y])
        if sub >= 2 and expected >= 2 and not expected / 2 <= test <= 2 * expected:  # off by half or double
            notes.append(f"{c}: {test} of its {n} images are in test (ratioTrainTest = {ratio:g} asks for about "
                         f"{round(expected)}): 'subdir' keeps each of its {sub} sub-folders whole, and they differ "
                         "in size")
    return notes


def dedicated_file_hint(images_dir: str | Path) -> str | None:
    """A note when the data set folder holds a file named almost like dedicatedTestImages.tsv (another
    case, extension or a letter off): stage 1 reads that name only, and would split at random."""
    images_dir = Path(images_dir)
    if (images_dir / DEDICATED_TEST_FILE).is_file() or not images_dir.is_dir():
        return None
    stem = Path(DEDICATED_TEST_FILE).stem.lower()
    for f in sorted(images_dir.iterdir()):
        if f.suffix.lower() not in ("", ".tsv", ".txt", ".csv"):  # dedicatedTestImages.tsv.bak: a backup, kept on purpose
            continue
        if f.is_file() and difflib.SequenceMatcher(None, f.stem.lower(), stem).ratio() > 0.85:
            return (f"{f.name} is not read: the list of test images must be named {DEDICATED_TEST_FILE} exactly "
                    "(so this split is not made from it)")
    return None


def unused_rule_notes(split: Split, images_dir: str | Path, split_by: str) -> list[str]:
    """Notes on the split rules that `split` outranked, which the user set and would otherwise
    believe applied: folders made in advance outrank a dedicatedTestImages.tsv beside them, and
    either outranks imagesSplitBy = 'subdir' (module docstring: the order of the rules)."""
    notes = []
    folders = split.method.startswith("folders ")
    if folders and (Path(images_dir) / DEDICATED_TEST_FILE).is_file():
        test_dir = split.method.split()[2]
        notes.append(f"{DEDICATED_TEST_FILE} is not read: the folders {' '.join(split.method.split()[1:3])} set the "
                     f"split; to test on the images it lists, move them into {test_dir}<class>/")
    if split_by == "subdir" and (folders or split.method == DEDICATED_TEST_FILE):
        given = f"the folders {' '.join(split.method.split()[1:3])}" if folders else DEDICATED_TEST_FILE
        notes.append(f"imagesSplitBy = 'subdir' does not apply: {given} set the test set")
    return notes


def test_image_hint(split: Split) -> str:
    """How a class gets test images under the rule `split` was made by (adding photos to its class
    folder only helps a random split)."""
    if split.method.startswith("folders "):
        test_dir = split.method.split()[2]  # "folders train/ test/ ...": the test folder's name
        return f"put some of its photos in {test_dir}<class>/ (the test side of a split made in advance)"
    if split.method == DEDICATED_TEST_FILE:
        return f"list some of its images in {DEDICATED_TEST_FILE}"
    if split.method == "subdir":
        return ("imagesSplitBy = 'subdir' keeps each sub-folder of a class on one side, and a class of one "
                "sub-folder has it in train: add photos in a second sub-folder (or directly in the class folder)")
    return "add images (stage 1 gives new images their share of test)"


def small_images_note(split: Split, images_dir: str | Path, resolution: int, sample: int = 200) -> str:
    """A note when the training images are much smaller than the network's input (median shorter side
    at most half of `resolution`, from the headers of a seeded sample): each is enlarged, which costs
    featurizing time and adds no detail, and a lower resolution may score as well. On 20,000 images
    of 32-96 px, cross-validation on the training set gave 97.25% at 128 px and 96.95% at 320 px,
    which featurized 5x slower. "" otherwise."""
    from imgclass.images import shorter_side

    paths = [p for p, _ in split.train]
    picked = random.Random(0).sample(paths, min(sample, len(paths)))
    sides = sorted(s for s in (shorter_side(Path(images_dir) / p) for p in picked) if s)
    if not sides or sides[len(sides) // 2] * 2 > resolution:
        return ""
    median = sides[len(sides) // 2]
    tries = " ".join(str(r) for r in sorted({r for r in (64, 128, 224) if r < resolution} | {resolution}))
    return (f"the training images are small for rf_inputResolution = {resolution} (median shorter side {median} px): "
            f"each is enlarged {resolution / median:.0f}x, which costs time and adds no detail; a lower resolution may "
            f"score as well, faster: compare them with scripts/selectFeaturizer.py --resolutions {tries}")


# Characters that show as nothing and join or separate nothing: pasted with a name (a byte-order mark
# at the start of a line, a zero-width space from a web page) they make a class that prints as another.
# Not the zero-width (non-)joiners, which Persian, Urdu, Indic scripts and emoji (👩‍🔬) need.
INVISIBLE_CHARS = "\u200b\ufeff\u2060\u180e"


def visible(text: str) -> str:
    """`text` without INVISIBLE_CHARS."""
    return "".join(c for c in text if c not in INVISIBLE_CHARS)


def alike_class_notes(classes: Sequence[str]) -> list[str]:
    """Notes on class folders that print alike but are two classes: "Stripes" and "stripes", "striped"
    and "striped " (a space no table shows), an accent written composed in one name and decomposed
    (as macOS writes it) in the other, or an invisible character (a byte-order mark or a zero-width
    space pasted with the name)."""
    alike: dict[str, list[str]] = defaultdict(list)
    for c in classes:
        alike[visible(unicodedata.normalize("NFC", c)).strip().casefold()].append(c)
    notes = []
    for group in (g for g in alike.values() if len(g) > 1):
        hows = [how for how, same in (
            ("spaces at the start or end", lambda c: visible(unicodedata.normalize("NFC", c)).casefold()),
            ("letter case", lambda c: visible(unicodedata.normalize("NFC", c)).strip()),
            ("Unicode form (NFC/NFD)", lambda c: visible(c).strip().casefold()),
            ("invisible characters (byte-order mark, zero-width space ...)",
             lambda c: unicodedata.normalize("NFC", c).strip().casefold())) if len({same(c) for c in group}) > 1]
        notes.append(f"classes {', '.join(map(repr, group))} differ only in {' and '.join(hows)}: one class split in "
                     "two? merge the folders if so")
    return notes


def folder_class(path: str, classes: Sequence[str]) -> str:
    """The class folder an image of a split lies in: the first component of its path, or the second
    in a data set split in advance (train/dotted/x.jpg)."""
    parts = path.split("/")
    return parts[0] if parts[0] in classes or len(parts) < 3 else parts[1]


def confirmed_labels(split: Split, fixes: Mapping[str, str]) -> set[str]:
    """The images of `split` whose line in the fixes file gives them their own folder's class: a
    person checked the label and found it right."""
    return {p for p, y in split.train + split.test
            if fixes.get(p) == split.classes[y] == folder_class(p, split.classes)}


def fix_notes(split: Split, images_dir: str | Path) -> list[str]:
    """What the data set's annotations_fixes.tsv did (images relabelled, left out), and notes on its
    lines that disagree with one another or name no image of `split` (apply_fixes passes over those:
    an image deleted since is no error, but a typo would go unseen)."""
    known = [p for p, _ in split.train] + [p for p, _ in split.test] + [p for p, _ in split.excluded]
    # An image dedupImages.py --remove set aside is not missing: run on the data set, it went to
    # _duplicates/ under the same path; run on a class folder (cat/, train/cat/), to its _duplicates/.
    images_dir = Path(images_dir)

    def set_aside(p: str) -> bool:
        parts = p.split("/")
        return any(images_dir.joinpath(*parts[:i], DUPLICATES_FOLDER, *parts[i:]).is_file()
                   for i in range(len(parts)))

    repeated: list[str] = []
    fixes = {p: fix for p, fix in read_fixes(images_dir, repeated).items() if not set_aside(p)}
    notes = [f"{FIXES_FILE}: {note}" for note in repeated]
    # Say what the fixes did, so the user sees an edit of the file take effect (or not).
    moves: dict[tuple[str, str], int] = {}
    for path, label in split.train + split.test:
        was, now = folder_class(path, split.classes), split.classes[label]
        if fixes.get(path) == now and was != now:
            moves[(was, now)] = moves.get((was, now), 0) + 1
    confirmed = len(confirmed_labels(split, fixes))
    left_out = sum(why == f"marked {EXCLUDE} in {FIXES_FILE}" for _, why in split.excluded)
    if moves or left_out or confirmed:
        how = ", ".join(f"{a} -> {b} {n}" for (a, b), n in sorted(moves.items(), key=lambda m: (-m[1], m[0])))
        notes.append(f"{FIXES_FILE} applied: {sum(moves.values())} image(s) relabelled" + (f" ({how})" if how else "")
                     + f", {left_out} left out" + (f", {confirmed} confirmed as filed" if confirmed else ""))
    return notes + [f"{FIXES_FILE}: {note}" for note in unmatched_fixes(fixes, known)]


def since_split_notes(split: Split, images_dir: str | Path, split_path: str | Path) -> list[str]:
    """Notes for the stages after stage 1 on what changed in the data set folder since it wrote
    `split_path`: image files it does not list (added since; they are in no result until stage 1
    runs again), images it lists and are gone, and a label fixes file edited after it (its fixes are
    applied by stage 1)."""
    from imgclass.provenance import unrecorded_note

    images_dir, split_path = Path(images_dir), Path(split_path)
    if not images_dir.is_dir() or not split_path.is_file():
        return []
    notes = []
    kept = "; it keeps the split's sides where the parameters' randomSeed, ratioTrainTest and imagesSplitBy make them"
    if split.method == "random" and (note := unrecorded_note(split.settings, split_path.name, "scripts/1_prepareData.py",
                                                             kept)):
        notes.append(note)
    listed = set(split.sides()) | {p for p, _ in split.excluded}
    # Only the class folders stage 1 reads (of train/ and test/, in a split made in advance: not val/);
    # names no output can hold (name_problem) it leaves out and names itself: not new.
    folders = find_split_folders(images_dir)
    roots = [images_dir] if folders is None else [folders[0], folders[1]]
    folders_now: dict[str, list[Path]] = defaultdict(list)  # class -> its image files (of train/ and test/ together)
    for root in roots:
        for c in list_class_dirs(root):
            folders_now[c] += walk_image_files(root / c, NOT_CLASS_PREFIXES)
    files = [f for found in folders_now.values() for f in found]
    new = [rel for f in files if (rel := f.relative_to(images_dir).as_posix()) not in listed and not name_problem(rel)]
    if new:
        keeps = " (earlier images keep their sides)" if split.method in ("random", "subdir") and split.settings else ""
        # A new class is the change a user most needs named: the model cannot predict it at all yet.
        added = sorted(c for c, found in folders_now.items() if found and c not in split.classes)
        classes = f"; among them new class folder(s) {first_few(added)}, which the model cannot predict yet" if added else ""
        notes.append(f"{len(new)} image file(s) in {shown(str(images_dir))} are not in {split_path.name} (added since "
                     f"stage 1: {first_few(new)}{classes}): they are in no result until scripts/1_prepareData.py runs "
                     f"again{keeps}, then the stages after it")
    # Stage 3 refuses such a split (load_split with images_dir); stage 5 scores the features stage 3
    # made of them, which still count them, and its browser would show a broken picture without a word.
    if gone := gone_images(split, images_dir):
        vanished = [c for c in split.classes if not folders_now.get(c)]
        classes = f"; class folder(s) {first_few(vanished)} gone or empty" if vanished else ""
        notes.append(f"{len(gone)} image(s) that {split_path.name} lists are gone from {shown(str(images_dir))} (moved "
                     f"or deleted since stage 1: {first_few([repr(g) for g in gone])}{classes}): the results still "
                     "count them; rerun scripts/1_prepareData.py, then the stages after it")
    # Fixes the split does not reflect yet (a confirmed label changes nothing there, so it is never one).
    try:
        fixes = read_fixes(images_dir)
    except AnnotationError as e:
        return notes + [f"{e} (scripts/1_prepareData.py will refuse it: correct it first)"]
    labels = {p: split.classes[y] for p, y in split.train + split.test}
    left_out = {p for p, why in split.excluded if why == f"marked {EXCLUDE} in {FIXES_FILE}"}
    pending = sorted({p for p, fix in fixes.items() if p in labels and labels[p] != fix}
                     | {p for p in left_out if fixes.get(p) != EXCLUDE})
    if pending:
        notes.append(f"{FIXES_FILE} changed after stage 1 wrote {split_path.name}: {len(pending)} fix(es) not applied "
                     f"yet ({first_few(pending)}): they apply once scripts/1_prepareData.py runs again, then the "
                     "stages after it")
    return notes


def check_disjoint(split: Split) -> None:
    """Train and test share no image path (a bug in a split rule would otherwise inflate accuracy)."""
    shared = {p for p, _ in split.train} & {p for p, _ in split.test}
    if shared:
        raise DatasetError(f"train and test share {len(shared)} image(s), e.g. {sorted(shared)[0]}")
    for side in ("train", "test"):
        if not split.side(side):
            # The remedy depends on what made the split: ratioTrainTest plays no part in the other two.
            if split.method == DEDICATED_TEST_FILE:
                remedy = (f"list test images in {DEDICATED_TEST_FILE}, or delete it for a random split" if side == "test"
                          else f"{DEDICATED_TEST_FILE} lists every image: leave some out to train on")
            elif split.method.startswith("folders "):
                remedy = f"add images to its folder ({split.method})"
            else:
                remedy = "add images or change ratioTrainTest"
            raise DatasetError(f"the {side} set is empty: {remedy}")


def exact_duplicates_across(split: Split, images_dir: str | Path, progress: bool = True) -> list[tuple[str, str]]:
    """Pairs (train, test) of byte-identical files: the same photo on both sides leaks the label."""
    images_dir = Path(images_dir)
    bar = progress_bar(total=len(split.train) + len(split.test), desc="identical files", unit="img", disable=not progress)

    def digest(rel: str) -> str:
        bar.update()
        return hashlib.sha1((images_dir / rel).read_bytes()).hexdigest()

    with bar:
        train_hashes = {digest(p): p for p, _ in split.train}
        return [(train_hashes[h], p) for p, _ in split.test if (h := digest(p)) in train_hashes]


def skipped_below(folder: str | Path) -> list[tuple[str, int]]:
    """(sub-folder, images) for each folder below `folder` whose name starts with '_' yet holds images
    (counted with those of its sub-folders), sorted: list_folder_images skips them, as stage 1 does
    (`_duplicates/`), and a user who keeps photos in `_new/` is told rather than left wondering.
    Hidden folders are not named: they are hidden on purpose (.thumbnails, .git)."""
    folder = Path(folder)
    counts: dict[str, int] = defaultdict(int)
    for p in walk_image_files(folder):
        parts = p.relative_to(folder).parts[:-1]
        first = next((i for i, part in enumerate(parts) if part.startswith("_")), None)
        if first is not None:
            counts["/".join(parts[:first + 1])] += 1
    return sorted(counts.items())


# Images in formats the pipeline does not read (by extension): JPEG 2000, Photoshop, photographers'
# camera raw files. Skipped like any other file, a class of them was "a class with no usable images",
# with no word of the hundreds of files in it.
UNREAD_IMAGE_EXTENSIONS = (".jp2", ".j2k", ".jpx", ".jpf", ".psd", ".pcx", ".sgi", ".ras", ".ico", ".qoi", ".svg",
                           ".dng", ".cr2", ".cr3", ".nef", ".arw", ".orf", ".rw2", ".raf")


def unread_images(folder: str | Path) -> dict[str, int]:
    """{extension: files} of the images below `folder` whose format the pipeline does not read
    (UNREAD_IMAGE_EXTENSIONS), most first; hidden files and folders starting with '_' or '.' skipped,
    as every stage skips them."""
    counts: dict[str, int] = defaultdict(int)
    for _, files in _walk_once(folder, NOT_CLASS_PREFIXES):
        for name in files:
            if not name.startswith(".") and (ext := os.path.splitext(name)[1].lower()) in UNREAD_IMAGE_EXTENSIONS:
                counts[ext] += 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def unread_images_note(folder: str | Path, what: str = "read") -> str:
    """A note naming the images of `unread_images`, or ''. `what`: what is not done to them."""
    if not (counts := unread_images(folder)):
        return ""
    found = ", ".join(f"{n} {ext}" for ext, n in counts.items())
    return (f"not {what}: {found} file(s) below {shown(str(folder))}, a format the pipeline does not read "
            f"(it reads {', '.join(IMAGE_EXTENSIONS)}): convert them, e.g. to PNG")


def skipped_note(skipped: list[tuple[str, int]]) -> str:
    """A line naming the folders of `skipped_below` (or `skipped_folders`) and their images."""
    return ", ".join(f"{f}/ ({n} image{'' if n == 1 else 's'})" for f, n in skipped)


def list_folder_images(folder: str | Path, left_out: list[tuple[str, str]] | None = None) -> list[str]:
    """Image files below `folder`, relative and sorted; folders starting with '_' or '.' skipped
    (so `_duplicates/` is never scanned again). Linked folders are followed, each real folder once,
    as stage 1 does: a class linked in from elsewhere is checked too, and a link back up the tree
    cannot loop. Names no output file can hold (not UTF-8, a tab or line break) are left out, as
    stage 1 leaves them out, and added to `left_out` as (name as shown, reason)."""
    folder = Path(folder)
    out = []
    for p in walk_image_files(folder, skip_prefixes=("_", ".")):
        rel = p.relative_to(folder).as_posix()
        if bad := name_problem(rel):
            if left_out is not None:
                left_out.append(bad)
        else:
            out.append(rel)
    return sorted(out)


@dataclass
class FolderLabels:
    """The true classes of images scored from a folder laid out as a data set (folder_labels)."""
    labels: list[int]  # per image, the index of its class folder's class; -1: no class of the model
    unknown: dict[str, int] = field(default_factory=dict)  # class folder named after no class: its images
    outside: int = 0  # images directly in the folder, in no class folder

    @property
    def n_labelled(self) -> int:
        return sum(1 for y in self.labels if y >= 0)


def folder_labels(folder: str | Path, paths: Sequence[str], classes: Sequence[str]) -> FolderLabels | None:
    """The true class of each of `paths` (relative to `folder`, as list_folder_images gives them) when
    `folder` is laid out as a data set: its class folders (list_class_dirs, as stage 1 reads them;
    images nested in them belong to them) named after `classes`, the model's. None when no class
    folder is (an unlabelled folder: the folders are batches, dates, cameras). A class folder named
    after no class of `classes` (a class the model never learnt, or a typo) gives no label, and is
    counted in `unknown`, so that the caller can name it: guessing a class from it would be wrong."""
    # Compared in one Unicode form: a folder "rayé" copied from a Mac (decomposed, e + accent) is the
    # class "rayé" of a model trained on Linux (composed); the two look the same, and the folder was
    # called a class the model does not know.
    nfc = functools.partial(unicodedata.normalize, "NFC")
    dirs = set(list_class_dirs(Path(folder)))
    index = {nfc(c): i for i, c in enumerate(classes)}
    if not {nfc(d) for d in dirs} & index.keys():
        return None
    out = FolderLabels([])
    for rel in paths:
        first, _, rest = rel.partition("/")
        if rest and nfc(first) in index:
            out.labels.append(index[nfc(first)])
            continue
        out.labels.append(-1)
        if rest and first in dirs:
            out.unknown[first] = out.unknown.get(first, 0) + 1
        else:
            out.outside += 1
    return out
