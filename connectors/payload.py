"""The JSON body devices send (docs/design.md, "Device-facing interfaces") turned into a typed reading.

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
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any, NamedTuple

from connectors._fields import MAX_ID_CHARS, RejectedField, metadata_fields, metric_fields, quick_fields
from connectors._json import loads
from connectors._values import clip, describe, kind, parse_timestamp, timestamp_micros
from connectors.errors import (
    BadDeviceIdError,
    BadMessageIdError,
    BadTimestampError,
    NotAnObjectError,
    PayloadError,
    PayloadTooLargeError,
)
from connectors.reading import ReadingRow
from schemas.batch import to_micros
from schemas.records import (
    APPLICATION_ID_PATTERN,
    DEVICE_ID_PATTERN,
    PROTOCOLS,
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
# Namespace of derived message ids; changing it would change every derived id.
_MESSAGE_NAMESPACE = uuid.UUID("6f0f3a52-3c55-5e7e-9d7b-2a1c4b8e9d01")
_NAMESPACE_SHA1 = hashlib.sha1(_MESSAGE_NAMESPACE.bytes, usedforsecurity=False)
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}
_new_row = tuple.__new__  # a ReadingRow without NamedTuple's Python-level __new__
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# Device ids that passed the rule, so the regular expression runs once per device and process.
_GOOD_DEVICE_IDS: set[str] = set()
_MAX_REMEMBERED = 100_000



class ParsedReading(NamedTuple):
    """The outcome of parsing one device payload (a tuple: built once per message, cheaply).

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
        details["device_id"] = device_id[:MAX_ID_CHARS]
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


@cache
def _max_future_skew_s() -> float:
    """How far ahead of its arrival a device's clock may be: the setting the validate
    agent keeps too (``WEBSCADA_MAX_FUTURE_SKEW_S``, 300 s by default)."""
    from pipeline.settings import Settings

    return Settings().max_future_skew_s


def parse_reading(
    payload: bytes,
    *,
    device_id: str,
    protocol: str,
    received_at: datetime,
    message_id: str | None = None,
    application_id: str | None = None,
    max_future_skew_s: float | None = None,
) -> ParsedReading:
    """Parse a device's JSON body.

    ``message_id`` is used when the payload has no ``messageId``; without
    either, a stable id is derived (see :func:`derive_message_id`).
    ``application_id``, when given, wins over the payload's ``applicationId``.
    Raises :class:`PayloadError` when the payload as a whole is unusable
    (:func:`reading_from_object` says which times are accepted).
    """
    return reading_from_object(
        load_object(payload), payload=payload, device_id=device_id, protocol=protocol,
        received_at=received_at, message_id=message_id, application_id=application_id,
        max_future_skew_s=max_future_skew_s,
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
    max_future_skew_s: float | None = None,
) -> ParsedReading:
    """Build the reading from an already decoded JSON object.

    For connectors that take protocol-specific keys out of the object first
    (e.g. GSM's ``imei``/``csq``); ``payload`` is still the original bytes.
    ``max_future_skew_s``: how far ahead of ``received_at`` the device time may be
    (default: the ``max_future_skew_s`` setting).
    """
    if max_future_skew_s is None:
        max_future_skew_s = _max_future_skew_s()
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
    if ts is not None and not 0 <= ts <= to_micros(received_at) + max_future_skew_s * 1_000_000:
        # The one accepted range of device time, refused here so that a device hears it
        # (422 / a dead letter naming the field) instead of the stores disagreeing later.
        raise BadTimestampError(
            f"timestamp {clip(repr(stamp))} is before 1970" if ts < 0 else
            f"timestamp {clip(repr(stamp))} is more than {max_future_skew_s:g} s ahead of the"
            " time it was received")
    if "messageId" in obj:
        message_id = _message_id(obj["messageId"])
    elif message_id is not None:
        message_id = _message_id(message_id)
    else:
        message_id = derive_message_id(device_id, payload, received_at if ts is None else None)

    rejected: list[RejectedField] = []
    if application_id is None and "applicationId" in obj:
        app = obj["applicationId"]
        if isinstance(app, str) and APPLICATION_ID_PATTERN.fullmatch(app):
            application_id = app
        elif app is not None:
            rejected.append(RejectedField(
                "applicationId", f"{describe(app)} is not 1 to 128 letters, digits, '_', '.', ':'"
                " or '-', starting with a letter or digit"
            ))
    quick = quick_fields(obj)
    if quick is not None:
        metrics, meta, gateway_id, extra = quick
        status = None
    else:
        metrics, status = metric_fields(obj, rejected)
        meta, gateway_id, extra = metadata_fields(obj.get("metadata"), rejected)
    row = None
    if metrics:
        received = (received_at - _EPOCH) // _MICROSECOND
        row = _new_row(ReadingRow, (device_id, protocol, received if ts is None else ts, received,
                                    message_id, application_id, metrics, status, meta, gateway_id,
                                    extra))
    return ParsedReading(device_id, message_id, bytes(payload), row, tuple(rejected))


def derive_message_id(device_id: str, payload: bytes, received_at: datetime | None) -> str:
    """A UUID (version 5) over the device id and the payload bytes.

    Identical bytes give the identical id, so a redelivery is recognised as the
    same reading. Pass ``received_at`` when the payload carries no timestamp:
    then two identical bodies sent at different times are different readings.
    """
    digest = _NAMESPACE_SHA1.copy()
    digest.update(device_id.encode("utf-8"))
    digest.update(b"\0")
    digest.update(payload)
    if received_at is not None:
        digest.update(b"\0" + iso_utc(received_at).encode("ascii"))
    text = digest.hexdigest()
    # What str(uuid.UUID(bytes=digest[:16], version=5)) makes of it, without the object:
    # version nibble 5, variant bits 10.
    return (f"{text[:8]}-{text[8:12]}-5{text[13:16]}-{_VARIANT[text[16]]}{text[17:20]}-"
            f"{text[20:32]}")


def _message_id(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    elif isinstance(value, float) and value.is_integer() and abs(value) >= 2**63:
        # orjson reads an integer beyond 64 bits as a float: its digits are gone
        raise BadMessageIdError(
            "messageId must be a string of 1 to 128 characters or an integer of at most"
            " 64 bits, got a larger integer")
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_CHARS:
        raise BadMessageIdError(
            f"messageId must be a string of 1 to {MAX_ID_CHARS} characters,"
            f" got {describe(value)}"
        )
    return value
