"""The reading buffer: readings of a partition gathered into one TelemetryBatch record.

Kafka is the in-memory fake; what a test checks is what a consumer would see:
the records on telemetry.raw, their partitions, and the readings they decode to.
"""

from __future__ import annotations

import time
from typing import cast

import pytest
from confluent_kafka import KafkaError, Producer

from connectors.buffer import MAX_RECORD_BYTES
from connectors.delivery import Delivery
from connectors.errors import ProducerClosedError
from connectors.producer import RecordProducer
from connectors.reading import ReadingRow
from pipeline.producer import partition_for
from schemas.batch import decode_batch
from tests.conftest import wait_until
from tests.unit.fakes import FakeKafka

T0 = 1_714_564_800_000_000  # µs


def row(device_id: str, seq: int, **changes: object) -> ReadingRow:
    reading = ReadingRow(device_id, "mqtt", T0 + seq, T0 + seq, f"{device_id}-{seq}", None,
                         {"seq": float(seq)}, None, {}, None, {})
    return reading._replace(**changes)


def producer(kafka: FakeKafka, *, linger_ms: float = 60_000, max_readings: int = 1000,
             partitions: int | None = 6) -> RecordProducer:
    """A started producer whose buffer lingers a minute unless told otherwise."""
    return RecordProducer(bootstrap_servers="127.0.0.1:1", connector="unit", poll_interval_s=0.01,
                          batch_linger_ms=linger_ms, batch_max_readings=max_readings,
                          raw_partitions=partitions, client=cast(Producer, kafka)).start()


def batches(kafka: FakeKafka) -> list[tuple[int, list[str]]]:
    """(partition, message ids) of every record on telemetry.raw, in produce order."""
    out = []
    for record in kafka.records:
        assert record.topic == "telemetry.raw" and record.key is None
        out.append((record.partition, decode_batch(record.value).message_id))
    return out


DEVICES = ["pump-1", "pump-2", "valve-7", "tank-3", "meter-9"]


def test_readings_are_grouped_by_partition_in_the_order_added() -> None:
    kafka = FakeKafka()
    with producer(kafka) as buffered:
        for seq in range(3):
            for device in DEVICES:
                buffered.send_reading(row(device, seq))
        assert kafka.records == []  # still lingering
        buffered.readings.flush()
        got = batches(kafka)
    expected: dict[int, list[str]] = {}
    for seq in range(3):
        for device in DEVICES:
            expected.setdefault(partition_for(device, 6), []).append(f"{device}-{seq}")
    assert dict(got) == expected
    assert len(got) == len(expected)  # one record per partition


def test_each_reading_hears_of_its_batch_once() -> None:
    kafka = FakeKafka()
    heard: list[tuple[str, Delivery]] = []
    with producer(kafka) as buffered:
        for seq in range(2):
            for device in ("pump-1", "valve-7"):
                reading = row(device, seq)
                buffered.send_reading(reading, lambda d, r=reading: heard.append((r.message_id, d)))
        buffered.readings.flush()
        for index in range(len(kafka.records)):
            kafka.deliver(index)
    assert sorted(m for m, _ in heard) == ["pump-1-0", "pump-1-1", "valve-7-0", "valve-7-1"]
    assert all(d.ok and d.topic == "telemetry.raw" for _, d in heard)
    assert {d.partition for m, d in heard if m.startswith("pump-1")} == {partition_for("pump-1", 6)}


def test_a_failed_batch_is_reported_to_every_reading_in_it() -> None:
    kafka = FakeKafka()
    heard: list[Delivery] = []
    with producer(kafka) as buffered:
        for seq in range(3):
            buffered.send_reading(row("pump-1", seq), heard.append)
        buffered.readings.flush()
        kafka.deliver(0, KafkaError(KafkaError._MSG_TIMED_OUT, "Local: Message timed out",
                                    retriable=True))
    assert [(d.ok, d.error, d.retriable) for d in heard] == [
        (False, "Local: Message timed out", True)] * 3


def test_a_batch_goes_when_its_first_reading_lingered() -> None:
    kafka = FakeKafka()
    with producer(kafka, linger_ms=50) as buffered:
        started = time.monotonic()
        buffered.send_reading(row("pump-1", 0))
        buffered.send_reading(row("pump-1", 1))
        wait_until(lambda: kafka.records, timeout=5, interval=0.005, what="the lingering batch")
        waited = time.monotonic() - started
        assert batches(kafka) == [(partition_for("pump-1", 6), ["pump-1-0", "pump-1-1"])]
        buffered.send_reading(row("pump-1", 2))  # starts a new batch, with its own linger
        wait_until(lambda: len(kafka.records) == 2, timeout=5, interval=0.005, what="second batch")
    assert 0.04 <= waited < 2


def test_a_full_batch_goes_at_once() -> None:
    kafka = FakeKafka()
    with producer(kafka, max_readings=3) as buffered:
        for seq in range(7):
            buffered.send_reading(row("pump-1", seq))
        assert [ids for _, ids in batches(kafka)] == [
            ["pump-1-0", "pump-1-1", "pump-1-2"], ["pump-1-3", "pump-1-4", "pump-1-5"]]
        buffered.readings.flush()
        assert [ids for _, ids in batches(kafka)][-1] == ["pump-1-6"]


def test_big_readings_fill_a_batch_by_size() -> None:
    kafka = FakeKafka()
    metrics = {f"metric_{i:04d}": float(i) for i in range(2000)}  # about 40 KB each
    with producer(kafka) as buffered:
        for seq in range(15):
            buffered.send_reading(row("pump-1", seq, metrics=metrics))
        buffered.readings.flush()
    sizes = [len(decode_batch(r.value)) for r in kafka.records]
    assert sum(sizes) == 15 and len(sizes) >= 2
    assert all(len(r.value) <= MAX_RECORD_BYTES for r in kafka.records)


def test_a_reading_that_cannot_be_encoded_is_refused_alone() -> None:
    kafka = FakeKafka()
    heard: dict[str, Delivery] = {}
    with producer(kafka) as buffered:
        for seq, status in enumerate(["ok", "\ud800", "ok"]):
            reading = row("pump-1", seq, status=status)
            buffered.send_reading(reading, lambda d, r=reading: heard.update({r.message_id: d}))
        buffered.readings.flush()
        assert batches(kafka) == [(partition_for("pump-1", 6), ["pump-1-0", "pump-1-2"])]
        kafka.deliver(0)
    refused = heard["pump-1-1"]
    assert (refused.ok, refused.refused, refused.retriable) == (False, True, False)
    assert refused.error is not None and refused.error.startswith("reading cannot be encoded")
    assert heard["pump-1-0"].ok and heard["pump-1-2"].ok


def test_the_partition_count_is_asked_of_the_cluster() -> None:
    kafka = FakeKafka(partitions=3)
    with producer(kafka, partitions=None) as buffered:
        assert buffered.readings.wait_ready(5)
        assert buffered.readings.partitions == 3
        buffered.send_reading(row("valve-7", 0))
        buffered.readings.flush()
    assert [p for p, _ in batches(kafka)] == [partition_for("valve-7", 3)]


def test_close_sends_what_lingers_and_refuses_more() -> None:
    kafka = FakeKafka()
    buffered = producer(kafka)
    buffered.send_reading(row("pump-1", 0))
    buffered.close(timeout=0)
    assert [ids for _, ids in batches(kafka)] == [["pump-1-0"]]
    with pytest.raises(ProducerClosedError):
        buffered.send_reading(row("pump-1", 1))
