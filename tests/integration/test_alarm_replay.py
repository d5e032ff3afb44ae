"""Replay and crash safety of the alarm engine's PostgreSQL state (real PostgreSQL, engine in-process).

A restarted worker re-reads the readings whose offsets were not committed: the
same transitions must not happen twice, and an event whose publication a crash
interrupted must still be published, once, by the relay.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from pipeline.alarms import AlarmEvent, parse_rule
from pipeline.alarms.catalog import RuleCatalog
from pipeline.alarms.service import AlarmService
from pipeline.alarms.store import AlarmStore
from pipeline.producer import Outgoing
from pipeline.settings import Settings
from schemas import Telemetry, utcnow
from tests.conftest import unique_id

pytestmark = pytest.mark.integration


@pytest.fixture
async def store(stack: Settings) -> AsyncIterator[AlarmStore]:
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        stack.pg_conninfo, min_size=1, max_size=2, open=False, kwargs={"autocommit": True})
    await pool.open()
    try:
        yield AlarmStore(pool)
    finally:
        await pool.close()


class Published:
    """Stands in for Kafka: records what was published; can fail like a crash would."""

    def __init__(self) -> None:
        self.events: list[AlarmEvent] = []
        self.fail = False

    async def __call__(self, records: list[Outgoing]) -> None:
        if self.fail:
            raise RuntimeError("worker killed before Kafka acknowledged")
        self.events += [AlarmEvent.decode(r.value) for r in records]


def readings(device_id: str, values: list[float]) -> list[Telemetry]:
    start = utcnow() - timedelta(seconds=600)
    return [Telemetry(device_id=device_id, protocol="mqtt", ts=start + timedelta(seconds=i),
                      received_at=utcnow(), message_id=f"{device_id}-{i}", metrics={"level": v})
            for i, v in enumerate(values)]


async def _rule(store: AlarmStore, device_id: str) -> str:
    rule = parse_rule({"name": unique_id("replay"), "device_id": device_id, "metric": "level",
                       "operator": ">", "threshold": 50, "deadband": 2})
    return (await RuleCatalog(store).create(rule)).id


def _service(store: AlarmStore, publish: Callable[[list[Outgoing]], Awaitable[None]]) -> AlarmService:
    return AlarmService(store, publish, relay_after_s=0.0)


async def _history(store: AlarmStore, rule_id: str) -> list[tuple[str, bool]]:
    rows = await store.query("SELECT event, published_at IS NOT NULL AS published FROM alarm_events"
                             " WHERE rule_id = %s ORDER BY id", (rule_id,))
    return [(row["event"], row["published"]) for row in rows]


async def test_replayed_readings_change_nothing(store: AlarmStore) -> None:
    device = unique_id("replay")
    rule_id = await _rule(store, device)
    batch = readings(device, [55, 49, 51, 40, 60, 49, 30])  # raise, clear, raise, clear
    first = Published()
    assert [e.event for e in await _service(store, first).process(batch)] == [
        "raised", "cleared", "raised", "cleared"]

    # A restarted worker (fresh in-memory state) reads the same offsets again, in two batches.
    again = Published()
    restarted = _service(store, again)
    assert await restarted.process(batch[:3]) == []
    assert await restarted.process(batch[3:]) == []
    assert again.events == []
    assert await _history(store, rule_id) == [("raised", True), ("cleared", True)] * 2
    alarms = await store.query("SELECT state FROM alarms WHERE rule_id = %s", (rule_id,))
    assert sorted(a["state"] for a in alarms) == ["cleared_unacked", "cleared_unacked"]

    # New readings after the replayed ones are judged as usual.
    later = [Telemetry(device_id=device, protocol="mqtt", ts=batch[-1].ts + timedelta(seconds=1),
                       received_at=utcnow(), message_id=f"{device}-new", metrics={"level": 70.0})]
    assert [e.event for e in await restarted.process(later)] == ["raised"]


async def test_event_left_unpublished_by_a_crash_is_relayed_once(store: AlarmStore) -> None:
    device = unique_id("crash")
    rule_id = await _rule(store, device)
    batch = readings(device, [60])
    crashed = Published()
    crashed.fail = True
    with pytest.raises(RuntimeError):
        await _service(store, crashed).process(batch)  # committed in PostgreSQL, not on Kafka
    assert await _history(store, rule_id) == [("raised", False)]

    published = Published()
    restarted = _service(store, published)
    assert await restarted.process(batch) == []  # the replayed reading: no second raise
    await restarted.relay()  # publishes what the crash left behind
    assert [(e.event, e.device_id) for e in published.events if e.rule_id == rule_id] == [
        ("raised", device)]
    assert await _history(store, rule_id) == [("raised", True)]
    await restarted.relay()
    assert len([e for e in published.events if e.rule_id == rule_id]) == 1


async def test_one_active_alarm_per_rule_and_device_under_concurrency(store: AlarmStore,
                                                                       stack: Settings) -> None:
    """A second worker judging the same device (as after a rebalance) finds the alarm active."""
    device = unique_id("race")
    rule_id = await _rule(store, device)
    a, b = _service(store, Published()), _service(store, Published())
    ts = utcnow() - timedelta(seconds=60)
    one = [Telemetry(device_id=device, protocol="mqtt", ts=ts, received_at=utcnow(),
                     message_id="m1", metrics={"level": 60.0})]
    two = [Telemetry(device_id=device, protocol="mqtt", ts=ts + timedelta(seconds=1),
                     received_at=utcnow(), message_id="m2", metrics={"level": 61.0})]
    events = await a.process(one) + await b.process(two)
    assert [e.event for e in events] == ["raised"]
    with psycopg.connect(stack.pg_conninfo) as conn:
        count = conn.execute("SELECT count(*) FROM alarms WHERE rule_id = %s", (rule_id,)).fetchone()
    assert count == (1,)
