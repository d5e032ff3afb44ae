"""The stream worker under crashes and a store outage (issue 4's acceptance checks).

Readings go to ``telemetry.raw`` open-loop (send times fixed in advance) from a
thread while the test kills the worker or stops PostgreSQL; afterwards every
store is compared with what was sent. These tests kill the shared session
worker and stop shared services; run them alone:

    flock -x /tmp/webscada-stack.lock .venv/bin/pytest -m disruptive tests/integration

Each restarts, in a ``finally``, whatever it stopped.
"""

from __future__ import annotations

import csv
import io
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
import redis
from confluent_kafka import Producer
from influxdb_client import InfluxDBClient

from infra import stack as local_stack
from infra.services.postgres import Postgres
from pipeline.alarms import AlarmEvent
from pipeline.settings import Settings, Topics
from schemas import Telemetry, iso_utc, utcnow
from tests.conftest import WorkerProcess, unique_id, wait_until
from tests.integration.helpers import alarm_events_keyed

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.disruptive]

THRESHOLD = 90.0
HIGH, NORMAL = 95.0, 50.0


@dataclass
class Run:
    """``per_device`` readings for each of ``devices`` devices, ``step`` apart in device time.

    Reading ``seq`` of a device carries ``seq`` and ``level``; ``level`` is HIGH inside
    the ``excursions`` (half-open seq ranges) and NORMAL elsewhere, so every excursion
    must raise one alarm of the test's rule and clear it again.
    """

    prefix: str
    devices: int
    per_device: int
    excursions: list[tuple[int, int]]
    step: timedelta = timedelta(milliseconds=50)
    base: datetime = field(default_factory=lambda: utcnow() - timedelta(minutes=20))
    application_id: str = field(default_factory=lambda: unique_id("app"))
    sent: int = 0  # readings Kafka acknowledged, in send order

    @property
    def device_ids(self) -> list[str]:
        return [f"{self.prefix}-{d:03d}" for d in range(self.devices)]

    @property
    def total(self) -> int:
        return self.devices * self.per_device

    def ts(self, seq: int) -> datetime:
        return self.base + seq * self.step

    def level(self, seq: int) -> float:
        return HIGH if any(lo <= seq < hi for lo, hi in self.excursions) else NORMAL

    def send(self, settings: Settings, rate: float, stop: threading.Event) -> None:
        """Produce every reading, seq by seq across the devices, at ``rate`` readings/s."""
        producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "acks": "all",
                             "enable.idempotence": True, "linger.ms": 5})

        def acked(err: object, _msg: object) -> None:
            assert err is None, err
            self.sent += 1

        started = time.monotonic()
        devices = self.device_ids
        for n in range(self.total):
            if stop.is_set():
                break
            seq, device = divmod(n, self.devices)
            due = started + n / rate
            while (wait := due - time.monotonic()) > 0:
                producer.poll(wait)
            record = Telemetry(device_id=devices[device], protocol="mqtt", ts=self.ts(seq),
                               received_at=utcnow(), message_id=f"{devices[device]}-{seq}",
                               metrics={"seq": float(seq), "level": self.level(seq)},
                               application_id=self.application_id)
            producer.produce(Topics.RAW, record.encode(), devices[device].encode(), on_delivery=acked)
            producer.poll(0)
        assert producer.flush(60) == 0, "Kafka did not acknowledge every reading"


@pytest.fixture
def db(stack: Settings) -> Iterator[Callable[..., list[tuple[Any, ...]]]]:
    def query(sql: str, *params: object) -> list[tuple[Any, ...]]:
        with psycopg.connect(stack.pg_conninfo, autocommit=True, connect_timeout=5) as conn:
            return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]

    yield query


def create_rule(stack: Settings, run: Run) -> str:
    with psycopg.connect(stack.pg_conninfo, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO alarm_rules (name, application_id, metric, operator, threshold, deadband)"
            " VALUES (%s, %s, 'level', '>', %s, 5) RETURNING id",
            (f"crash test {run.prefix}", run.application_id, THRESHOLD)).fetchone()
    assert row is not None
    time.sleep(3)  # the alarm engine re-reads rules every 2 s
    return str(row[0])


def retire_rule(stack: Settings, rule_id: str) -> None:
    with psycopg.connect(stack.pg_conninfo, autocommit=True) as conn:
        conn.execute("UPDATE alarm_rules SET deleted_at = now(), enabled = false WHERE id = %s",
                     (rule_id,))


def influx_seq(stack: Settings, run: Run) -> dict[str, list[tuple[datetime, float]]]:
    """Every (time, seq) stored for each of the run's devices, over every series."""
    # Only the run's own time span: a cheap query, which does not slow InfluxDB down itself.
    start = iso_utc(run.ts(0) - timedelta(seconds=1))
    stop = iso_utc(run.ts(run.per_device) + timedelta(seconds=1))
    flux = (
        f'from(bucket: "{stack.influx_bucket}") |> range(start: {start}, stop: {stop})'
        f' |> filter(fn: (r) => r._measurement == "telemetry" and r._field == "seq"'
        f' and strings.hasPrefix(v: r.device_id, prefix: "{run.prefix}-"))'
        ' |> keep(columns: ["_time", "_value", "device_id"])'
    )
    found: dict[str, list[tuple[datetime, float]]] = defaultdict(list)
    with InfluxDBClient(url=stack.influx_url, token=stack.influx_token.get_secret_value(),
                        org=stack.influx_org, timeout=60_000) as client:
        raw = client.query_api().query_raw('import "strings"\n' + flux, dialect=None)
        text = raw.data.decode() if hasattr(raw, "data") else str(raw)
    for table in text.split("\r\n\r\n"):
        rows = csv.DictReader(io.StringIO(table.strip()))
        for row in rows:
            if row.get("device_id"):
                found[row["device_id"]].append(
                    (datetime.fromisoformat(row["_time"].replace("Z", "+00:00")), float(row["_value"])))
    return found


def influx_count(stack: Settings, run: Run) -> int:
    return sum(len(points) for points in influx_seq(stack, run).values())


def alarm_events(stack: Settings, run: Run) -> list[AlarmEvent]:
    """The AlarmEvents of the run's devices on topic ``alarms``, read from the beginning."""
    return alarm_events_keyed(stack, lambda key: key.startswith(f"{run.prefix}-".encode()))


def assert_everything_stored_once(stack: Settings, run: Run, rule_id: str,
                                  db: Callable[..., list[tuple[Any, ...]]]) -> None:
    # InfluxDB: each reading once, at its own time, with its own value; nothing else.
    stored = influx_seq(stack, run)
    assert sorted(stored) == run.device_ids
    for device, points in stored.items():
        times = Counter(t for t, _ in points)
        assert len(points) == run.per_device, f"{device}: {len(points)} points"
        assert max(times.values()) == 1, f"{device}: a time stored twice"
        assert sorted(points) == [(run.ts(seq), float(seq)) for seq in range(run.per_device)], device

    # PostgreSQL: one devices row each, at the newest reading.
    rows = db("SELECT id, last_seen, last_message_id FROM devices WHERE id LIKE %s ORDER BY id",
              f"{run.prefix}-%")
    last = run.per_device - 1
    assert rows == [(d, run.ts(last), f"{d}-{last}") for d in run.device_ids]

    # Alarms: every excursion raised (and cleared) exactly once, at its device times, and
    # each transition published to Kafka exactly once.
    expected = sorted((d, run.ts(lo), run.ts(hi)) for d in run.device_ids for lo, hi in run.excursions)
    alarms = db("SELECT device_id, raised_ts, cleared_ts, id FROM alarms WHERE rule_id = %s"
                " ORDER BY device_id, raised_ts", rule_id)
    assert [row[:3] for row in alarms] == expected
    history = Counter(event for (event,) in db(
        "SELECT event FROM alarm_events WHERE rule_id = %s", rule_id))
    assert history == {"raised": len(expected), "cleared": len(expected)}
    # Kafka: every transition published, and nothing else. A kill between Kafka's ack and the
    # outbox mark in PostgreSQL publishes that event again when it is relayed: a repeat must
    # be the very same event (alarm, kind, device time, state, value), which consumers drop.
    events = [e for e in alarm_events(stack, run) if e.rule_id == rule_id]
    assert {(e.alarm_id, e.event) for e in events} == {
        (str(row[3]), event) for row in alarms for event in ("raised", "cleared")}
    distinct = {(e.alarm_id, e.event): e for e in events}
    assert all(e == distinct[(e.alarm_id, e.event)] for e in events), "a repeat that differs"
    repeats = len(events) - len(distinct)
    if repeats:
        print(f"\n{repeats} alarm event(s) published again after a kill between ack and outbox mark")


def wait_for_the_run(stack: Settings, run: Run, rule_id: str,
                     db: Callable[..., list[tuple[Any, ...]]], timeout: float) -> dict[str, float]:
    """Wait until every store has the whole run; returns when each got there (monotonic s)."""
    last = run.per_device - 1
    expected = run.devices * len(run.excursions)
    reached: dict[str, float] = {}
    wait_until(lambda: influx_count(stack, run) >= run.total, timeout=timeout, interval=2,
               what=f"{run.total} readings in InfluxDB")
    reached["influxdb"] = time.monotonic()
    wait_until(lambda: db("SELECT count(*) FROM devices WHERE id LIKE %s AND last_message_id LIKE %s",
                          f"{run.prefix}-%", f"%-{last}")[0][0] == run.devices,
               timeout=120, interval=0.5, what="every devices row at its newest reading")
    reached["postgres"] = time.monotonic()
    wait_until(lambda: db("SELECT count(*) FROM alarms WHERE rule_id = %s AND cleared_ts IS NOT NULL",
                          rule_id)[0][0] >= expected,
               timeout=120, interval=0.5, what=f"{expected} alarms raised and cleared")
    reached["alarms"] = time.monotonic()
    time.sleep(5)  # late duplicates, if any, would land now
    return reached


def redis_seq(stack: Settings, devices: list[str]) -> dict[str, float]:
    client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    try:
        with client.pipeline(transaction=False) as pipe:
            for device in devices:
                pipe.hget(f"webscada:latest:{device}", "seq")
            values = pipe.execute()
    finally:
        client.close()
    return {d: float(v) for d, v in zip(devices, values, strict=True) if v is not None}


def test_worker_killed_three_times_during_50k_readings_stores_each_once(
    worker: WorkerProcess, stack: Settings, db: Callable[..., list[tuple[Any, ...]]]
) -> None:
    run = Run(prefix=unique_id("crash"), devices=25, per_device=2_000,
              excursions=[(300, 320), (900, 920), (1500, 1520)])
    rule_id = create_rule(stack, run)
    stop = threading.Event()
    sender = threading.Thread(target=run.send, args=(stack, 1_000.0, stop), daemon=True)
    sender.start()
    rng = random.Random(4)
    kills = 0
    try:
        for _ in range(3):
            # Kill only a worker that is busy: its Redis values moved since it (re)started.
            before = sum(redis_seq(stack, run.device_ids).values())

            def progressed(before: float = before) -> bool:
                return sum(redis_seq(stack, run.device_ids).values()) > before + 500

            wait_until(progressed, timeout=120, interval=0.5, what="progress of the (re)started worker")
            time.sleep(rng.uniform(0.5, 3.0))
            worker.kill()
            kills += 1
            print(f"kill -9 #{kills} after {run.sent} readings sent")
            time.sleep(1)
            worker.start()
        sender.join(300)
        assert not sender.is_alive() and run.sent == run.total
        wait_for_the_run(stack, run, rule_id, db, timeout=600)
        assert_everything_stored_once(stack, run, rule_id, db)
    finally:
        stop.set()
        if worker.poll() is not None:
            worker.start()
        retire_rule(stack, rule_id)
    assert kills == 3 and worker.poll() is None


def test_postgres_down_60s_stalls_only_postgres_which_catches_up(
    worker: WorkerProcess, stack: Settings, db: Callable[..., list[tuple[Any, ...]]]
) -> None:
    rate = 200.0
    # PostgreSQL goes down at seq 150 and comes back at about seq 750; the second
    # excursion is sent while it is down.
    run = Run(prefix=unique_id("pgdown"), devices=20, per_device=850,
              excursions=[(60, 70), (600, 620)])
    rule_id = create_rule(stack, run)
    stop = threading.Event()
    sender = threading.Thread(target=run.send, args=(stack, rate, stop), daemon=True)
    postgres = Postgres(stack)
    sender.start()
    try:
        wait_until(lambda: run.sent >= 150 * run.devices, timeout=60, what="a first part sent")
        postgres.stop()
        stopped = time.monotonic()
        redis_lag: list[float] = []
        influx_lag: list[float] = []
        # During the outage the other stores keep taking readings: sampled every 10 s, each
        # stays within seconds of the sender (a store waiting on PostgreSQL would fall a
        # minute behind). The bound allows for InfluxDB's own pauses on a busy machine.
        while time.monotonic() - stopped < 60:
            time.sleep(10)
            sent, sent_seq = run.sent, run.sent // run.devices
            newest = min(redis_seq(stack, run.device_ids).values(), default=0.0)
            stored = influx_count(stack, run)
            redis_lag.append((sent_seq - newest) / (rate / run.devices))
            influx_lag.append((sent - stored) / rate)
        print("behind the sender during the PostgreSQL outage: Redis "
              + ", ".join(f"{s:.1f}" for s in redis_lag) + " s; InfluxDB "
              + ", ".join(f"{s:.1f}" for s in influx_lag) + " s")
        assert max(redis_lag) < 15, f"Redis fell behind during the outage: {redis_lag}"
        assert max(influx_lag) < 15, f"InfluxDB fell behind during the outage: {influx_lag}"
    finally:
        if not postgres.answers():
            assert local_stack.up(stack, only={"postgres"}) == 0, "PostgreSQL did not come back"
    back = time.monotonic()
    try:
        sender.join(300)
        assert not sender.is_alive() and run.sent == run.total
        reached = wait_for_the_run(stack, run, rule_id, db, timeout=300)
        print("caught up after PostgreSQL came back: "
              + ", ".join(f"{store} {at - back:.1f} s" for store, at in reached.items()))
        assert_everything_stored_once(stack, run, rule_id, db)
    finally:
        stop.set()
        retire_rule(stack, rule_id)
    assert worker.poll() is None
