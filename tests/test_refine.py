"""DNN refinement on tiny generated images at low resolution: real decoding, the real pretrained
EfficientNet-Lite0, real training steps."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import COLOR_CLASSES, color_images, same_weights
from imgclass.augment import Augmenter
from imgclass import refine
from imgclass.modelfile import ImageClassifier, build_model
from imgclass.refine import (
    RefineConfig,
    Refiner,
    RefineOutOfMemoryError,
    _oom,
    balanced_indices,
    decode_images,
    deterministic_algorithms,
)

RES = 64
CLASSES = COLOR_CLASSES


def _config(**kw: object) -> RefineConfig:
    base = dict(resolution=RES, mb_size=6, max_epochs=2, lr_per_mb=(0.001,), workers=0, seed=3)
    base.update(kw)
    return RefineConfig(**base)  # type: ignore[arg-type]


def _fit(color_dataset: Path, checkpoint: Path | None = None, resume: bool = False, device: str = "cpu",
         **kw: object) -> Refiner:
    paths, labels = color_images(color_dataset)
    return Refiner(_config(**kw), CLASSES, device=device, progress=False).fit(
        paths, labels, paths[::3], labels[::3], checkpoint=checkpoint, resume=resume)


# -- augmentation ---------------------------------------------------------------------------------

def _solid_batch(colors: list[tuple[int, int, int]], size: int) -> torch.Tensor:
    return torch.tensor(colors, dtype=torch.uint8).view(-1, 3, 1, 1).expand(-1, 3, size, size).contiguous()


def test_augmentation_keeps_sizes_and_each_image_with_its_label() -> None:
    colors = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (120, 120, 20)]
    batch = _solid_batch(colors, 74)
    gen = torch.Generator().manual_seed(0)
    out = Augmenter(RES, crop_scale_min=0.5, rotation_deg=15, flip=True, color_jitter=0.0)(batch, gen)
    assert out.shape == (4, 3, RES, RES) and out.dtype == torch.float32
    # Geometry only moves pixels: image i is still image i (its label still fits), colour unchanged.
    assert torch.allclose(out.mean(dim=(2, 3)), torch.tensor(colors, dtype=torch.float32), atol=0.5)
    jittered = Augmenter(RES, color_jitter=0.3)(batch, gen)
    assert jittered.shape == (4, 3, RES, RES) and 0 <= jittered.min() and jittered.max() <= 255
    # Colour jitter is mild: the dominant channel of every image stays dominant.
    assert (jittered.mean(dim=(2, 3))[:3].argmax(1) == torch.tensor([0, 1, 2])).all()


def test_augmentation_can_be_switched_off_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    batch = torch.from_numpy(rng.integers(0, 256, (3, 3, RES, RES), dtype=np.uint8))
    off = Augmenter(RES, crop_scale_min=1.0, rotation_deg=0, flip=False, color_jitter=0.0)
    assert off.is_identity and torch.equal(off(batch, torch.Generator()), batch.float())
    # Flip alone: every output is the image or its mirror, exactly.
    flipped = Augmenter(RES, crop_scale_min=1.0, rotation_deg=0, flip=True, color_jitter=0.0)(batch, torch.Generator().manual_seed(1))
    for img, out in zip(batch.float(), flipped):
        assert torch.allclose(out, img, atol=1e-3) or torch.allclose(out, img.flip(2), atol=1e-3)
    aug = Augmenter(RES - 8)
    a = aug(batch, torch.Generator().manual_seed(5))
    b = aug(batch, torch.Generator().manual_seed(5))
    assert a.shape == (3, 3, RES - 8, RES - 8) and torch.equal(a, b)
    with pytest.raises(ValueError, match="crop_scale_min"):
        Augmenter(RES, crop_scale_min=0.0)


# -- class balancing ------------------------------------------------------------------------------

def test_balancing_duplicates_images_of_the_smaller_classes_only() -> None:
    labels = np.array([0] * 7 + [1] * 3 + [2] * 1 + [0])
    idx = balanced_indices(labels, 3, np.random.default_rng(0))
    assert np.bincount(labels[idx], minlength=3).tolist() == [8, 8, 8]
    assert set(range(len(labels))) <= set(idx.tolist())  # every image is used at least once
    counts = np.bincount(idx, minlength=len(labels))
    assert (counts[labels == 0] == 1).all()  # the largest class is not duplicated
    assert sorted(counts[labels == 1].tolist()) == [2, 3, 3]  # duplicates spread evenly
    assert counts[10] == 8


def test_balanced_refinement_trains_on_equal_class_counts(color_dataset: Path) -> None:
    paths, labels = color_images(color_dataset)
    keep = [i for i, y in enumerate(labels) if y != 2 or i % 6 < 2]  # "red": 2 images instead of 6
    refiner = Refiner(_config(balance_training_set=True, max_epochs=1), CLASSES, device="cpu", progress=False)
    chosen = refiner._select_train(np.array([labels[i] for i in keep]))
    assert np.bincount(np.array([labels[keep[i]] for i in chosen]), minlength=3).tolist() == [6, 6, 6]


def _centred_head(head: torch.nn.Linear) -> torch.Tensor:
    """Weights and biases of a last layer, the biases less their mean: adding one constant to every
    bias changes no probability, and the fit does not penalise it, so L-BFGS may stop anywhere along it."""
    bias = head.bias.detach()
    return torch.cat([head.weight.detach(), (bias - bias.mean())[:, None]], 1)


def test_balanced_last_layer_fit_weighs_each_image_as_often_as_training_draws_it(color_dataset: Path) -> None:
    """With rf_boBalanceTrainingSet the last-layer fits (before refining and the final refit) see the
    balanced class counts too: a weight per image equal to its copies, the same fit as on the copies."""
    paths, labels = color_images(color_dataset)
    keep = [i for i, y in enumerate(labels) if y != 2 or i % 6 < 2]  # "red": 2 images instead of 6
    y = np.array([labels[i] for i in keep])
    pixels = decode_images([paths[i] for i in keep], RES, "squash", workers=0, progress=False)
    refiner = Refiner(_config(balance_training_set=True), CLASSES, device="cpu", progress=False)
    chosen = refiner._select_train(y)
    counts = np.bincount(chosen, minlength=len(y))
    assert counts[y == 2].tolist() == [3, 3]  # each red image three times: 6 per class

    def fitted_head(cache: torch.Tensor, labels_: np.ndarray, weights: torch.Tensor | None) -> torch.Tensor:
        torch.manual_seed(0)
        model, _ = refiner._build()
        refiner.fit_last_layer(model, cache, torch.from_numpy(labels_), weights=weights)
        return _centred_head(model.head)

    weighted = fitted_head(pixels, y, torch.from_numpy(counts.astype(np.float32)))
    copies = fitted_head(pixels[torch.from_numpy(chosen)], y[chosen], None)
    plain = fitted_head(pixels, y, None)
    # The same fit up to where L-BFGS stops (about 0.015 on the biases), and far from the unweighted
    # fit, whose biases follow the imbalanced class counts (about 0.15 away).
    copies_gap, plain_gap = float((weighted - copies).abs().max()), float((weighted - plain).abs().max())
    assert copies_gap < 0.03 and plain_gap > 4 * copies_gap, (copies_gap, plain_gap)
    # And a balanced refinement's saved last layer is that weighted fit on its refined features (up to
    # where L-BFGS stops), not the unweighted one.
    refiner = Refiner(_config(balance_training_set=True, max_epochs=1), CLASSES, device="cpu", progress=False)
    refiner.fit([paths[i] for i in keep], y)
    c = refiner.config
    cache = decode_images([paths[i] for i in keep], c.resolution, c.resize_mode, workers=0, progress=False)
    saved = {k: v.detach().clone() for k, v in refiner.model_.head.state_dict().items()}
    saved_centred = _centred_head(refiner.model_.head)

    def refit_distance(weights: torch.Tensor | None) -> float:
        refiner.model_.head.load_state_dict(saved)
        refiner.fit_last_layer(refiner.model_, cache, torch.from_numpy(y), weights=weights)
        return float((_centred_head(refiner.model_.head) - saved_centred).abs().max())

    to_weighted = refit_distance(torch.from_numpy(counts.astype(np.float32)))
    to_plain = refit_distance(None)
    assert to_weighted < to_plain / 5, (to_weighted, to_plain)


# -- training -------------------------------------------------------------------------------------

def test_refinement_lowers_training_loss_and_writes_history(color_dataset: Path) -> None:
    r = _fit(color_dataset, max_epochs=3, init_last_layer=False)  # a random last layer: much to learn
    h = r.history_
    assert h.epoch == [1, 2, 3] and len(h.train_loss) == len(h.train_error) == len(h.test_error) == 3
    assert h.train_loss[-1] < h.train_loss[0]
    assert all(0.0 <= e <= 1.0 for e in h.train_error + h.test_error)
    assert isinstance(r.model_, ImageClassifier) and r.model_.head.out_features == 3
    assert not r.model_.training


def test_last_layer_fitted_on_pretrained_features_before_refining(color_dataset: Path) -> None:
    # With a learning rate too small to matter, the first epoch's error shows where training starts
    # (BatchNorm statistics kept, so training-mode features are the ones the layer was fitted on).
    tiny = dict(max_epochs=1, lr_per_mb=(1e-7,), dropout=0.0, aug_color_jitter=0.0, freeze_batchnorm=True)
    assert _fit(color_dataset, init_last_layer=True, **tiny).history_.train_error[0] <= 0.1
    assert _fit(color_dataset, init_last_layer=False, **tiny).history_.train_error[0] >= 0.3


def test_refit_last_layer_changes_only_the_last_layer_and_fits_the_training_images(color_dataset: Path) -> None:
    plain = _fit(color_dataset, max_epochs=1, lr_per_mb=(0.01,), refit_last_layer=False)
    refit = _fit(color_dataset, max_epochs=1, lr_per_mb=(0.01,), refit_last_layer=True)
    assert same_weights(plain.model_.backbone, refit.model_.backbone)
    assert not torch.equal(plain.model_.head.weight, refit.model_.head.weight)
    paths, labels = color_images(color_dataset)
    pixels = decode_images(paths, RES, "squash", workers=0, progress=False)

    def training_error(r: Refiner) -> float:
        return r.error_rate(r.model_, pixels, torch.tensor(labels))

    # Fitted on exactly these (un-augmented) images' features: it separates them at least as well.
    assert training_error(refit) <= training_error(plain) and training_error(refit) <= 0.05
    assert not refit.model_.training


def test_refit_sees_the_training_images_as_stage_3_decodes_them(color_dataset: Path) -> None:
    """The refit last layer scores stage 3's features (images decoded straight to the input side), so
    it is fitted on those, not on the training cache's images (decoded 15% larger for the crops and
    resized again), whose features differ. The saved layer is the fit's optimum for the first: fitting
    again from it on those barely moves it, on the cache's it moves several times farther."""
    paths, labels = color_images(color_dataset)
    refiner = _fit(color_dataset, max_epochs=1, lr_per_mb=(0.01,))
    c = refiner.config
    assert c.cache_size > c.resolution  # augmentation on: the cache is larger than the input
    saved = {k: v.detach().clone() for k, v in refiner.model_.head.state_dict().items()}
    saved_centred = _centred_head(refiner.model_.head)

    def refit_distance(size: int) -> float:
        pixels = decode_images(paths, size, c.resize_mode, workers=0, progress=False)
        refiner.model_.head.load_state_dict(saved)
        refiner.fit_last_layer(refiner.model_, pixels, torch.tensor(labels))
        return float((_centred_head(refiner.model_.head) - saved_centred).abs().max())

    as_stage_3, from_cache = refit_distance(c.resolution), refit_distance(c.cache_size)
    assert as_stage_3 < from_cache / 4, (as_stage_3, from_cache)


@pytest.mark.parametrize("workers", [0, 2])  # 2: the error comes back from a decoding process
def test_a_training_file_gone_before_the_refit_costs_the_refit_its_stage_3_pixels_not_the_network(
        color_dataset: Path, tmp_path: Path, workers: int) -> None:
    """Photos may be moved while a long refinement runs: the refit then falls back to the training
    cache's pixels and says why, instead of failing after the last epoch."""
    paths, labels = color_images(color_dataset)
    gone = tmp_path / "moved.jpg"
    r = Refiner(_config(max_epochs=2, workers=workers), CLASSES, device="cpu", progress=False)
    r.fit(paths, labels, on_epoch=lambda h: paths[4].rename(gone) if h.epoch[-1] == 2 else None)
    assert not paths[4].exists() and len(r.history_.epoch) == 2
    assert "on the training cache's pixels" in r.saved_as_ and paths[4].name in r.saved_as_, r.saved_as_


# On a GPU too (bfloat16, augmentation there, dropout drawing from the GPU's generator); CI has none.
CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"))
# Apple's GPU: float32 there, and dropout draws from the MPS generator, which the checkpoint keeps too.
MPS = pytest.param("mps", marks=pytest.mark.skipif(not torch.backends.mps.is_available(), reason="no Apple GPU (MPS)"))


@pytest.mark.parametrize("device", ["cpu", CUDA, MPS])
def test_same_seed_same_result_and_resume_continues_exactly(color_dataset: Path, tmp_path: Path, device: str) -> None:
    straight = _fit(color_dataset, device=device)
    again = _fit(color_dataset, device=device)
    assert same_weights(straight.model_, again.model_) and straight.history_.train_loss == again.history_.train_loss
    # Interrupted after one epoch, resumed for the second: the same network as the straight run.
    ckpt = tmp_path / "refine_checkpoint.pt"
    first = _fit(color_dataset, checkpoint=ckpt, max_epochs=1, device=device)
    assert ckpt.is_file() and first.history_.epoch == [1]
    resumed = _fit(color_dataset, checkpoint=ckpt, resume=True, device=device)
    assert resumed.history_.epoch == [1, 2] and next(resumed.model_.parameters()).device.type == device
    assert (resumed.resumed_after_, straight.resumed_after_) == (1, 0)
    assert resumed.history_.train_loss == straight.history_.train_loss
    assert same_weights(resumed.model_, straight.model_)
    # A checkpoint written with other settings is not silently continued.
    with pytest.raises(ValueError, match=r"other settings \(rf_lrPerMb = \[0\.001\] there, \[0\.05\] now\): give the "
                                         r"same values again to continue it, or start afresh"):
        _fit(color_dataset, checkpoint=ckpt, resume=True, lr_per_mb=(0.05,), device=device)
    other_seed = _fit(color_dataset, max_epochs=1, seed=4, device=device)
    assert not same_weights(other_seed.model_, first.model_)
    # Nor one written while training on other images (stage 1 rerun): same settings, one image fewer.
    paths, labels = color_images(color_dataset)
    with pytest.raises(ValueError, match="other images or labels"):
        Refiner(_config(), CLASSES, device=device, progress=False).fit(paths[1:], labels[1:], checkpoint=ckpt, resume=True)


def test_a_checkpoint_that_cannot_be_continued_is_refused_before_the_images_are_decoded(
        color_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoding a large data set takes minutes: a --resume with other settings spent them first."""
    import imgclass.refine as refine

    ckpt = tmp_path / "refine_checkpoint.pt"
    _fit(color_dataset, checkpoint=ckpt, max_epochs=1)
    decoded: list[int] = []
    real = refine.decode_images
    monkeypatch.setattr(refine, "decode_images", lambda paths, *a, **k: decoded.append(len(paths)) or real(paths, *a, **k))
    with pytest.raises(ValueError, match="other settings"):
        _fit(color_dataset, checkpoint=ckpt, resume=True, lr_per_mb=(0.05,))
    assert decoded == []
    _fit(color_dataset, checkpoint=ckpt, resume=True)  # the same settings: continued, after decoding
    assert decoded


def test_a_damaged_checkpoint_is_one_line_that_says_restart(color_dataset: Path, tmp_path: Path) -> None:
    """A checkpoint cut short (a crash, a full disk) was refused with torch's five-line text, which
    advises loading it with weights_only=False (running its code) and filing an issue to PyTorch."""
    ckpt = tmp_path / "refine_checkpoint.pt"
    for content, what in ((b"\x80\x02garbage", "damaged or not a PyTorch file: UnpicklingError"),
                          (b"", "an empty file (0 bytes)")):
        ckpt.write_bytes(content)
        with pytest.raises(ValueError) as refused:
            _fit(color_dataset, checkpoint=ckpt, resume=True)
        message = str(refused.value)
        assert message.startswith(f"{ckpt}: not a refinement checkpoint ({what}); "), message
        assert "\n" not in message and "weights_only" not in message and "--restart" in message


def test_weights_averaged_over_the_last_epochs_also_across_a_resume(color_dataset: Path, tmp_path: Path) -> None:
    # Epochs 1-3 of 3 are averaged. Interrupted after epoch 2, resumed: the average continues.
    ckpt = tmp_path / "refine_checkpoint.pt"
    kw = dict(average_last_epochs=3, refit_last_layer=False, lr_per_mb=(0.01,))
    _fit(color_dataset, checkpoint=ckpt, max_epochs=2, **kw)
    first_two = torch.load(ckpt, weights_only=True)["average"]
    resumed = _fit(color_dataset, checkpoint=ckpt, resume=True, max_epochs=3, **kw)
    last = resumed.last_epoch_state_
    assert last is not None
    straight = _fit(color_dataset, max_epochs=3, **kw)
    assert same_weights(resumed.model_, straight.model_)
    plain = _fit(color_dataset, max_epochs=3, **{**kw, "average_last_epochs": 0})
    assert plain.last_epoch_state_ is None
    assert all(torch.equal(last[k], v) for k, v in plain.model_.state_dict().items())  # same training
    averaged = resumed.model_.state_dict()
    moved = 0
    for k, v in averaged.items():
        if v.is_floating_point():
            expected = (2 * first_two[k] + last[k]) / 3  # first_two is the mean of epochs 1 and 2
            torch.testing.assert_close(v, expected, rtol=1e-5, atol=1e-6)
            moved += int(not torch.equal(v, last[k]))
    assert moved > 0  # the average is not just the last epoch's weights
    # Resumed with an rf_maxEpochs whose window of averaged epochs takes in only part of those done
    # (epochs 2-3 of 3, where the interrupted run averaged 1-2 of 2): no run from the start gives that.
    ckpt.unlink()
    kw2 = {**kw, "average_last_epochs": 2}
    _fit(color_dataset, checkpoint=ckpt, max_epochs=2, **kw2)
    with pytest.raises(ValueError, match=r"with rf_maxEpochs = 3 \(2 there\), the saved weights are the average of "
                                         r"epochs 2-3, but the interrupted run averaged epochs \[1, 2\]: give the "
                                         r"interrupted run's rf_maxEpochs again"):
        _fit(color_dataset, checkpoint=ckpt, resume=True, max_epochs=3, **kw2)


def test_averaged_weights_get_batchnorm_statistics_of_their_own_when_those_are_learned(color_dataset: Path) -> None:
    kw = dict(max_epochs=2, average_last_epochs=2, refit_last_layer=False, lr_per_mb=(0.01,))
    kept = _fit(color_dataset, freeze_batchnorm=True, **kw)
    learned = _fit(color_dataset, freeze_batchnorm=False, **kw)

    def stats(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v for k, v in state.items() if "running_" in k}

    initial, _ = Refiner(_config(), CLASSES, device="cpu", progress=False)._build()
    assert all(torch.equal(v, stats(initial.state_dict())[k]) for k, v in stats(kept.model_.state_dict()).items())
    # Re-estimated for the averaged weights: the first BatchNorm's statistics are those of its input
    # over the un-augmented training images (one batch of 18 here), not the last epoch's.
    assert learned.last_epoch_state_ is not None
    re, last = stats(learned.model_.state_dict()), stats(learned.last_epoch_state_)
    assert all(not torch.equal(re[k], last[k]) for k in re if k.endswith("running_var"))
    paths, _ = color_images(color_dataset)
    cache = decode_images(paths, learned.config.cache_size, learned.config.resize_mode, workers=0, progress=False)
    seen = []
    hook = learned.model_.backbone.bn1.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0]))
    learned.features(learned.model_.backbone, cache)
    hook.remove()
    x = torch.cat(seen).float()
    bn1 = learned.model_.backbone.bn1
    torch.testing.assert_close(bn1.running_mean, x.mean((0, 2, 3)), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(bn1.running_var, x.var((0, 2, 3)), rtol=1e-3, atol=1e-4)


def test_frozen_refinement_changes_only_the_last_layer(color_dataset: Path) -> None:
    r = _fit(color_dataset, freeze_weights=True, max_epochs=1)
    initial, _ = Refiner(_config(freeze_weights=True), CLASSES, device="cpu", progress=False)._build()
    assert same_weights(r.model_.backbone, initial.backbone)  # BatchNorm statistics included
    assert not torch.equal(r.model_.head.weight, initial.head.weight)
    assert not torch.equal(r.model_.head.bias, initial.head.bias)


def test_batchnorm_statistics_are_kept_unless_asked_to_reestimate(color_dataset: Path) -> None:
    initial, _ = Refiner(_config(), CLASSES, device="cpu", progress=False)._build()

    def stats(m: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {k: v for k, v in m.state_dict().items() if "running_" in k}

    def convs(m: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {k: v for k, v in m.state_dict().items() if k.endswith("conv_stem.weight")}

    kept = _fit(color_dataset, max_epochs=1, freeze_batchnorm=True).model_
    assert all(torch.equal(v, stats(initial)[k]) for k, v in stats(kept).items())
    assert not all(torch.equal(v, convs(initial)[k]) for k, v in convs(kept).items())  # weights did train
    moved = _fit(color_dataset, max_epochs=1, freeze_batchnorm=False).model_
    assert not all(torch.equal(v, stats(initial)[k]) for k, v in stats(moved).items())


# -- errors ---------------------------------------------------------------------------------------

def test_out_of_memory_is_a_clear_message(color_dataset: Path, tmp_path: Path) -> None:
    paths, _ = color_images(color_dataset)
    spill = tmp_path / "spill"
    # Terabytes: neither half the memory nor the free disk space holds them.
    with pytest.raises(RefineOutOfMemoryError, match="rf_maxTrainImages or lower rf_inputResolution"):
        decode_images(paths, 400_000, "squash", workers=0, progress=False, spill_dir=spill)
    assert list(spill.iterdir()) == []
    advice = _oom(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), "training on minibatches")
    assert isinstance(advice, RefineOutOfMemoryError) and "rf_mbSize" in str(advice)
    # oneDNN under a process memory limit (prlimit --as=4000000000) says it this way.
    onednn = _oom(RuntimeError("could not create a primitive"), "training on minibatches")
    assert isinstance(onednn, RefineOutOfMemoryError) and "leave this process more memory" in str(onednn)
    other = RuntimeError("shapes do not match")
    assert _oom(other, "training") is other


def test_decoded_images_beyond_memory_go_to_a_deleted_file_and_train_the_same(
        color_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths, labels = color_images(color_dataset)
    in_memory = decode_images(paths, RES, "crop", workers=0, progress=False)
    in_memory_fit = _fit(color_dataset, max_epochs=1)
    monkeypatch.setattr(refine, "available_memory", lambda: 1000)  # as if 1 kB were left
    spill = tmp_path / "spill"
    spilled = decode_images(paths, RES, "crop", workers=0, progress=False, spill_dir=spill)
    assert torch.equal(spilled, in_memory)
    assert list(spill.iterdir()) == []  # already unlinked: nothing is left behind, even after a crash
    maps = Path("/proc/self/maps")
    if maps.is_file():
        assert "imgclass_decoded_" in maps.read_text()  # but still mapped: the data lives in that file
    r = Refiner(_config(max_epochs=1), CLASSES, device="cpu", progress=False, spill_dir=spill)
    r.fit(paths, labels, paths[::3], labels[::3])
    assert same_weights(r.model_, in_memory_fit.model_)


def test_a_container_memory_limit_bounds_the_available_memory_and_spills_decoded_images(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # `docker run --memory=...` on a larger host: a cgroup v2 tree as the kernel lays it out (a test
    # cannot give itself a limit), read by the real code through the paths it reads.
    import psutil

    from imgclass import cpus

    cgroup = tmp_path / "sys_fs_cgroup"
    cgroup.mkdir()
    (cgroup / "memory.max").write_text("3000000\n")
    (cgroup / "memory.current").write_text("1200000\n")
    (cgroup / "memory.stat").write_text("anon 1000000\nfile 200000\ninactive_file 100000\n")
    listing = tmp_path / "proc_self_cgroup"
    listing.write_text("0::/\n")
    monkeypatch.setattr(cpus, "CGROUP_ROOT", cgroup)
    monkeypatch.setattr(cpus, "PROC_CGROUP", listing)
    # The limit leaves 1.9 MB (its inactive page cache reclaimable); the machine has far more.
    assert refine.available_memory() == 3000000 - (1200000 - 100000)
    spill = tmp_path / "spill"
    array = refine._uint8_array((2, 1000, 1000), spill, "decoding", progress=True)  # 2 MB > half of 1.9 MB
    assert "go to a file in" in capsys.readouterr().out and array.shape == (2, 1000, 1000)
    # A limit above the machine's memory: the machine's figure counts, and 2 MB stay in memory.
    (cgroup / "memory.max").write_text(f"{1 << 60}\n")
    assert 0 < refine.available_memory() <= psutil.virtual_memory().total
    refine._uint8_array((2, 1000, 1000), spill, "decoding", progress=True)
    assert capsys.readouterr().out == ""
    listing.unlink()  # no cgroups at all: the machine's figure
    assert 0 < refine.available_memory() <= psutil.virtual_memory().total


def test_bad_settings_fail_early() -> None:
    with pytest.raises(ValueError, match="mb_size"):
        RefineConfig(mb_size=0)
    with pytest.raises(ValueError, match="average_last_epochs"):
        RefineConfig(average_last_epochs=-1)
    with pytest.raises(ValueError, match="at least two classes"):
        Refiner(RefineConfig(), ["only"], device="cpu")


def test_test_labels_that_do_not_fit_the_test_images_fail_before_any_work(color_dataset: Path) -> None:
    paths, labels = color_images(color_dataset)
    refiner = Refiner(_config(max_epochs=1), CLASSES, device="cpu", progress=False)
    # Both failed after the first epoch's training, in its test pass, with a tensor-shape error.
    with pytest.raises(ValueError, match="3 test images but 1 labels"):
        refiner.fit(paths, labels, paths[:3], labels[:1])
    with pytest.raises(ValueError, match=f"test labels must be in 0..{len(CLASSES) - 1}"):
        refiner.fit(paths, labels, paths[:3], [len(CLASSES)] * 3)
    # Images of one class only: it trained, and the model could answer nothing but that class.
    with pytest.raises(ValueError, match=f"every training image is of class '{CLASSES[0]}'"):
        refiner.fit(paths, [0] * len(paths), [], [])
    assert not hasattr(refiner, "model_")


# -- what fit sets up around training ---------------------------------------------------------------

_FAULTS_OF_A_TRAINING_STEP = """
import resource, sys, torch
from imgclass.refine import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU(),
                          torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.ReLU())
x = torch.randn(16, 3, 128, 128)  # activations of 64 MB each, as in real minibatches
for _ in range(2):
    net(x).square().mean().backward()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(6):  # the same sizes again: glibc could reuse the freed memory
    net(x).square().mean().backward()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_training_steps_reuse_freed_memory_instead_of_page_faulting_it_in_again() -> None:
    import subprocess
    import sys

    def run(mode: str) -> tuple[str, int]:  # a fresh process each: malloc's state is per process
        out = subprocess.run([sys.executable, "-c", _FAULTS_OF_A_TRAINING_STEP, mode], capture_output=True,
                             text=True, check=True).stdout.split()
        return out[0], int(out[1])

    applied, kept = run("keep")
    if applied != "True":
        pytest.skip("not glibc: nothing to tune")
    _, default = run("default")
    # glibc's default: every activation freshly mapped and faulted in, ~330,000 faults (4 KB each) a step.
    # Kept, the heap still grows by a 64 MB block now and then (thread timing varies the order of frees:
    # 0 to 3 blocks in one step were seen), so the test counts six steps, not one, against the bound.
    assert default > 6 * 100_000
    assert kept < 0.1 * default


def test_deterministic_algorithms_without_nan_fill_and_restored_afterwards() -> None:
    import torch.utils.deterministic

    before = (torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory)
    with deterministic_algorithms():
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.utils.deterministic.fill_uninitialized_memory
    assert (torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory) == before


def test_library_defaults_are_those_of_parameters_py() -> None:
    from imgclass.params import load_params

    assert RefineConfig.from_params(load_params()) == RefineConfig()


def test_a_cap_on_training_images_keeps_every_class(color_dataset: Path) -> None:
    """rf_maxTrainImages picks at random, but never leaves a class out: its output would remain, and
    the last-layer fit would learn never to choose it."""
    labels = np.array([0] * 60 + [1] * 60 + [2])  # one image of class 2: a plain random 10 of 121 misses it
    for seed in range(5):
        refiner = Refiner(_config(max_train_images=10, seed=seed), CLASSES, device="cpu", progress=False)
        chosen = refiner._select_train(labels)
        assert len(chosen) == 10 and len(set(chosen.tolist())) == 10 and set(labels[chosen]) == {0, 1, 2}
    with pytest.raises(ValueError, match="rf_maxTrainImages = 2 is fewer than the 3 classes"):
        Refiner(_config(max_train_images=2), CLASSES, device="cpu", progress=False)  # before any work


def test_resume_refuses_a_checkpoint_with_more_epochs_than_asked(color_dataset: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "refine_checkpoint.pt"
    _fit(color_dataset, checkpoint=ckpt, max_epochs=2, average_last_epochs=0)
    with pytest.raises(ValueError, match="has 2 epochs done, more than rf_maxEpochs = 1"):
        _fit(color_dataset, checkpoint=ckpt, resume=True, max_epochs=1, average_last_epochs=0)


def test_images_missing_or_damaged_since_stage_1_are_named_in_one_line(color_dataset: Path, tmp_path: Path) -> None:
    paths, _ = color_images(color_dataset)
    gone = paths[4]
    gone.unlink()
    with pytest.raises(FileNotFoundError, match=rf"{gone.name}: no such file \(1 of the 18 images .*1_prepareData"):
        decode_images(paths, RES, "squash", workers=2, progress=False)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError) as e:  # from a decoding process: its one line, not torch's traceback
        decode_images([p for p in paths if p != gone] + [broken], RES, "squash", workers=2, progress=False)
    assert str(e.value) == f"{broken}: not an image (unrecognised file format, 12 bytes)"  # no traceback, no class name


_DECODE_UNDER_SPAWN = """
import multiprocessing, sys
from imgclass.refine import decode_images
if __name__ == "__main__":
    multiprocessing.set_start_method(sys.argv[1], force=True)
    cache = decode_images(sys.argv[3:], int(sys.argv[2]), "squash", workers=2, progress=False)
    print(int(cache.long().sum()))
"""


# "spawn": macOS's and Windows' way of starting processes; "forkserver": Linux's default from Python 3.14.
@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_decoding_processes_start_as_on_macos_and_windows(color_dataset: Path, tmp_path: Path, start_method: str) -> None:
    # Under "spawn" and "forkserver" the workers pickle what they run: a lambda or a local function
    # in the loader would work on Linux (fork) and fail on a Mac.
    import subprocess
    import sys

    paths, _ = color_images(color_dataset)
    script = tmp_path / "decode_spawn.py"  # a file: spawned workers re-import the main module
    script.write_text(_DECODE_UNDER_SPAWN)
    out = subprocess.run([sys.executable, str(script), start_method, str(RES), *map(str, paths)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == int(decode_images(paths, RES, "squash", workers=0, progress=False).long().sum())


@pytest.mark.parametrize("n", [33, 67, 993])
def test_batchnorm_statistics_reestimated_in_batches_of_equal_weight(n: int) -> None:
    """momentum None averages the batches' statistics alike: 33 images go as 17 + 16, not 32 + 1
    (where the last image alone would weigh as much as the other 32); 993 as 32 batches of 31 or 32."""
    refiner = Refiner(_config(freeze_batchnorm=False), CLASSES, device="cpu", progress=False)
    bn = torch.nn.BatchNorm2d(3)
    model = ImageClassifier(torch.nn.Sequential(bn, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()), 3, 3)
    cache = torch.zeros((n, 3, 8, 8), dtype=torch.uint8)
    cache[-1] = 255  # black images and a white one
    refiner._reestimate_batchnorm(model, cache, batch_size=32)
    x = refiner._normalize(cache.float())  # solid images: resizing them changes no mean
    black, white = x[0].mean((1, 2)), x[-1].mean((1, 2))
    error = (bn.running_mean - x.mean((0, 2, 3))).abs() / (white - black).abs()
    assert float(error.max()) < 0.01, error  # 32 + 1 would give 0.47


def test_out_of_memory_outside_a_training_step_is_advice_and_those_batches_follow_rf_mbsize(
        color_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last-layer fits and the scoring run in batches of twice rf_mbSize, so lowering it helps
    there too; running out of memory there gets the same advice as in a training step."""
    paths, _ = color_images(color_dataset)
    refiner = Refiner(_config(mb_size=5), CLASSES, device="cpu", progress=False)
    model, _ = refiner._build()
    sizes = []
    model.backbone.register_forward_hook(lambda m, inputs, out: sizes.append(len(inputs[0])))
    refiner.features(model.backbone, decode_images(paths, RES, "squash", workers=0, progress=False))
    assert sizes == [10, 8]  # 18 images

    def no_memory(*args: object, **kwargs: object) -> float:  # what the allocator raises on a GPU
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Refiner, "error_rate", no_memory)
    with pytest.raises(RefineOutOfMemoryError, match=r"scoring the images \(in batches of 12 images, twice rf_mbSize\): "
                                                     r"lower rf_mbSize"):
        _fit(color_dataset, max_epochs=1)

    def mismatch(*args: object, **kwargs: object) -> float:
        raise RuntimeError("shapes do not match")

    monkeypatch.setattr(Refiner, "error_rate", mismatch)
    with pytest.raises(RuntimeError, match="^shapes do not match$"):  # not memory: passed on as it is
        _fit(color_dataset, max_epochs=1)


def test_refine_config_says_what_it_expected() -> None:
    with pytest.raises(ValueError, match=r"RefineConfig\.momentum = 1\.0: expected in \[0, 1\)"):
        RefineConfig(momentum=1.0)
    with pytest.raises(ValueError, match=r"RefineConfig\.lr_per_mb = \(0\.001, 0\.0\): expected one or more values, all above 0"):
        RefineConfig(lr_per_mb=[0.001, 0.0])


def test_every_refinement_setting_comes_from_a_parameter_of_parameters_py() -> None:
    from dataclasses import fields

    from imgclass.params import SCHEMA, load_params
    from imgclass.refine import PARAM_OF_FIELD

    assert set(PARAM_OF_FIELD) == {f.name for f in fields(RefineConfig)} and set(PARAM_OF_FIELD.values()) <= set(SCHEMA)
    # Those that shape the refined network (not how many decoding processes, nor where weights lie),
    # with the values the parameters give, as stages 3-5 compare them.
    p = load_params()
    settings = RefineConfig.from_params(p).settings()
    assert set(settings) == set(PARAM_OF_FIELD.values()) - {"rf_workers", "rf_weightsDir"}
    assert settings == {k: p[k] for k in settings}


def test_a_schedule_cut_short_by_fewer_epochs_is_named() -> None:
    assert "0.0001 of the later epochs are never used" in RefineConfig(max_epochs=3).schedule_note()
    assert RefineConfig().schedule_note() == ""  # the default: 8 rates, 8 epochs
    assert RefineConfig(max_epochs=20).schedule_note() == ""  # the last rate repeats: nothing unused
    assert RefineConfig(max_epochs=3, lr_per_mb=[0.001] * 5, average_last_epochs=2).schedule_note() == ""  # one rate


def test_an_average_that_takes_in_every_epoch_is_named() -> None:
    note = RefineConfig(max_epochs=3, lr_per_mb=[0.001]).schedule_note()
    assert note == ("rf_averageLastEpochs = 4 and rf_maxEpochs = 3: the saved weights are the average of all 3 "
                    "epochs, the first included; rf_averageLastEpochs = 2 would leave it out")
    assert RefineConfig(max_epochs=4, lr_per_mb=[0.001], average_last_epochs=4).schedule_note().startswith("rf_average")
    for quiet in (dict(max_epochs=5), dict(max_epochs=1), dict(max_epochs=3, average_last_epochs=0)):
        assert RefineConfig(lr_per_mb=[0.001], **quiet).schedule_note() == "", quiet
    both = RefineConfig(max_epochs=3).schedule_note()  # the default schedule cut to 3 epochs: both notes
    assert "to shorten the schedule itself; and rf_averageLastEpochs = 4 and rf_maxEpochs = 3" in both


def test_an_epoch_interrupted_in_its_test_pass_is_not_trained_again(color_dataset: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while the first epoch's test error is computed: the checkpoint holds the epoch already,
    so --resume goes on with the second, after measuring the first's test error (the curves are those
    of the uninterrupted run, not with a gap at epoch 1)."""
    ckpt = tmp_path / "refine_checkpoint.pt"
    real = Refiner.error_rate

    def interrupted(self: Refiner, *args: object, **kwargs: object) -> float:
        raise KeyboardInterrupt

    monkeypatch.setattr(Refiner, "error_rate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _fit(color_dataset, checkpoint=ckpt, max_epochs=2, average_last_epochs=0)
    monkeypatch.setattr(Refiner, "error_rate", real)
    resumed = _fit(color_dataset, checkpoint=ckpt, resume=True, max_epochs=2, average_last_epochs=0)
    straight = _fit(color_dataset, max_epochs=2, average_last_epochs=0)
    assert resumed.history_.epoch == [1, 2] and resumed.history_.test_error[0] is not None
    assert resumed.history_.test_error == straight.history_.test_error
    assert same_weights(resumed.model_, straight.model_)
    assert resumed.history_.train_loss == straight.history_.train_loss  # epoch 1 was not trained twice


def test_in_a_log_the_epoch_bar_is_not_redrawn_at_every_step(color_dataset: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    # Captured output is no terminal, so bars redraw every 30 s: a step's new loss must not force a
    # redraw of its own (it did, showing "0/3" beside the loss of step 3).
    paths, labels = color_images(color_dataset)
    Refiner(_config(max_epochs=1), CLASSES, device="cpu", progress=True).fit(paths, labels)
    draws = [d for d in capsys.readouterr().err.replace("\n", "\r").split("\r") if d.startswith("epoch 1/1:")]
    assert len(draws) <= 2, draws


def test_the_class_averaged_held_out_error_is_kept_and_shown_for_unequal_classes(color_dataset: Path) -> None:
    """With 30 "ok" and 4 "defect" test images, 5.88% test error can be half the defects missed:
    the progress lines add the class-averaged error where the classes differ in size by 2x or more."""
    r = _fit(color_dataset, max_epochs=1)
    paths, labels = color_images(color_dataset)
    pixels = decode_images(paths, RES, "squash", workers=0, progress=False)
    y = torch.tensor(labels)
    with torch.no_grad():
        pred = r.model_.eval()(r._normalize(pixels.float())).argmax(1)
    # Labels that make some images wrong on purpose, in classes of unequal size.
    wrong = y.clone()
    wrong[0] = (wrong[0] + 1) % len(CLASSES)
    overall = r.error_rate(r.model_, pixels, wrong)
    per_class = [float((pred[wrong == k] != k).float().mean()) for k in range(len(CLASSES)) if (wrong == k).any()]
    assert overall == pytest.approx(float((pred != wrong).float().mean()))
    assert r.class_averaged_error_ == pytest.approx(np.mean(per_class))
    few = torch.cat([torch.nonzero(y == 0).ravel(), torch.nonzero(y == 1).ravel()[:1]])  # many of class 0, one of 1
    few_wrong = y[few].clone()
    few_wrong[-1] = 0  # labelled class 0: one class only, nothing to average
    r.error_rate(r.model_, pixels[few], few_wrong)
    assert r._class_avg(few_wrong) == ""
    r.error_rate(r.model_, pixels[few], y[few])
    expected = np.mean([float((pred[few][y[few] == k] != k).float().mean()) for k in (0, 1)])
    assert r._class_avg(y[few]) == f" (class-avg {100 * expected:.2f}%)"
    balanced = torch.cat([torch.nonzero(y == k).ravel()[:2] for k in range(len(CLASSES))])
    r.error_rate(r.model_, pixels[balanced], y[balanced])
    assert r._class_avg(y[balanced]) == ""  # equal classes: the two figures tell the same


def test_a_refinement_that_broke_the_features_is_said_to_have() -> None:
    """On sklearn's digits at 96 px training diverged: a last layer fitted on the refined features
    erred on half the training images (none before), and nothing said so. Judged on training images only."""
    from imgclass.refine import collapse_note

    assert collapse_note(0.0, 0.5267).startswith("refining made the features worse on the training images themselves:")
    assert "52.67% of them, on the pretrained ones 0.00%" in collapse_note(0.0, 0.5267)
    assert collapse_note(0.0, 0.0) == collapse_note(0.0, 0.04) == collapse_note(0.10, 0.18) == ""  # within noise
    assert collapse_note(None, 0.9) == ""  # resumed: the first fit's error is not known


def test_a_diverged_refinement_warns_and_a_sound_one_does_not(color_dataset: Path, tmp_path: Path) -> None:
    sound = _fit(color_dataset, max_epochs=1)
    assert sound.initial_fit_error_ is not None and sound.collapse_note_ == ""
    wild = dict(lr_per_mb=(0.3,), head_lr_factor=10.0)  # steps far too large
    broken = _fit(color_dataset, max_epochs=2, **wild)
    assert broken.collapse_note_.startswith("refining made the features worse"), (broken.initial_fit_error_, broken.saved_as_)
    # What is saved is not the broken network but the pretrained one, with a last layer fitted on its
    # features: as good on the training images as that first fit, where the broken one erred widely.
    assert broken.saved_as_.startswith("the PRETRAINED network") and "Saved instead of the refined" in broken.collapse_note_
    pretrained = build_model(broken.spec, pretrained=True)
    for (name, kept), (_, original) in zip(broken.model_.backbone.state_dict().items(),
                                           pretrained.backbone.state_dict().items()):
        assert torch.equal(kept, original), name
    paths, labels = color_images(color_dataset)
    pixels = decode_images(paths, RES, broken.config.resize_mode, workers=0, progress=False)
    assert broken.error_rate(broken.model_, pixels, torch.tensor(labels)) <= broken.initial_fit_error_ + 0.05
    # Its last layer is fitted from the same start as the first fit, whatever the broken run left:
    # three epochs instead of two give the same saved model.
    longer = _fit(color_dataset, max_epochs=3, **wild)
    assert longer.collapse_note_ and same_weights(longer.model_.head, broken.model_.head)
    assert broken.fallback_ == "pretrained" and sound.fallback_ == ""
    # Refining from a random last layer (a remedy the warning names): the pretrained features are still
    # fitted once to judge by, so a divergence there is caught too, not saved with no word.
    unjudged = _fit(color_dataset, max_epochs=2, init_last_layer=False, **wild)
    assert unjudged.initial_fit_error_ is not None and unjudged.fallback_ == "pretrained"
    assert unjudged.error_rate(unjudged.model_, pixels, torch.tensor(labels)) <= unjudged.initial_fit_error_ + 0.05
    # Frozen (only the last layer trained): a last layer worn down by steps far too large gives way to
    # the first fit; steps of a sane size keep what they trained.
    frozen = _fit(color_dataset, max_epochs=2, freeze_weights=True, lr_per_mb=(3.0,), head_lr_factor=10.0)
    assert frozen.collapse_note_.startswith("training the last layer made it worse on the training images")
    assert frozen.saved_as_.startswith("the last layer fitted on the features") and frozen.saved_test_error_ == 0.0
    assert frozen.fallback_ == "first fit"
    calm = _fit(color_dataset, max_epochs=2, freeze_weights=True, lr_per_mb=(0.3,), head_lr_factor=10.0)
    assert calm.collapse_note_ == "" and calm.saved_as_ == "weights averaged over epochs 1-2"
    # Interrupted after one epoch and resumed: the first fit's error comes from the checkpoint.
    ckpt = tmp_path / "ckpt.pt"
    _fit(color_dataset, checkpoint=ckpt, max_epochs=1, **wild)
    resumed = _fit(color_dataset, checkpoint=ckpt, resume=True, max_epochs=2, **wild)
    assert resumed.initial_fit_error_ == broken.initial_fit_error_ and resumed.collapse_note_ == broken.collapse_note_


def test_the_curves_star_of_svm_dnn_refined_says_it_is_the_networks_own(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Stage 5 scores svmDnnRefined's SVM, not the network's last layer that the star measures."""
    import imgclass.fileio

    import matplotlib.pyplot as plt

    labels = []

    def save_figure(fig: object, path: Path) -> Path:  # reads the star's legend entry, then closes as saving does
        labels.append([t.get_text() for t in fig.axes[0].get_legend().get_texts()][-1])
        plt.close(fig)
        return Path(path)

    monkeypatch.setattr(imgclass.fileio, "save_figure", save_figure)
    history = refine.History(epoch=[1, 2], train_loss=[1.0, 0.5], train_error=[0.3, 0.1], test_error=[0.4, 0.2])
    for svm_after in (False, True):
        refine.plot_history(history, tmp_path / "c.png", saved_test_error=0.15, saved_as="x", svm_after=svm_after)
    assert labels == ["saved model: 15.00% test error",
                      "saved network's own last layer: 15.00% test error (stage 5 scores the SVM on its features)"]


def test_gradient_clipping_bounds_every_step(color_dataset: Path) -> None:
    """rf_maxGradNorm: each step's gradient is scaled to at most this norm, so a tiny bound leaves
    the pretrained layers all but as they were, where the same steps unclipped move them."""
    model, _ = Refiner(_config(), CLASSES, device="cpu", progress=False)._build()  # as refinement starts
    start = {k: v.clone() for k, v in model.backbone.state_dict().items() if v.is_floating_point()}

    def moved(r: Refiner) -> float:
        now = r.model_.backbone.state_dict()
        return max(float((now[k] - v).abs().max()) for k, v in start.items())

    steps = dict(max_epochs=1, lr_per_mb=(0.01,), average_last_epochs=0, l2_reg_weight=0.0)  # decay moves them too
    assert moved(_fit(color_dataset, **steps)) > 1e-3
    assert moved(_fit(color_dataset, max_grad_norm=1e-9, **steps)) < 1e-6
    with pytest.raises(ValueError, match="max_grad_norm = -1.0: expected 0 \\(off\\) or more"):
        RefineConfig(max_grad_norm=-1.0)


def test_a_checkpoint_written_before_gradient_clipping_existed_resumes_as_unclipped(color_dataset: Path,
                                                                                    tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt.pt"
    _fit(color_dataset, checkpoint=ckpt, max_epochs=1)
    payload = torch.load(ckpt, weights_only=True)
    key = json.loads(payload["key_json"])
    del key["max_grad_norm"]  # as written before rf_maxGradNorm
    payload["key_json"] = json.dumps(key)
    torch.save(payload, ckpt)
    assert _fit(color_dataset, checkpoint=ckpt, resume=True, max_epochs=2).history_.epoch == [1, 2]
    with pytest.raises(ValueError, match=r"rf_maxGradNorm = 0.0 there, 1.0 now"):  # clipped now: not the same run
        _fit(color_dataset, checkpoint=ckpt, resume=True, max_epochs=2, max_grad_norm=1.0)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="advisory locks: POSIX")
def test_a_second_refinement_of_the_same_data_set_is_refused_while_the_first_runs(tmp_path: Path) -> None:
    """Stage 2 started in a second terminal called the running one's checkpoint 'an interrupted
    refinement' and suggested --resume (two trainings into one checkpoint) or --restart (deleting it
    under the running one)."""
    import fcntl

    from conftest import run_script

    small = ["--set", "demoImagesPerClass=4", "--set", "rf_inputResolution=64", "--set", "classifier=dnn"]
    for script in ("0_downloadData.py", "1_prepareData.py"):
        run_script(script, *small, data_dir=tmp_path)
    proc_dir = tmp_path / "proc" / "fashionTextureDemo"
    checkpoint = proc_dir / "refine_checkpoint.pt"
    checkpoint.write_bytes(b"the running refinement's")
    with open(proc_dir / ".refine.lock", "a+") as held:  # as the running stage 2 holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242")
        held.flush()
        for extra in ((), ("--restart",), ("--resume",)):
            proc = run_script("2_refineDNN.py", *small, *extra, data_dir=tmp_path, check=False)
            assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
            assert "another 2_refineDNN.py (process 4242) is refining this data set now" in proc.stderr, proc.stderr
            assert checkpoint.read_bytes() == b"the running refinement's"
    # Released (the first run ended, or was killed): the checkpoint is an interrupted run's again,
    # and the temp file the killed run was writing (never renamed) is removed.
    stale = proc_dir / ".refine_checkpoint.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    proc = run_script("2_refineDNN.py", *small, data_dir=tmp_path, check=False)
    assert proc.returncode == 1 and "holds an interrupted refinement" in proc.stderr, proc.stderr
    assert not stale.exists()


def test_flips_happen_only_when_enabled() -> None:
    # Dark left half, bright right half: with flip off, no crop or turn puts the bright side on the left
    # (an asymmetric class, a left-facing logo, must not be trained on its mirror image).
    img = torch.zeros(3, RES, RES, dtype=torch.uint8)
    img[:, :, RES // 2:] = 255
    batch = img.expand(32, 3, RES, RES).contiguous()

    def mirrored(flip: bool) -> int:
        out = Augmenter(RES, crop_scale_min=0.9, rotation_deg=5, flip=flip, color_jitter=0.0)(batch, torch.Generator().manual_seed(0))
        left, right = out[..., : RES // 2].mean(dim=(1, 2, 3)), out[..., RES // 2:].mean(dim=(1, 2, 3))
        return int((left > right).sum())

    assert mirrored(False) == 0
    assert 5 < mirrored(True) < 27  # about half: the check above can see a flip


def test_the_plain_augmenter_resizes_cached_images_to_the_input_resolution() -> None:
    # With augmentation on, images are cached larger than rf_inputResolution; the un-augmented passes
    # (test error, last-layer fits, BatchNorm re-estimation) resize them with the identity augmenter.
    big = torch.full((2, 3, RES + 12, RES + 12), 90, dtype=torch.uint8)
    plain = Augmenter(RES, crop_scale_min=1.0, rotation_deg=0, flip=False, color_jitter=0.0)
    out = plain(big, torch.Generator())
    assert out.shape == (2, 3, RES, RES)
    assert torch.allclose(out, torch.full_like(out, 90.0), atol=1e-3)


def test_balancing_never_draws_an_image_twice_before_every_image_once() -> None:
    # 3 images topped up to 8: one copy each, and 2 more of two different images, whatever the seed.
    labels = np.array([0] * 8 + [1] * 3)
    for seed in range(30):
        counts = np.bincount(balanced_indices(labels, 2, np.random.default_rng(seed)), minlength=len(labels))
        assert sorted(counts[labels == 1].tolist()) == [2, 3, 3], seed


def test_balanced_training_keeps_each_copy_with_its_own_label(color_dataset: Path) -> None:
    # Balancing repeats the small class's images; a minibatch must pair each copy with its own label
    # (the images are cached once, so the cache row and the label's index differ). With a learning rate
    # too small to matter, the first epoch's error is that of the fitted last layer: near 0.
    paths, labels = color_images(color_dataset)
    # The first class small (2 images instead of 6): its copies come first, and each later image's
    # label would be taken from an earlier one's place if labels followed the cache rows.
    keep = [i for i, y in enumerate(labels) if y != 0 or i % 6 < 2]
    assert [labels[i] for i in keep][:3] == [0, 0, 1]
    tiny = dict(max_epochs=1, lr_per_mb=(1e-7,), dropout=0.0, aug_color_jitter=0.0, freeze_batchnorm=True,
                init_last_layer=True, balance_training_set=True)
    r = Refiner(_config(**tiny), CLASSES, device="cpu", progress=False).fit(
        [paths[i] for i in keep], [labels[i] for i in keep], [], [])
    assert r.history_.train_error[0] <= 0.1


def test_a_checkpoint_is_replaced_whole_not_rewritten_in_place(color_dataset: Path, tmp_path: Path) -> None:
    # A crash while writing epoch 2's checkpoint must leave epoch 1's to resume from: the new one is
    # written beside it and renamed over it, so the file held open after epoch 1 is still epoch 1's.
    ckpt = tmp_path / "ckpt.pt"
    held: list = []
    paths, labels = color_images(color_dataset)
    try:
        Refiner(_config(max_epochs=2), CLASSES, device="cpu", progress=False).fit(
            paths, labels, [], [], checkpoint=ckpt, on_epoch=lambda h: held.append(open(ckpt, "rb")))
        assert len(held) == 2
        assert os.fstat(held[0].fileno()).st_ino != os.stat(ckpt).st_ino
        first = torch.load(held[0], weights_only=False)
        assert json.loads(first["history_json"])["epoch"] == [1]
    finally:
        for f in held:
            f.close()


@pytest.mark.skipif(sys.platform == "win32", reason="advisory locks: POSIX")
def test_a_refinement_running_in_another_shell_is_not_called_interrupted(tmp_path: Path) -> None:
    """Stage 3 for dnn while stage 2 refines in another shell (its checkpoint is there, as for a stopped
    run) said 'an interrupted refinement ... finish it first (--resume)', which that stage 2 refuses
    while the first runs. The other process holds the lock here, as stage 2 does while it refines."""
    import subprocess

    from imgclass.refine import REFINE_LOCK, pending_refinement_note

    proc_dir = tmp_path / "proc"
    proc_dir.mkdir()
    (proc_dir / "refine_checkpoint.pt").write_bytes(b"epoch 3 of the running refinement")
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import sys; from imgclass.fileio import hold_lock; hold_lock({str(proc_dir / REFINE_LOCK)!r}); "
                               "print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        note = pending_refinement_note(proc_dir, "model_refined.pt")
        assert note == (f"2_refineDNN.py (process {holder.pid}) is refining this data set now; this uses the last "
                        "finished network, model_refined.pt: to use the new one, run this again once it has finished")
    finally:
        holder.communicate("", timeout=60)  # stdin closed: it ends, and the system drops its lock
    # Stopped (or killed) with its checkpoint left: interrupted, to be resumed.
    assert "holds an interrupted refinement" in (pending_refinement_note(proc_dir, "model_refined.pt") or "")
    (proc_dir / "refine_checkpoint.pt").unlink()
    assert pending_refinement_note(proc_dir, "model_refined.pt") is None


def test_features_for_the_last_layer_are_full_float32_where_training_runs_in_bfloat16(color_dataset: Path) -> None:
    """On a CUDA GPU training runs in bfloat16 autocast; the features the last layer is fitted on
    (and selectClassifier.py's SVMs) were computed so too, while stage 3 computes the features it is
    used on in float32 (bf16 keeps about 3 significant digits). bf16 autocast is forced here on the CPU, which
    has it too: the features must be those of float32."""
    paths, _ = color_images(color_dataset)
    exact = Refiner(_config(), CLASSES, device="cpu", progress=False)
    model, _ = exact._build()
    cache = decode_images(paths[:6], exact.config.cache_size, exact.config.resize_mode, workers=0, progress=False)
    want = exact.features(model.backbone, cache)
    mixed = Refiner(_config(), CLASSES, device="cpu", progress=False, mixed_precision=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what the bf16 path gave: features far from float32's
        assert not torch.allclose(model.backbone(next(mixed._plain_batches(cache, 6))).float(), want, atol=1e-3)
    torch.testing.assert_close(mixed.features(model.backbone, cache), want, rtol=0, atol=0)


def test_out_of_memory_computing_features_after_fitting_is_advice(color_dataset: Path) -> None:
    """selectClassifier.py computes the held-out images' features after fit() returns: an out-of-memory
    error there ended in a traceback (fit() alone turned it into advice). A network whose forward
    asks the allocator for more than any machine has raises torch's real error."""

    class Greedy(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.empty(2 ** 50, dtype=torch.uint8)

    r = Refiner(_config(), CLASSES, device="cpu", progress=False)
    paths, _ = color_images(color_dataset)
    cache = decode_images(paths[:4], r.config.cache_size, r.config.resize_mode, workers=0, progress=False)
    with pytest.raises(RefineOutOfMemoryError, match=r"computing the features of 4 images \(in batches of 12 images"):
        r.features(Greedy(), cache)
