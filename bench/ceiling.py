"""The raw Kafka rate of this machine, measured in the same run as the pipeline.

confluent-kafka straight through the local broker, with the producer
configuration every project producer uses (:func:`pipeline.producer.producer_config`:
acks=all, idempotence, linger, lz4), on a dedicated 6-partition topic created
for the run and deleted afterwards. Pre-encoded records are produced while a
consumer on a thread of this process reads them concurrently; the rate is
records over the time from the first produce to the last record consumed.
The consumer is assigned every partition from the beginning (no group
rebalance to wait for) and has read a primer record before the clock starts,
so the figure is the data path alone.

- ``single``: one reading per record (the project's ``Telemetry`` record,
  keyed by device): what a pipeline carrying single readings could at most
  move, and the denominator of the bench's "share of raw Kafka".
- ``batched``: the same readings as ``TelemetryBatch`` records of the size a
  connector forms (see :mod:`bench.drain`), in readings per second.

CPU is this process's (all threads, librdkafka's included) and, separately, the broker's.

    .venv/bin/python -m bench.ceiling [--quick]
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from bench.common import cpu_seconds, wait_for
from bench.readings import drain_batches, single_records
from infra.services import Kafka
from pipeline.producer import producer_config
from pipeline.settings import Settings
from schemas.batch import to_micros

__all__ = ["run"]

PARTITIONS = 6
_DEVICES = 1000


@dataclass
class _Reader:
    """Consumes ``expected`` records of a topic on a thread; notes when the last arrived."""

    bootstrap: str
    topic: str
    expected: int
    timeout_s: float = 60.0
    count: int = 0
    errors: int = 0
    last_at: float = 0.0

    def __post_init__(self) -> None:
        self._consumer = Consumer({
            "bootstrap.servers": self.bootstrap,
            "group.id": f"bench-ceiling-{uuid.uuid4().hex[:12]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        })
        self._consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING)
                               for p in range(PARTITIONS)])
        self._thread = threading.Thread(target=self._loop, name="bench-reader", daemon=True)

    def start(self) -> _Reader:
        self._thread.start()
        return self

    def _loop(self) -> None:
        deadline = time.perf_counter() + self.timeout_s
        try:
            while self.count < self.expected and time.perf_counter() < deadline:
                for msg in self._consumer.consume(num_messages=10_000, timeout=0.2):
                    err = msg.error()
                    if err is not None:
                        if err.code() != KafkaError._PARTITION_EOF:
                            self.errors += 1
                        continue
                    self.count += 1
                    self.last_at = time.perf_counter()
        finally:
            self._consumer.close()

    def join(self) -> None:
        self._thread.join()


def _create_topic(admin: AdminClient, topic: str) -> None:
    for future in admin.create_topics([NewTopic(topic, PARTITIONS, 1)]).values():
        future.result(timeout=30)


def _delete_topic(admin: AdminClient, topic: str) -> None:
    for future in admin.delete_topics([topic]).values():
        future.result(timeout=30)


def _produce(settings: Settings, topic: str,
             records: list[tuple[bytes | None, bytes, int]]) -> tuple[float, int]:
    """Produce ``records`` and wait for every acknowledgement: (wall seconds, failures)."""
    producer = Producer(producer_config(settings.kafka_bootstrap, client_id="bench-ceiling"))
    failed = 0

    def on_delivery(err: KafkaError | None, _msg: object) -> None:
        nonlocal failed
        if err is not None:
            failed += 1

    start = time.perf_counter()
    for n, (key, value, partition) in enumerate(records):
        while True:
            try:
                producer.produce(topic, value, key, partition=partition, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        if n % 1000 == 0:
            producer.poll(0)
    left = producer.flush(60)
    return time.perf_counter() - start, failed + left


def _rate(count: int, seconds: float) -> float:
    return round(count / seconds) if seconds > 0 else 0.0


def _produce_consume(settings: Settings, topic: str, records: list[tuple[bytes | None, bytes, int]],
                     readings: int) -> dict[str, Any]:
    """Produce ``records`` (key, value, partition or -1) while a consumer reads them back."""
    broker = Kafka(settings).pid()
    broker_cpu0 = cpu_seconds(broker) if broker else 0.0
    # The consumer first reads one primer record: its start-up (metadata, offsets: ~0.6 s
    # here) would otherwise count as transfer time.
    reader = _Reader(settings.kafka_bootstrap, topic, len(records) + 1).start()
    _produce(settings, topic, records[:1])
    if not wait_for(lambda: reader.count >= 1, 30, interval=0.01):
        raise RuntimeError("the ceiling's consumer did not read the primer record within 30 s")
    cpu0 = time.process_time()
    start = time.perf_counter()
    produce_s, failed = _produce(settings, topic, records)
    reader.join()
    reader.count -= 1
    seconds = reader.last_at - start
    cpu = time.process_time() - cpu0
    broker_cpu = cpu_seconds(broker) - broker_cpu0 if broker else None
    return {
        "records": len(records), "readings": readings, "failed": failed, "consumed": reader.count,
        "bytes_per_record": round(sum(len(value) for _, value, _ in records) / len(records)),
        "produce_seconds": round(produce_s, 3), "produce_consume_seconds": round(seconds, 3),
        "records_per_s": _rate(reader.count, seconds),
        "readings_per_s": _rate(readings if reader.count == len(records) else 0, seconds),
        "client_cpu_seconds": round(cpu, 3),
        "broker_cpu_seconds": round(broker_cpu, 3) if broker_cpu is not None else None,
    }


def run(settings: Settings, *, quick: bool = False, batch_readings: int = 33) -> dict[str, Any]:
    """Raw confluent-kafka produce + consume, single readings and batches, on throwaway topics."""
    n = 50_000 if quick else 200_000
    run_id = uuid.uuid4().hex[:8]
    start_us = to_micros(datetime.now(UTC)) - 3_600_000_000
    devices = [f"bench-ceiling-{run_id}-{d:04d}" for d in range(_DEVICES)]
    single: list[tuple[bytes | None, bytes, int]] = [
        (key, value, -1) for key, value in single_records(devices, n // _DEVICES, start_us=start_us)]
    batches = drain_batches(devices, n // _DEVICES,
                            start_us=start_us, step_us=10_000, batch_readings=batch_readings,
                            partitions=PARTITIONS)
    batched: list[tuple[bytes | None, bytes, int]] = [(None, value, p) for p, value in batches]
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    out: dict[str, Any] = {}
    for name, records in (("single", single), ("batched", batched)):
        topic = f"bench.ceiling.{run_id}.{name}"
        _create_topic(admin, topic)
        try:
            out[name] = figures = _produce_consume(settings, topic, records, len(single))
        finally:
            _delete_topic(admin, topic)
        print(f"raw Kafka, {name}: {figures['records']:,} records of {figures['bytes_per_record']} "
              f"bytes ({figures['readings']:,} readings) produced in {figures['produce_seconds']:.2f} s, "
              f"produced and consumed in {figures['produce_consume_seconds']:.2f} s: "
              f"{figures['records_per_s']:,.0f} records/s, "
              f"{figures['readings_per_s']:,.0f} readings/s (CPU {figures['client_cpu_seconds']:.2f} s "
              f"client, {figures['broker_cpu_seconds']} s broker)", flush=True)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Raw Kafka rate of this machine.")
    parser.add_argument("--quick", action="store_true", help="fewer records (50,000)")
    args = parser.parse_args()
    print(json.dumps(run(Settings(), quick=args.quick), indent=2))
