"""Faust applications: one per role, so every role is its own consumer group.

A role's app is declared (topics, agents) when the worker starts it, never at
import time; nothing here touches the event loop.
"""

from __future__ import annotations

from collections.abc import Callable

import faust

from pipeline.settings import Settings

__all__ = ["ROLES", "create_app", "raw_topic"]

# role name → function declaring that role's agents on a fresh app
Registrar = Callable[[faust.App, Settings], None]


def _registrars() -> dict[str, Registrar]:
    from pipeline.agents.sink import register_influx_sink, register_postgres_sink, register_redis_sink
    from pipeline.agents.validate import register_validate

    return {
        "validate": register_validate,
        "sink-redis": register_redis_sink,
        "sink-influxdb": register_influx_sink,
        "sink-postgres": register_postgres_sink,
    }


ROLES = ("validate", "sink-redis", "sink-influxdb", "sink-postgres")


def create_app(role: str, settings: Settings) -> faust.App:
    """A Faust app for ``role`` (consumer group ``webscada-<role>``) with its agents."""
    registrars = _registrars()
    if role not in registrars:
        raise ValueError(f"unknown worker role {role!r}; one of {', '.join(registrars)}")
    app = faust.App(
        f"webscada-{role}",
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=False,
        datadir=str(settings.stack_dir / "faust" / role),
        topic_partitions=settings.telemetry_partitions,
        topic_allow_declare=False,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        broker_commit_interval=1.0,
        broker_commit_every=5000,
        stream_buffer_maxsize=max(4096, settings.sink_batch_size * 2),
        consumer_max_fetch_size=4 * 1024 * 1024,
        logging_config=None,
    )
    registrars[role](app, settings)
    return app


def raw_topic(app: faust.App, name: str, settings: Settings) -> faust.TopicT:
    """A topic of raw bytes: agents decode values themselves, so bad bytes become DLQ records."""
    return app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw",
                     value_serializer="raw", partitions=settings.telemetry_partitions)
