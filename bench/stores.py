"""Whether every reading the bench sent is in all three stores.

- InfluxDB: the number of points of the devices (one per reading: the ``seq``
  field) over the run's own time span only, which keeps the query cheap;
- Redis: each device's latest hash holds its last reading (``ts``);
- PostgreSQL: each device's ``devices.last_seen`` is its last reading's time.

Redis and PostgreSQL keep only the newest reading per device, and each sink
writes a partition in order, so the last reading being there means the sink
got through all of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg
import redis
from influxdb_client import InfluxDBClient

from pipeline.settings import Settings
from schemas.batch import from_micros, iso_micros

__all__ = ["check", "influx_count"]


def influx_count(settings: Settings, prefix: str, start_us: int, stop_us: int) -> int:
    """Points (readings) of devices ``prefix*`` with device times in [start_us, stop_us)."""
    flux = (
        f'from(bucket: "{settings.influx_bucket}")'
        f" |> range(start: {iso_micros(start_us)}, stop: {iso_micros(stop_us)})"
        f' |> filter(fn: (r) => r._measurement == "telemetry" and r._field == "seq"'
        f" and r.device_id =~ /^{prefix}/)"
        " |> group() |> count()"
    )
    with InfluxDBClient(url=settings.influx_url, token=settings.influx_token.get_secret_value(),
                        org=settings.influx_org, timeout=120_000) as client:
        tables = client.query_api().query(flux)
    return sum(int(record.get_value()) for table in tables for record in table.records)


def check(settings: Settings, prefix: str, last_ts: Mapping[str, int], *, readings: int,
          start_us: int, stop_us: int) -> dict[str, Any]:
    """Compare the stores with what was sent: ``readings`` in all from devices ``prefix*``,
    device times in [start_us, stop_us), the last of each device at ``last_ts[device]``."""
    devices = sorted(last_ts)
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=10)
    try:
        with client.pipeline(transaction=False) as pipe:
            for device in devices:
                pipe.hget(f"webscada:latest:{device}", "ts")
            latest = pipe.execute()
    finally:
        client.close()
    redis_ok = sum(1 for device, ts in zip(devices, latest, strict=True)
                   if ts is not None and ts.decode() == iso_micros(last_ts[device]))
    with psycopg.connect(settings.pg_conninfo, autocommit=True) as conn:
        rows = conn.execute("SELECT id, last_seen FROM devices WHERE id = ANY(%s)",
                            (devices,)).fetchall()
    postgres_ok = sum(1 for device, seen in rows if seen == from_micros(last_ts[device]))
    points = influx_count(settings, prefix, start_us, stop_us)
    return {
        "readings": readings, "influxdb_points": points, "devices": len(devices),
        "redis_devices_complete": redis_ok, "postgres_devices_complete": postgres_ok,
        "missing_in_influxdb": readings - points,
        "complete": points == readings and redis_ok == postgres_ok == len(devices),
    }
