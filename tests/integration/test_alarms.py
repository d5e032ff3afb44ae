"""The alarm engine against the real Kafka and PostgreSQL, with a real `webscada worker --role alarms`.

Readings go straight to ``telemetry.valid`` (what the alarms agent consumes), with
device times chosen by the test, so on- and off-delays are exact.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
import psycopg
import pytest
import redis
import socketio
from aiohttp import web
from confluent_kafka import Producer
from psycopg.rows import dict_row

from pipeline.alarms import AlarmEvent
from pipeline.settings import Settings, Topics
from schemas import Telemetry, iso_utc, utcnow
from tests.conftest import WORKER_ENV, stop_process, unique_id, wait_until
from tests.httpservers import SmsProvider, ThreadedHttpServer
from tests.integration.helpers import alarm_events_keyed

if TYPE_CHECKING:
    from tests.integration.conftest import ApiServer

pytestmark = pytest.mark.integration



# --- helpers ----------------------------------------------------------------------------------
def produce_readings(settings: Settings, device_id: str, values: list[float], *, metric: str = "level",
                     start: datetime | None = None, every_s: float = 1.0) -> datetime:
    """One reading per value, ``every_s`` apart in device time; returns the last device time."""
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "acks": "all",
                         "enable.idempotence": True, "linger.ms": 5})
    start = start or utcnow() - timedelta(seconds=every_s * len(values))
    ts = start
    for i, value in enumerate(values):
        ts = start + timedelta(seconds=i * every_s)
        record = Telemetry(device_id=device_id, protocol="mqtt", ts=ts, received_at=utcnow(),
                           message_id=f"{device_id}-{ts.timestamp()}", metrics={metric: float(value)})
        producer.produce(Topics.VALID, record.encode(), device_id.encode())
    assert producer.flush(15) == 0, "Kafka did not acknowledge the readings"
    return ts


def query(settings: Settings, sql: str, *params: Any) -> list[dict[str, Any]]:
    with psycopg.connect(settings.pg_conninfo, autocommit=True) as conn:
        cur = conn.cursor(row_factory=dict_row)
        cur.execute(sql, params)  # type: ignore[arg-type]
        return cur.fetchall()


def alarms_of(settings: Settings, rule_id: str) -> list[dict[str, Any]]:
    return query(settings, "SELECT * FROM alarms WHERE rule_id = %s ORDER BY raised_at", rule_id)


def history_of(settings: Settings, rule_id: str) -> list[str]:
    rows = query(settings, "SELECT event FROM alarm_events WHERE rule_id = %s ORDER BY id", rule_id)
    return [row["event"] for row in rows]


def kafka_events(settings: Settings, device_id: str) -> list[AlarmEvent]:
    """Every AlarmEvent keyed ``device_id`` on topic ``alarms``, read from the beginning."""
    return alarm_events_keyed(settings, lambda key: key == device_id.encode(), timeout=20)


def kinds(events: list[AlarmEvent]) -> list[str]:
    return [e.event for e in events]


class Rest:
    """The alarm routes of the real API, as an admin."""

    def __init__(self, api: ApiServer) -> None:
        self.client = httpx.Client(base_url=api.base_url, timeout=15,
                                   headers={"Authorization": f"Bearer {api.token}"})
        self.created: list[str] = []

    def rule(self, **fields: Any) -> dict[str, Any]:
        response = self.client.post("/api/alarm-rules", json={"name": unique_id("rule"), **fields})
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        self.created.append(body["id"])
        return body

    def close(self) -> None:
        """Delete the rules this client made (which clears their active alarms)."""
        for rule_id in self.created:
            self.client.delete(f"/api/alarm-rules/{rule_id}")
        self.client.close()

    def alarms(self, **params: str) -> list[dict[str, Any]]:
        response = self.client.get("/api/alarms", params=params)
        assert response.status_code == 200, response.text
        body: list[dict[str, Any]] = response.json()
        return body


class AlarmWorker:
    """`webscada worker --role alarms`, which can be killed and started again."""

    def __init__(self, start_process: Callable[..., subprocess.Popen[bytes]]) -> None:
        self._start_process = start_process
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = self._start_process("worker", "--role", "alarms", log_name="test-alarms-worker.log",
                                        env=WORKER_ENV)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def rest(api_server: ApiServer) -> Iterator[Rest]:
    client = Rest(api_server)
    yield client
    client.close()


@pytest.fixture(scope="module")
def alarm_worker(stack: Settings, start_process: Callable[..., subprocess.Popen[bytes]],
                 rest: Rest, sms_provider: SmsProvider) -> Iterator[AlarmWorker]:
    """The alarms role, ready once it raised an alarm for a probe reading. Its SMS go to
    ``sms_provider``, as those of every worker of the session do: the session's ``worker``
    (all roles, started by earlier tests) shares the consumer group and so the partitions."""
    worker = AlarmWorker(start_process)
    worker.start()
    device = unique_id("alarm-probe")
    rule = rest.rule(device_id=device, metric="probe", operator=">", threshold=0)

    def probe() -> list[dict[str, Any]]:
        produce_readings(stack, device, [1.0], metric="probe")
        return alarms_of(stack, rule["id"])

    wait_until(probe, timeout=120, interval=2, what="alarms worker readiness (a probe alarm)")
    yield worker
    if worker.proc is not None:
        stop_process(worker.proc)


# --- the engine -------------------------------------------------------------------------------
def test_flapping_raises_once_and_clears_once(alarm_worker: AlarmWorker, rest: Rest,
                                              stack: Settings) -> None:
    device = unique_id("flap")
    rule = rest.rule(device_id=device, metric="level", operator=">", threshold=50, deadband=2,
                     off_delay_seconds=5, severity="major")
    time.sleep(3)  # the engine re-reads rules every 2 s
    flapping = [55.0] + [51.0 if i % 2 == 0 else 49.0 for i in range(50)]  # ±1 around 50, 50 times
    last = produce_readings(stack, device, flapping, start=utcnow() - timedelta(seconds=300))
    raised = wait_until(lambda: alarms_of(stack, rule["id"]), what="the raised alarm")
    assert len(raised) == 1 and raised[0]["state"] == "active_unacked" and raised[0]["value"] == 55.0

    # Below threshold - deadband, but for less than the off-delay: still active.
    last = produce_readings(stack, device, [47.0] * 4, start=last + timedelta(seconds=1))
    time.sleep(3)
    assert [a["state"] for a in alarms_of(stack, rule["id"])] == ["active_unacked"]
    # ...and once the off-delay of device time has passed: cleared, once.
    produce_readings(stack, device, [47.0] * 4, start=last + timedelta(seconds=1))
    wait_until(lambda: alarms_of(stack, rule["id"])[0]["state"] == "cleared_unacked", what="the clear")

    time.sleep(2)
    assert history_of(stack, rule["id"]) == ["raised", "cleared"]
    events = kafka_events(stack, device)
    assert kinds(events) == ["raised", "cleared"]
    assert {e.alarm_id for e in events} == {str(raised[0]["id"])}
    assert events[1].state == "cleared_unacked" and events[1].value == 47.0


def test_silent_device_raises_stale_alarm_within_for_seconds_plus_5(
        alarm_worker: AlarmWorker, rest: Rest, stack: Settings) -> None:
    device = unique_id("silent")
    rule = rest.rule(device_id=device, operator="stale", for_seconds=4, severity="warning")
    time.sleep(3)
    last_reading = time.monotonic()
    produce_readings(stack, device, [1.0], start=utcnow())
    alarms = wait_until(lambda: alarms_of(stack, rule["id"]), timeout=30, interval=0.2,
                        what="the stale-data alarm")
    took = time.monotonic() - last_reading
    assert 4 <= took <= 4 + 5, f"stale alarm after {took:.1f} s"
    assert alarms[0]["state"] == "active_unacked" and "no reading" in alarms[0]["message"]

    produce_readings(stack, device, [2.0], start=utcnow())  # the device speaks again: cleared
    wait_until(lambda: alarms_of(stack, rule["id"])[0]["state"] == "cleared_unacked",
               timeout=30, what="the stale alarm clearing")
    assert history_of(stack, rule["id"])[:2] == ["raised", "cleared"]


async def test_ack_via_rest_publishes_event_and_reaches_socketio(
        alarm_worker: AlarmWorker, rest: Rest, api_server: ApiServer, stack: Settings) -> None:
    device = unique_id("ack")
    rule = rest.rule(device_id=device, metric="pressure", operator=">=", threshold=10,
                     severity="critical")
    received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    sio = socketio.AsyncClient(reconnection=False)

    @sio.on("alarm")
    async def on_alarm(data: dict[str, Any]) -> None:
        if data.get("device_id") == device:
            await received.put(data)

    await sio.connect(api_server.base_url, auth={"token": api_server.token}, transports=["websocket"],
                      wait_timeout=10)
    try:
        assert (await sio.call("subscribe", {"room": "alarms"}, timeout=10))["ok"]
        await asyncio.sleep(3)  # rule pick-up, and the API's tail has found the end of `alarms`
        await asyncio.to_thread(produce_readings, stack, device, [12.0], metric="pressure")
        live = await asyncio.wait_for(received.get(), 30)
        assert (live["event"], live["state"], live["severity"]) == ("raised", "active_unacked", "critical")

        listed = await asyncio.to_thread(rest.alarms, device_id=device, state="active")
        assert len(listed) == 1
        alarm = listed[0]
        assert {k: alarm[k] for k in ("rule_id", "device_id", "state", "severity", "value")} == {
            "rule_id": rule["id"], "device_id": device, "state": "active_unacked",
            "severity": "critical", "value": 12.0}
        assert alarm["raised_at"] and alarm["acked_at"] is None and alarm["cleared_at"] is None

        async with httpx.AsyncClient(base_url=api_server.base_url, timeout=15,
                                     headers={"Authorization": f"Bearer {api_server.token}"}) as http:
            acked = await http.post(f"/api/alarms/{alarm['id']}/ack")
            assert acked.status_code == 200, acked.text
            body = acked.json()
            assert body["state"] == "active_acked" and body["acked_by"] and body["acked_at"]
            assert [h["event"] for h in body["history"]] == ["raised", "acknowledged"]
            live = await asyncio.wait_for(received.get(), 30)
            assert (live["event"], live["state"], live["by"]) == ("acknowledged", "active_acked",
                                                                  body["acked_by"])
            again = await http.post(f"/api/alarms/{alarm['id']}/ack")
            assert again.status_code == 409 and again.json()["detail"] == {"state": "active_acked"}

            # Operator clear is refused while the latest value still violates the rule...
            latest = redis.Redis.from_url(stack.redis_url)
            key = f"webscada:latest:{device}"
            latest.hset(key, mapping={"pressure": "12.0", "ts": iso_utc(utcnow())})
            latest.expire(key, 60)
            refused = await http.post(f"/api/alarms/{alarm['id']}/clear")
            assert refused.status_code == 409, refused.text
            # ...and done once it is back to normal.
            latest.hset(key, "pressure", "3.0")
            latest.close()
            cleared = await http.post(f"/api/alarms/{alarm['id']}/clear")
            assert cleared.status_code == 200, cleared.text
            assert cleared.json()["state"] == "cleared_acked" and cleared.json()["cleared_by"]
            live = await asyncio.wait_for(received.get(), 30)
            assert (live["event"], live["state"]) == ("cleared", "cleared_acked")

            assert (await http.post("/api/alarms/00000000-0000-0000-0000-000000000000/ack")).status_code \
                == 404
            assert (await http.post("/api/alarms/not-a-uuid/ack")).status_code == 404
        events = await asyncio.to_thread(kafka_events, stack, device)
        assert kinds(events) == ["raised", "acknowledged", "cleared"]
    finally:
        await sio.disconnect()


def test_shelved_rule_and_device_raises_nothing(alarm_worker: AlarmWorker, rest: Rest,
                                                stack: Settings) -> None:
    device = unique_id("shelf")
    rule = rest.rule(device_id=device, metric="level", operator="<", threshold=5)
    time.sleep(3)
    last = produce_readings(stack, device, [1.0, 9.0])  # raise, then clear
    wait_until(lambda: history_of(stack, rule["id"]) == ["raised", "cleared"], what="raise and clear")
    alarm_id = str(alarms_of(stack, rule["id"])[0]["id"])
    shelved = rest.client.post(f"/api/alarms/{alarm_id}/shelve", json={"minutes": 10})
    assert shelved.status_code == 200 and shelved.json()["shelved_until"], shelved.text
    bad = rest.client.post(f"/api/alarms/{alarm_id}/shelve", json={"minutes": "ten"})
    assert bad.status_code == 422 and bad.json()["detail"]["field"] == "minutes"
    time.sleep(3)  # the engine re-reads shelves every 2 s
    produce_readings(stack, device, [1.0, 0.5, 1.0], start=last + timedelta(seconds=1))
    time.sleep(4)
    assert len(alarms_of(stack, rule["id"])) == 1
    assert history_of(stack, rule["id"]) == ["raised", "cleared", "shelved"]


def test_alarm_state_survives_kill_9(alarm_worker: AlarmWorker, rest: Rest, stack: Settings) -> None:
    device = unique_id("restart")
    rule = rest.rule(device_id=device, metric="temp", operator=">", threshold=80, deadband=5)
    time.sleep(3)
    last = produce_readings(stack, device, [90.0, 85.0, 91.0], metric="temp")
    wait_until(lambda: alarms_of(stack, rule["id"]), what="the raised alarm")

    alarm_worker.kill()
    # While the worker is down the condition keeps flapping inside the deadband...
    last = produce_readings(stack, device, [82.0, 88.0, 79.0, 84.0], metric="temp",
                            start=last + timedelta(seconds=1))
    alarm_worker.start()
    # ...which, replayed or not, must not raise a second alarm; then the value drops.
    produce_readings(stack, device, [70.0], metric="temp", start=last + timedelta(seconds=1))
    wait_until(lambda: alarms_of(stack, rule["id"])[-1]["state"] == "cleared_unacked", timeout=90,
               interval=1, what="the clear after the restart")
    time.sleep(2)
    alarms = alarms_of(stack, rule["id"])
    assert len(alarms) == 1
    assert history_of(stack, rule["id"]) == ["raised", "cleared"]
    assert kinds(kafka_events(stack, device)) == ["raised", "cleared"]


# --- notifications through the worker ------------------------------------------------------------
class HttpReceiver(ThreadedHttpServer):
    """Records the JSON POSTed to ``/hook``."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[dict[str, Any]] = []

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/hook", self._hook)

    async def _hook(self, request: web.Request) -> web.Response:
        self.received.append(await request.json())
        return web.Response(status=204)


def test_worker_posts_webhooks_throttled_per_rule(alarm_worker: AlarmWorker, rest: Rest,
                                                  stack: Settings) -> None:
    device = unique_id("hook")
    with HttpReceiver() as receiver:
        rule = rest.rule(device_id=device, metric="level", operator=">", threshold=10,
                         notify={"webhooks": [f"http://127.0.0.1:{receiver.port}/hook"],
                                 "throttle_seconds": 3600})
        time.sleep(3)
        produce_readings(stack, device, [20.0, 5.0, 20.0, 5.0, 20.0])  # 3 raises, 2 clears
        # Generous waits: the group may still be rebalancing after the kill -9 test above.
        try:
            wait_until(lambda: history_of(stack, rule["id"]).count("raised") == 3, timeout=60,
                       what="three raises")
        except pytest.fail.Exception:
            pytest.fail(f"not three raises within 60 s: history {history_of(stack, rule['id'])},"
                        f" alarms {alarms_of(stack, rule['id'])}")
        wait_until(lambda: len(receiver.received) >= 2, timeout=60, what="two webhooks")
        time.sleep(3)
    # One raised and one cleared; the repeats fall inside the rule's throttle.
    assert sorted(r["event"] for r in receiver.received) == ["cleared", "raised"]
    assert {r["device_id"] for r in receiver.received} == {device}
    assert receiver.received[0]["rule_name"] == rule["name"]


def test_a_raised_alarm_sends_exactly_one_sms(alarm_worker: AlarmWorker, rest: Rest, stack: Settings,
                                              sms_provider: SmsProvider) -> None:
    device = unique_id("sms")
    number = "+4915112345678"
    rule = rest.rule(device_id=device, metric="level", operator=">", threshold=10, severity="critical",
                     notify={"sms": [number], "throttle_seconds": 3600})
    time.sleep(3)  # the engine re-reads rules every 2 s
    produce_readings(stack, device, [20.0, 25.0, 30.0])  # one raise; the repeats change nothing
    wait_until(lambda: [m for m in sms_provider.messages if device in m["Body"]], timeout=30,
               what="the SMS")
    wait_until(lambda: history_of(stack, rule["id"]) == ["raised"], what="the raise")
    time.sleep(2)  # a second SMS would have come by now
    sent = [m for m in sms_provider.messages if device in m["Body"]]
    assert len(sent) == 1, sent
    assert sent[0]["To"] == number and sent[0]["From"] == "+15005550006"
    assert sent[0]["Body"] == (f"CRITICAL alarm raised: {rule['name']} on {device}."
                               " level = 20 > 10")  # one SMS, not parts


# --- rules over REST --------------------------------------------------------------------------------
def test_rule_crud_and_errors(rest: Rest) -> None:
    created = rest.rule(application_id="plant-a", metric="flow", operator="<", threshold=1.5,
                        for_seconds=30, off_delay_seconds=10, severity="minor",
                        notify={"emails": ["ops@example.com"]})
    rule_id = created["id"]
    assert (created["application_id"], created["device_id"], created["threshold"]) == ("plant-a", None, 1.5)
    assert created["notify"] == {"emails": ["ops@example.com"], "webhooks": [], "sms": [],
                                 "throttle_seconds": 300.0}
    client = rest.client
    assert client.get(f"/api/alarm-rules/{rule_id}").json() == created
    assert rule_id in {r["id"] for r in client.get("/api/alarm-rules").json()}

    patched = client.patch(f"/api/alarm-rules/{rule_id}", json={"threshold": 2, "enabled": False})
    assert patched.status_code == 200, patched.text
    assert (patched.json()["threshold"], patched.json()["enabled"]) == (2.0, False)

    for body, field in (({"operator": "~"}, "operator"), ({"deadband": -1}, "deadband"),
                        ({"device_id": "bad id"}, "device_id"), ({"severity": "awful"}, "severity")):
        answer = client.patch(f"/api/alarm-rules/{rule_id}", json=body)
        assert answer.status_code == 422 and answer.json()["detail"]["field"] == field, answer.text
    answer = client.post("/api/alarm-rules", json={"name": "x", "operator": ">", "metric": "m"})
    assert answer.status_code == 422 and answer.json()["detail"]["field"] == "threshold"
    answer = client.get("/api/alarms", params={"state": "sleeping"})
    assert answer.status_code == 422 and answer.json()["detail"]["field"] == "state"

    assert client.delete(f"/api/alarm-rules/{rule_id}").status_code == 204
    assert client.get(f"/api/alarm-rules/{rule_id}").status_code == 404
    assert client.delete(f"/api/alarm-rules/{rule_id}").status_code == 404
    assert client.get("/api/alarm-rules/nope").status_code == 404
