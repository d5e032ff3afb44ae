"""The body an HTTP or WebSocket device sends, checked all-or-nothing (pure; no I/O).

One reading (the MQTT device body of :mod:`connectors.payload`) or a JSON array
of them. Unlike MQTT, which keeps a reading's valid metrics and dead-letters the
rest, a device here gets an answer, so any bad value refuses the whole body and
:class:`InvalidReadings` names every bad field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson

from api.errors import InvalidField
from api.jsonbody import parse_json
from connectors._json import loads
from connectors._values import kind
from connectors.errors import BadMessageIdError, BadTimestampError, PayloadError
from connectors.payload import load_object, reading_from_object
from connectors.reading import ReadingRow

__all__ = ["FieldError", "InvalidReadings", "parse_readings"]

# Keys a device does not decide here: the registered application, and the header's id.
_APPLICATION_KEY = "applicationId"
_MESSAGE_KEY = "messageId"
_FIELD_OF_ERROR = {BadTimestampError: "timestamp", BadMessageIdError: _MESSAGE_KEY}
_ESCAPED_NUL = b"\\u0000"


@dataclass(frozen=True, slots=True)
class FieldError:
    """One bad value: the reading's index in an array (None for a single reading), its
    path in the reading and why it is bad."""

    index: int | None
    field: str
    message: str

    @property
    def path(self) -> str:
        """``telemetry.mode``, ``[2].timestamp``, ``[1]`` (the item itself) or ``body``."""
        if self.index is None:
            return self.field or "body"
        return f"[{self.index}]" + (f".{self.field}" if self.field else "")


class InvalidReadings(ValueError):
    """The body cannot be accepted; ``errors`` lists every reason (at least one)."""

    def __init__(self, errors: list[FieldError], code: str = "invalid_payload") -> None:
        super().__init__("; ".join(f"{e.path}: {e.message}" for e in errors))
        self.errors = errors
        self.code = code

    def detail(self) -> dict[str, Any]:
        """The JSON ``detail`` of a 422: the first bad field, then all of them."""
        first = self.errors[0]
        return {
            "field": first.path,
            "message": first.message,
            "errors": [{"index": e.index, "field": e.field, "message": e.message}
                       for e in self.errors],
        }


def parse_readings(
    body: bytes,
    *,
    device_id: str,
    protocol: str,
    received_at: datetime,
    application_id: str | None,
    idempotency_key: str | None = None,
    max_readings: int = 100,
) -> list[ReadingRow]:
    """Every reading of ``body`` (as rows for one batch record), or :class:`InvalidReadings`.

    ``idempotency_key`` becomes the message id (``{key}-{i}`` in an array) and wins
    over a ``messageId`` of the body. Without either, the id is derived from the
    reading's bytes (and ``received_at`` when it carries no timestamp).

    Item ``i`` of an array counts as received at ``received_at`` plus ``i`` µs, so
    items without a timestamp of their own (which take the time they were received)
    get distinct times: no two readings of one request are one point in InfluxDB.
    """
    items, single = _items(body, max_readings)
    if _ESCAPED_NUL in body:  # rare: only then are the strings walked
        _refuse_nul(items)
    readings: list[ReadingRow] = []
    errors: list[FieldError] = []
    code: str | None = None
    for index, item in enumerate(items):
        at = None if single else index
        if not isinstance(item, dict):
            errors.append(FieldError(at, "", f"a reading must be a JSON object, not {kind(item)}"))
            code = code or "not_an_object"
            continue
        obj = {k: v for k, v in item.items() if k != _APPLICATION_KEY}
        message_id = None
        if idempotency_key is not None:
            obj.pop(_MESSAGE_KEY, None)
            message_id = idempotency_key if single else f"{idempotency_key}-{index}"
        # An item's own bytes matter only to derive its message id (HTTP dead-letters
        # nothing: a bad body is refused whole), so they are written out only for that.
        payload = body if single or message_id is not None or _MESSAGE_KEY in obj else _canonical(item)
        try:
            parsed = reading_from_object(
                obj, payload=payload, device_id=device_id, protocol=protocol,
                received_at=received_at if single else received_at + timedelta(microseconds=index),
                message_id=message_id, application_id=application_id,
            )
        except PayloadError as exc:
            field = next((f for t, f in _FIELD_OF_ERROR.items() if isinstance(exc, t)), "")
            errors.append(FieldError(at, field, str(exc)))
            code = code or exc.code
            continue
        errors.extend(FieldError(at, f.name, f.reason) for f in parsed.rejected)
        if parsed.row is None:
            if not parsed.rejected:
                errors.append(FieldError(at, "telemetry", "the reading has no metric"))
            code = code or "no_valid_metric"
        else:
            readings.append(parsed.row)
    if errors:
        raise InvalidReadings(errors, code or "rejected_fields")
    return readings


def _refuse_nul(items: list[Any]) -> None:
    """A NUL in any key or string refuses the body, as on every other route of the API
    (:mod:`api.jsonbody`): PostgreSQL cannot store it. A raw NUL is not JSON already."""
    stack: list[Any] = list(items)
    while stack:
        value = stack.pop()
        if isinstance(value, str) and "\x00" in value:
            raise InvalidReadings([FieldError(None, "body", "a string holds a NUL character")])
        if isinstance(value, dict):
            stack.extend(value)
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


def _canonical(item: dict[str, Any]) -> bytes:
    """An array item's own bytes, keys sorted, from which its message id is derived (the
    same item gives the same id within a process's duplicate window)."""
    try:
        return orjson.dumps(item, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # what orjson cannot write (an integer beyond 64 bits) json can
        return json.dumps(item, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _why(body: bytes, exc: PayloadError) -> str:
    """What is wrong with the body, without naming an exception class: where the JSON
    reader itself gave up (nesting too deep, an integer of thousands of digits), the
    message of the API's own body reader (:func:`api.jsonbody.parse_json`)."""
    cause = exc.__cause__
    if isinstance(cause, RecursionError) or (isinstance(cause, ValueError) and not isinstance(
            cause, json.JSONDecodeError | UnicodeDecodeError)):
        try:
            parse_json(body)
        except InvalidField as refused:
            return f"body is not JSON: {refused.detail['message']}"
        return "body is not JSON"
    return str(exc)


def _items(body: bytes, max_readings: int) -> tuple[list[Any], bool]:
    if body.lstrip()[:1] != b"[":
        try:
            return [load_object(body)], True
        except PayloadError as exc:
            raise InvalidReadings([FieldError(None, "body", _why(body, exc))], exc.code) from exc
    try:
        value = loads(body, what="body")
    except PayloadError as exc:
        raise InvalidReadings([FieldError(None, "body", _why(body, exc))], exc.code) from exc
    if not isinstance(value, list):  # e.g. "[1] x" is caught above; kept for safety
        raise InvalidReadings([FieldError(None, "body", "body must be a reading or an array")],
                              "not_an_object")
    if not value:
        raise InvalidReadings([FieldError(None, "body", "the array holds no reading")])
    if len(value) > max_readings:
        raise InvalidReadings([FieldError(
            None, "", f"the array holds {len(value)} readings; at most {max_readings} per request")])
    return value, False
