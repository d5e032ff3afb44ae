"""An asyncio face on confluent-kafka's idempotent producer, for the agents.

Faust's own producer enables idempotence only inside transactions; agents
publish through this one instead, await every delivery report, and only then
let Faust acknowledge (and later commit) the input events.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException, Message, Producer

__all__ = ["AsyncProducer", "Outgoing", "producer_config"]

log = logging.getLogger(__name__)


def producer_config(bootstrap: str, *, client_id: str, linger_ms: int = 5) -> dict[str, object]:
    """The configuration every producer of the project uses (DESIGN section 3)."""
    return {
        "bootstrap.servers": bootstrap,
        "client.id": client_id,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": linger_ms,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 200_000,
        "message.timeout.ms": 120_000,
    }


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    key: bytes | None
    value: bytes


class AsyncProducer:
    """Produce records and await Kafka's acknowledgement of each batch."""

    def __init__(self, bootstrap: str, *, client_id: str) -> None:
        self._config = producer_config(bootstrap, client_id=client_id)
        self._producer: Producer | None = None
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    def start(self) -> None:
        if self._producer is not None:
            return
        self._producer = Producer(self._config)
        self._stop.clear()
        self._poller = threading.Thread(target=self._poll_loop, name="producer-poll", daemon=True)
        self._poller.start()

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
