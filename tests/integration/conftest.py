"""API fixtures: the real API served by uvicorn on a free port, in a thread of this process."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import uvicorn

from api.app import create_app
from pipeline.settings import Settings


@dataclass(frozen=True)
class ApiServer:
    """A running API: where it listens and the token it accepts."""

    settings: Settings
    base_url: str
    ws_url: str
    token: str


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def api_server(stack: Settings) -> Iterator[ApiServer]:
    """The API with its lifespan (PostgreSQL pool, Redis, Kafka tail) on a free port."""
    port = _free_port()
    settings = stack.model_copy(update={"api_host": "127.0.0.1", "api_port": port})
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        ws="websockets-sansio",
    )
    server = uvicorn.Server(config)
    # In a thread, uvicorn leaves the signal handlers alone and runs its own event loop.
    thread = threading.Thread(target=server.run, name="api-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the API did not start on 127.0.0.1:{port}")
        time.sleep(0.05)
    try:
        yield ApiServer(
            settings=settings,
            base_url=f"http://127.0.0.1:{port}",
            ws_url=f"ws://127.0.0.1:{port}",
            token=settings.dev_token.get_secret_value(),
        )
    finally:
        server.should_exit = True
        thread.join(timeout=15)
