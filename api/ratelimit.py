"""Fixed-window rate limiting in Redis, shared by every process of the API.

``await hit(redis, "login:addr:127.0.0.1", limit=10, window_s=60)`` counts one
attempt against the key and says whether it is allowed and, if not, how many
seconds until the window resets (the value of a ``Retry-After`` header).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["KEY_PREFIX", "RateLimitResult", "hit", "peek", "reset"]

KEY_PREFIX = "webscada:ratelimit:"

# INCR and the first EXPIRE in one step, so a crash between them never leaves a
# counter without a TTL (which would lock the key out for good).
_HIT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
local ttl = redis.call('TTL', KEYS[1])
if ttl < 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {count, ttl}
"""


@dataclass(frozen=True, slots=True)
class RateLimitResult:
    """The outcome of one :func:`hit`."""

    allowed: bool
    retry_after_s: int  # 0 when allowed
    count: int = 0  # hits in the current window, this one included


async def hit(redis: Any, key: str, *, limit: int, window_s: int) -> RateLimitResult:
    """Count one hit on ``key``; allowed while the window holds at most ``limit`` hits.

    ``redis`` is a ``redis.asyncio.Redis``. Redis errors propagate: the caller
    decides whether an unreachable Redis fails open or closed.
    """
    if limit < 1 or window_s < 1:
        raise ValueError(f"limit and window_s must be at least 1, got {limit} and {window_s}")
    count, ttl = await redis.eval(_HIT, 1, KEY_PREFIX + key, window_s)
    count, ttl = int(count), int(ttl)
    if count <= limit:
        return RateLimitResult(True, 0, count)
    return RateLimitResult(False, max(1, ttl), count)


async def reset(redis: Any, key: str) -> None:
    """Forget the hits on ``key`` (e.g. after a successful login)."""
    await redis.delete(KEY_PREFIX + key)


async def peek(redis: Any, key: str, *, limit: int) -> RateLimitResult:
    """Whether one more hit on ``key`` would be allowed, without counting one."""
    count, ttl = await redis.eval(_PEEK, 1, KEY_PREFIX + key)
    count, ttl = int(count), int(ttl)
    if count < limit:
        return RateLimitResult(True, 0, count)
    return RateLimitResult(False, max(1, ttl), count)


_PEEK = """
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
return {count, redis.call('TTL', KEYS[1])}
"""
