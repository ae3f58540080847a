"""Image bytes -> uint8 tensor in the bundle's layout. Pure; no HTTP here.

Only PNG, JPEG and WebP are opened. The declared size is checked against a pixel cap before any
pixel is decoded, so decompression bombs are refused cheaply. Any mode (1, L, P, RGB, RGBA, LA,
CMYK, 16-bit I;16, 32-bit I/F) is converted to greyscale or RGB as the bundle expects.

A PNG that is already exactly what the bundle takes (8-bit greyscale or RGB, the bundle's size)
is decoded by libspng (``pyspng``) instead: the same pixels, without Pillow's per-image Python
(about 8 µs against 30-45 µs for a Fashion-MNIST image, a large part of the server's CPU per
request). Anything else, and anything libspng refuses, goes through Pillow, which also words
the errors.

The last resize to the bundle's size uses the bundle's resampling filter (``resample``: the
``preprocess`` section's, for a model brought in from Hugging Face; bilinear for this project's
own), so an upload of another size becomes the input the model was trained on. An image already at
the bundle's size is never resampled, whatever the filter, unless the model's processor crops
(DeiT's resizes to 256 and cuts 224 from the middle): then every image is resized to the
processor's size and cut as transformers cuts it (``model.preprocess.fit_image``).
"""

from __future__ import annotations

import io
import struct
import warnings

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from skipvit.model.preprocess import fit_image, pillow_filter

try:
    import pyspng
except ImportError:  # no wheel for this platform: Pillow decodes everything
    pyspng = None

FORMATS = ("PNG", "JPEG", "WEBP")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_COLOUR = {1: 0, 3: 2}  # bundle channels -> PNG colour type (0 greyscale, 2 RGB)
DEFAULT_RESAMPLE = "bilinear"  # what every bundle without a preprocess section was trained with


class DecodeError(ValueError):
    """An upload that is not a usable image. ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def _to_8bit(img: Image.Image) -> Image.Image:
    """Wide integer/float modes -> L, scaled by the mode's range rather than clipped. In float32,
    in place: 4 bytes a pixel beside the image, not 24 (exact enough: 16-bit values scaled to 8
    bits are never within float32's error of a rounding tie)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.array(img, dtype=np.float32)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr *= np.float32(255.0 / top)
        arr += np.float32(0.5)
        np.clip(arr, 0, 255, out=arr)
        return Image.fromarray(arr.astype(np.uint8), mode="L")
    return img


def _flatten_alpha(img: Image.Image) -> Image.Image:
    """Composite transparent images on black: transparent pixels read as background 0, as in
    premultiplied alpha (and as Fashion-MNIST's dark background)."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img


def _in_layout(data: bytes, channels: int, size: int) -> bool:
    """True iff ``data`` is a PNG whose header declares the bundle's layout: 8-bit greyscale (or
    RGB), exactly ``size`` x ``size``. Reads the header only."""
    if len(data) < 33 or data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        return False
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    return (width, height) == (size, size) and depth == 8 and colour == PNG_COLOUR.get(channels)


def _spng(data: bytes, channels: int, size: int) -> torch.Tensor | None:
    """The (C, size, size) pixels of a PNG in the bundle's layout, by libspng; None if pyspng is
    missing or refuses the bytes (then Pillow decides, and words the error)."""
    if pyspng is None:
        return None
    try:
        arr = pyspng.load(data)
    except Exception:  # corrupt or truncated
        return None
    if arr.dtype != np.uint8 or arr.shape != ((size, size) if channels == 1 else (size, size, 3)):
        return None
    pixels = torch.from_numpy(arr)
    return pixels.unsqueeze(0) if channels == 1 else pixels.permute(2, 0, 1).contiguous()


def decode_as_is(
    data: bytes, *, channels: int, size: int, max_pixels: int, name: str = "upload"
) -> torch.Tensor | None:
    """``decode_image`` for a PNG whose header declares the bundle's layout, None for anything
    else. Cheap whatever the bytes claim (at most ``size`` x ``size`` pixels), so the server calls
    it on the event loop and sends everything else to a thread."""
    if size * size > max_pixels or not _in_layout(data, channels, size):
        return None
    if (fast := _spng(data, channels, size)) is not None:
        return fast
    img = open_image(data, channels=channels, size=size, max_pixels=max_pixels, name=name)
    return finish(img, channels=channels, size=size, name=name)


def decode_image(
    data: bytes,
    *,
    channels: int,
    size: int,
    max_pixels: int,
    name: str = "upload",
    resample: str = DEFAULT_RESAMPLE,
    resize: tuple[int, int] | None = None,
    center_crop: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Decode ``data`` to a (C, size, size) uint8 tensor; an image of another size is resized with
    ``resample`` (one of ``model.preprocess.RESAMPLE``'s names); with ``center_crop``, every image
    is resized to ``resize`` and cut from the middle first (``finish``)."""
    if not data:
        raise DecodeError(f"{name}: the file is empty")
    if center_crop is None:
        fast = decode_as_is(data, channels=channels, size=size, max_pixels=max_pixels, name=name)
        if fast is not None:
            return fast
    img = open_image(data, channels=channels, size=size, max_pixels=max_pixels, name=name)
    return finish(
        img,
        channels=channels,
        size=size,
        name=name,
        resample=resample,
        resize=resize,
        center_crop=center_crop,
    )


def open_image(data: bytes, *, channels: int, size: int, max_pixels: int, name: str) -> Image.Image:
    """Read the image's header (no pixels yet): its format, size and mode. Refuses what is not a
    PNG, JPEG or WebP (422) and what declares more than ``max_pixels`` (413). A JPEG is set to
    decode at the smallest scale (1/2 to 1/8) still at least ``size`` on a side (draft mode)."""
    if not data:
        raise DecodeError(f"{name}: the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=FORMATS)
        w, h = img.size
        if w * h > max_pixels:
            raise DecodeError(
                f"{name}: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}; "
                "Hint: downscale the image before sending it.",
                status=413,
            )
        if img.format == "JPEG":
            img.draft("L" if channels == 1 else "RGB", (size, size))
    except DecodeError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        if isinstance(e, UnidentifiedImageError):
            raise DecodeError(
                f"{name}: not a PNG, JPEG or WebP image; Hint: send one of those formats"
            ) from None
        raise DecodeError(f"{name}: refused as a decompression bomb ({e})", status=413) from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise DecodeError(f"{name}: the image could not be decoded ({e}); is it truncated?") from None
    return img


# Bytes a decode holds at its peak, per pixel of the image as decoded (after a JPEG's draft): the
# decoded image (Pillow keeps 1 byte a pixel for 1/L/P, 2 for I;16, 4 for every other mode) and
# the largest full-size copy ``finish`` makes before it shrinks the image (RGBA -> premultiplied
# RGBa; P -> RGB(A); 1 -> L; 16-bit -> float32). A WebP costs more whatever its mode: libwebp
# decodes to RGBA in buffers of its own, which Pillow then copies.
# Each decode also holds a few MB that do not grow with the image (a JPEG's decoder state).
# Measured as peak RSS for 4096x4096 images of each mode: tests/service/test_decode_budget.py.
PEAK_BYTES_PER_PIXEL = {"1": 2, "L": 1, "RGB": 4, "P": 9, "LA": 8, "RGBA": 8, "CMYK": 8}
WIDE_PEAK_BYTES_PER_PIXEL = 9  # I;16 (2 + 4 + 1 for the float32 copy and its uint8), I, F
WEBP_PEAK_BYTES_PER_PIXEL = 16
DECODE_OVERHEAD_BYTES = 4 << 20


def decode_cost(img: Image.Image) -> int:
    """The bytes that decoding ``img`` (from ``open_image``) holds at its peak, from its header."""
    w, h = img.size
    per_pixel = PEAK_BYTES_PER_PIXEL.get(img.mode, WIDE_PEAK_BYTES_PER_PIXEL)
    if img.format == "WEBP":
        per_pixel = WEBP_PEAK_BYTES_PER_PIXEL
    return w * h * per_pixel + DECODE_OVERHEAD_BYTES


def _shrink(img: Image.Image, size: int) -> Image.Image:
    """Box-reduce a large image by a whole factor, its short side staying at least ``size``, before
    any conversion: every later copy is then small. Modes a box filter cannot average (1, P) are
    converted first. Pillow averages RGBA premultiplied, as compositing on black does."""
    factor = min(img.size) // size
    if factor < 2:
        return img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode == "1":
        img = img.convert("L")
    elif img.mode not in ("L", "LA", "RGB", "RGBA", "CMYK", "I", "F"):
        return img  # I;16: scaled to 8 bits first (``_to_8bit``), at full size
    return img.reduce(factor)


def finish(
    img: Image.Image,
    *,
    channels: int,
    size: int,
    name: str,
    resample: str = DEFAULT_RESAMPLE,
    resize: tuple[int, int] | None = None,
    center_crop: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Decode the pixels of ``img`` (from ``open_image``) to a (C, size, size) uint8 tensor, brought
    to the model's size as its processor does (``model.preprocess.fit_image``: ``resample``, and
    the processor's ``resize`` + ``center_crop`` where it crops)."""
    pillow_filter(resample)  # an unknown name fails before any pixel is decoded
    target = max(resize) if resize is not None and center_crop is not None else size
    try:
        img.load()
        img = _shrink(img, target)
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise DecodeError(f"{name}: the image could not be decoded ({e}); is it truncated?") from None
    img = _flatten_alpha(_to_8bit(img))
    mode = "L" if channels == 1 else "RGB"
    if img.mode != mode:
        img = img.convert(mode)
    img = fit_image(img, size, resample, resize if center_crop is not None else None, center_crop)
    pixels = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)  # row-major (H, W[, 3])
    if channels == 1:
        return pixels.view(1, size, size)
    return pixels.view(size, size, 3).permute(2, 0, 1).contiguous()  # (C, H, W)
