"""The replicas of a fleet over HTTP: who they are (``resolve``) and one JSON request to each
(``call``, ``call_all``). Blocking, standard library only (urllib, a thread per replica): the
service runs it off the event loop (``service.fleetsync``), the CLI as it is (``service.fleetctl``).

A peer is ``host:port``. A name resolves to every address it has (``socket.getaddrinfo``): a
Kubernetes headless Service has one per ready pod, so ``skipvit-peers:8000`` names the whole fleet.
A name with both IPv4 and IPv6 addresses is taken at its IPv4 ones (in a dual-stack cluster each
pod has one of each; the server listens on one family), else at its IPv6 ones. No proxy is used:
replicas talk to each other directly, whatever ``HTTP_PROXY`` says.
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def resolve(peers: Sequence[tuple[str, int]]) -> tuple[list[str], list[str]]:
    """(every address of ``peers``, in order without repeats; the entries that resolved to none,
    each with the reason)."""
    found: list[str] = []
    missing: list[str] = []
    for host, port in peers:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as e:
            missing.append(f"{address(host, port)} ({e})")
            continue
        v4 = [i[4][0] for i in infos if i[0] == socket.AF_INET]
        v6 = [i[4][0] for i in infos if i[0] == socket.AF_INET6]
        for ip in v4 or v6:
            a = address(ip, port)
            if a not in found:
                found.append(a)
    return found, missing


@dataclass(frozen=True)
class Reply:
    """One replica's answer: ``status`` (0: no answer, ``error`` says why) and the JSON ``body``."""

    status: int
    body: Any = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200

    def detail(self) -> str:
        """What a refusal said (its ``detail``), or why there was no answer."""
        if self.status == 0:
            return self.error
        d = self.body.get("detail") if isinstance(self.body, dict) else None
        if isinstance(d, list):  # pydantic's errors
            return "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in d)
        return str(d if d is not None else self.body)


def call(
    addr: str, method: str, path: str, timeout: float, body: Any = None, token: str | None = None
) -> Reply:
    """One request to ``http://{addr}{path}``; never raises for a refusal or a lost connection."""
    headers = {"accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["content-type"] = "application/json"
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    req = urllib.request.Request(f"http://{addr}{path}", data=data, headers=headers, method=method)
    try:
        with OPENER.open(req, timeout=timeout) as r:
            return Reply(r.status, _json(r.read()))
    except urllib.error.HTTPError as e:
        return Reply(e.code, _json(_read(e)))
    except (OSError, ValueError, http.client.HTTPException) as e:  # refused, reset, timed out, cut off
        reason = getattr(e, "reason", None) or e
        return Reply(0, error=f"no answer: {reason}")


def _read(e: urllib.error.HTTPError) -> bytes:
    try:
        return e.read()
    except (OSError, http.client.HTTPException):
        return b""
    finally:
        e.close()


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")[:200]


def call_all(
    addrs: Sequence[str],
    method: str,
    path: str,
    timeout: float,
    body: Any = None,
    token: str | None = None,
) -> dict[str, Reply]:
    """``call`` to every one of ``addrs`` at once, all within ``timeout``: a replica that has not
    answered by then counts as no answer. Answers by address, in the order of ``addrs``."""
    if not addrs:
        return {}
    pool = ThreadPoolExecutor(max_workers=min(64, len(addrs)), thread_name_prefix="skipvit-peer")
    try:
        futures = [pool.submit(call, a, method, path, timeout, body, token) for a in addrs]
        wait(futures, timeout)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # a straggler ends at its socket's timeout
    late = Reply(0, error=f"no answer within {timeout:g} s")
    return {
        a: late if f.cancelled() or not f.done() else f.result() for a, f in zip(addrs, futures, strict=True)
    }
