"""Latest values per device in a Redis hash (DESIGN section 5)."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pipeline.errors import PermanentSinkError, TransientSinkError
from pipeline.sinks.base import Sink
from schemas import Telemetry, iso_utc

__all__ = ["LATEST_KEY", "RedisLatestSink", "latest_fields"]

LATEST_KEY = "webscada:latest:{device_id}"

# Write only when the stored reading is not newer: ISO-8601 strings of fixed
# width compare as the times they name. The TTL is refreshed on every write.
_WRITE_IF_NEWER = """
local current = redis.call('HGET', KEYS[1], 'ts')
if current and current > ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'ts', ARGV[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""


def latest_fields(record: Telemetry) -> list[str]:
    """Field/value pairs of the hash besides ``ts``, flattened for HSET."""
    fields: list[str] = ["protocol", record.protocol]
    for name, value in record.metrics.items():
        fields += [name, repr(value)]
    meta = record.metadata
    for name, number in (("signal_strength", meta.signal_strength),
                         ("battery_level", meta.battery_level), ("snr", meta.snr)):
        if number is not None:
            fields += [name, repr(number)]
    if record.status is not None:
        fields += ["status", record.status]
    if record.application_id is not None:
        fields += ["application_id", record.application_id]
    return fields


class RedisLatestSink(Sink):
    name = "redis"

    def __init__(self, *, url: str, ttl_s: int) -> None:
        super().__init__()
        self._url = url
        self._ttl_s = ttl_s
        self._client: aioredis.Redis | None = None
        self._script: Any = None

    async def setup(self) -> None:
        self._client = aioredis.from_url(self._url, socket_timeout=5, socket_connect_timeout=3)
        self._script = self._client.register_script(_WRITE_IF_NEWER)

    async def write(self, batch: list[Telemetry]) -> None:
        assert self._client is not None, "setup() first"
        # Oldest first, so that within one batch the newest reading wins.
        ordered = sorted(batch, key=lambda r: r.ts)
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for record in ordered:
                    key = LATEST_KEY.format(device_id=record.device_id)
                    args = [iso_utc(record.ts), self._ttl_s, *latest_fields(record)]
                    await self._script(keys=[key], args=args, client=pipe)
                await pipe.execute()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise TransientSinkError(f"redis unreachable: {exc}") from exc
        except ResponseError as exc:
            if "NOSCRIPT" in str(exc) or "LOADING" in str(exc) or "BUSY" in str(exc):
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
