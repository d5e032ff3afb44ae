"""LoRaWAN connector: ChirpStack v4 events to Kafka records, downlinks, ack-after-Kafka."""

from __future__ import annotations

import base64
import copy
import json
from datetime import UTC, datetime
from typing import Any, cast

import paho.mqtt.client as paho
import pytest
from confluent_kafka import Producer

from connectors.lorawan import SUBSCRIPTION, downlink_topic, send_downlink, translate
from connectors.mqtt import MqttConnector, Output, OutRecord
from connectors.producer import RecordProducer
from connectors.reading import ReadingRow, encode_rows
from schemas.batch import decode_batch
from schemas.codec import registry
from schemas.records import DeadLetter, Telemetry
from tests.unit.fakes import FakeKafka, FakeMqtt, raw_readings
from tests.unit.test_mqtt_connector import connect, message, on_topic

APP = "17c82e96-be03-4f38-aef3-f83d48582d97"
DEV = "0101010101010101"
DEVICE_INFO = {
    "tenantId": "52f14cd4-c6f1-4fbd-8f87-4025e1d49242", "tenantName": "ChirpStack",
    "applicationId": APP, "applicationName": "Test application",
    "deviceProfileId": "14855bf7-d10d-4aee-b618-ebfcb64dc7ad",
    "deviceProfileName": "Test device-profile", "deviceName": "Test device", "devEui": DEV,
    "tags": {"key": "value"},
}
# Cayenne LPP reference example: channel 3 temperature 27.2, channel 5 temperature 25.5.
LPP = base64.b64encode(bytes.fromhex("03670110056700FF")).decode()
UP: dict[str, Any] = {
    "deduplicationId": "3ac7e3c4-4401-4b8d-9386-a5c902f9202d",
    "time": "2022-07-18T09:34:15.775023242+00:00",
    "deviceInfo": DEVICE_INFO, "devAddr": "00189440", "dr": 1, "fCnt": 10, "fPort": 1,
    "data": LPP,
    "rxInfo": [
        {"gatewayId": "0016c001f153a14c", "uplinkId": 4217106255, "rssi": -36, "snr": 10.5},
        {"gatewayId": "0016c001f153a14d", "uplinkId": 1, "rssi": -90, "snr": 2.0},
    ],
}
RECEIVED = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
TOPIC = f"application/{APP}/device/{DEV}/event/"


def run(event_type: str, body: dict[str, Any] | bytes) -> list[Any]:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    return translate(TOPIC + event_type, payload, RECEIVED)


def system(record: Output) -> dict[str, Any]:
    assert isinstance(record, OutRecord) and record.topic == "system"
    return registry().decode(record.value, "SystemEvent").record


def reading_of(output: Output) -> Telemetry:
    """A reading for telemetry.raw, as its batch record carries it."""
    assert isinstance(output, ReadingRow)
    return decode_batch(encode_rows([output])).telemetry(0)


def test_uplink_with_lpp_data_becomes_a_reading() -> None:
    (raw,) = run("up", UP)
    reading = reading_of(raw)
    assert reading.to_json() == {
        "device_id": DEV, "protocol": "lorawan", "ts": "2022-07-18T09:34:15.775023Z",
        "received_at": "2024-05-01T12:00:00.000000Z",
        "message_id": "3ac7e3c4-4401-4b8d-9386-a5c902f9202d", "application_id": APP,
        "metrics": {"temperature_3": 27.2, "temperature_5": 25.5}, "status": None,
        "metadata": {"signal_strength": -36.0, "snr": 10.5, "gateway_id": "0016c001f153a14c",
                     "extra": {"f_cnt": "10", "f_port": "1", "dev_addr": "00189440",
                               "device_name": "Test device"}},
    }


def test_uplink_decoded_by_chirpstack_uses_object_and_dead_letters_text_leaves() -> None:
    event = {**copy.deepcopy(UP), "object": {"temperatureSensor": {"3": 27.2}, "valve": True,
                                             "firmware": "1.2.0"}}
    event.pop("deduplicationId")
    raw, dlq = run("up", event)
    reading = reading_of(raw)
    assert dict(reading.metrics) == {"temperatureSensor_3": 27.2, "valve": 1.0}
    assert reading.message_id == f"{DEV}-10"  # no deduplicationId: devEUI + fCnt
    assert (dlq.topic, dlq.key, dlq.reject_code) == ("telemetry.dlq", DEV, "rejected_fields")
    letter = DeadLetter.decode(dlq.value)
    assert letter.reason == "dropped 1 field from reading: object.firmware (string '1.2.0' is not a number)"
    assert (letter.stage, letter.source_topic) == ("connector.lorawan", f"mqtt:{TOPIC}up")


def test_uplink_without_any_reading_goes_to_the_dlq_whole() -> None:
    event = copy.deepcopy(UP)
    event.pop("data")
    (dlq,) = run("up", event)
    assert dlq.reject_code == "no_valid_metric"
    assert "neither object nor Cayenne LPP data" in DeadLetter.decode(dlq.value).reason


@pytest.mark.parametrize(("payload", "code", "reason"), [
    (b'{"deviceInfo": ', "undecodable", "ChirpStack event: payload is not JSON"),
    (json.dumps({**UP, "data": "qg=="}).encode(), "undecodable", "not Cayenne LPP"),
    (json.dumps({**UP, "deviceInfo": {"devEui": "xyz"}}).encode(), "undecodable", "devEui"),
])
def test_malformed_uplinks_go_to_the_dlq_with_their_bytes(payload: bytes, code: str,
                                                          reason: str) -> None:
    (dlq,) = run("up", payload)
    letter = DeadLetter.decode(dlq.value)
    assert (dlq.topic, dlq.reject_code, letter.payload, letter.device_id) == (
        "telemetry.dlq", code, payload, DEV)
    assert reason in letter.reason


def test_status_event_is_a_system_event_and_a_battery_reading() -> None:
    event = {"deduplicationId": "5b8c", "time": "2022-07-18T09:40:00+00:00",
             "deviceInfo": DEVICE_INFO, "margin": 7, "batteryLevel": 87.5}
    sys_record, raw = run("status", event)
    assert sys_record.key == DEV
    assert system(sys_record)["kind"] == "status"
    assert system(sys_record)["message"] == "ChirpStack status event: batteryLevel=87.5, margin=7"
    assert system(sys_record)["attributes"]["application_id"] == APP
    reading = reading_of(raw)
    assert (reading.message_id, dict(reading.metrics), reading.metadata.battery_level) == (
        "5b8c-status", {"margin": 7.0}, 87.5)
    assert reading.ts == datetime(2022, 7, 18, 9, 40, tzinfo=UTC)


def test_status_without_battery_is_only_a_system_event() -> None:
    event = {"deviceInfo": DEVICE_INFO, "margin": 7, "externalPowerSource": True}
    (record,) = run("status", event)
    assert system(record)["kind"] == "status"


@pytest.mark.parametrize(("event_type", "fields", "message"), [
    ("join", {"devAddr": "00189440"}, "ChirpStack join event: devAddr=00189440"),
    ("ack", {"queueItemId": "q-1", "acknowledged": True, "fCntDown": 3},
     "ChirpStack ack event: acknowledged=true, queueItemId=q-1, fCntDown=3"),
    ("txack", {"downlinkId": 1, "queueItemId": "q-1", "fCntDown": 3, "gatewayId": "gw"},
     "ChirpStack txack event: queueItemId=q-1, fCntDown=3, gatewayId=gw"),
    ("log", {"level": "ERROR", "code": "UPLINK_CODEC", "description": "bad"},
     "ChirpStack log event: level=ERROR, code=UPLINK_CODEC, description=bad"),
    ("location", {"location": {"latitude": 52.1, "longitude": 4.3, "source": "GEO_RESOLVER_TDOA"}},
     "ChirpStack location event: location.latitude=52.1, location.longitude=4.3,"
     " location.source=GEO_RESOLVER_TDOA"),
])
def test_other_events_go_to_the_system_topic(event_type: str, fields: dict[str, Any],
                                             message: str) -> None:
    (record,) = run(event_type, {"time": "2022-07-18T09:40:00Z", "deviceInfo": DEVICE_INFO,
                                 **fields})
    event = system(record)
    assert (event["kind"], event["source"], event["device_id"], event["message"]) == (
        event_type, "connector.lorawan", DEV, message)


def test_unhandled_event_type_and_foreign_topic_are_dead_letters() -> None:
    (record,) = run("integration", {"deviceInfo": DEVICE_INFO})
    assert record.reject_code == "unsupported_event"
    (record,) = translate("devices/x/telemetry", b"{}", RECEIVED)
    assert (record.topic, record.key, record.reject_code) == ("telemetry.dlq", None, "invalid_payload")


class FakePublisher:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, int]] = []

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> str:
        self.published.append((topic, payload, qos))
        return "info"


def test_downlink_is_published_in_chirpstack_v4_format() -> None:
    client = FakePublisher()
    assert send_downlink(cast(paho.Client, client), application_id=APP, dev_eui="0101010101010AbC",
                         data=b"\x01\x02", f_port=10, id="f3c6ab21-2c9c-4f3e-a3f6-0f0c5e6c1a11") == "info"
    (topic, payload, qos), = client.published
    assert topic == f"application/{APP}/device/0101010101010abc/command/down"
    assert qos == 1
    assert json.loads(payload) == {"devEui": "0101010101010abc", "confirmed": True, "fPort": 10,
                                   "data": "AQI=", "id": "f3c6ab21-2c9c-4f3e-a3f6-0f0c5e6c1a11"}


@pytest.mark.parametrize(("app", "dev_eui"), [("a/b", DEV), ("+", DEV), (APP, "0101"), ("", DEV)])
def test_downlink_topic_refuses_what_cannot_be_a_topic(app: str, dev_eui: str) -> None:
    with pytest.raises(ValueError):
        downlink_topic(app, dev_eui)


def test_connector_acks_a_chirpstack_event_only_after_kafka_took_every_record() -> None:
    kafka, mqtt = FakeKafka(), FakeMqtt()
    producer = RecordProducer(bootstrap_servers="127.0.0.1:1", connector="lorawan",
                              poll_interval_s=0.01, batch_linger_ms=0, raw_partitions=6,
                              client=cast(Producer, kafka)).start()
    connector = MqttConnector(producer=producer, client_id="unit", protocol="lorawan",
                              subscription=SUBSCRIPTION, translator=translate,
                              client=cast(paho.Client, mqtt))
    connector.start()
    try:
        connect(mqtt)
        assert mqtt.subscriptions == [(SUBSCRIPTION, 1)]
        status = {"deviceInfo": DEVICE_INFO, "margin": 3, "batteryLevel": 50}
        mqtt.on_message(mqtt, None, message(21, json.dumps(status).encode(), TOPIC + "status"))
        (sys_index,) = [i for i in on_topic(kafka, "system")
                        if registry().decode(kafka.records[i].value).record["kind"] == "status"]
        (raw_index,) = on_topic(kafka, "telemetry.raw")
        assert [r.metrics for r in raw_readings(kafka)] == [{"margin": 3.0}]
        kafka.deliver(raw_index)
        assert mqtt.acks == []
        kafka.deliver(sys_index)
        assert mqtt.acks == [(21, 1)]
    finally:
        connector.stop(timeout=0)
