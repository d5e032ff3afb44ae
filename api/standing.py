"""Whether the user an access token names may still act: it exists and is not disabled.

An access token is valid until it expires (15 minutes); a user deleted or disabled
meanwhile must lose access at once, not then. Every authenticated request asks
:meth:`UserStanding.allows`, which asks PostgreSQL at most once per ``ttl_s`` per
user (``WEBSCADA_WS_CREDENTIAL_CHECK_S``, the same bound as for long-lived
connections, :mod:`api.connwatch`) and remembers the answer meanwhile. When
PostgreSQL cannot answer, the last answer stands (a user never checked is let
through: the token itself is valid), so an outage does not lock everyone out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import psycopg
from psycopg_pool import PoolTimeout

__all__ = ["UserStanding"]

log = logging.getLogger(__name__)

_MAX_REMEMBERED = 10_000


class UserStanding:
    """See the module; ``lookup`` gives those of the user names that exist and are enabled."""

    def __init__(self, lookup: Callable[[list[str]], Awaitable[set[str]]], ttl_s: float, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._lookup = lookup
        self._ttl_s = ttl_s
        self._clock = clock
        self._answers: dict[str, tuple[float, bool]] = {}

    async def allows(self, username: str) -> bool:
        now = self._clock()
        known = self._answers.get(username)
        if known is not None and now - known[0] < self._ttl_s:
            return known[1]
        try:
            allowed = username in await self._lookup([username])
        except (psycopg.Error, PoolTimeout, OSError) as exc:
            log.warning("standing of user %s not checked (PostgreSQL: %s); the last answer stands",
                        username, exc)
            return True if known is None else known[1]
        if len(self._answers) >= _MAX_REMEMBERED and username not in self._answers:
            self._answers.pop(next(iter(self._answers)))  # the oldest entry
        self._answers.pop(username, None)
        self._answers[username] = (now, allowed)
        return allowed
