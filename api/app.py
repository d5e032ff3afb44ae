"""The API application: Starlette routes wrapped by the Socket.IO server, and its runner."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import socketio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from api.auth import Authenticator, DevTokenAuthenticator
from api.devices import device_routes
from api.errors import exception_handlers
from api.health import health_endpoint
from api.metrics import metrics_endpoint
from api.services import open_services
from api.sockets import create_socketio
from api.topics import DEFAULT_QUEUE_SIZE, topic_stream_route
from pipeline.settings import Settings

__all__ = ["STATIC_DIR", "create_app", "main"]

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"


# The dashboard loads nothing from elsewhere; say so, so a browser enforces it.
_DASHBOARD_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": "default-src 'self'; connect-src 'self'; frame-ancestors 'none'",
}


async def _dashboard(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "index.html", headers=_DASHBOARD_HEADERS)


def create_app(
    settings: Settings,
    *,
    authenticator: Authenticator | None = None,
    ws_queue_size: int = DEFAULT_QUEUE_SIZE,
) -> ASGIApp:
    """The whole API as one ASGI app: REST, ``/ws/topics``, the dashboard and ``/socket.io/``.

    Nothing connects here; the lifespan opens PostgreSQL, Redis, the HTTP session
    and the Kafka tail, and closes them on shutdown.
    """
    auth = authenticator or DevTokenAuthenticator(settings.dev_token)
    sio = create_socketio(auth)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with open_services(settings, sio) as services:
            app.state.services = services
            log.info("API ready on http://%s:%d", settings.api_host, settings.api_port)
            yield

    routes: list[BaseRoute] = [
        Route("/", _dashboard, methods=["GET"]),
        Route("/health", health_endpoint, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        *device_routes(),
        topic_stream_route(queue_size=ws_queue_size),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    app = Starlette(
        routes=routes, exception_handlers=exception_handlers(), lifespan=lifespan
    )
    app.state.settings = settings
    app.state.authenticator = auth
    app.state.sio = sio
    return cast(ASGIApp, socketio.ASGIApp(sio, other_asgi_app=app, socketio_path="socket.io"))


def main(settings: Settings) -> int:
    """Serve the API on ``settings.api_host:api_port`` until SIGINT or SIGTERM.

    Returns 0 after a clean shutdown, 1 when the server could not start.
    """
    config = uvicorn.Config(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_level=settings.log_level.lower(),
        lifespan="on",
        ws="websockets-sansio",
        proxy_headers=False,
    )
    server = uvicorn.Server(config)
    try:
        server.run()  # uvicorn handles SIGINT/SIGTERM: stop accepting, drain, run the shutdown
    except SystemExit as exc:  # uvicorn exits this way when it cannot bind the port
        return exc.code if isinstance(exc.code, int) else 1
    return 0 if server.started else 1
