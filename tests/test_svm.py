from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from imgclass.svm import LinearSvm, l2_normalize


def _blobs(n_per_class: int = 20, k: int = 3, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (k, d))
    x = np.concatenate([c + rng.normal(0, 1, (n_per_class, d)) for c in centers]).astype(np.float32)
    return x, np.repeat(np.arange(k), n_per_class)


def test_fit_predict_and_cv_choose_c_on_training_data_only() -> None:
    x, y = _blobs()
    svm = LinearSvm(c_values=[1e-4, 0.1, 10.0], cv_folds=4).fit(x, y)
    assert set(svm.cv_scores_) == {1e-4, 0.1, 10.0}
    assert svm.cv_scores_[svm.C_] == max(svm.cv_scores_.values())
    xt, yt = _blobs(seed=0)
    assert (svm.predict(xt) == yt).mean() > 0.9
    assert svm.decision_function(xt).shape == (60, 3)


def test_two_classes_give_one_score_column_per_class() -> None:
    x, y = _blobs(k=2)
    svm = LinearSvm(c_values=[1.0]).fit(x, y)
    s = svm.decision_function(x)
    assert s.shape == (40, 2)
    np.testing.assert_allclose(s[:, 0], -s[:, 1], rtol=1e-5, atol=1e-5)
    assert (s.argmax(1) == y).mean() > 0.9


def test_l2_normalisation_is_applied() -> None:
    x, y = _blobs()
    a = LinearSvm(c_values=[1.0], l2_normalize=True).fit(x, y)
    b = LinearSvm(c_values=[1.0], l2_normalize=True).fit(x * 100, y)
    np.testing.assert_allclose(a.decision_function(x), b.decision_function(x * 7), rtol=1e-4, atol=1e-4)
    assert np.allclose(np.linalg.norm(l2_normalize(x), axis=1), 1.0)


def test_save_load_round_trip(tmp_path: Path) -> None:
    x, y = _blobs()
    svm = LinearSvm(c_values=[0.01, 1.0]).fit(x, y)
    svm.features_source, svm.split_hash = "0123abcd", "4567ef"
    path = svm.save(tmp_path / "svm.npz", classes=["a", "b", "c"])
    back = LinearSvm.load(path)
    assert (back.features_source, back.split_hash) == ("0123abcd", "4567ef")
    np.testing.assert_allclose(back.decision_function(x), svm.decision_function(x), rtol=1e-6)
    assert back.C_ == svm.C_ and back.classes == ["a", "b", "c"]
    assert LinearSvm.load(back.save(tmp_path / "again.npz")).classes == ["a", "b", "c"]  # its own classes
    with pytest.raises(FileNotFoundError, match="4_trainSVM.py"):
        LinearSvm.load(tmp_path / "missing.npz")


@pytest.mark.parametrize("kwargs, message", [({"c_values": []}, "positive numbers"), ({"c_values": [0]}, "positive"),
                                            ({"c_values": [float("nan")]}, "positive"), ({"c_values": [float("inf")]}, "positive"),
                                            ({"c_values": [True]}, "positive numbers"), ({"cv_folds": 1}, "at least 2")])
def test_bad_parameters_fail_early(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LinearSvm(**kwargs)


def test_one_class_is_an_error() -> None:
    with pytest.raises(ValueError, match="fewer than two classes"):
        LinearSvm().fit(np.ones((4, 3)), np.zeros(4, dtype=int))


def test_a_class_with_a_single_training_image_still_lets_cv_choose_c() -> None:
    x, y = _blobs(n_per_class=6)
    x, y = x[:13], y[:13]  # classes of 6, 6 and 1 images
    svm = LinearSvm(c_values=[1e-4, 0.1, 10.0], cv_folds=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # sklearn's "least populated class" warning is expected and hidden
        svm.fit(x, y, classes=["dotted", "striped", "点"])
    assert set(svm.cv_scores_) == {1e-4, 0.1, 10.0}
    assert "1 class(es) with a single training image ('点') cannot be scored" in svm.cv_note_
    assert svm.cv_scores_[svm.C_] == max(svm.cv_scores_.values())
    assert np.abs(svm.coef_[2]).sum() > 0 and svm.intercept_[2] > -1e5  # the final fit still has its hyperplane


def test_class_averaged_cv_with_a_single_image_class_warns_nothing_and_averages_the_fold_s_classes() -> None:
    # The one-image class is in the training part of all folds but one: predicted there for images of
    # other classes, sklearn's balanced_accuracy_score warned "y_pred contains classes not in y_true"
    # (printed raw by stage 4 with svm_boBalanceClasses = True) before dropping it from the average.
    x, y = _blobs(n_per_class=6)
    x, y = x[:13], y[:13]  # classes of 6, 6 and 1 images
    x[12] = x[0]  # the lone image looks like class 0, so folds that trained on it predict it for class 0
    svm = LinearSvm(c_values=[1e-4, 0.1, 10.0], cv_folds=3, workers=1, balance_classes=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        svm.fit(x, y, classes=["dotted", "striped", "点"])
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        splits = list(StratifiedKFold(n_splits=3, shuffle=True, random_state=0).split(x, y))
        for c, scores in svm.cv_fold_scores_.items():
            expected = [balanced_accuracy_score(y[v], svm._svc(c).fit(svm._prep(x)[t], y[t]).predict(svm._prep(x)[v]))
                        for t, v in splits]
            assert scores == pytest.approx(expected)


def test_cv_is_skipped_with_a_note_when_no_two_classes_can_be_split() -> None:
    x, y = _blobs(n_per_class=3, k=2)
    x, y = x[[0, 1, 2, 3]], y[[0, 1, 2, 3]]  # 3 images of one class, 1 of the other
    svm = LinearSvm(c_values=[0.01, 1.0, 100.0]).fit(x, y)
    assert svm.cv_scores_ == {} and svm.C_ == 1.0
    assert svm.cv_note_ == ("C = 1 (LinearSVC's default) taken without choosing: no cross-validation, since fewer "
                            "than two classes have two or more training images (one only: label 1); add images to "
                            "them to have C chosen")
    full = LinearSvm(c_values=[0.01, 1.0]).fit(*_blobs())
    assert full.cv_scores_ and "no cross-validation" not in full.cv_note_
    assert LinearSvm(c_values=[0.01, 0.1, 10.0]).fit(x, y).C_ == 0.1  # no C = 1 in the grid: its middle


def test_a_cross_validation_that_ties_every_c_takes_c_1_and_says_so() -> None:
    """Two images a class, far apart: every C scores 100%, and the smallest C (the tie-break where
    some C values do better than others) gave scores of +-0.0003."""
    x, y = _blobs(n_per_class=2, k=3)
    svm = LinearSvm(c_values=[1e-4, 0.01, 1.0, 100.0], cv_folds=2).fit(x, y)
    assert len(set(svm.cv_scores_.values())) == 1 and svm.C_ == 1.0
    assert "every C scored 100.00%: the cross-validation could not tell them apart" in svm.cv_note_
    assert "so C = 1 (LinearSVC's default) was taken" in svm.cv_note_
    assert np.abs(svm.decision_function(x)).max() > 0.1
    assert LinearSvm(c_values=[1e-4, 1.0], cv_folds=2).fit(x, y).C_ == 1.0  # a grid of two, as of seven
    # Some C values better than others: the smallest of the best, as before (here 1e-4 and 0.1 tie
    # at 81.67%, 1 and 100 do worse).
    rng = np.random.default_rng(1)
    x = np.concatenate([c + rng.normal(0, 1, (20, 16)) for c in rng.normal(0, 0.6, (3, 16))]).astype(np.float32)
    grid = LinearSvm(c_values=[1e-4, 1e-3, 0.1, 1.0, 100.0], cv_folds=3, workers=1).fit(x, np.repeat(np.arange(3), 20))
    best = max(grid.cv_scores_.values())
    assert sorted(c for c, s in grid.cv_scores_.items() if s == best) == [1e-4, 0.1] and grid.C_ == 1e-4
    assert "could not tell them apart" not in grid.cv_note_


def test_a_single_c_value_is_cross_validated_too() -> None:
    # Once C is known a user sets svm_CVals = [C]; its cross-validation accuracy is still reported
    # (selectFeaturizer.py compares backbones by it: with no score it had nothing to compare).
    x, y = _blobs()
    svm = LinearSvm(c_values=[1.0], cv_folds=3).fit(x, y)
    assert list(svm.cv_scores_) == [1.0] and len(svm.cv_fold_scores_[1.0]) == 3 and svm.C_ == 1.0
    assert svm.cv_scores_[1.0] > 0.9 and svm.cv_note_ == ""


def test_a_c_at_the_edge_of_the_grid_that_was_still_improving_is_pointed_out() -> None:
    x, y = _blobs(n_per_class=40, k=4, d=16, seed=3)
    x = x + np.random.default_rng(4).normal(0, 3, x.shape).astype(np.float32)  # overlap: C matters
    inside = LinearSvm(c_values=[1e-3, 0.1, 10.0], cv_folds=3).fit(x, y)
    assert inside.C_ == 0.1 and inside.cv_note_ == ""
    top = LinearSvm(c_values=[1e-3, 0.1], cv_folds=3).fit(x, y)  # the grid stops where the score still rose
    assert top.C_ == 0.1 and top.cv_scores_[0.1] > top.cv_scores_[1e-3]
    assert "C = 0.1 is the largest value tried" in top.cv_note_ and "a larger C may do better" in top.cv_note_
    bottom = LinearSvm(c_values=[0.1, 10.0], cv_folds=3).fit(x, y)
    assert bottom.C_ == 0.1 and "C = 0.1 is the smallest value tried" in bottom.cv_note_


def test_parallel_cross_validation_gives_sklearns_scores() -> None:
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.svm import LinearSVC

    x, y = _blobs(n_per_class=12, k=4, d=64, seed=3)  # fewer images than features: liblinear's dual solver
    x = x + np.random.default_rng(4).normal(0, 6, x.shape).astype(np.float32)  # overlap: C matters
    cs = [1e-3, 0.1, 10.0]
    one = LinearSvm(c_values=cs, cv_folds=3, seed=2, workers=1).fit(x, y)
    many = LinearSvm(c_values=cs, cv_folds=3, seed=2, workers=4).fit(x, y)
    cv = StratifiedKFold(n_splits=3, shuffle=True, random_state=2)
    expected = {c: cross_val_score(LinearSVC(C=c, max_iter=20000, random_state=2), l2_normalize(x), y, cv=cv).mean()
                for c in cs}
    assert one.cv_scores_ == many.cv_scores_
    assert one.cv_scores_ == pytest.approx(expected)
    assert len(set(expected.values())) > 1  # the scores differ between C values, so the order is checked too
    with pytest.raises(ValueError, match="workers = -1"):
        LinearSvm(workers=-1)


def test_class_balancing_raises_the_small_class_recall_and_chooses_c_by_class_averaged_accuracy(tmp_path: Path) -> None:
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.svm import LinearSVC

    def sample(n_big: int, n_small: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        x = np.concatenate([rng.normal(0.0, 1, (n_big, 8)), rng.normal(0.8, 1, (n_small, 8))]).astype(np.float32)
        return x, np.repeat([0, 1], [n_big, n_small])

    x, y = sample(120, 12, seed=0)
    xt, yt = sample(500, 500, seed=1)
    cs = [0.01, 1.0, 100.0]
    plain = LinearSvm(cs, l2_normalize=False, cv_folds=3, workers=1).fit(x, y)
    balanced = LinearSvm(cs, l2_normalize=False, cv_folds=3, workers=1, balance_classes=True).fit(x, y)
    recall_small = lambda m: (m.predict(xt[yt == 1]) == 1).mean()  # noqa: E731
    assert recall_small(balanced) > recall_small(plain) + 0.2
    class_avg = lambda m: ((m.predict(xt) == yt)[yt == 0].mean() + recall_small(m)) / 2  # noqa: E731
    assert class_avg(balanced) > class_avg(plain)
    cv = StratifiedKFold(n_splits=3, shuffle=True, random_state=0)
    expected = {c: cross_val_score(LinearSVC(C=c, max_iter=20000, random_state=0, class_weight="balanced"), x, y,
                                   cv=cv, scoring="balanced_accuracy").mean() for c in cs}
    assert balanced.cv_scores_ == pytest.approx(expected)
    back = LinearSvm.load(balanced.save(tmp_path / "svm.npz", ["big", "small"]))
    assert back.balance_classes and not LinearSvm.load(plain.save(tmp_path / "p.npz", ["big", "small"])).balance_classes


def test_from_params_takes_the_svm_values_of_parameters_py() -> None:
    from imgclass.params import load_params

    p = load_params(overrides={"svm_CVals": [0.5, 2.0], "svm_cvFolds": 3, "randomSeed": 7, "svm_boBalanceClasses": True})
    svm = LinearSvm.from_params(p)
    assert (svm.c_values, svm.cv_folds, svm.seed, svm.balance_classes, svm.l2_normalize, svm.workers) == (
        [0.5, 2.0], 3, 7, True, p.svm_boL2Normalize, p.svm_workers)


def test_c_values_that_score_only_the_largest_class_share_are_named() -> None:
    """181 and 19 images: 90.5% for always answering the larger class, which a too-small C does."""
    rng = np.random.default_rng(0)
    y = np.array([0] * 90 + [1] * 10)
    x = rng.normal(size=(100, 8)).astype(np.float32)
    x[:, 0] += 3 * y  # separable along one axis
    svm = LinearSvm([1e-6, 10.0], cv_folds=5).fit(x, y)
    assert svm.cv_scores_[1e-6] == pytest.approx(0.9) and svm.C_ == 10.0
    assert "C = 1e-06 scored no more than always answering the largest class would (90.00%)" in svm.cv_note_
    # Noise: every C scores the larger class's share, and the chosen one is called out.
    noise = LinearSvm([1e-6, 1e-5], cv_folds=5).fit(rng.normal(size=(100, 8)).astype(np.float32), y)
    # (Both tie, so the larger of the two, as for any grid every C of which ties.)
    assert "the chosen C = 1e-05 scores 90.00%, no more than always answering the largest class would (90.00%)" in noise.cv_note_
    assert "svm_boBalanceClasses = True" in noise.cv_note_
    balanced = LinearSvm([1e-6, 1e-5], cv_folds=5, balance_classes=True).fit(rng.normal(size=(100, 8)).astype(np.float32), y)
    assert "largest class" not in balanced.cv_note_
    # Balanced, C is chosen by class-averaged accuracy, where always answering one class scores 1/classes.
    chance = LinearSvm([1e-6, 1e-5], cv_folds=5, balance_classes=True).fit(
        np.ones((60, 8), np.float32), np.array([0] * 30 + [1] * 20 + [2] * 10))
    assert ("the chosen C = 1e-05 scores 33.33%, no more than always answering one class would (33.33%): the SVM "
            "learned nothing from the features; the features do not tell these classes apart") in chance.cv_note_
    # A one-image class is in one validation fold only: the others average two classes, chance is higher.
    lone = LinearSvm([1e-6, 1e-5], cv_folds=5, balance_classes=True).fit(
        np.ones((51, 8), np.float32), np.array([0] * 30 + [1] * 20 + [2]))
    assert lone.cv_chance_ == pytest.approx((1 / 3 + 4 / 2) / 5) and "learned nothing from the features" in lone.cv_note_
    # Equal classes and features that say nothing of them: balancing is no help, and is not advised.
    equal = LinearSvm([1e-6], cv_folds=5).fit(np.ones((100, 8), np.float32), np.array([0, 1] * 50))  # one answer: 50%
    assert "the features do not tell these classes apart" in equal.cv_note_ and "svm_boBalanceClasses" not in equal.cv_note_


def test_the_largest_class_note_compares_with_the_same_folds_not_the_pooled_share() -> None:
    """48 and 39 images in 4 folds of 22, 22, 22 and 21: always answering the larger class scores
    12/22 three times and 12/21 once, 55.19% on average, above its pooled share of 48/87 = 55.17%."""
    y = np.array([0] * 48 + [1] * 39)
    svm = LinearSvm([1e-6, 1e-5], cv_folds=4).fit(np.ones((87, 8), np.float32), y)  # features that say nothing
    assert svm.cv_scores_[1e-6] == pytest.approx((3 * 12 / 22 + 12 / 21) / 4) == svm.cv_majority_
    assert svm.cv_scores_[1e-6] > 48 / 87
    assert "the chosen C = 1e-05 scores 55.19%, no more than always answering the largest class would (55.19%)" in svm.cv_note_


def test_the_smallest_class_limits_the_folds_and_is_named() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (20, 8)), rng.normal(3, 1, (20, 8)), rng.normal(-3, 1, (3, 8))])
    y = np.array([0] * 20 + [1] * 20 + [2] * 3)
    svm = LinearSvm([0.1, 1.0], cv_folds=5).fit(x, y, classes=["a", "b", "rare"])
    assert (svm.cv_folds_used_, svm.cv_folds_limited_by_) == (3, "'rare'")
    assert all(len(folds) == 3 for folds in svm.cv_fold_scores_.values())
    svm = LinearSvm([0.1, 1.0], cv_folds=3).fit(x, y, classes=["a", "b", "rare"])
    assert (svm.cv_folds_used_, svm.cv_folds_limited_by_) == (3, "")  # as many as asked for: nothing to say


def test_a_model_trained_without_l2_normalisation_loads_without_it(tmp_path: Path) -> None:
    # Loaded with normalisation switched back on, stage 5 would score unnormalised weights on
    # normalised features: other scores, other predictions, and no error.
    x, y = _blobs()
    svm = LinearSvm(c_values=[1.0], l2_normalize=False).fit(x, y)
    back = LinearSvm.load(svm.save(tmp_path / "svm.npz"))
    assert back.l2_normalize is False
    np.testing.assert_allclose(back.decision_function(x), svm.decision_function(x), rtol=1e-5, atol=1e-5)


def test_scoring_before_fit_or_with_features_of_another_width_says_what_was_expected() -> None:
    x, y = _blobs(d=16)
    with pytest.raises(ValueError, match="not fitted yet"):
        LinearSvm().predict(x)
    svm = LinearSvm(c_values=[1.0]).fit(x, y)
    with pytest.raises(ValueError, match=r"features \(60, 8\): expected \(N, 16\)"):
        svm.predict(x[:, :8])
    with pytest.raises(ValueError, match=r"features \(16,\): expected \(N, 16\)"):  # one image without its row axis
        svm.decision_function(x[0])
    assert svm.predict(x[:1]).shape == (1,)


@pytest.mark.parametrize("labels, n_classes, message", [
    (np.array(["a", "b", "c"]), None, r"labels \['a', 'b', 'a', 'b', 'a'\] \.\.\.: expected integers"),
    (np.array([0.5, 1.5, 2.5]), None, "expected integers"),  # was truncated to 0, 1, 2 unsaid
    (np.array([-1, 0, 1]), None, "expected integers"),
    (np.array([0, 1, 2]), 2, "n_classes = 2, but the labels go up to 2"),
])
def test_labels_that_are_not_class_numbers_are_refused_with_what_was_expected(labels: np.ndarray, n_classes: int | None,
                                                                             message: str) -> None:
    x, _ = _blobs(n_per_class=4)
    y = np.concatenate([labels[:2]] * 5 + [labels[2:]] * 2)[:12]
    with pytest.raises(ValueError, match=message):
        LinearSvm(c_values=[1.0]).fit(x, y, n_classes=n_classes)


def test_whole_numbers_as_floats_are_labels_too() -> None:
    x, y = _blobs(n_per_class=4)
    assert (LinearSvm(c_values=[1.0]).fit(x, y.astype(float)).predict(x) == y).mean() > 0.9


def test_c_values_of_numpy_types_are_numbers_too() -> None:
    assert LinearSvm(c_values=np.array([0.1, 1.0], np.float32)).c_values == pytest.approx([0.1, 1.0])
    assert LinearSvm(c_values=[np.int64(10)]).c_values == [10.0]
