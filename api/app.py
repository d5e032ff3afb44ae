"""The API application: Starlette routes wrapped by the Socket.IO server, and its runner."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import socketio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from api.alarms import alarm_routes
from api.auth import Authenticator, JwtAuthenticator
from api.commands import command_routes
from api.config import ApiConfig, load_api_config
from api.connlimit import ConnectionLimiter
from api.connwatch import ConnectionWatch
from api.device_keys import current_keys
from api.device_metrics import device_metrics_routes
from api.device_registry import device_registry_routes
from api.device_ws import device_socket_route
from api.devices import device_routes
from api.errors import exception_handlers
from api.health import health_endpoint
from api.history import history_routes
from api.hygiene import ResponseHygiene
from api.ingest import ingest_routes, open_ingest
from api.kafkastats import KafkaStats
from api.login import login_routes
from api.metrics import metrics_endpoint
from api.openapi import describe, openapi_route
from api.passwords import Passwords
from api.server import guarded_http_protocol
from api.services import open_services
from api.sockets import create_socketio
from api.standing import UserStanding
from api.tokens import AccessTokens
from api.topics import DEFAULT_QUEUE_SIZE, topic_stream_route
from api.useradmin import user_admin_routes
from api.users import UserStore
from pipeline.heartbeat import Heartbeat
from pipeline.settings import Settings

__all__ = ["STATIC_DIR", "create_app", "main", "starlette_of"]

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"


# Its Content-Security-Policy comes with every HTML answer (api.hygiene).
_DASHBOARD_HEADERS = {"Cache-Control": "no-cache"}


@describe(content_type="text/html", response={"type": "string"}, errors=())
async def _dashboard(request: Request) -> Response:
    """The dashboard (HTML; its scripts and styles are under /static)."""
    return FileResponse(STATIC_DIR / "index.html", headers=_DASHBOARD_HEADERS)


def create_app(
    settings: Settings,
    *,
    authenticator: Authenticator | None = None,
    ws_queue_size: int = DEFAULT_QUEUE_SIZE,
    api_config: ApiConfig | None = None,
) -> ASGIApp:
    """The whole API as one ASGI app: REST, ``/ws/topics``, the dashboard and ``/socket.io/``.

    Nothing connects here; the lifespan opens PostgreSQL, Redis, the HTTP session
    and the Kafka tail, and closes them on shutdown.
    """
    config = api_config or load_api_config(settings)
    tokens = AccessTokens(
        secret=config.jwt_secret.get_secret_value(),
        issuer=config.jwt_issuer,
        audience=config.jwt_audience,
        ttl_s=config.access_token_ttl_s,
    )
    auth = authenticator or JwtAuthenticator(tokens)
    ws_limiter = ConnectionLimiter(config.ws_max_per_user)
    # Open connections by the user or device key they were opened with (api.connwatch).
    user_watch: ConnectionWatch[str] = ConnectionWatch("user")
    device_watch: ConnectionWatch[tuple[str, str]] = ConnectionWatch("device")
    sio, fanout = create_socketio(
        auth,
        services=lambda: getattr(app.state, "services", None),
        allowed_origins=config.allowed_origins,
        connection_limiter=ws_limiter,
        user_watch=user_watch,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with open_services(settings, fanout) as services, open_ingest(app, settings):
            app.state.services = services
            passwords = Passwords(workers=config.password_hash_workers,
                                  max_waiting=config.password_hash_max_waiting)
            app.state.users = UserStore(services.pool.connection, passwords)
            app.state.kafka_stats = KafkaStats(settings.kafka_bootstrap)
            every = config.ws_credential_check_s
            watchers = [asyncio.create_task(device_watch.run(
                functools.partial(current_keys, services.pool), every), name="device-watch")]
            if isinstance(auth, JwtAuthenticator):  # its tokens name users of the users table
                watchers.append(asyncio.create_task(
                    user_watch.run(app.state.users.enabled, every), name="user-watch"))
                app.state.user_standing = UserStanding(app.state.users.enabled, every)
            heartbeat = Heartbeat(settings.redis_url, "api").start()
            log.info("API ready on http://%s:%d", settings.api_host, settings.api_port)
            try:
                yield
            finally:
                for watcher in watchers:
                    watcher.cancel()
                passwords.close()
                await asyncio.to_thread(heartbeat.stop)

    routes: list[BaseRoute] = [
        Route("/", _dashboard, methods=["GET"]),
        Route("/health", health_endpoint, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        *login_routes(),
        *user_admin_routes(),
        *device_routes(),
        *device_registry_routes(),
        *ingest_routes(),
        *command_routes(),
        *alarm_routes(),
        *history_routes(),
        *device_metrics_routes(),
        openapi_route(),
        topic_stream_route(queue_size=ws_queue_size),
        device_socket_route(),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    app = Starlette(
        routes=routes, exception_handlers=exception_handlers(), lifespan=lifespan
    )
    app.state.settings = settings
    app.state.authenticator = auth
    app.state.api_config = config
    app.state.tokens = tokens
    app.state.ws_limiter = ws_limiter
    app.state.user_watch = user_watch
    app.state.device_watch = device_watch
    app.state.sio = sio
    return ResponseHygiene(
        cast(ASGIApp, socketio.ASGIApp(sio, other_asgi_app=app, socketio_path="socket.io")))


def starlette_of(app: ASGIApp) -> Starlette:
    """The Starlette app (routes, state) inside what :func:`create_app` returns."""
    inner: Any = app
    while not isinstance(inner, Starlette):  # ResponseHygiene.app, then socketio's other app
        inner = inner.other_asgi_app if hasattr(inner, "other_asgi_app") else inner.app
    return inner


def main(settings: Settings) -> int:
    """Serve the API on ``settings.api_host:api_port`` until SIGINT or SIGTERM.

    Returns 0 after a clean shutdown, 1 when the server could not start.
    """
    api_config = load_api_config(settings)
    config = uvicorn.Config(
        create_app(settings, api_config=api_config),
        host=settings.api_host,
        port=settings.api_port,
        log_level=settings.log_level.lower(),
        lifespan="on",
        loop="uvloop",  # cheaper callbacks and sockets than asyncio's own loop
        # httptools with timeouts for slow headers and bodies (api.server)
        http=guarded_http_protocol(api_config.http_header_timeout_s, api_config.http_body_timeout_s),
        ws="websockets-sansio",
        proxy_headers=False,
        timeout_keep_alive=5,  # an idle keep-alive connection closes after 5 s
        # HTTPS when given a certificate (e.g. .stack/tls/server.pem of the local CA)
        ssl_certfile=str(settings.api_tls_certfile) if settings.api_tls_certfile else None,
        ssl_keyfile=str(settings.api_tls_keyfile) if settings.api_tls_keyfile else None,
    )
    server = uvicorn.Server(config)
    try:
        server.run()  # uvicorn handles SIGINT/SIGTERM: stop accepting, drain, run the shutdown
    except SystemExit as exc:  # uvicorn exits this way when it cannot bind the port
        return exc.code if isinstance(exc.code, int) else 1
    return 0 if server.started else 1
