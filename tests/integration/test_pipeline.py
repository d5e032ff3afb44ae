"""The stream worker against the real Kafka, Redis, InfluxDB and PostgreSQL."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import redis

from pipeline.settings import Settings, Topics
from schemas import SCHEMA_DIR, TelemetryMetadata, iso_utc, utcnow
from tests.conftest import WorkerProcess, unique_id, wait_until
from tests.integration.helpers import (
    dead_letters_for,
    device_row,
    influx_points,
    produce_raw,
    produce_telemetry,
    redis_latest,
    redis_ttl,
)

pytestmark = pytest.mark.integration


def test_reading_lands_in_every_store(worker: WorkerProcess, stack: Settings) -> None:
    device = unique_id("dev")
    record = produce_telemetry(
        stack, device, {"temperature": 21.5, "pressure": 1013.25},
        metadata=TelemetryMetadata(signal_strength=-67, battery_level=88, snr=7.5),
        application_id="plant-a",
    )

    latest = wait_until(lambda: redis_latest(stack, device), what="Redis latest hash")
    assert latest == {
        "ts": iso_utc(record.ts), "protocol": "mqtt", "temperature": "21.5",
        "pressure": "1013.25", "signal_strength": "-67.0", "battery_level": "88.0",
        "snr": "7.5", "application_id": "plant-a",
    }
    assert 290 <= redis_ttl(stack, device) <= 300

    points = wait_until(lambda: len(influx_points(stack, device)) == 5 and influx_points(stack, device),
                        what="five InfluxDB fields")
    assert {p["field"]: p["value"] for p in points} == {
        "temperature": 21.5, "pressure": 1013.25, "signal_strength": -67.0,
        "battery_level": 88.0, "snr": 7.5,
    }
    assert {p["time"] for p in points} == {record.ts}
    assert {(p["protocol"], p["application_id"]) for p in points} == {("mqtt", "plant-a")}

    row = wait_until(lambda: device_row(stack, device), what="devices row")
    assert row == {"id": device, "protocol": "mqtt", "application_id": "plant-a",
                   "last_seen": record.ts, "last_message_id": record.message_id}


def test_undecodable_value_goes_to_dlq_and_the_worker_keeps_going(
    worker: WorkerProcess, stack: Settings
) -> None:
    marker = unique_id("garbage").encode()
    produce_raw(stack, Topics.RAW, b"\xc3\x01" + b"\x00" * 8 + marker, b"whatever")
    letters = wait_until(lambda: dead_letters_for(stack, marker, timeout=3), timeout=30,
                         what="dead letter for an unknown fingerprint")
    assert len(letters) == 1
    letter = letters[0]
    assert letter.stage == "agent.validate"
    assert letter.source_topic == Topics.RAW
    assert letter.source_offset is not None and letter.source_partition is not None
    assert "fingerprint 0000000000000000" in letter.reason
    assert str(SCHEMA_DIR) in letter.reason

    device = unique_id("after")
    produce_telemetry(stack, device, {"level": 3.0})
    assert wait_until(lambda: redis_latest(stack, device), what="reading after garbage")["level"] == "3.0"
    assert worker.poll() is None


def test_future_timestamp_is_rejected_with_reason(worker: WorkerProcess, stack: Settings) -> None:
    device = unique_id("future")
    record = produce_telemetry(stack, device, {"temperature": 1.0}, ts=utcnow() + timedelta(days=2))
    letters = wait_until(lambda: dead_letters_for(stack, record.message_id.encode(), timeout=3),
                         timeout=30, what="dead letter for a future timestamp")
    assert "in the future" in letters[0].reason
    assert letters[0].device_id == device
    assert redis_latest(stack, device) == {}


def test_older_reading_never_overwrites_newer_latest(
    worker: WorkerProcess, stack: Settings
) -> None:
    device = unique_id("late")
    now = utcnow()
    produce_telemetry(stack, device, {"temperature": 30.0}, ts=now)
    wait_until(lambda: redis_latest(stack, device).get("temperature") == "30.0", what="newer value")
    late = produce_telemetry(stack, device, {"temperature": 10.0}, ts=now - timedelta(minutes=5))
    # The late reading is stored in InfluxDB at its own time...
    wait_until(lambda: any(p["time"] == late.ts for p in influx_points(stack, device)),
               what="late point in InfluxDB")
    # ...but the latest value and last_seen stay those of the newer reading.
    assert redis_latest(stack, device)["temperature"] == "30.0"
    assert redis_latest(stack, device)["ts"] == iso_utc(now)
    row = wait_until(lambda: device_row(stack, device), what="devices row")
    assert row["last_seen"] == now


def test_replayed_reading_is_stored_once(worker: WorkerProcess, stack: Settings) -> None:
    device = unique_id("dup")
    ts = utcnow()
    for _ in range(3):
        produce_telemetry(stack, device, {"flow": 4.2}, ts=ts, message_id=f"{device}-m1")
    produce_telemetry(stack, device, {"flow": 4.3}, ts=ts + timedelta(seconds=1), message_id=f"{device}-m2")
    wait_until(lambda: len(influx_points(stack, device)) >= 2, what="two points")
    points = influx_points(stack, device)
    assert sorted((p["time"], p["value"]) for p in points) == [(ts, 4.2), (ts + timedelta(seconds=1), 4.3)]
    def moved_on() -> dict[str, object] | None:
        row = device_row(stack, device)
        return row if row and row["last_message_id"] == f"{device}-m2" else None

    row = wait_until(moved_on, what="last message id")
    assert row["last_seen"] == ts + timedelta(seconds=1)


def test_redis_outage_stalls_only_the_redis_sink(worker: WorkerProcess, stack: Settings) -> None:
    from infra import stack as local_stack

    client = redis.Redis.from_url(stack.redis_url)
    client.shutdown(nosave=True)
    client.close()
    try:
        device = unique_id("outage")
        record = produce_telemetry(stack, device, {"temperature": 42.0})
        # InfluxDB and PostgreSQL keep up while Redis is down.
        wait_until(lambda: influx_points(stack, device), what="InfluxDB during the Redis outage")
        wait_until(lambda: device_row(stack, device), what="PostgreSQL during the Redis outage")
    finally:
        assert local_stack.up(stack, only={"redis"}) == 0
    # Redis catches up once it is back.
    latest = wait_until(lambda: redis_latest(stack, device), timeout=60, what="Redis catch-up")
    assert latest["temperature"] == "42.0"
    assert latest["ts"] == iso_utc(record.ts)
    assert worker.poll() is None


def test_device_profile_rejects_out_of_range_metric_only(
    worker: WorkerProcess, stack: Settings
) -> None:
    import psycopg

    device = unique_id("prof")
    profile = unique_id("profile")
    with psycopg.connect(stack.pg_conninfo, autocommit=True) as conn:
        conn.execute("INSERT INTO device_profiles (id, name, metrics) VALUES (%s, %s, %s)",
                     (profile, "boiler", '{"temperature": {"unit": "°C", "min": -40, "max": 125}}'))
        conn.execute("INSERT INTO devices (id, protocol, profile_id) VALUES (%s, 'mqtt', %s)",
                     (device, profile))
    time.sleep(stack.profile_refresh_s + 1)  # the agent refreshes profiles on a timer
    record = produce_telemetry(stack, device, {"temperature": 150.0, "pressure": 2.5})
    latest = wait_until(lambda: redis_latest(stack, device), what="the in-range metric in Redis")
    assert latest["pressure"] == "2.5"
    assert "temperature" not in latest
    letters = wait_until(lambda: dead_letters_for(stack, record.message_id.encode(), timeout=3),
                         timeout=30, what="dead letter for the out-of-range metric")
    assert letters[0].reason == "out of profile range: temperature 150.0 is above the maximum 125.0"
    assert letters[0].device_id == device


def test_duplicate_message_id_is_suppressed(worker: WorkerProcess, stack: Settings) -> None:
    device = unique_id("dedup")
    ts = utcnow()
    produce_telemetry(stack, device, {"level": 1.0}, ts=ts, message_id=f"{device}-x")
    wait_until(lambda: redis_latest(stack, device), what="first reading")
    # The same message id again, even with other content and a newer time, is a duplicate.
    produce_telemetry(stack, device, {"level": 2.0}, ts=ts + timedelta(seconds=1), message_id=f"{device}-x")
    produce_telemetry(stack, device, {"marker": 1.0}, ts=ts + timedelta(seconds=2))
    wait_until(lambda: "marker" in redis_latest(stack, device), what="the reading after the duplicate")
    assert redis_latest(stack, device)["level"] == "1.0"
    assert {p["value"] for p in influx_points(stack, device) if p["field"] == "level"} == {1.0}
