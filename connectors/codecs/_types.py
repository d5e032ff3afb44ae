"""The decoders' shared result type and their one bounds-checked integer reader."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from connectors.errors import DecodeError

__all__ = ["Decoded", "MetadataValue", "read_int", "scaled"]

MetadataValue = float | str
"""A metadata value: a number (packet id, counter ...) or a string (MAC, event name ...)."""

_NO_METADATA: Mapping[str, MetadataValue] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Decoded:
    """The readings of one payload: finite numeric ``metrics`` and descriptive ``metadata``.

    ``metrics`` may be empty (e.g. a RuuviTag whose every field is "not
    available"); deciding whether that is a reading is the caller's business.
    """

    metrics: Mapping[str, float]
    metadata: Mapping[str, MetadataValue] = field(default_factory=lambda: _NO_METADATA)

    def __post_init__(self) -> None:
        metrics: dict[str, float] = {}
        for name, value in self.metrics.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"metric {name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"metric {name} is not finite: {value!r}")
            metrics[name] = float(value)
        metadata: dict[str, MetadataValue] = {}
        for name, meta in self.metadata.items():
            if isinstance(meta, bool) or not isinstance(meta, int | float | str):
                raise TypeError(f"metadata {name} must be a number or a string, got {meta!r}")
            metadata[name] = meta if isinstance(meta, str) else float(meta)
        object.__setattr__(self, "metrics", MappingProxyType(metrics))
        object.__setattr__(self, "metadata", MappingProxyType(metadata))

    def to_json(self) -> dict[str, Any]:
        """``{"metrics": {...}, "metadata": {...}}``, ready for :func:`json.dumps`."""
        return {"metrics": dict(self.metrics), "metadata": dict(self.metadata)}


def read_int(
    data: bytes, offset: int, size: int, *, signed: bool, little_endian: bool, what: str
) -> int:
    """The ``size``-byte integer at ``offset``, or :class:`DecodeError` naming ``what`` and where."""
    end = offset + size
    if end > len(data):
        left = max(len(data) - offset, 0)
        raise DecodeError(
            f"{what} needs {size} byte{'s' if size > 1 else ''} at byte {offset},"
            f" only {left} left",
            offset=offset,
        )
    return int.from_bytes(
        data[offset:end], "little" if little_endian else "big", signed=signed
    )


def scaled(raw: int, numerator: int, denominator: int) -> float:
    """``raw * numerator / denominator`` rounded once, so 2506/100 is exactly 25.06."""
    return raw * numerator / denominator
