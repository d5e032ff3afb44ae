"""Device registry upkeep in PostgreSQL: ``devices.last_seen`` (the README says what each store keeps).

A batch is folded to one row per device (its newest reading) and upserted in
one statement; ``last_seen`` only moves forward, so replaying a batch or
receiving a late reading never moves it back. The rows travel as one JSON
parameter: psycopg's list adapters cost more per device than the rest of the sink.
"""

from __future__ import annotations

from typing import Any

import orjson
import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from pipeline.errors import PermanentSinkError, TransientSinkError
from pipeline.pgpool import make_pool
from pipeline.sinks.base import Sink
from schemas.batch import ReadingBatch, iso_micros

__all__ = ["IDENTIFIER_KEYS", "PostgresDeviceSink", "device_rows"]

# metadata.extra keys that identify a device's hardware and are kept in devices.identifiers
# (counters such as f_cnt change with every reading and are not).
IDENTIFIER_KEYS = frozenset({"imei", "iccid", "imsi", "dev_addr", "address", "serial"})

_UPSERT = """
INSERT INTO devices (id, protocol, application_id, last_seen, last_message_id, identifiers)
SELECT id, protocol, application_id, last_seen, message_id, identifiers
FROM jsonb_to_recordset(%s::jsonb) AS u(id text, protocol text, application_id text,
                                         last_seen timestamptz, message_id text, identifiers jsonb)
ON CONFLICT (id) DO UPDATE SET
    identifiers = devices.identifiers || EXCLUDED.identifiers,
    last_message_id = CASE
        WHEN devices.last_seen IS NULL OR EXCLUDED.last_seen >= devices.last_seen
        THEN EXCLUDED.last_message_id ELSE devices.last_message_id END,
    last_seen = GREATEST(devices.last_seen, EXCLUDED.last_seen),
    application_id = COALESCE(devices.application_id, EXCLUDED.application_id)
"""

_TOUCH_KNOWN = """
UPDATE devices AS d SET
    identifiers = d.identifiers || u.identifiers,
    last_message_id = CASE WHEN d.last_seen IS NULL OR u.last_seen >= d.last_seen
                           THEN u.message_id ELSE d.last_message_id END,
    last_seen = GREATEST(d.last_seen, u.last_seen)
FROM jsonb_to_recordset(%s::jsonb)
    AS u(id text, last_seen timestamptz, message_id text, identifiers jsonb)
WHERE d.id = u.id
"""


def device_rows(batch: ReadingBatch) -> list[dict[str, Any]]:
    """One upsert row per device of ``batch``: what the sink sends to PostgreSQL.

    Each row is the device's newest reading (``last_seen`` its device time as
    ISO-8601, ``message_id``, ``protocol``, ``application_id``) and
    ``identifiers``: the hardware-identifying ``metadata.extra`` keys
    (:data:`IDENTIFIER_KEYS`) of all its readings, the later reading's value winning.
    Pure, so the write format can be checked without a database.
    """
    newest: dict[str, int] = {}  # device id → index of its newest reading
    identifiers: dict[str, dict[str, str]] = {}
    ts = batch.ts
    extra = batch.extra
    for i, device_id in enumerate(batch.device_id):
        seen = newest.get(device_id)
        if seen is None or ts[i] >= ts[seen]:
            newest[device_id] = i
        if extra[i]:  # readings in device order: the newest value of a key wins
            found = {k: v for k, v in extra[i].items() if k in IDENTIFIER_KEYS}
            if found:
                identifiers.setdefault(device_id, {}).update(found)
    return [
        {"id": device_id, "protocol": batch.protocol[i], "application_id": batch.application_id[i],
         "last_seen": iso_micros(ts[i]), "message_id": batch.message_id[i],
         "identifiers": identifiers.get(device_id, {})}
        for device_id, i in newest.items()
    ]


class PostgresDeviceSink(Sink):
    name = "postgres"

    def __init__(self, *, conninfo: str, auto_register: bool = True) -> None:
        self._conninfo = conninfo
        self._auto_register = auto_register
        self._pool: AsyncConnectionPool | None = None

    async def setup(self) -> None:
        self._pool = make_pool(self._conninfo, name="webscada-sink-postgres")
        await self._pool.open(wait=False)

    async def write(self, batch: ReadingBatch) -> None:
        assert self._pool is not None, "setup() first"
        rows = orjson.dumps(device_rows(batch)).decode()
        try:
            async with self._pool.connection() as conn:
                await conn.execute(_UPSERT if self._auto_register else _TOUCH_KNOWN, (rows,))
        except (psycopg.OperationalError, psycopg.errors.AdminShutdown,
                PoolTimeout) as exc:
            raise TransientSinkError(f"postgres unreachable: {exc}") from exc
        except psycopg.errors.SerializationFailure as exc:
            raise TransientSinkError(f"postgres conflict: {exc}") from exc
        except psycopg.DatabaseError as exc:
            raise PermanentSinkError(f"postgres rejected the batch: {exc}") from exc

    async def ping(self) -> bool:
        if self._pool is None:
            return False
        try:
            async with self._pool.connection(timeout=2) as conn:
                await conn.execute("SELECT 1")
            return True
        except Exception:
            return False

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

