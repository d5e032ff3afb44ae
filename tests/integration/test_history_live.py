"""History from the real InfluxDB, the Redis snapshot a Socket.IO subscription starts with, /metrics."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import redis.asyncio
import socketio
from influxdb_client import InfluxDBClient, Point, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS

from pipeline.settings import Topics
from schemas.records import Telemetry, TelemetryMetadata
from tests.conftest import unique_id
from tests.integration.helpers import produce_raw

if TYPE_CHECKING:
    from tests.integration.conftest import ApiServer

pytestmark = pytest.mark.integration


def _write_points(api_server: ApiServer, device_id: str, start: datetime, values: list[float]) -> None:
    settings = api_server.settings
    with InfluxDBClient(url=settings.influx_url, token=settings.influx_token.get_secret_value(),
                        org=settings.influx_org) as client:
        points = [
            Point("telemetry").tag("device_id", device_id).tag("protocol", "mqtt")
            .field("temperature", value).time(start + timedelta(seconds=10 * i), WritePrecision.US)
            for i, value in enumerate(values)
        ]
        client.write_api(write_options=SYNCHRONOUS).write(settings.influx_bucket, record=points)


async def test_history_aggregates_per_window(api_server: ApiServer) -> None:
    device_id = unique_id("hist")
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    start -= timedelta(seconds=start.second % 60)
    values = [float(v) for v in range(1, 10)]  # floats: the field is a float everywhere
    await asyncio.to_thread(_write_points, api_server, device_id, start, values)
    headers = {"Authorization": f"Bearer {api_server.token}"}
    params = {"metric": "temperature", "start": start.isoformat(),
              "stop": (start + timedelta(seconds=90)).isoformat(), "every": "30s", "agg": "max"}
    async with httpx.AsyncClient(base_url=api_server.base_url, headers=headers, timeout=20) as client:
        history = await client.get(f"/api/devices/{device_id}/history", params=params)
        counted = await client.get(f"/api/devices/{device_id}/history",
                                   params={**params, "agg": "count"})
        too_many = await client.get(f"/api/devices/{device_id}/history",
                                    params={"metric": "temperature", "start": "-30d", "every": "1s"})
        reversed_range = await client.get(f"/api/devices/{device_id}/history",
                                          params={"metric": "temperature", "start": "-1h",
                                                  "stop": "-2h"})
        injected = await client.get(f"/api/devices/{device_id}/history",
                                    params={"metric": 'temperature" or true or "'})
    assert history.status_code == 200, history.text
    body = history.json()
    assert body["every_s"] == 30 and body["agg"] == "max"
    assert [p["value"] for p in body["points"]] == [3.0, 6.0, 9.0]
    assert datetime.fromisoformat(body["points"][0]["time"]) == start
    assert [p["value"] for p in counted.json()["points"]] == [3.0, 3.0, 3.0]
    assert too_many.status_code == 400
    assert "at most" in too_many.json()["detail"]["message"]
    assert reversed_range.status_code == 400
    assert reversed_range.json()["detail"]["message"] == "start must be before stop"
    assert injected.status_code == 422 and injected.json()["detail"]["field"] == "metric"


async def test_subscription_starts_with_a_snapshot_from_redis(api_server: ApiServer) -> None:
    device_id = unique_id("snap")
    key = f"webscada:latest:{device_id}"
    store = redis.asyncio.Redis.from_url(api_server.settings.redis_url, decode_responses=True)
    await store.hset(key, mapping={"temperature": "21.5", "ts": "2026-01-02T03:04:05.000000Z",
                                   "protocol": "mqtt", "battery_level": "88"})
    client = socketio.AsyncClient(reconnection=False)
    events: asyncio.Queue[Any] = asyncio.Queue()

    @client.on("telemetry")
    async def on_telemetry(data: Any) -> None:
        await events.put(data)

    try:
        await client.connect(api_server.base_url, auth={"token": api_server.token},
                             transports=["websocket"], wait_timeout=10)
        ack = await client.call("subscribe", {"room": f"device:{device_id}"}, timeout=10)
        assert ack["ok"] is True
        snapshot = await asyncio.wait_for(events.get(), 10)
    finally:
        await client.disconnect()
        await store.delete(key)
        await store.aclose()
    assert snapshot == {
        "device_id": device_id, "ts": "2026-01-02T03:04:05.000000Z", "protocol": "mqtt",
        "application_id": None, "status": None, "metrics": {"temperature": 21.5},
        "metric_times": {},  # the hash was written here without the sink's per-metric times
        "metadata": {"battery_level": 88.0}, "snapshot": True,
    }


async def test_metrics_have_ingest_latency_lag_and_dlq_figures(api_server: ApiServer) -> None:
    device_id = unique_id("metrics")
    client = socketio.AsyncClient(reconnection=False)
    events: asyncio.Queue[Any] = asyncio.Queue()

    @client.on("telemetry")
    async def on_telemetry(data: Any) -> None:
        await events.put(data)

    await client.connect(api_server.base_url, auth={"token": api_server.token},
                         transports=["websocket"], wait_timeout=10)
    try:
        await client.call("subscribe", {"room": f"device:{device_id}"}, timeout=10)
        for _ in range(30):  # the tail reads from the end: write until one arrives
            now = datetime.now(UTC)
            record = Telemetry(device_id=device_id, protocol="http", ts=now, received_at=now,
                               message_id=unique_id("m"), metrics={"x": 1.0},
                               metadata=TelemetryMetadata())
            await asyncio.to_thread(produce_raw, api_server.settings, Topics.VALID, record.encode(),
                                    device_id.encode())
            try:
                await asyncio.wait_for(events.get(), 1.5)
                break
            except TimeoutError:
                continue
        else:
            raise AssertionError("no telemetry event came back")
    finally:
        await client.disconnect()
    wanted = ('webscada_telemetry_ingested_total{protocol="http"}',
              'webscada_e2e_latency_seconds_count{stage="browser_emit"}',
              'webscada_kafka_topic_end_offset{topic="telemetry.dlq"}',
              "webscada_kafka_consumer_lag{group=")
    # Kafka figures are re-read at most every 10 s (and a cold broker may miss a round).
    async with httpx.AsyncClient(base_url=api_server.base_url, timeout=20) as http:
        for _ in range(8):
            text = (await http.get("/metrics")).text
            if all(line in text for line in wanted):
                break
            await asyncio.sleep(5)
    assert [line for line in wanted if line not in text] == []
