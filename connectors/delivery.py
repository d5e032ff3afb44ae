"""What Kafka (or the encoder) said about a produced record, as the connectors' callbacks get it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Delivery", "DeliveryCallback"]


@dataclass(frozen=True, slots=True)
class Delivery:
    """What Kafka said about one produced record (for a batched reading: about its batch).

    ``refused`` means the record was never sent and sending it again cannot help
    (a reading that cannot be encoded, a record Kafka refuses outright); a
    reading's connector should dead-letter its input instead of retrying.
    """

    topic: str
    partition: int | None
    offset: int | None
    error: str | None = None
    retriable: bool = False
    fatal: bool = False
    refused: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


DeliveryCallback = Callable[[Delivery], None]
