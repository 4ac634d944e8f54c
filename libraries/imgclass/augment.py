"""Random changes to training images, done on whole batches of tensors.

Each training image is decoded and resized once (to a square slightly larger than the network's
input) and kept as uint8; every epoch then draws, per image, a random resized crop, a small rotation,
a horizontal flip and a mild colour change. The geometric part is one affine warp per batch
(`grid_sample`), so augmenting 32 images costs a few milliseconds instead of 32 PIL pipelines.
Labels are never touched, and the output is always `resolution` x `resolution`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augmenter:
    """Random resized crop + rotation + flip + colour jitter; each can be switched off.

    crop_scale_min: smallest fraction of the image area a crop keeps (1.0 = no cropping).
    rotation_deg: largest rotation either way, in degrees (0 = none).
    flip: mirror half of the images left-right.
    color_jitter: largest relative change of brightness, contrast and saturation (0 = none).
    """

    resolution: int
    crop_scale_min: float = 0.6
    rotation_deg: float = 10.0
    flip: bool = True
    color_jitter: float = 0.2

    def __post_init__(self) -> None:
        if not 0.0 < self.crop_scale_min <= 1.0:
            raise ValueError(f"crop_scale_min = {self.crop_scale_min}: must be in (0, 1]")
        if not 0.0 <= self.rotation_deg <= 180.0:
            raise ValueError(f"rotation_deg = {self.rotation_deg}: must be in [0, 180]")
        if not 0.0 <= self.color_jitter < 1.0:
            raise ValueError(f"color_jitter = {self.color_jitter}: must be in [0, 1)")

    @property
    def is_identity(self) -> bool:
        return self.crop_scale_min >= 1.0 and self.rotation_deg == 0 and not self.flip and self.color_jitter == 0

    def _affine(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """(n, 2, 3) maps from output to input coordinates (both in [-1, 1])."""
        u = torch.rand(n, 6, generator=gen, dtype=torch.float64)
        # Crop: area fraction in [crop_scale_min, 1], aspect ratio log-uniform in [3/4, 4/3].
        area = self.crop_scale_min + (1.0 - self.crop_scale_min) * u[:, 0]
        aspect = torch.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[:, 1])
        if self.crop_scale_min >= 1.0:
            aspect = torch.ones(n, dtype=torch.float64)
        w = torch.sqrt(area * aspect).clamp(max=1.0)
        h = torch.sqrt(area / aspect).clamp(max=1.0)
        tx = (1.0 - w) * (2 * u[:, 2] - 1)
        ty = (1.0 - h) * (2 * u[:, 3] - 1)
        angle = math.radians(self.rotation_deg) * (2 * u[:, 4] - 1)
        sign = torch.where(u[:, 5] < 0.5, -1.0, 1.0) if self.flip else torch.ones(n, dtype=torch.float64)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack([
            torch.stack([w * cos * sign, -h * sin, tx], dim=1),
            torch.stack([w * sin * sign, h * cos, ty], dim=1),
        ], dim=1)
        return theta.float()

    def _color(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """x: float (n, 3, R, R) in [0, 255]."""
        n = x.shape[0]
        j = self.color_jitter
        f = 1.0 + j * (2 * torch.rand(n, 3, 1, 1, 1, generator=gen) - 1)
        brightness, contrast, saturation = f[:, 0], f[:, 1], f[:, 2]
        x = x * brightness.to(x.device)
        gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        x = gray + (x - gray) * saturation.to(x.device)
        mean = gray.mean(dim=(2, 3), keepdim=True)
        x = mean + (x - mean) * contrast.to(x.device)
        return x.clamp_(0.0, 255.0)

    def __call__(self, batch_uint8: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """(n, 3, S, S) uint8 -> (n, 3, resolution, resolution) float in [0, 255]."""
        if batch_uint8.ndim != 4 or batch_uint8.shape[1] != 3:
            raise ValueError(f"expected a (n, 3, H, W) batch, got {tuple(batch_uint8.shape)}")
        n, r = batch_uint8.shape[0], self.resolution
        x = batch_uint8.float()
        if self.crop_scale_min >= 1.0 and self.rotation_deg == 0 and not self.flip:
            if x.shape[-1] != r or x.shape[-2] != r:
                x = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False, antialias=True)
        else:
            grid = F.affine_grid(self._affine(n, gen).to(x.device), [n, 3, r, r], align_corners=False)
            # Reflection keeps rotated corners textured instead of black wedges the net could learn.
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        if self.color_jitter > 0:
            x = self._color(x, gen)
        return x
