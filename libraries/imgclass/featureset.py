"""The features file: what stage 3 writes for each side of the split (proc/<dataset>/
features_<fixed|refined>_<train|test>.npz) and stages 4-6 read. Its arrays are named here once, so
the writer and the readers agree.

No torch here: stages 4 and 5 and the provenance checks of the web service's process read these files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgclass.fileio import DamagedFileError, load_npz, require_file, save_npz
from imgclass.terminal import first_few

MADE_BY = "scripts/3_runDNN.py"
_REQUIRED = ("paths", "labels", "classes", "features")
# The small arrays that say where the features came from: a reader that only checks them skips the rest.
_HEADER = ("classes", "flip_average", "features_source", "split_hash", "refined_with_json")


@dataclass
class FeatureSet:
    """One side of the split as the network saw it: image paths (relative to the data set folder),
    labels (indices into `classes`), one feature row per image and, for a refined network, its class
    probabilities. `flip_average`, `source` (imgclass.provenance.features_source of the model file)
    and `split_hash` (of split.json) say what made the features, so later stages can refuse to mix
    files of different origins; `made_with` holds the network settings (MODEL_SETTINGS) they used,
    and `refined_with` the settings a refined network was refined with (RefineConfig.settings(), from the
    model file). Files written before these were recorded read back with `source` "",
    `flip_average` None and `refined_with` empty."""

    paths: list[str]
    labels: np.ndarray
    classes: list[str]
    features: np.ndarray
    probs: np.ndarray | None = None
    flip_average: bool | None = None
    source: str = ""
    split_hash: str = ""
    made_with: dict[str, Any] = field(default_factory=dict)
    refined_with: dict[str, Any] = field(default_factory=dict)
    file_stats: np.ndarray | None = None  # (size, mtime_ns) of each image file when stage 3 read it
    file_hashes: list[str] | None = None  # provenance.file_hash of each image file then

    def save(self, path: str | Path) -> Path:
        """Write the file atomically (a half-written file never replaces a good one)."""
        arrays = {"paths": np.array(self.paths), "labels": np.asarray(self.labels, dtype=np.int64),
                  "classes": np.array(self.classes), "features": self.features,
                  "features_source": np.array(self.source), "split_hash": np.array(self.split_hash),
                  "refined_with_json": np.array(json.dumps(self.refined_with)),
                  **{k: np.array(v) for k, v in self.made_with.items()}}
        if self.flip_average is not None:
            arrays["flip_average"] = np.array(self.flip_average)
        if self.probs is not None:
            arrays["probs"] = self.probs
        if self.file_stats is not None:
            arrays["file_stats"] = np.asarray(self.file_stats, dtype=np.int64)
        if self.file_hashes is not None:
            arrays["file_hashes"] = np.array(self.file_hashes)
        return save_npz(path, **arrays)

    @classmethod
    def load(cls, path: str | Path, made_with_keys: tuple[str, ...] = (), header_only: bool = False) -> FeatureSet:
        """Read the file back; `made_with_keys`: the settings to read into `made_with` (those the file
        has). With `header_only`, only the classes and what made the features are read, as far as the
        file has them (the paths, labels and features come back empty): enough for the provenance
        checks, without the features of every image."""
        path = require_file(path, MADE_BY)
        z = load_npz(path, keys=_HEADER + made_with_keys if header_only else None)
        missing = [k for k in _REQUIRED if k not in z and not header_only]
        if missing:
            raise DamagedFileError(f"{path}: not a features file written by {MADE_BY} (it has no "
                                   f"{', '.join(missing)}); rerun stage 3")
        return cls(
            paths=[str(x) for x in z.get("paths", [])],
            labels=z.get("labels", np.zeros(0, np.int64)),
            classes=[str(c) for c in z.get("classes", [])],
            features=z.get("features", np.zeros((0, 0), np.float32)),
            probs=z.get("probs"),
            flip_average=bool(z["flip_average"]) if "flip_average" in z else None,
            source=str(z["features_source"]) if "features_source" in z else "",
            split_hash=str(z["split_hash"]) if "split_hash" in z else "",
            made_with={k: z[k].item() for k in made_with_keys if k in z},
            refined_with=json.loads(str(z["refined_with_json"])) if "refined_with_json" in z else {},
            file_stats=z.get("file_stats"),
            file_hashes=[str(h) for h in z["file_hashes"]] if "file_hashes" in z else None,
        )

    @property
    def settings(self) -> dict[str, Any]:
        """Every network setting the features were made with (`made_with`, and `refined_with` for a
        refined network): what stages 4 and 5 check the parameters against."""
        return {**self.made_with, **self.refined_with}

    def __len__(self) -> int:
        return len(self.labels)


def file_stats(paths: Sequence[str | Path]) -> np.ndarray:
    """(size, mtime_ns) of each file, (-1, -1) for one that cannot be read: what FeatureSet.file_stats
    holds, taken before the images are read, so that a file changed while they are is a change too."""
    rows = []
    for path in paths:
        try:
            st = os.stat(path)
            rows.append((st.st_size, st.st_mtime_ns))
        except OSError:
            rows.append((-1, -1))
    return np.array(rows, dtype=np.int64).reshape(-1, 2)


def changed_images(features: FeatureSet, images_dir: str | Path) -> list[str]:
    """The images of `features` whose file is another now than when stage 3 read it (edited, replaced
    by another photo of that name), so their features are of what the file held then. A file of
    another size has changed; one of the same size and another modification time is read again and
    compared by content, where stage 3 recorded it (a data folder copied without its times, `cp -r`,
    has every time changed and no photo). Gone files are not listed here (data.since_split_notes
    names them); features files written before the stats were recorded are not checked."""
    if features.file_stats is None or len(features.file_stats) != len(features.paths):
        return []
    from imgclass.provenance import file_hash  # (provenance imports this module)

    hashes = features.file_hashes if features.file_hashes and len(features.file_hashes) == len(features.paths) else None
    now = file_stats([Path(images_dir) / p for p in features.paths])
    changed = []
    for i, (path, then, st) in enumerate(zip(features.paths, features.file_stats.tolist(), now.tolist())):
        if st[0] < 0 or then == st:
            continue
        if then[0] == st[0] and hashes is not None and hashes[i]:
            try:
                if file_hash(Path(images_dir) / path) == hashes[i]:
                    continue
            except OSError:  # gone since the stat: since_split_notes names it
                continue
        changed.append(path)
    return changed


def changed_images_note(features: FeatureSet, images_dir: str | Path, side: str) -> str | None:
    """A note naming the images changed since stage 3 read them (changed_images), or None."""
    if not (changed := changed_images(features, images_dir)):
        return None
    return (f"{len(changed)} {side} image file(s) changed since scripts/3_runDNN.py computed their features "
            f"({first_few(changed)}: edited or replaced): the features are of the files as they were; rerun "
            "scripts/3_runDNN.py, then the stages after it")
