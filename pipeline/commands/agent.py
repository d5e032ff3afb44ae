"""The ``dispatcher`` worker role (consumer group ``webscada-dispatcher``).

It runs four things in one process:

- agent ``dispatcher`` on ``commands``: each command to its device's transport;
- agent ``command-status`` on ``commands.status``: the status recorder, applying every
  status (whoever wrote it: API, connectors, this role) to PostgreSQL idempotently;
- the ack relay: device acks over MQTT/GSM and ChirpStack ack/txack events to statuses;
- the expiry timer: open commands past ``expires_at`` become ``expired``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TypeVar, cast

import faust
from faust.streams import Stream
from faust.types import StreamT

from pipeline.commands.acks import ACK_TOPICS
from pipeline.commands.link import CommandLink
from pipeline.commands.service import AckRelay, CommandService
from pipeline.mqtt_accounts import broker_ca, credentials
from pipeline.pgpool import make_pool
from pipeline.producer import AsyncProducer
from pipeline.settings import Settings, Topics

__all__ = ["register_dispatcher"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def _setting(settings: Settings, name: str, default: T) -> T:
    """``settings.<name>`` once Settings declares it, else ``default``."""
    value = getattr(settings, name, None)
    return default if value is None else cast(T, value)


def register_dispatcher(app: faust.App, settings: Settings) -> None:
    """Declare the dispatcher role's agents, timer and ack relay on ``app``.

    Optional settings (read when :class:`Settings` declares them): ``dispatcher_mqtt_client_id``
    (default ``{mqtt_client_id}-commands``; one per dispatcher process),
    ``command_expiry_interval_s`` (1.0), ``command_puback_timeout_s`` (10.0),
    ``command_sent_wait_s`` (5.0), ``command_batch_size`` (200).
    """
    from pipeline.app import raw_topic

    batch_size = _setting(settings, "command_batch_size", 200)
    expiry_interval_s = _setting(settings, "command_expiry_interval_s", 1.0)
    client_id = _setting(settings, "dispatcher_mqtt_client_id", f"{settings.mqtt_client_id}-commands")
    pool = make_pool(settings.pg_conninfo, name="webscada-dispatcher")
    producer = AsyncProducer(settings.kafka_bootstrap, client_id="webscada-dispatcher")
    link = CommandLink(host=settings.mqtt_host, port=settings.mqtt_port, client_id=client_id,
                       ack_topics=ACK_TOPICS, credentials=credentials(settings, "dispatcher"),
                       tls_ca=broker_ca(settings),
                       puback_timeout_s=_setting(settings, "command_puback_timeout_s", 10.0))
    service = CommandService(pool=pool, producer=producer, link=link)
    relay = AckRelay(service, sent_wait_s=_setting(settings, "command_sent_wait_s", 5.0))
    opened = asyncio.Lock()

    async def ready() -> None:
        async with opened:
            if pool.closed:
                await pool.open(wait=False)
            link.start()

    @app.agent(raw_topic(app, Topics.COMMANDS, settings), name="dispatcher")
    async def dispatch(stream: StreamT[bytes]) -> None:
        await ready()
        batches = cast(Stream[bytes], stream).take_events(batch_size, within=0.05)
        async for events in batches:
            await service.dispatch(events)

    @app.agent(raw_topic(app, Topics.COMMAND_STATUS, settings), name="command-status")
    async def record(stream: StreamT[bytes]) -> None:
        await ready()
        batches = cast(Stream[bytes], stream).take_events(batch_size, within=0.05)
        async for events in batches:
            await service.record_events(events)

    @app.task
    async def relay_acks() -> None:
        await ready()
        await relay.run()

    @app.timer(interval=expiry_interval_s)
    async def expire_commands() -> None:
        await ready()
        try:
            count = await service.expire_due()
        except Exception:  # the timer must keep ticking; the next tick retries
            log.exception("commands: expiry failed")
            return
        if count:
            log.info("commands: %d expired", count)
