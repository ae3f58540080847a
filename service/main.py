"""`skipvit serve`: run the app under uvicorn, draining on SIGTERM.

The first SIGTERM (or Ctrl+C) drains: /readyz and any new /classify answer 503, the listening
socket completes no new handshake and closes once the connections already made are accepted (a
client that retries is refused at connect, and never has a request cut off), kept-alive
connections close after their answer, idle ones after a short grace for a request already on its
way (``service.connections``), and the process exits 0 once every admitted request is answered. The drain is bounded by ``SKIPVIT_DRAIN_TIMEOUT_S``; what
is still waiting then hears 503. An engine that never returns a batch is given up after as long
again (its requests hear 503) and the process exits 1: a process engine is ended, a thread engine
left behind. A second signal exits at once, without a traceback (1 if a batch was still in the
engine). If the engine processes cannot be kept alive (``service.healing``: too many lost before a
healthy run, in a row) the server drains and shuts down the same way, and exits 1 with an ERROR
naming why, so that a restart policy starts it afresh.

Connections are bounded and timed (``service.connections``): at most ``SKIPVIT_MAX_CONNECTIONS``
(by default what the file-descriptor limit allows) and ``SKIPVIT_HEADER_TIMEOUT_S`` for a request's
headers.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal

import uvicorn

from skipvit.service import sched

log = logging.getLogger("skipvit.service")
ACCEPT_QUEUE_S = 0.05  # after the handshakes stop, time for the loop to accept the connections made


def add_arguments(p) -> None:
    p.add_argument(
        "--bundle", default=None, help="bundle directory (default: SKIPVIT_BUNDLE or the shipped one)"
    )
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8000)")


def run(args) -> None:
    serve(bundle=args.bundle, host=args.host, port=args.port)


def serve(bundle: str | None = None, host: str | None = None, port: int | None = None) -> None:
    from pydantic import ValidationError

    from skipvit.service.app import create_app
    from skipvit.service.lifecycle import drain, hurry
    from skipvit.service.settings import Settings
    from skipvit.service.state import service_state

    overrides = {k: v for k, v in {"bundle": bundle, "host": host, "port": port}.items() if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as e:
        raise SystemExit(f"invalid settings: {e}") from None
    check_bundle(settings)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(settings)
    state = service_state(app)
    state.owns_process = True
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=max(1, int(settings.drain_timeout_s)),
        http=guarded_protocol(settings, state),
    )
    server = DrainingServer(config, functools.partial(drain, state), functools.partial(hurry, state))
    state.stop_server = server.stop
    if settings.loop_sched == "batch" and sched.batch():
        log.info("event loop thread in SCHED_BATCH (SKIPVIT_LOOP_SCHED)")
    server.run()
    if state.engine_hung or (state.batcher is not None and state.batcher.computing):
        # A batch never came back from the engine (its requests were answered 503, or a second
        # signal did not wait for them). The interpreter would wait for the worker thread at exit,
        # maybe forever: end a process engine, and leave without the thread.
        log.error("exiting with the engine still running a batch")
        if state.engine is not None:
            state.engine.close(timeout=1.0)
        logging.shutdown()
        os._exit(1)
    if state.gave_up is not None:
        # The engine processes could not be kept alive: exit non-zero, so that a restart policy
        # (Docker's, systemd's, an orchestrator's) starts the server afresh.
        log.error("exiting with status 1: %s", state.gave_up)
        raise SystemExit(1)


def guarded_protocol(settings, state):
    """uvicorn's HTTP protocol with the connection bound and the header timeout of ``settings``."""
    from skipvit.service.classify import refuse_at_headers
    from skipvit.service.connections import ConnectionGuard, GuardedProtocol, GuardSettings, connection_limit

    limit = connection_limit(settings.max_connections)
    timeouts = GuardSettings(limit, settings.header_timeout_s, settings.body_timeout_s)
    guard = ConnectionGuard(
        timeouts, on_refuse=state.metrics.rejected, refuse_classify=refuse_at_headers(state)
    )
    log.info("at most %d client connections, %g s for a request's headers", limit, settings.header_timeout_s)
    return functools.partial(GuardedProtocol, guard=guard)


def check_bundle(settings) -> None:
    """Refuse to start (``SystemExit`` naming the problem) unless the bundle loads: the manifest,
    every weight set's header against the architecture, the point to serve. Run before the port is
    bound; the engine loads the weights themselves later."""
    from skipvit.model.bundle import BundleError, load_bundle

    root = settings.bundle
    if not (root / "bundle.json").is_file():
        raise SystemExit(
            f"no bundle at {root}; Hint: pass --bundle DIR or set SKIPVIT_BUNDLE "
            "(the shipped default is checkpoints/fashion-mnist, run from the repository root)"
        )
    try:
        load_bundle(root).point(settings.point)
    except BundleError as e:
        raise SystemExit(f"cannot serve the bundle {root}: {e}") from None
    except KeyError as e:  # SKIPVIT_POINT names no point of the front
        raise SystemExit(f"cannot serve the bundle {root}: SKIPVIT_POINT: {e.args[0]}") from None


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first exit signal drains the app (``drain``: a function of no
    arguments, called on the event loop) and then shuts down; a second one exits at once, still
    ending the app's lifespan (``hurry`` first, so that it does not wait for the engine): uvicorn
    would skip it, and the lifespan task, cancelled at the loop's end, would log a traceback."""

    def __init__(self, config: uvicorn.Config, drain, hurry) -> None:
        super().__init__(config)
        self._drain, self._hurry = drain, hurry
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    async def shutdown(self, sockets=None) -> None:
        from skipvit.service.connections import stop_handshakes

        # No connection completes its handshake from here on; the loop accepts those already made
        # (they hear 503, draining) before uvicorn closes the listening socket, which then resets
        # no request a client has sent. A client that retries is refused.
        if not self.force_exit and all(stop_handshakes(s) for srv in self.servers for s in srv.sockets):
            await asyncio.sleep(ACCEPT_QUEUE_S)
        await super().shutdown(sockets)
        if self.force_exit and self.started:
            self._hurry()
            await self.lifespan.shutdown()

    def handle_exit(self, sig: int, frame) -> None:
        # Not calling super(): uvicorn would re-raise the signal after shutdown; we exit 0.
        if self._draining or self._loop is None:
            if not self.force_exit:
                log.warning("signal %s again: exiting without waiting", signal.Signals(sig).name)
            self.should_exit = self.force_exit = True
            return
        self._draining = True
        log.info("signal %s: draining", signal.Signals(sig).name)
        self._loop.call_soon_threadsafe(self._begin_drain)

    def stop(self) -> None:
        """Drain and shut down as a first signal would, from any thread (the engine could not be
        healed); after a drain has begun, nothing more."""
        if self._draining or self._loop is None:
            return
        self._draining = True
        self._loop.call_soon_threadsafe(self._begin_drain)

    def _begin_drain(self) -> None:
        try:
            self._drain()
        finally:
            self.should_exit = True  # uvicorn: stop listening, close idle connections, wait for the rest
