"""Time series points in InfluxDB 2 (DESIGN section 5).

One point per reading: measurement ``telemetry``, tags ``device_id``,
``protocol`` and ``application_id`` (when known), one float field per metric
plus the numeric metadata, timestamped with the device time.  A point is
identified by measurement, tags and time, so writing a reading twice leaves a
single point: the sink is idempotent without bookkeeping.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import aiohttp
from influxdb_client import Point, WritePrecision
from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
from influxdb_client.rest import ApiException

from pipeline.errors import PermanentSinkError, TransientSinkError
from pipeline.sinks.base import Sink
from schemas import Telemetry

__all__ = ["MEASUREMENT", "InfluxSink", "to_point"]

MEASUREMENT = "telemetry"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def to_point(record: Telemetry) -> Point:
    point = Point(MEASUREMENT).tag("device_id", record.device_id).tag("protocol", record.protocol)
    if record.application_id:
        point.tag("application_id", record.application_id)
    for name, value in record.metrics.items():
        point.field(name, float(value))
    meta = record.metadata
    for name, number in (("signal_strength", meta.signal_strength),
                         ("battery_level", meta.battery_level), ("snr", meta.snr)):
        if number is not None:
            point.field(name, float(number))
    # An integer: the client's datetime conversion goes through floats and can be 1 µs off.
    return point.time((record.ts - _EPOCH) // _MICROSECOND, WritePrecision.US)


class InfluxSink(Sink):
    name = "influxdb"

    def __init__(self, *, url: str, token: str, org: str, bucket: str) -> None:
        super().__init__()
        self._url, self._token, self._org, self._bucket = url, token, org, bucket
        self._client: InfluxDBClientAsync | None = None

    async def setup(self) -> None:
        self._client = InfluxDBClientAsync(url=self._url, token=self._token, org=self._org,
                                           timeout=10_000)

    async def write(self, batch: list[Telemetry]) -> None:
        assert self._client is not None, "setup() first"
        lines = [to_point(r).to_line_protocol(WritePrecision.US) for r in batch]
        try:
            await self._client.write_api().write(
                bucket=self._bucket, org=self._org, record=lines,
                write_precision=WritePrecision.US,  # type: ignore[arg-type]
            )
        except ApiException as exc:
            if exc.status in (408, 429) or (exc.status or 0) >= 500:
                raise TransientSinkError(f"influxdb answered {exc.status}: {exc.reason}") from exc
            raise PermanentSinkError(
                f"influxdb rejected the batch ({exc.status}): {(exc.body or '')[:300]}"
            ) from exc
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise TransientSinkError(f"influxdb unreachable: {exc!r}") from exc

    async def ping(self) -> bool:
        if self._client is None:
            return False
        try:
            return bool(await self._client.ping())
        except (TimeoutError, aiohttp.ClientError, OSError):
            return False

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
