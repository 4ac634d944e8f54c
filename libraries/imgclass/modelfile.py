"""The model file stage 2 writes and stages 3-6 read: a backbone, its preprocessing, an optional head.

Saved as a plain state dict plus a JSON-able spec and loaded with `weights_only=True`, so opening a
model file never runs code from it.
"""

from __future__ import annotations

import json
import numbers
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from imgclass.backbones import create_backbone, get_info
from imgclass.fileio import atomic_open
from imgclass.images import MAX_RESOLUTION, MIN_RESOLUTION, RESIZE_MODES


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model and feed it images the way it was trained."""

    backbone: str
    resolution: int
    resize_mode: str = "squash"  # what model files written before resize modes existed were fed
    kind: str = "fixed"  # "fixed" (pretrained as is) or "refined" (fine-tuned, with a class head)
    classes: tuple[str, ...] = field(default_factory=tuple)  # the head's outputs (refined models)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        get_info(self.backbone)  # an unknown backbone names the known ones
        if not isinstance(self.resolution, numbers.Integral) or not MIN_RESOLUTION <= self.resolution <= MAX_RESOLUTION:
            # "a whole number": 64.0 is in range, and "expected 32 to 1024" alone would not say what is wrong with it.
            raise ValueError(f"resolution = {self.resolution!r}: expected a whole number of pixels, {MIN_RESOLUTION} "
                             f"to {MAX_RESOLUTION}")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode {self.resize_mode!r}: allowed values are {', '.join(RESIZE_MODES)}")
        if self.kind not in ("fixed", "refined"):
            raise ValueError(f"kind {self.kind!r}: allowed values are 'fixed', 'refined'")
        if self.kind == "refined" and len(self.classes) < 2:
            raise ValueError(f"a refined model needs two or more classes, got {list(self.classes)}")

    @property
    def mean(self) -> tuple[float, float, float]:
        return get_info(self.backbone).mean

    @property
    def std(self) -> tuple[float, float, float]:
        return get_info(self.backbone).std

    @property
    def feature_dim(self) -> int:
        return get_info(self.backbone).feature_dim

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["classes"] = list(self.classes)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ModelSpec:
        d = dict(d)
        d["classes"] = tuple(d.get("classes", ()))
        return cls(**d)


class ImageClassifier(torch.nn.Module):
    """Backbone features -> dropout -> linear layer with one output per class."""

    def __init__(self, backbone: torch.nn.Module, feature_dim: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.dropout = torch.nn.Dropout(dropout)
        self.head = torch.nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.backbone(x)))


def build_model(spec: ModelSpec, pretrained: bool = True, weights_dir: str | Path | None = None) -> torch.nn.Module:
    """The network a spec describes: the bare backbone (fixed) or backbone + head (refined)."""
    backbone = create_backbone(spec.backbone, pretrained=pretrained, weights_dir=weights_dir)
    if spec.kind == "fixed":
        return backbone
    return ImageClassifier(backbone, spec.feature_dim, len(spec.classes), spec.dropout)


def save_model(path: str | Path, model: torch.nn.Module, spec: ModelSpec, extra: dict[str, Any] | None = None) -> Path:
    payload = {
        "spec_json": json.dumps(spec.to_json()),
        "state_dict": model.state_dict(),
        "extra_json": json.dumps(extra or {}),
    }
    # Into an open file, not a path: torch names the archive inside after the file it writes, and the
    # temp file's random name would make every save of the same model differ byte for byte (the
    # feature cache and stage 5's provenance check key on the file's content).
    with atomic_open(path, "wb") as f:
        torch.save(payload, f)
    return Path(path)


def load_model(path: str | Path) -> tuple[torch.nn.Module, ModelSpec]:
    """Rebuild the model from its file (no pretrained weights are read: the file holds them all)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run scripts/2_refineDNN.py first")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        spec = ModelSpec.from_json(json.loads(payload["spec_json"]))
    except Exception as e:  # noqa: BLE001 - a damaged or foreign file gets one clear message
        raise ValueError(f"{path}: not a model file written by scripts/2_refineDNN.py ({e})") from e
    model = build_model(spec, pretrained=False)
    model.load_state_dict(payload["state_dict"])
    return model.eval(), spec


def load_model_info(path: str | Path) -> tuple[ModelSpec, dict[str, Any]]:
    """The spec of a model file and what stage 2 stored beside the weights (the split it was refined
    on, its settings), without building the network."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        # every model file has its spec: without one, it is not ours
        return ModelSpec.from_json(json.loads(payload["spec_json"])), json.loads(payload.get("extra_json", "{}"))
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged or foreign file gets one clear message
        raise ValueError(f"{path}: not a model file written by scripts/2_refineDNN.py ({e})") from e


def load_model_extra(path: str | Path) -> dict[str, Any]:
    """What stage 2 stored beside the weights (the split it was refined on, its settings)."""
    return load_model_info(path)[1]


def spec_settings(spec: ModelSpec) -> dict[str, Any]:
    """The parameters a model file's spec answers to, by their PARAMETERS.py names."""
    return {"rf_pretrainedModel": spec.backbone, "rf_inputResolution": spec.resolution, "rf_resizeMode": spec.resize_mode}
