"""The Socket.IO server: token check on connect, ``subscribe``/``unsubscribe`` to rooms.

Events sent to clients (by :class:`api.streaming.TopicTail` through
:class:`api.fanout.Fanout`): ``telemetry`` to ``device:{id}`` and
``application:{id}``, ``alarm`` to ``alarms`` and ``device:{id}``,
``command_status`` to ``device:{id}``, ``system`` to ``system``.

A subscription is checked on the server: an application room needs that
application granted (admins: all), a device room needs the device to be visible,
``alarms`` and ``system`` span every application and are for admins. A connection ends when
its access token expires (the client reconnects with a fresh one), and within
``ws_credential_check_s`` of its user being deleted or disabled. One user holds
at most ``ws_max_per_user`` connections (with its ``/ws/topics`` ones) per process;
beyond, the connection is refused with ``too many connections``. A refused
subscription joins nothing. A new subscription first gets a snapshot: one
``telemetry`` event per device with its latest values from Redis, marked
``"snapshot": true``. Browsers may connect only from the configured origins.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, cast

import redis.exceptions
import socketio

from api.access import may_join
from api.auth import Authenticator, Principal, bearer_token
from api.connlimit import ConnectionLimiter
from api.connwatch import ConnectionWatch
from api.errors import ServiceUnavailable
from api.fanout import Fanout
from api.metrics import SOCKETIO_CLIENTS
from api.rooms import Room, RoomError, parse_room
from api.services import Services
from api.snapshot import snapshot_events

__all__ = ["create_socketio"]

log = logging.getLogger(__name__)


def _connect_token(environ: dict[str, Any], auth: object) -> str | None:
    if isinstance(auth, dict) and isinstance(auth.get("token"), str):
        return str(auth["token"])
    # Clients that cannot send an auth payload may use the Authorization header.
    return bearer_token({"authorization": environ.get("HTTP_AUTHORIZATION", "")})


def create_socketio(
    authenticator: Authenticator,
    *,
    services: Callable[[], Services | None] = lambda: None,
    allowed_origins: Iterable[str] | None = None,
    connection_limiter: ConnectionLimiter | None = None,
    user_watch: ConnectionWatch[str] | None = None,
) -> tuple[socketio.AsyncServer, Fanout]:
    """A Socket.IO server (ASGI mode) whose clients must present a valid token, and the
    fan-out the live tail emits to. ``services`` gives the running app's services;
    ``user_watch`` disconnects the clients of users removed or disabled meanwhile."""
    origins = sorted(allowed_origins) if allowed_origins is not None else None
    sio = socketio.AsyncServer(
        async_mode="asgi", logger=False, engineio_logger=False,
        cors_allowed_origins=cast(Any, origins),  # None: only the page's own origin
    )
    fanout = Fanout(sio)
    expiry: dict[str, asyncio.TimerHandle] = {}
    watched: dict[str, tuple[str, int]] = {}  # sid -> (user name, its number in user_watch)

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
        if connection_limiter is not None and not connection_limiter.acquire(who.subject):
            raise socketio.exceptions.ConnectionRefusedError(
                {"message": "too many connections",
                 "detail": f"at most {connection_limiter.per_user} connections per user"}
            )
        await sio.save_session(sid, {"principal": who})
        if user_watch is not None:
            watched[sid] = (who.subject, user_watch.add(who.subject, lambda: sio.disconnect(sid)))
        fanout.add_client(sid)
        SOCKETIO_CLIENTS.inc()
        expires = getattr(authenticator, "expires_at", None)
        when = expires(_connect_token(environ, auth)) if expires is not None else None
        if when is not None:  # the connection ends with its token; clients reconnect with a new one
            loop = asyncio.get_running_loop()
            expiry[sid] = loop.call_later(
                max(0.0, when - time.time()), lambda: asyncio.ensure_future(sio.disconnect(sid))
            )

    @sio.event
    async def disconnect(sid: str, reason: object = None) -> None:
        timer = expiry.pop(sid, None)
        if timer is not None:
            timer.cancel()
        if user_watch is not None and sid in watched:
            user_watch.remove(*watched.pop(sid))
        who = await principal(sid)
        if connection_limiter is not None and who is not None:
            connection_limiter.release(who.subject)
        await fanout.remove_client(sid)
        SOCKETIO_CLIENTS.dec()

    async def allowed(who: Principal, room: Room) -> bool:
        running = services()
        if running is None:
            return authenticator.may_join(who, room) and (room.kind != "device" or who.is_admin)
        return await may_join(running.pool, authenticator, who, room)

    @sio.event
    async def subscribe(sid: str, data: object = None) -> dict[str, Any]:
        try:
            room = parse_room(data)
        except RoomError as exc:
            return {"ok": False, "error": str(exc)}
        who = await principal(sid)
        try:
            permitted = who is not None and await allowed(who, room)
        except ServiceUnavailable:
            return {"ok": False, "error": "cannot check the room now, try again", "room": str(room)}
        if not permitted:
            return {"ok": False, "error": f"room {room} is not allowed", "room": str(room)}
        await sio.enter_room(sid, str(room))
        fanout.join(sid, str(room))
        running = services()
        if running is not None and who is not None:
            try:
                for event, payload in await snapshot_events(running, who, room):
                    fanout.offer(sid, event, payload)
            except (ServiceUnavailable, redis.exceptions.RedisError) as exc:
                log.info("socket.io: no snapshot for %s: %s", room, exc)
        return {"ok": True, "room": str(room)}

    @sio.event
    async def unsubscribe(sid: str, data: object = None) -> dict[str, Any]:
        try:
            room = parse_room(data)
        except RoomError as exc:
            return {"ok": False, "error": str(exc)}
        await sio.leave_room(sid, str(room))
        fanout.leave(sid, str(room))
        return {"ok": True, "room": str(room)}

    return sio, fanout
