"""The one Kafka producer path every connector shares.

A thin wrapper over confluent-kafka's ``Producer`` with the project's producer
configuration (:func:`pipeline.producer.producer_config`: ``acks=all``,
idempotence, a small linger, lz4), a background thread serving delivery
callbacks, and backpressure instead of loss when librdkafka's queue is full.

Readings go through its :class:`~connectors.buffer.ReadingBuffer`
(:meth:`RecordProducer.send_reading`): many to a ``TelemetryBatch`` record per
partition. Dead letters and system events stay single records.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from connectors.buffer import ReadingBuffer
from connectors.delivery import Delivery, DeliveryCallback
from connectors.errors import ProduceError, ProducerClosedError
from connectors.metrics import DELIVERY_FAILURES, PRODUCER_BACKPRESSURE, RECORDS_PRODUCED
from connectors.reading import ReadingRow
from pipeline.producer import partition_count, producer_config
from pipeline.settings import Settings, Topics
from schemas.records import DeadLetter, SystemEvent, Telemetry

__all__ = ["Delivery", "DeliveryCallback", "RecordProducer"]

logger = logging.getLogger(__name__)


class RecordProducer:
    """Produces encoded records to Kafka for one connector.

    Nothing happens until :meth:`start`; use it as a context manager or call
    :meth:`start` and :meth:`close`. Delivery callbacks run on the producer's
    poll thread (or, under backpressure, on the thread calling :meth:`produce`):
    keep them short and never call :meth:`produce` from one.
    """

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        connector: str,
        client_id: str | None = None,
        linger_ms: int = 5,
        batch_linger_ms: float = 20,
        batch_max_readings: int = 1000,
        raw_partitions: int | None = None,
        poll_interval_s: float = 0.1,
        config: Mapping[str, Any] | None = None,
        client: Producer | None = None,
    ) -> None:
        """``linger_ms`` is librdkafka's (records of one flush share a request);
        ``batch_linger_ms`` how long readings gather into a batch record. ``config``
        adds or overrides librdkafka settings; ``client`` replaces the
        confluent-kafka producer this would build and ``raw_partitions`` the
        partition count of telemetry.raw it would ask the cluster for (tests)."""
        self.connector = connector
        self._config: dict[str, Any] = {
            **producer_config(
                bootstrap_servers,
                client_id=client_id or f"webscada-connector-{connector}",
                linger_ms=linger_ms,
            ),
            "error_cb": self._on_error,
            "logger": logging.getLogger("librdkafka"),
            **(config or {}),
        }
        self._poll_interval_s = poll_interval_s
        self._client = client
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._fatal_error: str | None = None
        self.readings = ReadingBuffer(self, topic=Topics.RAW, partitions=raw_partitions,
                                      linger_ms=batch_linger_ms, max_readings=batch_max_readings)

    @classmethod
    def from_settings(cls, settings: Settings, *, connector: str, **options: Any) -> RecordProducer:
        """A producer for ``connector`` talking to ``settings.kafka_bootstrap``."""
        options.setdefault("batch_linger_ms", settings.connector_linger_ms)
        return cls(bootstrap_servers=settings.kafka_bootstrap, connector=connector, **options)

    @property
    def fatal_error(self) -> str | None:
        """Set once librdkafka reports a fatal error; the producer is then unusable."""
        return self._fatal_error

    def start(self) -> RecordProducer:
        """Create the librdkafka producer (it connects lazily) and the poll thread."""
        if self._closing.is_set():
            raise ProducerClosedError("producer is closed")
        if self._thread is None:
            if self._client is None:
                self._client = Producer(self._config)
            self._thread = threading.Thread(
                target=self._poll_loop, name=f"kafka-poll-{self.connector}", daemon=True
            )
            self._thread.start()
            self.readings.start()
        return self

    def __enter__(self) -> RecordProducer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def produce(
        self,
        topic: str,
        key: str | bytes | None,
        value: bytes,
        on_delivery: DeliveryCallback | None = None,
        *,
        partition: int = -1,
    ) -> None:
        """Queue one record; ``on_delivery`` learns whether Kafka acknowledged it.

        ``partition`` -1 lets Kafka's partitioner pick by key. When librdkafka's
        local queue is full this waits (serving delivery reports) until there is
        room: the caller slows down, nothing is dropped. Raises
        :class:`ProduceError` when Kafka refuses the record outright.
        """
        client = self._started()
        report = self._reporter(topic, on_delivery)
        waited = False
        while True:
            try:
                client.produce(topic, value=value, key=key, on_delivery=report,
                               partition=partition)
                return
            except BufferError:
                if self._closing.is_set():
                    raise ProducerClosedError(
                        f"producer closed while waiting to send to {topic}"
                    ) from None
                if not waited:
                    PRODUCER_BACKPRESSURE.labels(self.connector).inc()
                    waited = True
                client.poll(self._poll_interval_s)
            except KafkaException as exc:
                raise ProduceError(f"Kafka refused a record for {topic}: {exc}") from exc

    def send_reading(self, row: ReadingRow, on_delivery: DeliveryCallback | None = None) -> None:
        """A reading to ``telemetry.raw``, in the batch record of its device's partition.

        ``on_delivery`` learns what Kafka said of that batch. May wait (once per
        process) until Kafka told the partition count of ``telemetry.raw``.
        """
        self.readings.add(row, on_delivery)

    def send_telemetry(self, telemetry: Telemetry, on_delivery: DeliveryCallback | None = None) -> None:
        """A checked reading to ``telemetry.raw``, as :meth:`send_reading`."""
        self.readings.add(ReadingRow.of(telemetry), on_delivery)

    def partition_count(self, topic: str) -> int:
        """How many partitions ``topic`` has (asks the cluster; waits up to 10 s)."""
        return partition_count(self._started(), topic)

    def send_dead_letter(
        self, dead_letter: DeadLetter, on_delivery: DeliveryCallback | None = None
    ) -> None:
        """A rejected input to ``telemetry.dlq``, keyed by its device id when known."""
        self.produce(Topics.DLQ, dead_letter.device_id, dead_letter.encode(), on_delivery)

    def send_system_event(
        self, event: SystemEvent, on_delivery: DeliveryCallback | None = None
    ) -> None:
        """A lifecycle event to ``system``, keyed by its device id or null."""
        self.produce(Topics.SYSTEM, event.device_id, event.encode(), on_delivery)

    def flush(self, timeout: float = 10.0) -> int:
        """Send the gathered readings, then wait up to ``timeout`` s for every queued
        record; returns how many are left."""
        if self._client is None:
            return 0
        self.readings.flush()
        return self._client.flush(timeout)

    def close(self, timeout: float = 10.0) -> int:
        """Flush, then stop the poll thread; returns the records left undelivered."""
        if self._closing.is_set():
            return 0
        self.readings.close()
        left = self.flush(timeout)
        self._closing.set()
        if self._thread is not None:
            self._thread.join()
        if left:
            logger.warning("%s producer closed with %d records undelivered", self.connector, left)
        return left

    def _started(self) -> Producer:
        if self._closing.is_set():
            raise ProducerClosedError("producer is closed")
        if self._client is None or self._thread is None:
            raise ProducerClosedError("producer is not started; call start() first")
        return self._client

    def _poll_loop(self) -> None:
        client = self._client
        assert client is not None
        while not self._closing.is_set():
            try:
                client.poll(self._poll_interval_s)
            except KafkaException:
                # An error surfaced by poll must not end delivery reporting for good.
                logger.exception("%s producer poll failed", self.connector)

    def _reporter(
        self, topic: str, on_delivery: DeliveryCallback | None
    ) -> Callable[[KafkaError | None, Message], None]:
        def report(error: KafkaError | None, message: Message) -> None:
            if error is None:
                RECORDS_PRODUCED.labels(self.connector, topic).inc()
                delivery = Delivery(topic, message.partition(), message.offset())
            else:
                DELIVERY_FAILURES.labels(self.connector, topic).inc()
                logger.warning("%s record for %s not delivered: %s",
                               self.connector, topic, error.str())
                delivery = Delivery(topic, message.partition(), None, error.str(),
                                    error.retriable(), error.fatal())
            if on_delivery is None:
                return
            try:
                on_delivery(delivery)
            except Exception:
                # Raised into librdkafka's poll it would be lost along with later reports.
                logger.exception("%s delivery callback for %s failed", self.connector, topic)

        return report

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self._fatal_error = error.str()
            logger.error("%s producer fatal error: %s", self.connector, error.str())
        else:
            logger.warning("%s producer: %s", self.connector, error.str())
