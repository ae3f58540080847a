"""The shape of service/: short functions, a short ``create_app``, one place for the things that
must not drift apart (the answer to a failure, the count of a rejection, the app's state)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SERVICE = Path(__file__).resolve().parents[2] / "service"
MAX_FUNCTION_LINES = 60  # a nested function counts on its own, and in its parent
MAX_CREATE_APP_LINES = 40


def modules() -> dict[str, ast.Module]:
    return {p.name: ast.parse(p.read_text(), filename=str(p)) for p in sorted(SERVICE.glob("*.py"))}


def functions() -> list[tuple[str, str, int]]:
    """(module, function, lines from its ``def`` to its last line) of every function in service/."""
    out = []
    for name, tree in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                out.append((name, node.name, node.end_lineno - node.lineno + 1))
    return out


def calls_of(attr: str) -> set[str]:
    """The modules of service/ that call a method named ``attr``."""
    return {
        name
        for name, tree in modules().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attr
    }


def test_the_checks_see_every_function():
    found = {(m, f) for m, f, _ in functions()}
    assert {("app.py", "create_app"), ("batcher.py", "plan"), ("classify.py", "answer")} <= found


def test_no_function_in_service_is_longer_than_60_lines():
    long = [f"{m}::{f} ({n} lines)" for m, f, n in functions() if n > MAX_FUNCTION_LINES]
    assert not long, f"longer than {MAX_FUNCTION_LINES} lines: {long}; split them"


def test_create_app_stays_a_short_assembly():
    (n,) = [n for m, f, n in functions() if (m, f) == ("app.py", "create_app")]
    assert n <= MAX_CREATE_APP_LINES, f"create_app has {n} lines; build the parts in their own modules"


def test_rejections_are_counted_in_one_place():
    assert calls_of("rejected") == {"failures.py"}


def test_the_app_state_holds_only_the_service_state():
    uses = {
        (name, attr)
        for name in modules()
        for attr in re.findall(r"\bapp\.state\.(\w+)", (SERVICE / name).read_text())
    }
    assert uses and {attr for _, attr in uses} == {"service"}, uses
