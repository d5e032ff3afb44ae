"""Building dead-letter records for Kafka input an agent rejects."""

from __future__ import annotations

from faust.types import Message

from pipeline.producer import Outgoing
from pipeline.settings import Topics
from schemas import DeadLetter

__all__ = ["dead_letter_for"]


def dead_letter_for(message: Message, *, reason: str, stage: str,
                    device_id: str | None = None) -> Outgoing:
    """The DLQ record for ``message``: its original bytes, its source and why."""
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
