"""The same refinement, features and scoring on a CUDA GPU. Skipped on machines without one (CI has
none); run on a GPU machine with `python -m pytest tests/test_gpu.py`. The other test files also run
their stage scripts on the GPU there, since stages pick CUDA when it is present, and
tests/test_refine.py checks same seed, same result and an exact resume on CUDA as on the CPU."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import COLOR_CLASSES, color_images
from imgclass.backbones import create_backbone
from imgclass.features import Featurizer
from imgclass.modelfile import ModelSpec, load_model, save_model
from imgclass.refine import RefineConfig, Refiner

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")

RES = 64
CLASSES = COLOR_CLASSES


def _fit(color_dataset: Path, checkpoint: Path | None = None, resume: bool = False, **kw: object) -> Refiner:
    base: dict[str, object] = dict(resolution=RES, mb_size=6, max_epochs=2, lr_per_mb=(0.001,), workers=0, seed=3)
    base.update(kw)
    paths, labels = color_images(color_dataset)
    return Refiner(RefineConfig(**base), CLASSES, device="cuda", progress=False).fit(  # type: ignore[arg-type]
        paths, labels, paths[::3], labels[::3], checkpoint=checkpoint, resume=resume)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_refinement_on_cuda_trains_in_bfloat16_and_its_network_scores_alike_on_a_cpu(
        color_dataset: Path, tmp_path: Path) -> None:
    r = _fit(color_dataset, max_epochs=3, init_last_layer=False)  # a random last layer: much to learn
    assert r.device.type == "cuda" and r.mixed_precision == torch.cuda.is_bf16_supported()
    h = r.history_
    assert h.train_loss[-1] < h.train_loss[0], h.train_loss
    assert next(r.model_.parameters()).device.type == "cuda"
    # Saved from the GPU, loaded where there is none: stage 3 or the web service on a CPU machine.
    spec = ModelSpec("efficientnet_lite0", RES, "squash", kind="refined", classes=CLASSES)
    model, spec = load_model(save_model(tmp_path / "model_refined.pt", r.model_, spec))
    assert all(p.device.type == "cpu" for p in model.parameters())
    paths, _ = color_images(color_dataset)
    on_gpu = Featurizer(r.model_, spec, batch_size=4, engine="torch", device="cuda").featurize_paths(paths, progress=False)
    on_cpu = Featurizer(model, spec, batch_size=4, engine="onnx", export_dir=tmp_path).featurize_paths(paths, progress=False)
    assert _cosine(on_gpu.features, on_cpu.features).min() >= 0.999
    assert on_gpu.probs is not None and on_cpu.probs is not None
    assert (on_gpu.probs.argmax(1) == on_cpu.probs.argmax(1)).all()
    assert np.abs(on_gpu.probs - on_cpu.probs).max() < 0.02


def test_features_on_cuda_match_those_of_the_cpu_engine(color_dataset: Path, tmp_path: Path) -> None:
    backbone = create_backbone("efficientnet_lite0")
    spec = ModelSpec("efficientnet_lite0", RES, "pad", kind="fixed")
    paths, _ = color_images(color_dataset)
    gpu = Featurizer(backbone, spec, batch_size=5, flip_average=True)  # "auto": the torch engine on CUDA
    assert gpu.engine.name == "torch-cuda"
    cpu = Featurizer(backbone, spec, batch_size=5, flip_average=True, engine="onnx", export_dir=tmp_path)
    tf32 = torch.backends.cudnn.allow_tf32
    a = gpu.featurize_paths(paths, progress=False).features
    b = cpu.featurize_paths(paths, progress=False).features
    assert a.dtype == np.float32 and a.shape == b.shape
    # Full float32 on the GPU: TF32 convolutions put them up to 2e-2 apart (H200, 2026-12-01).
    assert np.abs(a - b).max() < 1e-3, np.abs(a - b).max()
    assert torch.backends.cudnn.allow_tf32 == tf32  # the process-wide setting is left as it was


def test_a_network_on_cuda_exports_to_onnx_without_being_moved_first(color_dataset: Path, tmp_path: Path) -> None:
    """ONNX export runs on the CPU: static_padding's check run and the exporters' example inputs are
    CPU tensors, so a network refined on CUDA (Refiner.model_) failed there with 'Input type
    (torch.FloatTensor) and weight type (torch.cuda.FloatTensor) should be the same'."""
    from imgclass.export import export_model
    from imgclass.modelfile import build_model

    spec = ModelSpec("efficientnet_lite0", RES, "squash", kind="refined", classes=CLASSES)
    on_cpu = build_model(spec)
    on_gpu = copy.deepcopy(on_cpu).cuda()
    paths, _ = color_images(color_dataset)
    onnx = Featurizer(on_gpu, spec, batch_size=4, engine="onnx", export_dir=tmp_path).featurize_paths(paths, progress=False)
    plain = Featurizer(on_cpu, spec, batch_size=4, engine="onnx", export_dir=tmp_path / "cpu").featurize_paths(
        paths, progress=False)
    np.testing.assert_allclose(onnx.features, plain.features, atol=1e-4)
    bundle = export_model(on_gpu, spec, tmp_path / "bundle", "dnn")
    assert bundle.classes == CLASSES
    assert next(on_gpu.parameters()).device.type == "cuda"  # the model given stays where it was
