"""The API against the real stack: health, auth, REST, Socket.IO and /ws/topics."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx
import psycopg
import pytest
import redis.asyncio
import socketio
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from pipeline.settings import Topics
from schemas.records import SystemEvent, Telemetry, TelemetryMetadata
from tests.conftest import unique_id
from tests.integration.helpers import produce_raw

if TYPE_CHECKING:
    from tests.integration.conftest import ApiServer

pytestmark = pytest.mark.integration

DEPENDENCIES = {"kafka", "postgres", "redis", "influxdb", "mqtt"}


def _reading(device_id: str, application_id: str | None = None) -> Telemetry:
    now = datetime.now(UTC)
    return Telemetry(
        device_id=device_id,
        protocol="mqtt",
        ts=now,
        received_at=now,
        message_id=uuid.uuid4().hex,
        metrics={"temperature": 21.5, "humidity": 40.25},
        application_id=application_id,
        metadata=TelemetryMetadata(signal_strength=-67.0, battery_level=88.0),
    )


async def _produce_until_seen(
    server: ApiServer,
    device_id: str,
    wait_for: Callable[[float], Awaitable[dict[str, Any] | None]],
    application_id: str | None = None,
    timeout_s: float = 45.0,
) -> tuple[dict[str, Telemetry], dict[str, Any]]:
    """Produce readings of ``device_id`` until one comes back; a consumer that starts
    "from the end" only sees records written after it has found the end, and the
    test cannot observe that moment, so it keeps writing until a reading arrives."""
    sent: dict[str, Telemetry] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = _reading(device_id, application_id)
        await asyncio.to_thread(
            produce_raw, server.settings, Topics.VALID, record.encode(), device_id.encode()
        )
        sent[record.message_id] = record
        got = await wait_for(1.5)
        if got is not None:
            return sent, got
    raise AssertionError(f"no reading of {device_id} came back within {timeout_s} s")


def _assert_same_reading(sent: dict[str, Telemetry], got: dict[str, Any]) -> None:
    assert got["message_id"] in sent, got
    record = sent[got["message_id"]]
    assert got == record.to_json()
    assert got["metrics"] == {"temperature": 21.5, "humidity": 40.25}
    assert got["metadata"]["signal_strength"] == -67.0
    assert got["metadata"]["battery_level"] == 88.0


# ---- health and metrics ------------------------------------------------------


async def test_health_reports_every_dependency_up(api_server: ApiServer) -> None:
    async with httpx.AsyncClient(base_url=api_server.base_url, timeout=10) as client:
        response = await client.get("/health")
    body = response.json()
    assert set(body["dependencies"]) == DEPENDENCIES
    for name, dep in body["dependencies"].items():
        assert dep["status"] == "up", f"{name}: {dep}"
        assert isinstance(dep["latency_ms"], int | float) and dep["latency_ms"] >= 0
    assert body["status"] == "ok"
    assert response.status_code == 200


async def test_metrics_are_prometheus_text(api_server: ApiServer) -> None:
    async with httpx.AsyncClient(base_url=api_server.base_url, timeout=10) as client:
        await client.get("/health")
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert 'webscada_api_dependency_up{dependency="kafka"} 1.0' in response.text


# ---- auth failures -----------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token"},
                                     {"Authorization": "Basic d2Vic2NhZGE6eA=="}])
async def test_rest_without_valid_token_is_401(
    api_server: ApiServer, headers: dict[str, str]
) -> None:
    async with httpx.AsyncClient(base_url=api_server.base_url, timeout=10) as client:
        response = await client.get("/api/devices", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("auth", [None, {"token": "wrong-token"}, {"nothing": "here"}])
async def test_socketio_connect_without_valid_token_is_refused(
    api_server: ApiServer, auth: dict[str, str] | None
) -> None:
    client = socketio.AsyncClient(reconnection=False)
    try:
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.connect(
                api_server.base_url, auth=auth, transports=["websocket"], wait_timeout=10
            )
        assert not client.connected
    finally:
        await client.disconnect()


@pytest.mark.parametrize("query", ["", "?token=wrong-token"])
async def test_ws_topic_without_valid_token_closes_4401(api_server: ApiServer, query: str) -> None:
    async with ws_connect(f"{api_server.ws_url}/ws/topics/{Topics.VALID}{query}") as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4401


async def test_ws_topic_accepts_authorization_header(api_server: ApiServer) -> None:
    headers = {"Authorization": f"Bearer {api_server.token}"}
    async with ws_connect(
        f"{api_server.ws_url}/ws/topics/{Topics.SYSTEM}", additional_headers=headers
    ) as ws:
        await asyncio.sleep(1.0)  # a refused token is closed at once, right after the accept
        assert ws.close_code is None


async def test_ws_unknown_topic_closes_4404(api_server: ApiServer) -> None:
    url = f"{api_server.ws_url}/ws/topics/no.such.topic?token={api_server.token}"
    async with ws_connect(url) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4404
    assert "no.such.topic" in closed.value.rcvd.reason


# ---- live telemetry ----------------------------------------------------------


async def _socketio_client(server: ApiServer) -> tuple[socketio.AsyncClient, asyncio.Queue[Any]]:
    client = socketio.AsyncClient(reconnection=False)
    events: asyncio.Queue[Any] = asyncio.Queue()

    @client.on("telemetry")
    async def on_telemetry(data: Any) -> None:
        await events.put(data)

    await client.connect(
        server.base_url, auth={"token": server.token}, transports=["websocket"], wait_timeout=10
    )
    return client, events


def _queue_reader(
    events: asyncio.Queue[Any], device_id: str
) -> Callable[[float], Awaitable[dict[str, Any] | None]]:
    async def wait_for(timeout_s: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                data = await asyncio.wait_for(events.get(), left)
            except TimeoutError:
                return None
            if data.get("device_id") == device_id:
                return dict(data)
        return None

    return wait_for


async def test_telemetry_reaches_socketio_device_room(
    api_server: ApiServer,
) -> None:
    device_id = unique_id("api-sio")
    client, events = await _socketio_client(api_server)
    try:
        ack = await client.call("subscribe", {"room": f"device:{device_id}"}, timeout=10)
        assert ack == {"ok": True, "room": f"device:{device_id}"}
        sent, got = await _produce_until_seen(
            api_server, device_id, _queue_reader(events, device_id)
        )
        _assert_same_reading(sent, got)
    finally:
        await client.disconnect()


async def test_telemetry_reaches_socketio_application_room(
    api_server: ApiServer,
) -> None:
    device_id = unique_id("api-sio-app")
    application_id = f"app-{uuid.uuid4().hex[:8]}"
    client, events = await _socketio_client(api_server)
    try:
        ack = await client.call("subscribe", f"application:{application_id}", timeout=10)
        assert ack == {"ok": True, "room": f"application:{application_id}"}
        sent, got = await _produce_until_seen(
            api_server, device_id, _queue_reader(events, device_id), application_id
        )
        _assert_same_reading(sent, got)
        assert got["application_id"] == application_id
    finally:
        await client.disconnect()


@pytest.mark.parametrize(
    "payload", [{"room": "device:bad id!"}, {"room": "nosuchkind:x"}, {"nothing": 1}, 42, "alarms:x"]
)
async def test_socketio_subscribe_rejects_malformed_rooms(
    api_server: ApiServer, payload: Any
) -> None:
    client, _ = await _socketio_client(api_server)
    try:
        ack = await client.call("subscribe", payload, timeout=10)
        assert ack["ok"] is False
        assert ack["error"]
        ack = await client.call("unsubscribe", payload, timeout=10)
        assert ack["ok"] is False
    finally:
        await client.disconnect()


async def test_telemetry_reaches_topic_websocket(
    api_server: ApiServer,
) -> None:
    device_id = unique_id("api-ws")
    url = f"{api_server.ws_url}/ws/topics/{Topics.VALID}?from=latest&token={api_server.token}"
    async with ws_connect(url) as ws:
        frames: list[dict[str, Any]] = []

        async def wait_for(timeout_s: float) -> dict[str, Any] | None:
            deadline = time.monotonic() + timeout_s
            while (left := deadline - time.monotonic()) > 0:
                try:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), left))
                except TimeoutError:
                    return None
                if frame["key"] == device_id:
                    frames.append(frame)
                    return dict(frame["value"])
            return None

        sent, got = await _produce_until_seen(api_server, device_id, wait_for)
    _assert_same_reading(sent, got)
    # The per-connection consumer goes away with the client.
    gauge = f'webscada_api_ws_topic_clients{{topic="{Topics.VALID}"}} 0.0'
    async with httpx.AsyncClient(base_url=api_server.base_url, timeout=10) as client:
        for _ in range(100):
            if gauge in (await client.get("/metrics")).text:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"{gauge!r} not reached after the client left")
    frame = frames[0]
    assert frame["topic"] == Topics.VALID
    assert frame["schema"] == "io.webscada.Telemetry"
    assert isinstance(frame["partition"], int) and isinstance(frame["offset"], int)
    assert datetime.fromisoformat(frame["timestamp"]).tzinfo is not None


async def test_topic_websocket_replays_system_events_from_earliest(
    api_server: ApiServer,
) -> None:
    device_id = unique_id("api-ws-earliest")
    at = datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=UTC)
    event = SystemEvent(
        kind="test_event", source="tests.api", device_id=device_id, at=at,
        attributes={"why": "replay"},
    )
    await asyncio.to_thread(
        produce_raw, api_server.settings, Topics.SYSTEM, event.encode(), device_id.encode()
    )
    url = f"{api_server.ws_url}/ws/topics/{Topics.SYSTEM}?from=earliest&token={api_server.token}"
    async with ws_connect(url) as ws:
        async with asyncio.timeout(60):
            while True:
                frame = json.loads(await ws.recv())
                if frame["key"] == device_id:
                    break
    assert frame["schema"] == "io.webscada.SystemEvent"
    assert frame["value"] == {
        "kind": "test_event",
        "source": "tests.api",
        "device_id": device_id,
        "at": "2026-03-04T05:06:07.890000Z",
        "message": "",
        "attributes": {"why": "replay"},
    }


# ---- REST --------------------------------------------------------------------


async def test_devices_list_and_latest_values(api_server: ApiServer) -> None:
    settings = api_server.settings
    device_id = unique_id("api-rest")
    last_seen = datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=UTC)
    key = f"webscada:latest:{device_id}"
    store = redis.asyncio.Redis.from_url(settings.redis_url, decode_responses=True)
    async with await psycopg.AsyncConnection.connect(settings.pg_conninfo, autocommit=True) as pg:
        await pg.execute(
            "INSERT INTO devices (id, name, protocol, application_id, last_seen)"
            " VALUES (%s, %s, 'mqtt', 'plant-1', %s)",
            (device_id, "Boiler 1", last_seen),
        )
        await store.hset(
            key,
            mapping={
                "temperature": "21.5",
                "ts": "2026-01-02T03:04:05.600000Z",
                "protocol": "mqtt",
                "battery_level": "88",
            },
        )
        try:
            headers = {"Authorization": f"Bearer {api_server.token}"}
            async with httpx.AsyncClient(
                base_url=api_server.base_url, headers=headers, timeout=10
            ) as client:
                listed = await client.get("/api/devices", params={"limit": 5000})
                latest = await client.get(f"/api/devices/{device_id}/latest")
        finally:
            await pg.execute("DELETE FROM devices WHERE id = %s", (device_id,))
            await store.delete(key)
            await store.aclose()
    assert listed.status_code == 200
    mine = [d for d in listed.json() if d["id"] == device_id]
    assert mine == [
        {
            "id": device_id,
            "name": "Boiler 1",
            "protocol": "mqtt",
            "application_id": "plant-1",
            "last_seen": "2026-01-02T03:04:05.600000Z",
        }
    ]
    assert latest.status_code == 200
    assert latest.json() == {
        "temperature": 21.5,
        "ts": "2026-01-02T03:04:05.600000Z",
        "protocol": "mqtt",
        "battery_level": 88.0,
        "times": {},  # written here without the sink's per-metric times
    }


async def test_latest_of_silent_device_is_404(api_server: ApiServer) -> None:
    headers = {"Authorization": f"Bearer {api_server.token}"}
    async with httpx.AsyncClient(base_url=api_server.base_url, headers=headers, timeout=10) as c:
        response = await c.get(f"/api/devices/{unique_id('absent')}/latest")
    assert response.status_code == 404
    assert set(response.json()) == {"error", "detail"}


@pytest.mark.parametrize("path", ["/api/devices/bad%20id!/latest", "/api/devices?limit=zero"])
async def test_invalid_input_is_422_naming_the_field(api_server: ApiServer, path: str) -> None:
    headers = {"Authorization": f"Bearer {api_server.token}"}
    async with httpx.AsyncClient(base_url=api_server.base_url, headers=headers, timeout=10) as c:
        response = await c.get(path)
    assert response.status_code == 422
    body = response.json()
    field = "device_id" if "latest" in path else "limit"
    assert body["error"] == f"invalid {field}"
    assert body["detail"]["field"] == field


async def test_dashboard_is_served_without_external_urls(api_server: ApiServer) -> None:
    from api.app import STATIC_DIR

    assets = sorted(p.relative_to(STATIC_DIR).as_posix() for p in STATIC_DIR.rglob("*") if p.is_file())
    async with httpx.AsyncClient(base_url=api_server.base_url, timeout=10) as client:
        page = await client.get("/")
        served = {name: await client.get(f"/static/{name}") for name in assets}
    assert page.status_code == 200 and not re.search(r"https?://", page.text)
    for name, response in served.items():
        assert response.status_code == 200, name
        if name.startswith("vendor/"):
            continue  # npm's files as published (checksums: tests/unit/test_dashboard_assets.py)
        # our own files name no other origin (an SVG's XML namespace is a name, not a fetch)
        text = response.text.replace("http://www.w3.org/", "")
        assert not re.search(r"https?://", text), name
    for name in ("app.js", "style.css", "vendor/socket.io.min.js", "vendor/uPlot.iife.min.js"):
        assert f"/static/{name}" in page.text
    assert "/api/auth/token" in served["app.js"].text
    # what the browser enforces, whatever a library's strings say: nothing but this origin
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "connect-src 'self'" in policy


async def test_an_application_id_of_128_characters_works_everywhere(api_server: ApiServer) -> None:
    """The longest application id the rule allows: a device in it, a rule on it, a grant of it."""
    application = ("a" + uuid.uuid4().hex * 4)[:128]
    username = unique_id("u-long")
    admin = {"Authorization": f"Bearer {api_server.token}"}
    async with httpx.AsyncClient(base_url=api_server.base_url, timeout=15, headers=admin) as client:
        device = await client.post("/api/devices", json={"id": unique_id("long"), "protocol": "http",
                                                         "application_id": application})
        assert device.status_code == 201, device.text
        rule = await client.post("/api/alarm-rules", json={
            "name": unique_id("long-rule"), "application_id": application, "metric": "t",
            "operator": ">", "threshold": 1})
        assert rule.status_code == 201, rule.text
        assert rule.json()["application_id"] == application
        user = await client.post("/api/users", json={"username": username, "password": uuid.uuid4().hex,
                                                     "role": "viewer"})
        assert user.status_code == 201, user.text
        api_server.usernames.append(username)
        granted = await client.post(f"/api/users/{username}/applications",
                                    json={"application_id": application})
        assert granted.status_code == 200, granted.text
        assert application in granted.json()["applications"]
        assert (await client.delete(f"/api/alarm-rules/{rule.json()['id']}")).status_code == 204
