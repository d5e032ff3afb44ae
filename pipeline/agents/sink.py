"""Sink agents: each store consumes ``telemetry.valid`` in its own consumer group.

A batch is taken from the stream, written, and only then are its events
acknowledged, so Faust commits an offset only after the store has the data.
A store that is down makes its own agent wait and retry with exponential
backoff for as long as it takes; the other sinks, in other consumer groups,
are not affected.  Records a store rejects outright go to the DLQ.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections.abc import Callable, Sequence
from typing import cast

import faust
from faust.streams import Stream
from faust.types import EventT, StreamT
from prometheus_client import Counter, Histogram

from pipeline.agents._dead_letter import dead_letter_for, reading_dead_letter
from pipeline.errors import PermanentSinkError, TransientSinkError
from pipeline.producer import AsyncProducer, Outgoing
from pipeline.settings import Settings, Topics
from pipeline.sinks.base import Sink
from schemas import CodecError, InvalidRecordError
from schemas.batch import ReadingBatch, decode_batch

__all__ = ["register_influx_sink", "register_postgres_sink", "register_redis_sink", "write_batch"]

log = logging.getLogger(__name__)

SINK_WRITTEN = Counter("webscada_sink_records_total", "Readings written by a sink", ["sink"])
SINK_ERRORS = Counter("webscada_sink_errors_total", "Failed sink writes", ["sink", "kind"])
SINK_BATCH = Histogram("webscada_sink_batch_size", "Readings per sink write", ["sink"],
                       buckets=(1, 10, 50, 100, 500, 1000, 2000, 5000))
SINK_LATENCY = Histogram("webscada_sink_write_seconds", "Sink write latency", ["sink"])
# From the reading's own (device) time to the store confirming the write: the end-to-end
# latency an operator sees, device clock skew included.
SINK_DELAY = Histogram("webscada_sink_delay_seconds", "Device time to written in the store", ["sink"],
                       buckets=(0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
                                1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0))

MAX_BACKOFF_S = 10.0
# device-time delays observed per write: an even sample keeps the histogram's shape
# for a fraction of the cost of observing every reading
_DELAY_SAMPLES = 64


async def write_batch(sink: Sink, batch: ReadingBatch, *,
                      sleep: Callable[[float], object] = asyncio.sleep) -> list[tuple[int, str]]:
    """Write ``batch`` until the store has it; returns the readings it rejected (index, why).

    Transient failures are retried forever with exponential backoff (0.5 s up to
    10 s). On a permanent failure the batch is split in halves, and so on, so
    that only the readings the store rejects are set aside.
    """
    delay = 0.5
    while True:
        started = time.perf_counter()
        try:
            await sink.write(batch)
        except TransientSinkError as exc:
            SINK_ERRORS.labels(sink.name, "transient").inc()
            log.warning("%s sink: %s; retrying in %.1f s", sink.name, exc, delay)
            await sleep(delay)  # type: ignore[misc]
            delay = min(delay * 2, MAX_BACKOFF_S)
            continue
        except PermanentSinkError as exc:
            SINK_ERRORS.labels(sink.name, "permanent").inc()
            size = len(batch)
            if size == 1:
                return [(0, str(exc))]
            half = size // 2
            rejected = await write_batch(sink, batch.take(range(half)), sleep=sleep)
            right = await write_batch(sink, batch.take(range(half, size)), sleep=sleep)
            return rejected + [(half + i, why) for i, why in right]
        SINK_LATENCY.labels(sink.name).observe(time.perf_counter() - started)
        SINK_BATCH.labels(sink.name).observe(len(batch))
        SINK_WRITTEN.labels(sink.name).inc(len(batch))
        device_delay = SINK_DELAY.labels(sink.name)
        written_at = time.time()
        ts = batch.ts
        for i in range(0, len(ts), max(1, len(ts) // _DELAY_SAMPLES)):
            device_delay.observe(written_at - ts[i] / 1e6)
        return []


class _Taken:
    """The readings of a batch of Kafka events, merged, with where each came from."""

    def __init__(self, events: Sequence[EventT], stage: str) -> None:
        self.letters: list[Outgoing] = []
        self._starts: list[int] = []
        self._sources: list[tuple[EventT, ReadingBatch]] = []
        count = 0
        for event in events:
            try:
                batch = decode_batch(event.message.value or b"")
            except (CodecError, InvalidRecordError) as exc:
                self.letters.append(dead_letter_for(event.message, reason=str(exc), stage=stage))
                continue
            self._starts.append(count)
            self._sources.append((event, batch))
            count += len(batch)
        self.readings = ReadingBatch.concat([batch for _, batch in self._sources])

    def dead_letter(self, index: int, reason: str, stage: str) -> Outgoing:
        """The DLQ record of merged reading ``index``, naming its source record."""
        which = bisect.bisect_right(self._starts, index) - 1
        event, batch = self._sources[which]
        return reading_dead_letter(event.message, batch, index - self._starts[which],
                                   reason=reason, stage=stage)


def _register_sink(app: faust.App, settings: Settings, sink: Sink) -> None:
    from pipeline.app import raw_topic

    producer = AsyncProducer(settings.kafka_bootstrap, client_id=f"webscada-sink-{sink.name}")
    source = raw_topic(app, Topics.VALID, settings)
    stage = f"sink.{sink.name}"
    chunk = settings.sink_batch_size

    @app.agent(source, name=f"sink-{sink.name}")
    async def run(stream: StreamT[bytes]) -> None:
        await sink.setup()
        batches = cast(Stream[bytes], stream).take_events(
            settings.stream_batch_records, within=settings.sink_batch_within_s
        )
        async for events in batches:
            taken = _Taken(events, stage)
            readings = taken.readings
            letters = taken.letters
            for start in range(0, len(readings), chunk):
                part = readings if len(readings) <= chunk else readings.take(
                    range(start, min(start + chunk, len(readings))))
                for i, why in await write_batch(sink, part):
                    letters.append(taken.dead_letter(start + i, why, stage))
            if letters:
                await producer.send_all(letters)


def register_redis_sink(app: faust.App, settings: Settings) -> None:
    from pipeline.sinks.redis import RedisLatestSink

    _register_sink(app, settings, RedisLatestSink(url=settings.redis_url,
                                                  ttl_s=settings.redis_latest_ttl_s))


def register_influx_sink(app: faust.App, settings: Settings) -> None:
    from pipeline.sinks.influxdb import InfluxSink

    _register_sink(app, settings, InfluxSink(
        url=settings.influx_url, token=settings.influx_token.get_secret_value(),
        org=settings.influx_org, bucket=settings.influx_bucket,
    ))


def register_postgres_sink(app: faust.App, settings: Settings) -> None:
    from pipeline.sinks.postgres import PostgresDeviceSink

    _register_sink(app, settings, PostgresDeviceSink(conninfo=settings.pg_conninfo,
                                                     auto_register=settings.auto_register))
