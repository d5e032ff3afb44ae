"""A browser stand-in: a Socket.IO client in some devices' rooms, timing each ``telemetry``
event from its device time (which the bench's devices set to the send time).

It runs its own event loop on its own thread, whose CPU time :meth:`Browser.cpu_seconds`
reports apart from the load generator's.
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import datetime
from typing import Any

import socketio

from bench.common import thread_cpu_seconds

__all__ = ["Browser"]


class Browser:
    """Joins the rooms of ``devices`` with ``token``; keeps (arrival, latency) per event."""

    def __init__(self, base_url: str, token: str, devices: list[str]) -> None:
        self.latencies: list[tuple[float, float]] = []  # (received at, seconds since device time)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._sio = socketio.AsyncClient(reconnection=True)
        self._sio.on("telemetry", self._on_telemetry)
        asyncio.run_coroutine_threadsafe(self._join(base_url, token, devices), self._loop).result(60)

    async def _join(self, base_url: str, token: str, devices: list[str]) -> None:
        await self._sio.connect(base_url, auth={"token": token}, transports=["websocket"],
                                wait_timeout=10)
        for device in devices:
            room = f"device:{device}"
            ack = await self._sio.call("subscribe", {"room": room}, timeout=10)
            if ack != {"ok": True, "room": room}:
                raise RuntimeError(f"Socket.IO subscribe refused: {ack}")

    def _on_telemetry(self, data: dict[str, Any]) -> None:
        ts = data.get("ts")
        if isinstance(ts, str) and not data.get("snapshot"):
            now = time.time()
            self.latencies.append((now, now - datetime.fromisoformat(ts).timestamp()))

    def between(self, start: float, end: float) -> list[float]:
        """Latencies (s) of the events that arrived between ``start`` and ``end``."""
        return [lat for at, lat in self.latencies if start <= at <= end]

    def cpu_seconds(self) -> float:
        """CPU time of the client's thread so far (its own /proc entry)."""
        assert self._thread.native_id is not None
        return thread_cpu_seconds(self._thread.native_id)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._sio.disconnect(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
