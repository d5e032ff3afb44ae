"""Single readings for stream agents that do not care how readings travel on Kafka.

Telemetry topics carry batches of readings (:mod:`schemas.batch`) and, from
older producers, single records. An extension agent iterates
:func:`telemetry_readings` and sees one checked :class:`~schemas.Telemetry`
per reading, in partition order; records that do not decode go to the DLQ.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import cast

from faust.streams import Stream
from faust.types import StreamT

from pipeline.agents._dead_letter import dead_letter_for, reading_dead_letter
from pipeline.producer import AsyncProducer, Outgoing
from schemas import CodecError, InvalidRecordError, Telemetry
from schemas.batch import decode_batch

__all__ = ["telemetry_readings"]


async def telemetry_readings(stream: StreamT[bytes], producer: AsyncProducer, *, stage: str,
                             take: int = 100, within: float = 0.2) -> AsyncIterator[list[Telemetry]]:
    """Lists of readings from ``stream`` (a raw-bytes telemetry topic), up to ``take`` Kafka
    records' worth at a time, gathered for at most ``within`` seconds.

    Faust acknowledges a list's input once the caller asks for the next one, so
    publish what you derive (``await producer.send_all(...)``) before looping.
    """
    batches = cast(Stream[bytes], stream).take_events(take, within=within)
    async for events in batches:
        readings: list[Telemetry] = []
        letters: list[Outgoing] = []
        for event in events:
            try:
                batch = decode_batch(event.message.value or b"")
            except (CodecError, InvalidRecordError) as exc:
                letters.append(dead_letter_for(event.message, reason=str(exc), stage=stage))
                continue
            for i in range(len(batch)):
                try:
                    readings.append(batch.telemetry(i))
                except InvalidRecordError as exc:
                    letters.append(reading_dead_letter(event.message, batch, i, reason=str(exc),
                                                       stage=stage))
        if letters:
            await producer.send_all(letters)
        if readings:
            yield readings
