"""Registering devices and their API keys (bearer-token routes).

- ``POST /api/devices`` (operator) ``{"id", "name", "protocol", "application_id"}``
  → ``201`` with the device and its ``api_key``, shown this once (only its hash
  is stored); ``409`` when the id exists.
- ``GET /api/devices/{id}`` (viewer), ``PATCH /api/devices/{id}`` (operator:
  ``name``, ``protocol``, ``application_id``), ``DELETE /api/devices/{id}`` (operator).
- ``POST /api/devices/{id}/api-key`` (operator): a new key replaces the old one
  at once (also for a device registered automatically, which has none).

Non-admins see and change only devices of their applications, and may only
register or move a device under one of them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import PoolTimeout
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api.access import require_device
from api.auth import Principal, principal_of, requires_auth
from api.device_accounts import close_account, open_account
from api.device_keys import hash_api_key, new_api_key
from api.errors import ApiError, Forbidden, InvalidField, NotFound, ServiceUnavailable
from api.jsonbody import json_object
from api.openapi import describe
from api.services import services_of
from pipeline.mqtt_accounts import DEVICE_PROTOCOLS, reserved_usernames
from schemas.records import APPLICATION_ID_PATTERN, DEVICE_ID_PATTERN, PROTOCOLS, iso_utc

__all__ = ["device_registry_routes"]

log = logging.getLogger(__name__)

T = TypeVar("T")
_MAX_NAME = 200
_MAX_APPLICATION = 128
_COLUMNS = ("id, name, protocol, application_id, created_at, last_seen, api_key_hash IS NOT NULL,"
            " identifiers")


class Conflict(ApiError):
    status_code = 409


_DEVICE = {
    "type": "object",
    "required": ["id", "protocol"],
    "properties": {
        "id": {"type": "string"}, "name": {"type": "string", "nullable": True},
        "protocol": {"type": "string"}, "application_id": {"type": "string", "nullable": True},
        "created_at": {"type": "string", "format": "date-time"},
        "last_seen": {"type": "string", "nullable": True, "format": "date-time"},
        "has_api_key": {"type": "boolean"},
        "identifiers": {"type": "object", "additionalProperties": {"type": "string"},
                        "description": "hardware identifiers its readings carried (imei, ...)"},
    },
}
_CREATED = {**_DEVICE, "required": ["id", "protocol", "api_key"],
            "properties": {**_DEVICE["properties"], "api_key": {"type": "string"}}}  # type: ignore[dict-item]
_FIELDS = {
    "name": {"type": "string", "maxLength": _MAX_NAME, "nullable": True},
    "protocol": {"type": "string", "enum": sorted(PROTOCOLS)},
    "application_id": {"type": "string", "minLength": 1, "maxLength": _MAX_APPLICATION,
                       "pattern": APPLICATION_ID_PATTERN.pattern, "nullable": True},
}
_NEW = {"type": "object", "required": ["id", "protocol"],
        "properties": {"id": {"type": "string", "pattern": DEVICE_ID_PATTERN.pattern}, **_FIELDS}}
_CHANGES = {"type": "object", "properties": _FIELDS}
_DELETED = {"type": "object", "required": ["id", "deleted"],
            "properties": {"id": {"type": "string"}, "deleted": {"type": "boolean"}}}
_KEY = {"type": "object", "required": ["id", "api_key"],
        "properties": {"id": {"type": "string"}, "api_key": {"type": "string"}}}


async def _pg(request: Request, work: Callable[[AsyncConnection[Any]], Awaitable[T]]) -> T:
    try:
        async with services_of(request).pool.connection(timeout=5.0) as conn:
            return await work(conn)
    except (PoolTimeout, psycopg.OperationalError) as exc:
        # the pool's counters say whether PostgreSQL was away or every connection was taken
        log.warning("%s %s: PostgreSQL unavailable: %s (pool: %s)", request.method, request.url.path,
                    exc, services_of(request).pool.get_stats())
        raise ServiceUnavailable("PostgreSQL unavailable", str(exc)) from exc


def _text(value: object, shortest: int, longest: int) -> bool:
    """Text PostgreSQL can store (no NUL) of ``shortest`` to ``longest`` characters."""
    return isinstance(value, str) and shortest <= len(value) <= longest and "\x00" not in value


def _fields(body: dict[str, Any], principal: Principal, *, creating: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "name" in body or creating:
        name = body.get("name")
        if name is not None and not _text(name, 0, _MAX_NAME):
            raise InvalidField("name", name, f"must be text of at most {_MAX_NAME} characters (no NUL)")
        out["name"] = name
    if "protocol" in body or creating:
        protocol = body.get("protocol")
        if protocol not in PROTOCOLS:
            raise InvalidField("protocol", protocol, f"must be one of {', '.join(sorted(PROTOCOLS))}")
        out["protocol"] = protocol
    if "application_id" in body or creating:
        app = body.get("application_id")
        if app is not None and not (isinstance(app, str) and APPLICATION_ID_PATTERN.fullmatch(app)):
            raise InvalidField("application_id", app,
                               f"must be 1 to {_MAX_APPLICATION} letters, digits, '_', '.', ':' or"
                               " '-', starting with a letter or digit, or null")
        if not principal.is_admin and (app is None or app not in principal.applications):
            raise Forbidden("forbidden", "a device must belong to one of your applications")
        out["application_id"] = app
    return out


def _json(row: tuple[Any, ...]) -> dict[str, Any]:
    device_id, name, protocol, application_id, created_at, last_seen, has_key, identifiers = row
    return {"id": device_id, "name": name, "protocol": protocol, "application_id": application_id,
            "created_at": iso_utc(created_at), "last_seen": _iso(last_seen),
            "has_api_key": bool(has_key), "identifiers": identifiers or {}}


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else iso_utc(moment)


def _path_id(request: Request) -> str:
    device_id: str = request.path_params["device_id"]
    if not DEVICE_ID_PATTERN.fullmatch(device_id):
        raise InvalidField("device_id", device_id, f"must match {DEVICE_ID_PATTERN.pattern}")
    return device_id


@describe(body=_NEW, response=_CREATED, status=201, errors=(400, 401, 403, 409, 422, 503))
@requires_auth(role="operator")
async def create_device(request: Request) -> Response:
    """Register a device; the answer holds its API key, shown only this once."""
    body = await json_object(request)
    device_id = body.get("id")
    if not isinstance(device_id, str) or not DEVICE_ID_PATTERN.fullmatch(device_id):
        raise InvalidField("id", device_id, f"required, must match {DEVICE_ID_PATTERN.pattern}")
    fields = _fields(body, principal_of(request), creating=True)
    if fields["protocol"] in DEVICE_PROTOCOLS and device_id in reserved_usernames():
        raise InvalidField("id", device_id, "is the user name of one of the MQTT broker's service"
                           " accounts; choose another id")
    key = new_api_key()

    async def insert(conn: AsyncConnection[Any]) -> tuple[Any, ...] | None:
        cursor = await conn.execute(
            "INSERT INTO devices (id, name, protocol, application_id, api_key_hash)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING"
            f" RETURNING {_COLUMNS}",
            (device_id, fields["name"], fields["protocol"], fields["application_id"],
             hash_api_key(key)),
        )
        return await cursor.fetchone()

    row = await _pg(request, insert)
    if row is None:
        raise Conflict("device exists", f"a device {device_id} is already registered;"
                       " POST /api/devices/{id}/api-key gives it a new key")
    try:
        await open_account(services_of(request).accounts, device_id, fields["protocol"], key)
    except ServiceUnavailable:  # no key that works over HTTP but not over MQTT: undone
        await _pg(request, lambda conn: conn.execute(
            "DELETE FROM devices WHERE id = %s AND api_key_hash = %s", (device_id, hash_api_key(key))))
        raise
    log.info("device %s registered by %s", device_id, principal_of(request).subject)
    return JSONResponse({**_json(row), "api_key": key}, status_code=201,
                        headers={"Location": f"/api/devices/{device_id}"})


async def _visible(request: Request) -> str:
    device_id = _path_id(request)
    await require_device(request, principal_of(request), device_id, must_exist=True)
    return device_id


async def _select(request: Request, device_id: str) -> dict[str, Any]:
    async def select(conn: AsyncConnection[Any]) -> tuple[Any, ...] | None:
        cursor = await conn.execute(f"SELECT {_COLUMNS} FROM devices WHERE id = %s", (device_id,))
        return await cursor.fetchone()

    row = await _pg(request, select)
    if row is None:  # deleted meanwhile
        raise NotFound("no such device", f"device {device_id} does not exist")
    return _json(row)


@describe(response=_DEVICE, errors=(401, 403, 404, 422, 503))
@requires_auth
async def get_device(request: Request) -> Response:
    """One device (never its key)."""
    return JSONResponse(await _select(request, await _visible(request)))


@describe(body=_CHANGES, response=_DEVICE, errors=(400, 401, 403, 404, 422, 503))
@requires_auth(role="operator")
async def patch_device(request: Request) -> Response:
    """Change a device's name, protocol or application."""
    device_id = await _visible(request)
    changes = _fields(await json_object(request), principal_of(request), creating=False)
    if changes:
        assignments = ", ".join(f"{column} = %s" for column in changes)  # names from _fields only
        await _pg(request, lambda conn: conn.execute(
            f"UPDATE devices SET {assignments} WHERE id = %s", (*changes.values(), device_id)))
    device = await _select(request, device_id)
    if "protocol" in changes and device["protocol"] not in DEVICE_PROTOCOLS:  # off MQTT now
        await close_account(services_of(request).accounts, device_id)
    return JSONResponse(device)


@describe(response=_DELETED, errors=(401, 403, 404, 422, 503))
@requires_auth(role="operator")
async def delete_device(request: Request) -> Response:
    """Forget a device (its key stops working; a device heard again is registered anew)."""
    device_id = await _visible(request)
    await _pg(request, lambda conn: conn.execute("DELETE FROM devices WHERE id = %s", (device_id,)))
    await close_account(services_of(request).accounts, device_id)
    log.info("device %s deleted by %s", device_id, principal_of(request).subject)
    # 200 with a body rather than 204: the generated OpenAPI document describes JSON answers.
    return JSONResponse({"id": device_id, "deleted": True})


@describe(response=_KEY, errors=(401, 403, 404, 422, 503))
@requires_auth(role="operator")
async def rotate_key(request: Request) -> Response:
    """A new API key for the device; the old one stops working now. Shown only this once."""
    device_id = await _visible(request)
    key = new_api_key()

    async def replace(conn: AsyncConnection[Any]) -> str | None:
        cursor = await conn.execute(
            "UPDATE devices SET api_key_hash = %s WHERE id = %s RETURNING protocol",
            (hash_api_key(key), device_id))
        row = await cursor.fetchone()
        return None if row is None else str(row[0])

    protocol = await _pg(request, replace)
    if protocol is None:
        raise NotFound("no such device", f"device {device_id} does not exist")
    # The old key stops working over MQTT too (its sessions are closed); a broker away gives
    # 503 with the new key already in force over HTTP: rotating again mends it.
    await open_account(services_of(request).accounts, device_id, protocol, key)
    log.info("API key of device %s replaced by %s", device_id, principal_of(request).subject)
    return JSONResponse({"id": device_id, "api_key": key})


def device_registry_routes() -> list[Route]:
    return [
        Route("/api/devices", create_device, methods=["POST"]),
        Route("/api/devices/{device_id}", get_device, methods=["GET"]),
        Route("/api/devices/{device_id}", patch_device, methods=["PATCH"]),
        Route("/api/devices/{device_id}", delete_device, methods=["DELETE"]),
        Route("/api/devices/{device_id}/api-key", rotate_key, methods=["POST"]),
    ]
