"""The metrics and metadata of a device body, each dropped value named with its reason.

Shared by the payload parsers (:mod:`connectors.payload`). :func:`quick_fields`
reads the common case in one pass; anything unusual goes through
:func:`metric_fields` and :func:`metadata_fields`, which say what they drop.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from connectors._values import as_number, clip, describe
from schemas.records import METRIC_NAME_PATTERN, RESERVED_METRICS

__all__ = ["ENVELOPE", "MAX_ID_CHARS", "RejectedField", "metadata_fields", "metric_fields",
           "quick_fields"]

MAX_ID_CHARS = 128
_MAX_STATUS_CHARS = 256
# Names that passed the rules, so the regular expression runs once per name and process,
# not once per reading (devices send the same few names in every message).
_GOOD_METRIC_NAMES: set[str] = set()
_MAX_REMEMBERED = 100_000
# Top-level keys that are never metrics.
ENVELOPE = frozenset({"timestamp", "telemetry", "metadata", "messageId", "applicationId",
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


_INT_RANGE = range(-(2**63), 2**64)  # the integers orjson reads as int


def quick_fields(
    obj: Mapping[str, Any],
) -> tuple[dict[str, float], dict[str, float], str | None, dict[str, str]] | None:
    """Metrics and metadata of a payload with nothing unusual in them, in one pass; None for
    anything else (a status, a rejected value, a location, a name never seen before ...), which
    then goes through :func:`metric_fields` and :func:`metadata_fields`. Where it answers, it answers
    exactly what they would (tested): it only skips their bookkeeping for the common case."""
    metrics: dict[str, float] = {}
    if "telemetry" in obj:
        block = obj["telemetry"]
        if type(block) is not dict:
            return None
        for name, value in block.items():
            kind_of = type(value)
            if kind_of is float:
                if value - value != 0.0:  # inf or nan
                    return None
            elif kind_of is int or kind_of is bool:
                if value not in _INT_RANGE:
                    return None
                value = float(value)
            else:
                return None
            if name not in _GOOD_METRIC_NAMES or name in metrics:
                return None
            metrics[name] = value
    for name, value in obj.items():
        if name in ENVELOPE:
            continue
        kind_of = type(value)
        if kind_of is float:
            if value - value != 0.0:
                return None
        elif kind_of is int or kind_of is bool:
            if value not in _INT_RANGE:
                return None
            value = float(value)
        else:
            return None
        if name not in _GOOD_METRIC_NAMES or name in metrics:
            return None
        metrics[name] = value
    block = obj.get("metadata")
    if block is None:
        return metrics, _NO_META, None, _NO_EXTRA
    if type(block) is not dict:
        return None
    meta: dict[str, float] = {}
    gateway_id: str | None = None
    extra: dict[str, str] = {}
    for key, value in block.items():
        if value is None:
            continue
        field = _META_NUMBERS.get(key)
        if field is not None:
            kind_of = type(value)
            if kind_of is float:
                if value - value != 0.0:
                    return None
            elif kind_of is int:
                if value not in _INT_RANGE:
                    return None
                value = float(value)
            else:
                return None
            meta[field] = value
        elif key in _META_STRINGS:
            if type(value) is not str or not 0 < len(value) <= MAX_ID_CHARS:
                return None
            gateway_id = value
        elif key != "location" and type(value) is str:
            extra[key] = value
        else:
            return None
    return metrics, meta, gateway_id, extra


def metric_fields(
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
    status = _take_metrics(obj, "", metrics, status, rejected, skip=ENVELOPE)
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


def metadata_fields(
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
            if isinstance(value, str) and 0 < len(value) <= MAX_ID_CHARS:
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
