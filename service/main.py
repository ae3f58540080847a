"""`skipvit serve`: run the app under uvicorn."""

from __future__ import annotations

import logging
import signal
import sys


def serve(bundle: str | None = None, host: str | None = None, port: int | None = None) -> None:
    import uvicorn

    from service.app import create_app
    from service.settings import Settings

    overrides = {k: v for k, v in {"bundle": bundle, "host": host, "port": port}.items() if v is not None}
    settings = Settings(**overrides)
    if not (settings.bundle / "bundle.json").is_file():
        raise SystemExit(
            f"no bundle at {settings.bundle}; Hint: pass --bundle DIR or set SKIPVIT_BUNDLE "
            "(the shipped default is checkpoints/fashion-mnist, run from the repository root)"
        )
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal with the previous
    # handler in place: make that handler a clean exit, so a drained server exits 0.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level)
