"""A canned HTTP server on loopback for the load generators' tests: it reads whole requests and
answers what the test's handler says, with no model behind it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

OK_BODY = json.dumps({"point": "p", "results": [{}]}).encode()
OK = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(OK_BODY), OK_BODY)
BUSY = b"HTTP/1.1 503 Busy\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n"


async def read_request(reader: asyncio.StreamReader) -> None:
    """Read one whole request (headers and a Content-Length body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    await reader.readexactly(length)


def serving(answer: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]):
    """A connection handler that runs ``answer`` and closes quietly when the client goes."""

    async def handle(reader, writer) -> None:
        try:
            await answer(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    return handle


async def against(answer, drive):
    """Start a canned server answering with ``answer`` and return ``await drive(port)``."""
    server = await asyncio.start_server(serving(answer), "127.0.0.1", 0)
    async with server:
        return await drive(server.sockets[0].getsockname()[1])
