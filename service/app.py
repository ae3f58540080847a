"""FastAPI app factory: an assembly of the parts, nothing more. The bundle is loaded in the lifespan
(``service.lifecycle``), never at import.

- ``ServiceState`` (``service.state``): what the parts share, the only thing in ``app.state``;
- ``ServiceMiddleware`` (``service.middleware``): admission, body limit, request metrics; it
  hands ``/classify`` to the plain ASGI app ``Classify`` (``service.classify``), the hot path;
- the other routes (``service.routes``), and the answers to failures (``service.failures``).
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.staticfiles import StaticFiles

from skipvit.service import contract, failures, fleetsync, lifecycle
from skipvit.service.classify import Classify, document
from skipvit.service.middleware import ServiceMiddleware
from skipvit.service.routes import STATIC, router
from skipvit.service.settings import Settings
from skipvit.service.state import ServiceState


class ServiceApp(FastAPI):
    """FastAPI with ``ServiceMiddleware`` outside Starlette's own middleware stack: ``/classify``
    (the hot path, and the refusals under overload) passes none of its layers."""

    def build_middleware_stack(self):
        state: ServiceState = self.state.service
        return ServiceMiddleware(
            super().build_middleware_stack(),
            classify=Classify(state),
            metrics=state.metrics,
            admission=state.admission,
            max_body_bytes=state.settings.max_body_bytes,
        )


def create_app(settings: Settings | None = None) -> FastAPI:
    state = ServiceState(settings or Settings())
    app = ServiceApp(
        title="skipvit",
        version="0.1.0",
        lifespan=lifecycle.lifespan(state),
        description="Adaptive-depth ViT classification: each image runs only the layers it needs.",
    )
    app.state.service = state
    failures.install(app, state.metrics)
    app.include_router(router)
    app.include_router(fleetsync.router)
    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.openapi = openapi_with_classify(app)
    return app


def openapi_with_classify(app: FastAPI) -> Callable[[], dict]:
    """The app's OpenAPI schema: the routes, plus ``POST /classify`` (a plain ASGI app, which
    FastAPI does not see), with every answer of each (``service.contract``)."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            schema = document(schema, app.state.service.settings.max_files)
            app.openapi_schema = contract.document(schema)
        return app.openapi_schema

    return openapi
