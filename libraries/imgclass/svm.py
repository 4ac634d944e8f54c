"""A linear SVM on DNN features, its C chosen by cross-validation on the training set only.

The tutorial picked C by test accuracy, which flatters the reported figure; here the test set is
never looked at until evaluation. The fitted model is stored as plain arrays (npz + JSON), so it can
be loaded without unpickling and folded into the exported ONNX model.
"""

from __future__ import annotations

import json
import math
import numbers
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from joblib import Parallel, delayed
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import LinearSVC

from imgclass.cpus import usable_cpus
from imgclass.fileio import DamagedFileError, load_npz, save_npz
from imgclass.progress import progress_bar

if TYPE_CHECKING:
    from imgclass.params import Params

DEFAULT_C_VALUES = (1e-4, 1e-3, 0.01, 0.1, 1.0, 10.0, 100.0)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


ABSENT_SCORE = -1e6  # the score of a class the SVM was trained without: it never wins


def _class_scores(svc: LinearSVC, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(coef (K, D), intercept (K,)) of a fitted LinearSVC with one row per class 0..K-1: sklearn keeps
    one hyperplane for two classes (spread here to one score per class), and a class absent from
    its training labels gets ABSENT_SCORE."""
    coef = np.zeros((n_classes, svc.coef_.shape[1]), np.float32)
    intercept = np.full(n_classes, ABSENT_SCORE, np.float32)
    if len(svc.classes_) == 2:
        a, b = svc.classes_
        coef[b], intercept[b] = svc.coef_[0], svc.intercept_[0]
        coef[a], intercept[a] = -svc.coef_[0], -svc.intercept_[0]
    else:
        coef[svc.classes_] = svc.coef_
        intercept[svc.classes_] = svc.intercept_
    return coef, intercept


def _class_averaged_accuracy(y_true: np.ndarray, pred: np.ndarray) -> float:
    """The mean over the classes in `y_true` of their recall: sklearn's balanced_accuracy_score, which
    also drops a class that is only predicted, but without its "y_pred contains classes not in y_true"
    warning (a one-image class is in a fold's training part only, and stage 4 printed the warning raw)."""
    return float(np.mean([(pred[y_true == c] == c).mean() for c in np.unique(y_true)]))


def _validation_fit(svc: LinearSVC, x: np.ndarray, y: np.ndarray, train: np.ndarray, val: np.ndarray,
                    class_averaged: bool, n_classes: int) -> tuple[float, np.ndarray]:
    """(validation accuracy, the validation images' class scores) of one fold's fit."""
    pred = svc.fit(x[train], y[train]).predict(x[val])
    coef, intercept = _class_scores(svc, n_classes)
    accuracy = _class_averaged_accuracy(y[val], pred) if class_averaged else (pred == y[val]).mean()
    return float(accuracy), (x[val] @ coef.T + intercept).astype(np.float32)


class LinearSvm:
    """Multi-class (one-vs-rest) linear SVM with CV-chosen C.

    `balance_classes`: weigh each class's errors inversely to its size, and choose C by class-averaged
    accuracy; for data sets whose classes are of very different sizes.

    After `fit`: `C_` (chosen), `cv_scores_` ({C: mean CV accuracy}), `cv_fold_scores_` ({C: each
    fold's accuracy}), `cv_folds_used_` (0: no cross-validation) and `cv_folds_limited_by_` (the
    class too small for svm_cvFolds folds, else ""), `cv_majority_` (what always answering the largest
    class scores on the same folds), `cv_chance_` (what guessing among each fold's classes scores),
    `cv_note_` (why CV was limited or skipped, or which C values learned nothing, else ""), `coef_` (K, D), `intercept_` (K,),
    `n_classes_`, `cv_val_scores_` (each training image's class scores from the cross-validation fit
    of the chosen C that did not see it: where it disagrees with the label, the label may be wrong;
    None without cross-validation). `decision_function` returns one score column per class, also for
    two classes.
    """

    def __init__(
        self,
        c_values: Sequence[float] = DEFAULT_C_VALUES,
        l2_normalize: bool = True,
        cv_folds: int = 5,
        seed: int = 0,
        workers: int = 0,
        progress: bool = False,
        balance_classes: bool = False,
    ) -> None:
        # numbers.Real: np.float32(1.0) (an element of a float32 grid) is a positive number too; True is not a C.
        c_values = list(c_values)
        if not c_values or any(not isinstance(c, numbers.Real) or isinstance(c, bool) or not 0 < c < math.inf for c in c_values):
            raise ValueError(f"c_values = {c_values!r}: expected a non-empty list of positive numbers")
        if cv_folds < 2:
            raise ValueError(f"cv_folds = {cv_folds}: expected at least 2")
        if workers < 0:
            raise ValueError(f"workers = {workers}: expected 0 (one per CPU core) or more")
        self.c_values = [float(c) for c in c_values]
        self.l2_normalize = l2_normalize
        self.cv_folds = cv_folds
        self.seed = seed
        self.workers = workers
        self.progress = progress
        self.balance_classes = balance_classes
        self.features_source = ""  # what made the training features (imgclass.provenance.features_source)
        self.split_hash = ""  # the split whose training images they were (stage 1's split.json, hashed)
        self.classes: list[str] = []  # the class names, in the order of the scores' columns

    @classmethod
    def from_params(cls, p: Params, progress: bool = False) -> LinearSvm:
        """The SVM that PARAMETERS.py's svm_* values (and randomSeed) describe."""
        return cls(p.svm_CVals, p.svm_boL2Normalize, p.svm_cvFolds, p.randomSeed, p.svm_workers, progress=progress,
                   balance_classes=p.svm_boBalanceClasses)

    def settings(self) -> dict[str, object]:
        """The parameters (PARAMETERS.py's names) this SVM was trained with: stage 5 refuses to credit
        its results to others (a --set given to stage 4 and forgotten at stage 5)."""
        return {"svm_CVals": list(self.c_values), "svm_boL2Normalize": self.l2_normalize, "svm_cvFolds": self.cv_folds,
                "svm_boBalanceClasses": self.balance_classes, "randomSeed": self.seed}

    def _prep(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        return l2_normalize(x) if self.l2_normalize else x

    def _svc(self, c: float) -> LinearSVC:
        # "balanced": each class's errors weigh inversely to its size, as if every class had as many images.
        return LinearSVC(C=c, max_iter=20000, random_state=self.seed,
                         class_weight="balanced" if self.balance_classes else None)

    def fit(self, x: np.ndarray, y: np.ndarray, n_classes: int | None = None,
            classes: Sequence[str] = ()) -> LinearSvm:
        """`classes`: the names of the labels 0, 1, ..., for the notes (and kept in `classes`)."""
        x, given = self._prep(x), np.asarray(y)
        # Integer labels 0..K-1 (the names go in `classes`): strings failed in int() and 0.5, 1.5 were
        # silently truncated to other classes' labels.
        whole = given.dtype.kind in "iu" or (given.dtype.kind == "f" and bool(np.all(np.isfinite(given)))
                                                and np.array_equal(given, np.round(given)))
        if given.size and (not whole or given.min() < 0):
            raise ValueError(f"labels {given[:5].tolist()}{' ...' if given.size > 5 else ''}: expected integers "
                             f"0, 1, ... (one per class; the class names go in `classes`)")
        y = given.astype(np.int64)
        if n_classes is not None and y.size and y.max() >= n_classes:
            raise ValueError(f"n_classes = {n_classes}, but the labels go up to {y.max()}")
        if classes:
            self.classes = list(classes)
        if x.ndim != 2 or len(x) != len(y):
            raise ValueError(f"features {x.shape} and labels {y.shape} do not match")
        present = np.unique(y)
        if len(present) < 2:
            raise ValueError("the training set holds fewer than two classes")
        self.n_classes_ = int(n_classes if n_classes is not None else y.max() + 1)
        counts = np.bincount(y)[present]
        # A class with one training image cannot be in both a fold's training and validation part;
        # it is left to be misclassified in its one validation fold (the same cost for every C), so
        # the other classes still choose C. Folds are limited by the smallest class that can be split.
        splittable = counts[counts >= 2]
        folds = min(self.cv_folds, int(splittable.min())) if len(splittable) >= 2 else 0
        self.cv_folds_used_ = folds
        # The class that limits them, for stage 4 to say why there were fewer folds than svm_cvFolds.
        self.cv_folds_limited_by_ = (self._name(int(present[counts == splittable.min()][0]))
                                     if 2 <= folds < self.cv_folds else "")
        self.cv_scores_: dict[float, float] = {}
        self.cv_fold_scores_: dict[float, list[float]] = {}  # {C: accuracy of each validation fold}
        self.cv_note_ = ""
        self.cv_val_scores_: np.ndarray | None = None
        if folds < 2:
            self.C_, why = self._unchosen_c()
            alone = ", ".join(self._name(int(c)) for c in present[counts < 2])
            self.cv_note_ = (f"C = {self.C_:g}" + (f" ({why}) taken without choosing" if len(self.c_values) > 1 else "")
                             + f": no cross-validation, since fewer than two classes have two or more training "
                             f"images (one only: {alone}); add images to them to have C chosen")
        else:
            # With one C value too: the cross-validation accuracy is then what it costs to know how
            # good that C is (selectFeaturizer.py compares backbones by it).
            if (counts < 2).any():
                alone = [self._name(int(c)) for c in present[counts < 2]]
                self.cv_note_ = (f"{len(alone)} class(es) with a single training image ({', '.join(alone)}) cannot "
                                 "be scored by cross-validation; the other classes chose C")
            self.cv_scores_ = self._cross_validate(x, y, folds)
            best = max(self.cv_scores_.values())
            tied = sorted(c for c, s in self.cv_scores_.items() if s >= best - 1e-12)
            if len(tied) == len(set(self.c_values)) > 1:
                # Every C scored the same (a few training images a class): the folds chose nothing, and
                # the smallest C would give scores of +-0.0003, margins that say nothing. Taken as with
                # no cross-validation at all. (30 random draws of 3, 5 and 10 fashionTexture photos a
                # class, tested on the other photos: C = 1e-4 77.1 / 79.4 / 83.9%, C = 1 78.6 / 82.7 / 89.4%.)
                self.C_, why = self._unchosen_c()
                self.cv_note_ = "; ".join(filter(None, [self.cv_note_, (
                    f"every C scored {100 * best:.2f}%: the cross-validation could not tell them apart, so "
                    f"C = {self.C_:g} ({why}) was taken")]))
            else:
                # Ties go to the smallest C: the widest margin among equally good models.
                self.C_ = tied[0]
            self.cv_val_scores_ = self._val_scores.pop(self.C_)
            del self._val_scores
            self.cv_note_ = "; ".join(filter(None, [self.cv_note_, self._edge_note(), self._majority_note(counts)]))
        self.coef_, self.intercept_ = _class_scores(self._svc(self.C_).fit(x, y), self.n_classes_)
        return self

    def _unchosen_c(self) -> tuple[float, str]:
        """The C taken where the cross-validation cannot choose, and why that one: LinearSVC's default
        C = 1 where svm_CVals holds it, else the middle of the grid."""
        if 1.0 in self.c_values:
            return 1.0, "LinearSVC's default"
        return sorted(self.c_values)[len(self.c_values) // 2], "the middle of svm_CVals"

    def _name(self, label: int) -> str:
        return repr(self.classes[label]) if label < len(self.classes) else f"label {label}"

    def _edge_note(self) -> str:
        """Say so when the chosen C is the grid's largest or smallest value and the score was still
        rising towards it: the best C may lie beyond the values tried."""
        grid = sorted(self.cv_scores_)
        if len(grid) < 2 or self.C_ not in (grid[0], grid[-1]):
            return ""
        neighbour = grid[1] if self.C_ == grid[0] else grid[-2]
        if self.cv_scores_[self.C_] <= self.cv_scores_[neighbour] + 1e-12:
            return ""
        side, beyond = ("largest", "larger") if self.C_ == grid[-1] else ("smallest", "smaller")
        return (f"C = {self.C_:g} is the {side} value tried and scored higher than C = {neighbour:g} "
                f"({100 * self.cv_scores_[self.C_]:.2f}% against {100 * self.cv_scores_[neighbour]:.2f}%): "
                f"a {beyond} C may do better; add it to svm_CVals to try it")

    def _majority_note(self, counts: np.ndarray) -> str:
        """Say so when C values score no more than always answering the largest class would: with
        unequal classes (181 and 19 images: 90.5%) such a score looks good and means nothing."""
        if self.balance_classes:
            # Class-averaged accuracy: always answering one class scores 1/classes of the validation fold.
            share, answering = self.cv_chance_, "one class"
        else:
            # The same folds' mean, not the whole set's share: folds of unequal size put the fold scores of
            # a model that always answers the largest class (12/22, 12/22, 12/22, 12/21: 55.19%) above the
            # pooled share (48/87: 55.17%), and such a model would then slip past the comparison.
            share, answering = self.cv_majority_, "the largest class"
        at = [c for c, s in sorted(self.cv_scores_.items()) if s <= share + 1e-9]
        if not at:
            return ""
        if self.C_ in at:
            advice = ("with classes this unequal, set svm_boBalanceClasses = True (C chosen by class-averaged "
                      "accuracy)" if counts.max() >= 1.5 * counts.min() and not self.balance_classes else
                      "the features do not tell these classes apart: check the labels, or try another backbone")
            return (f"the chosen C = {self.C_:g} scores {100 * self.cv_scores_[self.C_]:.2f}%, no more than always "
                    f"answering {answering} would ({100 * share:.2f}%): the SVM learned nothing "
                    f"{'from the features' if self.balance_classes else 'the class sizes do not say'}; {advice}")
        return (f"C = {', '.join(f'{c:g}' for c in at)} scored no more than always answering {answering} "
                f"would ({100 * share:.2f}%): too small a C to learn from these features")

    def _cross_validate(self, x: np.ndarray, y: np.ndarray, folds: int) -> dict[float, float]:
        """Mean validation accuracy per C (class-averaged with balance_classes, the figure balancing is
        for), the (C, fold) fits spread over worker processes.

        Processes, not threads: liblinear draws from one process-wide random generator, so fits
        running side by side in threads disturb each other's coordinate order and the scores would
        depend on timing. joblib memory-maps the features for the workers instead of copying them."""
        cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=self.seed)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
            splits = list(cv.split(x, y))
        jobs = [(c, train, val) for c in self.c_values for train, val in splits]
        workers = min(self.workers or usable_cpus(), len(jobs))
        fits = Parallel(n_jobs=workers, return_as="generator")(
            delayed(_validation_fit)(self._svc(c), x, y, train, val, self.balance_classes, self.n_classes_)
            for c, train, val in jobs
        )
        results = list(progress_bar(fits, total=len(jobs), unit="fit", disable=not self.progress,
                            desc=f"SVM: {len(self.c_values)} C values x {folds} folds"))
        self.cv_fold_scores_ = {c: [a for a, _ in results[i * folds:(i + 1) * folds]] for i, c in enumerate(self.c_values)}
        # Every image is in one validation fold: its scores there are from a fit that never saw it.
        self._val_scores: dict[float, np.ndarray] = {}
        for i, c in enumerate(self.c_values):
            scores = np.empty((len(y), self.n_classes_), np.float32)
            for (_, val), (_, s) in zip(splits, results[i * folds:(i + 1) * folds]):
                scores[val] = s
            self._val_scores[c] = scores
        # What always answering each fold's largest training class scores on the same validation folds.
        self.cv_majority_ = float(np.mean([(y[val] == np.bincount(y[train]).argmax()).mean() for train, val in splits]))
        # ... and in class-averaged accuracy, 1/classes of each fold (a one-image class is in one fold only).
        self.cv_chance_ = float(np.mean([1 / len(np.unique(y[val])) for _, val in splits]))
        return {c: float(np.mean(scores)) for c, scores in self.cv_fold_scores_.items()}

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        """(N, D) features -> (N, n_classes_) scores."""
        if not hasattr(self, "coef_"):  # else numpy's AttributeError about coef_
            raise ValueError("this LinearSvm is not fitted yet: call fit(features, labels) or LinearSvm.load(path) first")
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.coef_.shape[1]:  # else a matmul error about its "core dimension"
            raise ValueError(f"features {x.shape}: expected (N, {self.coef_.shape[1]}), the features this SVM was "
                             f"fitted on (one row per image; a single image is x[None])")
        return self._prep(x) @ self.coef_.T + self.intercept_

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.decision_function(x).argmax(axis=1)

    def save(self, path: str | Path, classes: Sequence[str] = ()) -> Path:
        meta = {
            "C": self.C_,
            "cv_scores": {repr(c): s for c, s in self.cv_scores_.items()},
            "l2_normalize": self.l2_normalize,
            "c_values": self.c_values,
            "cv_folds": self.cv_folds,
            "seed": self.seed,
            "balance_classes": self.balance_classes,
            "classes": list(classes or self.classes),
            "features_source": self.features_source,
            "split_hash": self.split_hash,
        }
        return save_npz(path, coef=self.coef_, intercept=self.intercept_, meta=np.array(json.dumps(meta)))

    @classmethod
    def load(cls, path: str | Path) -> LinearSvm:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: run scripts/4_trainSVM.py first")
        z = load_npz(path)
        try:
            meta = json.loads(str(z["meta"]))
            svm = cls(meta["c_values"], meta["l2_normalize"], meta["cv_folds"], meta["seed"],
                      balance_classes=meta.get("balance_classes", False))
            svm.coef_, svm.intercept_ = z["coef"], z["intercept"]
            svm.C_ = meta["C"]
            svm.cv_scores_ = {float(k): v for k, v in meta["cv_scores"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as e:  # another .npz, or an edited one
            raise DamagedFileError(f"{path}: not an SVM file written by scripts/4_trainSVM.py "
                                   f"({type(e).__name__}: {e}); rerun stage 4") from None
        svm.n_classes_ = len(svm.intercept_)
        svm.classes = meta.get("classes", [])
        svm.features_source = meta.get("features_source", "")
        svm.split_hash = meta.get("split_hash", "")  # "" in files written before 2026-11-30: not checked
        return svm
