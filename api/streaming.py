"""The live tail: Kafka's live topics fanned out to Socket.IO rooms.

One consumer per API process, without a consumer group (every partition of
every live topic is assigned to it) and starting from the end: the browser sees
what happens from now on, the sinks are the place for history.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.errors import KafkaError

from api.metrics import INGESTED, LIVE_EVENTS, TAIL_RECORDS, TAIL_RESTARTS, TAIL_SKIPPED
from api.payloads import record_views
from api.rooms import Room, RoomError
from pipeline.settings import Topics
from schemas.batch import ReadingBatch, decode_batch, is_batch
from schemas.errors import CodecError, InvalidRecordError

__all__ = ["LIVE_TOPICS", "Emitter", "LiveEvent", "RoutingError", "TopicTail", "live_events"]

log = logging.getLogger(__name__)

LIVE_TOPICS = (Topics.VALID, Topics.ALARMS, Topics.COMMAND_STATUS, Topics.SYSTEM)

# topic -> (schema its values must have, Socket.IO event name)
_EVENTS = {
    Topics.VALID: ("io.webscada.Telemetry", "telemetry"),
    Topics.ALARMS: ("io.webscada.AlarmEvent", "alarm"),
    Topics.COMMAND_STATUS: ("io.webscada.CommandStatus", "command_status"),
    Topics.SYSTEM: ("io.webscada.SystemEvent", "system"),
}


class RoutingError(ValueError):
    """A decoded record that cannot become a live event (wrong schema, bad id)."""


@dataclass(frozen=True, slots=True)
class LiveEvent:
    """One Socket.IO event and the rooms it goes to."""

    event: str
    rooms: tuple[str, ...]
    payload: dict[str, Any]


class Emitter(Protocol):
    async def emit(self, event: str, data: Any = None, *, to: Any = None) -> None: ...

    def listened(self, rooms: Iterable[str]) -> bool:
        """Whether anyone is in one of ``rooms`` now."""
        ...


def live_events(topic: str, value: bytes,
                listened: Callable[[Iterable[str]], bool] | None = None) -> list[LiveEvent]:
    """The events a record of ``topic`` becomes: one per reading of a telemetry batch.

    ``listened``: when given, readings whose rooms nobody is in are left out (their
    JSON is never built: at thousands of readings a second, most of the tail's work).
    Raises :class:`RoutingError`, :class:`~schemas.errors.CodecError` or
    :class:`~schemas.errors.InvalidRecordError` for a record that cannot.
    """
    try:
        schema, event = _EVENTS[topic]
    except KeyError:
        raise RoutingError(f"topic {topic!r} is not a live topic") from None
    if event == "telemetry" and is_batch(value):
        return _telemetry_events(topic, decode_batch(value), listened)
    events: list[LiveEvent] = []
    for name, payload in record_views(value):
        if name != schema:
            raise RoutingError(f"{topic} carries {name}, expected {schema}")
        events.append(_live_event(event, topic, payload))
    return events


def _telemetry_events(topic: str, batch: ReadingBatch,
                      listened: Callable[[Iterable[str]], bool] | None) -> list[LiveEvent]:
    for protocol, count in Counter(batch.protocol).items():
        INGESTED.labels(protocol).inc(count)
    rooms_of: dict[tuple[str, str | None], tuple[str, ...] | None] = {}
    events: list[LiveEvent] = []
    for i, key in enumerate(zip(batch.device_id, batch.application_id, strict=True)):
        if key not in rooms_of:
            device_id, application_id = key
            try:
                rooms = [str(Room("device", device_id))]
            except RoomError as exc:
                raise RoutingError(f"{topic} record: {exc}") from exc
            if application_id:
                with contextlib.suppress(RoomError):  # an odd application id still reaches the device room
                    rooms.append(str(Room.application(application_id)))
            rooms_of[key] = tuple(rooms) if listened is None or listened(rooms) else None
        wanted = rooms_of[key]
        if wanted is not None:
            events.append(LiveEvent("telemetry", wanted, batch.json(i)))
    return events


def _live_event(event: str, topic: str, payload: dict[str, Any]) -> LiveEvent:
    device_id = payload.get("device_id")
    try:
        if event == "system":
            rooms = [Room("system")]
        elif event == "alarm":
            rooms = [Room("alarms"), Room("device", device_id)]
        else:
            rooms = [Room("device", device_id)]
    except RoomError as exc:
        raise RoutingError(f"{topic} record: {exc}") from exc
    application_id = payload.get("application_id")
    if event == "telemetry" and application_id:
        with contextlib.suppress(RoomError):  # an odd application id still reaches the device room
            rooms.append(Room.application(application_id))
    return LiveEvent(event, tuple(str(r) for r in rooms), payload)


class TopicTail:
    """Background service: consume the live topics from their end, emit each record.

    Undecodable records are logged and skipped; a lost Kafka connection is
    retried with backoff (aiokafka reconnects by itself inside a session, and a
    session that fails is replaced by a new one).
    """

    def __init__(
        self,
        *,
        bootstrap: str,
        emitter: Emitter,
        topics: tuple[str, ...] = LIVE_TOPICS,
        retry_max_s: float = 30.0,
    ) -> None:
        self._bootstrap = bootstrap
        self._emitter = emitter
        self._topics = topics
        self._retry_max_s = retry_max_s
        self._task: asyncio.Task[None] | None = None
        self._connected = False
        self._had_session = False

    @property
    def connected(self) -> bool:
        """Whether a Kafka session is currently established."""
        return self._connected

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="webscada-api-tail")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        delay = 1.0
        while True:
            try:
                await self._session()
            except KafkaError as exc:
                log.warning("live tail: Kafka error %s; reconnecting in %.0f s", exc, delay)
            except Exception:
                log.exception("live tail: unexpected error; reconnecting in %.0f s", delay)
            TAIL_RESTARTS.inc()
            # A session that got going resets the backoff; one that never did doubles it.
            delay = 1.0 if self._had_session else min(delay * 2, self._retry_max_s)
            await asyncio.sleep(delay)

    async def _session(self) -> None:
        self._had_session = False
        consumer = AIOKafkaConsumer(
            *self._topics,
            bootstrap_servers=self._bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            client_id="webscada-api-tail",
            metadata_max_age_ms=30_000,  # notice topics created after start-up soon
        )
        try:
            await consumer.start()
            self._connected = self._had_session = True
            log.info("live tail: consuming %s from %s", ", ".join(self._topics), self._bootstrap)
            while True:
                batches = await consumer.getmany(timeout_ms=1000, max_records=500)
                for messages in batches.values():
                    for message in messages:
                        await self._dispatch(message)
        finally:
            self._connected = False
            await consumer.stop()

    async def _dispatch(self, message: ConsumerRecord[bytes, bytes]) -> None:
        topic = message.topic
        TAIL_RECORDS.labels(topic).inc()
        try:
            if message.value is None:
                raise RoutingError("tombstone (null value)")
            events = live_events(topic, message.value, self._emitter.listened)
        except (CodecError, InvalidRecordError, RoutingError) as exc:
            TAIL_SKIPPED.labels(topic).inc()
            log.warning(
                "live tail: skipping %s[%d]@%d: %s", topic, message.partition, message.offset, exc
            )
            return
        for event in events:
            if event.event == "telemetry" and not is_batch(message.value):
                INGESTED.labels(str(event.payload.get("protocol"))).inc()
            try:
                await self._emitter.emit(event.event, event.payload, to=list(event.rooms))
            except Exception:
                # One failed fan-out must not stop the tail for everyone else.
                log.exception("live tail: emitting %s failed", event.event)
                continue
            LIVE_EVENTS.labels(event.event).inc()
