"""Active learning: let the current model pick which unlabelled images are worth labelling next.

Labelling is the expensive part of a new data set. Images the model already classifies with
confidence teach it little; the ones it is unsure about teach it most. Given a folder of unlabelled
images, the current model (stages 2-4: the network, and the SVM unless classifier = "dnn") scores
them, and the most uncertain ones by a criterion are shown for labelling:

- "topScore": the lowest top score (the model likes no class much);
- "margin": the smallest gap between the best and the second-best class (it hesitates between two);
- "entropy": the highest entropy of the class probabilities (its doubt is spread over all classes).
  SVM scores are turned into probabilities with a softmax, which ranks images but is not calibrated.

Labelled images are COPIED into the data set's class folders (the unlabelled folder is left as it
is), and every answer, skips included, is logged in proc/<dataset>/active_learning.tsv so an image
is never asked twice. The log knows an image by its content (a hash), not its path: the unlabelled
folder may be moved or renamed between rounds, and a copy of an answered photo is not asked again.
The next run of stages 1-5 trains on the new images.
"""

from __future__ import annotations

import filecmp
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from imgclass.annotations import EXCLUDE, FIXES_FILE, read_fixes
from imgclass.data import find_split_folders, list_class_dirs, list_folder_images, list_images
from imgclass.fileio import atomic_open, atomic_path
from imgclass.images import check_images
from imgclass.params import Params
from imgclass.provenance import file_hash, trained_classifier

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CRITERIA = ("margin", "topScore", "entropy")
SKIP = "-"  # the label logged for an image the user chose not to label
QUIT = "\0quit"  # what an answer to stop labelling parses to (no class name can be it)
CAPTION_NAME_COLUMNS = 24  # most characters a class name takes in plot_candidates' captions
# One line per answer. "content" (imgclass.provenance.file_hash) identifies the image; "image" (its
# absolute path when answered) is for people reading the log. Logs written before the content column
# existed have three columns and are matched by path.
LOG_HEADER = "image\tlabel\tcopied_to\tcontent\n"
_OLD_LOG_HEADER = "image\tlabel\tcopied_to\n"


def _softmax(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def uncertainty(scores: np.ndarray, criterion: str = "margin", probabilities: bool = False) -> np.ndarray:
    """One value per image (row of `scores`, one column per class): higher = less sure."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion {criterion!r}: allowed values are {', '.join(CRITERIA)}")
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] < 2:
        raise ValueError(f"scores of shape {s.shape}: expected (images, classes) with at least 2 classes")
    if criterion == "topScore":
        return -s.max(axis=1)
    if criterion == "margin":
        top2 = np.sort(s, axis=1)[:, -2:]
        return -(top2[:, 1] - top2[:, 0])
    p = s if probabilities else _softmax(s)
    return -(p * np.log(np.clip(p, 1e-12, 1.0))).sum(axis=1)


def select_uncertain(scores: np.ndarray, count: int, criterion: str = "margin", probabilities: bool = False) -> np.ndarray:
    """Indices of the `count` most uncertain images, most uncertain first (ties: file order)."""
    if count < 1:
        raise ValueError(f"count = {count}: must be >= 1")
    u = uncertainty(scores, criterion, probabilities)
    return np.argsort(-u, kind="stable")[:count]


@dataclass
class Candidate:
    """An unlabelled image picked for labelling, with what the model thinks of it."""

    path: Path
    scores: np.ndarray  # one per class
    uncertainty: float

    def ranked(self, classes: Sequence[str], top: int = 3) -> list[tuple[str, float]]:
        order = np.argsort(-self.scores)[:top]
        return [(classes[i], float(self.scores[i])) for i in order]


@dataclass
class ScoredFolder:
    paths: list[Path]
    scores: np.ndarray  # (N, K)
    classes: list[str]
    probabilities: bool  # True: softmax outputs of a refined network; False: SVM decision values
    failed: list[tuple[Path, str]] = field(default_factory=list)  # files that did not decode, and why

    def candidates(self, count: int, criterion: str = "margin") -> list[Candidate]:
        if not self.paths:
            return []
        u = uncertainty(self.scores, criterion, self.probabilities)
        idx = select_uncertain(self.scores, count, criterion, self.probabilities)
        return [Candidate(self.paths[i], self.scores[i], float(u[i])) for i in idx]


def read_log(log_path: str | Path) -> dict[str, str]:
    """{content hash: label or SKIP} of every image already answered; lines of logs from before the
    content column are keyed by the absolute path they give instead (see `answered`)."""
    log_path = Path(log_path)
    if not log_path.is_file():
        return {}
    out = {}
    for line in log_path.read_text(encoding="utf-8").splitlines()[1:]:
        fields = line.split("\t")
        if len(fields) >= 4 and fields[3]:
            out[fields[3]] = fields[1]
        elif len(fields) >= 2:
            out[fields[0]] = fields[1]
    return out


def answered(done: Mapping[str, str], path: str | Path, content: str | None = None) -> str | None:
    """The logged answer for the image at `path` (its label or SKIP), None when it was never answered.
    `done` is what read_log returned; `content`: the file's hash when already computed."""
    content = content or file_hash(path)
    return done.get(content, done.get(str(Path(path).resolve())))


def unlabelled_images(folder: str | Path, log_path: str | Path | None = None,
                      left_out: list[tuple[str, str]] | None = None, images_dir: str | Path | None = None,
                      in_dataset: list[tuple[Path, str, Path]] | None = None,
                      answered_before: list[Path] | None = None) -> list[Path]:
    """Images below `folder` not answered yet (per the log, which knows them by content; those
    answered are added to `answered_before`). Names
    no output file can hold are left out and added to `left_out` (see list_folder_images). With
    `images_dir` (the data set's folder), images whose content is in the data set already are left
    out too, and added to `in_dataset` as (image, class, data set file): pointed at a folder that
    overlaps the data set (or the data set itself), a round would spend its slots on photos that
    have a label."""
    folder = Path(folder)
    if folder.is_file():  # "no such folder" would read as a typo in a path that is there
        raise ValueError(f"{folder}: a file; give the folder of unlabelled images it is in ({folder.parent})")
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder of unlabelled images")
    done = read_log(log_path) if log_path is not None else {}
    paths = [(folder / p).resolve() for p in list_folder_images(folder, left_out)]
    if done:
        asked = [p for p in paths if answered(done, p) is not None]
        if answered_before is not None:
            answered_before += asked
        gone = set(asked)
        paths = [p for p in paths if p not in gone]
    if images_dir is None or not Path(images_dir).is_dir():
        return paths
    index: dict = {}
    out = []
    for p in paths:
        if (there := class_in_dataset(p, images_dir, index)) is None:
            out.append(p)
        elif in_dataset is not None:
            in_dataset.append((p, *there))
    return out


def score_images(
    paths: Sequence[str | Path], model_path: str | Path, svm_path: str | Path | None = None,
    batch_size: int = 32, flip_average: bool = False, workers: int = 2, progress: bool = True,
    export_dir: str | Path | None = None, engine: str = "auto",
) -> ScoredFolder:
    """Score images with the current model: SVM decision values on the network's features, or
    the refined network's own probabilities when `svm_path` is None. `export_dir`: where the
    network's ONNX export goes (see Featurizer). `flip_average` must be what stage 3 used (off by
    default, as run_boFlipAverage): score_with_trained_model reads it from stage 3's features.
    `engine`: what runs the network (run_engine: "auto", "onnx" or "torch"; see Featurizer)."""
    from imgclass.features import Featurizer
    from imgclass.modelfile import load_model
    from imgclass.svm import LinearSvm

    model, spec = load_model(model_path)
    svm = LinearSvm.load(svm_path) if svm_path is not None else None
    if svm is None and not spec.classes:
        raise ValueError(f"{model_path} is a fixed featurizer without a class head: score with its SVM (classifier 'svm')")
    # One unreadable file in a folder of new images must not stop the others from being scored.
    checked = list(zip((Path(p) for p in paths), check_images(paths, progress=progress)))
    paths = [p for p, problem in checked if problem is None]
    failed = [(p, problem) for p, problem in checked if problem is not None]
    fz = Featurizer(model, spec, batch_size=batch_size, flip_average=flip_average, workers=workers,
                    engine=engine, export_dir=export_dir)
    result = fz.featurize_paths(paths, progress=progress, desc="score images")
    if svm is not None:
        classes = list(svm.classes) or [str(i) for i in range(svm.n_classes_)]
        return ScoredFolder(paths, svm.decision_function(result.features), classes, False, failed)
    assert result.probs is not None
    return ScoredFolder(paths, result.probs, list(spec.classes), True, failed)


def score_with_trained_model(paths: Sequence[str | Path], p: Params) -> ScoredFolder:
    """`score_images` with the classifier stages 2-4 trained under the parameters `p`: the network and
    its SVM, or the refined network for classifier "dnn", with the mirror averaging stage 3 used.
    Refuses a model file and an SVM of different origins (imgclass.provenance)."""
    model, svm, flip = trained_classifier(p)
    return score_images(paths, model, svm, batch_size=p.run_mbSize, flip_average=flip, workers=p.run_workers,
                        export_dir=p.feature_cache_dir, engine=p.run_engine)


def add_to_dataset(src: str | Path, label: str, images_dir: str | Path) -> Path:
    """Copy `src` into images_dir/<label>/ (into the training side's class folder, train/<label>/,
    when the data set comes split in advance: stage 1 reads no class folder beside train/ and test/),
    keeping its name unless another file has it."""
    src = Path(src)
    split = find_split_folders(Path(images_dir))
    dest_dir = (split[0] if split else Path(images_dir)) / label
    target = dest_dir / src.name
    n = 1
    while target.exists():
        if filecmp.cmp(src, target, shallow=False):
            return target  # already copied (e.g. an earlier run was interrupted before logging)
        target = dest_dir / f"{src.stem}_{n}{src.suffix}"
        n += 1
    with atomic_path(target) as tmp:
        shutil.copyfile(src, tmp)
    return target


def class_in_dataset(path: str | Path, images_dir: str | Path, _index: dict | None = None,
                     content: str | None = None) -> tuple[str, Path] | None:
    """(class, file) of a file in the data set with the same content as `path`, else None: an
    "unlabelled" photo may be a copy of one labelled long ago. The class is the one stage 1 reads:
    annotations_fixes.tsv's when it relabels the file, EXCLUDE when it leaves the file out. Only
    files of the same size are read. `_index`: a dict to keep the data set's listing in between
    calls (one labelling round); `content`: the file's hash when already computed."""
    images_dir = Path(images_dir)
    index = _index if _index is not None else {}
    if "by_size" not in index:
        split = find_split_folders(images_dir)
        roots = [images_dir] if split is None else [split[0], split[1]]
        fixes = read_fixes(images_dir)
        by_size: dict[int, list[tuple[str, Path]]] = {}
        for root in roots:
            for c in list_class_dirs(root):
                for f in list_images(root / c):  # what stage 1 reads of the class
                    fixed = fixes.get(f.relative_to(images_dir).as_posix(), c)
                    by_size.setdefault(f.stat().st_size, []).append((fixed, f))
        index["by_size"], index["hashes"] = by_size, {}
    same = index["by_size"].get(Path(path).stat().st_size, [])
    if not same:
        return None
    content = content or file_hash(path)
    hashes = index["hashes"]
    for c, f in same:
        if f not in hashes:
            hashes[f] = file_hash(f)
        if hashes[f] == content:
            return c, f
    return None


def apply_labels(
    labels: Mapping[str | Path, str], classes: Sequence[str], images_dir: str | Path, log_path: str | Path,
    _index: dict | None = None,
) -> list[Path]:
    """Copy each labelled image into its class folder and log every answer (SKIP for none).
    Usable from a notebook: `apply_labels({path: "striped", other: "-"}, classes, ...)`.
    Refuses to file an image (by content) under a class other than the one it was given before, or
    than the one it is in already in the data set: the same photo in two class folders would teach
    the model both; a copy of a photo already in its class is not copied again (that file is returned). `_index`: the data
    set's listing, kept between calls (label_interactively's round)."""
    log_path = Path(log_path)
    done = dict(read_log(log_path))
    todo = []
    index = _index if _index is not None else {}
    for path, label in labels.items():
        if label != SKIP and label not in classes:
            raise ValueError(f"{path}: label {label!r} is not a class ({', '.join(classes)}) or {SKIP!r} (skip)")
        src = Path(path).resolve()
        content = file_hash(src)
        before = answered(done, src, content)
        if label != SKIP and before not in (None, SKIP, label):
            raise ValueError(f"{path}: the same image (by content) is already labelled {before!r} in {log_path}; "
                             f"not copying it into {label!r} as well")
        there = class_in_dataset(src, images_dir, index, content) if label != SKIP else None
        if there is not None and there[0] != label:
            raise ValueError(f"{path}: the same image (by content) is in the data set already, as {there[1]} "
                             f"({class_words(there[0])}); not copying it into {label!r} as well")
        if label != SKIP:
            done[content] = label
        todo.append((src, label, content, None if there is None else there[1]))
    previous = log_path.read_text(encoding="utf-8") if log_path.is_file() else LOG_HEADER
    if previous.startswith(_OLD_LOG_HEADER):  # a log from before the content column: name the new column
        previous = LOG_HEADER + previous[len(_OLD_LOG_HEADER):]
    lines, copied = [], []
    for src, label, content, present in todo:
        dest = present or (add_to_dataset(src, label, images_dir) if label != SKIP else None)
        if dest is not None:  # (an identical file already there is returned as add_to_dataset returns it)
            copied.append(dest)
        lines.append(f"{src}\t{label}\t{'' if dest is None else dest.relative_to(images_dir).as_posix()}\t{content}\n")
    with atomic_open(log_path, "w", encoding="utf-8", newline="\n") as f:
        f.write(previous + "".join(lines))
    return copied


def _numbered(classes: Sequence[str]) -> bool:
    """Whether answers may give a class by its position in the menu: not when a class is itself named
    by a number (digits "0"-"9"), where "3" must mean the class "3", not the third class."""
    return not any(c.strip().isdigit() for c in classes)


def _menu(classes: Sequence[str]) -> str:
    return "  ".join(f"{i}={c}" for i, c in enumerate(classes, 1)) if _numbered(classes) else "  ".join(classes)


def _parse_answer(answer: str, classes: Sequence[str]) -> str | None:
    """A class name, SKIP, QUIT, or None when the answer is not understood."""
    a = answer.strip()
    exact = [c for c in classes if c == a] or [c for c in classes if c.lower() == a.lower()]
    if len(exact) == 1:  # a class named "S" or "skip" (sizes: S, M, L) is that class, not a skip
        return exact[0]
    if a.lower() in ("q", "quit"):
        return QUIT
    if a.lower() in ("s", "skip", SKIP):
        return SKIP
    if _numbered(classes) and a.isdigit() and 1 <= int(a) <= len(classes):
        return classes[int(a) - 1]
    if not a:
        return None
    matches = exact or [c for c in classes if c.lower().startswith(a.lower())]
    return matches[0] if len(matches) == 1 else None


def label_interactively(
    candidates: Sequence[Candidate], classes: Sequence[str], images_dir: str | Path, log_path: str | Path,
    input_fn: Callable[[str], str] = input, print_fn: Callable[..., None] = print,
) -> list[Path]:
    """Ask for the class of each candidate in a terminal (or a notebook: input() works there too).

    Answers: a class number or name (a unique prefix will do; only names when classes are named by
    numbers; a class's exact name wins over the letters below), "s" or "-" to skip, "q" to stop. Each
    answer is saved as it is given, so stopping (or Ctrl-D) loses nothing."""
    menu = _menu(classes)
    # A class named "s" or "q" (sizes S, M, L) takes the letter: skip with "-", stop with Ctrl-D.
    names = {c.lower() for c in classes}
    keys = f"{'-' if 's' in names else 's'}=skip (for good), {'Ctrl-D' if 'q' in names else 'q'}=quit"
    copied: list[Path] = []
    done = read_log(log_path)
    index: dict = {}
    for n, cand in enumerate(candidates, 1):
        # A copy of an image answered earlier (in this round, or under another name) is not asked again.
        content = file_hash(cand.path)
        before = answered(done, cand.path, content)
        if before is not None:
            print_fn(f"[{n}/{len(candidates)}] {cand.path}: same image as one answered before "
                     f"({'skipped' if before == SKIP else before}); not asked again")
            continue
        if (there := class_in_dataset(cand.path, images_dir, index, content)) is not None:
            print_fn(f"[{n}/{len(candidates)}] {cand.path}: same image as {there[1]} in the data set "
                     f"({class_words(there[0])}); not asked")
            continue
        guess = ", ".join(f"{c} {s:.3g}" for c, s in cand.ranked(classes))
        print_fn(f"[{n}/{len(candidates)}] {cand.path}\n    model: {guess}")
        while True:
            try:
                answer = input_fn(f"    class? ({menu}, {keys}): ")
            except EOFError:  # Ctrl-D stops, whatever the classes are called
                label = QUIT
                break
            label = _parse_answer(answer, classes)
            if label is not None:
                break
            print_fn(f"    {answer.strip()!r} is not one of: {menu}, {keys}")
        if label == QUIT:
            break
        copied += apply_labels({cand.path: label}, classes, images_dir, log_path, _index=index)
        done[content] = label
        print_fn(f"    -> {label}" if label != SKIP else "    skipped (not asked again)")
    return copied


def plot_candidates(candidates: Sequence[Candidate], classes: Sequence[str], path: str | Path | None = None,
                    columns: int = 5) -> Figure:
    """A contact sheet of the candidates with the model's top guesses (saved when `path` is given).
    Long file and class names are cut short as on the label check's sheet (suspects.sheet_captions):
    whole, they ran over the neighbouring captions and pushed the next row's up into the pictures.
    Scores as the result pages show them (score_text): SVM decision values near 0 read "-0.00"."""
    from imgclass.images import contact_sheet
    from imgclass.terminal import name_column, score_text, shorten

    names, _ = name_column(classes, at_most=CAPTION_NAME_COLUMNS)
    return contact_sheet([(cand.path, f"{n}. {shorten(cand.path.name, 24)}\n" + "\n".join(
        f"{names[c]} {score_text(s)}" for c, s in cand.ranked(classes, 2))) for n, cand in enumerate(candidates, 1)],
        path, columns)


def write_candidates(path: str | Path, candidates: Sequence[Candidate], classes: Sequence[str], criterion: str) -> Path:
    with atomic_open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\t".join(["rank", "image", f"uncertainty_{criterion}", *classes]) + "\n")
        for n, c in enumerate(candidates, 1):
            f.write("\t".join([str(n), str(c.path), f"{c.uncertainty:.6g}", *(f"{s:.6g}" for s in c.scores)]) + "\n")
    return Path(path)


def class_words(cls: str) -> str:
    """A class from class_in_dataset in words: "class dotted", or that the fixes leave the file out."""
    return f"left out by {EXCLUDE} in {FIXES_FILE}" if cls == EXCLUDE else f"class {cls}"


__all__ = [
    "CRITERIA",
    "Candidate",
    "ScoredFolder",
    "add_to_dataset",
    "answered",
    "apply_labels",
    "class_words",
    "label_interactively",
    "plot_candidates",
    "read_log",
    "score_images",
    "score_with_trained_model",
    "select_uncertain",
    "uncertainty",
    "unlabelled_images",
    "write_candidates",
]
