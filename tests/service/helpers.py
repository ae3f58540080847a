"""Image encoders shared by the service tests."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def png_bytes(arr: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format=fmt)
    return buf.getvalue()


def bar_image(k: int, size: int = 16, classes: int = 4) -> np.ndarray:
    """A clean instance of the synthetic dataset's class ``k`` (uint8, HxW)."""
    ys, xs = np.mgrid[0:size, 0:size].astype(float)
    c = (size - 1) / 2
    angle = np.pi * k / classes
    dist = (xs - c) * np.sin(angle) - (ys - c) * np.cos(angle)
    return ((np.abs(dist) < max(1.0, size / 10)) * 220 + 20).astype(np.uint8)


def wait_ready(client, timeout: float = 60.0):
    """Block until /readyz is 200 (the bundle loads after startup); returns the client."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return client
        time.sleep(0.05)
    raise AssertionError(f"not ready after {timeout} s: {client.get('/readyz').json()}")


def files(*blobs: bytes) -> list[tuple]:
    """Multipart ``files`` for TestClient: one PNG part per blob, in order."""
    return [("files", (f"img{i}.png", b, "image/png")) for i, b in enumerate(blobs)]
