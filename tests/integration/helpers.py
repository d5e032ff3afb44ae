"""Reading and writing the real stores from integration tests."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import psycopg
import redis
from confluent_kafka import Consumer, Producer, TopicPartition
from influxdb_client import InfluxDBClient

from pipeline.alarms import AlarmEvent
from pipeline.settings import Settings, Topics
from schemas import DeadLetter, Telemetry, TelemetryMetadata, utcnow
from schemas.batch import iso_micros
from schemas.latest import TS_MICROS

__all__ = [
    "alarm_events_keyed",
    "dead_letters_for",
    "device_row",
    "influx_points",
    "produce_raw",
    "produce_telemetry",
    "redis_latest",
]


def produce_raw(settings: Settings, topic: str, value: bytes, key: bytes | None) -> None:
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "acks": "all",
                         "enable.idempotence": True})
    producer.produce(topic, value, key)
    assert producer.flush(15) == 0, "Kafka did not acknowledge the test record"


def produce_telemetry(settings: Settings, device_id: str, metrics: dict[str, float], *,
                      ts: datetime | None = None, message_id: str | None = None,
                      metadata: TelemetryMetadata | None = None,
                      application_id: str | None = None) -> Telemetry:
    now = utcnow()
    record = Telemetry(device_id=device_id, protocol="mqtt", ts=ts or now, received_at=now,
                       message_id=message_id or f"{device_id}-{now.timestamp()}",
                       metrics=metrics, metadata=metadata or TelemetryMetadata(),
                       application_id=application_id)
    produce_raw(settings, Topics.RAW, record.encode(), device_id.encode())
    return record


def redis_latest(settings: Settings, device_id: str) -> dict[str, str]:
    """A device's latest hash without ``_ts_us``, the writers' own copy of ``ts`` in µs
    (checked here to name the same time as ``ts`` whenever the hash has one)."""
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        fields: dict[str, str] = client.hgetall(f"webscada:latest:{device_id}")  # type: ignore[assignment]
    finally:
        client.close()
    micros = fields.pop(TS_MICROS, None)
    if "ts" in fields:
        assert micros is not None and iso_micros(int(micros)) == fields["ts"], (micros, fields["ts"])
    return fields


def redis_ttl(settings: Settings, device_id: str) -> int:
    client = redis.Redis.from_url(settings.redis_url)
    try:
        return int(client.ttl(f"webscada:latest:{device_id}"))  # type: ignore[arg-type]
    finally:
        client.close()


def influx_points(settings: Settings, device_id: str, start: str = "-30d") -> list[dict[str, Any]]:
    """Every (time, field, value, tags) of device ``device_id`` in the telemetry bucket."""
    with InfluxDBClient(url=settings.influx_url, token=settings.influx_token.get_secret_value(),
                        org=settings.influx_org) as client:
        query = (
            f'from(bucket: "{settings.influx_bucket}") |> range(start: {start}) '
            f'|> filter(fn: (r) => r._measurement == "telemetry" and r.device_id == "{device_id}")'
        )
        tables = client.query_api().query(query)
        return [
            {"time": rec.get_time(), "field": rec.get_field(), "value": rec.get_value(),
             "protocol": rec.values.get("protocol"),
             "application_id": rec.values.get("application_id")}
            for table in tables for rec in table.records
        ]


def device_row(settings: Settings, device_id: str) -> dict[str, Any] | None:
    with psycopg.connect(settings.pg_conninfo) as conn:
        cur = conn.execute(
            "SELECT id, protocol, application_id, last_seen, last_message_id FROM devices WHERE id = %s",
            (device_id,),
        )
        row = cur.fetchone()
        if row is None:
            return None
        return dict(zip([c.name for c in cur.description or []], row, strict=True))


def dead_letters_for(settings: Settings, match: bytes, *, timeout: float = 20.0) -> list[DeadLetter]:
    """Dead letters whose original payload contains ``match`` (read from the start of the topic)."""
    import time

    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "unused",
                         "enable.auto.commit": False})
    metadata = consumer.list_topics(Topics.DLQ, timeout=10).topics[Topics.DLQ]
    consumer.assign([TopicPartition(Topics.DLQ, p, 0) for p in metadata.partitions])
    found: list[DeadLetter] = []
    deadline = time.monotonic() + timeout
    idle_polls = 0
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                idle_polls += 1
                if found and idle_polls > 2:
                    break
                continue
            idle_polls = 0
            if msg.error():
                continue
            value = msg.value() or b""
            if match not in value:  # the payload is inside the record's bytes: skip cheaply
                continue
            letter = DeadLetter.decode(value)
            if match in letter.payload:
                found.append(letter)
    finally:
        consumer.close()
    return found


def alarm_events_keyed(settings: Settings, keep: Callable[[bytes], bool], *,
                       timeout: float = 60.0) -> list[AlarmEvent]:
    """Every AlarmEvent on topic ``alarms`` whose key ``keep`` accepts, read from the
    beginning to the end the topic had when called (fails if the end is not reached)."""
    import time

    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "unused",
                         "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(Topics.ALARMS, timeout=10).topics[Topics.ALARMS].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(Topics.ALARMS, p), timeout=10)[1]
                for p in partitions}
        consumer.assign([TopicPartition(Topics.ALARMS, p, 0) for p in partitions])
        found: list[AlarmEvent] = []
        done = {p for p, end in ends.items() if end == 0}
        deadline = time.monotonic() + timeout
        while len(done) < len(partitions) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            if keep(msg.key() or b""):
                found.append(AlarmEvent.decode(msg.value() or b""))
            if (msg.offset() or 0) + 1 >= ends[msg.partition() or 0]:
                done.add(msg.partition() or 0)
        assert len(done) == len(partitions), "topic alarms not read to its end"
        return found
    finally:
        consumer.close()
