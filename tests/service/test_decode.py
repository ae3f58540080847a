"""Decoding uploads: formats, modes, sizes, and refusals with the right status."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from skipvit.service.decode import DecodeError, decode_image
from tests.service.helpers import png_bytes

KW = dict(channels=1, size=16, max_pixels=1_000_000)


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("L", "PNG"),
        ("RGB", "PNG"),
        ("RGBA", "PNG"),
        ("P", "PNG"),
        ("1", "PNG"),
        ("LA", "PNG"),
        ("I;16", "PNG"),
        ("CMYK", "JPEG"),
        ("L", "JPEG"),
        ("RGB", "WEBP"),
        ("RGBA", "WEBP"),
    ],
)
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


# -- the libspng fast path ----------------------------------------------------------------------


def _png(img: Image.Image, **save) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **save)
    return buf.getvalue()


@pytest.fixture
def spng_calls(monkeypatch):
    """Counts the PNGs that libspng decodes."""
    import skipvit.service.decode as decode

    if decode.pyspng is None:
        pytest.skip("pyspng is not installed on this platform (Pillow decodes every PNG)")
    calls = []
    real = decode.pyspng.load

    class Spy:
        @staticmethod
        def load(data, *args, **kwargs):
            calls.append(len(data))
            return real(data, *args, **kwargs)

    monkeypatch.setattr(decode, "pyspng", Spy)
    return calls


def _pillow_only(data: bytes, monkeypatch, **kw):
    import skipvit.service.decode as decode

    with monkeypatch.context() as m:
        m.setattr(decode, "pyspng", None)
        return decode_image(data, **kw)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(
    "save", [{}, {"compress_level": 0}, {"compress_level": 9}, {"optimize": True}, "trns"]
)
def test_a_png_in_the_bundle_layout_takes_libspng_with_the_same_pixels(
    channels, save, spng_calls, monkeypatch
):
    rng = np.random.default_rng(channels)
    arr = rng.integers(0, 256, (16, 16) if channels == 1 else (16, 16, 3), dtype=np.uint8)
    if save == "trns":  # a transparent colour (tRNS): Pillow keeps the pixels as they are, so must libspng
        save = {"transparency": 7 if channels == 1 else (1, 2, 3)}
    data = _png(Image.fromarray(arr), **save)
    kw = {**KW, "channels": channels}
    fast = decode_image(data, **kw)
    assert spng_calls == [len(data)]
    assert fast.equal(_pillow_only(data, monkeypatch, **kw)) and fast.shape == (channels, 16, 16)


@pytest.mark.parametrize(
    "make",
    [
        lambda a: Image.fromarray(a).resize((17, 16)),  # another size
        lambda a: Image.fromarray(a).convert("RGB"),  # RGB for a greyscale bundle
        lambda a: Image.fromarray(a).convert("LA"),  # alpha
        lambda a: Image.fromarray(a).convert("P"),  # palette
        lambda a: Image.fromarray(a.astype(np.uint16) * 257),  # 16-bit
    ],
)
def test_other_pngs_go_through_pillow(make, spng_calls, monkeypatch):
    data = _png(make(np.random.default_rng(3).integers(0, 256, (16, 16), dtype=np.uint8)))
    assert decode_image(data, **KW).equal(_pillow_only(data, monkeypatch, **KW))
    assert spng_calls == []


def test_a_broken_png_in_the_bundle_layout_gets_pillows_error(spng_calls):
    data = _png(Image.fromarray(np.random.default_rng(4).integers(0, 256, (16, 16), dtype=np.uint8)))
    cut = data[: len(data) // 2]  # the header intact, the pixel data cut short
    with pytest.raises(DecodeError, match="could not be decoded") as e:
        decode_image(cut, **KW)
    assert e.value.status == 422 and spng_calls == [len(cut)]


def test_decode_as_is_takes_only_what_is_cheap_to_decode(monkeypatch):
    """What the server decodes on its event loop: only PNGs whose header declares the bundle's
    layout (at most size x size pixels), with or without libspng; None sends the rest to a thread."""
    import skipvit.service.decode as decode

    arr = np.random.default_rng(5).integers(0, 256, (16, 16), dtype=np.uint8)
    in_layout = _png(Image.fromarray(arr))
    tiny_but_huge = _png(Image.new("L", (4096, 4096)), optimize=True)  # a few KB that declare 16 MP
    for spng in (decode.pyspng, None):
        with monkeypatch.context() as m:
            m.setattr(decode, "pyspng", spng)
            assert decode.decode_as_is(in_layout, **KW).equal(torch.from_numpy(arr).unsqueeze(0))
            assert decode.decode_as_is(tiny_but_huge, **KW) is None
            assert decode.decode_as_is(png_bytes(arr, fmt="WEBP"), **KW) is None
            assert decode.decode_as_is(_png(Image.fromarray(arr).convert("RGB")), **KW) is None
            assert decode.decode_as_is(in_layout, **{**KW, "max_pixels": 255}) is None  # the cap still holds
            with pytest.raises(DecodeError, match="could not be decoded"):  # broken: Pillow's error
                decode.decode_as_is(in_layout[: len(in_layout) // 2], **KW)


# -- the bundle's resampling filter -------------------------------------------------------------


@pytest.mark.parametrize("resample", ["nearest", "bicubic", "lanczos", "box", "hamming"])
def test_an_image_of_another_size_is_resized_with_the_bundles_filter(resample):
    arr = np.random.default_rng(5).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    got = decode_image(png_bytes(arr), channels=3, size=16, max_pixels=1 << 20, resample=resample)
    want = np.asarray(Image.fromarray(arr).resize((16, 16), getattr(Image.Resampling, resample.upper())))
    assert got.permute(1, 2, 0).numpy().tolist() == want.tolist()
    bilinear = decode_image(png_bytes(arr), channels=3, size=16, max_pixels=1 << 20)
    assert not got.equal(bilinear)  # the default is today's bilinear, and the filter matters here


def test_an_image_at_the_bundles_size_is_never_resampled():
    arr = np.random.default_rng(6).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    data = _png(Image.fromarray(arr).convert("RGBA"))  # not the fast path's layout: Pillow
    for resample in ("nearest", "bicubic"):
        got = decode_image(data, channels=3, size=16, max_pixels=1 << 20, resample=resample)
        assert got.permute(1, 2, 0).numpy().tolist() == arr.tolist()


def test_an_unknown_filter_is_refused_with_a_hint():
    data = png_bytes(np.zeros((20, 20), np.uint8))
    with pytest.raises(ValueError, match="Hint"):
        decode_image(data, **KW, resample="cubic")


@pytest.mark.parametrize("side", [16, 30])
def test_a_processor_that_crops_resizes_then_cuts_the_middle_even_at_the_models_size(side):
    arr = np.random.default_rng(7).integers(0, 256, (side, side, 3), dtype=np.uint8)
    crop = {"resize": (20, 20), "center_crop": (16, 16)}
    got = decode_image(png_bytes(arr), channels=3, size=16, max_pixels=1 << 20, resample="bicubic", **crop)
    big = np.asarray(Image.fromarray(arr).resize((20, 20), Image.Resampling.BICUBIC))
    assert got.permute(1, 2, 0).numpy().tolist() == big[2:18, 2:18].tolist()  # top = left = (20 - 16) // 2
