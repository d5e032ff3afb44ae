"""JSON views of decoded Kafka records, as the API streams them.

Times become ISO-8601 UTC strings, bytes become base64, non-finite floats
become null (JSON has no NaN), so that browsers can ``JSON.parse`` every frame.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from schemas.batch import decode_batch, is_batch
from schemas.codec import Decoded, registry
from schemas.records import Telemetry, iso_utc

__all__ = ["dumps", "jsonable", "kafka_key", "kafka_timestamp", "record_json", "record_views",
           "topic_frame"]


def jsonable(value: Any) -> Any:
    """``value`` with every datetime, bytes and non-finite float made JSON-safe."""
    if isinstance(value, datetime):
        return iso_utc(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def record_json(decoded: Decoded) -> dict[str, Any]:
    """The JSON view of one decoded value.

    Telemetry goes through :class:`Telemetry` so that every consumer sees the same
    shape (:meth:`Telemetry.to_json`); other schemas are converted field by field.
    Raises :class:`schemas.errors.InvalidRecordError` for telemetry that breaks the contract.
    """
    if decoded.name == Telemetry.SCHEMA:
        return Telemetry.from_avro(decoded.record).to_json()
    converted: dict[str, Any] = jsonable(decoded.record)
    return converted


def record_views(value: bytes) -> list[tuple[str, dict[str, Any]]]:
    """The JSON views of one Kafka value, each with its schema name.

    A ``TelemetryBatch`` gives one ``Telemetry`` view per reading (the same shape
    as a single record), so clients never need to know that readings travel in
    batches. Raises :class:`~schemas.errors.CodecError` or ``InvalidRecordError``.
    """
    if is_batch(value):
        batch = decode_batch(value)
        return [(Telemetry.SCHEMA, batch.json(i)) for i in range(len(batch))]
    decoded = registry().decode(value)
    return [(decoded.name, record_json(decoded))]


def kafka_key(key: bytes | None) -> str | None:
    """A record key as text; keys are device ids, so base64 only for non-UTF-8 bytes."""
    if key is None:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(key).decode("ascii")


def kafka_timestamp(timestamp_ms: int | None) -> str | None:
    if timestamp_ms is None or timestamp_ms < 0:
        return None
    return iso_utc(datetime.fromtimestamp(timestamp_ms / 1000, UTC))


def topic_frame(
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    timestamp_ms: int | None,
    schema: str,
    value: dict[str, Any],
    index: int | None = None,
) -> dict[str, Any]:
    """One ``/ws/topics`` frame: where the record sits in Kafka, and its decoded value.

    ``index`` is the reading's place in a batch record (readings of one batch share
    topic, partition and offset); a record that is not a batch has none.
    """
    frame = {
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "key": kafka_key(key),
        "timestamp": kafka_timestamp(timestamp_ms),
        "schema": schema,
        "value": value,
    }
    if index is not None:
        frame["index"] = index
    return frame


def dumps(payload: Any) -> str:
    """Compact, strict JSON text (the payload must already be :func:`jsonable`)."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
