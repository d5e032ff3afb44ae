"""Example extension agent: per-device rolling mean and rate of change.

Not one of the built-in roles; enable it with

    WEBSCADA_EXTRA_AGENTS='["rolling-mean=pipeline.agents.rolling:register_rolling_mean"]'

and ``webscada worker`` runs it in its own process and consumer group. For
every valid reading it publishes to ``telemetry.derived`` a Telemetry record
with, per metric, ``<metric>_mean_<N>s`` (mean over the device's readings of
the last N seconds of device time) and ``<metric>_rate`` (change per second
since the device's previous reading of that metric). The window lives in
memory: after a restart it fills again from new readings.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import faust
from faust.types import StreamT

from pipeline.agents.readings import telemetry_readings
from pipeline.producer import AsyncProducer, Outgoing
from pipeline.settings import Settings, Topics
from schemas import Telemetry

__all__ = ["DERIVED_TOPIC", "RollingWindow", "register_rolling_mean"]

DERIVED_TOPIC = "telemetry.derived"
WINDOW_S = 60


@dataclass
class RollingWindow:
    """Recent (time, value) samples of one metric of one device."""

    span: timedelta
    samples: deque[tuple[datetime, float]] = field(default_factory=deque)

    def add(self, ts: datetime, value: float) -> tuple[float, float | None]:
        """Add a sample; returns (mean over the span, rate per second since the previous sample)."""
        rate = None
        if self.samples and ts > self.samples[-1][0]:
            last_ts, last_value = self.samples[-1]
            rate = (value - last_value) / (ts - last_ts).total_seconds()
        if self.samples and ts < self.samples[-1][0]:
            return self.mean(), None  # a late sample: leave the window as it is
        self.samples.append((ts, value))
        while self.samples and self.samples[0][0] < ts - self.span:
            self.samples.popleft()
        return self.mean(), rate

    def mean(self) -> float:
        return sum(value for _, value in self.samples) / len(self.samples)


def derive(record: Telemetry, windows: dict[tuple[str, str], RollingWindow]) -> Telemetry:
    metrics: dict[str, float] = {}
    for name, value in record.metrics.items():
        window = windows.setdefault((record.device_id, name), RollingWindow(timedelta(seconds=WINDOW_S)))
        mean, rate = window.add(record.ts, value)
        metrics[f"{name}_mean_{WINDOW_S}s"] = mean
        if rate is not None:
            metrics[f"{name}_rate"] = rate
    return Telemetry(device_id=record.device_id, protocol=record.protocol, ts=record.ts,
                     received_at=record.received_at, message_id=f"{record.message_id}:rolling",
                     metrics=metrics, application_id=record.application_id)


def _ensure_topic(settings: Settings) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    if DERIVED_TOPIC in admin.list_topics(timeout=10).topics:
        return
    futures = admin.create_topics([NewTopic(DERIVED_TOPIC, num_partitions=settings.telemetry_partitions,
                                            replication_factor=1)])
    for future in futures.values():
        try:
            future.result()
        except Exception as exc:  # created meanwhile by another worker is fine
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise


def register_rolling_mean(app: faust.App, settings: Settings) -> None:
    from pipeline.app import raw_topic

    producer = AsyncProducer(settings.kafka_bootstrap, client_id="webscada-rolling-mean")
    source = raw_topic(app, Topics.VALID, settings)
    windows: dict[tuple[str, str], RollingWindow] = {}

    @app.agent(source, name="rolling-mean")
    async def rolling_mean(stream: StreamT[bytes]) -> None:
        await asyncio.to_thread(_ensure_topic, settings)
        async for readings in telemetry_readings(stream, producer, stage="agent.rolling-mean"):
            await producer.send_all([
                Outgoing(DERIVED_TOPIC, r.device_id.encode(), derive(r, windows).encode())
                for r in readings
            ])
