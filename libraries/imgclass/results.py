"""Stage 5's per-image results (predictions.tsv) for browsing: filter, sort by confidence, top classes.

notebooks/showResults.ipynb scrolls through these; `Predictions` is a small table object so the same
views work in a script.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Prediction:
    image: str  # path relative to the data set folder
    true: str
    predicted: str
    scores: dict[str, float]  # class -> score (SVM decision value or DNN probability)

    @property
    def correct(self) -> bool:
        return self.true == self.predicted

    @property
    def confidence(self) -> float:
        """Margin of the top score over the runner-up: small means the classifier hesitated."""
        top = sorted(self.scores.values(), reverse=True)
        return top[0] - top[1] if len(top) > 1 else top[0]

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        return sorted(self.scores.items(), key=lambda kv: -kv[1])[:k]


class Predictions:
    """The rows of a predictions.tsv: `image, true, predicted, <one score column per class>`."""

    def __init__(self, rows: list[Prediction], classes: list[str], source: Path | None = None) -> None:
        self.rows, self.classes, self.source = rows, classes, source

    @classmethod
    def load(cls, path: str | Path) -> Predictions:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: run scripts/5_evaluate.py first")
        with open(path, encoding="utf-8", newline="") as f:
            # Written as plain tab-separated text (evaluate.write_predictions), never quoted: a file
            # name that starts with '"' is a name, not a quoted field.
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = next(reader, None)
            if not header or header[:3] != ["image", "true", "predicted"] or len(header) < 5:
                raise ValueError(f"{path}: expected a header 'image, true, predicted, <class scores>', got {header}")
            classes = header[3:]
            rows = []
            for n, r in enumerate(reader, 2):
                if len(r) != len(header):
                    raise ValueError(f"{path}, line {n}: {len(r)} columns, expected {len(header)}")
                rows.append(Prediction(r[0], r[1], r[2], {c: float(v) for c, v in zip(classes, r[3:])}))
        return cls(rows, classes, path)

    def __len__(self) -> int:
        return len(self.rows)

    def _new(self, rows: list[Prediction]) -> Predictions:
        return Predictions(rows, self.classes, self.source)

    def misclassified(self) -> Predictions:
        return self._new([r for r in self.rows if not r.correct])

    def of_class(self, cls: str) -> Predictions:
        if cls not in self.classes:
            raise ValueError(f"class {cls!r} is not one of {', '.join(self.classes)}")
        return self._new([r for r in self.rows if r.true == cls])

    def sort_by_confidence(self, most_confident_first: bool = False) -> Predictions:
        return self._new(sorted(self.rows, key=lambda r: r.confidence, reverse=most_confident_first))

    def accuracy(self) -> float:
        return float(np.mean([r.correct for r in self.rows])) if self.rows else float("nan")

    def show(self, images_dir: str | Path, start: int = 0, count: int = 12, columns: int = 4, k: int = 3) -> Any:
        """A matplotlib grid of `count` images from `start`: true -> predicted (red when wrong), top-k scores."""
        import matplotlib.pyplot as plt

        from imgclass.fonts import fit_fonts
        from imgclass.images import ImageDecodeError, load_rgb

        page = self.rows[start:start + count]
        rows = max(1, -(-len(page) // columns))
        # Constrained: one tight_layout pass left each row's titles over the foot of the images above.
        fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.6 * rows), squeeze=False,
                                 layout="constrained")
        for ax in axes.flat:
            ax.axis("off")
        for ax, r in zip(axes.flat, page):
            try:
                img = load_rgb(Path(images_dir) / r.image, min_size=256)
                img.thumbnail((256, 256))
                ax.imshow(img)
            except (ImageDecodeError, FileNotFoundError) as e:
                ax.text(0.5, 0.5, f"cannot show\n{e}", ha="center", va="center", wrap=True, fontsize=7)
            tops = "\n".join(f"{c}: {s:.3f}" for c, s in r.top(k))
            ax.set_title(f"{r.true} -> {r.predicted}\n{tops}", fontsize=8, color="black" if r.correct else "red")
        fit_fonts(fig)  # class and file names in any script
        return fig
