"""A strict multipart/form-data reader for ``POST /classify``. Pure; no HTTP here.

Why not the framework's form parsing: python-multipart walks the body in Python, byte state by
byte state, and under load it was about a quarter of the event loop's time. Uploads here are a
few small files, so splitting the (size-capped) body on the boundary with ``bytes`` methods, in
C, does the same job. Only parts named ``field`` are kept; anything malformed is a
``MultipartError`` (answered 422) that says what to send instead.
"""

from __future__ import annotations

import re

from skipvit.service.echo import echo

_BOUNDARY = re.compile(r'boundary=(?:"([^"]{1,200})"|([^;\s]{1,200}))', re.IGNORECASE)
_DISPOSITION_PARAM = re.compile(rb'(\w+)="((?:[^"\\]|\\.)*)"|(\w+)=([^;\s]+)')
HINT = "Hint: send multipart/form-data with one or more parts named 'files' (e.g. curl -F files=@a.png)."


MAX_OTHER_PARTS = 16  # parts not named ``field`` that a body may carry besides its files


class MultipartError(ValueError):
    pass


class TooManyParts(MultipartError):
    """More parts than the limit: refused before they are parsed (answered 413)."""


def boundary_of(content_type: str | None) -> bytes:
    if not content_type or not content_type.lower().startswith("multipart/form-data"):
        raise MultipartError(
            f"the body is {echo(content_type or 'untyped')}, not multipart/form-data; {HINT}"
        )
    m = _BOUNDARY.search(content_type)
    if not m:
        raise MultipartError(f"the multipart/form-data content type has no boundary; {HINT}")
    return (m.group(1) or m.group(2)).encode("latin-1")


def _disposition(head: bytes) -> dict[bytes, bytes]:
    for line in head.split(b"\r\n"):
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"content-disposition":
            return {
                (m.group(1) or m.group(3)).lower(): m.group(2) if m.group(1) else m.group(4)
                for m in _DISPOSITION_PARAM.finditer(value)
            }
    raise MultipartError(f"a part has no Content-Disposition header; {HINT}")


def read_files(
    content_type: str | None, body: bytes, field: str = "files", max_files: int | None = None
) -> list[tuple[str, bytes]]:
    """The (filename, bytes) of every part named ``field``, in order. ``TooManyParts`` when there
    are more than ``max_files`` of them: decided by counting the delimiters (in C) first, so that a
    body of a million tiny parts is refused without walking it in Python."""
    delimiter = b"\r\n--" + boundary_of(content_type)
    if max_files is not None and (parts := body.count(delimiter) + body.startswith(delimiter[2:]) - 1) > (
        max_files + MAX_OTHER_PARTS
    ):
        raise TooManyParts(f"{parts} parts in one request; the limit is {max_files} files")
    chunks = (b"\r\n" + body).split(delimiter)  # chunks[0]: preamble
    if len(chunks) < 2 or not chunks[-1].startswith(b"--"):
        raise MultipartError(f"the multipart body is truncated (no closing boundary); {HINT}")
    files = []
    for chunk in chunks[1:-1]:
        head, sep, data = chunk.lstrip(b" \t").removeprefix(b"\r\n").partition(b"\r\n\r\n")
        if not sep:
            raise MultipartError(f"a part has no header/body separator; {HINT}")
        params = _disposition(head)
        if params.get(b"name", b"").decode("latin-1") == field:
            files.append((params.get(b"filename", b"").decode("utf-8", "replace"), data))
    if not files:
        raise MultipartError(f"no part named {field!r}; {HINT}")
    if max_files is not None and len(files) > max_files:
        raise TooManyParts(f"{len(files)} files in one request; the limit is {max_files}")
    return files
