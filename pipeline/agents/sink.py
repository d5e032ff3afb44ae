"""Sink agents: each store consumes ``telemetry.valid`` in its own consumer group.

A batch is taken from the stream, written, and only then are its events
acknowledged, so Faust commits an offset only after the store has the data.
A store that is down makes its own agent wait and retry with exponential
backoff for as long as it takes; the other sinks, in other consumer groups,
are not affected.  Records a store rejects outright go to the DLQ.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import cast

import faust
from faust.streams import Stream
from faust.types import EventT, StreamT
from prometheus_client import Counter, Histogram

from pipeline.agents._dead_letter import dead_letter_for
from pipeline.errors import PermanentSinkError, TransientSinkError
from pipeline.producer import AsyncProducer, Outgoing
from pipeline.settings import Settings, Topics
from pipeline.sinks.base import Sink
from schemas import CodecError, InvalidRecordError, Telemetry

__all__ = ["register_influx_sink", "register_postgres_sink", "register_redis_sink", "write_batch"]

log = logging.getLogger(__name__)

SINK_WRITTEN = Counter("webscada_sink_records_total", "Records written by a sink", ["sink"])
SINK_ERRORS = Counter("webscada_sink_errors_total", "Failed sink writes", ["sink", "kind"])
SINK_BATCH = Histogram("webscada_sink_batch_size", "Records per sink write", ["sink"],
                       buckets=(1, 10, 50, 100, 500, 1000, 2000, 5000))
SINK_LATENCY = Histogram("webscada_sink_write_seconds", "Sink write latency", ["sink"])
# From the reading's own (device) time to the store confirming the write: the end-to-end
# latency an operator sees, device clock skew included.
SINK_DELAY = Histogram("webscada_sink_delay_seconds", "Device time to written in the store", ["sink"],
                       buckets=(0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
                                1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0))

MAX_BACKOFF_S = 10.0


async def write_batch(sink: Sink, records: list[Telemetry], *,
                      sleep: Callable[[float], object] = asyncio.sleep) -> list[tuple[Telemetry, str]]:
    """Write ``records`` until the store has them; returns the ones it rejected, with why.

    Transient failures are retried forever with exponential backoff (0.5 s up to
    10 s).  On a permanent failure the batch is written record by record so that
    only the records the store rejects are set aside.
    """
    delay = 0.5
    while True:
        sink.clear()
        for record in records:
            sink.add(record)
        started = time.perf_counter()
        try:
            await sink.flush()
        except TransientSinkError as exc:
            SINK_ERRORS.labels(sink.name, "transient").inc()
            log.warning("%s sink: %s; retrying in %.1f s", sink.name, exc, delay)
            await sleep(delay)  # type: ignore[misc]
            delay = min(delay * 2, MAX_BACKOFF_S)
            continue
        except PermanentSinkError as exc:
            SINK_ERRORS.labels(sink.name, "permanent").inc()
            if len(records) == 1:
                return [(records[0], str(exc))]
            rejected: list[tuple[Telemetry, str]] = []
            for record in records:
                rejected += await write_batch(sink, [record], sleep=sleep)
            return rejected
        SINK_LATENCY.labels(sink.name).observe(time.perf_counter() - started)
        SINK_BATCH.labels(sink.name).observe(len(records))
        SINK_WRITTEN.labels(sink.name).inc(len(records))
        device_delay = SINK_DELAY.labels(sink.name)
        written_at = time.time()
        for record in records:
            device_delay.observe(written_at - record.ts.timestamp())
        return []


def _register_sink(app: faust.App, settings: Settings, sink: Sink) -> None:
    from pipeline.app import raw_topic

    producer = AsyncProducer(settings.kafka_bootstrap, client_id=f"webscada-sink-{sink.name}")
    source = raw_topic(app, Topics.VALID, settings)
    stage = f"sink.{sink.name}"

    @app.agent(source, name=f"sink-{sink.name}")
    async def run(stream: StreamT[bytes]) -> None:
        await sink.setup()
        batches = cast(Stream[bytes], stream).take_events(
            settings.sink_batch_size, within=settings.sink_batch_within_s
        )
        async for events in batches:
            decoded, letters = _decode(events, stage)
            records = [record for record, _ in decoded]
            rejected = await write_batch(sink, records) if records else []
            if rejected:
                source_of = {id(record): event for record, event in decoded}
                letters += [
                    dead_letter_for(source_of[id(record)].message, reason=why, stage=stage,
                                    device_id=record.device_id)
                    for record, why in rejected
                ]
            if letters:
                await producer.send_all(letters)


def _decode(events: Sequence[EventT], stage: str) -> tuple[list[tuple[Telemetry, EventT]], list[Outgoing]]:
    decoded: list[tuple[Telemetry, EventT]] = []
    letters: list[Outgoing] = []
    for event in events:
        try:
            decoded.append((Telemetry.decode(event.message.value or b""), event))
        except (CodecError, InvalidRecordError) as exc:
            letters.append(dead_letter_for(event.message, reason=str(exc), stage=stage))
    return decoded, letters


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
