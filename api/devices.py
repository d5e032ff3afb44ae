"""Device routes: ``GET /api/devices`` (PostgreSQL) and ``GET /api/devices/{id}/latest`` (Redis)."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import cast

import psycopg
import redis.exceptions
from psycopg_pool import PoolTimeout
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api.access import require_device, visible_filter
from api.auth import principal_of, requires_auth
from api.errors import InvalidField, NotFound, ServiceUnavailable
from api.openapi import describe
from api.services import services_of
from schemas.latest import LATEST_KEY, TIMES_KEY, latest_view
from schemas.records import DEVICE_ID_PATTERN, iso_utc

__all__ = ["device_routes"]

log = logging.getLogger(__name__)

_MAX_LIMIT = 5000


def _device_id(request: Request) -> str:
    device_id: str = request.path_params["device_id"]
    if not DEVICE_ID_PATTERN.fullmatch(device_id):
        raise InvalidField("device_id", device_id, f"must match {DEVICE_ID_PATTERN.pattern}")
    return device_id


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidField(name, raw, "must be an integer") from None
    if not low <= value <= high:
        raise InvalidField(name, raw, f"must be between {low} and {high}")
    return value


def _iso(moment: datetime | None) -> str | None:
    return iso_utc(moment) if moment is not None else None


_DEVICE = {
    "type": "object",
    "required": ["id", "protocol"],
    "properties": {
        "id": {"type": "string"}, "name": {"type": "string", "nullable": True},
        "protocol": {"type": "string"}, "application_id": {"type": "string", "nullable": True},
        "last_seen": {"type": "string", "nullable": True, "format": "date-time"},
    },
}


@describe(
    query=[
        {"name": "limit", "schema": {"type": "integer", "minimum": 1, "maximum": _MAX_LIMIT}},
        {"name": "offset", "schema": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}},
    ],
    response={"type": "array", "items": _DEVICE},
)
@requires_auth
async def list_devices(request: Request) -> Response:
    """The devices the caller may see, by id."""
    limit = _int_param(request, "limit", 1000, 1, _MAX_LIMIT)
    offset = _int_param(request, "offset", 0, 0, 2**31 - 1)
    pool = services_of(request).pool
    visible, params = visible_filter(principal_of(request))
    try:
        async with pool.connection(timeout=5.0) as conn:
            cursor = await conn.execute(
                "SELECT id, name, protocol, application_id, last_seen FROM devices"
                f" WHERE {visible} ORDER BY id LIMIT %s OFFSET %s",
                (*params, limit, offset),
            )
            rows = await cursor.fetchall()
    except (PoolTimeout, psycopg.OperationalError) as exc:
        log.warning("GET /api/devices: PostgreSQL unavailable: %s", exc)
        raise ServiceUnavailable("PostgreSQL unavailable", str(exc)) from exc
    return JSONResponse(
        [
            {
                "id": device_id,
                "name": name,
                "protocol": protocol,
                "application_id": application_id,
                "last_seen": _iso(last_seen),
            }
            for device_id, name, protocol, application_id, last_seen in rows
        ]
    )


@describe(response={"type": "object", "properties": {"ts": {"type": "string"},
                                                     "protocol": {"type": "string"}}})
@requires_auth
async def latest_values(request: Request) -> Response:
    """A device's latest values (Redis): one number per metric, plus ts and protocol, and
    ``times``: each metric's own device time."""
    device_id = _device_id(request)
    await require_device(request, principal_of(request), device_id)
    client = services_of(request).redis
    try:
        # decode_responses=True: keys and values come back as str.
        async with client.pipeline(transaction=False) as pipe:
            pipe.hgetall(LATEST_KEY.format(device_id=device_id))
            pipe.hgetall(TIMES_KEY.format(device_id=device_id))
            fields, times = cast(list[dict[str, str]], await pipe.execute())
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        log.warning("GET /api/devices/%s/latest: Redis unavailable: %s", device_id, exc)
        raise ServiceUnavailable("Redis unavailable", str(exc)) from exc
    if not fields:
        ttl_s = request.app.state.settings.redis_latest_ttl_s
        raise NotFound(
            "no latest values",
            f"device {device_id} is unknown or sent no reading in the last {ttl_s} s",
        )
    return JSONResponse(latest_view(fields, times))


def device_routes() -> list[Route]:
    return [
        Route("/api/devices", list_devices, methods=["GET"]),
        Route("/api/devices/{device_id}/latest", latest_values, methods=["GET"]),
    ]
