"""The API's Kafka producer for device ingest: await Kafka's ack, or fail fast.

An HTTP or WebSocket device is told its readings were accepted only after
Kafka acknowledged every record (``acks=all``, idempotent producer). When Kafka
is away the device must hear so quickly (``503``) and retry, not hang:

- the producer's broker state is watched (librdkafka statistics every second
  and its "all brokers down" error); while no broker is up, :meth:`send` fails
  at once, except for one probe request per ``probe_interval_s`` so that a
  missed "up again" can never keep the endpoint closed;
- a send waits at most ``ack_timeout_s`` for its delivery reports, and stops
  waiting the moment the brokers are seen going down.

A record given up on may still reach Kafka later. That is harmless: the device
retries with the same ``Idempotency-Key``, the reading keeps its ``message_id``
and the sinks are idempotent on it. A fatal producer error (possible with
idempotence) replaces the producer on the next send.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from pipeline.producer import Outgoing, partition_count, producer_config

__all__ = ["IngestProducer", "KafkaUnavailable"]

log = logging.getLogger(__name__)


class KafkaUnavailable(Exception):
    """Kafka did not acknowledge the records in time (or is known to be down)."""


class IngestProducer:
    """An idempotent producer whose :meth:`send` returns only once Kafka acked every record.

    Call :meth:`start` on the event loop that will call :meth:`send` (the API's
    lifespan does), and :meth:`close` at shutdown.
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        client_id: str = "webscada-api-ingest",
        ack_timeout_s: float = 1.0,
        message_timeout_ms: int = 5000,
        max_queued: int = 20_000,
        probe_interval_s: float = 1.0,
        config: dict[str, Any] | None = None,
    ) -> None:
        self._config: dict[str, Any] = {
            **producer_config(bootstrap, client_id=client_id, linger_ms=1),
            # A record nobody waits for any more must not sit in memory for minutes.
            "message.timeout.ms": message_timeout_ms,
            "queue.buffering.max.messages": max_queued,
            "statistics.interval.ms": 1000,
            "reconnect.backoff.max.ms": 2000,
            "stats_cb": self._on_stats,
            "error_cb": self._on_error,
            "logger": logging.getLogger("librdkafka.ingest"),
            **(config or {}),
        }
        self.ack_timeout_s = ack_timeout_s
        self._probe_interval_s = probe_interval_s
        self._producer: Producer | None = None
        self._poller: threading.Thread | None = None
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._down = asyncio.Event()
        self._fatal = False
        self._last_probe = 0.0
        self._partitions: dict[str, int] = {}

    @property
    def available(self) -> bool:
        """False while the producer sees no broker up."""
        return not self._down.is_set()

    def start(self) -> None:
        """Create the librdkafka producer (it connects in the background) and its poll thread."""
        if self._producer is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._producer = Producer(self._config)
        self._stop.clear()
        self._poller = threading.Thread(target=self._poll_loop, args=(self._producer,),
                                        name="ingest-kafka-poll", daemon=True)
        self._poller.start()

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (up to ``timeout`` s) and stop."""
        producer, self._producer = self._producer, None
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=2)
            self._poller = None
        if producer is not None:
            left = producer.flush(timeout)
            if left:
                log.warning("ingest producer closed with %d records undelivered", left)

    async def partitions(self, topic: str) -> int:
        """How many partitions ``topic`` has: asked once (within ``ack_timeout_s``), then
        remembered. Raises :class:`KafkaUnavailable` when Kafka does not say in time."""
        known = self._partitions.get(topic)
        if known is not None:
            return known
        producer = self._current()
        try:
            count = await asyncio.to_thread(partition_count, producer, topic,
                                            timeout_s=self.ack_timeout_s)
        except KafkaException as exc:
            raise KafkaUnavailable(f"Kafka did not tell the partitions of {topic}: {exc}") from exc
        self._partitions[topic] = count
        return count

    async def send(self, records: Sequence[Outgoing]) -> None:
        """Produce ``records``; return once Kafka acknowledged all of them.

        Raises :class:`KafkaUnavailable` when the brokers are down, the local
        queue is full, a delivery failed or ``ack_timeout_s`` passed first.
        """
        if not records:
            return
        producer = self._current()
        if self._down.is_set():
            now = time.monotonic()
            if now - self._last_probe < self._probe_interval_s:
                raise KafkaUnavailable("no Kafka broker is reachable")
            self._last_probe = now  # let this one through: it finds out whether Kafka is back
        loop = asyncio.get_running_loop()
        reports: list[asyncio.Future[str | None]] = []
        for record in records:
            report: asyncio.Future[str | None] = loop.create_future()
            try:
                producer.produce(record.topic, record.value, record.key,
                                 partition=record.partition,
                                 on_delivery=self._reporter(loop, report))
            except BufferError as exc:
                raise KafkaUnavailable("the producer's queue is full") from exc
            except KafkaException as exc:
                raise KafkaUnavailable(f"Kafka refused the record: {exc}") from exc
            reports.append(report)
        delivered: asyncio.Future[list[str | None]] = asyncio.gather(*reports)
        went_down: asyncio.Future[Any] = asyncio.ensure_future(self._down.wait())
        waiters: set[asyncio.Future[Any]] = {delivered, went_down}
        try:
            await asyncio.wait(waiters, timeout=self.ack_timeout_s,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            went_down.cancel()
        if not delivered.done():
            delivered.cancel()
            why = "the Kafka brokers went down" if self._down.is_set() else (
                f"Kafka did not acknowledge within {self.ack_timeout_s:g} s")
            raise KafkaUnavailable(why)
        errors = [error for error in delivered.result() if error is not None]
        if errors:
            raise KafkaUnavailable(f"Kafka did not take {len(errors)} record(s): {errors[0]}")
        self._mark(down=False)

    # librdkafka callbacks (poll thread)

    @staticmethod
    def _reporter(loop: asyncio.AbstractEventLoop, report: asyncio.Future[str | None]) -> Any:
        def settle(error: str | None) -> None:
            if not report.done():
                report.set_result(error)

        def on_delivery(error: KafkaError | None, message: Message) -> None:
            loop.call_soon_threadsafe(settle, None if error is None else error.str())

        return on_delivery

    def _on_stats(self, text: str) -> None:
        try:
            brokers = json.loads(text).get("brokers", {})
        except ValueError:
            return
        self._mark_threadsafe(down=not any(b.get("state") == "UP" for b in brokers.values()))

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            log.error("ingest producer fatal error (replacing the producer): %s", error.str())
            self._fatal = True
        elif error.code() == KafkaError._ALL_BROKERS_DOWN:
            log.warning("ingest producer: all Kafka brokers are down")
            self._mark_threadsafe(down=True)

    def _mark_threadsafe(self, *, down: bool) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._mark, down)
            except RuntimeError:  # the loop closed meanwhile (shutdown)
                pass

    def _mark(self, down: bool) -> None:
        if down:
            self._down.set()
        else:
            self._down.clear()

    def _poll_loop(self, producer: Producer) -> None:
        while not self._stop.is_set() and self._producer is producer:
            try:
                producer.poll(0.1)
            except KafkaException:
                log.exception("ingest producer poll failed")

    def _current(self) -> Producer:
        if self._producer is None:
            self.start()
        elif self._fatal:
            old, self._producer, self._fatal = self._producer, None, False
            threading.Thread(target=old.flush, args=(1.0,), daemon=True).start()
            self.start()
        assert self._producer is not None
        return self._producer
