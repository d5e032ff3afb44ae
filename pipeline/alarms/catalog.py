"""Rule CRUD and alarm listings in PostgreSQL, for the API.

Rules are soft-deleted (``deleted_at``) so that their alarms and history keep
their rule. Every write bumps ``updated_at``, which is how the alarm engine
notices a change without a restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.alarms.rules import AlarmRule
from pipeline.alarms.store import AlarmStore, rule_from_row
from schemas.records import iso_utc

__all__ = ["AlarmFilter", "RuleCatalog", "alarm_json", "event_json"]

_RULE_COLUMNS = ("name", "device_id", "application_id", "metric", "operator", "threshold", "deadband",
                 "for_seconds", "off_delay_seconds", "severity", "enabled", "notify_emails",
                 "notify_webhooks", "notify_sms", "notify_throttle_seconds")

_ALARM_SELECT = """
SELECT a.id, a.rule_id, r.name AS rule_name, a.device_id, a.metric, a.state, a.severity, a.value,
       a.message, a.raised_at, a.acked_at, a.acked_by, a.cleared_at, a.cleared_by, a.clear_value,
       a.shelved_until, a.shelved_by
FROM alarms a JOIN alarm_rules r ON r.id = a.rule_id
"""


def _iso(value: Any) -> Any:
    return iso_utc(value) if value is not None else None


def alarm_json(row: dict[str, Any]) -> dict[str, Any]:
    """An alarm as the API shows it."""
    out = dict(row)
    out["id"], out["rule_id"] = str(row["id"]), str(row["rule_id"])
    for name in ("raised_at", "acked_at", "cleared_at", "shelved_until"):
        out[name] = _iso(row[name])
    return out


def event_json(row: dict[str, Any]) -> dict[str, Any]:
    return {"event": row["event"], "state": row["state"], "at": _iso(row["at"]), "by": row["by"],
            "value": row["value"], "message": row["message"]}


@dataclass(frozen=True, slots=True)
class AlarmFilter:
    """What ``GET /api/alarms`` selects; empty tuples select everything."""

    states: tuple[str, ...] = ()
    severities: tuple[str, ...] = ()
    device_id: str | None = None
    rule_id: str | None = None
    limit: int = 100
    offset: int = 0


class RuleCatalog:
    """Rule and alarm queries for the API (shares :class:`AlarmStore`'s pool and error mapping)."""

    def __init__(self, store: AlarmStore) -> None:
        self.store = store

    @staticmethod
    def _values(rule: AlarmRule) -> list[Any]:
        values = [getattr(rule, name) for name in _RULE_COLUMNS]
        return [list(v) if isinstance(v, tuple) else v for v in values]

    async def create(self, rule: AlarmRule) -> AlarmRule:
        columns = ", ".join(_RULE_COLUMNS)
        marks = ", ".join(["%s"] * len(_RULE_COLUMNS))
        rows = await self.store.query(
            f"INSERT INTO alarm_rules ({columns}) VALUES ({marks}) RETURNING *", self._values(rule))
        return rule_from_row(rows[0])

    async def get(self, rule_id: str) -> AlarmRule | None:
        rows = await self.store.query(
            "SELECT * FROM alarm_rules WHERE id = %s AND deleted_at IS NULL", (rule_id,))
        return rule_from_row(rows[0]) if rows else None

    async def all(self) -> list[AlarmRule]:
        return await self.store.rules()

    async def update(self, rule: AlarmRule) -> AlarmRule | None:
        assignments = ", ".join(f"{name} = %s" for name in _RULE_COLUMNS)
        rows = await self.store.query(
            f"UPDATE alarm_rules SET {assignments}, updated_at = now()"
            " WHERE id = %s AND deleted_at IS NULL RETURNING *", [*self._values(rule), rule.id])
        return rule_from_row(rows[0]) if rows else None

    async def delete(self, rule_id: str) -> bool:
        rows = await self.store.query(
            "UPDATE alarm_rules SET deleted_at = now(), updated_at = now(), enabled = false"
            " WHERE id = %s AND deleted_at IS NULL RETURNING id", (rule_id,))
        return bool(rows)

    async def alarms(self, where: AlarmFilter) -> list[dict[str, Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        for column, values in (("a.state", where.states), ("a.severity", where.severities)):
            if values:
                clauses.append(f"{column} = ANY(%s)")
                params.append(list(values))
        for column, value in (("a.device_id", where.device_id), ("a.rule_id", where.rule_id)):
            if value is not None:
                clauses.append(f"{column} = %s")
                params.append(value)
        sql = _ALARM_SELECT + (" WHERE " + " AND ".join(clauses) if clauses else "")
        sql += " ORDER BY a.raised_at DESC, a.id LIMIT %s OFFSET %s"
        rows = await self.store.query(sql, [*params, where.limit, where.offset])
        return [alarm_json(row) for row in rows]

    async def alarm(self, alarm_id: str, *, history: bool = False) -> dict[str, Any] | None:
        rows = await self.store.query(_ALARM_SELECT + " WHERE a.id = %s", (alarm_id,))
        if not rows:
            return None
        alarm = alarm_json(rows[0])
        if history:
            events = await self.store.query(
                "SELECT event, state, at, by, value, message FROM alarm_events WHERE alarm_id = %s"
                " ORDER BY id", (alarm_id,))
            alarm["history"] = [event_json(row) for row in events]
        return alarm
