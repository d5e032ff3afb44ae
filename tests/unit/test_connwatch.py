"""Unit tests of api.connwatch: connections end when their credential is withdrawn."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import psycopg
import pytest

from api.connwatch import ConnectionWatch


async def test_only_connections_of_withdrawn_credentials_are_closed() -> None:
    watch: ConnectionWatch[str] = ConnectionWatch("user")
    assert watch  # an empty watch is still one (``if watch`` in the routes)
    closed: list[str] = []

    def closer(name: str) -> Callable[[], Awaitable[None]]:
        async def close() -> None:
            closed.append(name)
        return close

    watch.add("alice", closer("alice-1"))
    watch.add("alice", closer("alice-2"))
    bob = watch.add("bob", closer("bob"))
    with watch.holding("carol", closer("carol")):
        assert watch.held() == 4
    asked: list[list[str]] = []

    async def lookup(names: list[str]) -> set[str]:
        asked.append(sorted(names))
        return {"bob"}

    assert await watch.check(lookup) == 2
    assert sorted(closed) == ["alice-1", "alice-2"] and asked == [["alice", "bob"]]
    assert watch.held() == 1  # bob's
    watch.remove("bob", bob)
    assert await watch.check(lookup) == 0 and len(asked) == 1  # nothing held: no query


async def test_a_failing_close_does_not_spare_the_others() -> None:
    watch: ConnectionWatch[tuple[str, str]] = ConnectionWatch("device")
    closed: list[int] = []

    async def broken() -> None:
        raise RuntimeError("already gone")

    async def fine() -> None:
        closed.append(1)

    watch.add(("dev-1", "old-hash"), broken)
    watch.add(("dev-1", "old-hash"), fine)

    async def nothing_valid(credentials: list[tuple[str, str]]) -> set[tuple[str, str]]:
        return set()

    assert await watch.check(nothing_valid) == 2 and closed == [1]


async def test_run_checks_periodically_and_closes_nothing_while_postgresql_is_away() -> None:
    watch: ConnectionWatch[str] = ConnectionWatch("user")
    closed = asyncio.Event()

    async def close() -> None:
        closed.set()

    watch.add("alice", close)
    calls = 0

    async def lookup(names: list[str]) -> set[str]:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise psycopg.OperationalError("connection refused")
        return set()

    task = asyncio.create_task(watch.run(lookup, 0.01))
    try:
        await asyncio.wait_for(closed.wait(), 5)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert calls == 3
