"""The contract every sink implements: set up, add records, flush a batch, close."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from schemas import Telemetry

__all__ = ["Sink"]


class Sink(ABC):
    """A store that readings are written to in batches.

    ``flush()`` writes everything added since the last flush and either returns
    (all written) or raises :class:`TransientSinkError` (nothing can be assumed
    written; the same batch will be added and flushed again) or
    :class:`PermanentSinkError` (the store rejects these records).  Writes are
    idempotent, so writing a batch twice leaves the store as writing it once.
    """

    name: ClassVar[str]

    def __init__(self) -> None:
        self._batch: list[Telemetry] = []

    async def setup(self) -> None:  # noqa: B027 - optional hook
        """Open clients. Must not fail when the store is down: flush() reports that."""

    def add(self, record: Telemetry) -> None:
        self._batch.append(record)

    def clear(self) -> None:
        self._batch.clear()

    @property
    def pending(self) -> int:
        return len(self._batch)

    async def flush(self) -> int:
        """Write the added records; returns how many were written."""
        if not self._batch:
            return 0
        batch = list(self._batch)
        await self.write(batch)
        self._batch.clear()
        return len(batch)

    @abstractmethod
    async def write(self, batch: list[Telemetry]) -> None:
        """Write one batch idempotently."""

    @abstractmethod
    async def ping(self) -> bool:
        """Whether the store answers now."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients."""
