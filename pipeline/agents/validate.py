"""The validate agent: ``telemetry.raw`` → ``telemetry.valid`` or ``telemetry.dlq``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import cast

import faust
from faust.streams import Stream
from faust.types import EventT, StreamT

from pipeline.agents._dead_letter import dead_letter_for
from pipeline.producer import AsyncProducer, Outgoing
from pipeline.settings import Settings, Topics
from schemas import CodecError, InvalidRecordError, Telemetry, utcnow

__all__ = ["check_reading", "register_validate"]

log = logging.getLogger(__name__)


def check_reading(record: Telemetry, *, key: bytes | None, max_future_skew_s: float) -> str | None:
    """Why ``record`` must not pass, or None. Field-level checks ran in Telemetry itself."""
    if key is not None and key != record.device_id.encode():
        return f"record key {key[:80]!r} does not match device_id {record.device_id!r}"
    if record.ts > utcnow() + timedelta(seconds=max_future_skew_s):
        return f"timestamp {record.ts.isoformat()} is more than {max_future_skew_s:.0f} s in the future"
    return None


def register_validate(app: faust.App, settings: Settings) -> None:
    from pipeline.app import raw_topic

    producer = AsyncProducer(settings.kafka_bootstrap, client_id="webscada-validate")
    source = raw_topic(app, Topics.RAW, settings)

    @app.agent(source, name="validate")
    async def validate(stream: StreamT[bytes]) -> None:
        batches = cast(Stream[bytes], stream).take_events(
            settings.sink_batch_size, within=settings.sink_batch_within_s
        )
        async for events in batches:
            await producer.send_all(_route(events, settings))


def _route(events: Sequence[EventT], settings: Settings) -> list[Outgoing]:
    out: list[Outgoing] = []
    for event in events:
        message = event.message
        value = message.value or b""
        key = message.key
        try:
            record = Telemetry.decode(value)
            reason = check_reading(record, key=key, max_future_skew_s=settings.max_future_skew_s)
        except (CodecError, InvalidRecordError) as exc:
            reason, record = str(exc), None
        if reason is None and record is not None:
            out.append(Outgoing(Topics.VALID, key, value))
            continue
        out.append(dead_letter_for(message, reason=reason or "invalid", stage="agent.validate",
                                   device_id=record.device_id if record else None))
    return out
