"""``/ws/devices/{device_id}``: a device on a WebSocket sends readings and gets commands.

The API key comes as the ``X-API-Key`` header or the ``api_key`` query
parameter. A handshake with an ``Origin`` not in ``WEBSCADA_ALLOWED_ORIGINS`` (a
browser page of another site) is refused with HTTP 403; devices send none. A
bad key closes the socket right after the handshake: 4401 (no or unknown key),
4403 (another device's key), 4422 (bad device id), 1013 (PostgreSQL
unavailable, try again). A connected device whose key is withdrawn (the device
deleted or given a new key) is closed with 4401 within ``ws_credential_check_s``
(:mod:`api.connwatch`).

Frames up, each answered by one JSON frame, in order:

- a reading or an array of readings, as the HTTP endpoint takes them
  (:mod:`api.ingest`), protocol ``websocket``: ``{"ok": true, "message_ids": [...]}``
  once Kafka acknowledged them, else ``{"ok": false, "status", "error", "detail"}``
  with the HTTP status the same body would get (413, 422, 429, 503);
- a command answer ``{"type": "ack", "id", "status": "delivered|acked|failed",
  "detail"}``: published as a ``CommandStatus`` on ``commands.status`` (and
  applied in PostgreSQL), answered ``{"ok": true, "type": "ack", "id", "status"}``.

A ``device_online`` / ``device_offline`` ``SystemEvent`` goes to ``system`` when the
device connects and leaves (best effort: not when Kafka is away).

Frames down: ``{"type": "command", "id", "name", "params", "expires_at"}`` for each
command waiting when the device connects or when the dispatcher announces one
(:mod:`api.device_hub`). The device should ack ``delivered`` or straight away
``acked``/``failed``; a command not yet answered is pushed again on reconnect.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import psycopg
from psycopg_pool import PoolTimeout
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from api.access import origin_allowed
from api.connwatch import ConnectionWatch
from api.device_keys import DeviceIdentity, authenticate_device, hash_api_key, presented_key
from api.errors import ApiError, server_error_body
from api.ingest import IngestRefused, IngestState, accept_readings, check_rate
from api.ingest_kafka import KafkaUnavailable
from api.services import services_of
from pipeline.commands import store
from pipeline.commands.kafka import status_record
from pipeline.commands.lifecycle import DEVICE_ACK_STATUSES, may_advance
from pipeline.producer import Outgoing
from pipeline.settings import Topics
from schemas.errors import InvalidRecordError
from schemas.records import DEVICE_ID_PATTERN, CommandStatus, SystemEvent, utcnow

__all__ = ["device_socket_route"]

log = logging.getLogger(__name__)

_CLOSE_FOR_STATUS = {401: 4401, 403: 4403}
_WITHDRAWN = "API key withdrawn: the device was deleted or given a new key"
_MAX_DETAIL = 1000
_background: set[asyncio.Task[None]] = set()  # referenced until done


def _announce(state: IngestState, device_id: str, kind: str, message: str) -> None:
    async def send() -> None:
        event = SystemEvent(kind=kind, source="api.websocket", device_id=device_id,
                            message=message)
        try:
            await state.producer.send([Outgoing(Topics.SYSTEM, device_id.encode(), event.encode())])
        except KafkaUnavailable as exc:
            log.info("%s of %s not published: %s", kind, device_id, exc)

    task = asyncio.create_task(send())
    _background.add(task)
    task.add_done_callback(_background.discard)


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    try:
        await websocket.close(code, reason.encode()[:120].decode(errors="ignore"))
    except (RuntimeError, OSError):
        pass


async def device_socket(websocket: WebSocket) -> None:
    device_id: str = websocket.path_params["device_id"]
    if not origin_allowed(websocket):  # a page of another origin: refused as on /ws/topics
        await websocket.close(1008)  # before the accept: the handshake is answered 403
        return
    await websocket.accept()  # close codes need an open socket
    if not DEVICE_ID_PATTERN.fullmatch(device_id):
        await _close(websocket, 4422, f"device id must match {DEVICE_ID_PATTERN.pattern}")
        return
    try:
        identity = await authenticate_device(websocket, device_id)
    except ApiError as exc:
        await _close(websocket, _CLOSE_FOR_STATUS.get(exc.status_code, 1013), exc.error)
        return
    state: IngestState = websocket.app.state.ingest
    socket = state.sockets.add(device_id, websocket)
    log.info("device %s connected over WebSocket", device_id)
    _announce(state, device_id, "device_online", "connected over WebSocket")
    watch: ConnectionWatch[tuple[str, str]] | None = getattr(websocket.app.state, "device_watch", None)
    credential = (device_id, hash_api_key(presented_key(websocket) or ""))
    watched = watch.add(credential, lambda: socket.close(4401, _WITHDRAWN)) if watch else None
    try:
        await state.sockets.announce(socket)
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            data = message.get("bytes")
            if data is None:
                data = (message.get("text") or "").encode("utf-8")
            await socket.send_json(await _answer(websocket, state, identity, data))
    except WebSocketDisconnect:
        pass
    except (RuntimeError, OSError) as exc:  # the device went away while we wrote
        log.info("device %s socket ended: %s", device_id, exc)
    finally:
        if watch is not None and watched is not None:
            watch.remove(credential, watched)
        state.sockets.remove(socket)
        log.info("device %s disconnected", device_id)
        _announce(state, device_id, "device_offline", "WebSocket closed")


async def _answer(
    websocket: WebSocket, state: IngestState, identity: DeviceIdentity, data: bytes
) -> dict[str, Any]:
    config = state.config
    try:
        if len(data) > config.max_body_bytes:
            raise IngestRefused(413, "frame too large",
                                f"the frame is {len(data)} bytes; at most {config.max_body_bytes}")
        await check_rate(websocket, config, identity.device_id)
        ack = _command_ack(data)
        if ack is not None:
            return await _record_ack(websocket, state, identity.device_id, ack)
        readings = await accept_readings(
            state.producer, data, device_id=identity.device_id,
            protocol="websocket", application_id=identity.application_id,
            received_at=utcnow(), idempotency_key=None, max_readings=config.max_readings,
        )
    except IngestRefused as refused:
        detail = refused.detail
        if refused.status >= 500:  # as over HTTP: no internal text to the client, it goes to the log
            log.info("device %s: frame answered %d %s: %s", identity.device_id, refused.status,
                     refused.error, detail)
            detail = server_error_body(refused.status, refused.error, None)["detail"]
        return {"ok": False, "status": refused.status, "error": refused.error, "detail": detail}
    return {"ok": True, "message_ids": [t.message_id for t in readings]}


def _command_ack(data: bytes) -> dict[str, Any] | None:
    """The frame as a command answer, or None when it is not one (cheap test first)."""
    if b'"ack"' not in data:
        return None
    try:
        frame = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if isinstance(frame, dict) and frame.get("type") == "ack":
        return frame
    return None


def _ack_status(device_id: str, frame: dict[str, Any]) -> CommandStatus:
    command_id, status = frame.get("id"), frame.get("status")
    detail = frame.get("detail") or ""
    if not isinstance(command_id, str) or not command_id:
        raise IngestRefused(422, "invalid id", {"field": "id", "message": "the command id is required"})
    if status not in DEVICE_ACK_STATUSES:
        raise IngestRefused(422, "invalid status", {
            "field": "status", "message": f"must be one of {', '.join(sorted(DEVICE_ACK_STATUSES))}"})
    if not isinstance(detail, str) or len(detail) > _MAX_DETAIL:
        raise IngestRefused(422, "invalid detail", {
            "field": "detail", "message": f"must be text of at most {_MAX_DETAIL} characters"})
    try:
        return CommandStatus(command_id, device_id, str(status), detail=detail)
    except InvalidRecordError as exc:
        raise IngestRefused(422, "invalid id", {"field": "id", "message": str(exc)}) from exc


async def _record_ack(
    websocket: WebSocket, state: IngestState, device_id: str, frame: dict[str, Any]
) -> dict[str, Any]:
    """As ``POST /api/devices/{id}/commands/{cid}/ack``: Kafka first, then PostgreSQL."""
    status = _ack_status(device_id, frame)
    pool = services_of(websocket).pool
    try:
        async with pool.connection(timeout=5.0) as conn:
            found = await store.current_statuses(conn, [status.command_id], device_id)
    except (PoolTimeout, psycopg.OperationalError) as exc:
        raise IngestRefused(503, "PostgreSQL unavailable", str(exc)) from exc
    current = found.get(status.command_id)
    if current is None:
        raise IngestRefused(404, "no such command",
                            f"device {device_id} has no command {status.command_id:.80}")
    if current != status.status:
        if not may_advance(current, status.status):
            raise IngestRefused(409, f"command is {current}",
                                {"id": status.command_id, "status": current})
        try:
            await state.producer.send([status_record(status)])
        except KafkaUnavailable as exc:
            raise IngestRefused(503, "Kafka unavailable", str(exc)) from exc
        try:
            async with pool.connection(timeout=5.0) as conn:
                await store.apply_statuses(conn, [status])
        except (PoolTimeout, psycopg.OperationalError) as exc:
            # In Kafka already: the dispatcher's status recorder applies it when it can.
            log.warning("ack of %s kept in Kafka only for now: %s", status.command_id, exc)
    return {"ok": True, "type": "ack", "id": status.command_id, "status": status.status}


def device_socket_route(path: str = "/ws/devices/{device_id}") -> WebSocketRoute:
    return WebSocketRoute(path, device_socket)
