"""The API's pure parts: rooms, auth, JSON views, event routing, the bounded queue, health probes."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import httpx
import pytest
from pydantic import SecretStr

from api.app import create_app
from api.auth import DevTokenAuthenticator, bearer_token
from api.health import _mqtt_connect_packet, run_checks
from api.payloads import jsonable, kafka_key, kafka_timestamp, record_views, topic_frame
from api.rooms import Room, RoomError, parse_room
from api.snapshot import snapshot_reading
from api.streaming import RoutingError, live_events
from api.topics import DropOldestQueue
from pipeline.settings import Settings, Topics
from schemas.batch import ReadingBatch
from schemas.codec import registry
from schemas.latest import latest_view
from schemas.records import DeadLetter, SystemEvent, Telemetry, TelemetryMetadata

AT = datetime(2026, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


def _telemetry(application_id: str | None = "plant-1") -> Telemetry:
    return Telemetry(
        device_id="dev-1",
        protocol="lorawan",
        ts=AT,
        received_at=AT,
        message_id="m-1",
        metrics={"temperature": 21.5},
        application_id=application_id,
        metadata=TelemetryMetadata(signal_strength=-90.0, battery_level=55.0),
    )


# ---- rooms -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "room"),
    [
        ({"room": "device:dev-1"}, Room("device", "dev-1")),
        ("device:a0b1c2d3e4f5a6b7", Room("device", "a0b1c2d3e4f5a6b7")),
        ({"room": "application:plant-1"}, Room("application", "plant-1")),
        ("alarms", Room("alarms")),
        ({"room": "system"}, Room("system")),
    ],
)
def test_parse_room_accepts_the_four_kinds(payload: object, room: Room) -> None:
    assert parse_room(payload) == room
    assert parse_room(str(room)) == room


@pytest.mark.parametrize(
    "payload",
    [None, 42, "", {"room": 1}, {"nothing": "x"}, "device:", "device:bad id", "device:-x",
     "alarms:x", "system:", "users:1", "device:" + "x" * 65],
)
def test_parse_room_rejects_malformed_rooms(payload: object) -> None:
    with pytest.raises(RoomError):
        parse_room(payload)


# ---- auth --------------------------------------------------------------------


def test_dev_token_authenticator() -> None:
    auth = DevTokenAuthenticator(SecretStr("s3cret"))
    assert auth.authenticate("s3cret") is not None
    for token in (None, "", "s3cret ", "S3CRET", "s3cre", "ünïcode"):
        assert auth.authenticate(token) is None


@pytest.mark.parametrize(
    ("header", "token"),
    [("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Basic abc", None), ("Bearer", None),
     ("", None)],
)
def test_bearer_token(header: str, token: str | None) -> None:
    assert bearer_token({"authorization": header}) == token


# ---- JSON views --------------------------------------------------------------


def test_jsonable_converts_times_bytes_and_non_finite_floats() -> None:
    assert jsonable({"at": AT, "raw": b"\x00\xff", "v": [float("nan"), 1.5], "n": None}) == {
        "at": "2026-05-06T07:08:09.123456Z",
        "raw": "AP8=",
        "v": [None, 1.5],
        "n": None,
    }


def test_topic_frame_of_a_dead_letter_has_base64_payload() -> None:
    letter = DeadLetter(
        reason="bad json", stage="connector.mqtt", payload=b"{oops", source_topic="mqtt:x",
        failed_at=AT,
    )
    [(schema, value)] = record_views(letter.encode())
    frame = topic_frame(
        topic=Topics.DLQ, partition=3, offset=42, key=None, timestamp_ms=1_700_000_000_123,
        schema=schema, value=value,
    )
    assert frame == {
        "topic": "telemetry.dlq",
        "partition": 3,
        "offset": 42,
        "key": None,
        "timestamp": "2023-11-14T22:13:20.123000Z",
        "schema": "io.webscada.DeadLetter",
        "value": {
            "reason": "bad json",
            "stage": "connector.mqtt",
            "device_id": None,
            "payload": "e29vcHM=",
            "source_topic": "mqtt:x",
            "source_partition": None,
            "source_offset": None,
            "failed_at": "2026-05-06T07:08:09.123456Z",
            "details": {},
        },
    }


def test_telemetry_frames_use_the_telemetry_json_view() -> None:
    record = _telemetry()
    [(schema, value)] = record_views(record.encode())
    frame = topic_frame(
        topic=Topics.VALID, partition=0, offset=0, key=b"dev-1", timestamp_ms=None,
        schema=schema, value=value,
    )
    assert frame["key"] == "dev-1"
    assert frame["timestamp"] is None
    assert frame["value"] == record.to_json()
    assert "index" not in frame


def test_a_batch_gives_one_telemetry_view_per_reading_as_single_records_do() -> None:
    first, second = _telemetry(), _telemetry(None)
    views = record_views(ReadingBatch.of([first, second]).encode())
    assert views == [("io.webscada.Telemetry", first.to_json()),
                     ("io.webscada.Telemetry", second.to_json())]


def test_kafka_key_and_timestamp() -> None:
    assert kafka_key(b"\xff\xfe") == "//4="
    assert kafka_timestamp(-1) is None


# ---- live event routing ------------------------------------------------------


def test_telemetry_goes_to_device_and_application_rooms() -> None:
    [event] = live_events(Topics.VALID, _telemetry().encode())
    assert event.event == "telemetry"
    assert event.rooms == ("device:dev-1", "application:plant-1")
    assert event.payload == _telemetry().to_json()
    [alone] = live_events(Topics.VALID, _telemetry(None).encode())
    assert alone.rooms == ("device:dev-1",)
    batched = live_events(Topics.VALID, ReadingBatch.of([_telemetry(), _telemetry(None)]).encode())
    assert [(e.rooms, e.payload) for e in batched] == [
        (event.rooms, event.payload), (alone.rooms, alone.payload)]


def test_readings_nobody_listens_to_become_no_event() -> None:
    other = Telemetry(device_id="dev-2", protocol="mqtt", ts=_telemetry().ts, received_at=_telemetry().ts,
                      message_id="m2", metrics={"x": 1.0})
    value = ReadingBatch.of([_telemetry(), other, _telemetry(None)]).encode()
    assert len(live_events(Topics.VALID, value, lambda rooms: False)) == 0
    by_device = live_events(Topics.VALID, value, lambda rooms: "device:dev-2" in rooms)
    assert [(e.rooms, e.payload["message_id"]) for e in by_device] == [(("device:dev-2",), "m2")]
    by_application = live_events(Topics.VALID, value, lambda rooms: "application:plant-1" in rooms)
    assert [e.rooms for e in by_application] == [("device:dev-1", "application:plant-1")]
    assert len(live_events(Topics.VALID, value, lambda rooms: True)) == 3


def test_alarm_command_status_and_system_rooms() -> None:
    alarm = registry().encode("AlarmEvent", {
        "alarm_id": "a1", "rule_id": "r1", "device_id": "dev-1", "event": "raised",
        "state": "active_unacked", "severity": "major", "metric": "temperature",
        "value": 80.0, "at": AT, "by": None, "message": "",
    })
    [event] = live_events(Topics.ALARMS, alarm)
    assert (event.event, event.rooms) == ("alarm", ("alarms", "device:dev-1"))
    assert event.payload["at"] == "2026-05-06T07:08:09.123456Z"

    status = registry().encode("CommandStatus", {
        "command_id": str(uuid.uuid4()), "device_id": "dev-1", "status": "sent", "at": AT,
        "detail": "",
    })
    [event] = live_events(Topics.COMMAND_STATUS, status)
    assert (event.event, event.rooms) == ("command_status", ("device:dev-1",))

    system = SystemEvent(kind="connector_up", source="connector.mqtt", at=AT).encode()
    [event] = live_events(Topics.SYSTEM, system)
    assert (event.event, event.rooms) == ("system", ("system",))


def test_a_record_of_the_wrong_schema_is_not_routed() -> None:
    system = SystemEvent(kind="x", source="y", at=AT).encode()
    with pytest.raises(RoutingError, match=r"expected io\.webscada\.Telemetry"):
        live_events(Topics.VALID, system)
    with pytest.raises(RoutingError, match="not a live topic"):
        live_events(Topics.RAW, _telemetry().encode())


# ---- bounded queue -----------------------------------------------------------


async def test_drop_oldest_queue_keeps_the_newest_and_counts_drops() -> None:
    queue: DropOldestQueue[int] = DropOldestQueue(3)
    assert [queue.put(i) for i in range(5)] == [False, False, False, True, True]
    assert queue.dropped == 2
    assert [await queue.get() for _ in range(3)] == [2, 3, 4]
    waiter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    assert not waiter.done()
    queue.put(7)
    assert await asyncio.wait_for(waiter, 1) == 7
    with pytest.raises(ValueError):
        DropOldestQueue(0)


# ---- REST helpers and health probes ------------------------------------------


def test_latest_view_makes_numbers_of_metric_fields() -> None:
    assert latest_view(
        {"temperature": "21.5", "ts": "2026-05-06T07:08:09.123456Z", "protocol": "mqtt",
         "snr": "-7.25", "gateway_id": "gw-1", "odd": "n/a"},
        {"temperature": "2026-05-06T07:00:00.000000Z", "gone": "2026-05-06T06:00:00.000000Z"},
    ) == {
        "temperature": 21.5, "ts": "2026-05-06T07:08:09.123456Z", "protocol": "mqtt",
        "snr": -7.25, "gateway_id": "gw-1", "odd": "n/a",
        "times": {"temperature": "2026-05-06T07:00:00.000000Z"},
    }


def test_snapshot_carries_each_metrics_own_time_and_the_location() -> None:
    fields = {"ts": "2026-05-06T07:08:09.000000Z", "protocol": "gsm", "level": "2.5", "flow": "1.0",
              "signal_strength": "-71.0", "location_lat": "52.1", "location_lon": "4.3",
              "gateway_id": "gw"}
    times = {"level": "2026-05-06T06:00:00.000000Z", "flow": "2026-05-06T07:08:09.000000Z"}
    event = snapshot_reading("d", fields, times)
    assert event["metrics"] == {"level": 2.5, "flow": 1.0}
    assert event["metric_times"] == times
    assert event["metadata"] == {"signal_strength": -71.0, "gateway_id": "gw",
                                 "location": {"lat": 52.1, "lon": 4.3}}


def test_mqtt_connect_packet_is_mqtt_311() -> None:
    assert _mqtt_connect_packet("a").hex() == "100d00044d5154540402000500016" + "1"


async def test_run_checks_reports_up_down_and_timeouts_concurrently() -> None:
    async def fine() -> None:
        return None

    async def broken() -> None:
        raise ConnectionRefusedError("refused")

    async def stuck() -> None:
        await asyncio.sleep(10)

    started = asyncio.get_running_loop().time()
    results = await run_checks({"a": fine, "b": broken, "c": stuck, "d": stuck}, timeout_s=0.2)
    assert asyncio.get_running_loop().time() - started < 1.0
    assert results["a"].to_json()["status"] == "up"
    assert results["b"].to_json() == {
        "status": "down", "latency_ms": results["b"].to_json()["latency_ms"],
        "error": "ConnectionRefusedError: refused",
    }
    assert results["c"].error == "no answer within 0.2 s"


# ---- REST auth without any service (no lifespan) -----------------------------


async def test_rest_routes_check_token_and_device_id_before_any_service() -> None:
    app = create_app(Settings(), authenticator=DevTokenAuthenticator(SecretStr("unit-token")))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        missing = await client.get("/api/devices")
        wrong = await client.get("/api/devices", headers={"Authorization": "Bearer nope"})
        invalid = await client.get(
            "/api/devices/bad%20id/latest", headers={"Authorization": "Bearer unit-token"}
        )
        metrics = await client.get("/metrics")
    assert missing.status_code == wrong.status_code == 401
    assert missing.json() == {
        "error": "unauthorized",
        "detail": "send a valid token as 'Authorization: Bearer <token>'",
    }
    assert invalid.status_code == 422
    assert invalid.json()["detail"]["field"] == "device_id"
    assert metrics.status_code == 200
    assert "webscada_api_socketio_clients" in metrics.text
