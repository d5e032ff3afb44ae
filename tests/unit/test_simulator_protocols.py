"""Simulated devices of every protocol send what that protocol's connector or endpoint accepts."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime

import pytest

from api.readings import InvalidReadings, parse_readings
from connectors._simformats import csq_for_dbm, dev_eui_for, imei_for, lpp_encode
from connectors.codecs import decode_lpp
from connectors.errors import PayloadError
from connectors.gsm import imei_is_valid, parse_gsm_reading
from connectors.lorawan import translate
from connectors.mqtt import OutRecord
from connectors.reading import ReadingRow
from connectors.simulator import SIM_PROTOCOLS, build_fleet
from schemas.records import Telemetry

NOW_MS = 1714564800000
# after every simulated step: device times may not run ahead of their arrival
RECEIVED = datetime(2024, 5, 1, 12, 40, 0, tzinfo=UTC)


def test_lpp_encoder_writes_the_reference_example() -> None:
    assert lpp_encode([(3, "temperature", 27.2), (5, "temperature", 25.5)]) == bytes.fromhex(
        "03670110056700FF")
    data = lpp_encode([(1, "temperature", -4.1), (2, "relative_humidity", 55.5),
                       (3, "barometric_pressure", 1013.2), (4, "analog_input", 12.34)])
    assert dict(decode_lpp(data).metrics) == {
        "temperature_1": -4.1, "relative_humidity_2": 55.5, "barometric_pressure_3": 1013.2,
        "analog_in_4": 12.34}


def test_identities_and_signal() -> None:
    assert all(imei_is_valid(imei_for(n)) for n in range(1000))
    assert (csq_for_dbm(-120), csq_for_dbm(-113), csq_for_dbm(-83), csq_for_dbm(-40)) == (0, 0, 15, 31)
    assert dev_eui_for("x") == dev_eui_for("x") and len(dev_eui_for("x")) == 16


def test_fleet_names_and_topics() -> None:
    fleet = build_fleet(random.Random(1), devices=2, prefix="s", protocols=SIM_PROTOCOLS)
    assert [(d.protocol, d.device_id) for d in fleet if d.protocol != "lorawan"] == [
        ("mqtt", "s-1"), ("mqtt", "s-2"), ("gsm", "s-gsm-1"), ("gsm", "s-gsm-2"),
        ("http", "s-http-1"), ("http", "s-http-2"), ("websocket", "s-ws-1"), ("websocket", "s-ws-2")]
    lora = next(d for d in fleet if d.protocol == "lorawan")
    assert lora.topic == f"application/{lora.application_id}/device/{lora.device_id}/event/up"
    with pytest.raises(ValueError, match="coap"):
        build_fleet(random.Random(1), devices=1, prefix="s", protocols=["coap"])


def _gsm(topic: str, payload: bytes, device_id: str) -> Telemetry | None:
    reading = parse_gsm_reading(payload, device_id, RECEIVED)
    if reading.rejected:
        return None
    if reading.telemetry is not None:
        assert reading.telemetry.metadata.extra["imei"]
    return reading.telemetry


def _lorawan(topic: str, payload: bytes, device_id: str) -> Telemetry | None:
    outputs = translate(topic, payload, RECEIVED)
    if any(isinstance(r, OutRecord) and r.topic == "telemetry.dlq" for r in outputs):
        return None
    raw = [r.telemetry() for r in outputs if isinstance(r, ReadingRow)]
    return raw[0] if raw else None


def _api(protocol: str):  # type: ignore[no-untyped-def]
    def parse(topic: str, payload: bytes, device_id: str) -> Telemetry | None:
        assert topic == ""
        try:
            (reading,) = parse_readings(payload, device_id=device_id, protocol=protocol,
                                        received_at=RECEIVED, application_id="simulation")
        except InvalidReadings:
            return None
        return reading.telemetry()
    return parse


@pytest.mark.parametrize(("protocol", "parse"), [
    ("gsm", _gsm), ("lorawan", _lorawan), ("http", _api("http")), ("websocket", _api("websocket")),
])
def test_messages_of_each_protocol_are_accepted_but_a_few(protocol: str, parse) -> None:  # type: ignore[no-untyped-def]
    (device,) = build_fleet(random.Random(3), devices=1, prefix="p", protocols=[protocol])
    good = bad = batteries = 0
    for step in range(1000):
        topic, payload = device.next_message(NOW_MS + step * 1000)
        try:
            reading = parse(topic, payload, device.device_id)
        except PayloadError:
            reading = None
        if reading is None:
            if not topic.endswith("/status"):
                bad += 1
            continue
        good += 1
        assert reading.protocol == protocol
        if reading.metadata.battery_level is not None:
            batteries += 1
        if "margin" not in reading.metrics:
            assert reading.metadata.signal_strength is not None
            assert len(reading.metrics) == 4
    assert bad <= 20 and good >= 940
    assert batteries >= 45  # every reading but LoRaWAN uplinks; their status events say it


def test_gsm_messages_carry_imei_and_csq() -> None:
    (device,) = build_fleet(random.Random(5), devices=1, prefix="p", protocols=["gsm"])
    bodies = [json.loads(device.next_message(NOW_MS)[1]) for _ in range(300)]
    csqs = [b["csq"] for b in bodies if isinstance(b, dict) and "csq" in b]
    assert all(0 <= c <= 31 or c == 99 for c in csqs) and len(csqs) >= 290
    assert {b.get("imei") for b in bodies if "imei" in b} == {imei_for(1)}
