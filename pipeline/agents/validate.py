"""The validate agent: ``telemetry.raw`` → ``telemetry.valid`` or ``telemetry.dlq``.

Checks, in order: the value decodes (known writer schema, valid fields: the
Telemetry record checks device id, metric names and finiteness itself); its
key is its device id; its time is not in the future beyond the allowed skew;
its device is known when auto-registration is off (MQTT, GSM and LoRaWAN
devices; HTTP and WebSocket devices are registered by definition); its
message id was not passed on recently (a duplicate is dropped, counted); its
metrics are within the device profile's ranges (out-of-range metrics go to
the DLQ, the rest of the reading passes).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import cast

import faust
from faust.streams import Stream
from faust.types import EventT, StreamT
from prometheus_client import Counter

from pipeline.agents._dead_letter import dead_letter_for
from pipeline.agents.profiles import ProfileCache, RecentIds, split_by_limits
from pipeline.producer import AsyncProducer, Outgoing
from pipeline.settings import Settings, Topics
from schemas import CodecError, InvalidRecordError, Telemetry, utcnow

__all__ = ["Validator", "check_reading", "register_validate"]

log = logging.getLogger(__name__)

DUPLICATES = Counter("webscada_validate_duplicates_total", "Readings dropped as duplicate message ids")
REJECTED = Counter("webscada_validate_rejected_total", "Readings or metrics sent to the DLQ", ["reason"])
SELF_REGISTERING = frozenset({"mqtt", "gsm", "lorawan", "bluetooth"})
STAGE = "agent.validate"


def check_reading(record: Telemetry, *, key: bytes | None, max_future_skew_s: float) -> str | None:
    """Why ``record`` must not pass, or None. Field-level checks ran in Telemetry itself."""
    if key is not None and key != record.device_id.encode():
        return f"record key {key[:80]!r} does not match device_id {record.device_id!r}"
    if record.ts > utcnow() + timedelta(seconds=max_future_skew_s):
        return f"timestamp {record.ts.isoformat()} is more than {max_future_skew_s:.0f} s in the future"
    return None


class Validator:
    """Routes raw events to ``telemetry.valid`` or the DLQ (pure, apart from its caches)."""

    def __init__(self, settings: Settings, profiles: ProfileCache) -> None:
        self._settings = settings
        self._profiles = profiles
        self._recent = RecentIds()

    def route(self, events: Sequence[EventT]) -> list[Outgoing]:
        out: list[Outgoing] = []
        for event in events:
            out += self._route_one(event)
        return out

    def _route_one(self, event: EventT) -> list[Outgoing]:
        message = event.message
        value = message.value or b""
        record: Telemetry | None = None
        try:
            record = Telemetry.decode(value)
            reason = check_reading(record, key=message.key,
                                   max_future_skew_s=self._settings.max_future_skew_s)
        except (CodecError, InvalidRecordError) as exc:
            reason = str(exc)
        if reason is None and record is not None:
            reason = self._unknown_device(record)
        if reason is not None or record is None:
            REJECTED.labels("invalid").inc()
            return [dead_letter_for(message, reason=reason or "invalid", stage=STAGE,
                                    device_id=record.device_id if record else None)]
        if record.message_id in self._recent:
            DUPLICATES.inc()
            return []
        kept, out_of_range = split_by_limits(record, self._profiles.limits.get(record.device_id, {}))
        out: list[Outgoing] = []
        if out_of_range:
            REJECTED.labels("out_of_range").inc(len(out_of_range))
            what = "; ".join(f"{name} {why}" for name, why in sorted(out_of_range.items()))
            prefix = "no metric within its profile range" if kept is None else "out of profile range"
            out.append(dead_letter_for(message, reason=f"{prefix}: {what}", stage=STAGE,
                                       device_id=record.device_id))
        if kept is not None:
            self._recent.remember(record.message_id)
            body = value if kept is record else kept.encode()
            out.append(Outgoing(Topics.VALID, record.device_id.encode(), body))
        return out

    def _unknown_device(self, record: Telemetry) -> str | None:
        if self._settings.auto_register or record.protocol not in SELF_REGISTERING:
            return None
        if self._profiles.loaded and record.device_id not in self._profiles.known_devices:
            return "unknown device"
        return None


def register_validate(app: faust.App, settings: Settings) -> None:
    from pipeline.app import raw_topic

    producer = AsyncProducer(settings.kafka_bootstrap, client_id="webscada-validate")
    profiles = ProfileCache(settings.pg_conninfo)
    validator = Validator(settings, profiles)
    source = raw_topic(app, Topics.RAW, settings)

    @app.agent(source, name="validate")
    async def validate(stream: StreamT[bytes]) -> None:
        for _ in range(10):  # a profile-less start is better than none at all: give PostgreSQL 10 s
            await profiles.refresh()
            if profiles.loaded:
                break
            await asyncio.sleep(1)
        batches = cast(Stream[bytes], stream).take_events(
            settings.sink_batch_size, within=settings.validate_batch_within_s
        )
        async for events in batches:
            await producer.send_all(validator.route(events))

    @app.timer(interval=settings.profile_refresh_s)
    async def refresh_profiles() -> None:
        await profiles.refresh()
