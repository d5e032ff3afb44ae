"""Per-device API keys: made at random, stored only as a hash, checked in constant time.

A key is ``secrets.token_urlsafe(32)`` (256 random bits). Such a key cannot be
guessed or brute-forced from its hash, so a fast hash is the right one: the
stored form is its SHA-256 hex digest (``devices.api_key_hash``), and checking
a request costs one hash, not a deliberately slow password hash per call.

:func:`authenticate_device` answers who is calling a device route: the device
of the path (its key matches), another device (its key is someone else's:
403), or nobody (401). It reads the ``X-API-Key`` header, and for WebSockets
also the ``api_key`` query parameter.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.requests import HTTPConnection

from api.errors import ApiError, Forbidden, ServiceUnavailable

__all__ = [
    "API_KEY_HEADER",
    "API_KEY_QUERY",
    "DeviceIdentity",
    "DeviceUnauthorized",
    "authenticate_device",
    "check_device_key",
    "current_keys",
    "hash_api_key",
    "new_api_key",
    "presented_key",
]

log = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"
API_KEY_QUERY = "api_key"
_KEY_BYTES = 32
_MAX_KEY_CHARS = 256


class DeviceUnauthorized(ApiError):
    """No API key, or one that belongs to no device (401)."""

    status_code = 401


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """An authenticated device: its id and the application it is registered under."""

    device_id: str
    application_id: str | None


def new_api_key() -> str:
    """A fresh random key, URL-safe text of 43 characters."""
    return secrets.token_urlsafe(_KEY_BYTES)


def hash_api_key(key: str) -> str:
    """The stored form of ``key``: SHA-256, lower-case hex."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def presented_key(conn: HTTPConnection) -> str | None:
    """The key a request or WebSocket handshake carries: header first, then ``?api_key=``
    (the query only on WebSockets, whose browser clients cannot set headers)."""
    key = conn.headers.get(API_KEY_HEADER)
    if key is None and conn.scope.get("type") == "websocket":
        key = conn.query_params.get(API_KEY_QUERY)
    return key or None


async def check_device_key(
    pool: AsyncConnectionPool[Any], device_id: str, key: str | None
) -> DeviceIdentity:
    """The device ``device_id`` when ``key`` is its key.

    Raises :class:`DeviceUnauthorized` (401), :class:`~api.errors.Forbidden` (403,
    another device's key) or :class:`~api.errors.ServiceUnavailable` (PostgreSQL down).
    """
    if not key:
        raise DeviceUnauthorized(
            "missing API key", f"send the device's API key in the {API_KEY_HEADER} header"
        )
    if len(key) > _MAX_KEY_CHARS:
        raise DeviceUnauthorized("invalid API key", "no device has this key")
    presented = hash_api_key(key)
    try:
        async with pool.connection(timeout=5.0) as conn:
            cursor = await conn.execute(
                "SELECT api_key_hash, application_id FROM devices WHERE id = %s", (device_id,)
            )
            row = await cursor.fetchone()
            if row is not None and row[0] and hmac.compare_digest(presented, row[0]):
                return DeviceIdentity(device_id, row[1])
            cursor = await conn.execute(
                "SELECT 1 FROM devices WHERE api_key_hash = %s", (presented,)
            )
            belongs_elsewhere = await cursor.fetchone() is not None
    except (PoolTimeout, psycopg.OperationalError) as exc:
        log.warning("device %s: PostgreSQL unavailable for the key check: %s", device_id, exc)
        raise ServiceUnavailable("PostgreSQL unavailable", str(exc)) from exc
    if belongs_elsewhere:
        raise Forbidden("API key of another device",
                        f"this key belongs to another device, not to {device_id}")
    raise DeviceUnauthorized("invalid API key", "no device has this key")


async def current_keys(
    pool: AsyncConnectionPool[Any], credentials: list[tuple[str, str]]
) -> set[tuple[str, str]]:
    """Those ``(device_id, key_hash)`` pairs that are still a device and its key (one query;
    raises what the pool raises when PostgreSQL is away)."""
    async with pool.connection(timeout=5.0) as conn:
        cursor = await conn.execute("SELECT id, api_key_hash FROM devices WHERE id = ANY(%s)",
                                    (sorted({device_id for device_id, _ in credentials}),))
        rows = await cursor.fetchall()
    return {(str(device_id), str(digest)) for device_id, digest in rows} & set(credentials)


async def authenticate_device(conn: HTTPConnection, device_id: str) -> DeviceIdentity:
    """The calling device, by the key it presents (see :func:`check_device_key`)."""
    # app.state.services is set by the lifespan (api.services); not imported here so that
    # tools (the simulator) can use the key functions without the API's client libraries.
    pool: AsyncConnectionPool[Any] = conn.app.state.services.pool
    return await check_device_key(pool, device_id, presented_key(conn))
