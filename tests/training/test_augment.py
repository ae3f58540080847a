"""Batched tensor augmentation: crop, flip, erase."""

from __future__ import annotations

import torch

from skipvit.training.data.augment import (
    AugmentConfig,
    augment,
    black,
    random_crop,
    random_erase,
    random_hflip,
    to_float,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batch(b: int = 16, c: int = 3, h: int = 8, w: int = 10) -> torch.Tensor:
    return torch.randn(b, c, h, w, generator=_gen(99))


def test_to_float_normalises() -> None:
    x = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    out = to_float(x, (0.5, 0.5, 0.5), (0.25, 0.5, 1.0))
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert torch.allclose(out[:, :, 0, 0], torch.tensor([2.0, 1.0, 0.5]).expand(2, 3))


def test_random_crop_padding_zero_is_identity() -> None:
    x = _batch()
    assert torch.equal(random_crop(x, 0, _gen()), x)


def test_random_crop_shape_and_border_zeros() -> None:
    p, h, w = 2, 8, 10
    x = torch.ones(64, 3, h, w)
    out = random_crop(x, p, _gen())
    assert out.shape == x.shape
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    # The interior, further than ``p`` from every border, always comes from the image.
    assert torch.all(out[:, :, p : h - p, p : w - p] == 1)
    zeros = out == 0
    assert zeros.any()  # some rows were shifted
    # Zeros fill whole rows/columns at a border and are the same in every channel.
    assert torch.equal(zeros[:, 0], zeros[:, 1]) and torch.equal(zeros[:, 0], zeros[:, 2])
    for img in out[:, 0]:
        zero_rows = (img == 0).all(dim=1).nonzero().flatten().tolist()
        zero_cols = (img == 0).all(dim=0).nonzero().flatten().tolist()
        assert all(r < p or r >= h - p for r in zero_rows)
        assert all(c < p or c >= w - p for c in zero_cols)
        ones = img == 1
        ones[zero_rows, :] = True
        ones[:, zero_cols] = True
        assert ones.all()  # every zero lies in one of those border rows/columns


def test_random_crop_is_a_shift() -> None:
    x = torch.arange(5 * 6, dtype=torch.float32).view(1, 1, 5, 6).repeat(32, 2, 1, 1) + 1
    out = random_crop(x, 1, _gen(3))
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for i in range(32):
        assert any(
            torch.equal(out[i], padded[i, :, dy : dy + 5, dx : dx + 6]) for dy in range(3) for dx in range(3)
        )


def test_random_crop_pads_with_black_in_pixel_space() -> None:
    # torchvision's RandomCrop(padding) pads the uint8 image with 0 before Normalize; the test images'
    # borders are black too. Padding the normalised batch with 0 would be the mean (grey) instead.
    mean, std = (0.2860, 0.5, 0.1), (0.3530, 0.25, 0.2)
    images = torch.full((64, 3, 6, 6), 200, dtype=torch.uint8)
    cfg = AugmentConfig(crop_padding=2, hflip=False, erase_prob=0.0)
    out = augment(to_float(images, mean, std), cfg, True, _gen(), mean, std)
    pixels = ((out * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)) * 255).round()
    assert set(pixels.unique().tolist()) == {0.0, 200.0}  # black pad, the image, nothing grey
    padded = pixels == 0
    assert (
        padded.any() and torch.equal(padded[:, 0], padded[:, 1]) and torch.equal(padded[:, 0], padded[:, 2])
    )
    assert torch.allclose(
        torch.tensor(black(mean, std)), (torch.zeros(3) - torch.tensor(mean)) / torch.tensor(std)
    )
    # The crop itself is unchanged: the same shift as with a zero pad, only the fill differs.
    x = to_float(images, mean, std)
    same = random_crop(x, 2, _gen(4), fill=black(mean, std))
    zero = random_crop(x, 2, _gen(4))
    assert torch.equal(same == x[0, :, 0, 0].view(1, 3, 1, 1), zero != 0)


def test_hflip_flips_exactly() -> None:
    x = _batch()
    out = random_hflip(x, _gen(5))
    flip = torch.rand(x.shape[0], generator=_gen(5)) < 0.5  # the draw random_hflip makes
    assert 0 < flip.sum() < x.shape[0]
    for i in range(x.shape[0]):
        assert torch.equal(out[i], x[i].flip(-1) if flip[i] else x[i])


def test_random_erase() -> None:
    x = torch.ones(32, 3, 8, 8)
    assert torch.equal(random_erase(x, 0.0, (0.02, 0.2), _gen()), x)
    out = random_erase(x, 1.0, (0.02, 0.2), _gen())
    assert out.shape == x.shape
    erased = (out == 0).all(dim=1)  # (B, H, W): all channels zeroed together
    assert torch.equal(erased, (out == 0).any(dim=1))
    assert erased.flatten(1).any(dim=1).all()  # at least one pixel per row
    assert (erased.flatten(1).sum(dim=1) < 64).all()  # never the whole image at these areas


def test_seeded_augment_is_deterministic() -> None:
    x = _batch()
    cfg = AugmentConfig(crop_padding=2, hflip=True, erase_prob=0.5)
    ms = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    a = augment(x, cfg, True, _gen(7), *ms)
    assert torch.equal(a, augment(x, cfg, True, _gen(7), *ms))
    assert not torch.equal(a, augment(x, cfg, True, _gen(8), *ms))
    assert a.shape == x.shape
    no_flip = AugmentConfig(crop_padding=0, hflip=True, erase_prob=0.0)
    assert torch.equal(augment(x, no_flip, False, _gen(7), *ms), x)  # hflip_ok=False disables flips
