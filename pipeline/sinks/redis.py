"""Latest values per device in a Redis hash (DESIGN section 5)."""

from __future__ import annotations

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
from schemas.batch import META_NUMBERS, ReadingBatch, iso_micros

__all__ = ["LATEST_KEY", "RedisLatestSink", "latest_fields"]

LATEST_KEY = "webscada:latest:{device_id}"

# One call per group of devices. KEYS: their hashes; ARGV[1]: the TTL; ARGV[2]: JSON, per
# key (in KEYS order) a list of readings oldest first, each [time, field, value, ...]. A
# reading is written only when the stored one is not newer: ISO-8601 strings of fixed
# width compare as the times they name. A key's TTL is refreshed when anything was
# written to it. Packing every field as its own Redis argument cost the client more than
# all the rest of the sink; one JSON argument is packed in C on both sides.
_WRITE_IF_NEWER = """
local ttl = tonumber(ARGV[1])
local data = cjson.decode(ARGV[2])
local wrote = 0
for k = 1, #KEYS do
  local key = KEYS[k]
  local current = redis.call('HGET', key, 'ts')
  local before = wrote
  for _, reading in ipairs(data[k]) do
    local ts = reading[1]
    if not current or ts >= current then
      redis.call('HSET', key, 'ts', unpack(reading))
      current = ts
      wrote = wrote + 1
    end
  end
  if wrote > before then
    redis.call('EXPIRE', key, ttl)
  end
end
return wrote
"""
# devices per script call, so that one call never holds Redis for long
_KEYS_PER_CALL = 100


def latest_fields(batch: ReadingBatch, i: int) -> list[str]:
    """Field/value pairs of the hash besides ``ts`` for reading ``i``, flattened for HSET."""
    fields: list[str] = ["protocol", batch.protocol[i]]
    for name, value in batch.metrics[i].items():
        fields += [name, repr(value)]
    meta = batch.meta[i]
    if meta:
        for name in META_NUMBERS:
            number = meta.get(name)
            if number is not None:
                fields += [name, repr(number)]
    status = batch.status[i]
    if status is not None:
        fields += ["status", status]
    application_id = batch.application_id[i]
    if application_id is not None:
        fields += ["application_id", application_id]
    return fields


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
        readings: list[list[list[str]]] = []
        for device_id, rows in by_device.items():
            rows.sort(key=ts.__getitem__)  # oldest first: the newest wins
            keys.append(LATEST_KEY.format(device_id=device_id))
            readings.append([[iso_micros(ts[i]), *latest_fields(batch, i)] for i in rows])
        try:
            if self._script is None:  # loaded once; again after Redis lost its scripts
                self._script = await self._client.script_load(_WRITE_IF_NEWER)
            async with self._client.pipeline(transaction=False) as pipe:
                for start in range(0, len(keys), _KEYS_PER_CALL):
                    end = start + _KEYS_PER_CALL
                    pipe.evalsha(self._script, len(keys[start:end]), *keys[start:end],
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
