"""``GET /api/devices/{id}/metrics``: the metrics a device has history of, for the dashboard.

The names come from InfluxDB's schema for that device (``schema.fieldKeys`` of
measurement ``telemetry`` over ``start``, default the last 30 days), so a device
silent for longer than Redis keeps its latest values still has reachable
history. Each name carries its unit from the device's profile when it has one.
Access is checked exactly as for ``/history`` (404 for a device the caller may
not see, before any other answer).

The Flux text is built only from checked values: the device id matches its
pattern, ``start`` is a count of a fixed unit, and the names InfluxDB returns
are kept only when they are valid metric names.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import aiohttp
import psycopg
from influxdb_client.rest import ApiException
from psycopg_pool import PoolTimeout
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api.access import require_device
from api.auth import principal_of, requires_auth
from api.errors import InvalidField, ServiceUnavailable
from api.openapi import describe
from api.services import services_of
from pipeline.settings import Settings
from schemas.records import DEVICE_ID_PATTERN, METRIC_NAME_PATTERN

__all__ = ["device_metrics_routes", "metrics_flux", "parse_start"]

log = logging.getLogger(__name__)

_UNITS = {"h": 3600, "d": 86400, "w": 604800}
_START = re.compile(r"^-(\d{1,5})([hdw])$")
MAX_START_S = 5 * 365 * 86400
DEFAULT_START = "-30d"


def parse_start(raw: str | None) -> int:
    """``start`` (``-<n>h|d|w``, at most 5 years back) as seconds before now; 422 otherwise."""
    raw = DEFAULT_START if raw is None else raw.strip()
    match = _START.fullmatch(raw)
    if match is None:
        raise InvalidField("start", raw[:64], "expected -<n>h, -<n>d or -<n>w (e.g. -30d)")
    seconds = int(match[1]) * _UNITS[match[2]]
    if not 0 < seconds <= MAX_START_S:
        raise InvalidField("start", raw[:64], "must lie between 1 hour and 5 years back")
    return seconds


def _flux_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${") + '"'


def metrics_flux(device_id: str, bucket: str, start_s: int) -> str:
    """The Flux text listing the field keys of ``device_id``'s readings of the last ``start_s`` s."""
    return (
        'import "influxdata/influxdb/schema"\n'
        f"schema.fieldKeys(bucket: {_flux_string(bucket)},"
        f' predicate: (r) => r._measurement == "telemetry"'
        f" and r.device_id == {_flux_string(device_id)}, start: -{int(start_s)}s)"
    )


async def _units(request: Request, device_id: str) -> dict[str, str]:
    """Each metric's unit from the device's profile (none when it has no profile)."""
    try:
        async with services_of(request).pool.connection(timeout=5.0) as conn:
            cursor = await conn.execute(
                "SELECT p.metrics FROM devices d JOIN device_profiles p ON p.id = d.profile_id"
                " WHERE d.id = %s", (device_id,))
            row = await cursor.fetchone()
    except (PoolTimeout, psycopg.OperationalError) as exc:
        log.warning("metrics of %s: PostgreSQL unavailable: %s", device_id, exc)
        raise ServiceUnavailable("PostgreSQL unavailable", str(exc)) from exc
    spec: Any = row[0] if row else {}
    if isinstance(spec, str):
        spec = json.loads(spec)
    if not isinstance(spec, dict):
        return {}
    return {name: entry["unit"] for name, entry in spec.items()
            if isinstance(entry, dict) and isinstance(entry.get("unit"), str)}


@describe(
    query=[{"name": "start", "schema": {"type": "string", "example": DEFAULT_START,
                                        "pattern": _START.pattern}}],
    response={
        "type": "object",
        "required": ["device_id", "start", "metrics"],
        "properties": {
            "device_id": {"type": "string"}, "start": {"type": "string"},
            "metrics": {"type": "array", "items": {
                "type": "object", "required": ["name", "unit"],
                "properties": {"name": {"type": "string"},
                               "unit": {"type": "string", "nullable": True}},
            }},
        },
    },
)
@requires_auth
async def device_metrics(request: Request) -> Response:
    """The metrics of a device with readings in InfluxDB since ``start``, with their units."""
    settings: Settings = request.app.state.settings
    device_id = request.path_params["device_id"]
    if not DEVICE_ID_PATTERN.fullmatch(device_id):
        raise InvalidField("device_id", device_id, f"must match {DEVICE_ID_PATTERN.pattern}")
    await require_device(request, principal_of(request), device_id)  # before any other answer
    start_s = parse_start(request.query_params.get("start"))
    influx = services_of(request).influx
    if influx is None:
        raise ServiceUnavailable("InfluxDB unavailable", "no client")
    try:
        tables = await influx.query_api().query(
            metrics_flux(device_id, settings.influx_bucket, start_s))
    except (ApiException, aiohttp.ClientError, TimeoutError, OSError) as exc:
        log.warning("metrics of %s: InfluxDB query failed: %s", device_id, exc)
        raise ServiceUnavailable("InfluxDB unavailable", str(exc)[:300]) from exc
    names = sorted({
        value for table in tables for record in table.records
        if isinstance(value := record.get_value(), str) and METRIC_NAME_PATTERN.fullmatch(value)
    })
    units = await _units(request, device_id)
    return JSONResponse({
        "device_id": device_id,
        "start": f"-{start_s}s",
        "metrics": [{"name": name, "unit": units.get(name)} for name in names],
    })


def device_metrics_routes() -> list[Route]:
    return [Route("/api/devices/{device_id}/metrics", device_metrics, methods=["GET"])]
