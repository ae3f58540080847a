"""`skipvit serve`: run the app under uvicorn."""

from __future__ import annotations

import logging


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
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level)
