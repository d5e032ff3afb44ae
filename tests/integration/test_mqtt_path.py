"""MQTT device → connector → Kafka → worker → Redis, InfluxDB, PostgreSQL and Socket.IO."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import socketio

from pipeline.mqtt_accounts import login
from pipeline.settings import Settings
from tests.conftest import WorkerProcess, stop_process, unique_id, wait_until
from tests.integration.conftest import ApiServer
from tests.integration.helpers import dead_letters_for, device_row, influx_points, redis_latest
from tests.integration.live import create_device, forget_mqtt_session

pytestmark = pytest.mark.integration

Starter = Callable[..., subprocess.Popen[bytes]]


def _publisher(settings: Settings) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=unique_id("pub"))
    login(client, settings, "simulator")
    client.max_inflight_messages_set(100)
    client.connect(settings.mqtt_host, settings.mqtt_port)
    client.loop_start()
    return client


def _publish(settings: Settings, topic: str, payload: bytes | str) -> None:
    client = _publisher(settings)
    try:
        client.publish(topic, payload, qos=1).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


@pytest.fixture(scope="module")
def connector(start_process: Starter, stack: Settings) -> Iterator[subprocess.Popen[bytes]]:
    """The MQTT connector, with a session of its own so a running `make run` is not disturbed;
    the session is removed afterwards, so the broker does not queue readings for it for days."""
    proc = start_process("connect", "mqtt", log_name="test-connector-mqtt.log",
                         env={"WEBSCADA_MQTT_CLIENT_ID": "webscada-connector-test"})
    time.sleep(3)
    assert proc.poll() is None, "the MQTT connector exited; see .stack/logs/test-connector-mqtt.log"
    yield proc
    stop_process(proc)
    forget_mqtt_session(stack, "webscada-connector-test")


async def test_mqtt_reading_reaches_stores_and_socketio_room(
    worker: WorkerProcess, connector: subprocess.Popen[bytes], api_server: ApiServer,
    stack: Settings,
) -> None:
    device = unique_id("check")
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    sio = socketio.AsyncClient(reconnection=False)
    sio.on("telemetry", events.put)
    await sio.connect(api_server.base_url, auth={"token": api_server.token},
                      transports=["websocket"], wait_timeout=10)
    try:
        ack = await sio.call("subscribe", {"room": f"device:{device}"}, timeout=10)
        assert ack == {"ok": True, "room": f"device:{device}"}
        await asyncio.to_thread(_publish, stack, f"devices/{device}/telemetry",
                                json.dumps({"telemetry": {"temperature": 21.5}}))
        event = await asyncio.wait_for(events.get(), timeout=10)
    finally:
        await sio.disconnect()
    assert event["device_id"] == device
    assert event["protocol"] == "mqtt"
    assert event["metrics"] == {"temperature": 21.5}

    latest = await asyncio.to_thread(
        wait_until, lambda: redis_latest(stack, device), timeout=15, what="Redis latest")
    assert latest["temperature"] == "21.5"
    assert latest["protocol"] == "mqtt"
    points = await asyncio.to_thread(
        wait_until, lambda: influx_points(stack, device), timeout=15, what="InfluxDB point")
    assert [(p["field"], p["value"]) for p in points] == [("temperature", 21.5)]
    row = await asyncio.to_thread(
        wait_until, lambda: device_row(stack, device), timeout=15, what="devices row")
    assert row["protocol"] == "mqtt"
    assert row["last_seen"] is not None
    assert row["last_seen"].isoformat().replace("+00:00", "Z")[:19] == latest["ts"][:19]


def test_non_json_payload_goes_to_dlq_and_later_readings_flow(
    worker: WorkerProcess, connector: subprocess.Popen[bytes], stack: Settings
) -> None:
    device = unique_id("nonjson")
    marker = unique_id("marker")
    _publish(stack, f"devices/{device}/telemetry", f"temperature=21.5 {marker}")
    letters = wait_until(lambda: dead_letters_for(stack, marker.encode(), timeout=3), timeout=30,
                         what="dead letter for a non-JSON payload")
    # Other tests' connectors may be subscribed too: each writes its own copy of the letter.
    assert len({(item.reason, item.payload, item.source_topic) for item in letters}) == 1
    letter = letters[0]
    assert letter.payload == f"temperature=21.5 {marker}".encode()
    assert "not JSON" in letter.reason
    assert letter.stage == "connector.mqtt"
    assert letter.source_topic == f"mqtt:devices/{device}/telemetry"
    assert letter.device_id == device

    _publish(stack, f"devices/{device}/telemetry", json.dumps({"temperature": 3.5}))
    latest = wait_until(lambda: redis_latest(stack, device), what="a valid reading after the bad one")
    assert latest["temperature"] == "3.5"
    assert worker.poll() is None and connector.poll() is None


def test_reading_whose_only_metric_is_a_string_goes_to_dlq(
    worker: WorkerProcess, connector: subprocess.Popen[bytes], stack: Settings
) -> None:
    device = unique_id("stringy")
    payload = json.dumps({"telemetry": {"mode": "automatic"}})
    _publish(stack, f"devices/{device}/telemetry", payload)
    letters = wait_until(lambda: dead_letters_for(stack, b"automatic", timeout=3) and [
        letter for letter in dead_letters_for(stack, b"automatic", timeout=3)
        if letter.device_id == device], timeout=30, what="dead letter for a string-only reading")
    assert len({(item.reason, item.payload) for item in letters}) == 1
    assert "mode" in letters[0].reason
    assert letters[0].payload == payload.encode()
    time.sleep(2)
    assert redis_latest(stack, device) == {}
    assert influx_points(stack, device) == []


def test_mixed_reading_keeps_valid_metrics_and_reports_the_bad_field(
    worker: WorkerProcess, connector: subprocess.Popen[bytes], stack: Settings
) -> None:
    device = unique_id("mixed")
    payload = json.dumps({"telemetry": {"temperature": 19.0, "pump": True, "status": "running",
                                        "firmware": "1.2.3"}})
    _publish(stack, f"devices/{device}/telemetry", payload)
    latest = wait_until(lambda: redis_latest(stack, device), what="Redis latest")
    assert latest["temperature"] == "19.0"
    assert latest["pump"] == "1.0"
    assert latest["status"] == "running"
    assert "firmware" not in latest
    letters = wait_until(lambda: [letter for letter in dead_letters_for(stack, b"1.2.3", timeout=3)
                                  if letter.device_id == device],
                         timeout=30, what="dead letter naming the dropped field")
    assert len({(item.reason, item.payload) for item in letters}) == 1
    assert "firmware" in letters[0].reason


@pytest.mark.slow
def test_connector_killed_mid_stream_loses_nothing(
    worker: WorkerProcess, start_scoped_process: Starter, stack: Settings
) -> None:
    """kill -9 the connector while a device publishes 5,000 QoS 1 readings: all reach InfluxDB."""
    client_id = unique_id("webscada-connector-kill")
    proc = start_scoped_process("connect", "mqtt", log_name="test-connector-kill.log",
                                mqtt_client_id=client_id)
    time.sleep(3)  # the session exists once the connector has subscribed
    device = unique_id("kill9")
    total = 5000
    base_ms = int(time.time() * 1000) - total
    sent = threading.Event()
    halfway = threading.Event()

    def publish_all() -> None:
        client = _publisher(stack)
        try:
            infos = []
            for seq in range(total):
                body = json.dumps({"timestamp": base_ms + seq, "telemetry": {"seq": seq}})
                infos.append(client.publish(f"devices/{device}/telemetry", body, qos=1))
                if seq == total // 3:
                    halfway.set()
                if seq % 200 == 0:
                    time.sleep(0.02)  # a device, not a firehose: the kill lands mid-stream
            for info in infos:
                info.wait_for_publish(60)
        finally:
            client.loop_stop()
            client.disconnect()
            sent.set()

    publisher = threading.Thread(target=publish_all, daemon=True)
    publisher.start()
    assert halfway.wait(60)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert sent.wait(120), "the publisher did not finish"
    start_scoped_process("connect", "mqtt", log_name="test-connector-kill.log", mqtt_client_id=client_id)

    def all_points() -> list[dict[str, Any]] | None:
        points = influx_points(stack, device, start="-2h")
        return points if len(points) >= total else None

    points = wait_until(all_points, timeout=180, interval=2, what=f"{total} points in InfluxDB")
    assert sorted(int(p["value"]) for p in points) == list(range(total))
    assert len({p["time"] for p in points}) == total


def test_a_registered_device_cannot_move_itself_into_another_application(
    worker: WorkerProcess, connector: subprocess.Popen[bytes], api_server: ApiServer,
    stack: Settings,
) -> None:
    """The registry wins over the ``applicationId`` a reading claims, in every store."""
    device, key = create_device(api_server, "mqtt", application_id="it-plant")
    time.sleep(stack.profile_refresh_s + 1)  # validate's copy of the registry has it
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=unique_id("dev"))
    client.username_pw_set(device, key)  # the device itself, with its own account
    client.connect(stack.mqtt_host, stack.mqtt_port)
    client.loop_start()
    try:
        client.publish(f"devices/{device}/telemetry",
                       json.dumps({"applicationId": "other-plant", "telemetry": {"level": 3.0}}),
                       qos=1).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()
    latest = wait_until(lambda: redis_latest(stack, device), timeout=20, what="Redis latest")
    assert latest["application_id"] == "it-plant"
    points = wait_until(lambda: influx_points(stack, device), timeout=20, what="InfluxDB point")
    assert {p["application_id"] for p in points} == {"it-plant"}
    assert device_row(stack, device)["application_id"] == "it-plant"
