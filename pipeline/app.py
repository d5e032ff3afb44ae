"""Faust applications: one per role, so every role is its own consumer group.

A role's app is declared (topics, agents) when the worker starts it, never at
import time; nothing here touches the event loop.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from pipeline.settings import Settings

if TYPE_CHECKING:  # the worker's supervisor lists roles without loading Faust
    import faust
    from faust.sensors.monitor import Monitor

__all__ = ["ENTRY_POINT_GROUP", "ROLES", "all_roles", "create_app", "raw_topic"]

# role name → function declaring that role's agents on a fresh app
Registrar = Callable[["faust.App", Settings], None]

# Packages add stream agents with an entry point in this group:
#   [project.entry-points."webscada.agents"]
#   rolling-mean = "mypackage.agents:register_rolling_mean"
ENTRY_POINT_GROUP = "webscada.agents"


def _registrars() -> dict[str, Registrar]:
    from pipeline.agents.sink import register_influx_sink, register_postgres_sink, register_redis_sink
    from pipeline.agents.validate import register_validate
    from pipeline.alarms.agent import register_alarms
    from pipeline.commands.agent import register_dispatcher

    return {
        "validate": register_validate,
        "sink-redis": register_redis_sink,
        "sink-influxdb": register_influx_sink,
        "sink-postgres": register_postgres_sink,
        "alarms": register_alarms,
        "dispatcher": register_dispatcher,
    }


ROLES = ("validate", "sink-redis", "sink-influxdb", "sink-postgres", "alarms", "dispatcher")


def _load(target: str) -> Registrar:
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"agent {target!r} is not 'module:function'")
    registrar = getattr(importlib.import_module(module_name), attribute, None)
    if not callable(registrar):
        raise ValueError(f"agent {target!r}: {attribute} is not a function of {module_name}")
    return registrar  # type: ignore[no-any-return]


def _extra_registrars(settings: Settings) -> dict[str, Registrar]:
    """Agents added by data engineers: installed entry points, then the extra_agents setting."""
    extras: dict[str, Registrar] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        extras[entry.name] = _load(entry.value)
    for spec in settings.extra_agents:
        role, _, target = spec.partition("=")
        if not role or not target:
            raise ValueError(f"extra agent {spec!r} is not 'role=module:function'")
        extras[role.strip()] = _load(target.strip())
    return extras


def all_roles(settings: Settings) -> tuple[str, ...]:
    """The built-in roles and every extra agent's role, in the order the worker starts them."""
    return ROLES + tuple(role for role in _extra_registrars(settings) if role not in ROLES)


def create_app(role: str, settings: Settings) -> faust.App:
    """A Faust app for ``role`` (consumer group ``webscada-<role>``) with its agents."""
    import faust

    registrars = {**_extra_registrars(settings), **_registrars()}
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
        # records, each a batch of up to a thousand readings: a short buffer bounds memory
        stream_buffer_maxsize=max(256, settings.stream_batch_records * 2),
        consumer_max_fetch_size=1024 * 1024,
        logging_config=None,
        monitor=_quiet_monitor(),
    )
    registrars[role](app, settings)
    _watch_lag(app, settings)
    return app


def _quiet_monitor() -> Monitor:
    """Faust's default sensor, minus its per-message bookkeeping.

    It keeps per-message and per-event statistics for Faust's own web views, which are
    off here (our figures are the Prometheus metrics); its hooks ran for every event of
    every agent, several dict updates and clock reads each time.
    """
    from faust.sensors.monitor import Monitor as FaustMonitor

    class QuietMonitor(FaustMonitor):
        def on_message_in(self, tp: object, offset: int, message: object) -> None:
            return None

        def on_stream_event_in(self, tp: object, offset: int, stream: object,
                               event: object) -> None:
            return None

        def on_stream_event_out(self, tp: object, offset: int, stream: object, event: object,
                                state: object = None) -> None:
            return None

        def on_message_out(self, tp: object, offset: int, message: object) -> None:
            return None

    return QuietMonitor()


def _watch_lag(app: faust.App, settings: Settings) -> None:
    import asyncio
    import logging

    from pipeline.metrics import measure_lag

    @app.timer(interval=15.0)
    async def consumer_lag() -> None:
        try:
            await asyncio.to_thread(measure_lag, settings.kafka_bootstrap, app.conf.id)
        except Exception as exc:  # metrics must never take the worker down
            logging.getLogger(__name__).debug("consumer lag not measured: %s", exc)


def raw_topic(app: faust.App, name: str, settings: Settings) -> faust.TopicT:
    """A topic of raw bytes: agents decode values themselves, so bad bytes become DLQ records."""
    return app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw",
                     value_serializer="raw", partitions=settings.telemetry_partitions)
