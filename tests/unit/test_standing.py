"""UserStanding: asked once per TTL per user, the last answer standing through an outage."""

from __future__ import annotations

import psycopg
import pytest

from api.standing import UserStanding


class _Users:
    def __init__(self) -> None:
        self.enabled = {"ann", "bob"}
        self.asked: list[list[str]] = []
        self.down = False

    async def lookup(self, names: list[str]) -> set[str]:
        self.asked.append(names)
        if self.down:
            raise psycopg.OperationalError("connection refused")
        return self.enabled & set(names)


@pytest.fixture
def clock() -> list[float]:
    return [100.0]


async def test_answers_are_remembered_for_the_ttl_then_asked_again(clock: list[float]) -> None:
    users = _Users()
    standing = UserStanding(users.lookup, 10.0, clock=lambda: clock[0])
    assert await standing.allows("ann") and await standing.allows("ann")
    assert users.asked == [["ann"]]
    users.enabled.discard("ann")  # deleted or disabled
    clock[0] += 9.9
    assert await standing.allows("ann")  # within the TTL: still the remembered answer
    clock[0] += 0.2
    assert not await standing.allows("ann")
    assert not await standing.allows("nobody")
    assert len(users.asked) == 3


async def test_an_outage_keeps_the_last_answer(clock: list[float]) -> None:
    users = _Users()
    standing = UserStanding(users.lookup, 1.0, clock=lambda: clock[0])
    assert await standing.allows("bob")
    users.enabled.discard("ann")
    assert not await standing.allows("ann")
    users.down = True
    clock[0] += 5
    assert await standing.allows("bob") and not await standing.allows("ann")
    assert await standing.allows("carol")  # never checked: the valid token lets it through
