"""Decoding uploads: formats, modes, sizes, and refusals with the right status."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from service.decode import DecodeError, decode_image
from tests.service.helpers import png_bytes

KW = dict(channels=1, size=16, max_pixels=1_000_000)


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("L", "PNG"), ("RGB", "PNG"), ("RGBA", "PNG"), ("P", "PNG"), ("1", "PNG"), ("LA", "PNG"),
     ("I;16", "PNG"), ("CMYK", "JPEG"), ("L", "JPEG"), ("RGB", "WEBP"), ("RGBA", "WEBP")],
)  # fmt: skip
def test_every_mode_converts(mode, fmt):
    base = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8))
    img = base.convert("L").convert(mode) if mode == "I;16" else base.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    for channels in (1, 3):
        t = decode_image(buf.getvalue(), **{**KW, "channels": channels})
        assert t.shape == (channels, 16, 16) and str(t.dtype) == "torch.uint8"


def test_16bit_is_scaled_not_clipped():
    arr = np.full((16, 16), 65535, dtype=np.uint16)
    img = Image.fromarray(arr)
    assert img.mode == "I;16"
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    t = decode_image(buf.getvalue(), **KW)
    assert int(t.min()) == 255


def test_resize_and_exact_passthrough():
    arr = np.arange(256, dtype=np.uint8).reshape(16, 16)
    t = decode_image(png_bytes(arr), **KW)
    assert np.array_equal(t[0].numpy(), arr)
    assert decode_image(png_bytes(np.zeros((100, 7), np.uint8)), **KW).shape == (1, 16, 16)


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        (b"", 422, "empty"),
        (b"hello, this is not an image", 422, "PNG, JPEG or WebP"),
        (b"GIF89a" + b"\x00" * 40, 422, "PNG, JPEG or WebP"),
    ],
)
def test_bad_bytes(data, status, words):
    with pytest.raises(DecodeError, match=words) as e:
        decode_image(data, **KW)
    assert e.value.status == status


def test_gif_and_bmp_are_refused():
    for fmt in ("GIF", "BMP", "TIFF"):
        buf = io.BytesIO()
        Image.new("L", (8, 8)).save(buf, format=fmt)
        with pytest.raises(DecodeError):
            decode_image(buf.getvalue(), **KW)


def test_truncated_png():
    data = png_bytes(np.random.default_rng(1).integers(0, 255, (64, 64), dtype=np.uint8))
    with pytest.raises(DecodeError) as e:
        decode_image(data[: len(data) // 2], **KW)
    assert e.value.status == 422


def test_pixel_cap_is_413_before_decoding():
    data = png_bytes(np.zeros((300, 300), np.uint8))
    with pytest.raises(DecodeError, match="exceeds") as e:
        decode_image(data, channels=1, size=16, max_pixels=300 * 299)
    assert e.value.status == 413
