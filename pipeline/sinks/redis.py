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

__all__ = ["RedisLatestSink", "folded"]

# One call per group of devices. KEYS: per device its latest hash and its times hash;
# ARGV[1]: the TTL; ARGV[2]: JSON, per device (in KEYS order) what the batch holds for it,
# folded: [newest time, its ISO text, [field, value, time, ...], [metric, value, time, ...]],
# each field (protocol, status, metadata ...) and each metric with the newest value the
# batch has of it and that reading's time. Times are µs since 1970 as decimal strings
# (a Lua number would be written back rounded), compared as numbers. A field is taken
# when its time is not older than the hash's ``_ts_us``; a metric when its time is not
# older than that metric's own time in the times hash; ``ts``/``_ts_us`` move to the
# newest time when that is not older. This is what writing the device's readings one by
# one, oldest first, would leave. Folding in Python leaves Redis one small entry per
# device and write, however many readings the batch had of it.
_WRITE_IF_NEWER = """
local ttl = tonumber(ARGV[1])
local data = cjson.decode(ARGV[2])
local wrote = 0
for k = 1, #data do
  local key, times_key = KEYS[2 * k - 1], KEYS[2 * k]
  local newest, newest_text, envelope, metrics = data[k][1], data[k][2], data[k][3], data[k][4]
  local current = tonumber(redis.call('HGET', key, '_ts_us'))
  local hset, tset = {}, {}
  if not current or tonumber(newest) >= current then
    hset[#hset + 1] = 'ts'; hset[#hset + 1] = newest_text
    hset[#hset + 1] = '_ts_us'; hset[#hset + 1] = newest
  end
  for i = 1, #envelope, 3 do
    if not current or tonumber(envelope[i + 2]) >= current then
      hset[#hset + 1] = envelope[i]; hset[#hset + 1] = envelope[i + 1]
    end
  end
  if #metrics > 0 then
    local known = {}
    local flat = redis.call('HGETALL', times_key)
    for i = 1, #flat, 2 do known[flat[i]] = tonumber(flat[i + 1]) end
    for i = 1, #metrics, 3 do
      local name, at = metrics[i], metrics[i + 2]
      local seen = known[name]
      if not seen or tonumber(at) >= seen then
        hset[#hset + 1] = name; hset[#hset + 1] = metrics[i + 1]
        tset[#tset + 1] = name; tset[#tset + 1] = at
      end
    end
  end
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


def folded(batch: ReadingBatch) -> dict[str, list[Any]]:
    """Per device, what the write script takes: ``[newest time, its ISO text, [field, value,
    time, ...], [metric, value, time, ...]]`` (times: µs as decimal strings), each field
    and metric with the newest value the batch has of it (readings of equal time: the
    later in the batch wins)."""
    ts, device_id, metrics, meta = batch.ts, batch.device_id, batch.metrics, batch.meta
    protocol, status = batch.protocol, batch.status
    application_id, gateway_id = batch.application_id, batch.gateway_id
    # per device: field or metric name -> index of the newest reading that has it
    state: dict[str, tuple[dict[str, int], dict[str, int]]] = {}
    for i in sorted(range(len(ts)), key=ts.__getitem__):  # stable: ties keep batch order
        found = state.get(device_id[i])
        if found is None:
            found = state[device_id[i]] = ({}, {})
        envelope, newest = found
        newest.update(dict.fromkeys(metrics[i], i))
        envelope["protocol"] = i
        if meta[i]:
            envelope.update(dict.fromkeys(meta[i], i))
        if status[i] is not None:
            envelope["status"] = i
        if application_id[i] is not None:
            envelope["application_id"] = i
        if gateway_id[i] is not None:
            envelope["gateway_id"] = i
    text: dict[str, list[Any]] = {  # envelope fields (set only where not None)
        "protocol": protocol, "status": status, "application_id": application_id,
        "gateway_id": gateway_id}
    out: dict[str, list[Any]] = {}
    for device, (envelope, newest) in state.items():
        fields: list[str] = []
        for name, i in envelope.items():
            column = text.get(name)
            if column is not None:
                fields += [name, column[i], str(ts[i])]
            else:
                fields += [NUMERIC_METADATA[name], repr(meta[i][name]), str(ts[i])]
        values: list[str] = []
        for name, i in newest.items():
            values += [name, repr(metrics[i][name]), str(ts[i])]
        last = ts[envelope["protocol"]]
        out[device] = [str(last), iso_micros(last), fields, values]
    return out


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
        state = folded(batch)
        keys: list[str] = []
        for device_id in state:
            keys += [LATEST_KEY.format(device_id=device_id), TIMES_KEY.format(device_id=device_id)]
        readings = list(state.values())
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
