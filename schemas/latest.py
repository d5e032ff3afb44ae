"""The latest values of a device in Redis: the one place that spells their shape.

``webscada:latest:{device_id}`` is a hash with one field per metric (its value
as a decimal string), ``ts`` (the device time of the newest reading, ISO-8601
UTC) and ``_ts_us`` (the same time in µs since 1970, what writers compare),
``protocol``, and from the newest reading that carried them
``application_id``, ``status``, ``gateway_id``, ``signal_strength``,
``battery_level``, ``snr`` and ``location_lat``/``location_lon``.
``webscada:latest:{device_id}:times`` holds, per metric, the device time of the
value shown (µs since 1970): a metric last reported an hour ago keeps its own time while newer
readings of other metrics move ``ts``. Both expire together (TTL 300 s by
default, refreshed on every write). Other tools (Grafana, scripts) may read
them directly.
"""

from __future__ import annotations

from typing import Any

from schemas.batch import iso_micros

__all__ = ["LATEST_KEY", "NUMERIC_METADATA", "TEXT_FIELDS", "TIMES_KEY", "TS_MICROS", "latest_view",
           "metric_names"]

LATEST_KEY = "webscada:latest:{device_id}"
TIMES_KEY = "webscada:latest:{device_id}:times"
# Hash fields that are text; every other field is a number.
TEXT_FIELDS = frozenset({"ts", "protocol", "application_id", "status", "gateway_id"})
# the newest reading's time in µs: the writers' to compare, not shown (no metric name
# starts with an underscore)
TS_MICROS = "_ts_us"
# numeric metadata fields of the hash (reading metadata name -> hash field)
NUMERIC_METADATA = {"signal_strength": "signal_strength", "battery_level": "battery_level",
                    "snr": "snr", "lat": "location_lat", "lon": "location_lon"}
_METADATA = frozenset({*NUMERIC_METADATA.values(), "gateway_id"})


def latest_view(fields: dict[str, str], times: dict[str, str] | None = None) -> dict[str, Any]:
    """The hash as JSON-ready values: numbers as floats, text fields as text, and (when the
    times hash is given) ``times``: each metric's own device time."""
    out: dict[str, Any] = {}
    for name, raw in fields.items():
        if name == TS_MICROS:
            continue
        if name in TEXT_FIELDS:
            out[name] = raw
            continue
        try:
            out[name] = float(raw)
        except ValueError:
            out[name] = raw  # a field some writer stored as text; pass it through untouched
    if times is not None:
        out["times"] = {name: _iso(at) for name, at in times.items() if name in fields}
    return out


def _iso(micros: str) -> str:
    """A times-hash value (µs since 1970) as ISO-8601 UTC; other text as it is."""
    try:
        return iso_micros(int(micros))
    except (ValueError, OverflowError):
        return micros


def metric_names(fields: dict[str, str]) -> list[str]:
    """The metrics of a latest hash (every field that is not envelope or metadata)."""
    return [name for name in fields
            if name not in TEXT_FIELDS and name not in _METADATA and name != TS_MICROS]
