"""Shared by the device-protocol integration tests: Socket.IO rooms, MQTT publishing, devices."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import socketio

from pipeline.mqtt_accounts import login
from pipeline.settings import Settings
from tests.conftest import unique_id
from tests.integration.conftest import ApiServer

__all__ = ["create_device", "forget_mqtt_session", "next_event", "publish", "subscribed"]


def publish(settings: Settings, topic: str, payload: bytes | str | dict[str, Any]) -> None:
    """One QoS 1 message, returned once the broker acknowledged it."""
    if isinstance(payload, dict):
        payload = json.dumps(payload)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=unique_id("pub"))
    login(client, settings, "simulator")
    client.connect(settings.mqtt_host, settings.mqtt_port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


def forget_mqtt_session(settings: Settings, client_id: str) -> None:
    """Drop the broker's persistent session of ``client_id`` (a test connector's), so test
    runs do not leave sessions collecting messages for 7 days."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    login(client, settings, "connector")
    client.connect(settings.mqtt_host, settings.mqtt_port)
    client.disconnect()


@contextlib.asynccontextmanager
async def subscribed(api: ApiServer, *rooms: str) -> AsyncIterator[asyncio.Queue[tuple[str, Any]]]:
    """An admin's Socket.IO client in ``rooms``; yields the queue of (event, data) it receives."""
    events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    sio = socketio.AsyncClient(reconnection=False)
    for name in ("telemetry", "system", "command_status"):
        sio.on(name, lambda data, name=name: events.put_nowait((name, data)))
    await sio.connect(api.base_url, auth={"token": api.token}, transports=["websocket"],
                      wait_timeout=10)
    try:
        for room in rooms:
            ack = await sio.call("subscribe", {"room": room}, timeout=10)
            assert ack == {"ok": True, "room": room}, ack
        yield events
    finally:
        await sio.disconnect()


async def next_event(events: asyncio.Queue[tuple[str, Any]], name: str,
                     match: Callable[[Any], bool] = lambda _: True, within: float = 20) -> Any:
    """The next ``name`` event whose data satisfies ``match``; the others stay queued."""
    skipped: list[tuple[str, Any]] = []
    try:
        async with asyncio.timeout(within):
            while True:
                event, data = await events.get()
                if event == name and match(data):
                    return data
                skipped.append((event, data))
    finally:
        for item in skipped:
            events.put_nowait(item)


def create_device(api: ApiServer, protocol: str, application_id: str | None = "it-plant",
                  device_id: str | None = None) -> tuple[str, str]:
    """A registered device of the API: ``(device_id, api_key)``."""
    device_id = device_id or unique_id(protocol[:4])
    # A 503 (PostgreSQL unavailable, e.g. just after the outage tests) is retried as its
    # Retry-After asks, as a client would; for 30 s at most.
    deadline = time.monotonic() + 30
    while True:
        response = httpx.post(f"{api.base_url}/api/devices",
                              headers={"Authorization": f"Bearer {api.token}"},
                              json={"id": device_id, "name": "integration", "protocol": protocol,
                                    "application_id": application_id}, timeout=15)
        if response.status_code != 503 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert response.status_code == 201, response.text
    return device_id, str(response.json()["api_key"])
