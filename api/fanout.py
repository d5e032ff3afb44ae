"""Per-client delivery of live events with conflation, so a slow browser costs bounded memory.

Each Socket.IO client has an :class:`Outbox`. Events wait there keyed by what
they describe: telemetry by device (a newer reading merges into the waiting one,
metric by metric, newest value wins); lifecycle events (command statuses,
alarm transitions) and the rest are kept individually, in order. The outbox holds at most ``max_keys``
entries and drops the oldest beyond that. A sender task per client takes the
next entry only while the client's transport has fewer than ``max_in_flight``
packets not yet written, so a slow link sees the newest value per metric
instead of a growing backlog.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Hashable, Iterable
from datetime import datetime
from typing import Any

import socketio

from api.metrics import E2E_LATENCY, LIVE_CONFLATED, LIVE_DROPPED, LIVE_SENT

__all__ = ["Fanout", "Outbox", "conflation_key", "merge_telemetry"]

log = logging.getLogger(__name__)


def conflation_key(event: str, payload: dict[str, Any], serial: int) -> Hashable:
    """What an event describes; two events with one key are conflated (the newer wins)."""
    if event == "telemetry" and payload.get("device_id"):
        return ("telemetry", payload["device_id"])
    # Lifecycle events (command statuses, alarm transitions) are each a fact a
    # client must see in order: never conflated.
    return (event, serial)


def merge_telemetry(older: dict[str, Any], newer: dict[str, Any]) -> dict[str, Any]:
    """One reading with the newest value of every metric of both; the envelope of the newer."""
    if str(newer.get("ts") or "") < str(older.get("ts") or ""):
        older, newer = newer, older  # a late reading only fills metrics the newer one lacks
    merged = dict(newer)
    merged["metrics"] = {**(older.get("metrics") or {}), **(newer.get("metrics") or {})}
    return merged


class Outbox:
    """A bounded, conflating queue of ``(event, payload)`` for one client."""

    def __init__(self, max_keys: int = 1000) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {max_keys}")
        self._items: collections.OrderedDict[Hashable, tuple[str, dict[str, Any]]] = (
            collections.OrderedDict()
        )
        self._max_keys = max_keys
        self._serial = 0
        self._ready = asyncio.Event()
        self.conflated = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, event: str, payload: dict[str, Any]) -> None:
        self._serial += 1
        key = conflation_key(event, payload, self._serial)
        waiting = self._items.get(key)
        if waiting is not None:
            self.conflated += 1
            LIVE_CONFLATED.labels(event).inc()
            if event == "telemetry":
                payload = merge_telemetry(waiting[1], payload)
            self._items[key] = (event, payload)  # keeps its place in line
        else:
            if len(self._items) >= self._max_keys:
                dropped_event, _ = self._items.popitem(last=False)[1]
                self.dropped += 1
                LIVE_DROPPED.labels(dropped_event).inc()
            self._items[key] = (event, payload)
        self._ready.set()

    def pop(self) -> tuple[str, dict[str, Any]] | None:
        if not self._items:
            self._ready.clear()
            return None
        return self._items.popitem(last=False)[1]

    async def wait(self) -> None:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()


def _latency_s(payload: dict[str, Any]) -> float | None:
    ts = payload.get("ts")
    if not isinstance(ts, str) or payload.get("snapshot"):
        return None
    try:
        return time.time() - datetime.fromisoformat(ts).timestamp()
    except ValueError:
        return None


class Fanout:
    """The emitter the live tail writes to: rooms to clients, through their outboxes."""

    def __init__(self, sio: socketio.AsyncServer, *, max_keys: int = 1000,
                 max_in_flight: int = 8) -> None:
        self._sio = sio
        self._max_keys = max_keys
        self._max_in_flight = max_in_flight
        self._rooms: dict[str, set[str]] = collections.defaultdict(set)
        self._outboxes: dict[str, Outbox] = {}
        self._senders: dict[str, asyncio.Task[None]] = {}

    def add_client(self, sid: str) -> None:
        if sid in self._outboxes:
            return
        self._outboxes[sid] = Outbox(self._max_keys)
        self._senders[sid] = asyncio.create_task(self._send(sid), name=f"webscada-sio-{sid}")

    async def remove_client(self, sid: str) -> None:
        self._outboxes.pop(sid, None)
        for room in [room for room, members in self._rooms.items() if sid in members]:
            self.leave(sid, room)
        task = self._senders.pop(sid, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def join(self, sid: str, room: str) -> None:
        self._rooms[room].add(sid)

    def leave(self, sid: str, room: str) -> None:
        members = self._rooms.get(room)
        if members is not None:
            members.discard(sid)
            if not members:
                del self._rooms[room]

    def offer(self, sid: str, event: str, payload: dict[str, Any]) -> None:
        """Queue an event for one client (e.g. the snapshot of a new subscription)."""
        outbox = self._outboxes.get(sid)
        if outbox is not None:
            outbox.put(event, payload)

    def listened(self, rooms: Iterable[str]) -> bool:
        """Whether a client is in one of ``rooms``."""
        return any(room in self._rooms for room in rooms)

    async def emit(self, event: str, data: Any = None, *, to: Any = None) -> None:
        """Queue ``data`` for every client in any of the rooms ``to`` (each client once)."""
        rooms = [to] if isinstance(to, str) else list(to or ())
        targets: set[str] = set()
        for room in rooms:
            targets |= self._rooms.get(room, set())
        for sid in targets:
            self.offer(sid, event, data)

    def _transport_queue(self, sid: str) -> asyncio.Queue[Any] | None:
        """Engine.IO's queue of packets for the client not yet written to its connection
        (its writer awaits the socket, so a slow link leaves packets here)."""
        try:
            eio_sid = self._sio.manager.eio_sid_from_sid(sid, "/")
            queue: asyncio.Queue[Any] = self._sio.eio.sockets[eio_sid].queue
        except (KeyError, AttributeError, TypeError):
            return None
        return queue

    async def _send(self, sid: str) -> None:
        outbox = self._outboxes[sid]
        while True:
            await outbox.wait()
            queue = self._transport_queue(sid)
            if queue is not None and queue.qsize() >= self._max_in_flight:
                await queue.join()  # meanwhile new events conflate in the outbox
            item = outbox.pop()
            if item is None:
                continue
            event, payload = item
            try:
                await self._sio.emit(event, payload, to=sid)
            except Exception:
                log.exception("socket.io: emitting %s to %s failed", event, sid)
                continue
            LIVE_SENT.labels(event).inc()
            if event == "telemetry" and (latency := _latency_s(payload)) is not None:
                E2E_LATENCY.labels("browser_emit").observe(max(0.0, latency))
