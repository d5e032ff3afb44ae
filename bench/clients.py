"""The bench's simulated devices and browser, driven open loop.

- :class:`MqttDevices`: one QoS 1 publisher for all devices, ``devices/{id}/telemetry``.
- :class:`HttpDevices`: registered devices POST the readings scheduled in each
  200 ms tick as one batch to ``/api/devices/{id}/telemetry``.
- :class:`Browser`: a Socket.IO client in the devices' rooms, timing each
  ``telemetry`` event from its device time.

Each reading's device timestamp is its scheduled send time, so a sender or a
pipeline that falls behind shows up as latency, never as a lower rate.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from datetime import datetime
from typing import Any

import aiohttp
import httpx
import paho.mqtt.client as mqtt
import socketio

from pipeline.settings import Settings

__all__ = ["Browser", "HttpDevices", "MqttDevices", "device_body"]


# --- the browser ---------------------------------------------------------------------------------
class Browser:
    """A Socket.IO client in the rooms of the bench's devices (its own thread and loop)."""

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
        return [lat for at, lat in self.latencies if start <= at <= end]

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._sio.disconnect(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


# --- the devices ---------------------------------------------------------------------------------
def device_body(seq: int, due_ms: int, n: int) -> dict[str, Any]:
    # bench_level cycles through the bench alarm rule's threshold (26.5, deadband 1)
    return {"timestamp": due_ms, "telemetry": {"seq": seq, "bench_level": 20 + (seq + n) % 70 / 10,
                                               "humidity": 40 + seq % 20}}


class MqttDevices:
    def __init__(self, settings: Settings, prefix: str, count: int) -> None:
        self.devices = [f"{prefix}-m{n:03d}" for n in range(count)]
        self._seq = [0] * count
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{prefix}-pub")
        self._client.max_inflight_messages_set(2000)
        self._client.max_queued_messages_set(0)
        self._client.connect(settings.mqtt_host, settings.mqtt_port)
        self._client.loop_start()

    def send(self, rate: float, seconds: float) -> dict[str, Any]:
        """Open loop: message k is due at start + k / rate; returns what was sent and how late."""
        total = int(rate * seconds)
        start_wall = time.time()
        start = time.monotonic()
        worst_late = 0.0
        for k in range(total):
            due = start + k / rate
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            else:
                worst_late = max(worst_late, now - due)
            n = k % len(self.devices)
            seq = self._seq[n]
            self._seq[n] += 1
            body = device_body(seq, int((start_wall + k / rate) * 1000), n)
            self._client.publish(f"devices/{self.devices[n]}/telemetry", json.dumps(body), qos=1)
        return {"sent": total, "sender_worst_late_ms": round(worst_late * 1000)}

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


class HttpDevices:
    TICK_S = 0.2

    def __init__(self, base_url: str, token: str, prefix: str, count: int, application_id: str) -> None:
        self._base_url = base_url
        self.devices: list[tuple[str, str]] = []
        with httpx.Client(base_url=base_url, timeout=15,
                          headers={"Authorization": f"Bearer {token}"}) as client:
            for n in range(count):
                device = f"{prefix}-h{n:03d}"
                response = client.post("/api/devices", json={
                    "id": device, "name": "bench", "protocol": "http", "application_id": application_id})
                response.raise_for_status()
                self.devices.append((device, str(response.json()["api_key"])))
        self._seq = [0] * count

    def send(self, rate: float, seconds: float) -> dict[str, Any]:
        return asyncio.run(self._send(rate, seconds))

    async def _send(self, rate: float, seconds: float) -> dict[str, Any]:
        """Every tick each device posts the readings scheduled inside it (open loop: requests
        are not awaited before the next tick). aiohttp, as the lightest client at hand: the
        devices share the machine with the pipeline they measure."""
        per_device = rate / len(self.devices)
        statuses: dict[int, int] = {}
        tasks: list[asyncio.Task[None]] = []
        connector = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(base_url=self._base_url, connector=connector,
                                         timeout=aiohttp.ClientTimeout(total=30)) as session:

            async def post(device: str, key: str, readings: list[dict[str, Any]]) -> None:
                try:
                    async with session.post(f"/api/devices/{device}/telemetry", json=readings,
                                            headers={"X-API-Key": key}) as response:
                        await response.read()
                        code = response.status
                except (aiohttp.ClientError, TimeoutError):
                    code = 0
                statuses[code] = statuses.get(code, 0) + len(readings)

            start_wall = time.time()
            start = time.monotonic()
            ticks = int(seconds / self.TICK_S)
            sent = 0
            worst_late = 0.0
            for tick in range(1, ticks + 1):
                due = start + tick * self.TICK_S
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    worst_late = max(worst_late, -delay)
                first = round((tick - 1) * self.TICK_S * per_device)
                last = round(tick * self.TICK_S * per_device)
                for n, (device, key) in enumerate(self.devices):
                    readings = []
                    for i in range(first, last):
                        seq = self._seq[n]
                        self._seq[n] += 1
                        readings.append(device_body(seq, int((start_wall + i / per_device) * 1000), n))
                    if readings:
                        sent += len(readings)
                        tasks.append(asyncio.create_task(post(device, key, readings)))
            await asyncio.gather(*tasks)
        return {"sent": sent, "sender_worst_late_ms": round(worst_late * 1000),
                "http_status_readings": {str(k): v for k, v in sorted(statuses.items())}}
