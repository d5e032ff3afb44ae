"""The validate agent: ``telemetry.raw`` → ``telemetry.valid`` or ``telemetry.dlq``.

The only stage that checks readings; everything downstream of
``telemetry.valid`` trusts them. Per reading, in order: the record decodes
(known writer schema; a batch or an older single record); the reading keeps
the Telemetry rules (device id, protocol, message id, metric names, finite
numbers, location range: :func:`schemas.batch.check_row`); a single record's
key is its device id; its time is not before 1970 nor in the future beyond the
allowed skew; its device is known when auto-registration is off (MQTT, GSM,
LoRaWAN and Bluetooth devices; HTTP and WebSocket devices are registered by
definition); its identity ``(device_id, message_id)`` was not passed on
recently (a duplicate is dropped, counted); its metrics are within the device
profile's ranges (out-of-range metrics go to the DLQ, the rest passes).

A reading that fails goes to the DLQ alone, as a batch of one with its reason
and its source record; the rest of its batch passes. Readings that pass are
regrouped by partition into one record per partition per take, so that the
four consumers of ``telemetry.valid`` see few, large records whatever size the
connectors' batches had (each record costs every consumer ~100 µs before its
first reading). A batch that is already large (``_FORWARD_AT`` readings) and
passes unchanged is forwarded as the same bytes to the same partition number
when both topics have as many partitions: no encode.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import cast

import faust
from faust.streams import Stream
from faust.types import EventT, StreamT
from prometheus_client import Counter

from pipeline.agents._dead_letter import dead_letter_for, reading_dead_letter
from pipeline.agents.profiles import ProfileCache, RecentIds, split_metrics
from pipeline.producer import AsyncProducer, Outgoing, by_partition, partition_for
from pipeline.settings import Settings, Topics
from schemas import CodecError, InvalidRecordError
from schemas.batch import ReadingBatch, batch_passes, check_row, decode_batch, is_batch

__all__ = ["Validator", "register_validate"]

log = logging.getLogger(__name__)

DUPLICATES = Counter("webscada_validate_duplicates_total", "Readings dropped as duplicate message ids")
REJECTED = Counter("webscada_validate_rejected_total", "Readings or metrics sent to the DLQ", ["reason"])
PASSED = Counter("webscada_validate_passed_total", "Readings passed on to telemetry.valid")
# Two readings of one device with the same device time are one point in InfluxDB (and one
# instant in the latest view): the stores merge them per metric, the later write winning.
SAME_TIME = Counter("webscada_validate_same_time_total",
                    "Readings whose device and device time an earlier, different reading had "
                    "(the stores merge them per metric)")
MOVED = Counter("webscada_validate_application_corrected_total",
                "Readings whose application was not their registered device's (given the registry's)")
SELF_REGISTERING = frozenset({"mqtt", "gsm", "lorawan", "bluetooth"})
STAGE = "agent.validate"
# readings from which a clean batch is forwarded as it came rather than merged with others
_FORWARD_AT = 256


class Validator:
    """Routes raw events to ``telemetry.valid`` or the DLQ (pure, apart from its caches).

    ``raw_partitions``/``valid_partitions``: the partition counts of the two topics.
    """

    def __init__(self, settings: Settings, profiles: ProfileCache, *, raw_partitions: int = 6,
                 valid_partitions: int = 6) -> None:
        self._settings = settings
        self._profiles = profiles
        self._recent = RecentIds()
        self._instants = RecentIds()  # (device_id, ts) of readings passed on
        self._max_skew_us = int(settings.max_future_skew_s * 1_000_000)
        self._same_layout = raw_partitions == valid_partitions
        self._valid_partitions = valid_partitions

    def route(self, events: Sequence[EventT]) -> list[Outgoing]:
        out: list[Outgoing] = []
        passed = ReadingBatch()
        now_us = time.time_ns() // 1000
        for event in events:
            self._route_one(event, now_us, passed, out)
        if len(passed):
            for partition, rows in by_partition(passed.device_id, self._valid_partitions).items():
                out.append(Outgoing(Topics.VALID, None, passed.take(rows).encode(), partition))
        PASSED.inc(len(passed))
        return out

    def _route_one(self, event: EventT, now_us: int, passed: ReadingBatch,
                   out: list[Outgoing]) -> None:
        message = event.message
        value = message.value or b""
        try:
            batch = decode_batch(value)
        except (CodecError, InvalidRecordError) as exc:
            REJECTED.labels("invalid").inc()
            out.append(dead_letter_for(message, reason=str(exc), stage=STAGE))
            return
        single = not is_batch(value)
        if not single and self._all_pass(batch, now_us):
            keys = list(zip(batch.device_id, batch.message_id, strict=True))
            if len(set(keys)) == len(keys) and not self._recent.known(keys):
                self._recent.remember_all(keys)
                instants = list(zip(batch.device_id, batch.ts, strict=True))
                distinct = set(instants)
                same_time = len(instants) - len(distinct) + self._instants.known(distinct)
                if same_time:
                    SAME_TIME.inc(same_time)
                self._instants.remember_all(instants)
                self._pass(batch, range(len(batch)), False, value, message.partition, passed, out)
                return
        keep: list[int] = []
        changed = False
        for i in range(len(batch)):
            reason = self._reason(batch, i, now_us, message.key if single else None)
            if reason is not None:
                REJECTED.labels("invalid").inc()
                out.append(self._letter(message, batch, i, reason, single))
                changed = True
                continue
            key = (batch.device_id[i], batch.message_id[i])
            if key in self._recent:
                DUPLICATES.inc()
                changed = True
                continue
            limits = self._profiles.limits.get(batch.device_id[i])
            if limits:
                kept, out_of_range = split_metrics(batch.metrics[i], limits)
                if out_of_range:
                    REJECTED.labels("out_of_range").inc(len(out_of_range))
                    what = "; ".join(f"{name} {why}" for name, why in sorted(out_of_range.items()))
                    prefix = "no metric within its profile range" if not kept else "out of profile range"
                    out.append(self._letter(message, batch, i, f"{prefix}: {what}", single))
                    changed = True
                    if not kept:
                        continue
                    batch.metrics[i] = kept
            registered = self._profiles.applications.get(batch.device_id[i])
            if registered is not None and batch.application_id[i] != registered:
                # The registry wins: a reading never moves a device into another application.
                MOVED.inc()
                batch.application_id[i] = registered
                changed = True
            self._recent.remember(key)
            instant = (batch.device_id[i], batch.ts[i])
            if instant in self._instants:
                SAME_TIME.inc()
            self._instants.remember(instant)
            keep.append(i)
        if keep:
            self._pass(batch, keep, changed, value, message.partition, passed, out)

    def _pass(self, batch: ReadingBatch, keep: Sequence[int], changed: bool, value: bytes,
              partition: int, passed: ReadingBatch, out: list[Outgoing]) -> None:
        """Readings ``keep`` of ``batch`` go on: the record as it came when it is whole and
        large, else into ``passed`` to be regrouped."""
        if not changed and len(batch) >= _FORWARD_AT and self._same_layout and all(
                partition_for(device_id, self._valid_partitions) == partition
                for device_id in set(batch.device_id)):
            out.append(Outgoing(Topics.VALID, None, value, partition))
            PASSED.inc(len(keep))
            return
        passed.extend(batch, None if len(keep) == len(batch) else keep)

    def _all_pass(self, batch: ReadingBatch, now_us: int) -> bool:
        """Whether every reading of ``batch`` passes :meth:`_reason` and has no profile
        ranges to meet (the common case, checked on whole columns)."""
        ts = batch.ts
        if not ts or min(ts) < 0 or max(ts) > now_us + self._max_skew_us:
            return False
        devices = set(batch.device_id)
        limits = self._profiles.limits
        if limits and not limits.keys().isdisjoint(devices):
            return False
        if (not self._settings.auto_register and self._profiles.loaded
                and not self._profiles.known_devices.issuperset(devices)
                and not SELF_REGISTERING.isdisjoint(batch.protocol)):
            return False
        applications = self._profiles.applications
        if applications and not applications.keys().isdisjoint(devices) and any(
                applications.get(device_id, claimed) != claimed
                for device_id, claimed in zip(batch.device_id, batch.application_id, strict=True)):
            return False  # a reading claims another application than the registry's
        return batch_passes(batch)

    def _reason(self, batch: ReadingBatch, i: int, now_us: int, key: bytes | None) -> str | None:
        reason = check_row(batch, i)
        if reason is not None:
            return reason
        device_id = batch.device_id[i]
        if key is not None and key != device_id.encode():
            return f"record key {key[:80]!r} does not match device_id {device_id!r}"
        ts = batch.ts[i]
        if ts < 0:
            return f"timestamp {ts} µs is before 1970"
        if ts > now_us + self._max_skew_us:
            return (f"timestamp {batch.json(i)['ts']} is more than "
                    f"{self._settings.max_future_skew_s:.0f} s in the future")
        if (not self._settings.auto_register and batch.protocol[i] in SELF_REGISTERING
                and self._profiles.loaded and device_id not in self._profiles.known_devices):
            return "unknown device"
        return None

    @staticmethod
    def _letter(message: object, batch: ReadingBatch, i: int, reason: str, single: bool) -> Outgoing:
        if single:  # an older single record: keep its own bytes, as it came
            return dead_letter_for(message, reason=reason, stage=STAGE,  # type: ignore[arg-type]
                                   device_id=batch.device_id[i])
        return reading_dead_letter(message, batch, i, reason=reason, stage=STAGE)  # type: ignore[arg-type]


def register_validate(app: faust.App, settings: Settings) -> None:
    from pipeline.app import raw_topic

    producer = AsyncProducer(settings.kafka_bootstrap, client_id="webscada-validate")
    profiles = ProfileCache(settings.pg_conninfo)
    source = raw_topic(app, Topics.RAW, settings)

    @app.agent(source, name="validate")
    async def validate(stream: StreamT[bytes]) -> None:
        for _ in range(10):  # a profile-less start is better than none at all: give PostgreSQL 10 s
            await profiles.refresh()
            if profiles.loaded:
                break
            await asyncio.sleep(1)
        validator = Validator(settings, profiles,
                              raw_partitions=await producer.partitions(Topics.RAW),
                              valid_partitions=await producer.partitions(Topics.VALID))
        batches = cast(Stream[bytes], stream).take_events(
            settings.stream_batch_records, within=settings.validate_batch_within_s
        )
        async for events in batches:
            await producer.send_all(validator.route(events))

    @app.timer(interval=settings.profile_refresh_s)
    async def refresh_profiles() -> None:
        await profiles.refresh()
