"""The Socket.IO server: token check on connect, ``subscribe``/``unsubscribe`` to rooms.

Events sent to clients (by :class:`api.streaming.TopicTail`): ``telemetry`` to
``device:{id}`` and ``application:{id}``, ``alarm`` to ``alarms`` and
``device:{id}``, ``command_status`` to ``device:{id}``, ``system`` to ``system``.
"""

from __future__ import annotations

import logging
from typing import Any

import socketio

from api.auth import Authenticator, Principal, bearer_token
from api.metrics import SOCKETIO_CLIENTS
from api.rooms import RoomError, parse_room

__all__ = ["create_socketio"]

log = logging.getLogger(__name__)


def _connect_token(environ: dict[str, Any], auth: object) -> str | None:
    if isinstance(auth, dict) and isinstance(auth.get("token"), str):
        return str(auth["token"])
    # Clients that cannot send an auth payload may use the Authorization header.
    return bearer_token({"authorization": environ.get("HTTP_AUTHORIZATION", "")})


def create_socketio(authenticator: Authenticator) -> socketio.AsyncServer:
    """A Socket.IO server (ASGI mode) whose clients must present a valid token."""
    # Default CORS policy: only the page's own origin (the dashboard) may connect.
    sio = socketio.AsyncServer(async_mode="asgi", logger=False, engineio_logger=False)

    async def principal(sid: str) -> Principal | None:
        session = await sio.get_session(sid)
        found: Principal | None = session.get("principal")
        return found

    @sio.event
    async def connect(sid: str, environ: dict[str, Any], auth: object = None) -> None:
        who = authenticator.authenticate(_connect_token(environ, auth))
        if who is None:
            raise socketio.exceptions.ConnectionRefusedError(
                {"message": "unauthorized", "detail": 'connect with auth={"token": "<token>"}'}
            )
        await sio.save_session(sid, {"principal": who})
        SOCKETIO_CLIENTS.inc()

    @sio.event
    async def disconnect(sid: str, reason: object = None) -> None:
        SOCKETIO_CLIENTS.dec()

    @sio.event
    async def subscribe(sid: str, data: object = None) -> dict[str, Any]:
        try:
            room = parse_room(data)
        except RoomError as exc:
            return {"ok": False, "error": str(exc)}
        who = await principal(sid)
        if who is None or not authenticator.may_join(who, room):
            return {"ok": False, "error": f"room {room} is not allowed", "room": str(room)}
        await sio.enter_room(sid, str(room))
        return {"ok": True, "room": str(room)}

    @sio.event
    async def unsubscribe(sid: str, data: object = None) -> dict[str, Any]:
        try:
            room = parse_room(data)
        except RoomError as exc:
            return {"ok": False, "error": str(exc)}
        await sio.leave_room(sid, str(room))
        return {"ok": True, "room": str(room)}

    return sio
