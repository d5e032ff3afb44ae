"""Object-level authorization: which devices and rooms a caller may see, and WebSocket origins.

A device belongs to the application in its ``devices.application_id``; a caller
sees it when :meth:`Principal.may_see` says so. Anything the caller may not see
answers exactly as if it did not exist (404), so ids of other applications do
not leak.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.requests import HTTPConnection

from api.auth import Authenticator, Principal
from api.config import ApiConfig
from api.errors import NotFound, ServiceUnavailable
from api.rooms import Room

__all__ = [
    "device_application",
    "may_join",
    "origin_allowed",
    "require_device",
    "visible_filter",
]

log = logging.getLogger(__name__)

_ABSENT = object()


async def device_application(pool: AsyncConnectionPool[Any], device_id: str) -> object:
    """The device's ``application_id`` (may be None), or a sentinel when there is no such device.

    Raises :class:`ServiceUnavailable` when PostgreSQL cannot be reached.
    """
    try:
        async with pool.connection(timeout=5.0) as conn:
            cursor = await conn.execute(
                "SELECT application_id FROM devices WHERE id = %s", (device_id,)
            )
            row = await cursor.fetchone()
    except (PoolTimeout, psycopg.OperationalError) as exc:
        log.warning("device %s: PostgreSQL unavailable: %s", device_id, exc)
        raise ServiceUnavailable("PostgreSQL unavailable", str(exc)) from exc
    return _ABSENT if row is None else row[0]


async def require_device(
    conn: HTTPConnection, principal: Principal, device_id: str, *, must_exist: bool = False
) -> str | None:
    """Raise 404 unless ``principal`` may see ``device_id``; returns its application id.

    Admins see every device, including ones not (yet) registered, unless
    ``must_exist`` asks for a row in ``devices``.
    """
    if principal.is_admin and not must_exist:
        return None
    application = await device_application(conn.app.state.services.pool, device_id)
    if application is _ABSENT or not principal.may_see(application):  # type: ignore[arg-type]
        raise NotFound("no such device", f"device {device_id} does not exist")
    return application  # type: ignore[return-value]


def visible_filter(principal: Principal, column: str = "application_id") -> tuple[str, tuple[Any, ...]]:
    """A SQL condition (and its parameters) selecting the rows ``principal`` may see."""
    if principal.is_admin:
        return "TRUE", ()
    return f"{column} = ANY(%s)", (sorted(principal.applications),)


async def may_join(
    pool: AsyncConnectionPool[Any], authenticator: Authenticator, principal: Principal, room: Room
) -> bool:
    """Whether ``principal`` may subscribe to ``room`` (device rooms: the device must be visible)."""
    if not authenticator.may_join(principal, room):
        return False
    if room.kind != "device" or principal.is_admin:
        return True
    assert room.ident is not None
    application = await device_application(pool, room.ident)
    return application is not _ABSENT and principal.may_see(application)  # type: ignore[arg-type]


def origin_allowed(conn: HTTPConnection) -> bool:
    """A WebSocket handshake's ``Origin`` is in the configured list. Clients that send
    none (not a browser, so no cross-site risk) pass; they still need a token."""
    origin = conn.headers.get("origin")
    if origin is None:
        return True
    config: ApiConfig = conn.app.state.api_config
    return "*" in config.allowed_origins or origin.rstrip("/") in config.allowed_origins
