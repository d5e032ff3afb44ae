"""Commands in PostgreSQL (tables of migration 0004): the SQL the API and the dispatcher share.

Every function takes an open ``psycopg.AsyncConnection``; the caller owns its
transaction. Status changes are conditional UPDATEs on the current status
(:func:`pipeline.commands.lifecycle.predecessors`) paired with one history row
per (command, status), so applying the same status twice, or an older one
after a newer one, changes nothing.

Status times never go backwards: a status is recorded at its reporter's time or
at its predecessor's, whichever is later (clocks and races differ between the
API, the dispatcher and devices; a device's ``delivered`` can arrive before the
dispatcher has stamped ``sent``). ``commands.updated_at`` is the time of the
current status; the conditional UPDATE that moves the status reads it under the
row lock, so concurrent writers see each other's times.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from pipeline.commands.lifecycle import OPEN, predecessors
from schemas.records import Command, CommandStatus, iso_utc

__all__ = [
    "NOTIFY_CHANNEL",
    "DispatchTarget",
    "apply_statuses",
    "as_uuid",
    "current_statuses",
    "delete_command",
    "dispatch_targets",
    "due_for_expiry",
    "insert_command",
    "list_commands",
    "load_command",
    "notify_waiting",
    "open_commands",
]

# PostgreSQL NOTIFY channel; payload: the id of a device with commands waiting for it
# (WebSocket devices: the API process holding the device's socket pushes them).
NOTIFY_CHANNEL = "webscada_commands"

_INSERT = """
INSERT INTO commands (id, device_id, name, params, status, idempotency_key, requested_by,
                      created_at, expires_at, updated_at)
VALUES (%s, %s, %s, %s, 'queued', %s, %s, %s, %s, %s)
ON CONFLICT (device_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id
"""

_APPLY = """
WITH moved AS (
    UPDATE commands SET status = %(status)s, detail = %(detail)s,
                        updated_at = GREATEST(%(at)s, updated_at)
    WHERE id = %(id)s AND device_id = %(device)s AND status = ANY(%(from)s)
    RETURNING id, updated_at
)
INSERT INTO command_status_history (command_id, status, at, detail)
SELECT id, %(status)s, updated_at, %(detail)s FROM moved
ON CONFLICT (command_id, status) DO NOTHING
RETURNING command_id, at
"""

_LIST = """
SELECT c.id, c.name, c.params, c.status, c.detail, c.created_at, c.expires_at, c.updated_at,
       c.requested_by,
       COALESCE((SELECT json_agg(json_build_object('status', h.status, 'at', h.at,
                                                   'detail', h.detail) ORDER BY h.id)
                 FROM command_status_history h WHERE h.command_id = c.id), '[]'::json)
FROM commands c
WHERE c.device_id = %s
ORDER BY c.created_at DESC, c.id
LIMIT %s
"""


def as_uuid(value: str) -> uuid.UUID | None:
    """``value`` as a UUID, or None: command ids from devices are checked before any query."""
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        return None


@dataclass(frozen=True, slots=True)
class DispatchTarget:
    """What the dispatcher needs to know about a command's row and its device."""

    status: str
    expires_at: datetime
    protocol: str | None  # None: the device no longer exists
    application_id: str | None


async def insert_command(conn: AsyncConnection[Any], command: Command,
                         idempotency_key: str | None = None) -> tuple[str, str, bool]:
    """Store ``command`` as ``queued`` with its first history row.

    Returns ``(id, status, created)``: for an Idempotency-Key the device already
    used, the existing command's id and current status and ``created=False``.
    """
    async with conn.transaction():
        cursor = await conn.execute(_INSERT, (
            command.id, command.device_id, command.name, Jsonb(dict(command.params)),
            idempotency_key, command.requested_by, command.created_at, command.expires_at,
            command.created_at,
        ))
        if await cursor.fetchone() is None:
            cursor = await conn.execute(
                "SELECT id, status FROM commands WHERE device_id = %s AND idempotency_key = %s",
                (command.device_id, idempotency_key))
            row = await cursor.fetchone()
            if row is None:  # deleted between the conflict and this read: treat as new
                raise LookupError("the command of this Idempotency-Key vanished; retry")
            return str(row[0]), str(row[1]), False
        await conn.execute(
            "INSERT INTO command_status_history (command_id, status, at) VALUES (%s, 'queued', %s)",
            (command.id, command.created_at))
    return command.id, "queued", True


async def delete_command(conn: AsyncConnection[Any], command_id: str) -> None:
    """Forget a command that never reached Kafka (its request answered with an error)."""
    await conn.execute("DELETE FROM commands WHERE id = %s AND status = 'queued'", (command_id,))


async def apply_statuses(conn: AsyncConnection[Any],
                         statuses: Iterable[CommandStatus]) -> list[CommandStatus]:
    """Apply each status whose transition is allowed, in order; returns the ones that changed
    a command, each with the time it was recorded at (never before its predecessor's).
    Unknown commands, non-UUID ids and statuses naming another device are skipped."""
    applied: list[CommandStatus] = []
    async with conn.transaction():
        for status in statuses:
            command_id = as_uuid(status.command_id)
            if command_id is None:
                continue
            cursor = await conn.execute(_APPLY, {
                "status": status.status, "detail": status.detail, "id": command_id,
                "device": status.device_id,
                "from": list(predecessors(status.status)), "at": status.at,
            })
            row = await cursor.fetchone()
            if row is not None:
                applied.append(replace(status, at=row[1]))
    return applied


async def current_statuses(conn: AsyncConnection[Any], ids: Sequence[str],
                           device_id: str | None = None) -> dict[str, str]:
    """The current status of each of ``ids`` that exists (and belongs to ``device_id``, if given)."""
    valid = [u for u in (as_uuid(i) for i in ids) if u is not None]
    if not valid:
        return {}
    cursor = await conn.execute(
        "SELECT id, status FROM commands WHERE id = ANY(%s) AND (%s::text IS NULL OR device_id = %s)",
        (valid, device_id, device_id))
    return {str(row[0]): str(row[1]) for row in await cursor.fetchall()}


async def dispatch_targets(conn: AsyncConnection[Any], ids: Sequence[str]) -> dict[str, DispatchTarget]:
    """Status, expiry and the device's protocol and application for each command of ``ids``."""
    valid = [u for u in (as_uuid(i) for i in ids) if u is not None]
    if not valid:
        return {}
    cursor = await conn.execute(
        "SELECT c.id, c.status, c.expires_at, d.protocol, d.application_id"
        " FROM commands c LEFT JOIN devices d ON d.id = c.device_id WHERE c.id = ANY(%s)",
        (valid,))
    return {str(row[0]): DispatchTarget(row[1], row[2], row[3], row[4])
            for row in await cursor.fetchall()}


async def due_for_expiry(conn: AsyncConnection[Any], now: datetime,
                         limit: int = 500) -> list[tuple[str, str]]:
    """``(command id, device id)`` of open commands past ``expires_at``, locked for this
    transaction (``SKIP LOCKED``: two expiry timers never take the same command)."""
    cursor = await conn.execute(
        "SELECT id, device_id FROM commands WHERE status = ANY(%s) AND expires_at <= %s"
        " ORDER BY expires_at LIMIT %s FOR UPDATE SKIP LOCKED",
        (list(OPEN), now, limit))
    return [(str(row[0]), str(row[1])) for row in await cursor.fetchall()]


async def open_commands(conn: AsyncConnection[Any], device_id: str, now: datetime,
                        limit: int = 50) -> list[tuple[Command, str]]:
    """Commands of ``device_id`` that are queued or sent and not expired, oldest first,
    with their status (what an HTTP device gets when it polls)."""
    cursor = await conn.execute(
        "SELECT id, name, params, created_at, expires_at, requested_by, status FROM commands"
        " WHERE device_id = %s AND status IN ('queued', 'sent') AND expires_at > %s"
        " ORDER BY created_at, id LIMIT %s",
        (device_id, now, limit))
    return [
        (Command(id=str(row[0]), device_id=device_id, name=row[1], params=row[2],
                 created_at=row[3], expires_at=row[4], requested_by=row[5]), str(row[6]))
        for row in await cursor.fetchall()
    ]


def _history(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for item in items:
        at = item.get("at")
        if isinstance(at, str):  # json_agg renders timestamptz as text
            at = iso_utc(datetime.fromisoformat(at))
        out.append({"status": item.get("status"), "at": at, "detail": item.get("detail") or ""})
    return out


async def list_commands(conn: AsyncConnection[Any], device_id: str,
                        limit: int = 100) -> list[dict[str, Any]]:
    """The commands of ``device_id``, newest first, each with its history in order (as JSON)."""
    cursor = await conn.execute(_LIST, (device_id, limit))
    return [
        {
            "id": str(row[0]), "name": row[1], "params": row[2], "status": row[3],
            "detail": row[4], "created_at": iso_utc(row[5]), "expires_at": iso_utc(row[6]),
            "updated_at": iso_utc(row[7]), "requested_by": row[8], "history": _history(row[9]),
        }
        for row in await cursor.fetchall()
    ]


async def load_command(conn: AsyncConnection[Any], command_id: str) -> tuple[Command, str] | None:
    """The stored command ``command_id`` and its status, or None."""
    valid = as_uuid(command_id)
    if valid is None:
        return None
    cursor = await conn.execute(
        "SELECT device_id, name, params, created_at, expires_at, requested_by, status"
        " FROM commands WHERE id = %s", (valid,))
    row = await cursor.fetchone()
    if row is None:
        return None
    command = Command(id=str(valid), device_id=row[0], name=row[1], params=row[2],
                      created_at=row[3], expires_at=row[4], requested_by=row[5])
    return command, str(row[6])


async def notify_waiting(conn: AsyncConnection[Any], device_ids: Sequence[str]) -> None:
    """Tell listeners on :data:`NOTIFY_CHANNEL` that commands wait for these devices."""
    for device_id in device_ids:
        await conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, device_id))
