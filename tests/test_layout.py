"""One import name: the built distribution adds `skipvit` (and its console script) and nothing else,
and no code in the repository imports the top-level folders by their bare names."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("model", "kernels", "training", "service", "benchmarks")


@pytest.mark.slow
def test_the_wheel_adds_one_top_level_name_and_one_script(tmp_path):
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for folder in ("skipvit", *FOLDERS):
        shutil.copytree(REPO / folder, src / folder, ignore=ignore)
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*pip, str(src), "-w", str(tmp_path / "dist")], check=True, capture_output=True, timeout=300
    )
    (wheel,) = (tmp_path / "dist").glob("skipvit-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = z.read(entry_points).decode()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"skipvit"}
    for folder in FOLDERS:
        assert f"skipvit/{folder}/__init__.py" in names
    assert "skipvit/service/static/index.html" in names
    assert "[console_scripts]\nskipvit = skipvit.cli:main" in scripts


def test_pyproject_maps_every_folder_into_skipvit():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"] == {"skipvit": "skipvit", **{f"skipvit.{f}": f for f in FOLDERS}}
    packages = {
        "skipvit." + ".".join(p.relative_to(REPO).parts[:-1])
        for f in FOLDERS
        for p in (REPO / f).rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    assert set(setuptools["packages"]) == {"skipvit", *packages}


def _bare_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [f"{path.relative_to(REPO)}:{node.lineno} {n}" for n in names if n.split(".")[0] in FOLDERS]
    return found


def test_no_code_imports_a_folder_by_its_bare_name():
    """With the repository on sys.path, `import service.x` would load a second copy of
    `skipvit.service.x` (and `kernels` would shadow the package of that name that transformers uses)."""
    files = [p for d in ("skipvit", *FOLDERS, "tests") for p in (REPO / d).rglob("*.py")]
    bad = [hit for p in files if "__pycache__" not in p.parts for hit in _bare_imports(p)]
    assert not bad, f"import these through skipvit (e.g. skipvit.model.vit): {bad}"
