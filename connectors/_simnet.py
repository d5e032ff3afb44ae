"""Simulated HTTP and WebSocket devices: registered with keys, sending through the API.

Their keys are made here and stored (as hashes) straight into PostgreSQL's
``devices`` table, as ``POST /api/devices`` would, so the simulator needs no
user login. The network work runs on an asyncio loop in a background thread;
the simulator's round loop hands it readings with :meth:`ApiDevices.submit`,
which never blocks: while ``max_in_flight`` requests are open, a reading is
skipped and counted (a simulator has no reason to queue the past).

WebSocket devices keep one connection each, reconnect when it drops, and
answer every command frame with ``{"type": "ack", "id", "status": "acked"}``.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import threading
import uuid
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from pipeline.settings import Settings

__all__ = ["ApiDevices", "register_devices"]

log = logging.getLogger(__name__)

_TIMEOUT_S = 5.0


def register_devices(settings: Settings, devices: Sequence[tuple[str, str]],
                     application_id: str) -> dict[str, str]:
    """Give each ``(device_id, protocol)`` a fresh API key in PostgreSQL; returns the keys."""
    import psycopg

    from api.device_keys import hash_api_key, new_api_key

    keys = {device_id: new_api_key() for device_id, _ in devices}
    with psycopg.connect(settings.pg_conninfo, autocommit=True, connect_timeout=10) as conn:
        for device_id, protocol in devices:
            conn.execute(
                "INSERT INTO devices (id, name, protocol, application_id, api_key_hash)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET"
                " api_key_hash = EXCLUDED.api_key_hash, protocol = EXCLUDED.protocol",
                (device_id, f"simulated {protocol} device", protocol, application_id,
                 hash_api_key(keys[device_id])),
            )
    return keys


@dataclass
class _Socket:
    """One WebSocket device's connection and the answers it still waits for, in order."""

    ws: aiohttp.ClientWebSocketResponse | None = None
    waiting: collections.deque[asyncio.Future[dict[str, Any]]] = field(
        default_factory=collections.deque)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class ApiDevices:
    """HTTP and WebSocket devices talking to the API at ``base_url``."""

    def __init__(self, base_url: str, keys: dict[str, str], *, max_in_flight: int = 100) -> None:
        self._base = base_url.rstrip("/")
        self._ws_base = "ws" + self._base[len("http"):]
        self._keys = keys
        self._max_in_flight = max_in_flight
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sim-api",
                                        daemon=True)
        self._session: aiohttp.ClientSession | None = None
        self._sockets: dict[str, _Socket] = {}
        self._in_flight: set[Future[bool]] = set()
        self._lock = threading.Lock()
        self.failed = 0  # readings the API did not accept (transport errors, 5xx)
        self.commands_acked = 0

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._open(), self._loop).result(10)

    async def _open(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=_TIMEOUT_S))

    def submit(self, device_id: str, protocol: str, body: bytes) -> bool:
        """Send one reading in the background; False when skipped (too many in flight)."""
        with self._lock:
            if len(self._in_flight) >= self._max_in_flight:
                self.failed += 1
                return False
            send = self._post(device_id, body) if protocol == "http" else self._frame(device_id, body)
            future = asyncio.run_coroutine_threadsafe(send, self._loop)
            self._in_flight.add(future)
        future.add_done_callback(self._done)
        return True

    def _done(self, future: Future[bool]) -> None:
        with self._lock:
            self._in_flight.discard(future)
            if future.cancelled() or future.exception() is not None or not future.result():
                self.failed += 1

    def close(self, timeout: float = 10.0) -> None:
        """Wait up to ``timeout`` s for what is in flight, then close every connection."""
        with self._lock:
            pending = list(self._in_flight)
        for future in pending:
            try:
                future.result(timeout)
            except Exception:  # counted by _done
                pass
        try:
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    async def _close(self) -> None:
        for socket in self._sockets.values():
            if socket.ws is not None:
                await socket.ws.close()
        if self._session is not None:
            await self._session.close()

    async def _post(self, device_id: str, body: bytes) -> bool:
        assert self._session is not None
        headers = {"X-API-Key": self._keys[device_id], "Idempotency-Key": str(uuid.uuid4()),
                   "Content-Type": "application/json"}
        url = f"{self._base}/api/devices/{device_id}/telemetry"
        for attempt in range(3):  # as a device does: retry 503 with the same Idempotency-Key
            try:
                async with self._session.post(url, data=body, headers=headers) as response:
                    if response.status == 202 or response.status == 422:  # 422: meant to be bad
                        return True
                    if response.status != 503:
                        log.warning("HTTP device %s: %d %s", device_id, response.status,
                                    (await response.text())[:200])
                        return False
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.debug("HTTP device %s: %s", device_id, exc)
                return False
            await asyncio.sleep(0.5 * (attempt + 1))
        return False

    async def _frame(self, device_id: str, body: bytes) -> bool:
        socket = self._sockets.setdefault(device_id, _Socket())
        try:
            async with socket.lock:
                ws = socket.ws
                if ws is None or ws.closed:
                    ws = socket.ws = await self._connect(device_id, socket)
                answer: asyncio.Future[dict[str, Any]] = self._loop.create_future()
                socket.waiting.append(answer)
                await ws.send_str(body.decode("utf-8", errors="replace"))
            reply = await asyncio.wait_for(answer, _TIMEOUT_S)
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            log.debug("WebSocket device %s: %s", device_id, exc)
            return False
        return bool(reply.get("ok")) or reply.get("status") == 422

    async def _connect(self, device_id: str, socket: _Socket) -> aiohttp.ClientWebSocketResponse:
        assert self._session is not None
        ws = await self._session.ws_connect(f"{self._ws_base}/ws/devices/{device_id}",
                                            headers={"X-API-Key": self._keys[device_id]},
                                            heartbeat=20)
        self._loop.create_task(self._read(device_id, ws, socket))
        return ws

    async def _read(self, device_id: str, ws: aiohttp.ClientWebSocketResponse,
                    socket: _Socket) -> None:
        async for message in ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            frame = json.loads(message.data)
            if frame.get("type") == "command":
                async with socket.lock:
                    socket.waiting.append(self._loop.create_future())  # its answer, ignored
                    await ws.send_str(json.dumps({"type": "ack", "id": frame.get("id"),
                                                  "status": "acked", "detail": "simulated"}))
                self.commands_acked += 1
            elif socket.waiting:
                answer = socket.waiting.popleft()
                if not answer.done():
                    answer.set_result(frame)
        while socket.waiting:  # the connection ended: nobody will answer these
            answer = socket.waiting.popleft()
            if not answer.done():
                answer.set_exception(ConnectionError(f"{device_id}: WebSocket closed"))
