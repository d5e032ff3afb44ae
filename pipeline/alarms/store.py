"""Alarm state in PostgreSQL: conditional transitions, the engine's start-up view, the outbox.

Every transition is one SQL statement that changes the alarm only if it is in
the state the transition starts from (and, for the engine's own transitions,
only if no transition of the same (rule, device) already happened at or after
the triggering reading's device time), and records the matching row of
``alarm_events`` in the same statement. A replayed reading therefore changes
nothing and yields no event. ``alarm_events`` doubles as the outbox: a row is
marked published once Kafka acknowledged its ``AlarmEvent``; rows left
unpublished by a crash are relayed later.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from pipeline.alarms.events import AlarmEvent
from pipeline.alarms.rules import AlarmRule
from pipeline.errors import PipelineError

__all__ = [
    "AlarmStore",
    "StoreUnavailable",
    "StoredEvent",
    "Transition",
    "rule_from_row",
]

Key = tuple[str, str]  # (rule id, device id)

_EVENT_COLUMNS = "id, alarm_id, rule_id, device_id, event, state, severity, metric, value, at, by, message"

_RAISE = f"""
WITH raised AS (
    INSERT INTO alarms (rule_id, device_id, metric, state, severity, value, message, raised_ts)
    SELECT %(rule_id)s, %(device_id)s, %(metric)s, 'active_unacked', %(severity)s, %(value)s,
           %(message)s, %(ts)s::timestamptz
    WHERE NOT EXISTS (
            SELECT 1 FROM alarms a WHERE a.rule_id = %(rule_id)s AND a.device_id = %(device_id)s
               AND (a.raised_ts >= %(ts)s::timestamptz OR a.cleared_ts >= %(ts)s::timestamptz))
      AND NOT EXISTS (
            SELECT 1 FROM alarm_shelves s WHERE s.rule_id = %(rule_id)s
               AND s.device_id = %(device_id)s AND s.shelved_until > now())
    ON CONFLICT (rule_id, device_id) WHERE state IN ('active_unacked', 'active_acked') DO NOTHING
    RETURNING *
)
INSERT INTO alarm_events (alarm_id, rule_id, device_id, event, state, severity, metric, value, at, message)
SELECT id, rule_id, device_id, 'raised', state, severity, metric, value, raised_at, message FROM raised
RETURNING {_EVENT_COLUMNS}
"""

_CLEAR_SET = """
    UPDATE alarms SET
        state = CASE state WHEN 'active_unacked' THEN 'cleared_unacked' ELSE 'cleared_acked' END,
        cleared_at = now(), cleared_ts = %(ts)s::timestamptz, cleared_by = %(by)s,
        clear_value = %(value)s, updated_at = now()
"""

_CLEAR_EVENT = f"""
INSERT INTO alarm_events
    (alarm_id, rule_id, device_id, event, state, severity, metric, value, at, by, message)
SELECT id, rule_id, device_id, 'cleared', state, severity, metric, clear_value, cleared_at, cleared_by,
       %(message)s FROM cleared
RETURNING {_EVENT_COLUMNS}
"""

_CLEAR_ACTIVE = f"""
WITH cleared AS ({_CLEAR_SET}
    WHERE rule_id = %(rule_id)s AND device_id = %(device_id)s
      AND state IN ('active_unacked', 'active_acked')
      AND (%(ts)s::timestamptz IS NULL OR raised_ts IS NULL OR raised_ts < %(ts)s::timestamptz)
    RETURNING *)
{_CLEAR_EVENT}
"""

_CLEAR_BY_ID = f"""
WITH cleared AS ({_CLEAR_SET}
    WHERE id = %(id)s AND state IN ('active_unacked', 'active_acked')
    RETURNING *)
{_CLEAR_EVENT}
"""

_ACK = f"""
WITH acked AS (
    UPDATE alarms SET
        state = CASE state WHEN 'active_unacked' THEN 'active_acked' ELSE 'cleared_acked' END,
        acked_at = now(), acked_by = %(by)s, updated_at = now()
    WHERE id = %(id)s AND state IN ('active_unacked', 'cleared_unacked')
    RETURNING *)
INSERT INTO alarm_events
    (alarm_id, rule_id, device_id, event, state, severity, metric, value, at, by, message)
SELECT id, rule_id, device_id, 'acknowledged', state, severity, metric, value, acked_at, acked_by,
       %(message)s FROM acked
RETURNING {_EVENT_COLUMNS}
"""

_SHELVE = f"""
WITH alarm AS (
    UPDATE alarms SET shelved_until = CASE WHEN %(secs)s > 0
                                           THEN now() + make_interval(secs => %(secs)s) END,
                      shelved_by = %(by)s, updated_at = now()
    WHERE id = %(id)s RETURNING *
), shelf AS (
    INSERT INTO alarm_shelves (rule_id, device_id, shelved_until, shelved_by)
    SELECT rule_id, device_id, COALESCE(shelved_until, now()), shelved_by FROM alarm
    ON CONFLICT (rule_id, device_id) DO UPDATE
        SET shelved_until = EXCLUDED.shelved_until, shelved_by = EXCLUDED.shelved_by
)
INSERT INTO alarm_events
    (alarm_id, rule_id, device_id, event, state, severity, metric, value, at, by, message)
SELECT id, rule_id, device_id, CASE WHEN %(secs)s > 0 THEN 'shelved' ELSE 'unshelved' END, state,
       severity, metric, value, now(), shelved_by, %(message)s FROM alarm
RETURNING {_EVENT_COLUMNS}
"""


class StoreUnavailable(PipelineError):
    """PostgreSQL cannot be reached right now; retry later."""


@dataclass(frozen=True, slots=True)
class Transition:
    """A raise or clear the engine wants; the store applies it only if still due."""

    kind: str  # "raise" | "clear"
    rule: AlarmRule
    device_id: str
    value: float | None
    ts: datetime | None  # device time of the triggering reading
    message: str = ""

    @property
    def key(self) -> Key:
        return (self.rule.id, self.device_id)


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An ``alarm_events`` row (``outbox_id``) and the AlarmEvent it publishes."""

    outbox_id: int
    event: AlarmEvent


def rule_from_row(row: dict[str, Any]) -> AlarmRule:
    return AlarmRule(
        id=str(row["id"]), name=row["name"], operator=row["operator"], metric=row["metric"],
        threshold=row["threshold"], deadband=row["deadband"], for_seconds=row["for_seconds"],
        off_delay_seconds=row["off_delay_seconds"], severity=row["severity"],
        device_id=row["device_id"], application_id=row["application_id"], enabled=row["enabled"],
        notify_emails=tuple(row["notify_emails"] or ()), notify_webhooks=tuple(row["notify_webhooks"] or ()),
        notify_sms=tuple(row["notify_sms"] or ()),
        notify_throttle_seconds=row["notify_throttle_seconds"], created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _event(row: dict[str, Any]) -> StoredEvent:
    return StoredEvent(int(row["id"]), AlarmEvent(
        alarm_id=str(row["alarm_id"]), rule_id=str(row["rule_id"]), device_id=row["device_id"],
        event=row["event"], state=row["state"], severity=row["severity"], at=row["at"],
        metric=row["metric"], value=row["value"], by=row["by"], message=row["message"] or "",
    ))


class AlarmStore:
    """Alarm queries over a psycopg pool of autocommit connections."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self.pool = pool

    async def query(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        """Run one statement; its rows as dicts. :class:`StoreUnavailable` when PostgreSQL is down."""
        try:
            async with self.pool.connection() as conn:
                cur = conn.cursor(row_factory=dict_row)
                await cur.execute(sql, params)  # type: ignore[arg-type]
                return await cur.fetchall() if cur.description else []
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise StoreUnavailable(f"PostgreSQL unavailable: {exc}") from exc

    # --- the engine's view --------------------------------------------------------
    async def rules(self) -> list[AlarmRule]:
        rows = await self.query("SELECT * FROM alarm_rules WHERE deleted_at IS NULL ORDER BY created_at")
        return [rule_from_row(row) for row in rows]

    async def rules_signature(self) -> tuple[Any, ...]:
        """Changes whenever a rule is created, changed or deleted (count and newest change
        alone would miss a rule deleted and another created with an older change time)."""
        rows = await self.query(
            "SELECT count(*) AS n, md5(string_agg(id::text || '@' || updated_at::text, ','"
            " ORDER BY id)) AS digest FROM alarm_rules")
        return (rows[0]["n"], rows[0]["digest"])

    async def active(self) -> set[Key]:
        rows = await self.query(
            "SELECT rule_id, device_id FROM alarms WHERE state IN ('active_unacked', 'active_acked')")
        return {(str(r["rule_id"]), r["device_id"]) for r in rows}

    async def floors(self, *, within_s: float = 86400.0) -> dict[Key, datetime]:
        """Per (rule, device), the newest device time a transition happened at."""
        rows = await self.query(
            "SELECT rule_id, device_id, max(GREATEST(raised_ts, cleared_ts)) AS floor FROM alarms"
            " WHERE raised_at > now() - make_interval(secs => %s) GROUP BY rule_id, device_id",
            (within_s,))
        return {(str(r["rule_id"]), r["device_id"]): r["floor"] for r in rows if r["floor"] is not None}

    async def shelves(self) -> dict[Key, float]:
        """(rule, device) → shelved until (epoch seconds), for the shelves in force."""
        rows = await self.query("SELECT rule_id, device_id, extract(epoch FROM shelved_until)::float8 AS t"
                                " FROM alarm_shelves WHERE shelved_until > now()")
        return {(str(r["rule_id"]), r["device_id"]): r["t"] for r in rows}

    async def devices(self) -> list[tuple[str, str | None, float]]:
        """Every device ever heard: (id, application id, last seen as epoch seconds)."""
        rows = await self.query("SELECT id, application_id, extract(epoch FROM last_seen)::float8 AS t"
                                " FROM devices WHERE last_seen IS NOT NULL")
        return [(r["id"], r["application_id"], r["t"]) for r in rows]

    # --- transitions ------------------------------------------------------------------
    async def apply(self, transitions: Iterable[Transition]) -> list[tuple[Transition, StoredEvent | None]]:
        """Apply ``transitions`` in order, in one transaction; each with its event or None (no-op)."""
        out: list[tuple[Transition, StoredEvent | None]] = []
        try:
            async with self.pool.connection() as conn, conn.transaction():
                cur = conn.cursor(row_factory=dict_row)
                for tr in transitions:
                    params = {"rule_id": tr.rule.id, "device_id": tr.device_id, "metric": tr.rule.metric,
                              "severity": tr.rule.severity, "value": tr.value, "ts": tr.ts,
                              "message": tr.message, "by": None}
                    await cur.execute(_RAISE if tr.kind == "raise" else _CLEAR_ACTIVE, params)
                    row = await cur.fetchone()
                    out.append((tr, _event(row) if row else None))
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise StoreUnavailable(f"PostgreSQL unavailable: {exc}") from exc
        return out

    async def operator_action(self, action: str, alarm_id: str, *, by: str, message: str = "",
                              shelve_s: float = 0.0) -> tuple[str | None, StoredEvent | None]:
        """Ack, clear or shelve alarm ``alarm_id``: (its state before, the event) — state None
        when there is no such alarm, event None when the alarm is not in a state that allows it."""
        sql = {"ack": _ACK, "clear": _CLEAR_BY_ID, "shelve": _SHELVE}[action]
        params = {"id": alarm_id, "by": by, "message": message, "ts": None, "value": None,
                  "secs": shelve_s}
        try:
            async with self.pool.connection() as conn, conn.transaction():
                cur = conn.cursor(row_factory=dict_row)
                await cur.execute("SELECT state, value FROM alarms WHERE id = %s FOR UPDATE", (alarm_id,))
                before = await cur.fetchone()
                if before is None:
                    return None, None
                if action == "clear":
                    params["value"] = before["value"]
                await cur.execute(sql, params)
                row = await cur.fetchone()
                return before["state"], _event(row) if row else None
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise StoreUnavailable(f"PostgreSQL unavailable: {exc}") from exc

    async def clear_rule(self, rule_id: str, *, by: str, message: str) -> list[StoredEvent]:
        """Clear every active alarm of ``rule_id`` (the rule was deleted)."""
        rows = await self.query(
            "SELECT id FROM alarms WHERE rule_id = %s AND state IN ('active_unacked', 'active_acked')",
            (rule_id,))
        events: list[StoredEvent] = []
        for row in rows:
            _, event = await self.operator_action("clear", str(row["id"]), by=by, message=message)
            if event is not None:
                events.append(event)
        return events

    # --- the outbox --------------------------------------------------------------------
    async def mark_published(self, outbox_ids: Sequence[int]) -> None:
        if outbox_ids:
            await self.query("UPDATE alarm_events SET published_at = now() WHERE id = ANY(%s)",
                             (list(outbox_ids),))

    async def unpublished(self, *, older_than_s: float, limit: int = 500) -> list[StoredEvent]:
        rows = await self.query(
            f"SELECT {_EVENT_COLUMNS} FROM alarm_events WHERE published_at IS NULL"
            " AND at < now() - make_interval(secs => %s) ORDER BY id LIMIT %s",
            (older_than_s, limit))
        return [_event(row) for row in rows]
