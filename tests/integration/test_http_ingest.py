"""HTTP devices: ``POST /api/devices/{id}/telemetry`` against the real stack, and the device registry."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
import redis

from pipeline.settings import Settings
from tests.conftest import unique_id, wait_until
from tests.integration.conftest import ApiServer
from tests.integration.helpers import influx_points, redis_latest
from tests.integration.live import create_device, next_event, subscribed

pytestmark = pytest.mark.integration


def _post(api: ApiServer, device: str, body: Any, **headers: str) -> httpx.Response:
    """POST a reading; a 503 is retried as a device does (same Idempotency-Key)."""
    for _ in range(5):
        response = httpx.post(f"{api.base_url}/api/devices/{device}/telemetry", json=body,
                              headers=headers, timeout=15)
        if response.status_code != 503:
            return response
        time.sleep(1)
    return response


async def test_http_reading_reaches_stores_and_room(worker: Any, api_server: ApiServer,
                                                    stack: Settings) -> None:
    device, key = create_device(api_server, "http", "it-plant")
    stamp = int(time.time() * 1000) - 5000
    body = {"timestamp": stamp, "telemetry": {"pressure": 4.75, "pump": True},
            "metadata": {"batteryLevel": 64, "signalStrength": -70, "snr": 8.5},
            "applicationId": "not-mine"}
    async with subscribed(api_server, f"device:{device}") as events:
        response = await asyncio.to_thread(_post, api_server, device, body,
                                           **{"X-API-Key": key, "Idempotency-Key": "first"})
        assert (response.status_code, response.json()) == (
            202, {"accepted": 1, "message_ids": ["first"]})
        event = await next_event(events, "telemetry")
    assert (event["protocol"], event["application_id"], event["metrics"], event["message_id"]) == (
        "http", "it-plant", {"pressure": 4.75, "pump": 1.0}, "first")
    latest = await asyncio.to_thread(wait_until, lambda: redis_latest(stack, device),
                                     what="Redis latest")
    assert (latest["pressure"], latest["pump"], latest["protocol"]) == ("4.75", "1.0", "http")
    assert (float(latest["battery_level"]), float(latest["snr"])) == (64.0, 8.5)
    points = await asyncio.to_thread(
        wait_until, lambda: (p := influx_points(stack, device)) and len(p) >= 5 and p,
        what="InfluxDB points")
    assert {p["field"]: p["value"] for p in points} == {
        "pressure": 4.75, "pump": 1.0, "battery_level": 64.0, "signal_strength": -70.0,
        "snr": 8.5}
    assert {(p["protocol"], p["application_id"]) for p in points} == {("http", "it-plant")}
    assert {int(p["time"].timestamp() * 1000) for p in points} == {stamp}


def test_an_idempotent_retry_stores_one_reading(worker: Any, api_server: ApiServer,
                                                stack: Settings) -> None:
    device, key = create_device(api_server, "http")
    headers = {"X-API-Key": key, "Idempotency-Key": "retry-me"}
    body = {"telemetry": {"level": 1.0}}  # no device time: the arrival time becomes ts
    first = _post(api_server, device, body, **headers)
    time.sleep(1.5)  # the retry arrives later; that must not make it a second reading
    again = _post(api_server, device, body, **headers)
    assert first.status_code == again.status_code == 202
    assert first.json() == again.json() == {"accepted": 1, "message_ids": ["retry-me"]}
    wait_until(lambda: influx_points(stack, device), what="InfluxDB point")
    time.sleep(3)  # give a duplicate every chance to land
    assert [(p["field"], p["value"]) for p in influx_points(stack, device)] == [("level", 1.0)]
    other = _post(api_server, device, body, **{"X-API-Key": key, "Idempotency-Key": "another"})
    assert other.status_code == 202
    wait_until(lambda: len(influx_points(stack, device)) == 2, what="a new key, a new reading")


def test_refusals_name_the_problem(api_server: ApiServer, stack: Settings) -> None:
    device, key = create_device(api_server, "http")
    _, other_key = create_device(api_server, "http")
    url = f"{api_server.base_url}/api/devices/{device}/telemetry"

    missing = httpx.post(url, json={"t": 1}, timeout=15)
    assert (missing.status_code, missing.json()["error"]) == (401, "missing API key")
    assert missing.headers["www-authenticate"] == 'ApiKey header="X-API-Key"'
    wrong = httpx.post(url, json={"t": 1}, headers={"X-API-Key": "x" * 43}, timeout=15)
    assert (wrong.status_code, wrong.json()) == (
        401, {"error": "invalid API key", "detail": "no device has this key"})
    other = httpx.post(url, json={"t": 1}, headers={"X-API-Key": other_key}, timeout=15)
    assert (other.status_code, other.json()["error"]) == (403, "API key of another device")

    big = httpx.post(url, content=b"[" + b" " * (300 * 1024) + b"]",
                     headers={"X-API-Key": key, "Content-Type": "application/json"}, timeout=15)
    assert (big.status_code, big.json()["error"]) == (413, "body too large")

    bad = httpx.post(url, json=[{"telemetry": {"temperature": 20.5}},
                                {"telemetry": {"temperature": "warm"}}],
                     headers={"X-API-Key": key}, timeout=15)
    assert bad.status_code == 422
    assert bad.json() == {"error": "invalid reading", "detail": {
        "field": "[1].telemetry.temperature", "message": "string 'warm' is not a number",
        "errors": [{"index": 1, "field": "telemetry.temperature",
                    "message": "string 'warm' is not a number"}]}}
    time.sleep(2)
    assert redis_latest(stack, device) == {}  # nothing of a refused body is kept

    # The limit is per device and window (600 a minute): fill this window, then one more.
    client = redis.Redis.from_url(stack.redis_url)
    try:
        client.set(f"webscada:ratelimit:ingest:{device}", 600, ex=60)
    finally:
        client.close()
    limited = httpx.post(url, json={"t": 1}, headers={"X-API-Key": key}, timeout=15)
    assert (limited.status_code, limited.json()["error"]) == (429, "rate limited")
    assert 1 <= int(limited.headers["retry-after"]) <= 60


def test_device_registry(api_server: ApiServer) -> None:
    admin = {"Authorization": f"Bearer {api_server.token}"}
    device = unique_id("reg")
    with httpx.Client(base_url=api_server.base_url, headers=admin, timeout=15) as http:
        created = http.post("/api/devices", json={"id": device, "name": "boiler",
                                                  "protocol": "http", "application_id": "it-reg"})
        assert created.status_code == 201
        body = created.json()
        key = body.pop("api_key")
        assert len(key) >= 43 and created.headers["location"] == f"/api/devices/{device}"
        assert {k: body[k] for k in ("id", "name", "protocol", "application_id", "has_api_key")} == {
            "id": device, "name": "boiler", "protocol": "http", "application_id": "it-reg",
            "has_api_key": True}
        assert http.post("/api/devices", json={"id": device, "protocol": "http"}).status_code == 409
        assert "api_key" not in http.get(f"/api/devices/{device}").json()
        invalid = http.post("/api/devices", json={"id": "no spaces", "protocol": "http"})
        assert (invalid.status_code, invalid.json()["detail"]["field"]) == (422, "id")
        assert http.patch(f"/api/devices/{device}", json={"name": "boiler 2"}).json()["name"] == (
            "boiler 2")

        telemetry = f"/api/devices/{device}/telemetry"
        assert _post(api_server, device, {"t": 1}, **{"X-API-Key": key}).status_code == 202
        new_key = http.post(f"/api/devices/{device}/api-key").json()["api_key"]
        assert http.post(telemetry, json={"t": 1}, headers={"X-API-Key": key}).status_code == 401
        assert _post(api_server, device, {"t": 1}, **{"X-API-Key": new_key}).status_code == 202

        viewer = api_server.user_token("viewer", ["it-reg"])
        as_viewer = {"Authorization": f"Bearer {viewer}"}
        assert http.get(f"/api/devices/{device}", headers=as_viewer).status_code == 200
        assert http.delete(f"/api/devices/{device}", headers=as_viewer).status_code == 403
        outsider = api_server.user_token("operator", ["elsewhere"])
        assert http.get(f"/api/devices/{device}",
                        headers={"Authorization": f"Bearer {outsider}"}).status_code == 404

        deleted = http.delete(f"/api/devices/{device}")
        assert (deleted.status_code, deleted.json()) == (200, {"id": device, "deleted": True})
        assert http.get(f"/api/devices/{device}").status_code == 404
        assert http.post(telemetry, json={"t": 1}, headers={"X-API-Key": new_key}).status_code == 401
