"""Latest values per device in Redis (the shape: :mod:`schemas.latest`)."""

from __future__ import annotations

from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from pipeline.errors import PermanentSinkError, TransientSinkError
from pipeline.sinks.base import Sink
from schemas.batch import ReadingBatch, iso_micros
from schemas.latest import LATEST_KEY, NUMERIC_METADATA, TIMES_KEY

__all__ = ["RedisLatestSink", "latest_fields"]

# One call per group of devices. KEYS: per device its latest hash and its times hash;
# ARGV[1]: the TTL; ARGV[2]: JSON, per device (in KEYS order) its readings oldest first,
# each [time, [field, value, ...], [metric, value, ...]]. The fields of the first list
# (protocol, status, metadata ...) and ``ts`` are taken when the reading is not older
# than the hash's ``ts``; each metric when the reading is not older than that metric's
# own time. ISO-8601 strings of fixed width compare as the times they name. A device's
# readings are folded in the script and written with one HSET per hash (per-reading
# commands cost Redis more than the rest of the write). Packing every field as its own
# Redis argument cost the client more than the rest of the sink; one JSON argument is
# packed in C on both sides.
_WRITE_IF_NEWER = """
local ttl = tonumber(ARGV[1])
local data = cjson.decode(ARGV[2])
local wrote = 0
for k = 1, #data do
  local key, times_key = KEYS[2 * k - 1], KEYS[2 * k]
  local current = redis.call('HGET', key, 'ts')
  local known = {}
  local flat = redis.call('HGETALL', times_key)
  for i = 1, #flat, 2 do known[flat[i]] = flat[i + 1] end
  -- the device's readings folded here, written once: fields and metric times that change
  local fields, stamps = {}, {}
  for _, reading in ipairs(data[k]) do
    local ts, envelope, metrics = reading[1], reading[2], reading[3]
    if not current or ts >= current then
      current = ts
      fields['ts'] = ts
      for i = 1, #envelope, 2 do fields[envelope[i]] = envelope[i + 1] end
    end
    for i = 1, #metrics, 2 do
      local name = metrics[i]
      local at = known[name]
      if not at or ts >= at then
        known[name] = ts
        fields[name] = metrics[i + 1]
        stamps[name] = ts
      end
    end
  end
  local hset, tset = {}, {}
  for name, value in pairs(fields) do hset[#hset + 1] = name; hset[#hset + 1] = value end
  for name, at in pairs(stamps) do tset[#tset + 1] = name; tset[#tset + 1] = at end
  if #hset > 0 then
    redis.call('HSET', key, unpack(hset))
    if #tset > 0 then redis.call('HSET', times_key, unpack(tset)) end
    redis.call('EXPIRE', key, ttl)
    redis.call('EXPIRE', times_key, ttl)
    wrote = wrote + 1
  end
end
return wrote
"""
# devices per script call, so that one call never holds Redis for long
_KEYS_PER_CALL = 100


def latest_fields(batch: ReadingBatch, i: int) -> list[Any]:
    """Reading ``i`` as the script takes it: ``[[field, value, ...], [metric, value, ...]]``."""
    fields: list[str] = ["protocol", batch.protocol[i]]
    meta = batch.meta[i]
    if meta:
        for name, number in meta.items():
            fields += [NUMERIC_METADATA[name], repr(number)]
    for name, text in (("status", batch.status[i]), ("application_id", batch.application_id[i]),
                       ("gateway_id", batch.gateway_id[i])):
        if text is not None:
            fields += [name, text]
    metrics: list[str] = []
    for name, value in batch.metrics[i].items():
        metrics += [name, repr(value)]
    return [fields, metrics]


class RedisLatestSink(Sink):
    name = "redis"

    def __init__(self, *, url: str, ttl_s: int) -> None:
        self._url = url
        self._ttl_s = ttl_s
        self._client: aioredis.Redis | None = None
        self._script: str | None = None  # SHA1 of the loaded script

    async def setup(self) -> None:
        self._client = aioredis.from_url(self._url, socket_timeout=5, socket_connect_timeout=3)

    async def write(self, batch: ReadingBatch) -> None:
        assert self._client is not None, "setup() first"
        by_device: dict[str, list[int]] = {}
        for i, device_id in enumerate(batch.device_id):
            by_device.setdefault(device_id, []).append(i)
        ts = batch.ts
        keys: list[str] = []
        readings: list[list[list[Any]]] = []
        for device_id, rows in by_device.items():
            rows.sort(key=ts.__getitem__)  # oldest first: the newest wins
            keys += [LATEST_KEY.format(device_id=device_id), TIMES_KEY.format(device_id=device_id)]
            readings.append([[iso_micros(ts[i]), *latest_fields(batch, i)] for i in rows])
        try:
            if self._script is None:  # loaded once; again after Redis lost its scripts
                self._script = await self._client.script_load(_WRITE_IF_NEWER)
            async with self._client.pipeline(transaction=False) as pipe:
                for start in range(0, len(readings), _KEYS_PER_CALL):
                    end = start + _KEYS_PER_CALL
                    pipe.evalsha(self._script, 2 * len(readings[start:end]), *keys[2 * start:2 * end],
                                 self._ttl_s, orjson.dumps(readings[start:end]))
                await pipe.execute()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise TransientSinkError(f"redis unreachable: {exc}") from exc
        except NoScriptError as exc:  # Redis restarted (or SCRIPT FLUSH): load it again
            self._script = None
            raise TransientSinkError(f"redis lost the write script: {exc}") from exc
        except (OutOfMemoryError, ReadOnlyError, TryAgainError) as exc:
            raise TransientSinkError(f"redis cannot write now: {exc}") from exc
        except ResponseError as exc:
            if str(exc).startswith("BUSY"):
                raise TransientSinkError(f"redis busy: {exc}") from exc
            raise PermanentSinkError(f"redis rejected the batch: {exc}") from exc
        except RedisError as exc:
            raise TransientSinkError(f"redis error: {exc}") from exc

    async def ping(self) -> bool:
        if self._client is None:
            return False
        try:
            return bool(await self._client.ping())
        except (RedisError, OSError):
            return False

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
