"""Readings gathered per partition and produced as one ``TelemetryBatch`` record each.

Every consumer after the connectors pays per Kafka record (Faust's per-event
machinery, one Avro decode) far more than per reading, so a connector sends the
readings bound for one partition of ``telemetry.raw`` during ``linger_ms`` as
one record, with that explicit partition and no key. The partition of a reading
is :func:`pipeline.producer.partition_for` of its device id (Kafka's own choice
for that key), so a device's readings stay in one partition, in the order they
were added.

A batch is sent when its partition's first reading has waited ``linger_ms``
(the flusher thread), or at once when it reaches ``max_readings`` or about
``max_bytes``. Kafka's delivery report of the batch is handed to the callback of
every reading in it.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from confluent_kafka import KafkaException

from connectors.delivery import Delivery, DeliveryCallback
from connectors.errors import ProduceError, ProducerClosedError
from connectors.metrics import READINGS_PRODUCED
from connectors.reading import ReadingRow, encode_rows
from pipeline.producer import partition_for
from pipeline.settings import Topics
from schemas.errors import MalformedRecordError

__all__ = ["MAX_RECORD_BYTES", "ReadingBuffer"]

logger = logging.getLogger(__name__)

# librdkafka refuses records over message.max.bytes (1,000,000 by default), counted
# before compression: a larger batch is split in two before it is produced.
MAX_RECORD_BYTES = 900_000


class _Producer(Protocol):
    connector: str

    def produce(self, topic: str, key: str | bytes | None, value: bytes,
                on_delivery: DeliveryCallback | None = None, *, partition: int = -1) -> None: ...

    def partition_count(self, topic: str) -> int: ...


@dataclass(slots=True)
class _Part:
    """The readings gathered for one partition, and when they are due."""

    due: float
    rows: list[ReadingRow] = field(default_factory=list)
    callbacks: list[DeliveryCallback | None] = field(default_factory=list)
    size: int = 0


class ReadingBuffer:
    """Thread-safe: any thread may :meth:`add`; one flusher thread sends what lingered.

    ``partitions`` is the partition count of ``topic``; None asks the cluster
    once, in the flusher thread, and :meth:`add` waits until it is known.
    Callbacks run on the thread that learns of the delivery (the producer's poll
    thread, or one waiting under backpressure); they must not block.
    """

    def __init__(
        self,
        producer: _Producer,
        *,
        topic: str = Topics.RAW,
        partitions: int | None = None,
        linger_ms: float = 20,
        max_readings: int = 1000,
        max_bytes: int = 512 * 1024,
    ) -> None:
        self.topic = topic
        self._producer = producer
        self._partitions = partitions
        self._linger_s = linger_ms / 1000
        self._max_readings = max_readings
        self._max_bytes = max_bytes
        self._parts: dict[int, _Part] = {}
        self._partition_of: dict[str, int] = {}  # device id -> partition, once the count is known
        self._cond = threading.Condition()
        # Held from taking batches out until they are produced, so that two threads
        # sending batches of one partition cannot swap their order. Reentrant: a
        # delivery callback run under backpressure may add readings itself.
        self._send_lock = threading.RLock()
        self._ready = threading.Event()
        if partitions is not None:
            self._ready.set()
        self._closing = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._produced = READINGS_PRODUCED.labels(producer.connector)

    @property
    def partitions(self) -> int | None:
        """The partition count of the topic, once known."""
        return self._partitions

    def start(self) -> ReadingBuffer:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"readings-{self.topic}",
                                            daemon=True)
            self._thread.start()
        return self

    def wait_ready(self, timeout: float | None = None) -> bool:
        """True once the partition count is known (within ``timeout`` s)."""
        return self._ready.wait(timeout) and self._partitions is not None

    def add(self, row: ReadingRow, on_delivery: DeliveryCallback | None = None) -> None:
        """Gather ``row`` for its partition; ``on_delivery`` learns what Kafka said of its batch.

        Raises :class:`ProducerClosedError` once closed.
        """
        # Runs once per reading: kept to the fewest calls.
        partition = self._partition_of.get(row.device_id)
        if partition is None:
            partition = self._partition(row.device_id)
        size = (64 + len(row.device_id) + len(row.message_id) + 20 * len(row.metrics)
                + 16 * len(row.meta) + 32 * len(row.extra))  # about its Avro size
        with self._cond:
            if self._closed:
                raise ProducerClosedError("reading buffer is closed")
            part = self._parts.get(partition)
            if part is None:
                part = self._parts[partition] = _Part(time.monotonic() + self._linger_s)
                if len(self._parts) == 1:
                    self._cond.notify()  # the flusher may be waiting for any reading at all
            part.rows.append(row)
            part.callbacks.append(on_delivery)
            part.size += size
            full = (len(part.rows) >= self._max_readings or part.size >= self._max_bytes
                    or self._linger_s <= 0)
        if full:
            self._send(lambda p, gathered: p == partition and self._full(gathered))

    def _partition(self, device_id: str) -> int:
        count = self._partitions
        if count is None:
            self._ready.wait()
            count = self._partitions
            if count is None:
                raise ProducerClosedError("reading buffer closed before Kafka told its partitions")
        partition = partition_for(device_id, count)
        if len(self._partition_of) < 1_000_000:
            self._partition_of[device_id] = partition
        return partition

    def flush(self) -> None:
        """Produce every gathered reading now (without waiting for Kafka's answer)."""
        self._send(lambda p, gathered: True)

    def close(self, timeout: float = 15.0) -> None:
        """Refuse further readings, produce the gathered ones and stop the flusher."""
        with self._cond:
            self._closed = True
            self._closing.set()
            self._cond.notify_all()
        self._ready.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.flush()

    def _full(self, part: _Part) -> bool:
        return (len(part.rows) >= self._max_readings or part.size >= self._max_bytes
                or self._linger_s <= 0)

    # the flusher thread

    def _run(self) -> None:
        while self._partitions is None and not self._closing.is_set():
            try:
                self._partitions = self._producer.partition_count(self.topic)
            except (KafkaException, ProduceError) as exc:
                logger.warning("%s: waiting for Kafka to tell the partitions of %s: %s",
                               self._producer.connector, self.topic, exc)
                self._closing.wait(1.0)
        self._ready.set()
        while True:
            with self._cond:
                while not self._parts and not self._closing.is_set():
                    self._cond.wait()
                if self._closing.is_set():
                    return  # close() sends what is left
                wait = min(part.due for part in self._parts.values()) - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
            self._send(functools.partial(_is_due, now=time.monotonic()))

    # producing

    def _send(self, pick: Callable[[int, _Part], bool]) -> None:
        with self._send_lock:
            with self._cond:
                chosen = [(p, part) for p, part in self._parts.items() if pick(p, part)]
                for p, _ in chosen:
                    del self._parts[p]
            for p, part in chosen:
                self._produce(p, part.rows, part.callbacks)

    def _produce(self, partition: int, rows: list[ReadingRow],
                 callbacks: list[DeliveryCallback | None]) -> None:
        try:
            value = encode_rows(rows)
        except MalformedRecordError:
            self._produce_encodable(partition, rows, callbacks)
            return
        if len(value) > MAX_RECORD_BYTES and len(rows) > 1:
            half = len(rows) // 2
            self._produce(partition, rows[:half], callbacks[:half])
            self._produce(partition, rows[half:], callbacks[half:])
            return
        report = functools.partial(self._delivered, callbacks)
        try:
            self._producer.produce(self.topic, None, value, report, partition=partition)
        except ProduceError as exc:
            logger.error("%s: %d readings not produced: %s", self._producer.connector,
                         len(rows), exc)
            _fan_out(callbacks, Delivery(self.topic, partition, None, str(exc),
                                         refused=not isinstance(exc, ProducerClosedError)))

    def _produce_encodable(self, partition: int, rows: list[ReadingRow],
                           callbacks: list[DeliveryCallback | None]) -> None:
        """A batch that did not encode: the readings that do go on, the others are refused."""
        good: list[ReadingRow] = []
        good_callbacks: list[DeliveryCallback | None] = []
        for row, callback in zip(rows, callbacks, strict=True):
            try:
                encode_rows([row])
            except MalformedRecordError as exc:
                logger.warning("%s: reading %s of %s cannot be encoded: %s",
                               self._producer.connector, row.message_id, row.device_id, exc)
                _fan_out([callback], Delivery(self.topic, partition, None,
                                              f"reading cannot be encoded: {exc}", refused=True))
            else:
                good.append(row)
                good_callbacks.append(callback)
        if good:
            self._produce(partition, good, good_callbacks)

    def _delivered(self, callbacks: list[DeliveryCallback | None], delivery: Delivery) -> None:
        if delivery.error is None:
            self._produced.inc(len(callbacks))
        _fan_out(callbacks, delivery)


def _is_due(partition: int, part: _Part, *, now: float) -> bool:
    return part.due <= now


def _fan_out(callbacks: list[DeliveryCallback | None], delivery: Delivery) -> None:
    for callback in callbacks:
        if callback is None:
            continue
        try:
            callback(delivery)
        except Exception:
            # One reading's callback failing must not keep the report from the others.
            logger.exception("delivery callback of a reading failed")
