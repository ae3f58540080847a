"""Small helpers for the plain-ASGI parts of the service (``service.middleware``,
``service.classify``)."""

from __future__ import annotations

import json


class ClientGone(Exception):
    """The client disconnected before its body was read whole."""


async def send_json(send, status: int, body, headers=()) -> None:
    """Answer ``body`` (JSON bytes, or an object to encode) with ``status`` and extra ``headers``."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


async def read_body(receive) -> bytes:
    """The whole request body (the middleware caps its size). ``ClientGone`` on a disconnect."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def header(scope, name: bytes) -> str | None:
    """The first value of header ``name`` (lower-case bytes), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None
