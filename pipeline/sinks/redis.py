"""Latest values per device in a Redis hash (DESIGN section 5)."""

from __future__ import annotations

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

# One call per device per batch. ARGV: the TTL, then per reading (oldest first) its
# time, its number of field/value items and those items. A reading is written only
# when the stored one is not newer: ISO-8601 strings of fixed width compare as the
# times they name. The TTL is refreshed when anything was written.
_WRITE_IF_NEWER = """
local current = redis.call('HGET', KEYS[1], 'ts')
local i, wrote = 2, 0
while i <= #ARGV do
  local ts, n = ARGV[i], tonumber(ARGV[i + 1])
  if not current or ts >= current then
    redis.call('HSET', KEYS[1], 'ts', ts, unpack(ARGV, i + 2, i + 1 + n))
    current = ts
    wrote = wrote + 1
  end
  i = i + 2 + n
end
if wrote > 0 then
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
end
return wrote
"""
# readings per script call, so that one call never holds Redis for long
_PER_CALL = 200


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
        try:
            if self._script is None:  # loaded once; again after Redis lost its scripts
                self._script = await self._client.script_load(_WRITE_IF_NEWER)
            async with self._client.pipeline(transaction=False) as pipe:
                for device_id, rows in by_device.items():
                    rows.sort(key=ts.__getitem__)  # oldest first: the newest wins
                    key = LATEST_KEY.format(device_id=device_id)
                    for start in range(0, len(rows), _PER_CALL):
                        args: list[str | int] = [self._ttl_s]
                        for i in rows[start:start + _PER_CALL]:
                            fields = latest_fields(batch, i)
                            args += [iso_micros(ts[i]), len(fields), *fields]
                        pipe.evalsha(self._script, 1, key, *args)
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
