"""constraints.txt: every dependency pinned, inside the range pyproject.toml declares, and used by
every install (Makefile and Dockerfile); constraints-checkov.txt the same for checkov's own
virtual environment."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]


def declared() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        reqs += [Requirement(r) for r in extra]
    return [r for r in reqs if canonicalize_name(r.name) != canonicalize_name(project["name"])]


def pins(file: str = "constraints.txt") -> dict[str, Version]:
    out = {}
    for line in (REPO / file).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep, f"{file}: {line!r} is not NAME==VERSION"
        out[canonicalize_name(name)] = Version(version)
    return out


def test_every_declared_dependency_is_pinned_inside_its_range():
    pinned = pins()
    missing = [r.name for r in declared() if canonicalize_name(r.name) not in pinned]
    assert not missing, f"constraints.txt pins nothing for {missing}; Hint: make lock"
    outside = [
        f"{r.name}=={pinned[canonicalize_name(r.name)]} (pyproject: {r.specifier})"
        for r in declared()
        if not r.specifier.contains(pinned[canonicalize_name(r.name)], prereleases=True)
    ]
    assert not outside, f"pins outside the declared ranges: {outside}"


def test_torch_pin_matches_the_makefile_and_has_no_local_label():
    torch = pins()["torch"]
    assert not torch.local, "pin torch without +cpu: the same constraint then fits the CPU wheel"
    spec = re.search(r"^TORCH_SPEC := torch==(\S+)$", (REPO / "Makefile").read_text(), re.M)
    assert spec and Version(spec.group(1)) == torch


def test_every_install_applies_the_constraints():
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^PIP_INSTALL := .*-c constraints\.txt", makefile, re.M)
    installs = [line for line in makefile.splitlines() if "pip install" in line or "$(PIP_INSTALL)" in line]
    unpinned = [
        line
        for line in installs
        if "PIP_INSTALL" not in line and "--upgrade" not in line and "-c constraints-checkov.txt" not in line
    ]
    assert not unpinned, f"Makefile installs without constraints.txt: {unpinned}"
    dockerfile = (REPO / "Dockerfile").read_text()
    project_install = re.search(r"pip install[^\n]*\s\.\s", dockerfile)
    assert project_install and "-c constraints.txt" in project_install.group(0)


def test_checkov_venv_is_pinned_and_apart():
    # checkov pins packages below what torch and the suite use: it gets a venv of its own, never
    # the project's constraints.
    pinned = pins("constraints-checkov.txt")
    assert "checkov" in pinned and "checkov" not in pins()
    makefile = (REPO / "Makefile").read_text()
    install = re.search(r"^\t\$\(CHECKOV_VENV\)/bin/pip install .*$", makefile, re.M)
    assert install and "-c constraints-checkov.txt checkov" in install.group(0)
    assert re.search(r"^setup-dev: .*\$\(CHECKOV_VENV\)/\.stamp-install", makefile, re.M)
