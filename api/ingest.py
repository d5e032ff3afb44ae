"""``POST /api/devices/{device_id}/telemetry``: HTTP devices (ESP32 and the like) send readings.

The body is the MQTT device body (:mod:`connectors.payload`) or a JSON array of
such readings (at most ``max_readings``). Answers:

- ``202 {"accepted": n, "message_ids": [...]}`` only after Kafka acknowledged
  the readings on ``telemetry.raw`` (all of a request in one ``TelemetryBatch``
  record, in the partition of the device);
- ``401`` no or unknown ``X-API-Key``, ``403`` the key of another device;
- ``413`` a body over ``max_body_bytes`` (by ``Content-Length`` or as streamed);
- ``415`` a ``Content-Type`` other than ``application/json`` (none at all is
  read as JSON: many device HTTP clients send none);
- ``422`` a reading that is not entirely valid; nothing of the request is kept
  and ``detail`` names each bad field (HTTP can say so, unlike MQTT, which
  keeps the valid metrics and dead-letters the rest);
- ``429`` over ``rate_limit`` requests per ``rate_window_s`` for this device
  (fixed window in Redis), with ``Retry-After``;
- ``503`` Kafka unreachable (within about a second), with ``Retry-After``.

An ``Idempotency-Key`` header becomes the reading's ``message_id`` (``{key}-{i}``
for the i-th reading of an array), and the first arrival time of a key is kept
in Redis, so a retried request yields identical records and the idempotent
sinks store one reading. Readings get protocol ``http`` and the application the
device is registered under (a body's ``applicationId`` is ignored).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis.exceptions
from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api.commands import push_pending
from api.device_hub import DeviceSockets
from api.device_keys import API_KEY_HEADER, authenticate_device, presented_key
from api.errors import ApiError, error_response
from api.ingest_kafka import IngestProducer, KafkaUnavailable
from api.jsonbody import bounded_body, check_declared_size, check_json_type
from api.openapi import describe
from api.ratelimit import hit
from api.readings import InvalidReadings, parse_readings
from api.services import services_of
from connectors.metrics import (
    DELIVERY_FAILURES,
    MESSAGES_RECEIVED,
    MESSAGES_REJECTED,
    READINGS_PRODUCED,
    RECORDS_PRODUCED,
)
from connectors.payload import MAX_PAYLOAD_BYTES
from connectors.reading import ReadingRow, encode_rows
from pipeline.producer import Outgoing, partition_for
from pipeline.settings import Settings, Topics
from schemas.errors import MalformedRecordError
from schemas.records import DEVICE_ID_PATTERN, iso_utc, utcnow

__all__ = [
    "IDEMPOTENCY_HEADER",
    "IngestConfig",
    "IngestRefused",
    "IngestState",
    "accept_readings",
    "check_rate",
    "ingest_config",
    "ingest_routes",
    "open_ingest",
]

log = logging.getLogger(__name__)

IDEMPOTENCY_HEADER = "Idempotency-Key"
_IDEMPOTENCY_PREFIX = "webscada:idempotency:"


@dataclass(frozen=True, slots=True)
class IngestConfig:
    """Limits of HTTP and WebSocket ingest (settings ``ingest_*`` when declared)."""

    max_body_bytes: int = MAX_PAYLOAD_BYTES
    max_readings: int = 100
    rate_limit: int = 600  # requests (HTTP) or frames (WebSocket) per window and device
    rate_window_s: int = 60
    idempotency_ttl_s: int = 24 * 3600
    ack_timeout_s: float = 1.0


def ingest_config(settings: Settings) -> IngestConfig:
    """The limits: ``settings.ingest_<name>`` where ``Settings`` declares it, else the default."""
    defaults = IngestConfig()
    values = {name: getattr(settings, f"ingest_{name}", getattr(defaults, name))
              for name in IngestConfig.__dataclass_fields__}
    return IngestConfig(**values)


@dataclass(frozen=True, slots=True)
class IngestState:
    """What the ingest endpoints share, as ``app.state.ingest``."""

    producer: IngestProducer
    config: IngestConfig
    sockets: DeviceSockets


@contextlib.asynccontextmanager
async def open_ingest(app: Starlette, settings: Settings) -> AsyncIterator[IngestState]:
    """For the API's lifespan: the ingest producer, the device sockets and their
    command listener, as ``app.state.ingest``; closed at the end."""
    config = ingest_config(settings)
    producer = IngestProducer(settings.kafka_bootstrap, ack_timeout_s=config.ack_timeout_s)
    producer.start()
    sockets = DeviceSockets(on_waiting=push_pending)
    state = IngestState(producer, config, sockets)
    app.state.ingest = state
    try:
        async with sockets.listening(settings.pg_conninfo):
            yield state
    finally:
        await asyncio.to_thread(producer.close)


class IngestRefused(Exception):
    """Why readings were not accepted: an HTTP status, a short error and its detail."""

    def __init__(self, status: int, error: str, detail: Any = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(error)
        self.status, self.error, self.detail = status, error, detail
        self.headers = dict(headers or {})

    def response(self, conn: HTTPConnection | None = None) -> JSONResponse:
        """The HTTP answer (``conn``: the request, whose id a 5xx answer carries)."""
        return error_response(self.status, self.error, self.detail, self.headers, conn=conn)


async def check_rate(conn: HTTPConnection, config: IngestConfig, device_id: str) -> None:
    """Count one request (or frame) of ``device_id``; raise 429 over the limit.

    An unreachable Redis lets the request through: rate limiting must not stop ingest.
    """
    try:
        result = await hit(services_of(conn).redis, f"ingest:{device_id}",
                           limit=config.rate_limit, window_s=config.rate_window_s)
    except (redis.exceptions.RedisError, OSError) as exc:
        log.warning("ingest rate limit skipped, Redis unavailable: %s", exc)
        return
    if not result.allowed:
        raise IngestRefused(
            429, "rate limited",
            f"more than {config.rate_limit} requests in {config.rate_window_s} s; retry later",
            {"Retry-After": str(result.retry_after_s)},
        )


async def accept_readings(
    producer: IngestProducer,
    body: bytes,
    *,
    device_id: str,
    protocol: str,
    application_id: str | None,
    received_at: datetime,
    idempotency_key: str | None,
    max_readings: int,
) -> list[ReadingRow]:
    """Parse ``body`` and return once Kafka acknowledged its readings; 422/503 otherwise.

    The readings go as one ``TelemetryBatch`` record, without key, to the partition
    of ``device_id`` (where batches of other connectors put that device's readings).
    """
    MESSAGES_RECEIVED.labels(protocol).inc()
    try:
        readings = parse_readings(
            body, device_id=device_id, protocol=protocol, received_at=received_at,
            application_id=application_id, idempotency_key=idempotency_key,
            max_readings=max_readings,
        )
    except InvalidReadings as exc:
        MESSAGES_REJECTED.labels(protocol, exc.code).inc()
        raise IngestRefused(422, "invalid reading", exc.detail()) from exc
    try:
        value = encode_rows(readings)
    except MalformedRecordError as exc:  # e.g. text the JSON fallback let through
        MESSAGES_REJECTED.labels(protocol, "refused").inc()
        raise IngestRefused(422, "invalid reading", {
            "field": "body", "message": f"the readings cannot be stored: {exc}"}) from exc
    try:
        partitions = await producer.partitions(Topics.RAW)
        await producer.send([Outgoing(Topics.RAW, None, value,
                                      partition_for(device_id, partitions))])
    except KafkaUnavailable as exc:
        DELIVERY_FAILURES.labels(protocol, Topics.RAW).inc()
        raise IngestRefused(503, "Kafka unavailable", f"{exc}; retry with the same "
                            f"{IDEMPOTENCY_HEADER}", {"Retry-After": "1"}) from exc
    RECORDS_PRODUCED.labels(protocol, Topics.RAW).inc()
    READINGS_PRODUCED.labels(protocol).inc(len(readings))
    return readings


def _state(conn: HTTPConnection) -> tuple[IngestProducer, IngestConfig]:
    ingest: IngestState = conn.app.state.ingest
    return ingest.producer, ingest.config


def _idempotency_key(request: Request, max_readings: int) -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    longest = 128 - len(f"-{max_readings}")
    if not 0 < len(key) <= longest or not all("!" <= c <= "~" for c in key):
        raise IngestRefused(422, f"invalid {IDEMPOTENCY_HEADER}", {
            "field": IDEMPOTENCY_HEADER,
            "message": f"must be 1 to {longest} printable ASCII characters without spaces",
        })
    return key


async def _first_arrival(request: Request, config: IngestConfig, device_id: str,
                         key: str | None) -> datetime:
    """Now, or when the key was first seen: a retry must yield the identical record."""
    now = utcnow()
    if key is None:
        return now
    try:
        earlier = await services_of(request).redis.set(
            f"{_IDEMPOTENCY_PREFIX}{device_id}:{key}", iso_utc(now), nx=True,
            ex=config.idempotency_ttl_s, get=True,
        )
    except (redis.exceptions.RedisError, OSError) as exc:
        log.warning("idempotency key %s of %s not remembered, Redis unavailable: %s",
                    key, device_id, exc)
        return now
    if not earlier:
        return now
    try:
        return datetime.fromisoformat(str(earlier).replace("Z", "+00:00"))
    except ValueError:
        return now


_READING = {"type": "object", "additionalProperties": True,
            "description": "a reading: {timestamp, telemetry, metadata} or a flat object of numbers"}
_ACCEPTED = {
    "type": "object", "required": ["accepted", "message_ids"],
    "properties": {"accepted": {"type": "integer"},
                   "message_ids": {"type": "array", "items": {"type": "string"}}},
}


@describe(body={"oneOf": [_READING, {"type": "array", "items": _READING}]}, response=_ACCEPTED,
          status=202, errors=(401, 403, 413, 415, 422, 429, 503))
async def ingest_telemetry(request: Request) -> Response:
    """Readings from an HTTP device (X-API-Key): 202 once Kafka acknowledged them.

    One reading or a JSON array of readings; an Idempotency-Key header makes a retry safe.
    """
    device_id: str = request.path_params["device_id"]
    try:
        if presented_key(request) is None:
            raise IngestRefused(401, "missing API key",
                                f"send the device's API key in the {API_KEY_HEADER} header",
                                {"WWW-Authenticate": f'ApiKey header="{API_KEY_HEADER}"'})
        if not DEVICE_ID_PATTERN.fullmatch(device_id):
            raise IngestRefused(422, "invalid device_id", {
                "field": "device_id", "message": f"must match {DEVICE_ID_PATTERN.pattern}"})
        producer, config = _state(request)
        try:  # devices may send no Content-Type; one that is not JSON is refused
            check_declared_size(request, config.max_body_bytes)
            check_json_type(request.headers, missing_ok=True)
        except ApiError as exc:
            raise IngestRefused(exc.status_code, exc.error, exc.detail) from exc
        try:
            identity = await authenticate_device(request, device_id)
        except ApiError as exc:
            headers = ({"WWW-Authenticate": f'ApiKey header="{API_KEY_HEADER}"'}
                       if exc.status_code == 401 else {})
            raise IngestRefused(exc.status_code, exc.error, exc.detail, headers) from exc
        await check_rate(request, config, device_id)
        key = _idempotency_key(request, config.max_readings)
        try:  # counted as it streams in: a client may send more than it declared
            body = await bounded_body(request, config.max_body_bytes)
        except ApiError as exc:
            raise IngestRefused(exc.status_code, exc.error, exc.detail) from exc
        readings = await accept_readings(
            producer, body, device_id=device_id, protocol="http",
            application_id=identity.application_id,
            received_at=await _first_arrival(request, config, device_id, key),
            idempotency_key=key, max_readings=config.max_readings,
        )
    except IngestRefused as refused:
        return refused.response(request)
    return JSONResponse({"accepted": len(readings),
                         "message_ids": [t.message_id for t in readings]}, status_code=202)


def ingest_routes() -> list[Route]:
    return [Route("/api/devices/{device_id}/telemetry", ingest_telemetry, methods=["POST"])]
