"""The device WebSockets connected to this API process, and commands pushed down to them.

- :meth:`DeviceSockets.push_command` writes one JSON command frame
  (``{"type": "command", "id", "name", "params", ...}``) to every open socket of
  a device in this process; it is what a command transport in the API calls.
- Other processes (the dispatcher) reach the devices through PostgreSQL: they
  ``NOTIFY webscada_commands, '<device_id>'`` when commands wait for a device,
  and :meth:`DeviceSockets.listen` hands every connected socket of that device
  to the ``on_waiting`` callback (which pushes the open commands and records
  them ``sent``). The same callback runs when a device connects.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import psycopg
from starlette.websockets import WebSocket

__all__ = ["NOTIFY_CHANNEL", "DeviceSocket", "DeviceSockets", "WaitingCallback"]

log = logging.getLogger(__name__)

# Must equal pipeline.commands.service.NOTIFY_CHANNEL (that module loads Faust; the API must not).
NOTIFY_CHANNEL = "webscada_commands"
_RECONNECT_MAX_S = 30.0

Push = Callable[[Mapping[str, Any]], Awaitable[None]]
WaitingCallback = Callable[[WebSocket, str, Push], Awaitable[object]]
"""``(websocket, device_id, push)``: push the commands waiting for the device."""


class DeviceSocket:
    """One connected device; frames to it are written one at a time."""

    def __init__(self, device_id: str, websocket: WebSocket, number: int) -> None:
        self.device_id = device_id
        self.websocket = websocket
        self.number = number
        self._lock = asyncio.Lock()

    async def send_json(self, frame: Mapping[str, Any]) -> None:
        text = json.dumps(frame, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        async with self._lock:
            await self.websocket.send_text(text)

    async def close(self, code: int, reason: str) -> None:
        """Close the socket (between frames); nothing when it is closed already."""
        async with self._lock:
            with contextlib.suppress(RuntimeError, OSError):
                await self.websocket.close(code, reason)

    async def send_command(self, command: Mapping[str, Any]) -> None:
        """A command frame: ``{"type": "command", **command}``."""
        await self.send_json({"type": "command", **command})


class DeviceSockets:
    """Registry of this process's device sockets (one event loop)."""

    def __init__(self, on_waiting: WaitingCallback | None = None) -> None:
        self._sockets: dict[str, dict[int, DeviceSocket]] = {}
        self._numbers = itertools.count(1)
        self._on_waiting = on_waiting

    def add(self, device_id: str, websocket: WebSocket) -> DeviceSocket:
        socket = DeviceSocket(device_id, websocket, next(self._numbers))
        self._sockets.setdefault(device_id, {})[socket.number] = socket
        return socket

    def remove(self, socket: DeviceSocket) -> None:
        sockets = self._sockets.get(socket.device_id, {})
        sockets.pop(socket.number, None)
        if not sockets:
            self._sockets.pop(socket.device_id, None)

    def connected(self, device_id: str) -> bool:
        return bool(self._sockets.get(device_id))

    def __len__(self) -> int:
        return sum(len(s) for s in self._sockets.values())

    async def push_command(self, device_id: str, command: Mapping[str, Any]) -> int:
        """Write ``command`` (``{"id", "name", "params"}``) to each socket of ``device_id``;
        returns how many took it (0: the device is not connected here)."""
        written = 0
        for socket in list(self._sockets.get(device_id, {}).values()):
            try:
                await socket.send_command(command)
            except (OSError, RuntimeError) as exc:  # closed meanwhile
                log.info("command to %s not written: %s", device_id, exc)
                continue
            written += 1
        return written

    async def announce(self, socket: DeviceSocket) -> None:
        """Run the waiting-commands callback for one socket (on connect, on NOTIFY)."""
        if self._on_waiting is None:
            return
        try:
            await self._on_waiting(socket.websocket, socket.device_id, socket.send_command)
        except Exception:
            # A failed push leaves the commands open: the next NOTIFY or connect retries them.
            log.exception("pushing waiting commands to %s failed", socket.device_id)

    async def listen(self, conninfo: str) -> None:
        """``LISTEN`` on :data:`NOTIFY_CHANNEL` until cancelled, reconnecting with backoff."""
        delay = 1.0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    conninfo, autocommit=True, connect_timeout=5
                ) as conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    delay = 1.0
                    # Commands queued while this listener was away are pushed now.
                    for device_id in list(self._sockets):
                        await self._waiting(device_id)
                    async for notify in conn.notifies():
                        await self._waiting(notify.payload)
            except psycopg.Error as exc:
                log.warning("device command listener lost PostgreSQL (%s); retrying in %.0f s",
                            exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RECONNECT_MAX_S)

    async def _waiting(self, device_id: str) -> None:
        for socket in list(self._sockets.get(device_id, {}).values()):
            await self.announce(socket)

    @contextlib.asynccontextmanager
    async def listening(self, conninfo: str) -> Any:
        """Run :meth:`listen` in the background for the life of the block."""
        task = asyncio.create_task(self.listen(conninfo), name="device-command-listener")
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
