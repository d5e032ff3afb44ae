"""Time series points in InfluxDB 2 (the README says what each store keeps).

One point per reading: measurement ``telemetry``, tags ``application_id``
(when known), ``device_id`` and ``protocol``, one float field per metric plus
the numeric metadata (``signal_strength``, ``battery_level``, ``snr``, and the
location as ``location_lat``/``location_lon``), timestamped with the device
time in microseconds. A
point is identified by measurement, tags and time, so writing a reading twice
leaves a single point: the sink is idempotent without bookkeeping.

Line protocol is written here directly (tags sorted, as InfluxDB keys them):
building the client's ``Point`` objects cost more than the rest of the sink.
"""

from __future__ import annotations

import aiohttp
from influxdb_client import WritePrecision
from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
from influxdb_client.rest import ApiException

from pipeline.errors import PermanentSinkError, TransientSinkError
from pipeline.sinks.base import Sink
from schemas.batch import ReadingBatch
from schemas.latest import NUMERIC_METADATA

__all__ = ["MEASUREMENT", "InfluxSink", "line_of", "lines_of"]

MEASUREMENT = "telemetry"
# What InfluxDB unescapes in a tag value; application ids hold no backslash or control
# character (schemas.records.APPLICATION_ID_PATTERN), which a tag value cannot keep.
_TAG_ESCAPES = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ "})


def _tag(value: str) -> str:
    return value.translate(_TAG_ESCAPES)


def line_of(batch: ReadingBatch, i: int, _tags: dict[tuple[str, str, str | None], str] | None = None) -> str:
    """Reading ``i`` as one line of line protocol (precision µs).

    Device ids and metric names cannot hold characters line protocol escapes
    (the validate agent enforces their patterns); application ids can.
    """
    key = (batch.device_id[i], batch.protocol[i], batch.application_id[i])
    head = _tags.get(key) if _tags is not None else None
    if head is None:
        device_id, protocol, application_id = key
        head = (f"{MEASUREMENT},application_id={_tag(application_id)},device_id={device_id},"
                f"protocol={protocol} " if application_id else
                f"{MEASUREMENT},device_id={device_id},protocol={protocol} ")
        if _tags is not None:
            _tags[key] = head
    fields = ",".join([f"{name}={value!r}" for name, value in batch.metrics[i].items()])
    meta = batch.meta[i]
    if meta:
        fields += "," + ",".join([f"{NUMERIC_METADATA[name]}={number!r}" for name, number in meta.items()])
    return f"{head}{fields} {batch.ts[i]}"


def lines_of(batch: ReadingBatch) -> str:
    """The whole batch as a line protocol body."""
    tags: dict[tuple[str, str, str | None], str] = {}
    return "\n".join([line_of(batch, i, tags) for i in range(len(batch))])


class InfluxSink(Sink):
    name = "influxdb"

    def __init__(self, *, url: str, token: str, org: str, bucket: str) -> None:
        self._url, self._token, self._org, self._bucket = url, token, org, bucket
        self._client: InfluxDBClientAsync | None = None

    async def setup(self) -> None:
        self._client = InfluxDBClientAsync(url=self._url, token=self._token, org=self._org,
                                           timeout=10_000)

    async def write(self, batch: ReadingBatch) -> None:
        assert self._client is not None, "setup() first"
        body = lines_of(batch)
        try:
            await self._client.write_api().write(
                bucket=self._bucket, org=self._org, record=body,
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
