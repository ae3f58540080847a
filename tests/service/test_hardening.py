"""What the server refuses, and what it never says: a bad bundle stops `skipvit serve` before the
port is bound; the admin token is never logged, never short, kept owner-only, and checked before
a PUT /config body is read; user input comes back in errors cut to about 100 characters."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from skipvit.model.bundle import BUNDLE_JSON, write_manifest
from skipvit.service.app import create_app
from skipvit.service.auth import admin_token
from skipvit.service.echo import echo
from skipvit.service.settings import Settings
from tests.service.helpers import files, wait_ready
from tests.service.server import REPO, free_port

TOKEN = "test-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
ECHO_MAX = 600  # an error that repeats 100 KB of input cut to 100 characters stays well below this


def serve_exits(bundle: Path, **env: str) -> subprocess.CompletedProcess:
    """`skipvit serve` on ``bundle``; it must exit by itself (the timeout fails the test)."""
    return subprocess.run(
        [sys.executable, "-m", "skipvit", "serve", "--bundle", str(bundle), "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "SKIPVIT_DEVICE": "cpu", "SKIPVIT_ENGINE": "thread", **env},
    )


def _malformed(root: Path) -> None:
    (root / BUNDLE_JSON).write_text("{not json")
    write_manifest(root)


def _manifest_mismatch(root: Path) -> None:
    with (root / "REPORT.md").open("a") as f:
        f.write("tampered\n")


def _architecture_mismatch(root: Path) -> None:
    meta = json.loads((root / BUNDLE_JSON).read_text())
    meta["architecture"]["dim"] = 8192
    (root / BUNDLE_JSON).write_text(json.dumps(meta))
    write_manifest(root)


def _missing_weights(root: Path) -> None:
    (root / "weights" / "static.safetensors").unlink()
    write_manifest(root)  # consistent with what is left; bundle.json still names the file


@pytest.mark.parametrize(
    "damage, says",
    [
        (_malformed, "malformed"),
        (_manifest_mismatch, "REPORT.md does not match its sha256"),
        (_architecture_mismatch, "does not describe these weights"),
        (_missing_weights, "manifest does not cover"),
    ],
    ids=["malformed", "manifest-mismatch", "architecture-mismatch", "missing-weights"],
)
def test_serve_refuses_a_bad_bundle_before_binding_the_port(tiny_bundle, tmp_path, damage, says):
    import shutil

    root = tmp_path / "b"
    shutil.copytree(tiny_bundle, root)
    damage(root)
    run = serve_exits(root, SKIPVIT_ADMIN_TOKEN=TOKEN)
    assert run.returncode != 0
    assert says in run.stderr, run.stderr
    assert "cannot serve the bundle" in run.stderr
    assert "Uvicorn running" not in run.stderr + run.stdout


def test_a_short_admin_token_is_refused_at_start(tiny_bundle):
    with pytest.raises(ValidationError, match="at least 16") as e:
        Settings(admin_token="x" * 15)
    assert "x" * 15 not in str(e.value)
    assert Settings(admin_token="x" * 16).admin_token is not None
    run = serve_exits(tiny_bundle, SKIPVIT_ADMIN_TOKEN="short-secret")
    assert run.returncode != 0
    assert "SKIPVIT_ADMIN_TOKEN has 12 characters; at least 16" in run.stderr
    assert "short-secret" not in run.stderr + run.stdout


def test_the_log_level_reads_in_either_case(monkeypatch):
    monkeypatch.setenv("SKIPVIT_LOG_LEVEL", "INFO")  # as Python's logging spells it
    assert Settings().log_level == "info"
    with pytest.raises(ValidationError, match="log_level"):
        Settings(log_level="loud")


def test_a_generated_token_is_never_logged_and_kept_owner_only(tmp_path, caplog):
    folder = tmp_path / "tok"
    folder.mkdir()
    folder.chmod(0o777)
    path = folder / "admin-token"
    with caplog.at_level(logging.INFO, logger="skipvit.service"):
        token = admin_token(None, path)
    assert token not in caplog.text
    assert str(path) in caplog.text
    assert path.read_text().strip() == token
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_echo_cuts_long_input():
    assert echo("a.png") == "a.png"
    cut = echo("x" * 100_000)
    assert len(cut) < 130 and cut.startswith("x" * 100) and "100000 characters" in cut


@pytest.fixture(scope="module")
def client(tiny_bundle):
    app = create_app(Settings(bundle=tiny_bundle, device="cpu", engine="thread", admin_token=TOKEN))
    with TestClient(app) as c:
        yield wait_ready(c)


@pytest.mark.parametrize("body", ["{not json", '{"point": 7}', ""], ids=["malformed", "wrong-type", "empty"])
def test_put_config_authenticates_before_reading_the_body(client, body):
    r = client.put("/config", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 401, r.text
    r = client.put("/config", content=body, headers={"content-type": "application/json", **ADMIN})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][0] == "body"


def test_put_config_still_applies_with_the_token(client):
    r = client.put("/config", json={"max_wait_ms": 3.0}, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["max_wait_ms"] == 3.0


def test_errors_cut_what_the_user_sent(client):
    long = "n" * 100_000
    r = client.post("/classify", files=[("files", (long + ".png", b"not an image", "image/png"))])
    assert r.status_code == 422 and len(r.content) < ECHO_MAX, len(r.content)
    r = client.post("/classify", params={"point": long[:50_000]}, files=files(b"x"))
    assert r.status_code == 404 and len(r.content) < ECHO_MAX, len(r.content)
    r = client.put("/config", json={"point": long}, headers=ADMIN)
    assert r.status_code == 422 and len(r.content) < ECHO_MAX, len(r.content)
    r = client.put("/config", json={long: 1}, headers=ADMIN)
    assert r.status_code == 422 and len(r.content) < ECHO_MAX, len(r.content)
    r = client.post("/classify", content=b"x", headers={"content-type": "text/" + "p" * 10_000})
    assert r.status_code == 415 and len(r.content) < ECHO_MAX, len(r.content)  # not multipart
