"""Building dead-letter records for Kafka input an agent rejects."""

from __future__ import annotations

from faust.types import Message

from pipeline.producer import Outgoing
from pipeline.settings import Topics
from schemas import DeadLetter
from schemas.batch import ReadingBatch

__all__ = ["dead_letter_for", "reading_dead_letter"]


def dead_letter_for(message: Message, *, reason: str, stage: str,
                    device_id: str | None = None) -> Outgoing:
    """The DLQ record for ``message`` as a whole: its original bytes, its source and why."""
    letter = DeadLetter(
        reason=reason,
        stage=stage,
        payload=bytes(message.value or b""),
        source_topic=message.topic,
        device_id=device_id,
        source_partition=message.partition,
        source_offset=message.offset,
    )
    key = device_id.encode() if device_id else None
    return Outgoing(Topics.DLQ, key, letter.encode())


def reading_dead_letter(message: Message, batch: ReadingBatch, index: int, *, reason: str,
                        stage: str) -> Outgoing:
    """The DLQ record for reading ``index`` of the batch in ``message``, alone.

    Its payload is that reading as a batch of one, so ``webscada dlq replay``
    sends back exactly this reading; ``details`` say where in the source record it was.
    """
    device_id = batch.device_id[index]
    letter = DeadLetter(
        reason=reason,
        stage=stage,
        payload=batch.encode_row(index),
        source_topic=message.topic,
        device_id=device_id,
        source_partition=message.partition,
        source_offset=message.offset,
        details={"message_id": batch.message_id[index], "batch_index": str(index),
                 "batch_size": str(len(batch))},
    )
    return Outgoing(Topics.DLQ, device_id.encode(), letter.encode())
