"""The admin token that guards every mutating route (``Authorization: Bearer <token>``).

From ``SKIPVIT_ADMIN_TOKEN`` if set (at least ``MIN_TOKEN_CHARS`` characters, checked by the
settings). Otherwise a random token is made at start and written to ``SKIPVIT_ADMIN_TOKEN_FILE``
with mode 0600, its directory made 0700 (also when it existed with wider permissions), so that only
the owner of the process can read it back. The token itself is never logged: the log says where it
is. Comparison is constant-time.

``ADMIN_BEARER`` is the token as FastAPI's HTTP bearer scheme, so that OpenAPI declares it (the
``securitySchemes`` entry ``bearer``, and ``security`` on every route that depends on it); it only
hands over the raw header: the check stays ``bearer_ok``, before any body is read.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import stat
from pathlib import Path

from fastapi import Request
from fastapi.security import HTTPBearer

log = logging.getLogger("skipvit.service")
MIN_TOKEN_CHARS = 16
DEFAULT_TOKEN_FILE = Path.home() / ".skipvit" / "admin-token"  # SKIPVIT_ADMIN_TOKEN_FILE's default


def private_dir(path: Path) -> None:
    """Make ``path`` (the token's directory) and own it 0700. A shared sticky directory such as
    /tmp is left as it is: others cannot replace or read a 0600 file of ours there."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_mode & stat.S_ISVTX or st.st_uid != os.getuid():
        return
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)


def write_token_file(path: Path, token: str) -> None:
    private_dir(path.parent)
    # O_NOFOLLOW: never write through a symlink someone planted at the path.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # also when the file existed with wider permissions
        os.write(fd, (token + "\n").encode())
    finally:
        os.close(fd)


def admin_token(configured: str | None, token_file: Path) -> str:
    """The token to accept: the configured one, or a fresh random one written to ``token_file``."""
    if configured:
        log.info("admin token: from SKIPVIT_ADMIN_TOKEN")
        return configured
    token = secrets.token_urlsafe(32)
    try:
        write_token_file(token_file, token)
    except OSError as e:
        log.error(
            "admin token: generated, but not written to %s (%s): the mutating routes cannot be used; "
            "Hint: set SKIPVIT_ADMIN_TOKEN_FILE to a writable path, or SKIPVIT_ADMIN_TOKEN",
            token_file,
            e,
        )
        return token
    log.warning("admin token: generated and written to %s (owner-only); read it there", token_file)
    return token


def bearer_ok(header: str | None, token: str) -> bool:
    """True iff ``header`` is ``Bearer <token>``; the token comparison takes constant time."""
    scheme, _, given = (header or "").partition(" ")
    ok = hmac.compare_digest(given.strip().encode(), token.encode())
    return ok and scheme.lower() == "bearer"


class AdminBearer(HTTPBearer):
    """The admin token's OpenAPI security scheme; as a dependency, the raw Authorization header
    (None if absent), refused by nothing here."""

    def __init__(self) -> None:
        super().__init__(
            scheme_name="bearer",
            description="the admin token: SKIPVIT_ADMIN_TOKEN, or the server's token file",
            auto_error=False,
        )

    async def __call__(self, request: Request) -> str | None:  # type: ignore[override]
        return request.headers.get("authorization")


ADMIN_BEARER = AdminBearer()
