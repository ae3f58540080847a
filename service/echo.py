"""The one way an error message repeats what the user sent (a filename, a point id, a header or
query value): cut to ``LIMIT`` characters, so that a 100 KB filename is not answered with a
100 KB error."""

from __future__ import annotations

LIMIT = 100


def echo(value: object, limit: int = LIMIT) -> str:
    """``value`` as text, cut to ``limit`` characters with a note of how long it was."""
    text = str(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"
