"""Device profiles (per metric: unit, min, max) and the range check the validate agent applies."""

from __future__ import annotations

import logging
import math
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
    """Each device's metric limits, the set of known devices and their applications,
    refreshed from PostgreSQL.

    ``refresh()`` runs on a timer; when PostgreSQL is down the last good copy
    stays in use, so validation never stalls on it.
    """

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self.limits: dict[str, dict[str, MetricLimits]] = {}
        self.known_devices: set[str] = set()
        # the application each registered device belongs to: the registry wins over readings
        self.applications: dict[str, str] = {}
        self.loaded = False

    async def refresh(self) -> None:
        try:
            async with await psycopg.AsyncConnection.connect(self._conninfo, connect_timeout=3) as conn:
                cur = await conn.execute(
                    "SELECT d.id, p.metrics, d.application_id FROM devices d"
                    " LEFT JOIN device_profiles p ON p.id = d.profile_id"
                )
                rows = await cur.fetchall()
        except psycopg.Error as exc:
            log.warning("device profiles not refreshed (keeping the last copy): %s", exc)
            return
        self.known_devices = {row[0] for row in rows}
        self.limits = {row[0]: limits_from_json(row[1]) for row in rows if row[1]}
        self.applications = {row[0]: row[2] for row in rows if row[2] is not None}
        self.loaded = True


class RecentIds:
    """The reading identities passed on lately: a repeat within that window is a duplicate.

    A reading's identity is ``(device_id, message_id)``: devices may count their
    message ids from 1, so ids are never compared across devices. Only readings
    that went on to ``telemetry.valid`` are remembered, so a reading replayed
    from the DLQ after a fix is not mistaken for a duplicate.

    The window holds at least the last ``size`` identities and at most twice that:
    two generations of plain dicts, the older dropped whole when the newer is full.
    Plain dicts take a batch of keys in one C call and forget a generation at once,
    where an ordered dict paid for every key it moved or evicted.
    """

    def __init__(self, size: int = 200_000) -> None:
        self._size = max(1, size)
        self._new: dict[Hashable, None] = {}
        self._old: dict[Hashable, None] = {}

    def __contains__(self, key: object) -> bool:
        return key in self._new or key in self._old

    def remember(self, key: Hashable) -> None:
        self._new[key] = None
        if len(self._new) >= self._size:
            self._old, self._new = self._new, {}

    def known(self, keys: Iterable[Hashable]) -> int:
        """How many of the distinct ``keys`` are in the window."""
        distinct = set(keys)
        found = self._new.keys() & distinct
        if self._old:
            found |= self._old.keys() & distinct
        return len(found)

    def remember_all(self, keys: Sequence[Hashable]) -> None:
        """:meth:`remember` each of ``keys`` (a whole batch in a few C calls)."""
        self._new.update(dict.fromkeys(keys))
        if len(self._new) >= self._size:
            self._old, self._new = self._new, {}
