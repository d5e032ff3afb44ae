"""Many readings in one Kafka record: the ``TelemetryBatch`` columns and their codec.

A batch holds readings as columns (``device_id[i]``, ``ts[i]``, ``metrics[i]``
... belong to reading ``i``), which Avro decodes faster than a list of
records, and keeps times as integer microseconds since 1970 (no datetime
objects on the hot path). Telemetry topics carry batches and, from older
producers or replays, single ``Telemetry`` records: :func:`decode_batch`
reads both, a single record becoming a batch of one.

A batch is trusted as it is: whoever checks readings (the validate agent, see
:func:`check_row`) does so once, and every later stage reads the columns
without re-checking. :meth:`ReadingBatch.telemetry` builds the checked
:class:`~schemas.records.Telemetry` of one reading for code that wants it.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict, cast

from fastavro import schemaless_reader, schemaless_writer

from schemas.codec import MAGIC, registry
from schemas.errors import InvalidRecordError, MalformedRecordError, UnknownSchemaError
from schemas.records import (
    DEVICE_ID_PATTERN,
    METRIC_NAME_PATTERN,
    PROTOCOLS,
    RESERVED_METRICS,
    Location,
    Telemetry,
    TelemetryMetadata,
    iso_utc,
)

__all__ = [
    "BATCH_SCHEMA",
    "COLUMNS",
    "META_NUMBERS",
    "Metadata",
    "Reading",
    "ReadingBatch",
    "check_row",
    "decode_batch",
    "from_micros",
    "is_batch",
    "iso_micros",
    "to_micros",
]

BATCH_SCHEMA = "io.webscada.TelemetryBatch"
TELEMETRY_SCHEMA = "io.webscada.Telemetry"
COLUMNS = ("device_id", "protocol", "ts", "received_at", "message_id", "application_id",
           "metrics", "status", "meta", "gateway_id", "extra")
_HEADER_LEN = len(MAGIC) + 8
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_MAX_ID_CHARS = 128
_META_ALLOWED = ("signal_strength", "battery_level", "snr", "lat", "lon")


class Metadata(TypedDict, total=False):
    signal_strength: float | None
    battery_level: float | None
    snr: float | None
    gateway_id: str | None
    location: dict[str, float] | None
    extra: dict[str, str]


class Reading(TypedDict):
    """One reading of a batch as a plain dict (see :meth:`ReadingBatch.row`)."""

    device_id: str
    protocol: str
    ts: int
    received_at: int
    message_id: str
    application_id: str | None
    metrics: dict[str, float]
    status: str | None
    meta: dict[str, float]
    gateway_id: str | None
    extra: dict[str, str]


# numeric metadata names in the ``meta`` column; lat/lon are the location
META_NUMBERS = ("signal_strength", "battery_level", "snr")
_EMPTY_META: dict[str, float] = {}
_EMPTY_EXTRA: dict[str, str] = {}


def to_micros(moment: datetime) -> int:
    """An aware datetime as integer microseconds since 1970 (exact, no float detour)."""
    return (moment - _EPOCH) // _MICROSECOND


def from_micros(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


class ReadingBatch:
    """Readings as columns. Build one with :meth:`append` or :func:`decode_batch`."""

    __slots__ = COLUMNS

    device_id: list[str]
    protocol: list[str]
    ts: list[int]
    received_at: list[int]
    message_id: list[str]
    application_id: list[str | None]
    metrics: list[dict[str, float]]
    status: list[str | None]
    meta: list[dict[str, float]]
    gateway_id: list[str | None]
    extra: list[dict[str, str]]

    def __init__(self, columns: Mapping[str, list[Any]] | None = None) -> None:
        if columns is None:
            for name in COLUMNS:
                setattr(self, name, [])
            return
        for name in COLUMNS:
            setattr(self, name, columns[name])

    def __len__(self) -> int:
        return len(self.device_id)

    def __repr__(self) -> str:
        return f"ReadingBatch({len(self)} readings)"

    def append(self, *, device_id: str, protocol: str, ts: int, received_at: int, message_id: str,
               metrics: dict[str, float], application_id: str | None = None,
               status: str | None = None, metadata: Metadata | None = None) -> None:
        """Add a reading; ``metadata`` as Telemetry's metadata record has it (None: none)."""
        self.device_id.append(device_id)
        self.protocol.append(protocol)
        self.ts.append(ts)
        self.received_at.append(received_at)
        self.message_id.append(message_id)
        self.application_id.append(application_id)
        self.metrics.append(metrics)
        self.status.append(status)
        if not metadata:
            self.meta.append(_EMPTY_META)
            self.gateway_id.append(None)
            self.extra.append(_EMPTY_EXTRA)
            return
        meta: dict[str, float] = {}
        for name in META_NUMBERS:
            number = metadata.get(name)
            if number is not None:
                meta[name] = cast(float, number)
        location = metadata.get("location")
        if location:
            meta["lat"], meta["lon"] = location["lat"], location["lon"]
        self.meta.append(meta)
        self.gateway_id.append(metadata.get("gateway_id"))
        self.extra.append(metadata.get("extra") or _EMPTY_EXTRA)

    def metadata(self, i: int) -> Metadata:
        """Reading ``i``'s metadata as Telemetry's metadata record has it."""
        meta = self.meta[i]
        lat, lon = meta.get("lat"), meta.get("lon")
        return {
            "signal_strength": meta.get("signal_strength"),
            "battery_level": meta.get("battery_level"),
            "snr": meta.get("snr"),
            "gateway_id": self.gateway_id[i],
            "location": None if lat is None or lon is None else {"lat": lat, "lon": lon},
            "extra": dict(self.extra[i]),
        }

    def append_row(self, row: Reading) -> None:
        for name in COLUMNS:
            getattr(self, name).append(row[name])  # type: ignore[literal-required]

    def extend(self, other: ReadingBatch, indices: Iterable[int] | None = None) -> None:
        """Add ``other``'s readings (those at ``indices``, in that order, when given)."""
        for name in COLUMNS:
            mine, theirs = getattr(self, name), getattr(other, name)
            if indices is None:
                mine.extend(theirs)
            else:
                mine.extend([theirs[i] for i in indices])

    def take(self, indices: Sequence[int]) -> ReadingBatch:
        """A new batch of the readings at ``indices``."""
        out = ReadingBatch()
        out.extend(self, indices)
        return out

    def row(self, i: int) -> Reading:
        return cast(Reading, {name: getattr(self, name)[i] for name in COLUMNS})

    def rows(self) -> Iterator[Reading]:
        for i in range(len(self)):
            yield self.row(i)

    def columns(self) -> dict[str, list[Any]]:
        return {name: getattr(self, name) for name in COLUMNS}

    def encode(self) -> bytes:
        """Single-object encoded ``TelemetryBatch`` (see :mod:`schemas.codec`)."""
        schema = _batch_schema()
        out = io.BytesIO()
        out.write(MAGIC)
        out.write(schema.fingerprint)
        try:
            schemaless_writer(out, schema.parsed, self.columns())
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            raise MalformedRecordError(f"cannot encode TelemetryBatch: {exc}") from exc
        return out.getvalue()

    def encode_row(self, i: int) -> bytes:
        """Reading ``i`` alone as a batch of one (e.g. the payload of its dead letter)."""
        return self.take([i]).encode()

    def telemetry(self, i: int) -> Telemetry:
        """Reading ``i`` as a checked :class:`Telemetry`; raises InvalidRecordError."""
        try:
            return Telemetry(
                device_id=self.device_id[i], protocol=self.protocol[i],
                ts=from_micros(self.ts[i]), received_at=from_micros(self.received_at[i]),
                message_id=self.message_id[i], metrics=self.metrics[i],
                application_id=self.application_id[i], status=self.status[i],
                metadata=_metadata_record(self.metadata(i)),
            )
        except OverflowError as exc:
            raise InvalidRecordError(f"reading time is out of range: {exc}") from exc

    def add_telemetry(self, record: Telemetry) -> None:
        meta = record.metadata
        metadata: Metadata | None = None
        if meta != _NO_METADATA:
            metadata = {
                "signal_strength": meta.signal_strength, "battery_level": meta.battery_level,
                "snr": meta.snr, "gateway_id": meta.gateway_id,
                "location": ({"lat": meta.location.lat, "lon": meta.location.lon}
                             if meta.location else None),
                "extra": dict(meta.extra),
            }
        self.append(device_id=record.device_id, protocol=record.protocol, ts=to_micros(record.ts),
                    received_at=to_micros(record.received_at), message_id=record.message_id,
                    metrics=dict(record.metrics), application_id=record.application_id,
                    status=record.status, metadata=metadata)

    @classmethod
    def of(cls, records: Iterable[Telemetry]) -> ReadingBatch:
        batch = cls()
        for record in records:
            batch.add_telemetry(record)
        return batch

    def json(self, i: int) -> dict[str, Any]:
        """Reading ``i`` JSON-ready, as the API streams it (same shape as ``Telemetry.to_json``)."""
        metadata: dict[str, Any] = {k: v for k, v in self.metadata(i).items()
                                    if v is not None and k != "extra"}
        if self.extra[i]:
            metadata["extra"] = dict(self.extra[i])
        return {
            "device_id": self.device_id[i],
            "protocol": self.protocol[i],
            "ts": _iso(self.ts[i]),
            "received_at": _iso(self.received_at[i]),
            "message_id": self.message_id[i],
            "application_id": self.application_id[i],
            "metrics": dict(self.metrics[i]),
            "status": self.status[i],
            "metadata": metadata,
        }


_NO_METADATA = TelemetryMetadata()


_SECONDS: dict[int, str] = {}


def iso_micros(micros: int) -> str:
    """``iso_utc`` of a time in µs since 1970, without a datetime per call (seconds are cached)."""
    seconds, fraction = divmod(micros, 1_000_000)
    head = _SECONDS.get(seconds)
    if head is None:
        if len(_SECONDS) > 100_000:
            _SECONDS.clear()
        head = _SECONDS[seconds] = iso_utc(from_micros(seconds * 1_000_000))[:19]
    return f"{head}.{fraction:06d}Z"


def _iso(micros: int) -> str:
    try:
        return iso_micros(micros)
    except OverflowError:
        return str(micros)


def _metadata_record(meta: Metadata) -> TelemetryMetadata:
    loc = meta.get("location")
    return TelemetryMetadata(
        signal_strength=meta.get("signal_strength"), battery_level=meta.get("battery_level"),
        snr=meta.get("snr"), gateway_id=meta.get("gateway_id"),
        location=Location(loc["lat"], loc["lon"]) if loc else None,
        extra=meta.get("extra") or {},
    )


class _Schemas:
    __slots__ = ("fingerprint", "parsed")

    def __init__(self) -> None:
        reg = registry()
        self.fingerprint = reg.fingerprint_of(BATCH_SCHEMA)
        self.parsed = reg.parsed_schema(BATCH_SCHEMA)


_cached: _Schemas | None = None


def _batch_schema() -> _Schemas:
    global _cached
    if _cached is None:
        _cached = _Schemas()
    return _cached


def is_batch(value: bytes) -> bool:
    """Whether ``value`` is a ``TelemetryBatch`` of the current version (else decode to find out)."""
    return value[2:_HEADER_LEN] == _batch_schema().fingerprint and value[:2] == MAGIC


def decode_batch(value: bytes) -> ReadingBatch:
    """The readings of a telemetry record: a ``TelemetryBatch``, or one ``Telemetry``.

    Raises a :class:`~schemas.errors.CodecError` when the bytes do not decode,
    or :class:`InvalidRecordError` when a single record breaks its own rules.
    """
    schema = _batch_schema()
    if value[2:_HEADER_LEN] == schema.fingerprint and value[:2] == MAGIC:
        body = io.BytesIO(value)
        body.seek(_HEADER_LEN)
        try:
            columns = schemaless_reader(body, schema.parsed, None)
        except (EOFError, ValueError, IndexError, KeyError, TypeError, UnicodeDecodeError,
                OverflowError, MemoryError) as exc:
            raise MalformedRecordError(
                f"TelemetryBatch body does not decode at byte {body.tell()}: "
                f"{type(exc).__name__}: {exc}") from exc
        if body.tell() != len(value):
            raise MalformedRecordError(
                f"{len(value) - body.tell()} unexpected trailing bytes after the TelemetryBatch body")
        batch = ReadingBatch(cast(dict[str, list[Any]], columns))
        size = len(batch.device_id)
        if any(len(getattr(batch, name)) != size for name in COLUMNS):
            raise MalformedRecordError(
                "TelemetryBatch columns differ in length: "
                + ", ".join(f"{name} {len(getattr(batch, name))}" for name in COLUMNS))
        return batch
    decoded = registry().decode(value)
    if decoded.name == TELEMETRY_SCHEMA:
        batch = ReadingBatch()
        batch.add_telemetry(Telemetry.from_avro(decoded.record))
        return batch
    raise UnknownSchemaError(f"value was written as {decoded.name}, expected {BATCH_SCHEMA} "
                             f"or {TELEMETRY_SCHEMA}")


# Names checked once per process: metric names repeat in every reading.
_GOOD_METRIC_NAMES: set[str] = set()


def check_row(batch: ReadingBatch, i: int) -> str | None:
    """Why reading ``i`` breaks the Telemetry rules (as :class:`Telemetry` checks them), or None."""
    device_id = batch.device_id[i]
    if not DEVICE_ID_PATTERN.fullmatch(device_id):
        return f"device_id {device_id!r} does not match {DEVICE_ID_PATTERN.pattern}"
    protocol = batch.protocol[i]
    if protocol not in PROTOCOLS:
        return f"protocol {protocol!r} is not one of {', '.join(sorted(PROTOCOLS))}"
    message_id = batch.message_id[i]
    if not message_id or len(message_id) > _MAX_ID_CHARS:
        return "message_id must be 1 to 128 characters"
    application_id = batch.application_id[i]
    if application_id is not None and not 0 < len(application_id) <= _MAX_ID_CHARS:
        return "application_id must be 1 to 128 characters"
    metrics = batch.metrics[i]
    if not metrics:
        return "reading has no metric"
    for name, number in metrics.items():
        if name not in _GOOD_METRIC_NAMES:
            if name in RESERVED_METRICS or not METRIC_NAME_PATTERN.fullmatch(name):
                return f"metric name {name!r} is not allowed"
            if len(_GOOD_METRIC_NAMES) < 100_000:
                _GOOD_METRIC_NAMES.add(name)
        if not math.isfinite(number):
            return f"metric {name} is not finite: {number!r}"
    meta = batch.meta[i]
    if meta:
        for field, number in meta.items():
            if field not in _META_ALLOWED:
                return f"metadata {field!r} is not one of {', '.join(_META_ALLOWED)}"
            if not math.isfinite(number):
                return f"metadata {field} is not finite: {number!r}"
        lat, lon = meta.get("lat"), meta.get("lon")
        if (lat is None) != (lon is None):
            return "location needs both lat and lon"
        if lat is not None and lon is not None and not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
            return f"location ({lat}, {lon}) is out of range"
    gateway_id = batch.gateway_id[i]
    if gateway_id is not None and not 0 < len(gateway_id) <= _MAX_ID_CHARS:
        return "gateway_id must be 1 to 128 characters"
    return None

