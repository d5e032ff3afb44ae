"""The JSON body devices send (DESIGN section 6) turned into a typed reading.

Two shapes are accepted::

    {"timestamp": "2024-05-01T12:00:00Z" | 1714564800000,
     "telemetry": {"temperature": 21.5, "pump": true, "status": "ok"},
     "metadata": {"signalStrength": -67, "batteryLevel": 88, "snr": 7.5,
                  "gatewayId": "gw-1", "location": {"lat": 52.1, "lon": 4.3}},
     "messageId": "m-1", "applicationId": "plant-a"}

    {"temperature": 21.5, "humidity": 40, "timestamp": 1714564800000}

Numbers become metrics, booleans 0/1, a string ``status`` the status. Any other
value is dropped and reported as a :class:`RejectedField`; the reading keeps its
valid metrics. Problems with the reading as a whole raise :class:`PayloadError`.

This runs once per device message, so it builds the reading's
:class:`~connectors.reading.ReadingRow` directly (no checked ``Telemetry``
object: every rule of one is checked here on the way, and the validate agent
checks readings again); JSON is read by orjson (:mod:`connectors._json`).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from connectors._json import loads
from connectors._values import as_number, clip, describe, kind, parse_timestamp, timestamp_micros
from connectors.errors import (
    BadDeviceIdError,
    BadMessageIdError,
    NotAnObjectError,
    PayloadError,
    PayloadTooLargeError,
)
from connectors.reading import ReadingRow
from schemas.records import (
    DEVICE_ID_PATTERN,
    METRIC_NAME_PATTERN,
    PROTOCOLS,
    RESERVED_METRICS,
    DeadLetter,
    Telemetry,
    iso_utc,
)

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "ParsedReading",
    "RejectedField",
    "dead_letter_for_error",
    "derive_message_id",
    "load_object",
    "parse_reading",
    "parse_timestamp",
    "reading_from_object",
]

MAX_PAYLOAD_BYTES = 256 * 1024
_MAX_STATUS_CHARS = 256
_MAX_ID_CHARS = 128
# Namespace of derived message ids; changing it would change every derived id.
_MESSAGE_NAMESPACE = uuid.UUID("6f0f3a52-3c55-5e7e-9d7b-2a1c4b8e9d01")
_NAMESPACE_BYTES = _MESSAGE_NAMESPACE.bytes
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# Names that passed the rules, so the regular expression runs once per name and process,
# not once per reading (devices send the same few names in every message).
_GOOD_METRIC_NAMES: set[str] = set()
_GOOD_DEVICE_IDS: set[str] = set()
_MAX_REMEMBERED = 100_000

# Top-level keys that are never metrics.
_ENVELOPE = frozenset({"timestamp", "telemetry", "metadata", "messageId", "applicationId",
                       "deviceId"})
# metadata key -> TelemetryMetadata field; camelCase as devices send it, snake_case accepted.
_META_NUMBERS = {
    "signalStrength": "signal_strength",
    "signal_strength": "signal_strength",
    "batteryLevel": "battery_level",
    "battery_level": "battery_level",
    "snr": "snr",
}
_META_STRINGS = {"gatewayId": "gateway_id", "gateway_id": "gateway_id"}


@dataclass(frozen=True, slots=True)
class RejectedField:
    """A value dropped from a reading: its path in the payload and why."""

    name: str
    reason: str


@dataclass(frozen=True, slots=True)
class ParsedReading:
    """The outcome of parsing one device payload.

    ``row`` is None when no valid metric remained; then the whole reading
    belongs in the DLQ. ``rejected`` lists the values that were dropped.
    """

    device_id: str
    message_id: str
    payload: bytes
    row: ReadingRow | None
    rejected: tuple[RejectedField, ...] = ()

    @property
    def telemetry(self) -> Telemetry | None:
        """The reading as a checked :class:`Telemetry` (built on each access), or None."""
        return None if self.row is None else self.row.telemetry()

    @property
    def reject_code(self) -> str | None:
        """``no_valid_metric``, ``rejected_fields`` or None when nothing was rejected."""
        if self.row is None:
            return "no_valid_metric"
        return "rejected_fields" if self.rejected else None

    def dead_letter(
        self, *, stage: str, source_topic: str, failed_at: datetime | None = None
    ) -> DeadLetter | None:
        """The one DLQ record this reading needs, or None when nothing was rejected."""
        code = self.reject_code
        if code is None:
            return None
        listed = "; ".join(f"{f.name} ({f.reason})" for f in self.rejected)
        if self.row is None:
            reason = "no valid metric in reading" + (f": {listed}" if listed else "")
        else:
            count = len(self.rejected)
            reason = f"dropped {count} field{'s' if count > 1 else ''} from reading: {listed}"
        details = {"code": code, "message_id": self.message_id}
        details.update({f"field.{f.name}": f.reason for f in self.rejected})
        return _dead_letter(
            reason, self.payload, device_id=self.device_id, stage=stage,
            source_topic=source_topic, failed_at=failed_at, details=details,
        )


def dead_letter_for_error(
    error: PayloadError,
    payload: bytes,
    *,
    device_id: str | None,
    stage: str,
    source_topic: str,
    failed_at: datetime | None = None,
) -> DeadLetter:
    """The DLQ record for a payload rejected whole.

    A device id that breaks the id rule is left out (it must not become a key);
    a payload over :data:`MAX_PAYLOAD_BYTES` is kept truncated to that size.
    """
    details = {"code": error.code}
    if len(payload) > MAX_PAYLOAD_BYTES:
        details["truncated_from"] = str(len(payload))
        payload = payload[:MAX_PAYLOAD_BYTES]
    if device_id is not None and not DEVICE_ID_PATTERN.fullmatch(device_id):
        details["device_id"] = device_id[:_MAX_ID_CHARS]
        device_id = None
    return _dead_letter(
        str(error), payload, device_id=device_id, stage=stage, source_topic=source_topic,
        failed_at=failed_at, details=details,
    )


def _dead_letter(
    reason: str,
    payload: bytes,
    *,
    device_id: str | None,
    stage: str,
    source_topic: str,
    failed_at: datetime | None,
    details: Mapping[str, str],
) -> DeadLetter:
    if failed_at is None:
        return DeadLetter(reason=reason, stage=stage, payload=payload, source_topic=source_topic,
                          device_id=device_id, details=details)
    return DeadLetter(reason=reason, stage=stage, payload=payload, source_topic=source_topic,
                      device_id=device_id, failed_at=failed_at, details=details)


def parse_reading(
    payload: bytes,
    *,
    device_id: str,
    protocol: str,
    received_at: datetime,
    message_id: str | None = None,
    application_id: str | None = None,
) -> ParsedReading:
    """Parse a device's JSON body.

    ``message_id`` is used when the payload has no ``messageId``; without
    either, a stable id is derived (see :func:`derive_message_id`).
    ``application_id``, when given, wins over the payload's ``applicationId``.
    Raises :class:`PayloadError` when the payload as a whole is unusable.
    """
    return reading_from_object(
        load_object(payload), payload=payload, device_id=device_id, protocol=protocol,
        received_at=received_at, message_id=message_id, application_id=application_id,
    )


def load_object(payload: bytes) -> dict[str, Any]:
    """Decode a UTF-8 JSON object, or raise :class:`PayloadError` saying where it breaks."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadTooLargeError(
            f"payload is {len(payload)} bytes, more than the {MAX_PAYLOAD_BYTES} allowed"
        )
    value = loads(payload)
    if not isinstance(value, dict):
        raise NotAnObjectError(f"payload is a JSON {kind(value)}, not an object")
    return value


def reading_from_object(
    obj: Mapping[str, Any],
    *,
    payload: bytes,
    device_id: str,
    protocol: str,
    received_at: datetime,
    message_id: str | None = None,
    application_id: str | None = None,
) -> ParsedReading:
    """Build the reading from an already decoded JSON object.

    For connectors that take protocol-specific keys out of the object first
    (e.g. GSM's ``imei``/``csq``); ``payload`` is still the original bytes.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r} is not one of {', '.join(sorted(PROTOCOLS))}")
    if received_at.tzinfo is None:
        raise ValueError(f"received_at {received_at.isoformat()} has no time zone")
    if device_id not in _GOOD_DEVICE_IDS:
        if not isinstance(device_id, str) or not DEVICE_ID_PATTERN.fullmatch(device_id):
            raise BadDeviceIdError(
                f"device id {device_id!r} does not match {DEVICE_ID_PATTERN.pattern}"
            )
        if len(_GOOD_DEVICE_IDS) < _MAX_REMEMBERED:
            _GOOD_DEVICE_IDS.add(device_id)
    stamp = obj.get("timestamp")  # null counts as absent
    ts = None if stamp is None else timestamp_micros(stamp)
    if "messageId" in obj:
        message_id = _message_id(obj["messageId"])
    elif message_id is not None:
        message_id = _message_id(message_id)
    else:
        message_id = derive_message_id(device_id, payload, received_at if ts is None else None)

    rejected: list[RejectedField] = []
    if application_id is None and "applicationId" in obj:
        app = obj["applicationId"]
        if isinstance(app, str) and 0 < len(app) <= _MAX_ID_CHARS:
            application_id = app
        elif app is not None:
            rejected.append(RejectedField(
                "applicationId", f"{describe(app)} is not a string of 1 to 128 characters"
            ))
    metrics, status = _metrics(obj, rejected)
    meta, gateway_id, extra = _metadata(obj.get("metadata"), rejected)
    row = None
    if metrics:
        received = (received_at - _EPOCH) // _MICROSECOND
        row = ReadingRow(device_id, protocol, received if ts is None else ts, received,
                         message_id, application_id, metrics, status, meta, gateway_id, extra)
    return ParsedReading(device_id, message_id, bytes(payload), row, tuple(rejected))


def derive_message_id(device_id: str, payload: bytes, received_at: datetime | None) -> str:
    """A UUID (version 5) over the device id and the payload bytes.

    Identical bytes give the identical id, so a redelivery is recognised as the
    same reading. Pass ``received_at`` when the payload carries no timestamp:
    then two identical bodies sent at different times are different readings.
    """
    name = device_id.encode("utf-8") + b"\0" + bytes(payload)
    if received_at is not None:
        name += b"\0" + iso_utc(received_at).encode("ascii")
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name, usedforsecurity=False).digest()[:16])
    # What uuid.UUID(bytes=..., version=5) makes of it, without building the object.
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    text = digest.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def _message_id(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_ID_CHARS:
        raise BadMessageIdError(
            f"messageId must be a string of 1 to {_MAX_ID_CHARS} characters,"
            f" got {describe(value)}"
        )
    return value


def _metrics(
    obj: Mapping[str, Any], rejected: list[RejectedField]
) -> tuple[dict[str, float], str | None]:
    metrics: dict[str, float] = {}
    status: str | None = None
    if "telemetry" in obj:
        block = obj["telemetry"]
        if isinstance(block, dict):
            status = _take_metrics(block, "telemetry.", metrics, status, rejected)
        else:
            rejected.append(RejectedField("telemetry", f"{describe(block)} is not an object"))
    status = _take_metrics(obj, "", metrics, status, rejected, skip=_ENVELOPE)
    return metrics, status


def _take_metrics(values: Mapping[str, Any], prefix: str, metrics: dict[str, float],
                  status: str | None, rejected: list[RejectedField],
                  skip: frozenset[str] = frozenset()) -> str | None:
    """Add the metrics of ``values`` (but ``skip``) to ``metrics``; returns the status so far."""
    for name, value in values.items():
        if name in skip:
            continue
        # The common case first: a known good name and a finite float (x - x is nan for
        # inf and nan) or a plain int.
        kind_of = type(value)
        if name in _GOOD_METRIC_NAMES and name not in metrics:
            if kind_of is float and value - value == 0.0:
                metrics[name] = value
                continue
            if kind_of is int and -(2**53) <= value <= 2**53:
                metrics[name] = float(value)
                continue
        path = prefix + name
        if name == "status" and isinstance(value, str):
            if status is not None:
                rejected.append(RejectedField(path, "a second status"))
            elif len(value) > _MAX_STATUS_CHARS:
                rejected.append(RejectedField(
                    path, f"status is longer than {_MAX_STATUS_CHARS} characters"
                ))
            else:
                status = value
            continue
        if name in metrics:
            rejected.append(RejectedField(path, f"a second value for metric {name!r}"))
            continue
        if name not in _GOOD_METRIC_NAMES:
            if name in RESERVED_METRICS or not METRIC_NAME_PATTERN.fullmatch(name):
                rejected.append(RejectedField(path, f"{clip(name)!r} is not an allowed name"))
                continue
            if len(_GOOD_METRIC_NAMES) < _MAX_REMEMBERED:
                _GOOD_METRIC_NAMES.add(name)
        number, why = as_number(value, allow_bool=True)
        if number is None:
            rejected.append(RejectedField(path, why))
        else:
            metrics[name] = number
    return status


_NO_META: dict[str, float] = {}
_NO_EXTRA: dict[str, str] = {}


def _metadata(
    block: object, rejected: list[RejectedField]
) -> tuple[dict[str, float], str | None, dict[str, str]]:
    """The metadata block as the batch's ``meta``, ``gateway_id`` and ``extra`` columns.

    The empty dicts returned for a reading without metadata are shared: never mutate them.
    """
    if block is None:
        return _NO_META, None, _NO_EXTRA
    if not isinstance(block, dict):
        rejected.append(RejectedField("metadata", f"{describe(block)} is not an object"))
        return _NO_META, None, _NO_EXTRA
    meta: dict[str, float] = {}
    gateway_id: str | None = None
    extra: dict[str, str] = {}
    for key, value in block.items():
        if value is None:
            continue
        if key in _META_NUMBERS:
            number, why = as_number(value, allow_bool=False)
            if number is None:
                rejected.append(RejectedField(f"metadata.{key}", why))
            else:
                meta[_META_NUMBERS[key]] = number
        elif key in _META_STRINGS:
            if isinstance(value, str) and 0 < len(value) <= _MAX_ID_CHARS:
                gateway_id = value
            else:
                rejected.append(RejectedField(
                    f"metadata.{key}", f"{describe(value)} is not a string of 1 to 128 characters"
                ))
        elif key == "location":
            why = _location(value, meta)
            if why:
                rejected.append(RejectedField(f"metadata.{key}", why))
        elif isinstance(value, str):
            extra[key] = value
        else:
            number, why = as_number(value, allow_bool=True)
            if number is None:
                rejected.append(RejectedField(f"metadata.{key}", why))
            else:
                extra[key] = json.dumps(value)
    return meta, gateway_id, extra


def _location(value: object, meta: dict[str, float]) -> str:
    """Put the location's lat and lon into ``meta``, or say why not."""
    if not isinstance(value, dict):
        return f"{describe(value)} is not an object with lat and lon"
    lat, why_lat = as_number(value.get("lat"), allow_bool=False)
    lon, why_lon = as_number(value.get("lon"), allow_bool=False)
    if lat is None or lon is None:
        return f"lat {why_lat}" if lat is None else f"lon {why_lon}"
    if not (-90.0 <= lat <= 90.0) or not (-180.0 <= lon <= 180.0):
        return f"location ({lat}, {lon}) is out of range"
    meta["lat"], meta["lon"] = lat, lon
    return ""
