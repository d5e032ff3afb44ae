"""Typed views of decoded JSON values, shared by the payload parsers.

Each helper either returns the value in the wanted type or says, in words that
name the bad value, why it cannot.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

from connectors.errors import BadTimestampError

__all__ = ["as_number", "clip", "describe", "kind", "parse_timestamp", "timestamp_micros"]

# Below this an epoch number is seconds (1e11 s is the year 5138; 1e11 ms is 1973).
_SECONDS_BELOW = 1e11
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_MIN_MICROS = (datetime.min.replace(tzinfo=UTC) - _EPOCH) // _MICROSECOND
_MAX_MICROS = (datetime.max.replace(tzinfo=UTC) - _EPOCH) // _MICROSECOND


def parse_timestamp(value: object) -> datetime:
    """Epoch milliseconds (or seconds when below 1e11) or ISO-8601 (no zone means UTC)."""
    return _EPOCH + timedelta(microseconds=timestamp_micros(value))


def timestamp_micros(value: object) -> int:
    """:func:`parse_timestamp` as integer microseconds since 1970 (no datetime on the way
    for epoch numbers); raises :class:`BadTimestampError` for what it refuses."""
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except (ValueError, OverflowError) as exc:
            raise BadTimestampError(
                f"timestamp {clip(value)!r} is not an ISO-8601 time: {exc}"
            ) from exc
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        micros = (moment - _EPOCH) // _MICROSECOND
        if not _MIN_MICROS <= micros <= _MAX_MICROS:  # an offset moved it past year 1 or 9999
            raise BadTimestampError(
                f"timestamp {clip(value)!r} is not an ISO-8601 time: date value out of range")
        return micros
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadTimestampError(
            f"timestamp must be ISO-8601 or epoch milliseconds, got {describe(value)}"
        )
    try:
        if not math.isfinite(value) or value < 0:
            raise BadTimestampError(f"timestamp {clip(repr(value))} is not a time after 1970")
        micros = round(value * 1_000_000) if value < _SECONDS_BELOW else round(value * 1000)
    except OverflowError as exc:
        raise BadTimestampError(
            f"timestamp {clip(repr(value))} is beyond the year 9999"
        ) from exc
    if micros > _MAX_MICROS:
        raise BadTimestampError(f"timestamp {clip(repr(value))} is beyond the year 9999")
    return micros


def as_number(value: object, *, allow_bool: bool) -> tuple[float | None, str]:
    """The value as a finite float, or None and why not."""
    if isinstance(value, bool):
        return (float(value), "") if allow_bool else (None, f"{describe(value)} is not a number")
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:
            return None, "integer is too large for a double"
        if not math.isfinite(number):
            return None, f"{value!r} is not a finite number"
        return number, ""
    return None, f"{describe(value)} is not a number"


def kind(value: object) -> str:
    """The JSON type name of a decoded value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "number"


def describe(value: object) -> str:
    """A short description naming the bad value: ``string 'on'``, ``array``, ``null``."""
    name = kind(value)
    if name in ("string", "number", "boolean"):
        text = json.dumps(value) if name == "boolean" else repr(value)
        return f"{name} {clip(text)}"
    return name


def clip(text: str, limit: int = 64) -> str:
    """``text`` cut to ``limit`` characters, so a message never carries a whole payload."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
