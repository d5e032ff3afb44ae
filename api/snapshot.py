"""The snapshot a new subscription starts with: the latest values of its devices, from Redis."""

from __future__ import annotations

import logging
from typing import Any, cast

import psycopg
from psycopg_pool import PoolTimeout

from api.auth import Principal
from api.errors import ServiceUnavailable
from api.rooms import Room
from api.services import Services
from schemas.latest import LATEST_KEY, NUMERIC_METADATA, TIMES_KEY, latest_view, metric_names

__all__ = ["MAX_SNAPSHOT_DEVICES", "snapshot_events", "snapshot_reading"]

log = logging.getLogger(__name__)

MAX_SNAPSHOT_DEVICES = 500
def snapshot_reading(device_id: str, fields: dict[str, str],
                     times: dict[str, str] | None = None) -> dict[str, Any]:
    """A Redis latest-values hash as a ``telemetry`` event payload, marked as a snapshot;
    ``times`` gives each metric's own device time (the hash's ``ts`` is the newest)."""
    values = latest_view(fields, times)
    metadata: dict[str, Any] = {name: values[field] for name, field in NUMERIC_METADATA.items()
                                if field in values and name not in ("lat", "lon")}
    if "gateway_id" in values:
        metadata["gateway_id"] = values["gateway_id"]
    if "location_lat" in values and "location_lon" in values:
        metadata["location"] = {"lat": values["location_lat"], "lon": values["location_lon"]}
    metrics = {k: values[k] for k in metric_names(fields) if isinstance(values[k], float)}
    return {
        "device_id": device_id,
        "ts": values.get("ts"),
        "protocol": values.get("protocol"),
        "application_id": values.get("application_id"),
        "status": values.get("status"),
        "metrics": metrics,
        "metric_times": {k: at for k, at in values.get("times", {}).items() if k in metrics},
        "metadata": metadata,
        "snapshot": True,
    }


async def _application_devices(services: Services, application_id: str) -> list[str]:
    try:
        async with services.pool.connection(timeout=5.0) as conn:
            cursor = await conn.execute(
                "SELECT id FROM devices WHERE application_id = %s ORDER BY id LIMIT %s",
                (application_id, MAX_SNAPSHOT_DEVICES),
            )
            return [row[0] for row in await cursor.fetchall()]
    except (PoolTimeout, psycopg.OperationalError) as exc:
        raise ServiceUnavailable("PostgreSQL unavailable", str(exc)) from exc


async def snapshot_events(
    services: Services, principal: Principal, room: Room
) -> list[tuple[str, dict[str, Any]]]:
    """``telemetry`` events with the latest values of the devices of ``room`` (already authorized)."""
    if room.kind == "device":
        assert room.ident is not None
        device_ids = [room.ident]
    elif room.kind == "application":
        assert room.ident is not None
        device_ids = await _application_devices(services, room.ident)
    else:
        return []
    async with services.redis.pipeline(transaction=False) as pipe:
        for device_id in device_ids:
            pipe.hgetall(LATEST_KEY.format(device_id=device_id))
            pipe.hgetall(TIMES_KEY.format(device_id=device_id))
        hashes = cast(list[dict[str, str]], await pipe.execute())
    return [
        ("telemetry", snapshot_reading(device_id, fields, times))
        for device_id, fields, times in zip(device_ids, hashes[::2], hashes[1::2], strict=True)
        if fields and "ts" in fields
    ]
