"""Many readings in one Kafka record: the ``TelemetryBatch`` columns and their codec.

A batch holds readings as columns (``device_id[i]``, ``ts[i]``, ``metrics[i]``
... belong to reading ``i``) and keeps times as integer microseconds since
1970 (no datetime objects on the hot path). On Kafka the columns are a string
table plus packed little-endian numbers (``telemetry_batch.avsc``): fastavro
decodes a packed ``bytes`` field in one step where an Avro array costs ~0.5 µs
a number. A decoded batch builds each column's Python list when it is first
used, so a consumer pays only for the columns it reads. Telemetry topics carry batches and, from older
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
import sys
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from itertools import chain, islice
from typing import Any, TypedDict, cast

from fastavro import schemaless_reader, schemaless_writer

from schemas.codec import MAGIC, registry
from schemas.errors import InvalidRecordError, MalformedRecordError, UnknownSchemaError
from schemas.records import (
    APPLICATION_ID_PATTERN,
    APPLICATION_ID_RULE,
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
    "ReadingBatch",
    "batch_passes",
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
_META_NAMES = frozenset(_META_ALLOWED)


class Metadata(TypedDict, total=False):
    signal_strength: float | None
    battery_level: float | None
    snr: float | None
    gateway_id: str | None
    location: dict[str, float] | None
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

    # Columns decoded from Kafka (or taken from other batches) are built on first use:
    # a sink that never reads metrics never pays for turning them into dicts.
    __slots__ = (*COLUMNS, "_count", "_lazy")

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
        self._lazy: dict[str, Callable[[], list[Any]]] | None = None
        self._count = 0
        if columns is None:
            for name in COLUMNS:
                setattr(self, name, [])
            return
        for name in COLUMNS:
            setattr(self, name, columns[name])

    @classmethod
    def _deferred(cls, count: int, columns: dict[str, Callable[[], list[Any]]]) -> ReadingBatch:
        """A batch of ``count`` readings whose columns the given functions build when first used."""
        batch = cls.__new__(cls)
        batch._count = count
        batch._lazy = columns
        return batch

    def __getattr__(self, name: str) -> Any:
        # Only called for a column not built yet (a set slot is found before this).
        lazy = self._lazy
        if lazy is None or name not in lazy:
            raise AttributeError(f"ReadingBatch has no attribute {name!r}")
        column = lazy.pop(name)()
        setattr(self, name, column)
        if not lazy:
            self._lazy = None
        return column

    def _build(self) -> None:
        """Build every column that is still deferred (before the batch is changed)."""
        if self._lazy is not None:
            for name in list(self._lazy):
                getattr(self, name)

    def __len__(self) -> int:
        return self._count if self._lazy is not None else len(self.device_id)

    def __repr__(self) -> str:
        return f"ReadingBatch({len(self)} readings)"

    def append(self, *, device_id: str, protocol: str, ts: int, received_at: int, message_id: str,
               metrics: dict[str, float], application_id: str | None = None,
               status: str | None = None, metadata: Metadata | None = None) -> None:
        """Add a reading; ``metadata`` as Telemetry's metadata record has it (None: none)."""
        self._build()
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

    def extend(self, other: ReadingBatch, indices: Iterable[int] | None = None) -> None:
        """Add ``other``'s readings (those at ``indices``, in that order, when given)."""
        self._build()
        for name in COLUMNS:
            mine, theirs = getattr(self, name), getattr(other, name)
            if indices is None:
                mine.extend(theirs)
            else:
                mine.extend([theirs[i] for i in indices])

    def take(self, indices: Sequence[int]) -> ReadingBatch:
        """A new batch of the readings at ``indices`` (columns built when first used)."""
        def column(name: str) -> Callable[[], list[Any]]:
            return lambda: list(map(getattr(self, name).__getitem__, indices))
        return ReadingBatch._deferred(len(indices), {name: column(name) for name in COLUMNS})

    @classmethod
    def concat(cls, batches: Sequence[ReadingBatch]) -> ReadingBatch:
        """The readings of ``batches`` one after the other (columns built when first used)."""
        if len(batches) == 1:
            return batches[0]

        def column(name: str) -> Callable[[], list[Any]]:
            return lambda: list(chain.from_iterable(getattr(b, name) for b in batches))
        return cls._deferred(sum(map(len, batches)), {name: column(name) for name in COLUMNS})

    def columns(self) -> dict[str, list[Any]]:
        return {name: getattr(self, name) for name in COLUMNS}

    def encode(self) -> bytes:
        """Single-object encoded ``TelemetryBatch`` (see :mod:`schemas.codec`)."""
        schema = _batch_schema()
        size = len(self.device_id)
        if any(len(getattr(self, name)) != size for name in COLUMNS):
            raise MalformedRecordError(
                "TelemetryBatch columns differ in length: "
                + ", ".join(f"{name} {len(getattr(self, name))}" for name in COLUMNS))
        out = io.BytesIO()
        out.write(MAGIC)
        out.write(schema.fingerprint)
        try:
            schemaless_writer(out, schema.parsed, _pack(self))
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
        try:
            return _unpack(cast(dict[str, Any], columns))
        except (ValueError, IndexError, TypeError, OverflowError) as exc:
            raise MalformedRecordError(f"TelemetryBatch is inconsistent: {exc}") from exc
    decoded = registry().decode(value)
    if decoded.name == TELEMETRY_SCHEMA:
        batch = ReadingBatch()
        batch.add_telemetry(Telemetry.from_avro(decoded.record))
        return batch
    raise UnknownSchemaError(f"value was written as {decoded.name}, expected {BATCH_SCHEMA} "
                             f"or {TELEMETRY_SCHEMA}")


_LITTLE = sys.byteorder == "little"


def _packed(code: str, values: Iterable[Any]) -> bytes:
    packed = array(code, values)
    if not _LITTLE:
        packed.byteswap()
    return packed.tobytes()


def _unpacked(code: str, data: bytes, what: str, count: int | None = None) -> array[Any]:
    values = array(code)
    if len(data) % values.itemsize:
        raise ValueError(f"{what} is {len(data)} bytes, not a whole number of {values.itemsize}-byte items")
    values.frombytes(data)
    if not _LITTLE:
        values.byteswap()
    if count is not None and len(values) != count:
        raise ValueError(f"{what} has {len(values)} entries for {count} readings")
    return values


def _pack(batch: ReadingBatch) -> dict[str, Any]:
    """The Avro field values of ``batch`` (layout: ``telemetry_batch.avsc``)."""
    table: dict[str, int] = {}
    add = table.setdefault  # one C call a string: its index, new strings numbered in order

    def refs(texts: Iterable[str]) -> list[int]:
        return [add(text, len(table)) for text in texts]

    def optional(texts: Iterable[str | None]) -> list[int]:
        return [-1 if text is None else add(text, len(table)) for text in texts]

    metric_names = [add(name, len(table)) for metrics in batch.metrics for name in metrics]
    metric_values = [value for metrics in batch.metrics for value in metrics.values()]
    meta_names = [add(name, len(table)) for meta in batch.meta for name in meta]
    meta_values = [value for meta in batch.meta for value in meta.values()]
    return {
        "count": len(batch.device_id),
        "device_id": _packed("i", refs(batch.device_id)),
        "protocol": _packed("i", refs(batch.protocol)),
        "ts": _packed("q", batch.ts),
        "received_at": _packed("q", batch.received_at),
        "message_id": batch.message_id,
        "application_id": _packed("i", optional(batch.application_id)),
        "status": _packed("i", optional(batch.status)),
        "gateway_id": _packed("i", optional(batch.gateway_id)),
        "metric_count": _packed("i", map(len, batch.metrics)),
        "metric_name": _packed("i", metric_names),
        "metric_value": _packed("d", metric_values),
        "meta_count": _packed("i", map(len, batch.meta)),
        "meta_name": _packed("i", meta_names),
        "meta_value": _packed("d", meta_values),
        "extra": [{"index": i, "values": extra} for i, extra in enumerate(batch.extra) if extra],
        "strings": list(table),  # insertion order: index k is the k-th string added
    }


def _unpack(record: dict[str, Any]) -> ReadingBatch:
    """A batch from its Avro field values; raises ValueError/IndexError when they disagree.

    Every length and index is checked here; the Python lists and dicts of each
    column are built when first used.
    """
    count = record["count"]
    if count < 0:
        raise ValueError(f"count {count} is negative")
    # index -1 (none) picks the None at the end; any other negative index is refused below
    table = [*record["strings"], None]
    strings = len(table) - 1

    def refs(field: str, optional: bool = False) -> Callable[[], list[Any]]:
        found = _unpacked("i", record[field], field, count)
        if found and (min(found) < (-1 if optional else 0) or max(found) >= strings):
            raise IndexError(f"{field} refers outside the {strings} strings")
        return lambda: list(map(table.__getitem__, found))

    def numbers(field: str) -> Callable[[], list[Any]]:
        return _unpacked("q", record[field], field, count).tolist

    message_ids = record["message_id"]
    if len(message_ids) != count:
        raise ValueError(f"message_id has {len(message_ids)} entries for {count} readings")
    extras = record["extra"]
    for entry in extras:
        if not 0 <= entry["index"] < count:
            raise IndexError(f"extra of reading {entry['index']} of {count}")

    def extra() -> list[dict[str, str]]:
        column: list[dict[str, str]] = [_EMPTY_EXTRA] * count
        for entry in extras:
            column[entry["index"]] = entry["values"]
        return column

    return ReadingBatch._deferred(count, {
        "device_id": refs("device_id"),
        "protocol": refs("protocol"),
        "ts": numbers("ts"),
        "received_at": numbers("received_at"),
        "message_id": lambda: message_ids,
        "application_id": refs("application_id", optional=True),
        "status": refs("status", optional=True),
        "gateway_id": refs("gateway_id", optional=True),
        "metrics": _maps(record, "metric", table, count),
        "meta": _maps(record, "meta", table, count),
        "extra": extra,
    })


def _maps(record: dict[str, Any], prefix: str, table: list[str | None], count: int
          ) -> Callable[[], list[dict[str, float]]]:
    counts = _unpacked("i", record[f"{prefix}_count"], f"{prefix}_count", count)
    found = _unpacked("i", record[f"{prefix}_name"], f"{prefix}_name")
    values = _unpacked("d", record[f"{prefix}_value"], f"{prefix}_value", len(found))
    if sum(counts) != len(found) or (counts and min(counts) < 0):
        raise ValueError(f"{prefix}_count adds up to {sum(counts)}, not to the {len(found)} names")
    if found and (min(found) < 0 or max(found) >= len(table) - 1):
        raise IndexError(f"{prefix}_name refers outside the {len(table) - 1} strings")

    def build() -> list[dict[str, float]]:
        names = iter(map(table.__getitem__, found))
        numbers = iter(values.tolist())
        # zip stops after n pairs: each reading takes its own names and values off the two streams
        return [dict(zip(islice(names, n), numbers, strict=False))  # type: ignore[arg-type]
                if n else _EMPTY_META for n in counts]
    return build


# Names checked once per process: metric names repeat in every reading.
_GOOD_METRIC_NAMES: set[str] = set()


def batch_passes(batch: ReadingBatch) -> bool:
    """Whether every reading of ``batch`` keeps the rules :func:`check_row` checks.

    The checks are made on the batch's distinct strings and whole columns (C loops,
    a fraction of a microsecond a reading); when this says False, ask
    :func:`check_row` which readings break them and why.
    """
    if not all(map(DEVICE_ID_PATTERN.fullmatch, set(batch.device_id))):
        return False
    if not PROTOCOLS.issuperset(batch.protocol):
        return False
    for column in (batch.message_id, batch.gateway_id):
        lengths = [len(text) for text in set(column) if text is not None]
        if lengths and not (min(lengths) > 0 and max(lengths) <= _MAX_ID_CHARS):
            return False
    if not all(APPLICATION_ID_PATTERN.fullmatch(app) for app in set(batch.application_id) if app is not None):
        return False
    metrics = batch.metrics
    if not all(metrics):
        return False
    names = set().union(*metrics)
    if not names <= _GOOD_METRIC_NAMES:
        if any(name in RESERVED_METRICS or not METRIC_NAME_PATTERN.fullmatch(name) for name in names):
            return False
        if len(_GOOD_METRIC_NAMES) < 100_000:
            _GOOD_METRIC_NAMES.update(names)
    if not all(map(math.isfinite, chain.from_iterable(map(dict.values, metrics)))):
        return False
    meta = [m for m in batch.meta if m]
    if meta:
        if not set().union(*meta) <= _META_NAMES:
            return False
        if not all(map(math.isfinite, chain.from_iterable(map(dict.values, meta)))):
            return False
        for m in meta:
            if "lat" in m or "lon" in m:
                lat, lon = m.get("lat"), m.get("lon")
                if lat is None or lon is None or not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
                    return False
    return True


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
    if application_id is not None and not APPLICATION_ID_PATTERN.fullmatch(application_id):
        return APPLICATION_ID_RULE
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

