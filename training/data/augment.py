"""Batched augmentation on tensors (no torchvision): pad-and-crop, horizontal flip, erasing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


def to_float(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 (B, C, H, W) -> normalised float32 (B, C, H, W)."""
    m = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return (images.float() / 255.0 - m) / s


@dataclass(frozen=True)
class AugmentConfig:
    crop_padding: int = 2
    hflip: bool = True
    erase_prob: float = 0.25
    erase_area: tuple[float, float] = (0.02, 0.2)


def augment_config(off: bool, erase_prob: float) -> AugmentConfig:
    """The flags ``--no-augment`` (``off``: no crops, flips or erasing) and ``--erase-prob``."""
    if off:
        return AugmentConfig(crop_padding=0, hflip=False, erase_prob=0.0)
    return AugmentConfig(erase_prob=erase_prob)


def black(mean: Sequence[float], std: Sequence[float]) -> tuple[float, ...]:
    """The normalised value of pixel 0 per channel: what ``to_float`` makes of a black border."""
    return tuple(-m / s for m, s in zip(mean, std, strict=True))


def random_crop(
    x: Tensor, padding: int, g: torch.Generator | None = None, fill: Sequence[float] | float = 0.0
) -> Tensor:
    """Pad by ``padding`` with ``fill`` (per channel, or one value) and crop back to the original
    size at a random offset per row. On a normalised batch, pass ``black(mean, std)`` as ``fill``:
    the pad is then black in pixel space, as torchvision's RandomCrop pads before normalising."""
    if padding <= 0:
        return x
    b, c, h, w = x.shape
    value = torch.as_tensor(fill, dtype=x.dtype, device=x.device).expand(c)  # (C,)
    padded = value.view(1, c, 1, 1).repeat(b, 1, h + 2 * padding, w + 2 * padding)  # (B, C, H+2p, W+2p)
    padded[:, :, padding : padding + h, padding : padding + w] = x
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=g)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=g)
    rows = (dy[:, None] + torch.arange(h)[None]).to(x.device)  # (B, H)
    cols = (dx[:, None] + torch.arange(w)[None]).to(x.device)  # (B, W)
    bidx = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[bidx, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)


def random_hflip(x: Tensor, g: torch.Generator | None = None) -> Tensor:
    flip = (torch.rand(x.shape[0], generator=g) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_erase(
    x: Tensor, prob: float, area: tuple[float, float], g: torch.Generator | None = None
) -> Tensor:
    """Zero a random rectangle (in normalised units: the mean) in a fraction ``prob`` of rows."""
    if prob <= 0:
        return x
    b, _, h, w = x.shape
    apply = torch.rand(b, generator=g) < prob
    frac = area[0] + (area[1] - area[0]) * torch.rand(b, generator=g)
    aspect = torch.exp((torch.rand(b, generator=g) - 0.5) * 2 * 1.2)  # log-uniform in ~[0.3, 3.3]
    eh = (torch.sqrt(frac * h * w * aspect)).clamp(1, h).long()
    ew = (torch.sqrt(frac * h * w / aspect)).clamp(1, w).long()
    y0 = (torch.rand(b, generator=g) * (h - eh + 1)).long()
    x0 = (torch.rand(b, generator=g) * (w - ew + 1)).long()
    ys = torch.arange(h)[None]
    xs = torch.arange(w)[None]
    in_y = (ys >= y0[:, None]) & (ys < (y0 + eh)[:, None])  # (B, H)
    in_x = (xs >= x0[:, None]) & (xs < (x0 + ew)[:, None])  # (B, W)
    box = (in_y[:, :, None] & in_x[:, None, :] & apply[:, None, None]).to(x.device)  # (B, H, W)
    return x.masked_fill(box[:, None], 0.0)


def augment(
    x: Tensor,
    cfg: AugmentConfig,
    hflip_ok: bool,
    g: torch.Generator | None,
    mean: Sequence[float],
    std: Sequence[float],
) -> Tensor:
    """Augment a batch (B, C, H, W) normalised with ``mean``/``std``; crops pad with black."""
    x = random_crop(x, cfg.crop_padding, g, fill=black(mean, std))
    if cfg.hflip and hflip_ok:
        x = random_hflip(x, g)
    return random_erase(x, cfg.erase_prob, cfg.erase_area, g)
