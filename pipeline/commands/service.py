"""The command lifecycle in the worker: dispatch, status recording, device acks and expiry.

Every status change goes to Kafka first (``commands.status``, from where the API
streams it to Socket.IO) and then to PostgreSQL (a conditional UPDATE, see
:mod:`pipeline.commands.store`). Because ``sent`` reaches PostgreSQL only after
Kafka took it, a device ack is held back (for at most ``sent_wait_s``) while its
command is still ``queued`` there, so ``sent`` always precedes the device's
answer on ``commands.status``; if ``sent`` never comes (its dispatcher died after
the PUBACK), the relay records ``sent`` itself, inferred from the answer.

Restarts: a ``commands`` record is acknowledged to Kafka only after the broker's
PUBACK and after ``sent`` is in Kafka and PostgreSQL; a replayed record whose
command is already past ``queued`` is not published again. A crash between the
PUBACK and the PostgreSQL update publishes that command once more on replay;
devices deduplicate on the command ``id``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import psycopg
from faust.types import EventT
from prometheus_client import Counter
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from pipeline.agents._dead_letter import dead_letter_for
from pipeline.commands import store
from pipeline.commands.acks import AckError, parse_ack
from pipeline.commands.kafka import status_record
from pipeline.commands.lifecycle import may_advance
from pipeline.commands.link import CommandLink, Incoming
from pipeline.commands.transports import Hold, Publish, Reject, plan
from pipeline.producer import AsyncProducer, Outgoing
from pipeline.settings import Topics
from schemas import CodecError, DeadLetter, InvalidRecordError
from schemas.records import Command, CommandStatus, utcnow

__all__ = ["AckRelay", "CommandService"]

log = logging.getLogger(__name__)

T = TypeVar("T")
DISPATCHED = Counter("webscada_commands_dispatched_total",
                     "Commands handed to a transport (or failed for want of one)", ["transport"])
STATUSES = Counter("webscada_command_statuses_total",
                   "Status changes recorded by this process", ["status"])
_PG_ERRORS = (psycopg.OperationalError, psycopg.errors.AdminShutdown, PoolTimeout)


class CommandService:
    """Dispatch and status bookkeeping against one pool, producer and MQTT link."""

    def __init__(self, *, pool: AsyncConnectionPool[Any], producer: AsyncProducer,
                 link: CommandLink, expiry_kafka_timeout_s: float = 10.0) -> None:
        self.pool = pool
        self.producer = producer
        self.link = link
        self._expiry_kafka_timeout_s = expiry_kafka_timeout_s

    async def pg(self, work: Callable[[AsyncConnection[Any]], Awaitable[T]]) -> T:
        """Run ``work`` on a pooled connection, retrying with backoff while PostgreSQL is down."""
        delay = 0.5
        while True:
            try:
                async with self.pool.connection() as conn:
                    return await work(conn)
            except _PG_ERRORS as exc:
                log.warning("commands: PostgreSQL unavailable (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def record(self, statuses: Sequence[CommandStatus]) -> None:
        """Kafka first, then PostgreSQL (see the module docstring)."""
        if not statuses:
            return
        await self.producer.send_all([status_record(s) for s in statuses])
        await self.pg(lambda conn: store.apply_statuses(conn, statuses))
        for status in statuses:
            STATUSES.labels(status.status).inc()

    async def dispatch(self, events: Sequence[EventT]) -> None:
        """Hand each command of a batch to its transport; returns once all are ``sent``,
        ``failed``, or left ``queued`` for a device that fetches them itself."""
        commands: dict[str, Command] = {}
        letters: list[Outgoing] = []
        for event in events:
            try:
                command = Command.decode(event.message.value or b"")
            except (CodecError, InvalidRecordError) as exc:
                letters.append(dead_letter_for(event.message, reason=str(exc), stage="dispatcher"))
                continue
            commands.setdefault(command.id, command)  # a re-produced command: once per batch
        if letters:
            await self.producer.send_all(letters)
        if not commands:
            return
        targets = await self.pg(lambda conn: store.dispatch_targets(conn, list(commands)))
        now = utcnow()
        publish: list[tuple[Command, Publish]] = []
        failed: list[CommandStatus] = []
        held: set[str] = set()
        for command in commands.values():
            target = targets.get(command.id)
            if target is None or target.status != "queued" or target.expires_at <= now:
                # No row: its request failed. Past queued: a replay. Expired: the timer's job.
                continue
            step = plan(command, target.protocol, target.application_id)
            if isinstance(step, Publish):
                publish.append((command, step))
            elif isinstance(step, Reject):
                failed.append(CommandStatus(command.id, command.device_id, "failed",
                                            detail=step.detail))
            elif isinstance(step, Hold) and step.transport == "websocket":
                held.add(command.device_id)
        # `sent` is when the transport got the command: before the broker's PUBACK, which a
        # quick device's answer (stamped on arrival) can overtake.
        handed = utcnow()
        if publish:
            await self.link.publish_all([step for _, step in publish])
        sent = [CommandStatus(c.id, c.device_id, "sent", handed, f"{step.transport}: {step.topic}")
                for c, step in publish]
        for _, step in publish:
            DISPATCHED.labels(step.transport).inc()
        DISPATCHED.labels("none").inc(len(failed))
        await self.record(sent + failed)
        if held:
            await self.pg(lambda conn: store.notify_waiting(conn, sorted(held)))

    async def record_events(self, events: Sequence[EventT]) -> None:
        """The status recorder: apply ``commands.status`` records to PostgreSQL (idempotent)."""
        statuses: list[CommandStatus] = []
        letters: list[Outgoing] = []
        for event in events:
            try:
                statuses.append(CommandStatus.decode(event.message.value or b""))
            except (CodecError, InvalidRecordError) as exc:
                letters.append(dead_letter_for(event.message, reason=str(exc),
                                               stage="command-status"))
        if statuses:
            await self.pg(lambda conn: store.apply_statuses(conn, statuses))
        if letters:
            await self.producer.send_all(letters)

    async def expire_due(self, limit: int = 500) -> int:
        """Mark open commands past their expiry ``expired``; returns how many."""
        async def work(conn: AsyncConnection[Any]) -> int:
            async with conn.transaction():
                due = await store.due_for_expiry(conn, utcnow(), limit)
                if not due:
                    return 0
                statuses = [CommandStatus(cid, device, "expired",
                                          detail="no final status before the command's TTL")
                            for cid, device in due]
                # The rows stay locked until Kafka took the records; a timeout rolls back
                # and the next tick tries again.
                await asyncio.wait_for(self.producer.send_all([status_record(s) for s in statuses]),
                                       self._expiry_kafka_timeout_s)
                await store.apply_statuses(conn, statuses)
                return len(statuses)
        try:
            return await self.pg(work)
        except TimeoutError:
            log.warning("commands: Kafka did not take expiry statuses; retrying on the next tick")
            return 0


class AckRelay:
    """Device acks from MQTT (see :mod:`pipeline.commands.acks`) to ``commands.status``."""

    def __init__(self, service: CommandService, *, sent_wait_s: float = 5.0) -> None:
        self._service = service
        self._sent_wait_s = sent_wait_s

    async def run(self) -> None:
        link = self._service.link
        while True:
            message = await link.incoming()
            try:
                await self.handle(message)
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad ack must not stop the relay; it is not PUBACKed
                log.exception("commands: ack on %s not handled", message.topic)
                continue
            link.acknowledge(message)

    async def handle(self, message: Incoming) -> CommandStatus | None:
        """Turn one ack into a status on Kafka and in PostgreSQL; returns it, or None when
        there was nothing to record (unknown command, an old or repeated answer)."""
        try:
            status = parse_ack(message.topic, message.payload, utcnow())
        except AckError as exc:
            letter = DeadLetter(reason=str(exc), stage="dispatcher.acks", payload=message.payload,
                                source_topic=f"mqtt:{message.topic}")
            await self._service.producer.send_all([Outgoing(Topics.DLQ, None, letter.encode())])
            return None
        current = await self._current(status)
        if current is None or not may_advance(current, status.status):
            return None
        steps = [status]
        if current == "queued" and status.status != "sent":
            # The device answered, so the transport took the command; its dispatcher died
            # (or stalled) before recording that. Keep the history complete and in order.
            steps.insert(0, CommandStatus(status.command_id, status.device_id, "sent",
                                          status.at, "inferred from the device's answer"))
        await self._service.record(steps)
        return status

    async def _current(self, status: CommandStatus) -> str | None:
        """The command's status in PostgreSQL, after waiting a little for ``sent`` if the
        device answered before the dispatcher recorded it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._sent_wait_s
        while True:
            found = await self._service.pg(
                lambda conn: store.current_statuses(conn, [status.command_id], status.device_id))
            current = found.get(status.command_id)
            if current != "queued" or status.status == "sent" or loop.time() >= deadline:
                return current
            await asyncio.sleep(0.05)
