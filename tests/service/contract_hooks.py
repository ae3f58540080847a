"""Schemathesis hooks for the contract test (loaded by the schemathesis CLI, not by pytest): the
images of ``POST /classify`` as real PNG, JPEG and WebP files.

Why: the schema can say "a binary part of type image/png", not "bytes that decode as an image";
from random bytes every schema-valid upload would be a 422, and the 200 (and its body) never
checked. Small images of any size and mode: the server resizes and converts them.
"""

from __future__ import annotations

import io

import numpy as np
import schemathesis
from hypothesis import strategies as st
from PIL import Image


@st.composite
def image_file(draw, fmt: str) -> bytes:
    mode = draw(st.sampled_from(["L", "RGB"]))
    width, height = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    seed = draw(st.integers(0, 2**32 - 1))
    shape = (height, width) if mode == "L" else (height, width, 3)
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(buf, format=fmt)
    return buf.getvalue()


schemathesis.openapi.media_type("image/png", image_file("PNG"))
schemathesis.openapi.media_type("image/jpeg", image_file("JPEG"))
schemathesis.openapi.media_type("image/webp", image_file("WEBP"))


INTEGERS = ("max_batch_size", "max_queue", "generation")


def integers(body: dict) -> dict:
    return {
        k: int(v) if k in INTEGERS and isinstance(v, float) and v.is_integer() else v for k, v in body.items()
    }


@schemathesis.hook
def map_body(context, body):
    """PUT /config (and the config of PUT /fleet) is strict: ``2.0`` is not a batch size (the app
    answers 422, on purpose). JSON Schema counts 2.0 as an integer and cannot say otherwise, so such
    values are sent as ``2``."""
    operation = context.operation
    if operation is None or not isinstance(body, dict):
        return body
    key = (operation.method.upper(), operation.path)
    if key == ("PUT", "/config"):
        return integers(body)
    if key == ("PUT", "/fleet"):
        config = body.get("config")
        return integers({**body, "config": integers(config) if isinstance(config, dict) else config})
    return body
