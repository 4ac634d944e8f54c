"""Run the network over images: penultimate-layer features (and class probabilities for refined models).

Images are decoded and resized in DataLoader worker processes while the network runs, and each
image is decoded once at reduced JPEG scale (see images.load_rgb). With `flip_average`, an image's
features are the mean of its own and its mirror image's: cheap test-time augmentation that makes the
features less sensitive to which way a garment faces.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from imgclass.images import load_square
from imgclass.modelfile import ImageClassifier, ModelSpec


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the network's input: resize to a square, scale, normalise."""

    resolution: int
    resize_mode: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> Preprocess:
        return cls(spec.resolution, spec.resize_mode, spec.mean, spec.std)

    def load(self, source: str | Path | bytes) -> np.ndarray:
        """Decoded, resized image: HxWx3 uint8."""
        return load_square(source, self.resolution, self.resize_mode)

    def normalize(self, batch_uint8: torch.Tensor) -> torch.Tensor:
        """(N, 3, R, R) uint8 -> float32 normalised, channels-last for faster CPU convolutions."""
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        x = (batch_uint8.float() - mean) / std
        return x.contiguous(memory_format=torch.channels_last)


class _ImageFiles(torch.utils.data.Dataset):
    def __init__(self, paths: Sequence[str | Path], preprocess: Preprocess) -> None:
        self.paths = list(paths)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        # uint8 CHW: a quarter of the bytes of float32 to send between processes.
        return torch.from_numpy(self.preprocess.load(self.paths[i])).permute(2, 0, 1).contiguous()


@dataclass
class FeatureResult:
    features: np.ndarray  # (N, D) float32 penultimate-layer features
    probs: np.ndarray | None  # (N, K) class probabilities, refined models only


class Featurizer:
    """Features (and probabilities) for lists of image files or decoded images."""

    def __init__(
        self,
        model: torch.nn.Module,
        spec: ModelSpec,
        batch_size: int = 32,
        flip_average: bool = True,
        workers: int = 2,
        device: str | torch.device | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size = {batch_size}: must be >= 1")
        self.spec = spec
        self.preprocess = Preprocess.from_spec(spec)
        self.batch_size = batch_size
        self.flip_average = flip_average
        self.workers = workers
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.eval().to(self.device).to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def _forward(self, batch_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.preprocess.normalize(batch_uint8).to(self.device)
        body = self.model.backbone if isinstance(self.model, ImageClassifier) else self.model
        if self.flip_average:
            both = body(torch.cat([x, x.flip(3)]))
            feats = (both[: len(x)] + both[len(x):]) / 2
        else:
            feats = body(x)
        probs = None
        if isinstance(self.model, ImageClassifier):
            probs = torch.softmax(self.model.head(feats), dim=1)
        return feats, probs

    def featurize_arrays(self, images: np.ndarray) -> FeatureResult:
        """Images already decoded and resized: (N, R, R, 3) uint8."""
        batch = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        feats, probs = self._forward(batch)
        return FeatureResult(feats.float().cpu().numpy(), None if probs is None else probs.float().cpu().numpy())

    def featurize_paths(self, paths: Sequence[str | Path], progress: bool = True, desc: str = "featurize") -> FeatureResult:
        loader = torch.utils.data.DataLoader(
            _ImageFiles(paths, self.preprocess),
            batch_size=self.batch_size,
            num_workers=min(self.workers, max(1, len(paths) // self.batch_size)) if self.workers else 0,
            shuffle=False,
        )
        feats, probs = [], []
        with tqdm(total=len(paths), desc=desc, unit="img", disable=not progress) as bar:
            for batch in loader:
                f, p = self._forward(batch)
                feats.append(f.float().cpu().numpy())
                if p is not None:
                    probs.append(p.float().cpu().numpy())
                bar.update(len(batch))
        dim = self.spec.feature_dim
        features = np.concatenate(feats) if feats else np.zeros((0, dim), np.float32)
        return FeatureResult(features.astype(np.float32), np.concatenate(probs) if probs else None)


def default_device() -> torch.device:
    """CUDA, else Apple MPS, else the CPU (with all its cores for the convolutions)."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    torch.set_num_threads(os.cpu_count() or 1)
    return torch.device("cpu")
