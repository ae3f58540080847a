"""Command lines for the tests that run the CLI, written on one line."""

from __future__ import annotations


def argv(words: str, *extra: str, **flags: object) -> list[str]:
    """``words`` split on whitespace, then ``--name value`` for each keyword (``ckpt_dir=path``
    gives ``--ckpt-dir path``; the value through ``str``, in one piece), then ``extra`` as given.

    ``argv("train exits --epochs 2", bundle=out)`` == ``["train", "exits", "--epochs", "2",
    "--bundle", str(out)]``."""
    line = words.split()
    for name, value in flags.items():
        line += [f"--{name.replace('_', '-')}", str(value)]
    return [*line, *extra]
