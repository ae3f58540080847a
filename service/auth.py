"""The admin token that guards every mutating route (``Authorization: Bearer <token>``).

From ``SKIPVIT_ADMIN_TOKEN`` if set. Otherwise a random token is made at start, logged once and
written to ``SKIPVIT_ADMIN_TOKEN_FILE`` with mode 0600 (its directory 0700), so that only the
owner of the process can read it back. Comparison is constant-time.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from pathlib import Path

log = logging.getLogger("skipvit.service")


def write_token_file(path: Path, token: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
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
        where = f"written to {token_file} (owner-only)"
    except OSError as e:
        where = f"not written to {token_file} ({e}); set SKIPVIT_ADMIN_TOKEN_FILE to a writable path"
    log.warning("admin token (generated, shown once): %s — %s", token, where)
    return token


def bearer_ok(header: str | None, token: str) -> bool:
    """True iff ``header`` is ``Bearer <token>``; the token comparison takes constant time."""
    scheme, _, given = (header or "").partition(" ")
    ok = hmac.compare_digest(given.strip().encode(), token.encode())
    return ok and scheme.lower() == "bearer"
