"""GSM, LoRaWAN (ChirpStack v4) and WebSocket devices end to end.

Each test sends what the device (or ChirpStack) sends, the way it sends it, and
checks Redis latest, InfluxDB and the device's Socket.IO room.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from pipeline.settings import Settings
from tests.conftest import stop_process, unique_id, wait_until
from tests.integration.conftest import ApiServer
from tests.integration.helpers import influx_points, redis_latest
from tests.integration.live import (
    create_device,
    forget_mqtt_session,
    next_event,
    publish,
    subscribed,
)

pytestmark = pytest.mark.integration

Starter = Callable[..., subprocess.Popen[bytes]]


def _connector(start_process: Starter, settings: Settings, protocol: str) -> Iterator[None]:
    client_id = f"webscada-connector-{protocol}-test-{os.getpid()}"
    proc = start_process("connect", protocol, "--client-id", client_id,
                         log_name=f"test-connector-{protocol}.log")
    time.sleep(3)
    assert proc.poll() is None, f"see .stack/logs/test-connector-{protocol}.log"
    yield
    stop_process(proc)
    forget_mqtt_session(settings, client_id)


@pytest.fixture(scope="module")
def gsm_connector(start_process: Starter, stack: Settings) -> Iterator[None]:
    yield from _connector(start_process, stack, "gsm")


@pytest.fixture(scope="module")
def mqtt_connector(start_process: Starter, stack: Settings) -> Iterator[None]:
    yield from _connector(start_process, stack, "mqtt")


@pytest.fixture(scope="module")
def lorawan_connector(start_process: Starter, stack: Settings) -> Iterator[None]:
    yield from _connector(start_process, stack, "lorawan")


def _fields(points: list[dict[str, Any]]) -> dict[str, float]:
    return {p["field"]: p["value"] for p in points}


async def _stores(settings: Settings, device: str,
                  fields: int) -> tuple[dict[str, str], list[dict[str, Any]]]:
    latest = await asyncio.to_thread(wait_until, lambda: redis_latest(settings, device),
                                     timeout=20, what="Redis latest")
    points = await asyncio.to_thread(
        wait_until, lambda: (p := influx_points(settings, device)) and len(p) >= fields and p,
        timeout=20, what="InfluxDB points")
    return latest, points


# --- GSM ---------------------------------------------------------------------------------------


async def test_gsm_reading_with_csq_and_imei(worker: Any, gsm_connector: None, api_server: ApiServer,
                                             stack: Settings) -> None:
    device = unique_id("modem")
    body = {"timestamp": int(time.time() * 1000), "telemetry": {"temperature": 18.25},
            "metadata": {"batteryLevel": 77}, "imei": "490154203237518", "csq": 20}
    async with subscribed(api_server, f"device:{device}") as events:
        await asyncio.to_thread(publish, stack, f"gsm/{device}/telemetry", body)
        event = await next_event(events, "telemetry")
    assert (event["device_id"], event["protocol"], event["metrics"]) == (
        device, "gsm", {"temperature": 18.25})
    assert event["metadata"]["signal_strength"] == -73.0  # csq 20: -113 + 2 * 20
    assert event["metadata"]["battery_level"] == 77.0
    assert event["metadata"]["extra"] == {"imei": "490154203237518", "csq": "20"}
    latest, points = await _stores(stack, device, 3)
    assert (latest["temperature"], latest["protocol"]) == ("18.25", "gsm")
    assert (float(latest["signal_strength"]), float(latest["battery_level"])) == (-73.0, 77.0)
    assert _fields(points) == {"temperature": 18.25, "signal_strength": -73.0, "battery_level": 77.0}
    assert {p["protocol"] for p in points} == {"gsm"}


# --- LoRaWAN -----------------------------------------------------------------------------------

APP = "17c82e96-be03-4f38-aef3-f83d48582d97"


def _device_info(dev_eui: str) -> dict[str, Any]:
    return {"tenantId": "52f14cd4-c6f1-4fbd-8f87-4025e1d49242", "tenantName": "ChirpStack",
            "applicationId": APP, "applicationName": "Test application",
            "deviceProfileId": "14855bf7-d10d-4aee-b618-ebfcb64dc7ad",
            "deviceProfileName": "Cayenne", "deviceName": "field sensor", "devEui": dev_eui,
            "tags": {}}


async def test_chirpstack_uplink_and_status(worker: Any, lorawan_connector: None,
                                            api_server: ApiServer, stack: Settings) -> None:
    dev_eui = uuid.uuid4().hex[:16]
    now = time.time()
    up = {
        "deduplicationId": str(uuid.uuid4()),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + "+00:00",
        "deviceInfo": _device_info(dev_eui), "devAddr": "00189440", "dr": 5, "fCnt": 42,
        "fPort": 2,
        # Cayenne LPP: temperature 27.2 on channel 3, relative humidity 64.5 % on channel 2
        "data": base64.b64encode(bytes.fromhex("03670110026881")).decode(),
        "rxInfo": [{"gatewayId": "0016c001f153a14c", "rssi": -57, "snr": 9.25},
                   {"gatewayId": "00800000a0001793", "rssi": -101, "snr": -3.0}],
        "txInfo": {"frequency": 868100000},
    }
    topic = f"application/{APP}/device/{dev_eui}/event/"
    async with subscribed(api_server, f"device:{dev_eui}", "system") as events:
        await asyncio.to_thread(publish, stack, topic + "up", up)
        event = await next_event(events, "telemetry")
        await asyncio.to_thread(publish, stack, topic + "join",
                                {"deviceInfo": _device_info(dev_eui), "devAddr": "00189440"})
        joined = await next_event(events, "system", lambda e: e.get("device_id") == dev_eui)
    assert (event["device_id"], event["protocol"], event["application_id"]) == (
        dev_eui, "lorawan", APP)
    assert event["metrics"] == {"temperature_3": 27.2, "relative_humidity_2": 64.5}
    assert event["message_id"] == up["deduplicationId"]
    assert {k: event["metadata"][k] for k in ("signal_strength", "snr", "gateway_id")} == {
        "signal_strength": -57.0, "snr": 9.25, "gateway_id": "0016c001f153a14c"}
    assert (joined["kind"], joined["source"]) == ("join", "connector.lorawan")
    latest, points = await _stores(stack, dev_eui, 4)
    assert (latest["temperature_3"], latest["relative_humidity_2"], latest["protocol"]) == (
        "27.2", "64.5", "lorawan")
    assert (float(latest["signal_strength"]), float(latest["snr"])) == (-57.0, 9.25)
    assert _fields(points) == {"temperature_3": 27.2, "relative_humidity_2": 64.5,
                               "signal_strength": -57.0, "snr": 9.25}
    assert {(p["protocol"], p["application_id"]) for p in points} == {("lorawan", APP)}

    status = {"deduplicationId": str(uuid.uuid4()), "deviceInfo": _device_info(dev_eui),
              "margin": 12, "batteryLevel": 93.5}
    await asyncio.to_thread(publish, stack, topic + "status", status)
    battery = await asyncio.to_thread(
        wait_until, lambda: redis_latest(stack, dev_eui).get("battery_level"), timeout=20,
        what="battery level from the status event")
    assert float(battery) == 93.5


# --- WebSocket devices -------------------------------------------------------------------------


async def _next_reply(ws: Any, command_id: str) -> dict[str, Any]:
    """The next frame that is not a repeat of command ``command_id``."""
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 15))
        if frame.get("type") == "command" and frame.get("id") == command_id:
            continue
        return dict(frame)


async def test_websocket_device_readings_and_commands(worker: Any, api_server: ApiServer,
                                                      stack: Settings) -> None:
    device, key = create_device(api_server, "websocket")
    admin = {"Authorization": f"Bearer {api_server.token}"}
    async with httpx.AsyncClient(base_url=api_server.base_url, headers=admin, timeout=15) as http:
        queued = await http.post(f"/api/devices/{device}/commands",
                                 json={"name": "setpoint", "params": {"value": 21}, "ttl_s": 300})
        assert queued.status_code == 202, queued.text
        command_id = queued.json()["id"]
        async with subscribed(api_server, f"device:{device}", "system") as events, ws_connect(
                f"{api_server.ws_url}/ws/devices/{device}?api_key={key}") as ws:
            command = json.loads(await asyncio.wait_for(ws.recv(), 15))  # waiting since before
            assert {k: command[k] for k in ("type", "id", "name", "params")} == {
                "type": "command", "id": command_id, "name": "setpoint", "params": {"value": 21}}
            await ws.send(json.dumps({"type": "ack", "id": command_id, "status": "acked",
                                      "detail": "set"}))
            # The same unanswered command may be pushed again (on connect and by the
            # dispatcher); devices dedupe on its id. Skip such repeats.
            assert await _next_reply(ws, command_id) == {"ok": True, "type": "ack", "id": command_id,
                                                         "status": "acked"}
            await ws.send(json.dumps({"telemetry": {"level": 3.5},
                                      "metadata": {"signalStrength": -61}}))
            answer = await _next_reply(ws, command_id)
            assert answer["ok"] is True and len(answer["message_ids"]) == 1
            await ws.send(json.dumps({"telemetry": {"level": "high"}}))
            refused = await _next_reply(ws, command_id)
            assert (refused["ok"], refused["status"], refused["detail"]["field"]) == (
                False, 422, "telemetry.level")
            online = await next_event(events, "system", lambda e: e["device_id"] == device)
            event = await next_event(events, "telemetry")
        assert (online["kind"], online["source"]) == ("device_online", "api.websocket")
        assert (event["protocol"], event["metrics"], event["message_id"]) == (
            "websocket", {"level": 3.5}, answer["message_ids"][0])
        latest, points = await _stores(stack, device, 2)
        assert (latest["level"], latest["protocol"], float(latest["signal_strength"])) == (
            "3.5", "websocket", -61.0)
        assert {(p["protocol"], p["application_id"]) for p in points} == {("websocket", "it-plant")}

        async def acked() -> bool:
            listed = (await http.get(f"/api/devices/{device}/commands")).json()
            return listed[0]["status"] == "acked"

        deadline = time.monotonic() + 20
        while not await acked():
            assert time.monotonic() < deadline, "the command never became acked"
            await asyncio.sleep(0.5)


@pytest.mark.parametrize(("query", "code"), [("", 4401), ("?api_key=nope", 4401), ("other", 4403)])
async def test_websocket_device_keys(api_server: ApiServer, query: str, code: int) -> None:
    device, _ = create_device(api_server, "websocket")
    if query == "other":
        _, other_key = create_device(api_server, "websocket")
        query = f"?api_key={other_key}"
    async with ws_connect(f"{api_server.ws_url}/ws/devices/{device}{query}") as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == code


# --- the simulator -----------------------------------------------------------------------------


def test_simulator_feeds_every_protocol(worker: Any, gsm_connector: None, lorawan_connector: None,
                                        mqtt_connector: None, api_server: ApiServer,
                                        stack: Settings) -> None:
    from connectors.simulator import SIM_PROTOCOLS, build_fleet
    from connectors.simulator import main as simulate

    prefix = unique_id("simit")
    code = simulate(stack, devices=1, interval_s=0.5, count=6, prefix=prefix,
                    protocols=SIM_PROTOCOLS, api_url=api_server.base_url)
    assert code == 0
    fleet = build_fleet(random.Random(0), devices=1, prefix=prefix, protocols=SIM_PROTOCOLS)
    for device in fleet:
        latest = wait_until(lambda d=device.device_id: redis_latest(stack, d), timeout=90,
                            what=f"latest values of simulated {device.protocol} device")
        assert latest["protocol"] == device.protocol
        assert {"temperature", "temperature_1"} & set(latest), latest
