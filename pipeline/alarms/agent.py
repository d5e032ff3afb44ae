"""The ``alarms`` worker role: ``telemetry.valid`` → alarm transitions → topic ``alarms``.

The agent consumes ``telemetry.valid`` in its own consumer group
(``webscada-alarms``), judges each batch, and lets Faust acknowledge the batch
only after PostgreSQL committed the transitions and Kafka acknowledged their
AlarmEvents. A background task ticks every second for what no message drives:
stale-data alarms, rule and operator changes, and the outbox relay.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import faust
from faust.streams import Stream
from faust.types import StreamT

from pipeline.agents._dead_letter import dead_letter_for
from pipeline.alarms.service import AlarmService
from pipeline.alarms.store import AlarmStore
from pipeline.notify import Notifier, NotifierConfig
from pipeline.pgpool import make_pool
from pipeline.producer import AsyncProducer, Outgoing
from pipeline.settings import Settings, Topics
from schemas import CodecError, InvalidRecordError
from schemas.batch import ReadingBatch, decode_batch

__all__ = ["TICK_S", "notifier_config", "register_alarms"]

log = logging.getLogger(__name__)

TICK_S = 1.0

# NotifierConfig field → the Settings attribute it comes from, once Settings has it.
_SETTING_NAMES = {
    "smtp_host": "smtp_host", "smtp_port": "smtp_port", "smtp_from": "smtp_from",
    "smtp_username": "smtp_username", "smtp_password": "smtp_password",
    "smtp_starttls": "smtp_starttls", "webhook_timeout_s": "webhook_timeout_s",
    "queue_size": "notify_queue_size", "retries": "notify_retries",
    "recipient_limit": "notify_recipient_limit", "recipient_window_s": "notify_recipient_window_s",
    "sms_gateway_url": "sms_gateway_url", "sms_account_sid": "sms_account_sid",
    "sms_auth_token": "sms_auth_token", "sms_from": "sms_from", "sms_modem_port": "sms_modem_port",
    "sms_modem_baudrate": "sms_modem_baudrate",
}


def notifier_config(settings: Settings) -> NotifierConfig:
    """The notifier's configuration: each ``NotifierConfig`` field that ``settings`` carries
    (``smtp_host``, ``smtp_port``, ... see ``_SETTING_NAMES``), the default otherwise."""
    values: dict[str, Any] = {}
    for field, name in _SETTING_NAMES.items():
        value = getattr(settings, name, None)
        if value is None:
            continue
        values[field] = value.get_secret_value() if hasattr(value, "get_secret_value") else value
    return NotifierConfig(**values)


def register_alarms(app: faust.App, settings: Settings) -> None:
    """Declare the alarms agent and its timer task on ``app``."""
    from pipeline.app import raw_topic

    producer = AsyncProducer(settings.kafka_bootstrap, client_id="webscada-alarms")
    pool = make_pool(settings.pg_conninfo, name="webscada-alarms", max_size=3)
    notifier = Notifier(notifier_config(settings))
    service = AlarmService(AlarmStore(pool), producer.send_all, notifier=notifier)
    source = raw_topic(app, Topics.VALID, settings)
    opened = asyncio.Lock()

    async def ready() -> None:
        async with opened:
            if pool.closed:
                await pool.open(wait=False)
        await service.start()

    @app.agent(source, name="alarms")
    async def alarms(stream: StreamT[bytes]) -> None:
        await ready()
        batches = cast(Stream[bytes], stream).take_events(
            settings.stream_batch_records, within=settings.sink_batch_within_s)
        async for events in batches:
            decoded: list[ReadingBatch] = []
            letters: list[Outgoing] = []
            for event in events:
                try:
                    decoded.append(decode_batch(event.message.value or b""))
                except (CodecError, InvalidRecordError) as exc:
                    letters.append(dead_letter_for(event.message, reason=str(exc), stage="agent.alarms"))
            if decoded:
                await service.process(ReadingBatch.concat(decoded))
            if letters:
                await producer.send_all(letters)

    @app.task
    async def alarm_timer() -> None:
        await ready()
        try:
            while True:
                await asyncio.sleep(TICK_S)
                try:
                    await service.tick()
                except Exception:
                    # The timer must outlive any one bad tick (it drives stale-data alarms).
                    log.exception("alarm timer tick failed")
        finally:  # the worker is stopping: release the clients
            await notifier.close()
            await pool.close()
