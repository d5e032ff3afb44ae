"""An asyncio face on confluent-kafka's idempotent producer, for the agents.

Faust's own producer enables idempotence only inside transactions; agents
publish through this one instead, await every delivery report, and only then
let Faust acknowledge (and later commit) the input events.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException, Message, Producer

__all__ = ["AsyncProducer", "Outgoing", "by_partition", "murmur2", "partition_count", "partition_for",
           "producer_config"]

log = logging.getLogger(__name__)


def producer_config(bootstrap: str, *, client_id: str, linger_ms: int = 5) -> dict[str, object]:
    """The configuration every producer of the project uses (docs/design.md, "Kafka topics")."""
    return {
        "bootstrap.servers": bootstrap,
        "client.id": client_id,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": linger_ms,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 200_000,
        "message.timeout.ms": 120_000,
        # Java's partitioner: a keyed record lands where partition_for() puts a batch
        # holding that device's readings, so single records and batches keep one order.
        "partitioner": "murmur2_random",
    }


def partition_count(client: Producer, topic: str, *, timeout_s: float = 10.0) -> int:
    """The number of partitions of ``topic``, from the cluster's metadata (blocking).

    Waits (up to about ``timeout_s``) for a broker to answer: readings must not be
    spread by a guessed count, or one device's readings could land in two partitions.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            found = client.list_topics(topic, timeout=max(0.5, deadline - time.monotonic()))
            meta = found.topics.get(topic)
            if meta is not None and meta.error is None and meta.partitions:
                return len(meta.partitions)
            why = f"{meta.error if meta is not None else 'no metadata'}"
        except KafkaException as exc:
            why = str(exc)
        if time.monotonic() >= deadline:
            raise KafkaException(f"cannot learn the partitions of {topic}: {why}")
        time.sleep(0.2)


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash (Java client ``Utils.murmur2``), as an unsigned 32-bit int."""
    m, mask = 0x5BD1E995, 0xFFFFFFFF
    length = len(data)
    h = (0x9747B28C ^ length) & mask
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * m) & mask
        k ^= k >> 24
        k = (k * m) & mask
        h = ((h * m) & mask) ^ k
    rest = length % 4
    if rest == 3:
        h ^= data[whole + 2] << 16
    if rest >= 2:
        h ^= data[whole + 1] << 8
    if rest >= 1:
        h ^= data[whole]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h


_PARTITION_CACHE: dict[tuple[str, int], int] = {}


def partition_for(device_id: str, partitions: int) -> int:
    """The partition of ``device_id``'s readings: Kafka's default for the key ``device_id``."""
    found = _PARTITION_CACHE.get((device_id, partitions))
    if found is None:
        found = (murmur2(device_id.encode()) & 0x7FFFFFFF) % partitions
        if len(_PARTITION_CACHE) < 1_000_000:
            _PARTITION_CACHE[(device_id, partitions)] = found
    return found


def by_partition(device_ids: Iterable[str], partitions: int) -> dict[int, list[int]]:
    """Indices of ``device_ids`` grouped by their partition, each group in input order."""
    groups: dict[int, list[int]] = {}
    for i, device_id in enumerate(device_ids):
        groups.setdefault(partition_for(device_id, partitions), []).append(i)
    return groups


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    key: bytes | None
    value: bytes
    partition: int = -1  # -1: Kafka's partitioner picks by key


class AsyncProducer:
    """Produce records and await Kafka's acknowledgement of each batch."""

    def __init__(self, bootstrap: str, *, client_id: str) -> None:
        self._config = producer_config(bootstrap, client_id=client_id)
        self._producer: Producer | None = None
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._partitions: dict[str, int] = {}

    def start(self) -> None:
        if self._producer is not None:
            return
        self._producer = Producer(self._config)
        self._stop.clear()
        self._poller = threading.Thread(target=self._poll_loop, name="producer-poll", daemon=True)
        self._poller.start()

    async def partitions(self, topic: str) -> int:
        """How many partitions ``topic`` has (asked once, then remembered)."""
        self.start()
        if topic not in self._partitions:
            assert self._producer is not None
            self._partitions[topic] = await asyncio.to_thread(partition_count, self._producer, topic)
        return self._partitions[topic]

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            assert self._producer is not None
            self._producer.poll(0.1)

    async def send_all(self, records: Iterable[Outgoing], *, retry_delay: float = 1.0) -> None:
        """Send ``records`` and return once Kafka acknowledged every one of them.

        A record whose delivery fails is sent again (with a growing delay) until
        it is acknowledged: the caller must not advance its input offset before.
        """
        self.start()
        pending = list(records)
        delay = retry_delay
        while pending:
            failed = await self._send_once(pending)
            if not failed:
                return
            log.warning("%d record(s) not acknowledged by Kafka; retrying in %.1f s",
                        len(failed), delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
            pending = failed

    async def _send_once(self, records: list[Outgoing]) -> list[Outgoing]:
        assert self._producer is not None
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        failed: list[Outgoing] = []
        # Delivery reports arrive on the poll thread; all counting happens on the loop.
        state = {"produced": 0, "reported": 0, "producing": True}

        def on_report(record: Outgoing, err: KafkaError | None) -> None:
            if err is not None:
                log.debug("delivery to %s failed: %s", record.topic, err)
                failed.append(record)
            state["reported"] += 1
            if not state["producing"] and state["reported"] == state["produced"] and not done.done():
                done.set_result(None)

        def callback(record: Outgoing):  # type: ignore[no-untyped-def]
            def on_delivery(err: KafkaError | None, _msg: Message) -> None:
                loop.call_soon_threadsafe(on_report, record, err)
            return on_delivery

        for record in records:
            while True:
                try:
                    self._producer.produce(record.topic, record.value, record.key,
                                           partition=record.partition,
                                           on_delivery=callback(record))
                    state["produced"] += 1
                    break
                except BufferError:
                    # Local queue full: let deliveries drain instead of dropping.
                    await asyncio.sleep(0.05)
                except KafkaException as exc:
                    log.warning("produce to %s failed: %s", record.topic, exc)
                    failed.append(record)
                    break
        state["producing"] = False
        if state["reported"] == state["produced"]:
            done.set_result(None)
        await done
        return failed

    def close(self, timeout: float = 10.0) -> None:
        if self._producer is None:
            return
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=2)
        self._producer.flush(timeout)
        self._producer = None
