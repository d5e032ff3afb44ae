"""Commands end to end: REST → PostgreSQL → Kafka → dispatcher → device → acks → Socket.IO.

Real Kafka, PostgreSQL and Mosquitto, the real worker (its ``dispatcher`` role) and
the real API. The MQTT "device" is a paho client in the test.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import psycopg
import pytest
import socketio
from confluent_kafka.admin import AdminClient
from websockets.asyncio.client import connect as ws_connect

from api.device_keys import hash_api_key, new_api_key
from pipeline.commands import store
from pipeline.mqtt_accounts import login
from pipeline.settings import Settings, Topics
from schemas.records import Command, CommandStatus, utcnow
from tests.conftest import WorkerProcess, stop_process, unique_id, wait_until
from tests.integration.conftest import ApiServer
from tests.integration.helpers import produce_raw

pytestmark = pytest.mark.integration

Starter = Callable[..., subprocess.Popen[bytes]]


# ---- helpers -------------------------------------------------------------------------


def _add_devices(settings: Settings, protocol: str, count: int = 1,
                 api_key: str | None = None) -> list[str]:
    ids = [unique_id(f"cmd-{protocol}") for _ in range(count)]
    with psycopg.connect(settings.pg_conninfo, autocommit=True) as conn:
        for device_id in ids:
            conn.execute("INSERT INTO devices (id, protocol, api_key_hash) VALUES (%s, %s, %s)",
                         (device_id, protocol, hash_api_key(api_key) if api_key else None))
    return ids


def _remove_devices(settings: Settings, ids: list[str]) -> None:
    with psycopg.connect(settings.pg_conninfo, autocommit=True) as conn:
        conn.execute("DELETE FROM commands WHERE device_id = ANY(%s)", (ids,))
        conn.execute("DELETE FROM devices WHERE id = ANY(%s)", (ids,))


@pytest.fixture
def devices(stack: Settings) -> Iterator[Callable[..., list[str]]]:
    """Registers devices for one test and removes them (and their commands) afterwards."""
    made: list[str] = []

    def add(protocol: str, count: int = 1, api_key: str | None = None) -> list[str]:
        ids = _add_devices(stack, protocol, count, api_key)
        made.extend(ids)
        return ids

    yield add
    _remove_devices(stack, made)


def _auth(api: ApiServer) -> dict[str, str]:
    return {"Authorization": f"Bearer {api.token}"}


async def _post(api: ApiServer, device_id: str, body: dict[str, Any],
                key: str | None = None) -> httpx.Response:
    headers = _auth(api) | ({"Idempotency-Key": key} if key else {})
    async with httpx.AsyncClient(base_url=api.base_url, timeout=30) as client:
        return await client.post(f"/api/devices/{device_id}/commands", json=body, headers=headers)


def _history(api: ApiServer, device_id: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{api.base_url}/api/devices/{device_id}/commands", headers=_auth(api),
                         timeout=15)
    assert response.status_code == 200, response.text
    body: list[dict[str, Any]] = response.json()
    return body


def _statuses_in_pg(api: ApiServer, device_id: str, command_id: str) -> list[str]:
    for command in _history(api, device_id):
        if command["id"] == command_id:
            return [step["status"] for step in command["history"]]
    return []


class MqttDevice:
    """Devices on ``devices/{id}/commands``: record what they receive and answer with
    ``answers`` (a list of statuses, possibly empty) on ``devices/{id}/commands/ack``."""

    def __init__(self, settings: Settings, device_ids: list[str], answers: tuple[str, ...]) -> None:
        self.received: list[dict[str, Any]] = []
        self.answered: set[str] = set()
        self._answers = answers
        self._subscribed = threading.Event()
        topics = [(f"devices/{device_id}/commands", 1) for device_id in device_ids]
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=unique_id("dev"))
        login(self._client, settings, "simulator")  # answers for several devices
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *args: self._subscribed.set()
        self._client.connect(settings.mqtt_host, settings.mqtt_port)
        self._client.subscribe(topics)
        self._client.loop_start()
        assert self._subscribed.wait(10), "the test device could not subscribe"

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        body = json.loads(message.payload)
        self.received.append(body)
        if body["id"] in self.answered:
            return  # devices deduplicate on the command id
        self.answered.add(body["id"])
        device_id = message.topic.split("/")[1]
        for status in self._answers:
            client.publish(f"devices/{device_id}/commands/ack",
                           json.dumps({"id": body["id"], "status": status, "detail": status}), qos=1)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


class StatusEvents:
    """``command_status`` events of one device room, as a Socket.IO client receives them."""

    def __init__(self, api: ApiServer, settings: Settings, device_id: str) -> None:
        self.api, self.settings, self.device_id = api, settings, device_id
        self.events: list[dict[str, Any]] = []
        self._arrived = asyncio.Event()
        self.sio = socketio.AsyncClient(reconnection=False)
        self.sio.on("command_status", self._on_status)

    async def _on_status(self, payload: dict[str, Any]) -> None:
        self.events.append(payload)
        self._arrived.set()

    async def start(self) -> None:
        await self.sio.connect(self.api.base_url, auth={"token": self.api.token},
                               transports=["websocket"], wait_timeout=10)
        ack = await self.sio.call("subscribe", {"room": f"device:{self.device_id}"}, timeout=10)
        assert ack["ok"], ack
        # The API tails from the end of the topic; probe until its tail demonstrably runs.
        probe = str(uuid.uuid4())
        deadline = time.monotonic() + 45
        while not any(e["command_id"] == probe for e in self.events):
            assert time.monotonic() < deadline, "the API's live tail never delivered a probe"
            record = CommandStatus(probe, self.device_id, "queued", detail="probe")
            await asyncio.to_thread(produce_raw, self.settings, Topics.COMMAND_STATUS,
                                    record.encode(), self.device_id.encode())
            await self.wait_for(lambda: any(e["command_id"] == probe for e in self.events), 1.5,
                                fail=False)

    def of(self, command_id: str) -> list[str]:
        return [e["status"] for e in self.events if e["command_id"] == command_id]

    async def wait_for(self, done: Callable[[], bool], within_s: float, *,
                       fail: bool = True) -> None:
        deadline = time.monotonic() + within_s
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                if fail:
                    pytest.fail(f"Socket.IO events not as expected; got {self.events}")
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), min(left, 0.5))
            except TimeoutError:
                pass


@pytest.fixture
async def status_events(api_server: ApiServer, stack: Settings) -> AsyncIterator[
        Callable[[str], Any]]:
    clients: list[StatusEvents] = []

    async def watch(device_id: str) -> StatusEvents:
        events = StatusEvents(api_server, stack, device_id)
        clients.append(events)
        await events.start()
        return events

    yield watch
    for client in clients:
        await client.sio.disconnect()


# ---- the lifecycle over MQTT ---------------------------------------------------------


async def test_mqtt_device_that_acks_goes_queued_sent_delivered_acked(
        worker: WorkerProcess, api_server: ApiServer, stack: Settings,
        devices: Callable[..., list[str]], status_events: Callable[[str], Any]) -> None:
    [device_id] = devices("mqtt")
    device = MqttDevice(stack, [device_id], ("delivered", "acked"))
    events = await status_events(device_id)
    try:
        response = await _post(api_server, device_id,
                               {"name": "set_speed", "params": {"rpm": 1200}, "ttl_s": 60})
        assert response.status_code == 202, response.text
        command_id = response.json()["id"]
        assert response.json() == {"id": command_id, "status": "queued"}

        await events.wait_for(lambda: events.of(command_id)[-1:] == ["acked"], 30)
        assert events.of(command_id) == ["queued", "sent", "delivered", "acked"]
        statuses = await asyncio.to_thread(
            wait_until, lambda: (s := _statuses_in_pg(api_server, device_id, command_id))
            and s[-1] == "acked" and s, timeout=10, what="acked in PostgreSQL")
        assert statuses == ["queued", "sent", "delivered", "acked"]
        assert device.received == [{"id": command_id, "name": "set_speed",
                                    "params": {"rpm": 1200}}]
        [listed] = _history(api_server, device_id)
        # The device answers `delivered` the moment it has the command: never before `sent`.
        times = [datetime.fromisoformat(step["at"]) for step in listed["history"]]
        assert times == sorted(times), listed["history"]
        assert listed["status"] == "acked" and listed["params"] == {"rpm": 1200}
        assert listed["history"][-1]["detail"] == "acked"
        assert listed["created_at"] < listed["expires_at"]
    finally:
        device.close()


async def test_command_to_a_silent_device_expires_after_its_ttl(
        worker: WorkerProcess, api_server: ApiServer, stack: Settings,
        devices: Callable[..., list[str]], status_events: Callable[[str], Any]) -> None:
    [device_id] = devices("mqtt")
    device = MqttDevice(stack, [device_id], ())  # receives, never answers
    events = await status_events(device_id)
    try:
        started = time.monotonic()
        response = await _post(api_server, device_id, {"name": "reboot", "ttl_s": 3})
        assert response.status_code == 202, response.text
        command_id = response.json()["id"]
        await events.wait_for(lambda: events.of(command_id)[-1:] == ["expired"], 15)
        assert time.monotonic() - started >= 3
        assert events.of(command_id) == ["queued", "sent", "expired"]
        # Kafka first, then PostgreSQL: the row may trail the event by a moment.
        statuses = await asyncio.to_thread(
            wait_until, lambda: (s := _statuses_in_pg(api_server, device_id, command_id))
            and s[-1] == "expired" and s, timeout=10, what="expired in PostgreSQL")
        assert statuses == ["queued", "sent", "expired"]
        assert len(device.received) == 1
    finally:
        device.close()


# ---- status times ---------------------------------------------------------------------


async def _new_stored_command(conn: psycopg.AsyncConnection[Any], device_id: str) -> Command:
    now = utcnow()
    command = Command(id=str(uuid.uuid4()), device_id=device_id, name="set_speed", params={},
                      created_at=now, expires_at=now + timedelta(minutes=5))
    await store.insert_command(conn, command)
    return command


async def _times(conn: psycopg.AsyncConnection[Any], command_id: str) -> list[tuple[str, datetime]]:
    cursor = await conn.execute("SELECT status, at FROM command_status_history"
                                " WHERE command_id = %s ORDER BY id", (command_id,))
    return [(row[0], row[1]) for row in await cursor.fetchall()]


async def test_a_status_is_never_recorded_before_its_predecessor(
        stack: Settings, devices: Callable[..., list[str]]) -> None:
    """Statuses stamped out of order (other clocks, a quick device) are recorded at the
    previous status's time; a later one keeps its own."""
    [device_id] = devices("mqtt")
    async with await psycopg.AsyncConnection.connect(stack.pg_conninfo, autocommit=True) as conn:
        command = await _new_stored_command(conn, device_id)
        t0 = command.created_at
        applied = await store.apply_statuses(conn, [
            CommandStatus(command.id, device_id, "sent", t0 - timedelta(seconds=1)),
            CommandStatus(command.id, device_id, "delivered", t0 - timedelta(seconds=2)),
        ])
        assert [(s.status, s.at) for s in applied] == [("sent", t0), ("delivered", t0)]
        later = t0 + timedelta(seconds=10)
        [acked] = await store.apply_statuses(conn, [
            CommandStatus(command.id, device_id, "acked", later),
            CommandStatus(command.id, device_id, "expired", t0),  # final already: ignored
        ])
        assert acked.at == later
        assert await _times(conn, command.id) == [
            ("queued", t0), ("sent", t0), ("delivered", t0), ("acked", later)]
        [listed] = await store.list_commands(conn, device_id)
        assert listed["updated_at"] == listed["history"][-1]["at"]


async def test_concurrent_writers_see_each_others_status_times(
        stack: Settings, devices: Callable[..., list[str]]) -> None:
    """The dispatcher's `sent` (later) and a device's `delivered` (stamped earlier) in two
    transactions at once: the one that waits on the command's row sees the other's time."""
    [device_id] = devices("mqtt")
    async with await psycopg.AsyncConnection.connect(stack.pg_conninfo, autocommit=True) as first, \
            await psycopg.AsyncConnection.connect(stack.pg_conninfo, autocommit=True) as second:
        command = await _new_stored_command(first, device_id)
        sent_at = command.created_at + timedelta(seconds=10)
        async with first.transaction():
            await store.apply_statuses(first, [CommandStatus(command.id, device_id, "sent", sent_at)])
            answer = asyncio.create_task(store.apply_statuses(second, [
                CommandStatus(command.id, device_id, "delivered", sent_at - timedelta(seconds=5))]))
            await asyncio.sleep(0.5)
            assert not answer.done()  # waiting for the row `sent` holds
        [delivered] = await answer
        assert delivered.at == sent_at
        assert [at for _, at in await _times(first, command.id)] == [
            command.created_at, sent_at, sent_at]


# ---- the REST contract ---------------------------------------------------------------


async def test_same_idempotency_key_gives_one_command(
        worker: WorkerProcess, api_server: ApiServer,
        devices: Callable[..., list[str]]) -> None:
    first_device, other_device = devices("http", 2)
    key = unique_id("idem")
    body = {"name": "open_valve", "params": {"valve": 2}, "ttl_s": 120}
    first = await _post(api_server, first_device, body, key)
    again = await _post(api_server, first_device, body, key)
    elsewhere = await _post(api_server, other_device, body, key)
    assert first.status_code == again.status_code == elsewhere.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert elsewhere.json()["id"] != first.json()["id"]  # keys are per device
    assert [c["id"] for c in _history(api_server, first_device)] == [first.json()["id"]]


async def test_invalid_requests_name_the_field_and_unknown_devices_are_404(
        api_server: ApiServer, devices: Callable[..., list[str]]) -> None:
    [device_id] = devices("mqtt")
    for body, field in (({"params": {}}, "name"), ({"name": "x", "params": "no"}, "params"),
                        ({"name": "x", "params": {"b": "x" * 5000}}, "params"),
                        ({"name": "x", "ttl_s": 0}, "ttl_s"), ({"name": "x", "ttl_s": 90000}, "ttl_s")):
        response = await _post(api_server, device_id, body)
        assert response.status_code == 422, body
        assert response.json()["detail"]["field"] == field
    missing = await _post(api_server, unique_id("nobody"), {"name": "x"})
    assert missing.status_code == 404
    assert _history(api_server, device_id) == []


async def test_http_device_polls_and_acks(
        worker: WorkerProcess, api_server: ApiServer,
        devices: Callable[..., list[str]]) -> None:
    key = new_api_key()
    [device_id] = devices("http", api_key=key)
    [other_device] = devices("http", api_key=new_api_key())
    response = await _post(api_server, device_id, {"name": "set_point", "params": {"t": 21.5},
                                                   "ttl_s": 120})
    command_id = response.json()["id"]
    base = f"{api_server.base_url}/api/devices/{device_id}/commands"
    device_headers = {"X-API-Key": key}
    async with httpx.AsyncClient(timeout=15) as client:
        assert (await client.get(f"{base}/pending")).status_code == 401
        assert (await client.get(f"{base}/pending", headers={"X-API-Key": "wrong"})).status_code == 401
        foreign = await client.get(f"{api_server.base_url}/api/devices/{other_device}/commands/pending",
                                   headers=device_headers)
        assert foreign.status_code == 403

        pending = await client.get(f"{base}/pending", headers=device_headers)
        assert pending.status_code == 200
        [item] = pending.json()
        assert {k: item[k] for k in ("id", "name", "params")} == {
            "id": command_id, "name": "set_point", "params": {"t": 21.5}}

        for status in ("delivered", "acked", "acked"):  # the repeat is harmless
            ack = await client.post(f"{base}/{command_id}/ack", headers=device_headers,
                                    json={"status": status, "detail": f"{status} by test"})
            assert ack.status_code == 200, ack.text
            assert ack.json() == {"id": command_id, "status": status}
        late = await client.post(f"{base}/{command_id}/ack", headers=device_headers,
                                 json={"status": "failed"})
        assert late.status_code == 409
        bad = await client.post(f"{base}/{command_id}/ack", headers=device_headers,
                                json={"status": "done"})
        assert bad.status_code == 422 and bad.json()["detail"]["field"] == "status"
        unknown = await client.post(f"{base}/{uuid.uuid4()}/ack", headers=device_headers,
                                    json={"status": "acked"})
        assert unknown.status_code == 404
        assert (await client.get(f"{base}/pending", headers=device_headers)).json() == []
    assert _statuses_in_pg(api_server, device_id, command_id) == [
        "queued", "sent", "delivered", "acked"]


# ---- restarts ------------------------------------------------------------------------


def _wipe_session(settings: Settings, client_id: str) -> None:
    """End a persistent MQTT session (and its share of the command acks) for good."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    login(client, settings, "dispatcher")
    client.connect(settings.mqtt_host, settings.mqtt_port)
    client.disconnect()


def _group_members(settings: Settings, group: str) -> int:
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    description = admin.describe_consumer_groups([group], request_timeout=10)[group].result()
    stable = str(description.state).upper().endswith("STABLE")
    return len(description.members) if stable else -1


@pytest.mark.slow
async def test_dispatcher_killed_with_sigkill_neither_loses_nor_repeats_commands(
        worker: WorkerProcess, api_server: ApiServer, stack: Settings,
        start_process: Starter, devices: Callable[..., list[str]]) -> None:
    """A second dispatcher shares the partitions, is killed with SIGKILL while commands
    flow, and is restarted: every command is delivered and acked, and the device sees
    at most one duplicate (the crash window between PUBACK and the `sent` record)."""
    client_id = unique_id("webscada-dispatcher-kill")  # its own MQTT session, kept across the kill
    env = {"WEBSCADA_METRICS_PORT_BASE": "0", "WEBSCADA_MQTT_CLIENT_ID": client_id}
    argv = ("worker", "--role", "dispatcher")
    proc = start_process(*argv, log_name="test-dispatcher-kill.log", env=env)
    await asyncio.to_thread(wait_until, lambda: _group_members(stack, "webscada-dispatcher") >= 2,
                            timeout=90, interval=1, what="two dispatchers sharing the partitions")
    ids = devices("mqtt", 12)
    device = MqttDevice(stack, ids, ("acked",))
    sent: list[tuple[str, str]] = []

    async def post_round(round_no: int) -> None:
        for device_id in ids:
            response = await _post(api_server, device_id,
                                   {"name": "step", "params": {"round": round_no}, "ttl_s": 600})
            assert response.status_code == 202, response.text
            sent.append((device_id, response.json()["id"]))
            await asyncio.sleep(0.02)

    restarted: subprocess.Popen[bytes] | None = None
    try:
        await post_round(0)
        poster = asyncio.create_task(post_round(1))
        await asyncio.sleep(0.1)
        proc.send_signal(signal.SIGKILL)  # mid-round: commands in flight
        await poster
        await asyncio.to_thread(proc.wait, 10)
        restarted = start_process(*argv, log_name="test-dispatcher-kill.log", env=env)
        await post_round(2)

        def all_acked() -> bool:
            with psycopg.connect(stack.pg_conninfo) as conn:
                row = conn.execute("SELECT count(*) FROM commands WHERE device_id = ANY(%s)"
                                   " AND status = 'acked'", (ids,)).fetchone()
            return row is not None and row[0] == len(sent)

        await asyncio.to_thread(wait_until, all_acked, timeout=180, interval=1,
                                what=f"{len(sent)} commands acked")
        received = Counter(item["id"] for item in device.received)
        assert set(received) == {command_id for _, command_id in sent}
        assert sum(1 for count in received.values() if count > 1) <= 1, received.most_common(3)
        with psycopg.connect(stack.pg_conninfo) as conn:
            histories = conn.execute(
                "SELECT array_agg(h.status ORDER BY h.id) FROM command_status_history h"
                " JOIN commands c ON c.id = h.command_id WHERE c.device_id = ANY(%s)"
                " GROUP BY h.command_id", (ids,)).fetchall()
        assert len(histories) == len(sent)
        assert {tuple(row[0]) for row in histories} == {("queued", "sent", "acked")}
    finally:
        device.close()
        stop_process(restarted or proc)  # leave the group now, not at the end of the session
        _wipe_session(stack, f"{client_id}-commands")


async def test_websocket_device_gets_commands_on_connect_and_while_connected(
        worker: WorkerProcess, api_server: ApiServer,
        devices: Callable[..., list[str]]) -> None:
    key = new_api_key()
    [device_id] = devices("websocket", api_key=key)
    early = (await _post(api_server, device_id, {"name": "early", "ttl_s": 120})).json()["id"]
    await asyncio.sleep(2)  # the dispatcher saw it; nobody is connected, so it stays queued
    assert _statuses_in_pg(api_server, device_id, early) == ["queued"]

    url = f"{api_server.ws_url}/ws/devices/{device_id}?api_key={key}"
    async with ws_connect(url) as ws:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert {k: frame[k] for k in ("type", "id", "name", "params")} == {
            "type": "command", "id": early, "name": "early", "params": {}}
        late = (await _post(api_server, device_id, {"name": "late", "ttl_s": 120})).json()["id"]
        # Announced by the dispatcher; unanswered commands come along again (devices dedupe).
        pushed = set()
        while late not in pushed:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert frame["type"] == "command"
            pushed.add(frame["id"])
        assert pushed <= {early, late}
        for command_id in (early, late):
            await ws.send(json.dumps({"type": "ack", "id": command_id, "status": "acked"}))
            answer = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert answer == {"ok": True, "type": "ack", "id": command_id, "status": "acked"}
    for command_id in (early, late):
        assert _statuses_in_pg(api_server, device_id, command_id) == ["queued", "sent", "acked"]
