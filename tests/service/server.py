"""A real `skipvit serve` process on a free loopback port, for the tests that need one."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx2

REPO = Path(__file__).resolve().parents[2]
TOKEN = "load-test-admin-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def poll_ready(base: str, timeout: float = 60.0, check: Callable[[], None] | None = None) -> bool:
    """Poll ``GET {base}/readyz`` until it answers 200 (True) or ``timeout`` passes (False).
    ``check`` runs before each try; it raises if the server can no longer come up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check is not None:
            check()
        try:
            if httpx2.get(f"{base}/readyz", timeout=1).status_code == 200:
                return True
        except httpx2.TransportError:
            pass
        time.sleep(0.1)
    return False


class ServerProcess:
    def __init__(self, bundle: Path, tmp: Path, port: int | None = None, **env: str) -> None:
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"server-{self.port}.log"
        env = {
            **os.environ,
            "SKIPVIT_DEVICE": "cpu",
            "SKIPVIT_LOG_LEVEL": "info",
            "SKIPVIT_ADMIN_TOKEN": TOKEN,
            "SKIPVIT_ADMIN_TOKEN_FILE": str(tmp / "admin-token"),
            **env,
        }
        self._out = self.log.open("ab")  # a restart on the same port adds to the log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "skipvit", "serve", "--bundle", str(bundle), "--port", str(self.port)],
            env=env,
            cwd=REPO,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 120) -> ServerProcess:
        def alive() -> None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.output()}")

        if poll_ready(self.base, timeout, alive):
            return self
        self.stop()
        raise RuntimeError(f"server did not become ready in {timeout} s:\n{self.output()}")

    def output(self) -> str:
        self._out.flush()
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._out.close()
