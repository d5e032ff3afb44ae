"""The sink batching matrix: rows per CPU-second for each way of writing to each store.

CPU is this client process's CPU time (``time.process_time()``, all threads) plus
the store server's over the same interval: the PostgreSQL backends of this run's
connections (found by ``application_name``), the Redis server process, the
``influxd`` process. Redis and InfluxDB serve every client of the machine, so
their share includes whatever else ran meanwhile. Converting readings into what
each way sends (parameters, hashes, line protocol) counts as client work.

PostgreSQL. The production sink folds a batch to one row per device, so its
rows/CPU-s is not comparable with writing every reading. The comparable figures
therefore write every reading as a row of a run-private, ordinary (WAL-logged,
like the production tables) table ``bench_readings_<id>(device_id, ts,
message_id, metrics jsonb, PRIMARY KEY (device_id, ts))``, emptied between
variants and dropped afterwards, in batches of 1,000 rows, one transaction per
batch:

- ``executemany``: a per-row ``INSERT ... ON CONFLICT DO UPDATE``; psycopg 3
  sends ``executemany`` as one libpq pipeline, so it is not one round trip per row;
- ``copy_then_upsert``: ``COPY`` into a temporary staging table, then one
  ``INSERT ... SELECT ... ON CONFLICT DO UPDATE``;
- ``unnest_upsert``: one ``INSERT ... SELECT FROM unnest(arrays) ON CONFLICT``,
  the production statement's technique applied to every reading.

``production_sink`` drives :class:`PostgresDeviceSink` itself (its unnest upsert
into ``devices``, bench device ids deleted afterwards): ``rows`` counts the
readings it absorbed, ``device_rows`` the rows it upserted after folding.

Redis: one HSET + EXPIRE round trip each per reading, the same commands
pipelined 1,000 readings at a time, and :class:`RedisLatestSink` (its Lua
write-if-newer script) once per reading and on batches of 1,000. Keys are
deleted between variants, so each starts from nothing.

InfluxDB: one point per synchronous request (only 1,000 points, 300 in quick
mode: it is slow), 5,000 line-protocol points per synchronous request, and
:class:`InfluxSink` on batches of 5,000. Each variant writes its own devices;
every point carries this run's ``application_id`` and is deleted afterwards.

    .venv/bin/python -m bench.sinks [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg
import redis
from influxdb_client import InfluxDBClient, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS
from psycopg import sql
from redis.typing import EncodableT, FieldT

from bench.common import cpu_seconds, make_readings
from infra.services import InfluxDB
from pipeline.settings import Settings
from pipeline.sinks.base import Sink
from pipeline.sinks.influxdb import InfluxSink, to_point
from pipeline.sinks.postgres import PostgresDeviceSink
from pipeline.sinks.redis import LATEST_KEY, RedisLatestSink, latest_fields
from schemas import Telemetry, iso_utc

__all__ = ["run"]

PG_BATCH = 1_000
REDIS_BATCH = 1_000
INFLUX_BATCH = 5_000
_DEVICES = 50
_T = TypeVar("_T")


class _Meter:
    """Wall, client CPU and server CPU across a ``with`` block."""

    def __init__(self, server_cpu: Callable[[], float] | None) -> None:
        self._server_cpu = server_cpu
        self.wall = self.client = 0.0
        self.server: float | None = None

    def __enter__(self) -> _Meter:
        self._srv0 = self._server_cpu() if self._server_cpu else 0.0
        self._cpu0, self._wall0 = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall0
        self.client = time.process_time() - self._cpu0
        if self._server_cpu:
            self.server = self._server_cpu() - self._srv0

    def figures(self, store: str, variant: str, rows: int, **extra: Any) -> dict[str, Any]:
        total = self.client + self.server if self.server is not None else None
        out: dict[str, Any] = {
            "rows": rows, "wall_seconds": round(self.wall, 3),
            "rows_per_second": round(rows / self.wall) if self.wall else None,
            "client_cpu_seconds": round(self.client, 3),
            "server_cpu_seconds": round(self.server, 3) if self.server is not None else None,
            "rows_per_cpu_second": round(rows / total) if total else None,
            "rows_per_client_cpu_second": round(rows / self.client) if self.client else None,
            **extra,
        }
        print(f"{store} {variant}: {rows:,} rows in {self.wall:.2f} s ({out['rows_per_second']:,}/s); "
              f"CPU {self.client:.2f} s client + {out['server_cpu_seconds']} s server: "
              f"{out['rows_per_cpu_second']:,} rows/CPU-s, "
              f"{out['rows_per_client_cpu_second']:,} rows/client-CPU-s", flush=True)
        return out


def _chunks(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _process_cpu(pid: int | None) -> Callable[[], float] | None:
    return None if pid is None else lambda: cpu_seconds(pid)


async def _drive(sink: Sink, batches: list[list[Telemetry]], meter: _Meter) -> None:
    """Write ``batches`` through a production sink; connecting happens before the clock."""
    await sink.setup()
    try:
        await sink.ping()
        with meter:
            for batch in batches:
                await sink.write(batch)
    finally:
        await sink.close()


# PostgreSQL ---------------------------------------------------------------------------

_PG_UPSERT_TAIL = (" ON CONFLICT (device_id, ts) DO UPDATE SET message_id = EXCLUDED.message_id, "
                   "metrics = EXCLUDED.metrics")


def _pg_rows(batch: Sequence[Telemetry]) -> list[tuple[str, datetime, str, str]]:
    return [(r.device_id, r.ts, r.message_id, json.dumps(dict(r.metrics))) for r in batch]


def _pg_backends_cpu(monitor: psycopg.Connection[Any], app: str) -> float:
    total = 0.0
    for (pid,) in monitor.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                                  (app,)).fetchall():
        try:
            total += cpu_seconds(pid)
        except (FileNotFoundError, ProcessLookupError):
            pass  # a backend that just ended; its CPU is lost to the figure
    return total


def _postgres(settings: Settings, tag: str, readings: list[Telemetry]) -> dict[str, Any]:
    conninfo = f"{settings.pg_conninfo} application_name={tag}"
    table = sql.Identifier(f"bench_readings_{tag.rsplit('-', 1)[1]}")
    batches = list(_chunks(readings, PG_BATCH))
    per_row = sql.SQL("INSERT INTO {} (device_id, ts, message_id, metrics) VALUES (%s, %s, %s, %s::jsonb)"
                      + _PG_UPSERT_TAIL).format(table)
    from_stage = sql.SQL("INSERT INTO {} SELECT * FROM bench_stage" + _PG_UPSERT_TAIL).format(table)
    unnest = sql.SQL("INSERT INTO {} (device_id, ts, message_id, metrics) SELECT d, t, m, j::jsonb "
                     "FROM unnest(%s::text[], %s::timestamptz[], %s::text[], %s::text[]) AS u(d, t, m, j)"
                     + _PG_UPSERT_TAIL).format(table)
    out: dict[str, Any] = {}
    with (psycopg.connect(settings.pg_conninfo, autocommit=True) as monitor,
          psycopg.connect(conninfo, autocommit=True) as conn):
        def meter() -> _Meter:
            return _Meter(lambda: _pg_backends_cpu(monitor, tag))

        def stored() -> int:
            row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()
            return row[0] if row else 0

        conn.execute(sql.SQL("CREATE TABLE {} (device_id text, ts timestamptz, message_id text, "
                             "metrics jsonb, PRIMARY KEY (device_id, ts))").format(table))
        conn.execute("CREATE TEMP TABLE bench_stage (device_id text, ts timestamptz, message_id text, "
                     "metrics jsonb) ON COMMIT DELETE ROWS")
        try:
            with meter() as m, conn.cursor() as cur:
                for batch in batches:
                    with conn.transaction():
                        cur.executemany(per_row, _pg_rows(batch))
            out["executemany"] = m.figures("postgres", "executemany", len(readings), batch=PG_BATCH,
                                           rows_stored=stored())
            conn.execute(sql.SQL("TRUNCATE {}").format(table))

            with meter() as m, conn.cursor() as cur:
                for batch in batches:
                    with conn.transaction():
                        with cur.copy("COPY bench_stage FROM STDIN") as copy:
                            for row in _pg_rows(batch):
                                copy.write_row(row)
                        cur.execute(from_stage)
            out["copy_then_upsert"] = m.figures("postgres", "copy_then_upsert", len(readings),
                                                batch=PG_BATCH, rows_stored=stored())
            conn.execute(sql.SQL("TRUNCATE {}").format(table))

            with meter() as m:
                for batch in batches:
                    with conn.transaction():
                        conn.execute(unnest, [list(column) for column in zip(*_pg_rows(batch), strict=True)])
            out["unnest_upsert"] = m.figures("postgres", "unnest_upsert", len(readings), batch=PG_BATCH,
                                             rows_stored=stored())

            sink = PostgresDeviceSink(conninfo=conninfo)
            m = meter()
            asyncio.run(_drive(sink, [list(b) for b in batches], m))
            folded = sum(len({r.device_id for r in batch}) for batch in batches)
            devices = conn.execute("SELECT count(*) FROM devices WHERE starts_with(id, %s)",
                                   (tag,)).fetchone()
            out["production_sink"] = m.figures("postgres", "production_sink", len(readings),
                                               batch=PG_BATCH, device_rows=folded, table="devices",
                                               devices_stored=devices[0] if devices else 0)
        finally:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
            conn.execute("DELETE FROM devices WHERE starts_with(id, %s)", (tag,))
    return out


# Redis --------------------------------------------------------------------------------

def _redis_hash(record: Telemetry) -> tuple[str, dict[FieldT, EncodableT]]:
    fields = latest_fields(record)
    return (LATEST_KEY.format(device_id=record.device_id),
            {"ts": iso_utc(record.ts), **dict(zip(fields[::2], fields[1::2], strict=True))})


def _redis(settings: Settings, readings: list[Telemetry]) -> dict[str, Any]:
    ttl = settings.redis_latest_ttl_s
    client = redis.Redis.from_url(settings.redis_url)
    keys = sorted({LATEST_KEY.format(device_id=r.device_id) for r in readings})
    server = _process_cpu(int(client.info("server")["process_id"]))
    batches = [list(b) for b in _chunks(readings, REDIS_BATCH)]
    out: dict[str, Any] = {}
    try:
        with _Meter(server) as m:
            for record in readings:
                key, mapping = _redis_hash(record)
                client.hset(key, mapping=mapping)
                client.expire(key, ttl)
        out["per_command"] = m.figures("redis", "per_command", len(readings), round_trips_per_row=2,
                                       keys_stored=client.exists(*keys))
        client.delete(*keys)

        with _Meter(server) as m:
            for batch in batches:
                pipe = client.pipeline(transaction=False)
                for record in batch:
                    key, mapping = _redis_hash(record)
                    pipe.hset(key, mapping=mapping)
                    pipe.expire(key, ttl)
                pipe.execute()
        out["pipelined"] = m.figures("redis", "pipelined", len(readings), batch=REDIS_BATCH,
                                     keys_stored=client.exists(*keys))
        client.delete(*keys)

        for variant, sink_batches in (("production_sink_per_row", [[r] for r in readings]),
                                      ("production_sink", batches)):
            m = _Meter(server)
            asyncio.run(_drive(RedisLatestSink(url=settings.redis_url, ttl_s=ttl), sink_batches, m))
            # Each pipeline of the sink costs two round trips: SCRIPT EXISTS, then the EVALSHAs.
            out[variant] = m.figures("redis", variant, len(readings), batch=len(sink_batches[0]),
                                     round_trips_per_batch=2, keys_stored=client.exists(*keys))
            client.delete(*keys)
    finally:
        client.delete(*keys)
        client.close()
    return out


# InfluxDB -----------------------------------------------------------------------------

def _influxdb(settings: Settings, tag: str, rows: int, per_point_rows: int) -> dict[str, Any]:
    token = settings.influx_token.get_secret_value()
    bucket, org = settings.influx_bucket, settings.influx_org
    server = _process_cpu(InfluxDB(settings).pid())
    start = datetime.now(UTC) - timedelta(minutes=30)

    def readings(variant: int, count: int) -> list[Telemetry]:
        return list(make_readings(f"{tag}-{variant}", _DEVICES, count // _DEVICES, start=start,
                                  application_id=tag))

    out: dict[str, Any] = {}
    client = InfluxDBClient(url=settings.influx_url, token=token, org=org, timeout=60_000)
    write_api = client.write_api(write_options=SYNCHRONOUS)
    try:
        points = readings(0, per_point_rows)
        with _Meter(server) as m:
            for record in points:
                write_api.write(bucket=bucket, org=org, record=to_point(record),
                                write_precision=WritePrecision.US)  # type: ignore[arg-type]
        out["per_point"] = m.figures("influxdb", "per_point", len(points), batch=1,
                                     note="fewer rows than the other variants: one request per row")

        points = readings(1, rows)
        with _Meter(server) as m:
            for batch in _chunks(points, INFLUX_BATCH):
                lines = [to_point(r).to_line_protocol(WritePrecision.US) for r in batch]
                write_api.write(bucket=bucket, org=org, record=lines,
                                write_precision=WritePrecision.US)  # type: ignore[arg-type]
        out["batched"] = m.figures("influxdb", "batched", len(points), batch=INFLUX_BATCH)

        points = readings(2, rows)
        sink = InfluxSink(url=settings.influx_url, token=token, org=org, bucket=bucket)
        m = _Meter(server)
        asyncio.run(_drive(sink, [list(b) for b in _chunks(points, INFLUX_BATCH)], m))
        out["production_sink"] = m.figures("influxdb", "production_sink", len(points), batch=INFLUX_BATCH)
    finally:
        write_api.close()
        client.delete_api().delete(start - timedelta(minutes=1), datetime.now(UTC) + timedelta(hours=1),
                                   f'_measurement="telemetry" AND application_id="{tag}"',
                                   bucket=bucket, org=org)
        client.close()
    return out


def run(settings: Settings, *, quick: bool = False) -> dict[str, Any]:
    """Every write variant of every store, on ``make_readings`` rows (5,000 in quick mode)."""
    rows = 5_000 if quick else 20_000
    tag = f"bench-sink-{uuid.uuid4().hex[:8]}"
    readings = list(make_readings(tag, _DEVICES, rows // _DEVICES, application_id=tag))
    return {
        "postgres": _postgres(settings, tag, readings),
        "redis": _redis(settings, readings),
        "influxdb": _influxdb(settings, tag, rows, per_point_rows=300 if quick else 1_000),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Sink batching matrix.")
    parser.add_argument("--quick", action="store_true", help="5,000 rows per variant instead of 20,000")
    args = parser.parse_args()
    print(json.dumps(run(Settings(), quick=args.quick), indent=2))
