"""``GET /api/devices/{id}/history``: a metric's time series from InfluxDB, aggregated per window.

Query: ``metric`` (required), ``start`` and ``stop`` (ISO-8601, ``now``, or
relative like ``-15m``, ``-24h``, ``-7d``; default the last hour), ``every``
(``30s``, ``5m``, ``1h``, ``1d`` or seconds; 1 s to 1 d; default: the smallest
step giving at most 1000 points) and ``agg`` (``mean|min|max|last|count``).
A range that is empty, reversed, or would give more than the configured number
of points answers ``400`` saying so; a time outside what InfluxDB can store
(1677 to 2262, e.g. ``-999999999w``) ``422``, checked before any arithmetic.

The Flux text is built only from checked values: the device id and metric
match their patterns (no quote or backslash can occur), times are parsed and
re-formatted, ``every`` is an integer count of seconds, the aggregate comes
from a fixed table.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from influxdb_client.rest import ApiException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api.access import require_device
from api.auth import principal_of, requires_auth
from api.config import ApiConfig
from api.errors import BadRequest, InvalidField, ServiceUnavailable
from api.openapi import describe
from api.services import services_of
from pipeline.settings import Settings
from schemas.records import DEVICE_ID_PATTERN, METRIC_NAME_PATTERN, iso_utc

__all__ = ["AGGREGATES", "HistoryQuery", "flux_query", "history_routes", "parse_history_query"]

log = logging.getLogger(__name__)

AGGREGATES = {"mean": "mean", "min": "min", "max": "max", "last": "last", "count": "count"}
MIN_EVERY_S = 1
MAX_EVERY_S = 86_400
_TARGET_POINTS = 1000
_STEPS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600,
            43200, 86400)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^(\d{1,9})([smhdw]?)$")
_RELATIVE = re.compile(r"^-(\d{1,9})([smhdw])$")
# InfluxDB keeps times as signed 64-bit nanoseconds since 1970: this range, roughly.
EARLIEST = datetime(1677, 9, 22, tzinfo=UTC)
LATEST = datetime(2262, 4, 11, tzinfo=UTC)
_MAX_RELATIVE_S = int((LATEST - EARLIEST).total_seconds())


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    device_id: str
    metric: str
    start: datetime
    stop: datetime
    every_s: int
    agg: str


def _bad(field: str, value: object, message: str) -> BadRequest:
    return BadRequest(f"invalid {field}", {"field": field, "value": value, "message": message})


def _moment(field: str, raw: str, now: datetime) -> datetime:
    """``raw`` as a UTC time; 400 when it is none of the forms, 422 when it lies outside
    :data:`EARLIEST` .. :data:`LATEST` (checked before any arithmetic could overflow)."""
    raw = raw.strip()
    if raw == "now":
        return now
    out_of_range = InvalidField(field, raw[:64], f"must lie between {iso_utc(EARLIEST)} and"
                                f" {iso_utc(LATEST)} (the times InfluxDB can store)")
    if match := _RELATIVE.match(raw):
        seconds = int(match[1]) * _UNITS[match[2]]
        if seconds > _MAX_RELATIVE_S:
            raise out_of_range
        moment = now - timedelta(seconds=seconds)
    else:
        try:
            moment = datetime.fromisoformat(raw.replace("Z", "+00:00").replace(" ", "+"))
        except ValueError:
            raise _bad(field, raw[:64], "expected ISO-8601 (2026-01-02T03:04:05Z), 'now' or"
                       " -<n>s|m|h|d|w") from None
        try:
            moment = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
        except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00
            raise out_of_range from None
    if not EARLIEST <= moment <= LATEST:
        raise out_of_range
    return moment


def _every(raw: str) -> int:
    match = _DURATION.match(raw.strip())
    if match is None:
        raise _bad("every", raw, "expected a duration like 30s, 5m, 1h, 1d or seconds")
    seconds = int(match[1]) * _UNITS[match[2] or "s"]
    if not MIN_EVERY_S <= seconds <= MAX_EVERY_S:
        raise _bad("every", raw, "must be between 1s and 1d")
    return seconds


def parse_history_query(
    device_id: str, params: Any, *, max_points: int, now: datetime | None = None
) -> HistoryQuery:
    """Check the query parameters; raises 422 for a bad id, metric or out-of-range time,
    400 for a malformed time or a bad range."""
    now = now or datetime.now(UTC)
    if not DEVICE_ID_PATTERN.fullmatch(device_id):
        raise InvalidField("device_id", device_id, f"must match {DEVICE_ID_PATTERN.pattern}")
    metric = params.get("metric")
    if not metric:
        raise InvalidField("metric", metric, "required: the metric to read")
    if not METRIC_NAME_PATTERN.fullmatch(metric):
        raise InvalidField("metric", metric, f"must match {METRIC_NAME_PATTERN.pattern}")
    agg = params.get("agg", "mean")
    if agg not in AGGREGATES:
        raise InvalidField("agg", agg, f"one of {', '.join(AGGREGATES)}")
    start = _moment("start", params.get("start", "-1h"), now)
    stop = _moment("stop", params.get("stop", "now"), now)
    if start >= stop:
        raise _bad("range", f"{iso_utc(start)}..{iso_utc(stop)}", "start must be before stop")
    span_s = (stop - start).total_seconds()
    if "every" in params:
        every_s = _every(params["every"])
    else:
        every_s = next((s for s in _STEPS_S if span_s / s <= _TARGET_POINTS), MAX_EVERY_S)
    points = math.ceil(span_s / every_s)
    if points > max_points:
        raise _bad(
            "range", f"{iso_utc(start)}..{iso_utc(stop)} every {every_s}s",
            f"would give {points} points, at most {max_points}: shorten the range or raise every",
        )
    return HistoryQuery(device_id, metric, start, stop, every_s, agg)


def _flux_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${") + '"'


def _flux_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def flux_query(query: HistoryQuery, bucket: str, max_points: int) -> str:
    """The Flux text of ``query`` (every value in it checked or re-formatted)."""
    return (
        f"from(bucket: {_flux_string(bucket)})\n"
        f"  |> range(start: {_flux_time(query.start)}, stop: {_flux_time(query.stop)})\n"
        f'  |> filter(fn: (r) => r._measurement == "telemetry"'
        f" and r.device_id == {_flux_string(query.device_id)}"
        f" and r._field == {_flux_string(query.metric)})\n"
        "  |> group()\n"  # one series even if protocol or application changed over time
        '  |> sort(columns: ["_time"])\n'
        f"  |> aggregateWindow(every: {query.every_s}s, fn: {AGGREGATES[query.agg]},"
        ' createEmpty: false, timeSrc: "_start")\n'
        f"  |> limit(n: {max_points})\n"
        '  |> keep(columns: ["_time", "_value"])'
    )


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


_TIME = {"type": "string", "example": "-1h"}


@describe(
    query=[
        {"name": "metric", "required": True,
         "schema": {"type": "string", "pattern": METRIC_NAME_PATTERN.pattern}},
        {"name": "start", "schema": _TIME},
        {"name": "stop", "schema": _TIME},
        {"name": "every", "schema": {"type": "string", "example": "1m"}},
        {"name": "agg", "schema": {"type": "string", "enum": list(AGGREGATES)}},
    ],
    response={
        "type": "object",
        "required": ["device_id", "metric", "agg", "every_s", "start", "stop", "points"],
        "properties": {
            "device_id": {"type": "string"}, "metric": {"type": "string"},
            "agg": {"type": "string"}, "every_s": {"type": "integer"},
            "start": {"type": "string"}, "stop": {"type": "string"},
            "points": {"type": "array", "items": {
                "type": "object", "required": ["time", "value"],
                "properties": {"time": {"type": "string"}, "value": {"type": "number", "nullable": True}},
            }},
        },
    },
)
@requires_auth
async def device_history(request: Request) -> Response:
    """A metric of a device over time, aggregated per window of ``every``."""
    config: ApiConfig = request.app.state.api_config
    settings: Settings = request.app.state.settings
    device_id = request.path_params["device_id"]
    if not DEVICE_ID_PATTERN.fullmatch(device_id):
        raise InvalidField("device_id", device_id, f"must match {DEVICE_ID_PATTERN.pattern}")
    await require_device(request, principal_of(request), device_id)  # before any other answer
    query = parse_history_query(device_id, request.query_params,
                                max_points=config.history_max_points)
    influx = services_of(request).influx
    if influx is None:
        raise ServiceUnavailable("InfluxDB unavailable", "no client")
    try:
        tables = await influx.query_api().query(
            flux_query(query, settings.influx_bucket, config.history_max_points)
        )
    except (ApiException, aiohttp.ClientError, TimeoutError, OSError) as exc:
        log.warning("history of %s: InfluxDB query failed: %s", device_id, exc)
        raise ServiceUnavailable("InfluxDB unavailable", str(exc)[:300]) from exc
    points = [
        {"time": iso_utc(record.get_time()), "value": _number(record.get_value())}
        for table in tables
        for record in table.records
    ]
    return JSONResponse(
        {
            "device_id": query.device_id,
            "metric": query.metric,
            "agg": query.agg,
            "every_s": query.every_s,
            "start": iso_utc(query.start),
            "stop": iso_utc(query.stop),
            "points": points,
        }
    )


def history_routes() -> list[Route]:
    return [Route("/api/devices/{device_id}/history", device_history, methods=["GET"])]
