"""A command's settings dataclass from its parsed flags, field by field."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

C = TypeVar("C")


def config_from(cls: type[C], source: Any, **overrides: Any) -> C:
    """``cls`` (a dataclass) with every field that ``source`` (parsed flags, or another config) has
    an attribute of the same name for taken from it; ``overrides`` name the rest by hand (a flag
    spelled otherwise, a value parsed or built). Fields found in neither keep their defaults."""
    found = {f.name: getattr(source, f.name) for f in fields(cls) if f.init and hasattr(source, f.name)}
    return cls(**{**found, **overrides})
