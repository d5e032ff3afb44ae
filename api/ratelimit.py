"""Fixed-window rate limiting in Redis, shared by every process of the API.

``await hit(redis, "login:addr:127.0.0.1", limit=10, window_s=60)`` counts one
attempt against the key and says whether it is allowed and, if not, how many
seconds until the window resets (the value of a ``Retry-After`` header).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "KEY_PREFIX",
    "LOGIN_RULES",
    "LoginLimits",
    "RateLimitResult",
    "Verdict",
    "attempt",
    "hit",
    "login_attempt",
    "login_keys",
    "login_not_evaluated",
    "login_succeeded",
    "peek",
    "refund",
    "reset",
]

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


# ---- attempts reserved before they are evaluated -----------------------------------------
#
# ``hit`` counts after the fact; a check made before an expensive evaluation (a password
# hash) and a count made after it let parallel requests all pass the check. The functions
# below count and decide in one script instead: an attempt is counted as a failure when it
# is allowed, and refunded when it turns out to be a success, so at most ``limit``
# attempts are ever evaluated in a window, however many arrive at once.

_ATTEMPT = """
local window = tonumber(ARGV[1])
for i = 1, #KEYS do
  local count = tonumber(redis.call('GET', KEYS[i]) or '0')
  if count >= tonumber(ARGV[i + 1]) then
    local ttl = redis.call('TTL', KEYS[i])
    if ttl < 1 then ttl = 1 end
    return {i, ttl}
  end
end
for i = 1, #KEYS do
  redis.call('INCR', KEYS[i])
  if redis.call('TTL', KEYS[i]) < 0 then redis.call('EXPIRE', KEYS[i], window) end
end
return {0, 0}
"""

_REFUND = """
for i = 1, #KEYS do
  if tonumber(redis.call('GET', KEYS[i]) or '0') > 0 then redis.call('DECR', KEYS[i]) end
end
return 0
"""


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether an attempt may be evaluated; if not, which limit refused it and for how long."""

    allowed: bool
    retry_after_s: int = 0
    refused_by: str | None = None  # the key (without prefix) or the login rule that refused


async def attempt(redis: Any, limits: list[tuple[str, int]], *, window_s: int) -> Verdict:
    """Count one attempt on every key unless one of them has reached its limit already.

    Either every counter grows by one (allowed) or none does (refused), in one step.
    """
    if window_s < 1 or any(limit < 1 for _, limit in limits):
        raise ValueError("limits and window_s must be at least 1")
    keys = [KEY_PREFIX + key for key, _ in limits]
    index, ttl = await redis.eval(_ATTEMPT, len(keys), *keys, window_s, *(n for _, n in limits))
    index, ttl = int(index), int(ttl)
    if index == 0:
        return Verdict(True)
    return Verdict(False, max(1, ttl), limits[index - 1][0])


async def refund(redis: Any, keys: list[str]) -> None:
    """Take back one counted attempt on each key (the attempt was not a failure)."""
    full = [KEY_PREFIX + key for key in keys]
    await redis.eval(_REFUND, len(full), *full)


# ---- logins ----------------------------------------------------------------------------------
#
# Failed logins are limited per (user, address) pair and per address; a stranger's
# failures from elsewhere never count against the pair the user logs in from. Failures of
# one user from all addresses together only slow down further attempts: past
# ``user_delay_after`` in a window, each allowed attempt makes the next one wait
# 1, 2, 4, ... seconds (at most ``user_max_delay_s``), and past ``user_ceiling`` the user is
# refused from every address until the window ends. An address the user has logged in
# from successfully before (remembered for ``known_address_ttl_s``) is exempt from both
# user-wide rules, so the user's usual place keeps working whatever strangers do.

_LOGIN = """
local window = tonumber(ARGV[1])
local known = redis.call('SISMEMBER', KEYS[5], ARGV[7]) == 1
local n = 2
if not known then n = 3 end
for i = 1, n do
  local count = tonumber(redis.call('GET', KEYS[i]) or '0')
  if count >= tonumber(ARGV[i + 1]) then
    local ttl = redis.call('TTL', KEYS[i])
    if ttl < 1 then ttl = 1 end
    return {i, ttl}
  end
end
if not known then
  local wait = redis.call('PTTL', KEYS[4])
  if wait > 0 then return {4, math.ceil(wait / 1000)} end
end
local user = 0
for i = 1, 3 do
  local count = redis.call('INCR', KEYS[i])
  if redis.call('TTL', KEYS[i]) < 0 then redis.call('EXPIRE', KEYS[i], window) end
  user = count
end
local after = tonumber(ARGV[5])
if user > after then
  local delay = math.min(1000 * 2 ^ math.min(user - after - 1, 30), tonumber(ARGV[6]))
  redis.call('SET', KEYS[4], '1', 'PX', math.max(1, math.floor(delay)))
end
return {0, 0}
"""

_LOGIN_OK = """
redis.call('DEL', KEYS[2])
for i = 1, 3, 2 do
  if tonumber(redis.call('GET', KEYS[i]) or '0') > 0 then redis.call('DECR', KEYS[i]) end
end
redis.call('SADD', KEYS[5], ARGV[1])
redis.call('EXPIRE', KEYS[5], ARGV[2])
return 0
"""

LOGIN_RULES = ("address", "user-address", "user", "user-delay")


@dataclass(frozen=True, slots=True)
class LoginLimits:
    """The login limits of :mod:`api.config` (``login_*`` settings)."""

    per_address: int = 20
    per_user_address: int = 5
    user_ceiling: int = 100
    user_delay_after: int = 10
    user_max_delay_s: int = 60
    window_s: int = 300
    known_address_ttl_s: int = 30 * 86400


def login_keys(username: str, address: str) -> list[str]:
    """The counters of a login (without prefix): address, (user, address), user, the user's
    delay marker, the user's known addresses. An address holds no space, so the pair key
    is unambiguous."""
    return [f"login:addr:{address}", f"login:pair:{address} {username}", f"login:user:{username}",
            f"login:delay:{username}", f"login:known:{username}"]


async def login_attempt(redis: Any, username: str, address: str, limits: LoginLimits) -> Verdict:
    """Decide and count one login attempt of ``username`` from ``address`` in one step."""
    keys = [KEY_PREFIX + key for key in login_keys(username, address)]
    index, ttl = await redis.eval(
        _LOGIN, len(keys), *keys, limits.window_s, limits.per_address, limits.per_user_address,
        limits.user_ceiling, limits.user_delay_after, limits.user_max_delay_s * 1000, address,
    )
    index, ttl = int(index), int(ttl)
    if index == 0:
        return Verdict(True)
    return Verdict(False, max(1, ttl), LOGIN_RULES[index - 1])


async def login_succeeded(redis: Any, username: str, address: str, limits: LoginLimits) -> None:
    """The attempt was right: clear the pair, refund the address and the user, and
    remember the address as one the user logs in from."""
    keys = [KEY_PREFIX + key for key in login_keys(username, address)]
    await redis.eval(_LOGIN_OK, len(keys), *keys, address, limits.known_address_ttl_s)


async def login_not_evaluated(redis: Any, username: str, address: str) -> None:
    """The attempt could not be evaluated (a store or the hashing pool was unavailable):
    refund it on the address, pair and user counters."""
    await refund(redis, login_keys(username, address)[:3])
