"""API fixtures: the real API served by uvicorn on a free port, in a thread of this process."""

from __future__ import annotations

import dataclasses
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import httpx
import psycopg
import pytest
import uvicorn

from api.app import create_app
from api.config import load_api_config
from api.passwords import Passwords
from api.server import guarded_http_protocol
from pipeline.settings import Settings
from tests.conftest import free_port, unique_id

_PASSWORDS = Passwords()


def create_user(settings: Settings, role: str, applications: Sequence[str] = (),
                *, username: str | None = None) -> tuple[str, str]:
    """A new user with a random password, straight into PostgreSQL: ``(name, password)``."""
    username = username or unique_id(f"u-{role}")
    password = secrets.token_urlsafe(12)
    with psycopg.connect(settings.pg_conninfo, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO users (username, password_hash, role) VALUES (%s, %s, %s) RETURNING id",
            (username, _PASSWORDS.hash(password), role),
        ).fetchone()
        assert row is not None
        for application in applications:
            conn.execute(
                "INSERT INTO user_applications (user_id, application_id) VALUES (%s, %s)",
                (row[0], application),
            )
    return username, password


def delete_users(settings: Settings, usernames: Sequence[str]) -> None:
    with psycopg.connect(settings.pg_conninfo, autocommit=True) as conn:
        conn.execute("DELETE FROM users WHERE username = ANY(%s)", (list(usernames),))


def login(base_url: str, username: str, password: str) -> dict[str, object]:
    """``POST /api/auth/token``; the JSON answer (fails the test unless 200)."""
    response = httpx.post(f"{base_url}/api/auth/token",
                          json={"username": username, "password": password}, timeout=15)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


@dataclass(frozen=True)
class ApiServer:
    """A running API: where it listens and an admin's access token (of a user made for the run)."""

    settings: Settings
    base_url: str
    ws_url: str
    token: str
    usernames: list[str] = field(default_factory=list, compare=False)

    def user_token(self, role: str, applications: Sequence[str] = ()) -> str:
        """The access token of a new user with ``role`` and ``applications`` granted."""
        username, password = create_user(self.settings, role, applications)
        self.usernames.append(username)
        return str(login(self.base_url, username, password)["access_token"])


@pytest.fixture(scope="session")
def api_server(stack: Settings) -> Iterator[ApiServer]:
    """The API with its lifespan (PostgreSQL pool, Redis, Kafka tail) on a free port."""
    port = free_port()
    settings = stack.model_copy(update={"api_host": "127.0.0.1", "api_port": port})
    # The session can outlast a 15-minute token, and tests rely on the admin token throughout.
    api_config = dataclasses.replace(load_api_config(settings), access_token_ttl_s=6 * 3600)
    config = uvicorn.Config(
        create_app(settings, api_config=api_config),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        http=guarded_http_protocol(api_config.http_header_timeout_s, api_config.http_body_timeout_s),
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
    base_url = f"http://127.0.0.1:{port}"
    admin, password = create_user(settings, "admin")
    server_info = ApiServer(
        settings=settings,
        base_url=base_url,
        ws_url=f"ws://127.0.0.1:{port}",
        token=str(login(base_url, admin, password)["access_token"]),
        usernames=[admin],
    )
    try:
        yield server_info
    finally:
        delete_users(settings, server_info.usernames)
        server.should_exit = True
        thread.join(timeout=15)
