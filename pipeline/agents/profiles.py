"""Device profiles (per metric: unit, min, max) and the range check the validate agent applies."""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

__all__ = ["MetricLimits", "ProfileCache", "RecentIds", "limits_from_json", "split_metrics"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MetricLimits:
    unit: str | None = None
    min: float | None = None
    max: float | None = None

    def violation(self, value: float) -> str | None:
        if self.min is not None and value < self.min:
            return f"{value!r} is below the minimum {self.min!r}"
        if self.max is not None and value > self.max:
            return f"{value!r} is above the maximum {self.max!r}"
        return None


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def limits_from_json(metrics: Mapping[str, Any]) -> dict[str, MetricLimits]:
    """A profile's ``metrics`` JSON as typed limits; malformed entries are ignored (and logged)."""
    limits: dict[str, MetricLimits] = {}
    for name, spec in metrics.items():
        if not isinstance(spec, Mapping):
            log.warning("profile entry for %r is not an object: %r", name, spec)
            continue
        unit = spec.get("unit")
        limits[name] = MetricLimits(unit=unit if isinstance(unit, str) else None,
                                    min=_number(spec.get("min")), max=_number(spec.get("max")))
    return limits


def split_metrics(metrics: Mapping[str, float], limits: Mapping[str, MetricLimits]
                  ) -> tuple[dict[str, float], dict[str, str]]:
    """``metrics`` without the out-of-range ones (maybe empty), and why each went."""
    rejected: dict[str, str] = {}
    for name, value in metrics.items():
        bound = limits.get(name)
        why = bound.violation(value) if bound else None
        if why:
            rejected[name] = why
    if not rejected:
        return dict(metrics), {}
    return {name: value for name, value in metrics.items() if name not in rejected}, rejected


class ProfileCache:
    """Each device's metric limits (and the set of known devices), refreshed from PostgreSQL.

    ``refresh()`` runs on a timer; when PostgreSQL is down the last good copy
    stays in use, so validation never stalls on it.
    """

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self.limits: dict[str, dict[str, MetricLimits]] = {}
        self.known_devices: set[str] = set()
        self.loaded = False

    async def refresh(self) -> None:
        try:
            async with await psycopg.AsyncConnection.connect(self._conninfo, connect_timeout=3) as conn:
                cur = await conn.execute(
                    "SELECT d.id, p.metrics FROM devices d LEFT JOIN device_profiles p ON p.id = d.profile_id"
                )
                rows = await cur.fetchall()
        except psycopg.Error as exc:
            log.warning("device profiles not refreshed (keeping the last copy): %s", exc)
            return
        self.known_devices = {row[0] for row in rows}
        self.limits = {row[0]: limits_from_json(row[1]) for row in rows if row[1]}
        self.loaded = True


class RecentIds:
    """The last ``size`` reading identities passed on: a repeat within that window is a duplicate.

    A reading's identity is ``(device_id, message_id)``: devices may count their
    message ids from 1, so ids are never compared across devices. Only readings
    that went on to ``telemetry.valid`` are remembered, so a reading replayed
    from the DLQ after a fix is not mistaken for a duplicate.
    """

    def __init__(self, size: int = 200_000) -> None:
        self._size = size
        self._ids: OrderedDict[Hashable, None] = OrderedDict()

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._ids

    def remember(self, message_id: Hashable) -> None:
        self._ids[message_id] = None
        self._ids.move_to_end(message_id)
        if len(self._ids) > self._size:
            self._ids.popitem(last=False)

    def known(self, keys: Iterable[Hashable]) -> int:
        """How many of the distinct ``keys`` are in the window."""
        return len(self._ids.keys() & set(keys))

    def remember_all(self, keys: Sequence[Hashable]) -> None:
        """:meth:`remember` each of ``keys`` in turn (a whole batch in a few C calls)."""
        ids = self._ids
        if ids.keys().isdisjoint(keys):
            ids.update(dict.fromkeys(keys))
        else:
            for key in keys:
                ids[key] = None
                ids.move_to_end(key)
        while len(ids) > self._size:
            ids.popitem(last=False)
