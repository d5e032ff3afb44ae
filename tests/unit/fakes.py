"""In-memory stand-ins for the Kafka producer and the paho client (no services)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from confluent_kafka import KafkaError

from schemas.batch import decode_batch
from schemas.records import Telemetry


class FakeMessage:
    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self._topic, self._partition, self._offset = topic, partition, offset

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset


@dataclass
class Queued:
    topic: str
    key: str | bytes | None
    value: bytes
    on_delivery: Callable[[KafkaError | None, Any], None]
    partition: int = -1
    reported: bool = False


@dataclass
class FakeKafka:
    """Takes records; the test decides when and how each delivery is reported."""

    buffer_full: int = 0  # how many produce() calls raise BufferError first
    partitions: int = 6  # of every topic, as list_topics() tells them
    records: list[Queued] = field(default_factory=list)
    polls: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def produce(self, topic: str, value: bytes, key: str | bytes | None,
                on_delivery: Callable[[KafkaError | None, Any], None], partition: int = -1) -> None:
        with self.lock:
            if self.buffer_full:
                self.buffer_full -= 1
                raise BufferError("Local: Queue full")
            self.records.append(Queued(topic, key, value, on_delivery, partition))

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        """Every topic has ``partitions`` partitions."""
        partitions = {p: SimpleNamespace(id=p) for p in range(self.partitions)}
        meta = SimpleNamespace(partitions=partitions, error=None)
        return SimpleNamespace(topics={topic: meta})

    def poll(self, timeout: float = -1) -> int:
        self.polls += 1
        time.sleep(min(max(timeout, 0.0), 0.005))
        return 0

    def flush(self, timeout: float = -1) -> int:
        return sum(1 for r in self.records if not r.reported)

    def deliver(self, index: int, error: KafkaError | None = None) -> None:
        record = self.records[index]
        record.reported = error is None
        record.on_delivery(error, FakeMessage(record.topic, max(record.partition, 0), index))

    def deliver_all(self) -> None:
        for index, record in enumerate(list(self.records)):
            if not record.reported:
                self.deliver(index)


@dataclass
class FakeMqtt:
    """Records what the connector asks of the broker connection."""

    acks: list[tuple[int, int]] = field(default_factory=list)
    subscriptions: list[tuple[str, int]] = field(default_factory=list)
    unsubscriptions: list[str] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    suppress_exceptions: bool = False
    on_connect: Any = None
    on_disconnect: Any = None
    on_subscribe: Any = None
    on_message: Any = None
    on_unsubscribe: Any = None
    connect_options: dict[str, Any] = field(default_factory=dict)

    def ack(self, mid: int, qos: int) -> int:
        self.acks.append((mid, qos))
        return 0

    def subscribe(self, topic: str, qos: int = 0) -> tuple[int, int]:
        self.subscriptions.append((topic, qos))
        return 0, 1

    def unsubscribe(self, topic: str) -> tuple[int, int]:
        self.unsubscriptions.append(topic)
        if self.on_unsubscribe is not None:
            self.on_unsubscribe(self, None, 2, [], None)
        return 0, 2

    def enable_logger(self, logger: Any) -> None:
        self.calls.append("enable_logger")

    def reconnect_delay_set(self, min_delay: int, max_delay: int) -> None:
        self.calls.append(f"reconnect_delay_set({min_delay}, {max_delay})")

    def connect_async(self, host: str, port: int, keepalive: int, **options: Any) -> None:
        self.calls.append(f"connect_async({host}, {port}, {keepalive})")
        self.connect_options = options

    def loop_start(self) -> None:
        self.calls.append("loop_start")

    def disconnect(self) -> None:
        self.calls.append("disconnect")

    def loop_stop(self) -> None:
        self.calls.append("loop_stop")


def raw_readings(kafka: FakeKafka) -> list[Telemetry]:
    """Every reading of the batch records on telemetry.raw, in record order, decoded as any
    consumer decodes them."""
    out: list[Telemetry] = []
    for record in kafka.records:
        if record.topic == "telemetry.raw":
            batch = decode_batch(record.value)
            out += [batch.telemetry(i) for i in range(len(batch))]
    return out
