"""Command lifecycle: state machine, records, transport plans, ack parsing, request validation."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from api import commands as api_commands
from api.commands import MAX_PARAMS_BYTES, _new_command
from api.errors import InvalidField
from pipeline.commands import (
    FINAL,
    STATUSES,
    AckError,
    Hold,
    InvalidTransition,
    Publish,
    Reject,
    check_transition,
    is_due,
    may_advance,
    parse_ack,
    plan,
    predecessors,
    store,
)
from pipeline.commands.service import CommandService
from pipeline.commands.store import DispatchTarget
from pipeline.producer import Outgoing
from schemas.errors import InvalidRecordError
from schemas.records import Command, CommandStatus, utcnow

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
CID = "6f1c1f5e-7c1a-4d7e-9a37-3c2f1b0d9e11"


def _command(device: str = "pump-1", **params: object) -> Command:
    return Command(id=CID, device_id=device, name="set_speed", params=params,
                   created_at=T0, expires_at=T0 + timedelta(seconds=30), requested_by="op")


# ---- state machine -------------------------------------------------------------------


@pytest.mark.parametrize(("current", "new"), [
    ("queued", "sent"), ("sent", "delivered"), ("delivered", "acked"), ("delivered", "failed"),
    ("sent", "acked"), ("sent", "failed"),            # a device may skip delivered
    ("queued", "delivered"), ("queued", "acked"),     # an answer may overtake `sent`
    ("queued", "failed"),                             # no transport for the device
    ("queued", "expired"), ("sent", "expired"), ("delivered", "expired"),
])
def test_allowed_transitions(current: str, new: str) -> None:
    assert may_advance(current, new)
    check_transition(current, new)


@pytest.mark.parametrize(("current", "new"), [
    ("sent", "queued"), ("delivered", "sent"), ("acked", "delivered"), ("sent", "sent"),
    ("acked", "failed"), ("failed", "acked"), ("expired", "acked"), ("acked", "expired"),
    ("expired", "expired"), ("delivered", "queued"),
])
def test_backward_repeated_and_post_final_transitions_are_refused(current: str, new: str) -> None:
    assert not may_advance(current, new)
    with pytest.raises(InvalidTransition, match=f"a {current} command cannot become {new}"):
        check_transition(current, new)


def test_final_statuses_are_terminal() -> None:
    assert FINAL == {"acked", "failed", "expired"}
    for final in FINAL:
        assert [s for s in STATUSES if may_advance(final, s)] == []


def test_predecessors_are_the_where_clause_of_each_update() -> None:
    assert predecessors("queued") == ()
    assert predecessors("sent") == ("queued",)
    assert predecessors("delivered") == ("queued", "sent")
    assert predecessors("acked") == ("queued", "sent", "delivered")
    assert predecessors("expired") == ("queued", "sent", "delivered")


def test_unknown_status_is_an_error() -> None:
    with pytest.raises(InvalidTransition, match="unknown command status 'done'"):
        may_advance("queued", "done")


def test_expiry_is_due_only_for_open_commands_past_their_ttl() -> None:
    expires = T0 + timedelta(seconds=3)
    assert not is_due("sent", expires, T0 + timedelta(seconds=2.9))
    assert is_due("sent", expires, expires)
    assert is_due("queued", expires, T0 + timedelta(hours=1))
    assert is_due("delivered", expires, T0 + timedelta(hours=1))
    assert not is_due("acked", expires, T0 + timedelta(hours=1))
    assert not is_due("failed", expires, T0 + timedelta(hours=1))
    assert not is_due("expired", expires, T0 + timedelta(hours=1))


# ---- records ---------------------------------------------------------------------------


def test_command_round_trips_through_avro() -> None:
    command = _command(rpm=1200, mode={"ramp": True})
    again = Command.decode(command.encode())
    assert again == command
    assert dict(again.params) == {"rpm": 1200, "mode": {"ramp": True}}


def test_command_status_round_trips_through_avro() -> None:
    status = CommandStatus(CID, "pump-1", "delivered", T0, "received")
    assert CommandStatus.decode(status.encode()) == status


@pytest.mark.parametrize(("change", "message"), [
    ({"name": "1bad"}, "command name '1bad'"),
    ({"device_id": "a/b"}, "device_id 'a/b'"),
    ({"params": [1, 2]}, "params must be a JSON object"),
    ({"params": {"x": float("nan")}}, "params are not JSON"),
    ({"expires_at": T0 - timedelta(seconds=1)}, "expires_at is before"),
    ({"id": ""}, "command id ''"),
])
def test_command_checks_itself(change: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {"id": CID, "device_id": "pump-1", "name": "go", "params": {},
                                 "created_at": T0, "expires_at": T0}
    fields.update(change)
    with pytest.raises(InvalidRecordError, match=message):
        Command(**fields)  # type: ignore[arg-type]


def test_command_status_rejects_an_unknown_status() -> None:
    with pytest.raises(InvalidRecordError, match="command status 'done' is not one of"):
        CommandStatus(CID, "pump-1", "done", T0)


# ---- transports ------------------------------------------------------------------------


@pytest.mark.parametrize(("protocol", "topic"), [
    ("mqtt", "devices/pump-1/commands"), ("gsm", "gsm/pump-1/commands"),
])
def test_mqtt_and_gsm_devices_get_the_contract_json(protocol: str, topic: str) -> None:
    step = plan(_command(rpm=1200), protocol, None)
    assert isinstance(step, Publish)
    assert (step.topic, step.transport) == (topic, protocol)
    assert json.loads(step.payload) == {"id": CID, "name": "set_speed", "params": {"rpm": 1200}}


def test_lorawan_with_data_hex_is_a_chirpstack_downlink_of_those_bytes() -> None:
    step = plan(_command("0004A30B001C0530", data_hex="01ff", f_port=3), "lorawan", "app-7")
    assert isinstance(step, Publish)
    assert step.topic == "application/app-7/device/0004a30b001c0530/command/down"
    assert step.transport == "chirpstack"
    assert json.loads(step.payload) == {"id": CID, "devEui": "0004a30b001c0530",
                                        "confirmed": True, "fPort": 3,
                                        "data": base64.b64encode(b"\x01\xff").decode()}


def test_lorawan_without_bytes_sends_an_object_for_the_profile_codec() -> None:
    step = plan(_command("0004a30b001c0530", rpm=5, confirmed=False), "lorawan", "app-7")
    assert isinstance(step, Publish)
    assert json.loads(step.payload) == {"id": CID, "devEui": "0004a30b001c0530",
                                        "confirmed": False, "fPort": 10,
                                        "object": {"name": "set_speed", "params": {"rpm": 5}}}


@pytest.mark.parametrize(("params", "application", "message"), [
    ({"data_hex": "zz"}, "app", "params.data_hex 'zz' is not a hex string"),
    ({"data_base64": "%%%"}, "app", "params.data_base64 '%%%' is not a base64 string"),
    ({"f_port": 0}, "app", "params.f_port 0 is not an integer from 1 to 223"),
    ({"confirmed": "yes"}, "app", "params.confirmed 'yes' is not true or false"),
    ({}, None, "has no application_id"),
    ({}, "app/with/slashes", "cannot be part of an MQTT topic"),
])
def test_undeliverable_lorawan_commands_are_rejected_with_the_reason(
        params: dict[str, object], application: str | None, message: str) -> None:
    step = plan(_command("0004a30b001c0530", **params), "lorawan", application)
    assert isinstance(step, Reject)
    assert message in step.detail


def test_lorawan_device_id_must_be_a_dev_eui() -> None:
    step = plan(_command("pump-1"), "lorawan", "app-7")
    assert isinstance(step, Reject) and "is not 16 hex digits" in step.detail


def test_http_and_websocket_devices_fetch_their_commands() -> None:
    assert plan(_command(), "http", None) == Hold("http")
    assert plan(_command(), "websocket", None) == Hold("websocket")


def test_devices_without_a_transport_fail() -> None:
    assert plan(_command(), "bluetooth", None) == Reject("no command transport for protocol 'bluetooth'")
    assert plan(_command(), None, None) == Reject("device pump-1 does not exist")


# ---- acks ------------------------------------------------------------------------------


def test_mqtt_device_ack_becomes_a_status() -> None:
    status = parse_ack("devices/pump-1/commands/ack",
                       json.dumps({"id": CID, "status": "acked", "detail": "done"}).encode(), T0)
    assert status == CommandStatus(CID, "pump-1", "acked", T0, "done")


def test_gsm_device_ack_without_detail() -> None:
    payload = json.dumps({"id": CID, "status": "delivered"}).encode()
    status = parse_ack("gsm/modem-9/commands/ack", payload, T0)
    assert status == CommandStatus(CID, "modem-9", "delivered", T0, "")


@pytest.mark.parametrize(("event", "body", "expected"), [
    ("txack", {"queueItemId": CID, "gatewayId": "gw1"},
     ("delivered", "LoRaWAN txack by gateway gw1")),
    ("ack", {"queueItemId": CID, "acknowledged": True},
     ("acked", "LoRaWAN confirmed downlink acknowledged")),
    ("ack", {"queueItemId": CID, "acknowledged": False},
     ("failed", "LoRaWAN downlink not acknowledged by the device")),
])
def test_chirpstack_events_map_to_statuses(event: str, body: dict[str, object],
                                           expected: tuple[str, str]) -> None:
    status = parse_ack(f"application/app-7/device/0004A30B001C0530/event/{event}",
                       json.dumps(body).encode(), T0)
    assert (status.command_id, status.device_id) == (CID, "0004a30b001c0530")
    assert (status.status, status.detail) == expected


@pytest.mark.parametrize(("topic", "payload", "message"), [
    ("devices/p/commands/ack", b"not json", "ack payload is not JSON"),
    ("devices/p/commands/ack", b"[1]", "not a JSON object"),
    ("devices/p/commands/ack", b'{"id": "x", "status": "sent"}', "ack status 'sent' is not one of"),
    ("devices/p/commands/ack", b'{"status": "acked"}', "ack has no command id"),
    ("devices/p/telemetry", b"{}", "is not a command ack topic"),
])
def test_bad_acks_say_what_is_wrong(topic: str, payload: bytes, message: str) -> None:
    with pytest.raises(AckError, match=message):
        parse_ack(topic, payload, T0)


# ---- request validation ----------------------------------------------------------------


@pytest.mark.parametrize(("body", "field"), [
    ({}, "name"),
    ({"name": "has space"}, "name"),
    ({"name": "go", "params": [1]}, "params"),
    ({"name": "go", "params": {"blob": "x" * MAX_PARAMS_BYTES}}, "params"),
    ({"name": "go", "ttl_s": 0}, "ttl_s"),
    ({"name": "go", "ttl_s": 86401}, "ttl_s"),
    ({"name": "go", "ttl_s": True}, "ttl_s"),
    ({"name": "go", "ttl_s": "60"}, "ttl_s"),
])
def test_invalid_command_requests_name_the_field(body: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidField) as raised:
        _new_command(body, "pump-1", "op")
    assert raised.value.detail["field"] == field


def test_a_valid_request_makes_a_command_with_its_ttl() -> None:
    command = _new_command({"name": "reboot", "ttl_s": 3}, "pump-1", "op")
    assert dict(command.params) == {}
    assert command.expires_at - command.created_at == timedelta(seconds=3)
    assert command.requested_by == "op"


# ---- status times ----------------------------------------------------------------------
# A device answers as soon as it has the command, and its answer is stamped on arrival;
# `sent` must be stamped no later than the moment the transport got the command, or the
# device's `delivered` would precede it. (The store also never records a status before its
# predecessor: tests/integration/test_commands.py.)


class _Pool:
    @asynccontextmanager
    async def connection(self) -> AsyncIterator[object]:
        yield object()


class _Producer:
    def __init__(self) -> None:
        self.records: list[Outgoing] = []

    async def send_all(self, records: list[Outgoing]) -> None:
        self.records.extend(records)


class _SlowBroker:
    """An MQTT link whose PUBACK takes a while; notes when it got the commands."""

    def __init__(self) -> None:
        self.got_at: datetime | None = None

    async def publish_all(self, steps: list[Publish]) -> None:
        self.got_at = utcnow()
        await asyncio.sleep(0.05)


async def test_dispatched_commands_are_sent_when_the_broker_got_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    now = utcnow()
    command = Command(id=CID, device_id="pump-1", name="set_speed", params={}, created_at=now,
                      expires_at=now + timedelta(seconds=30))
    recorded: list[CommandStatus] = []

    async def targets(conn: object, ids: list[str]) -> dict[str, DispatchTarget]:
        return {CID: DispatchTarget("queued", command.expires_at, "mqtt", None)}

    async def apply(conn: object, statuses: list[CommandStatus]) -> list[CommandStatus]:
        recorded.extend(statuses)
        return list(statuses)

    monkeypatch.setattr(store, "dispatch_targets", targets)
    monkeypatch.setattr(store, "apply_statuses", apply)
    broker = _SlowBroker()
    service = CommandService(pool=_Pool(), producer=_Producer(), link=broker)  # type: ignore[arg-type]
    event = SimpleNamespace(message=SimpleNamespace(value=command.encode()))
    await service.dispatch([event])  # type: ignore[list-item]
    [sent] = recorded
    assert sent.status == "sent" and broker.got_at is not None
    assert command.created_at <= sent.at <= broker.got_at


async def test_websocket_pushes_are_sent_before_the_device_can_answer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    now = utcnow()
    command = Command(id=CID, device_id="pump-1", name="set_speed", params={}, created_at=now,
                      expires_at=now + timedelta(seconds=30))
    recorded: list[CommandStatus] = []
    answers: list[datetime] = []

    async def pg(conn: object, work: Any) -> Any:
        return await work(object())

    async def open_commands(conn: object, device_id: str, at: datetime) -> list[tuple[Command, str]]:
        return [(command, "queued")]

    async def apply(conn: object, statuses: list[CommandStatus]) -> list[CommandStatus]:
        recorded.extend(statuses)
        return list(statuses)

    async def send(conn: object, records: list[Outgoing]) -> None:
        pass

    async def push(frame: dict[str, Any]) -> None:
        answers.append(utcnow())  # the device's ack, stamped as it arrives
        await asyncio.sleep(0.02)

    monkeypatch.setattr(api_commands, "_pg", pg)
    monkeypatch.setattr(api_commands, "_send", send)
    monkeypatch.setattr(store, "open_commands", open_commands)
    monkeypatch.setattr(store, "apply_statuses", apply)
    assert await api_commands.push_pending(object(), "pump-1", push) == 1  # type: ignore[arg-type]
    [sent] = recorded
    assert sent.status == "sent" and sent.at <= answers[0]
