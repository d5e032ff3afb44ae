"""One reading as the connectors carry it to Kafka: a tuple in ``TelemetryBatch`` column order.

Parsers build a :class:`ReadingRow` straight from the device's values (times as
integer microseconds since 1970, metadata in the batch schema's three columns),
without the checked :class:`~schemas.records.Telemetry` object: the
parser has done the checks a device payload needs, and the validate agent is the
stage that checks readings. Rows of one partition become one batch record
(:func:`encode_rows`).
"""

from __future__ import annotations

from typing import NamedTuple

from schemas.batch import COLUMNS, ReadingBatch
from schemas.records import Telemetry

__all__ = ["ReadingRow", "encode_rows"]


class ReadingRow(NamedTuple):
    """A reading, field for field the columns of ``TelemetryBatch`` (see :mod:`schemas.batch`)."""

    device_id: str
    protocol: str
    ts: int  # µs since 1970, device time
    received_at: int  # µs since 1970
    message_id: str
    application_id: str | None
    metrics: dict[str, float]
    status: str | None
    meta: dict[str, float]  # signal_strength, battery_level, snr, lat and lon, those present
    gateway_id: str | None
    extra: dict[str, str]

    @classmethod
    def of(cls, telemetry: Telemetry) -> ReadingRow:
        """The row of a checked reading (e.g. one a binary codec produced)."""
        batch = ReadingBatch()
        batch.add_telemetry(telemetry)
        return cls(*(column[0] for column in batch.columns().values()))

    def telemetry(self) -> Telemetry:
        """This reading as a checked :class:`Telemetry`; raises InvalidRecordError."""
        return _batch([self]).telemetry(0)


def _batch(rows: list[ReadingRow]) -> ReadingBatch:
    # zip(*rows) turns rows into columns in one C-level pass.
    return ReadingBatch(dict(zip(COLUMNS, map(list, zip(*rows, strict=True)), strict=True)))


def encode_rows(rows: list[ReadingRow]) -> bytes:
    """``rows`` as one single-object encoded ``TelemetryBatch``; raises MalformedRecordError."""
    return _batch(rows).encode()
