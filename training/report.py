"""REPORT.md: one section per command that wrote into the bundle, replaced when re-run."""

from __future__ import annotations

import platform
import re
import shlex
import sys
from pathlib import Path

import torch

TITLE = "# Bundle report\n\nWritten by the commands below; each section names the exact command that produced it.\n"


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed: ``argv`` as given to ``skipvit.cli.main`` (default sys.argv)."""
    return "skipvit " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))


def environment() -> str:
    dev = (
        torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else f"CPU, {torch.get_num_threads()} threads"
    )
    return f"torch {torch.__version__}, Python {platform.python_version()}, {dev}, {platform.machine()}"


def update_section(root: Path, title: str, body: str) -> None:
    path = root / "REPORT.md"
    text = path.read_text() if path.is_file() else TITLE
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text)
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text.rstrip() + "\n")


def read_section(root: Path, title: str) -> str | None:
    """The body of section ``title`` of ``root``/REPORT.md, if there is one."""
    path = root / "REPORT.md"
    if not path.is_file():
        return None
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", path.read_text(), re.S | re.M)
    return m.group(1).strip() if m else None


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)
