"""Part 1 on the tutorial's real photos (../shared/datasets/fashionTexture); skipped when absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import FASHION
from imgclass.data import make_split
from imgclass.features import Featurizer
from imgclass.modelfile import ModelSpec, build_model
from imgclass.svm import LinearSvm

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not FASHION.is_dir(), reason="../shared/datasets/fashionTexture not present"),
]


def test_every_real_photo_decodes_and_splits() -> None:
    split = make_split(FASHION, ratio=0.75, seed=0)
    assert split.classes == ["dotted", "leopard", "striped"]
    assert split.excluded == []  # PNGs named .jpg and 5184x3456 originals all decode
    assert len(split.train) + len(split.test) == 557
    counts = split.counts()
    assert all(abs(n["train"] / (n["train"] + n["test"]) - 0.75) < 0.02 for n in counts.values())


def test_svm_on_fixed_features_recognises_real_textures(tmp_path: Path) -> None:
    # A subset keeps the test under a minute: 20 training and 10 test photos per class.
    split = make_split(FASHION, ratio=0.75, seed=0, check_decode=False)
    rng = np.random.default_rng(0)

    def pick(side: list[tuple[str, int]], n: int) -> list[tuple[str, int]]:
        out = []
        for k in range(3):
            items = [s for s in side if s[1] == k]
            out += [items[i] for i in rng.choice(len(items), n, replace=False)]
        return out

    train, test = pick(split.train, 20), pick(split.test, 10)
    spec = ModelSpec("efficientnet_lite0", 224, "crop")
    fz = Featurizer(build_model(spec), spec, batch_size=16, flip_average=False, workers=1, export_dir=tmp_path)
    f_tr = fz.featurize_paths([FASHION / p for p, _ in train], progress=False).features
    f_te = fz.featurize_paths([FASHION / p for p, _ in test], progress=False).features
    svm = LinearSvm(cv_folds=3).fit(f_tr, np.array([y for _, y in train]))
    acc = (svm.predict(f_te) == np.array([y for _, y in test])).mean()
    assert acc >= 0.85, acc
