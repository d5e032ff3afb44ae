"""Long-lived connections end when the credential they were opened with is withdrawn.

A token or an API key is checked when a connection opens; afterwards the user may
be deleted or disabled, the device deleted or given a new key. Each
:class:`ConnectionWatch` holds the open connections by that credential (a user
name; a device id and key hash) with a way to close each. Every ``interval_s``
:meth:`ConnectionWatch.run` asks PostgreSQL in one query which of the held
credentials are still valid and closes the connections of the others.

A periodic check, not a notification: users change through ``webscada user``,
SQL or another process, none of which this API process hears of. A connection so
outlives its credential by at most ``interval_s`` (``WEBSCADA_WS_CREDENTIAL_CHECK_S``).
When PostgreSQL cannot answer, nothing is closed and the next round asks again.
Used from one event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Hashable, Iterator
from typing import Generic, TypeVar

import psycopg
from psycopg_pool import PoolTimeout

__all__ = ["Close", "ConnectionWatch", "Lookup"]

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
Close = Callable[[], Awaitable[object]]
Lookup = Callable[[list[K]], Awaitable[set[K]]]
"""Of the credentials given, those still valid."""


class ConnectionWatch(Generic[K]):
    """Open connections by credential (see the module); ``what`` names them in the log."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._open: dict[K, dict[int, Close]] = {}
        self._numbers = itertools.count()

    def held(self) -> int:
        """How many connections are held (no ``__len__``: an empty watch is still a watch)."""
        return sum(len(closers) for closers in self._open.values())

    def add(self, credential: K, close: Close) -> int:
        """Hold a connection opened with ``credential``; the number :meth:`remove` takes."""
        number = next(self._numbers)
        self._open.setdefault(credential, {})[number] = close
        return number

    def remove(self, credential: K, number: int) -> None:
        closers = self._open.get(credential)
        if closers is not None:
            closers.pop(number, None)
            if not closers:
                del self._open[credential]

    @contextlib.contextmanager
    def holding(self, credential: K, close: Close) -> Iterator[None]:
        """:meth:`add` for the block, :meth:`remove` after it."""
        number = self.add(credential, close)
        try:
            yield
        finally:
            self.remove(credential, number)

    async def check(self, lookup: Lookup[K]) -> int:
        """Close the connections whose credential ``lookup`` no longer returns; how many."""
        held = list(self._open)
        if not held:
            return 0
        valid = await lookup(held)
        closed = 0
        for credential in held:
            if credential in valid:
                continue
            for close in list(self._open.pop(credential, {}).values()):
                closed += 1
                try:
                    await close()
                except Exception:  # one connection that fails to close must not spare the others
                    log.exception("closing a %s connection failed", self.what)
        if closed:
            log.info("closed %d %s connection(s) whose credential was withdrawn", closed, self.what)
        return closed

    async def run(self, lookup: Lookup[K], interval_s: float) -> None:
        """:meth:`check` every ``interval_s`` until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.check(lookup)
            except (PoolTimeout, psycopg.Error, OSError) as exc:
                log.warning("%s connections not checked now, PostgreSQL unavailable: %s", self.what, exc)
