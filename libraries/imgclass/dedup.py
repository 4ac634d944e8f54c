"""Find duplicate and near-duplicate images with a perceptual hash, and move the extras aside.

Image search returns the same photo many times: re-sized by a shop, re-compressed by a blog,
under another URL. Left in, such copies make the data set look bigger than it is and, split across
train and test, inflate the measured accuracy. As in the tutorial, every image gets a difference hash
(`imagehash.dhash` with hash_size = 16, i.e. 256 bits) in a first pass; a second pass groups the
images of each hash. Beyond identical hashes, images whose hashes differ in at most `threshold` bits
are near duplicates and are grouped (transitively: if A~B and B~C, A, B and C form one group).

Each group keeps its copy with the most pixels (then the largest file, then the path that sorts
first), not the tutorial's first one: a search returns thumbnails beside the full-size photo, and a
150-pixel thumbnail kept for training is a blurred 320-pixel input.

Nothing is ever deleted: `move_duplicates` moves every image but the kept one of each group to a
`_duplicates/` folder (which the data set loader ignores, as it does every folder starting with '_')
and lists each move in `_duplicates/moved.tsv` as it is made, so a move can be undone by hand.
Groups whose images lie in different class folders (the same photo with two labels) are left in
place unless asked: which label is right is a question for a person, not for the sort order.
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, NamedTuple
from pathlib import Path

import imagehash
import numpy as np
from PIL import ImageOps

from imgclass.annotations import EXCLUDE, read_fixes
from imgclass.data import DUPLICATES_FOLDER, Split, check_disjoint, find_split_folders, list_folder_images
from imgclass.fileio import DamagedFileError, atomic_open, file_stamp, read_json, write_json, write_tsv
from imgclass.images import DECODE_VERSION, ImageDecodeError, header_size, load_rgb
from imgclass.progress import progress_bar

HASH_SIZE = 16  # 16 x 16 = 256-bit hashes, as in the tutorial
DEFAULT_THRESHOLD = 15  # bits of 256; see README "Part 3" for the distances measured on copies
MOVED_FILE = "moved.tsv"
# dhash shrinks the image to 17 x 16 pixels, so decoding a 20-megapixel JPEG at full size would be
# wasted work: libjpeg's DCT scaling to >= 256 px gives the same hash for a fraction of the time.
_DECODE_MIN_SIZE = 256


def image_hash(path: str | Path | bytes, hash_size: int = HASH_SIZE) -> imagehash.ImageHash:
    """dhash of one image (decoded like every other stage: EXIF-rotated RGB)."""
    return imagehash.dhash(load_rgb(path, min_size=_DECODE_MIN_SIZE), hash_size=hash_size)


class MirroredHash(NamedTuple):
    """The dhash of an image and of its mirror image: a copy flipped left-right (web sites and
    data sets do it) lies far from the original by dhash, but close to the original's mirror."""

    plain: imagehash.ImageHash
    mirror: imagehash.ImageHash


def mirrored_hash(path: str | Path | bytes, hash_size: int = HASH_SIZE) -> MirroredHash:
    """image_hash of an image and of its mirror image, from one decode."""
    img = load_rgb(path, min_size=_DECODE_MIN_SIZE)
    return MirroredHash(imagehash.dhash(img, hash_size), imagehash.dhash(ImageOps.mirror(img), hash_size))


def hash_files(
    paths: Sequence[str | Path], hash_size: int = HASH_SIZE, workers: int = 2, progress: bool = True,
    with_mirror: bool = False,
) -> tuple[list[Any], list[str | None]]:
    """Hash every file; returns (hashes, problems) aligned with `paths` (hash None where it failed).
    The hashes are ImageHash values, or with `with_mirror` MirroredHash pairs (one decode for both)."""

    def one(p: str | Path) -> tuple[Any, str | None]:
        try:
            return (mirrored_hash if with_mirror else image_hash)(p, hash_size), None
        except ImageDecodeError as e:
            return None, e.reason  # the reason alone: the caller names the file

    # Threads, not processes: PIL releases the GIL while decoding, and hashes are tiny to return.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        out = list(progress_bar(pool.map(one, paths), total=len(paths), desc="hash images", unit="img", disable=not progress))
    return [h for h, _ in out], [e for _, e in out]


HASH_CACHE_FILE = "image_hashes.json"  # in proc/<dataset>/: stage 1's dhashes, reused by its next run


class HashCache:
    """The mirrored dhashes of a data set's images from stage 1's last run, each with the file's
    (size, mtime_ns, inode) when it was read (fileio.file_stamp), kept in proc/<dataset>/image_hashes.json. A rerun of stage 1
    (every time a photo is added) otherwise decoded every image twice more, to check that it decodes
    and to hash it: 3000 camera photos took 35 CPU seconds on each run. A file whose size and
    modification time and inode are those recorded is taken as unchanged (as the feature cache does), so its
    hash is reused and it is known to decode. The file is tied to the decoder's version and the hash
    size: a change of either starts it afresh. It is a cache: one that cannot be read is ignored."""

    VERSION = f"{DECODE_VERSION}|dhash{HASH_SIZE}|inode"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.entries: dict[str, tuple[tuple[int, int, int], str, str]] = {}  # rel -> (file_stamp, plain, mirror)
        try:
            d = read_json(self.path)
            if isinstance(d, dict) and d.get("version") == self.VERSION:
                self.entries = {str(k): ((int(v[0]), int(v[1]), int(v[2])), str(v[3]), str(v[4]))
                                for k, v in d["images"].items()}
        except (OSError, DamagedFileError, KeyError, TypeError, ValueError, IndexError, AttributeError):
            self.entries = {}  # missing or damaged: every image is hashed again

    def unchanged(self, images_dir: str | Path) -> dict[str, MirroredHash]:
        """{path relative to `images_dir`: its hashes} for the files recorded whose size, modification
        time and inode are still those recorded."""
        out = {}
        for rel, (stamp, plain, mirror) in self.entries.items():
            try:
                if file_stamp(Path(images_dir) / rel) != stamp:
                    continue
                out[rel] = MirroredHash(imagehash.hex_to_hash(plain), imagehash.hex_to_hash(mirror))
            except (OSError, ValueError):  # gone, or a damaged entry: hashed again
                continue
        return out

    def save(self, hashes: Mapping[str, MirroredHash], stats: Mapping[str, tuple[int, int, int]]) -> Path:
        """Record `hashes` (path relative to the data set folder: hashes), each with the file_stamp its
        file had before it was read (`stats`; a file without one is left out), in place of what was
        recorded (images gone since are dropped); written atomically."""
        images = {rel: [*stats[rel], str(h.plain), str(h.mirror)] for rel, h in sorted(hashes.items()) if rel in stats}
        self.entries = {rel: ((v[0], v[1], v[2]), v[3], v[4]) for rel, v in images.items()}
        return write_json(self.path, {"version": self.VERSION, "images": images})


def path_stats(images_dir: str | Path, rels: Iterable[str]) -> dict[str, tuple[int, int, int]]:
    """{rel: fileio.file_stamp} of the files that can be read (what HashCache.save records)."""
    out = {}
    for rel in rels:
        try:
            out[rel] = file_stamp(Path(images_dir) / rel)
        except OSError:
            continue
    return out


def hash_bits(hashes: Sequence[imagehash.ImageHash]) -> np.ndarray:
    """(N, bits) bool matrix of the hashes."""
    if not hashes:
        return np.zeros((0, 0), bool)
    return np.stack([np.asarray(h.hash, bool).ravel() for h in hashes])


def _as_words(bits: np.ndarray) -> np.ndarray:
    """(N, bits) bool -> (N, words) uint64, zero-padded: 64 bits per XOR and popcount, not 8."""
    packed = np.packbits(bits, axis=1)
    packed = np.pad(packed, ((0, 0), (0, -packed.shape[1] % 8)))
    return np.ascontiguousarray(packed).view(np.uint64)


def _distance_blocks(a: np.ndarray, b: np.ndarray, max_pairs: int):
    """(start, distances) for blocks of rows of `a` (uint64 words) against every row of `b`: a block
    holds at most `max_pairs` pairs (64 MB of temporaries), so memory stays flat however many images."""
    block = max(1, min(len(a), max_pairs // max(1, len(b))))
    for start in range(0, len(a), block):
        chunk = a[start:start + block]
        dist = np.zeros((len(chunk), len(b)), np.int32)
        for w in range(a.shape[1]):  # one 64-bit word at a time: no (block, N, words) temporary
            dist += np.bitwise_count(chunk[:, w, None] ^ b[None, :, w])
        yield start, dist


def pairwise_close(bits: np.ndarray, threshold: int, other: np.ndarray | None = None,
                   max_pairs: int = 1 << 23) -> list[tuple[int, int, int]]:
    """Pairs (i, j, distance) with Hamming distance <= threshold.

    Within `bits` (i < j) when `other` is None, else between bits[i] and other[j]. Rows are compared
    block by block, a block's distances to every row of the other side at once.
    """
    if threshold < 0:
        raise ValueError(f"threshold = {threshold}: must be >= 0")
    a = _as_words(bits)
    b = a if other is None else _as_words(other)
    if not len(a) or not len(b):
        return []
    pairs = []
    for start, dist in _distance_blocks(a, b, max_pairs):
        ii, jj = np.nonzero(dist <= threshold)
        for i, j in zip(ii + start, jj):
            if other is not None or i < j:
                pairs.append((int(i), int(j), int(dist[i - start, j])))
    return pairs


def closest_pairs(bits: np.ndarray, threshold: int, mirror: np.ndarray,
                  other: np.ndarray | None = None) -> dict[tuple[int, int], tuple[int, bool]]:
    """{(i, j): (distance, as mirror images)} of the pairs within `threshold` bits as they are or with
    one mirrored (a photo flipped left-right is as much a copy), each at the closer of the two
    distances. Within `bits` (i < j; `mirror`: the same images' mirror hashes) when `other` is None,
    else bits[i] against other[j] (`mirror`: other's mirror hashes)."""
    closest = {(i, j): (d, False) for i, j, d in pairwise_close(bits, threshold, other=other)}
    for i, j, d in pairwise_close(bits, threshold, other=mirror):
        if other is None:
            if i == j:  # an image near its own mirror: symmetric, no pair
                continue
            i, j = min(i, j), max(i, j)
        if (i, j) not in closest or d < closest[i, j][0]:
            closest[i, j] = (d, True)
    return closest


# A threshold separates copies from distinct images only where distinct images lie well beyond it.
# Among the images with no other within the threshold, the median distance to the nearest other is
# 73 bits on the 557 fashionTexture photos and 84 on the demo set, but 22 on sklearn's 8x8 digits
# (large uniform backgrounds and few pixels leave dhash few free bits): there, 412 of 1797 distinct
# digits have another within 15 bits, the lower edge of a continuum rather than a cluster of copies.
LOOKALIKE_FACTOR = 3
_MIN_FREE_IMAGES = 10  # fewer images than this beyond the threshold say nothing about the spread
_SAMPLE = 2000  # rows whose nearest neighbour is measured: enough for a median, cheap for any N


def _nearest(bits: np.ndarray, sample: int = _SAMPLE, seed: int = 0, max_pairs: int = 1 << 23) -> np.ndarray:
    """The distance from each image (a seeded sample of at most `sample`) to its nearest other one."""
    words = _as_words(bits)
    rows = np.arange(len(words))
    if len(rows) > sample:
        rows = np.sort(np.random.default_rng(seed).choice(rows, sample, replace=False))
    nearest = np.empty(len(rows), np.int64)
    for start, dist in _distance_blocks(words[rows], words, max_pairs):
        dist[np.arange(len(dist)), rows[start:start + len(dist)]] = np.iinfo(np.int32).max  # not itself
        nearest[start:start + len(dist)] = dist.min(axis=1)
    return nearest


def typical_distance(bits: np.ndarray, threshold: int, sample: int = _SAMPLE, seed: int = 0,
                     max_pairs: int = 1 << 23) -> float | None:
    """The median distance from an image to its nearest other image, over the images (a seeded
    sample of at most `sample`) with no other within `threshold`: how far apart distinct images of
    this data set typically lie. None when too few images are beyond the threshold to tell."""
    if len(bits) < 2:
        return None
    nearest = _nearest(bits, sample, seed, max_pairs)
    free = nearest[nearest > threshold]
    return float(np.median(free)) if len(free) >= _MIN_FREE_IMAGES else None


def looks_alike(bits: np.ndarray, threshold: int) -> bool:
    """Whether distinct images among `bits` (one class's) come within `threshold` of one another as
    copies would: a quarter of those with no other within it have their nearest under
    LOOKALIKE_FACTOR x the threshold (a continuum reaching down to it, not copies apart from
    distinct photos). False with fewer than _MIN_FREE_IMAGES such images: too few to tell look-alikes
    (a class of smooth gradients, one hash to dhash) from a small class with many copies.

    The data-set-wide measure (typical_distance) misses such a class among classes of photos: two
    classes of stripes and checks among 10 of 2,000 generated images each (other colours, alike in
    grey: lower quartile 29 and 33 bits at the default 15) lost a third of their test images to the
    leakage check while the data set as a whole lay 89 bits apart. The lower quartile in each class
    of the 557 fashionTexture photos: 62-74 bits."""
    if len(bits) < _MIN_FREE_IMAGES:
        return False
    nearest = _nearest(bits)
    free = nearest[nearest > threshold]
    return len(free) >= _MIN_FREE_IMAGES and float(np.percentile(free, 25)) < LOOKALIKE_FACTOR * threshold


def lookalike_note(typical: float | None, threshold: int) -> str | None:
    """Why `threshold` catches look-alikes as well as copies on this data set, or None when it does not."""
    if typical is None or typical >= LOOKALIKE_FACTOR * threshold:
        return None
    return (f"this data set's images look alike to dhash: distinct images typically lie {typical:.0f} bits from "
            f"their nearest neighbour, within {LOOKALIKE_FACTOR}x the threshold of {threshold} bits (photos: 70 or more), "
            f"so pairs within {threshold} bits are as likely look-alikes as copies. To catch only copies, "
            f"lower the threshold (dedup_threshold or --threshold) to about {max(1, int(typical) // LOOKALIKE_FACTOR - 1)}")


def hashes_lookalike_note(hashes: Mapping[str, MirroredHash], threshold: int) -> str | None:
    """lookalike_note for the images of `hashes` (LeakCheck.hashes) as a whole."""
    if len(hashes) < 2:
        return None
    return lookalike_note(typical_distance(hash_bits([h.plain for h in hashes.values()]), threshold), threshold)


def _groups(n: int, pairs: Sequence[tuple[int, int, int]]) -> list[list[int]]:
    """Connected components (of size > 1) of the graph whose edges are `pairs`, each sorted."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, _ in pairs:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    comps: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        comps[find(i)].append(i)
    return sorted((sorted(c) for c in comps.values() if len(c) > 1), key=lambda c: c[0])


@dataclass
class DuplicateReport:
    """What `find_duplicates` found in a folder. Paths are relative to the folder, in sorted order.

    `exact`: groups of images with identical hashes (pass 2 of the tutorial); `groups`: groups of
    near duplicates (distance <= threshold, which includes the exact ones). In every group the first
    path is the one kept (the most pixels; see the module's docstring), the others in sorted order.
    """

    folder: Path
    threshold: int
    paths: list[str]
    hashes: list[str]  # hex dhash per path ("" where decoding failed)
    exact: list[list[str]] = field(default_factory=list)
    groups: list[list[str]] = field(default_factory=list)
    distances: dict[tuple[str, str], int] = field(default_factory=dict)  # (a, b), a sorting first -> bits
    mirrored: set[tuple[str, str]] = field(default_factory=set)  # pairs (as in distances) closest as mirror images
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # (width, height) of every grouped image
    failed: list[tuple[str, str]] = field(default_factory=list)
    typical_distance: float | None = None  # see `typical_distance`; judged by `lookalike_note`
    lookalike_classes: list[str] = field(default_factory=list)  # classes with groups whose images look alike
    # The data set's label fixes (annotations_fixes.tsv): {path: new class or EXCLUDE}. A relabelled
    # image counts in its new class, and an excluded one is never the copy kept while a copy the
    # user left in is moved aside (the photo would vanish from training without a word).
    fixes: dict[str, str] = field(default_factory=dict)

    def bits_between(self, a: str, b: str) -> int | None:
        """Bits between the hashes of two images of a group (of one and the other's mirror image when
        that is closer: `is_mirrored`); None for a member joined through another."""
        return self.distances.get((a, b) if a < b else (b, a))

    def is_mirrored(self, a: str, b: str) -> bool:
        """Whether two images of a group are closest as mirror images of each other."""
        return ((a, b) if a < b else (b, a)) in self.mirrored

    @property
    def to_move(self) -> list[tuple[str, str]]:
        """(duplicate, the image it duplicates) for every image but the kept one of each group."""
        return [(p, g[0]) for g in self.groups for p in g[1:]]

    def moves(self, cross_class: bool = False, alike: bool = False) -> list[tuple[str, str]]:
        """`to_move`, without the groups that span class folders unless `cross_class`, without the
        groups of a class whose images look alike to dhash (`lookalike_classes`) unless `alike`, and
        without the images annotations_fixes.tsv excludes (out of training already; moved, their
        fix would name a missing file, which stage 1 then pointed out at every run)."""
        cross = [] if cross_class else self.cross_class_groups()
        kept = [] if alike else self.lookalike_groups()
        return [(p, g[0]) for g in self.groups if g not in cross and g not in kept for p in g[1:] if not self.excluded(p)]

    def lookalike_groups(self) -> list[list[str]]:
        """Groups within one class of `lookalike_classes`: they need not be copies."""
        alike = set(self.lookalike_classes)
        return [g for g in self.groups if {self.class_of(p) for p in g} <= alike]

    def class_of(self, path: str) -> str:
        """The class of a path: its fixed class when annotations_fixes.tsv gives one, else its class
        folder, the first component, or the second in a data set split in advance
        (train/dotted/x.jpg is class dotted, as stage 1 reads it); "" for an image straight in the
        folder (a folder of unsorted photos: its copies lie in one "class", not each in its own)."""
        if (fixed := self.fixes.get(path)) not in (None, EXCLUDE):
            return fixed
        parts = path.split("/")
        if len(parts) > 2 and parts[0] in self._split_names:
            return parts[1]
        return parts[0] if len(parts) > 1 else ""

    @cached_property
    def _split_names(self) -> set[str]:
        # Once per report: class_of runs for every path of every group, and this lists the folder.
        folders = find_split_folders(self.folder)
        return set() if folders is None else {f.name for f in (folders[0], folders[1], *folders[2])}

    def excluded(self, path: str) -> bool:
        """Whether annotations_fixes.tsv leaves the image out of the data set."""
        return self.fixes.get(path) == EXCLUDE

    def cross_class_groups(self) -> list[list[str]]:
        """Groups whose images lie in different classes (after the label fixes; excluded images do
        not count): the same photo with two labels."""
        return [g for g in self.groups if len({self.class_of(p) for p in g if not self.excluded(p)}) > 1]

    def write_groups(self, path: str | Path) -> Path:
        """The groups as a TSV (group, kept, duplicate, bits, mirrored; bits and mirrored empty for a
        member joined through another one), written atomically."""
        with atomic_open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write("group\tkept\tduplicate\tbits\tmirrored\n")
            for n, group in enumerate(self.groups, 1):
                for other in group[1:]:
                    bits = self.bits_between(group[0], other)
                    mirrored = "" if bits is None else "yes" if self.is_mirrored(group[0], other) else "no"
                    f.write(f"{n}\t{group[0]}\t{other}\t{'' if bits is None else bits}\t{mirrored}\n")
        return Path(path)


def find_duplicates(
    folder: str | Path, threshold: int = DEFAULT_THRESHOLD, hash_size: int = HASH_SIZE,
    workers: int = 2, progress: bool = True, fixes: dict[str, str] | None = None,
) -> DuplicateReport:
    """Hash every image below `folder` and group identical and near-identical ones. `fixes`: the
    label fixes of the data set in `folder` (default: its annotations_fixes.tsv, when there is one)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    bits = hash_size * hash_size
    if not 0 <= threshold < bits // 2:  # two unrelated images differ in about half the bits
        raise ValueError(f"threshold = {threshold}: expected 0 to {bits // 2 - 1} (bits of {bits} that may "
                         f"differ; unrelated images differ in about {bits // 2})")
    left_out: list[tuple[str, str]] = []
    paths = list_folder_images(folder, left_out)
    both, problems = hash_files([folder / p for p in paths], hash_size, workers, progress, with_mirror=True)
    hashes = [h.plain if h is not None else None for h in both]
    report = DuplicateReport(folder, threshold, paths, [str(h) if h is not None else "" for h in hashes],
                             fixes=read_fixes(folder) if fixes is None else fixes)
    report.failed = left_out + [(p, e) for p, e in zip(paths, problems) if e]
    ok = [i for i, h in enumerate(hashes) if h is not None]

    # Pass 2 of the tutorial: walk the images in order and group them by hash.
    first_of: dict[str, int] = {}
    exact: dict[int, list[int]] = defaultdict(list)
    for i in ok:
        key = report.hashes[i]
        if key in first_of:
            exact[first_of[key]].append(i)
        else:
            first_of[key] = i
    exact_groups = [[k, *v] for k, v in sorted(exact.items())]

    # Near duplicates: a few bits apart, as they are or one mirrored (a photo flipped left-right is
    # as much a copy: stage 1's leakage check found such pairs that this tool had missed, 53-129
    # bits apart as they are, 0-3 as mirror images). Groups are connected components.
    bits = hash_bits([hashes[i] for i in ok])
    closest = closest_pairs(bits, threshold, hash_bits([both[k].mirror for k in ok]))
    pairs = [(ok[i], ok[j], d) for (i, j), (d, _) in sorted(closest.items())]
    near_groups = _groups(len(paths), pairs)
    report.distances = {(paths[i], paths[j]): d for i, j, d in pairs}
    report.mirrored = {(paths[ok[i]], paths[ok[j]]) for (i, j), (_, mirrored) in closest.items() if mirrored}
    # Every exact group lies within a near group (0 bits apart), so these are all the grouped images.
    # (0, 0): a file that went away since it was hashed (EXIF rotation does not change the pixel count)
    report.sizes = {paths[i]: header_size(folder / paths[i]) or (0, 0) for g in near_groups for i in g}
    excluded = {p for p, c in report.fixes.items() if c == EXCLUDE}
    report.exact = [_kept_first([paths[i] for i in g], report.sizes, folder, excluded) for g in exact_groups]
    report.groups = [_kept_first([paths[i] for i in g], report.sizes, folder, excluded) for g in near_groups]
    # Only pairs need judging (the notes are about them): no pass over the hashes when there are none.
    if pairs:
        report.typical_distance = typical_distance(bits, threshold)
        # Judged class by class too (looks_alike): a class of stripes in many colours among classes of
        # photos is missed by the data set's measure, and its distinct pictures would be moved aside.
        classes = np.array([report.class_of(paths[i]) for i in ok])
        grouped = sorted({report.class_of(p) for g in report.groups for p in g})
        report.lookalike_classes = [c for c in grouped if looks_alike(bits[classes == c], threshold)]
    return report


def _kept_first(group: list[str], sizes: dict[str, tuple[int, int]], folder: Path,
                excluded: Collection[str] = ()) -> list[str]:
    """The group (in path order) with the image it keeps moved to the front: one not `excluded` by
    the label fixes, then the most pixels, then the largest file (less compressed), then the path
    that sorts first."""

    def file_bytes(p: str) -> int:
        try:
            return (folder / p).stat().st_size
        except OSError:
            return 0

    kept = min(group, key=lambda p: (p in excluded, -sizes[p][0] * sizes[p][1], -file_bytes(p), p))
    return [kept, *(p for p in group if p != kept)]


def move_duplicates(report: DuplicateReport, dest: str | Path | None = None,
                    cross_class: bool = False, alike: bool = False) -> list[tuple[Path, Path]]:
    """Move every image but the kept one of each group to `dest` (default FOLDER/_duplicates/),
    keeping its relative path, and append each move to dest/moved.tsv as it is made. Groups that
    span class folders are left in place unless `cross_class`, groups of a class whose images look
    alike to dhash unless `alike`. Returns (from, to) pairs."""
    dest = Path(dest) if dest is not None else report.folder / DUPLICATES_FOLDER
    moved: list[tuple[Path, Path]] = []
    log = dest / MOVED_FILE
    todo = [(rel, kept) for rel, kept in report.moves(cross_class, alike) if (report.folder / rel).is_file()]
    if not todo:  # (a missing file was moved or deleted since the scan)
        return moved
    dest.mkdir(parents=True, exist_ok=True)
    # One line appended and flushed per move, right after it: an interrupted run (Ctrl-C, a full
    # disk) leaves every file it moved listed, so each move can still be undone by hand.
    unterminated = log.is_file() and not log.read_bytes().endswith(b"\n")  # edited by hand
    with open(log, "a", encoding="utf-8", newline="\n") as f:
        if f.tell() == 0:
            f.write("moved\tduplicate_of\n")
        elif unterminated:
            f.write("\n")
        for rel, kept in todo:
            src = report.folder / rel
            target = dest / rel
            n = 1
            while target.exists():  # never overwrite an earlier move
                target = target.with_name(f"{Path(rel).stem}_{n}{Path(rel).suffix}")
                n += 1
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(src, target)
            moved.append((src, target))
            f.write(f"{target.relative_to(dest).as_posix()}\t{kept}\n")
            f.flush()
    return moved


@dataclass
class Leak:
    """A test image that nearly duplicates a training image (or its mirror image: `mirrored`)."""

    train: str
    test: str
    distance: int
    same_class: bool
    mirrored: bool = False


@dataclass
class LeakCheck:
    """What `check_leaks` found: the (train, test) near-duplicate pairs, closest first, and how far
    apart distinct images of the data set typically lie (`typical_distance`), which says whether the
    threshold tells copies from look-alikes here (`lookalike_note`)."""

    leaks: list[Leak]
    threshold: int
    typical_distance: float | None
    lookalike_classes: list[str] = field(default_factory=list)  # classes whose own images look alike (looks_alike)
    hashes: dict[str, MirroredHash] = field(default_factory=dict, repr=False)  # of every image that decoded, by path

    @property
    def lookalike_note(self) -> str | None:
        return lookalike_note(self.typical_distance, self.threshold)

    def movable(self, split: Split) -> list[Leak]:
        """The pairs the leakage check may move: not of a class whose images look alike to dhash."""
        alike = {split.classes.index(c) for c in self.lookalike_classes}
        labels = dict(split.test)
        return [leak for leak in self.leaks if labels.get(leak.test) not in alike]


def check_leaks(
    split: Split, images_dir: str | Path, threshold: int = DEFAULT_THRESHOLD, workers: int = 2, progress: bool = True,
    known: Mapping[str, MirroredHash] | None = None,
) -> LeakCheck:
    """Near-duplicate (train, test) pairs: the same photo on both sides lets the model score a test
    image by memory, so the test accuracy overstates how it does on new photos. `known`: hashes of
    an earlier check of the same images (LeakCheck.hashes), to check another split of them again."""
    images_dir = Path(images_dir)
    train = [p for p, _ in split.train]
    test = [p for p, _ in split.test]
    known = known or {}
    todo = [p for p in train + test if p not in known]
    fresh, _ = hash_files([images_dir / p for p in todo], workers=workers, progress=progress and bool(todo),
                          with_mirror=True)
    by_path = {**known, **{p: h for p, h in zip(todo, fresh) if h is not None}}
    hashes = [by_path.get(p) for p in train + test]
    # Files that do not decode were excluded by make_split already; skip any that fail now.
    tr = [i for i in range(len(train)) if hashes[i] is not None]
    te = [i for i in range(len(test)) if hashes[len(train) + i] is not None]
    if not tr or not te:
        return LeakCheck([], threshold, None, hashes=by_path)
    bits_tr, bits_te = hash_bits([hashes[i].plain for i in tr]), hash_bits([hashes[len(train) + i].plain for i in te])
    # A test image flipped left-right from a training image is as much a leak (more so with
    # run_boFlipAverage, which scores each image with its mirror): compared with the mirrors too.
    # On fashionTexture's 557 photos no two different photos came within 15 bits this way (closest: 23).
    closest = closest_pairs(bits_te, threshold, hash_bits([hashes[i].mirror for i in tr]), other=bits_tr)
    labels_tr, labels_te = dict(split.train), dict(split.test)
    leaks = []
    for (i, j), (d, mirrored) in sorted(closest.items(), key=lambda t: (t[1][0], t[0])):
        a, b = train[tr[j]], test[te[i]]
        leaks.append(Leak(a, b, d, labels_tr[a] == labels_te[b], mirrored))
    # Only pairs need judging (the notes are about them): no pass over the hashes when there are none.
    if not leaks:
        return LeakCheck(leaks, threshold, None, hashes=by_path)
    every = np.concatenate([bits_tr, bits_te])
    label_of = np.array([labels_tr[train[i]] for i in tr] + [labels_te[test[i]] for i in te])
    with_pairs = sorted({labels_te[leak.test] for leak in leaks if leak.same_class})
    alike = [split.classes[y] for y in with_pairs if looks_alike(every[label_of == y], threshold)]
    return LeakCheck(leaks, threshold, typical_distance(every, threshold), alike, hashes=by_path)


def write_leaks(path: str | Path, leaks: Sequence[Leak]) -> Path:
    """The pairs as a TSV (train, test, bits, same_class, mirrored), written atomically."""
    return write_tsv(path, ("train", "test", "bits", "same_class", "mirrored"),
                     ((x.train, x.test, x.distance, x.same_class, x.mirrored) for x in leaks))


@dataclass(frozen=True)
class Conflict:
    """Two near-duplicate images on the same side of the split, filed under different classes."""

    a: str
    b: str
    class_a: str
    class_b: str
    side: str  # "train" or "test"
    distance: int
    mirrored: bool = False


def label_conflicts(split: Split, hashes: Mapping[str, MirroredHash], threshold: int = DEFAULT_THRESHOLD,
                    settled: Collection[str] = ()) -> list[Conflict]:
    """Near-duplicate pairs on one side of the split whose classes differ, closest first: the same
    photo with two labels (a scraped photo that two queries returned; a slip when sorting), so one of
    the two is most likely wrong, and the model is taught both. (Pairs across the split are
    check_leaks'.) `hashes`: LeakCheck.hashes, so nothing is decoded again; a pair whose two labels
    a person confirmed in annotations_fixes.tsv (both images in `settled`: data.confirmed_labels)
    is left out."""
    out = []
    for side, items in (("train", split.train), ("test", split.test)):
        items = [(p, y) for p, y in items if p in hashes]
        if len(items) < 2:
            continue
        closest = closest_pairs(hash_bits([hashes[p].plain for p, _ in items]), threshold,
                                hash_bits([hashes[p].mirror for p, _ in items]))
        for (i, j), (d, mirrored) in closest.items():
            (a, ya), (b, yb) = items[i], items[j]
            if ya != yb and not (a in settled and b in settled):
                out.append(Conflict(a, b, split.classes[ya], split.classes[yb], side, d, mirrored))
    return sorted(out, key=lambda c: (c.distance, c.a, c.b))


def write_conflicts(path: str | Path, conflicts: Sequence[Conflict]) -> Path:
    """The pairs as a TSV (image_a, class_a, image_b, class_b, side, bits, mirrored), written atomically."""
    return write_tsv(path, ("image_a", "class_a", "image_b", "class_b", "side", "bits", "mirrored"),
                     ((c.a, c.class_a, c.b, c.class_b, c.side, c.distance, c.mirrored) for c in conflicts))


def depleted_test_classes(before: Split, after: Split, share: float = 0.5) -> list[tuple[str, int, int]]:
    """(class, test images moved, test images left) for each class that keep_leaks_in_train took at
    least `share` of the test images of (2 or more): its photos are copies of one another, or look
    alike to dhash (smooth or plain images, which the data-set-wide look-alike note can miss when
    only a few classes are so), and either way its test accuracy now rests on very few photos."""
    had, left = before.counts(), after.counts()
    out = []
    for c in before.classes:
        moved = had[c]["test"] - left[c]["test"]
        if moved >= 2 and moved >= share * had[c]["test"]:
            out.append((c, moved, left[c]["test"]))
    return out


def keep_leaks_in_train(split: Split, leaks: Sequence[Leak], earlier: Mapping[str, str] | None = None) -> Split:
    """The split with every leaking test image moved to the training set.

    Moving to train rather than dropping keeps every labelled photo in use; the test set then holds
    only photos with no near copy among the training images. `earlier`: the images' sides in the
    split stage 1 kept (data.earlier_sides); copies of a test image of that split that are new since
    (no earlier training image among them) are settled the other way: they join it in test, so that
    photos added weeks later do not take test images out of a test set that results are compared on
    (the caller checks again, since one joining may have a copy in train it was not compared with:
    `settle_leaks`)."""
    # Only same-class copies move: a copy under another label is a labelling error to fix, not a
    # reason to reshape the split. And each class keeps at least one test image, so the move can
    # never leave a class (or the whole test set) untested.
    earlier = earlier or {}
    # Copies are settled group by group (the pairs joined through shared images): a group with an
    # earlier test image and no earlier training image goes to test whole, the others as before.
    same = [leak for leak in leaks if leak.same_class]
    names = sorted({p for leak in same for p in (leak.train, leak.test)})
    index = {p: i for i, p in enumerate(names)}
    labels_tr = dict(split.train)
    train_left = {y: sum(1 for _, t in split.train if t == y) for y in range(len(split.classes))}
    to_test: set[str] = set()
    for g in _groups(len(names), [(index[leak.train], index[leak.test], 0) for leak in same]):
        members = [names[i] for i in g]
        if not any(earlier.get(m) == "test" for m in members) or any(earlier.get(m) == "train" for m in members):
            continue
        joining_train = [m for m in members if m in labels_tr]
        y = labels_tr[joining_train[0]] if joining_train else None
        if y is not None and train_left[y] - len(joining_train) < 1:
            continue  # the class's only training images: settled the old way, so that it keeps one
        if y is not None:
            train_left[y] -= len(joining_train)
        to_test.update(members)

    test_left = {y: sum(1 for _, t in split.test if t == y) for y in range(len(split.classes))}
    labels_te = dict(split.test)
    leaving: set[str] = set()
    for leak in leaks:
        if not leak.same_class or leak.test in leaving or leak.test in to_test:
            continue
        y = labels_te[leak.test]
        if test_left[y] > 1:
            leaving.add(leak.test)
            test_left[y] -= 1
    joining = {leak.train for leak in same if leak.test in to_test}
    if not leaving and not joining:
        return split
    moved = [(p, y) for p, y in split.test if p in leaving]
    joined = [(p, y) for p, y in split.train if p in joining]
    # Recorded, so that a later stage 1 checks them again instead of keeping them in train for good.
    return replace(split, train=sorted([t for t in split.train if t[0] not in joining] + moved, key=lambda t: (t[1], t[0])),
                   test=sorted([t for t in split.test if t[0] not in leaving] + joined, key=lambda t: (t[1], t[0])),
                   moved=sorted(set(split.moved) | leaving))


def settle_leaks(split: Split, check: LeakCheck, images_dir: str | Path, earlier: Mapping[str, str] | None = None,
                 workers: int = 2) -> tuple[Split, LeakCheck]:
    """keep_leaks_in_train with the pairs `check` may move, then checked again (with its hashes, so
    no image is decoded twice) until no pair is left to move: a new image that joined its copy in
    test may have another copy in train, and then goes back, its test copy with it. Returns the split
    and the check of it (the pairs left: those that keep a class its last test image)."""
    start = split
    split = keep_leaks_in_train(split, check.movable(split), earlier)
    for _ in range(len(split.test) + 1):  # each round after the first only moves test images to train
        again = check_leaks(split, images_dir, check.threshold, workers, progress=False, known=check.hashes)
        after = keep_leaks_in_train(split, again.movable(split))
        if after.sides() == split.sides():
            break
        split = after
    else:  # (never in practice: each round moves a test image)
        again = check_leaks(split, images_dir, check.threshold, workers, progress=False, known=check.hashes)
    # `moved` holds the test images the check took out of test, for the next run to check again: not a
    # new image that joined test and went back (its side before the check was train).
    was = start.sides()
    return replace(split, moved=[p for p in split.moved if was.get(p) != "train"]), again


@dataclass
class LeakageOutcome:
    """What stage 1's leakage check did: the split after it, the check (its hashes serve the label
    conflicts), and what to tell the user, line by line."""

    split: Split
    check: LeakCheck
    lines: list[str]


def apply_leakage_check(split: Split, images_dir: str | Path, mode: str, threshold: int, listed: str | Path,
                        earlier: Mapping[str, str] | None = None, shown: int = 10,
                        known: Mapping[str, MirroredHash] | None = None) -> LeakageOutcome:
    """Check `split` for near duplicates across train and test, list every pair in `listed` (a TSV),
    and with `mode` "move" keep same-class copies in train (settle_leaks; `earlier`: the sides of
    the split stage 1 kept, see keep_leaks_in_train); "report" leaves them. The lines say what was
    found and done, `shown` pairs printed (across classes first: label problems would hide among the rest).
    `known`: hashes of unchanged images from an earlier run (HashCache.unchanged), not computed again."""
    if mode not in ("report", "move"):
        raise ValueError(f"mode = {mode!r}: expected 'report' or 'move'")
    check = check_leaks(split, images_dir, threshold, known=known)
    lines = []
    leaks = sorted(check.leaks, key=lambda leak: leak.same_class)
    for leak in leaks[:shown]:
        note = "" if leak.same_class else " (DIFFERENT classes: check the labels)"
        how = f"{leak.distance} bits{', mirrored' if leak.mirrored else ''}"
        lines.append(f"near duplicates across the split ({how}): {leak.train} (train) ~ {leak.test} (test){note}")
    listed = write_leaks(listed, check.leaks)
    if len(check.leaks) > shown:
        others = sum(not leak.same_class for leak in leaks[shown:])
        lines.append(f"... and {len(check.leaks) - shown} more pairs ({others} across classes); all {len(check.leaks)} "
                     f"in {listed}")
    if not check.leaks:
        return LeakageOutcome(split, check, lines)
    if check.lookalike_note:
        lines.append(f"note: {check.lookalike_note}")
        if mode == "move":
            # A lower threshold still moves the closest look-alikes (digits: a 7 moved at 6 bits).
            lines.append("leakageCheck = 'move': nothing moved, since these pairs need not be copies; where you know "
                         "the data set holds no copies, set leakageCheck = 'off' rather than lowering the threshold, "
                         "which still moves the closest look-alikes")
        return LeakageOutcome(split, check, lines)
    if mode == "report":
        lines.append("leakageCheck = 'report': left as they are; test accuracy may be optimistic")
        return LeakageOutcome(split, check, lines)
    if check.lookalike_classes:
        lines.append(f"note: the images of {', '.join(check.lookalike_classes)} look alike to dhash within their "
                     f"class (distinct images lie within {threshold} bits of one another as often as copies "
                     "would), so their pairs are not moved: they need not be copies; to catch only copies there, "
                     "lower dedup_threshold")
    before = split
    split, remaining = settle_leaks(split, check, images_dir, earlier)
    check_disjoint(split)
    was, now = before.sides(), split.sides()
    out = sum(1 for path, side in now.items() if side == "train" and was[path] == "test")
    joined = sum(1 for path, side in now.items() if side == "test" and was[path] == "train")
    lines.append(f"moved {out} test image(s) with a same-class near duplicate in train to train" + (
        f"; {joined} new image(s) joined their near copy in test (an earlier test image, kept there)" if joined else ""))
    # Each class keeps a test image: where its last ones are copies of training images, say so.
    labels = dict(split.test)
    kept_copies = sorted({split.classes[labels[leak.test]] for leak in remaining.movable(split) if leak.same_class})
    if kept_copies:
        lines.append(f"note: {', '.join(kept_copies)}: test image(s) with a near copy in train stay in test, so that "
                     f"the class keeps a test image; its accuracy there measures memory as much as recognition: "
                     f"add test images ({listed.name} lists the pairs)")
    for c, moved, left in depleted_test_classes(before, split):
        lines.append(f"note: {c}: {moved} of its {moved + left} test images moved, {left} left: its photos are "
                     f"near copies of one another, or look alike to dhash (plain or smooth images); see "
                     f"{listed.name}, and if they are not copies, set leakageCheck = 'report' or a lower dedup_threshold")
    return LeakageOutcome(split, check, lines)


__all__ = [
    "apply_leakage_check",
    "LeakageOutcome",
    "Conflict",
    "label_conflicts",
    "write_conflicts",
    "depleted_test_classes",
    "Leak",
    "LeakCheck",
    "LOOKALIKE_FACTOR",
    "check_leaks",
    "lookalike_note",
    "hashes_lookalike_note",
    "looks_alike",
    "typical_distance",
    "write_leaks",
    "keep_leaks_in_train",
    "settle_leaks",
    "DEFAULT_THRESHOLD",
    "DUPLICATES_FOLDER",
    "HASH_SIZE",
    "HASH_CACHE_FILE",
    "HashCache",
    "path_stats",
    "DuplicateReport",
    "find_duplicates",
    "hash_bits",
    "hash_files",
    "image_hash",
    "MirroredHash",
    "mirrored_hash",
    "move_duplicates",
    "pairwise_close",
    "closest_pairs",
]
