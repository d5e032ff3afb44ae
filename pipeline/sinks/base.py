"""The contract every sink implements: set up, write a batch of readings, close."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from schemas.batch import ReadingBatch

__all__ = ["Sink"]


class Sink(ABC):
    """A store that readings are written to in batches.

    ``write()`` either returns (all written) or raises
    :class:`TransientSinkError` (nothing can be assumed written; the same batch
    will be written again) or :class:`PermanentSinkError` (the store rejects
    these readings). Writes are idempotent, so writing a batch twice leaves the
    store as writing it once. Readings come from ``telemetry.valid``: checked
    by the validate agent, trusted here.
    """

    name: ClassVar[str]

    async def setup(self) -> None:  # noqa: B027 - optional hook
        """Open clients. Must not fail when the store is down: write() reports that."""

    @abstractmethod
    async def write(self, batch: ReadingBatch) -> None:
        """Write one batch idempotently."""

    @abstractmethod
    async def ping(self) -> bool:
        """Whether the store answers now."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients."""
