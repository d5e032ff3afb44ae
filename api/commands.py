"""Command routes: operators send commands, HTTP devices poll and ack them.

- ``POST /api/devices/{id}/commands`` (operator) ``{"name", "params", "ttl_s"}`` and an
  optional ``Idempotency-Key`` → row ``queued`` in PostgreSQL, ``queued`` on
  ``commands.status``, the ``Command`` on ``commands`` → ``202 {"id", "status"}``.
  The same key for the same device answers with the same command (header
  ``Idempotent-Replayed: true``); a command that reached PostgreSQL but maybe not
  Kafka (the API died in between) is produced again then, the dispatcher ignores
  the copy once the command is past ``queued``.
- ``GET /api/devices/{id}/commands`` (viewer): newest first, each with its history.
- ``GET /api/devices/{id}/commands/pending`` (``X-API-Key``): the device's queued and
  sent, unexpired commands, oldest first; queued ones become ``sent`` (the poll is
  their transport). Sent ones come again until the device acks them: devices
  deduplicate on ``id``.
- ``POST /api/devices/{id}/commands/{cid}/ack`` (``X-API-Key``)
  ``{"status": "delivered|acked|failed", "detail"}``.

:func:`push_pending` serves WebSocket devices the same way as the poll.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import PoolTimeout
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api.access import require_device
from api.auth import principal_of, requires_auth
from api.device_keys import authenticate_device
from api.errors import ApiError, InvalidField, NotFound, ServiceUnavailable
from api.ingest_kafka import IngestProducer, KafkaUnavailable
from api.jsonbody import json_object
from api.openapi import describe
from api.services import services_of
from pipeline.commands import store
from pipeline.commands.kafka import command_record, status_record
from pipeline.commands.lifecycle import DEVICE_ACK_STATUSES, may_advance
from pipeline.commands.transports import device_message
from pipeline.producer import Outgoing
from schemas.errors import InvalidRecordError
from schemas.records import (
    COMMAND_NAME_PATTERN,
    DEVICE_ID_PATTERN,
    Command,
    CommandStatus,
    iso_utc,
    utcnow,
)

__all__ = ["MAX_PARAMS_BYTES", "MAX_TTL_S", "command_routes", "push_pending"]

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_PARAMS_BYTES = 4096
MAX_TTL_S = 86400
DEFAULT_TTL_S = 300
_IDEMPOTENCY_KEY = re.compile(r"^[\x20-\x7e]{1,200}$")
_MAX_DETAIL = 1000


class Conflict(ApiError):
    status_code = 409


def _device_id(request: Request) -> str:
    device_id: str = request.path_params["device_id"]
    if not DEVICE_ID_PATTERN.fullmatch(device_id):
        raise InvalidField("device_id", device_id, f"must match {DEVICE_ID_PATTERN.pattern}")
    return device_id


async def _pg(conn: HTTPConnection, work: Callable[[AsyncConnection[Any]], Awaitable[T]]) -> T:
    try:
        async with services_of(conn).pool.connection(timeout=5.0) as db:
            return await work(db)
    except (PoolTimeout, psycopg.OperationalError) as exc:
        log.warning("commands: PostgreSQL unavailable: %s", exc)
        raise ServiceUnavailable("PostgreSQL unavailable", str(exc)) from exc


async def _send(conn: HTTPConnection, records: Sequence[Outgoing]) -> None:
    """Produce ``records`` and wait for Kafka's acknowledgement (503 when it does not come).

    Uses the API's device-ingest producer (:mod:`api.ingest_kafka`): fail fast, closed
    with the app."""
    producer: IngestProducer = conn.app.state.ingest.producer
    try:
        await producer.send(records)
    except KafkaUnavailable as exc:
        raise ServiceUnavailable("Kafka unavailable", str(exc)) from None


async def _record(conn: HTTPConnection, statuses: Sequence[CommandStatus]) -> None:
    """A status change as everywhere else: Kafka first, then PostgreSQL."""
    if statuses:
        await _send(conn, [status_record(s) for s in statuses])
        await _pg(conn, lambda db: store.apply_statuses(db, statuses))


def _new_command(body: dict[str, Any], device_id: str, requested_by: str) -> Command:
    name = body.get("name")
    if not isinstance(name, str) or not COMMAND_NAME_PATTERN.fullmatch(name):
        raise InvalidField("name", name, f"required, must match {COMMAND_NAME_PATTERN.pattern}")
    params = body.get("params", {})
    if not isinstance(params, dict):
        raise InvalidField("params", params, "must be a JSON object")
    try:
        size = len(json.dumps(params, separators=(",", ":"), allow_nan=False).encode())
    except ValueError:
        raise InvalidField("params", None, "must be valid JSON (no NaN or Infinity)") from None
    if size > MAX_PARAMS_BYTES:
        raise InvalidField("params", None, f"is {size} bytes as JSON; at most {MAX_PARAMS_BYTES}")
    ttl_s = body.get("ttl_s", DEFAULT_TTL_S)
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float) or not 1 <= ttl_s <= MAX_TTL_S:
        raise InvalidField("ttl_s", ttl_s, f"must be a number of seconds from 1 to {MAX_TTL_S}")
    now = utcnow()
    try:
        return Command(id=str(uuid.uuid4()), device_id=device_id, name=name, params=params,
                       created_at=now, expires_at=now + timedelta(seconds=float(ttl_s)),
                       requested_by=requested_by)
    except InvalidRecordError as exc:
        raise InvalidField("params", None, str(exc)) from None


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is not None and not _IDEMPOTENCY_KEY.fullmatch(key):
        raise InvalidField("Idempotency-Key", key[:80],
                           "must be 1 to 200 printable ASCII characters")
    return key


_COMMAND_BODY = {
    "type": "object", "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": COMMAND_NAME_PATTERN.pattern},
        "params": {"type": "object", "description": f"at most {MAX_PARAMS_BYTES} bytes as JSON"},
        "ttl_s": {"type": "number", "minimum": 1, "maximum": MAX_TTL_S, "default": DEFAULT_TTL_S},
    },
}
_ACCEPTED = {"type": "object", "properties": {"id": {"type": "string"},
                                              "status": {"type": "string"}}}


@describe(body=_COMMAND_BODY, response=_ACCEPTED, status=202)
@requires_auth(role="operator")
async def send_command(request: Request) -> Response:
    """Send a command to a device (optional Idempotency-Key header)."""
    device_id = _device_id(request)
    principal = principal_of(request)
    await require_device(request, principal, device_id, must_exist=True)
    command = _new_command(await json_object(request), device_id, principal.subject)
    key = _idempotency_key(request)
    command_id, status, created = await _pg(
        request, lambda db: store.insert_command(db, command, key))
    if not created:
        if status == "queued":
            found = await _pg(request, lambda db: store.load_command(db, command_id))
            if found is not None:
                await _send(request, [command_record(found[0])])
        return JSONResponse({"id": command_id, "status": status}, 202,
                            headers={"Idempotent-Replayed": "true"})
    queued = CommandStatus(command.id, device_id, "queued", command.created_at)
    try:
        # `queued` before the command, so that `sent` can never overtake it.
        await _send(request, [status_record(queued)])
        await _send(request, [command_record(command)])
    except ServiceUnavailable:
        # Not accepted after all: forget it, so a retry (same key or not) starts afresh.
        # Should Kafka still deliver the command later, the dispatcher finds no row.
        await _pg(request, lambda db: store.delete_command(db, command.id))
        raise
    return JSONResponse({"id": command.id, "status": "queued"}, 202)


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit", "100")
    try:
        value = int(raw)
    except ValueError:
        raise InvalidField("limit", raw, "must be an integer") from None
    if not 1 <= value <= 1000:
        raise InvalidField("limit", raw, "must be between 1 and 1000")
    return value


@describe(query=[{"name": "limit", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}],
          response={"type": "array", "items": {"type": "object"}})
@requires_auth
async def list_device_commands(request: Request) -> Response:
    """A device's commands, newest first, each with its status history."""
    device_id = _device_id(request)
    await require_device(request, principal_of(request), device_id, must_exist=True)
    limit = _limit(request)
    return JSONResponse(await _pg(request, lambda db: store.list_commands(db, device_id, limit)))


async def _claim(conn: HTTPConnection, device_id: str, transport: str) -> list[dict[str, Any]]:
    """The device's open commands as it receives them; queued ones are recorded ``sent``."""
    open_ = await _pg(conn, lambda db: store.open_commands(db, device_id, utcnow()))
    sent = [CommandStatus(c.id, device_id, "sent", detail=transport)
            for c, status in open_ if status == "queued"]
    await _record(conn, sent)
    return [{**device_message(c), "expires_at": iso_utc(c.expires_at)} for c, _ in open_]


@describe(response={"type": "array", "items": {"type": "object"}}, errors=(401, 403, 422, 503))
async def pending_commands(request: Request) -> Response:
    """Commands waiting for an HTTP device (X-API-Key); the poll marks them sent."""
    device_id = _device_id(request)
    await authenticate_device(request, device_id)
    return JSONResponse(await _claim(request, device_id, "http poll"))


async def push_pending(conn: HTTPConnection, device_id: str,
                       push: Callable[[dict[str, Any]], Awaitable[None]]) -> int:
    """Push every open command of ``device_id`` through ``push`` (a WebSocket device's frame
    writer) and record the queued ones ``sent`` once written; returns how many were pushed.
    Call it when the device connects and whenever the dispatcher notifies PostgreSQL channel
    ``webscada_commands`` with the device id."""
    open_ = await _pg(conn, lambda db: store.open_commands(db, device_id, utcnow()))
    pushed_at = utcnow()  # before the device can answer (its ack is stamped on arrival)
    for command, _ in open_:
        await push({**device_message(command), "expires_at": iso_utc(command.expires_at)})
    await _record(conn, [CommandStatus(c.id, device_id, "sent", pushed_at, "websocket write")
                         for c, status in open_ if status == "queued"])
    return len(open_)


_ACK_BODY = {
    "type": "object", "required": ["status"],
    "properties": {"status": {"enum": sorted(DEVICE_ACK_STATUSES)},
                   "detail": {"type": "string", "maxLength": _MAX_DETAIL}},
}


@describe(body=_ACK_BODY, response=_ACCEPTED, errors=(401, 403, 404, 409, 422, 503))
async def ack_command(request: Request) -> Response:
    """A device's answer to a command (X-API-Key): delivered, acked or failed."""
    device_id = _device_id(request)
    await authenticate_device(request, device_id)
    parsed = store.as_uuid(str(request.path_params["command_id"]))
    body = await json_object(request, devices=True)
    status = body.get("status")
    if status not in DEVICE_ACK_STATUSES:
        raise InvalidField("status", status, f"must be one of {', '.join(sorted(DEVICE_ACK_STATUSES))}")
    detail = body.get("detail", "")
    if detail is None:
        detail = ""
    if not isinstance(detail, str) or len(detail) > _MAX_DETAIL:
        raise InvalidField("detail", None, f"must be text of at most {_MAX_DETAIL} characters")
    command_id = str(parsed) if parsed is not None else str(request.path_params["command_id"])
    found = await _pg(request, lambda db: store.current_statuses(db, [command_id], device_id))
    current = found.get(command_id)
    if current is None:
        raise NotFound("no such command", f"device {device_id} has no command {command_id:.80}")
    if current != status:
        if not may_advance(current, status):
            raise Conflict(f"command is {current}", {"id": command_id, "status": current})
        await _record(request, [CommandStatus(command_id, device_id, str(status), detail=detail)])
    return JSONResponse({"id": command_id, "status": status})


def command_routes() -> list[Route]:
    return [
        Route("/api/devices/{device_id}/commands", send_command, methods=["POST"]),
        Route("/api/devices/{device_id}/commands", list_device_commands, methods=["GET"]),
        Route("/api/devices/{device_id}/commands/pending", pending_commands, methods=["GET"]),
        Route("/api/devices/{device_id}/commands/{command_id}/ack", ack_command,
              methods=["POST"]),
    ]
