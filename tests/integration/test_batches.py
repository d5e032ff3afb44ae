"""TelemetryBatch records on the real Kafka: many readings per record, each stored once."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
from confluent_kafka import Producer

from pipeline.producer import partition_for, producer_config
from pipeline.settings import Settings, Topics
from schemas import Telemetry, iso_utc, utcnow
from schemas.batch import ReadingBatch, decode_batch
from tests.conftest import WorkerProcess, unique_id, wait_until
from tests.integration.helpers import dead_letters_for, device_row, influx_points, redis_latest

pytestmark = pytest.mark.integration


def _produce(settings: Settings, value: bytes, partition: int) -> None:
    producer = Producer(producer_config(settings.kafka_bootstrap, client_id="test-batches"))
    producer.produce(Topics.RAW, value, None, partition=partition)
    assert producer.flush(15) == 0, "Kafka did not acknowledge the test batch"


def test_a_batch_lands_in_every_store_and_its_poison_reading_alone_in_the_dlq(
    worker: WorkerProcess, stack: Settings
) -> None:
    prefix = unique_id("batch")
    devices = [f"{prefix}-{n}" for n in range(4)]
    t0 = utcnow() - timedelta(seconds=60)
    records = [
        Telemetry(device_id=device, protocol="mqtt", ts=t0 + timedelta(seconds=step),
                  received_at=t0, message_id=str(step), metrics={"level": float(step * 10 + n)})
        for step in range(5) for n, device in enumerate(devices)
    ]
    batch = ReadingBatch.of(records)
    poison_at = 7
    batch.metrics[poison_at] = {"level": math.nan}  # a producer that skipped the checks
    poisoned_device = batch.device_id[poison_at]
    # Every device in one record, on the first device's partition: validate regroups them.
    _produce(stack, batch.encode(), partition_for(devices[0], stack.telemetry_partitions))

    for n, device in enumerate(devices):
        expected = 5 - (device == poisoned_device)
        points = wait_until(lambda d=device, e=expected: len(influx_points(stack, d)) == e
                            and influx_points(stack, d), timeout=30, what=f"{device} in InfluxDB")
        assert sorted(p["value"] for p in points) == [
            float(step * 10 + n) for step in range(5)
            if not (device == poisoned_device and step * len(devices) + n == poison_at)]
        newest = t0 + timedelta(seconds=4)
        latest = wait_until(lambda d=device: redis_latest(stack, d), what=f"{device} in Redis")
        assert latest["ts"] == iso_utc(newest)
        assert latest["level"] == repr(float(40 + n))
        row = wait_until(lambda d=device: device_row(stack, d), what=f"{device} in PostgreSQL")
        assert (row["last_seen"], row["last_message_id"]) == (newest, "4")

    [letter] = wait_until(lambda: dead_letters_for(stack, poisoned_device.encode()),
                          what="the poison reading's dead letter")
    assert letter.reason == "metric level is not finite: nan"
    assert letter.stage == "agent.validate"
    assert letter.details["batch_index"] == str(poison_at)
    alone = decode_batch(letter.payload)
    assert (len(alone), alone.device_id[0], alone.message_id[0]) == (
        1, poisoned_device, batch.message_id[poison_at])


def test_kafkas_partitioner_puts_a_devices_records_where_its_batches_go(stack: Settings) -> None:
    producer = Producer(producer_config(stack.kafka_bootstrap, client_id="test-partitioner"))
    placed: dict[str, int] = {}

    def on_delivery(error: object, message: object) -> None:
        assert error is None
        placed[message.key().decode()] = message.partition()  # type: ignore[attr-defined]

    prefix = unique_id("part")
    for n in range(30):
        device = f"{prefix}-{n}"
        reading = Telemetry(device_id=device, protocol="mqtt", ts=utcnow(), received_at=utcnow(),
                            message_id="p", metrics={"x": 1.0})
        producer.produce(Topics.RAW, reading.encode(), device.encode(), on_delivery=on_delivery)
    assert producer.flush(15) == 0
    assert placed == {device: partition_for(device, stack.telemetry_partitions) for device in placed}
    assert len(set(placed.values())) > 1


def test_hardware_identifiers_are_kept_with_the_device(worker: WorkerProcess, stack: Settings) -> None:
    import psycopg

    from schemas import TelemetryMetadata

    device = unique_id("gsm")
    imei = "356938035643809"
    record = Telemetry(device_id=device, protocol="gsm", ts=utcnow(), received_at=utcnow(),
                       message_id="id-1", metrics={"level": 1.0},
                       metadata=TelemetryMetadata(extra={"imei": imei, "csq": "20"}))
    _produce(stack, ReadingBatch.of([record]).encode(), partition_for(device, stack.telemetry_partitions))

    def identifiers() -> dict[str, str] | None:
        with psycopg.connect(stack.pg_conninfo) as conn:
            row = conn.execute("SELECT identifiers FROM devices WHERE id = %s", (device,)).fetchone()
        return row[0] if row and row[0] else None

    assert wait_until(identifiers, what="the device's identifiers") == {"imei": imei}  # csq: not hardware
