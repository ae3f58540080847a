"""Raw-socket HTTP/1.1 for the tests that need control over what is sent and when (slow clients,
headers without a body, resets): a client library would hide exactly what they check."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from skipvit.benchmarks.loadgen import BOUNDARY, classify_request
from tests.service.server import REPO, TOKEN, free_port, poll_ready

# `skipvit serve` with an engine that takes ``SLOW_ENGINE_S`` seconds per batch (a thread engine,
# so that the patch applies), for tests that need a queue that fills.
SLOW_ENGINE = """
import os, time
from skipvit.service.engine import Engine
real = Engine.predict
delay = float(os.environ["SLOW_ENGINE_S"])
def predict(self, images, points=None):
    time.sleep(delay)
    return real(self, images, points)
Engine.predict = predict
from skipvit.service.main import serve
serve()
"""


class Served:
    """A `skipvit serve` subprocess (``script``: Python source to run instead of the plain CLI)."""

    def __init__(
        self, bundle: Path, tmp: Path, script: str | None = None, fd_limit: int | None = None, **env
    ):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"server-{self.port}.log"
        full_env = {
            **os.environ,
            "SKIPVIT_BUNDLE": str(bundle),
            "SKIPVIT_PORT": str(self.port),
            "SKIPVIT_DEVICE": "cpu",
            "SKIPVIT_LOG_LEVEL": "info",
            "SKIPVIT_ADMIN_TOKEN": TOKEN,
            "SKIPVIT_ADMIN_TOKEN_FILE": str(tmp / "admin-token"),
            **{k: str(v) for k, v in env.items()},
        }
        cmd = [sys.executable, "-c", script] if script else [sys.executable, "-m", "skipvit", "serve"]

        def limit_fds() -> None:
            if fd_limit is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))

        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd, env=full_env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, preexec_fn=limit_fds
            )

    def __enter__(self) -> Served:
        def alive() -> None:
            assert self.proc.poll() is None, self.output()

        assert poll_ready(self.base, 120, alive), self.output()
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def connect(self, timeout: float = 10.0) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def classify_bytes(self, pngs: list[bytes], close: bool = False) -> bytes:
        data = classify_request("127.0.0.1", self.port, "/classify", pngs)
        return data.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1) if close else data


def head_only(port: int, content_length: int) -> bytes:
    """The headers of a /classify upload, without its body."""
    return (
        f"POST /classify HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {content_length}\r\n\r\n"
    ).encode()


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one response; raises on EOF or a reset before it is whole."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionAbortedError(f"EOF after {len(data)} bytes")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionAbortedError("EOF in the body")
        body += chunk
    return int(lines[0].split()[1]), headers, body[:length]


def timed(fn) -> tuple[float, object]:
    t0 = time.monotonic()
    out = fn()
    return time.monotonic() - t0, out
