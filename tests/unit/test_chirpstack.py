"""ChirpStack v4 MQTT-integration JSON, from the examples ChirpStack documents
(chirpstack-docs, integrations/events.md and integrations/mqtt.md)."""

from __future__ import annotations

import base64
import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.codecs import (
    ChirpstackEvent,
    DecodeError,
    Uplink,
    downlink_payload,
    parse_event,
    parse_uplink,
)
from schemas.records import Location, TelemetryMetadata

DEVICE_INFO = {
    "tenantId": "52f14cd4-c6f1-4fbd-8f87-4025e1d49242",
    "tenantName": "ChirpStack",
    "applicationId": "17c82e96-be03-4f38-aef3-f83d48582d97",
    "applicationName": "Test application",
    "deviceProfileId": "14855bf7-d10d-4aee-b618-ebfcb64dc7ad",
    "deviceProfileName": "Test device-profile",
    "deviceName": "Test device",
    "devEui": "0101010101010101",
    "tags": {"key": "value"},
}
APP = "17c82e96-be03-4f38-aef3-f83d48582d97"

UP = {
    "deduplicationId": "3ac7e3c4-4401-4b8d-9386-a5c902f9202d",
    "time": "2022-07-18T09:34:15.775023242+00:00",
    "deviceInfo": DEVICE_INFO,
    "devAddr": "00189440",
    "dr": 1,
    "fPort": 1,
    "data": "qg==",
    "rxInfo": [{
        "gatewayId": "0016c001f153a14c", "uplinkId": 4217106255, "rssi": -36, "snr": 10.5,
        "context": "E3OWOQ==", "metadata": {"region_name": "eu868", "region_common_name": "EU868"},
    }],
    "txInfo": {"frequency": 867100000,
               "modulation": {"lora": {"bandwidth": 125000, "spreadingFactor": 11,
                                       "codeRate": "CR_4_5"}}},
}
UP_TIME = datetime(2022, 7, 18, 9, 34, 15, 775023, tzinfo=UTC)
UP_METADATA = TelemetryMetadata(
    signal_strength=-36.0, snr=10.5, gateway_id="0016c001f153a14c",
    extra={"f_cnt": "0", "f_port": "1", "dev_addr": "00189440", "device_name": "Test device"},
)


def up(**changes: Any) -> bytes:
    event = copy.deepcopy(UP)
    for key, value in changes.items():
        if value is None:
            event.pop(key, None)
        else:
            event[key] = value
    return json.dumps(event).encode()


def event_with(**fields: Any) -> bytes:
    return json.dumps({"deviceInfo": DEVICE_INFO, **fields}).encode()


def test_documented_uplink_whose_data_is_not_cayenne_lpp() -> None:
    """The documented up event carries data "qg==" (0xAA): not a Cayenne LPP payload."""
    with pytest.raises(DecodeError) as caught:
        parse_uplink(json.dumps(UP).encode())
    assert str(caught.value) == (
        "ChirpStack uplink data is not Cayenne LPP: Cayenne LPP channel 170 at byte 0 has no type byte"
    )


def test_documented_uplink_with_cayenne_lpp_data() -> None:
    """The documented event, data replaced by The Things Stack's Cayenne example (A2cBEAVnAP8=)."""
    assert parse_uplink(up(data="A2cBEAVnAP8=")) == Uplink(
        device_id="0101010101010101", application_id=APP,
        message_id="3ac7e3c4-4401-4b8d-9386-a5c902f9202d", ts=UP_TIME, f_cnt=0, f_port=1,
        metrics={"temperature_3": 27.2, "temperature_5": 25.5}, metadata=UP_METADATA,
    )


def test_documented_uplink_with_the_documented_object() -> None:
    """mqtt.md's object, as ChirpStack's Cayenne codec names it: readings win over data."""
    payload = up(object={"temperatureSensor": {"1": 25}, "humiditySensor": {"1": 32}})
    assert parse_uplink(payload) == Uplink(
        device_id="0101010101010101", application_id=APP,
        message_id="3ac7e3c4-4401-4b8d-9386-a5c902f9202d", ts=UP_TIME, f_cnt=0, f_port=1,
        metrics={"temperatureSensor_1": 25.0, "humiditySensor_1": 32.0}, metadata=UP_METADATA,
    )


def test_object_leaves_booleans_count_and_other_leaves_are_ignored() -> None:
    payload = up(object={"valve": {"open": True}, "label": "north", "nothing": None,
                         "list": [1, 2], "snr": 3, "deep": {"a": {"b": 1.5}}})
    uplink = parse_uplink(payload)
    assert dict(uplink.metrics) == {"valve_open": 1.0, "deep_a_b": 1.5}
    assert dict(uplink.ignored) == {
        "label": "string 'north' is not a number",
        "nothing": "null is not a number",
        "list": "array is not a number",
        "snr": "'snr' is not an allowed metric name",
    }


def test_best_gateway_is_the_strongest_rssi() -> None:
    rx = [{"gatewayId": "aa00000000000001", "rssi": -100, "snr": 9.0},
          {"gatewayId": "aa00000000000002", "rssi": -60, "snr": -2.0},
          {"gatewayId": "aa00000000000003", "rssi": -60, "snr": 1.5},
          {"gatewayId": "aa00000000000004"}]
    meta = parse_uplink(up(data="A2cBEAVnAP8=", rxInfo=rx)).metadata
    assert (meta.signal_strength, meta.snr, meta.gateway_id) == (-60.0, 1.5, "aa00000000000003")


def test_message_id_falls_back_to_dev_eui_and_frame_counter() -> None:
    uplink = parse_uplink(up(data="A2cBEAVnAP8=", deduplicationId=None, fCnt=42))
    assert (uplink.message_id, uplink.f_cnt) == ("0101010101010101-42", 42)


def test_without_dedup_id_or_frame_counter_the_message_id_is_stable_per_payload() -> None:
    payload = up(data="A2cBEAVnAP8=", deduplicationId=None)
    assert parse_uplink(payload).message_id == parse_uplink(payload).message_id
    assert parse_uplink(payload).message_id != parse_uplink(up(data="AHMnvwBnAN4=",
                                                                deduplicationId=None)).message_id


def test_dev_eui_is_lower_cased() -> None:
    info = {**DEVICE_INFO, "devEui": "0016C001F000175A"}
    assert parse_uplink(up(data="A2cBEAVnAP8=", deviceInfo=info)).device_id == "0016c001f000175a"


def test_documented_status_event() -> None:
    payload = json.dumps({
        "deduplicationId": "bf2a9746-1c8b-49be-a92e-f0b89c8534e4",
        "time": "2022-07-18T09:35:06.927172638+00:00",
        "deviceInfo": {k: v for k, v in DEVICE_INFO.items() if k != "tags"},
        "margin": 10, "batteryLevel": 88.3,
    }).encode()
    assert parse_event("status", payload) == ChirpstackEvent(
        device_id="0101010101010101", application_id=APP, kind="status",
        ts=datetime(2022, 7, 18, 9, 35, 6, 927172, tzinfo=UTC),
        attributes={"batteryLevel": "88.3", "deduplicationId": "bf2a9746-1c8b-49be-a92e-f0b89c8534e4",
                    "deviceName": "Test device", "margin": "10",
                    "time": "2022-07-18T09:35:06.927172638+00:00"},
        battery_level=88.3,
    )


def test_status_without_a_battery_level() -> None:
    payload = event_with(margin=7, batteryLevelUnavailable=True)
    assert parse_event("status", payload).battery_level is None


def test_documented_join_event() -> None:
    payload = event_with(deduplicationId="c9dbe358-2578-4fb7-b295-66b44edc45a6",
                         time="2022-07-18T09:33:28.823500726+00:00", devAddr="00189440")
    assert parse_event("join", payload) == ChirpstackEvent(
        device_id="0101010101010101", application_id=APP, kind="join",
        ts=datetime(2022, 7, 18, 9, 33, 28, 823500, tzinfo=UTC),
        attributes={"deduplicationId": "c9dbe358-2578-4fb7-b295-66b44edc45a6",
                    "devAddr": "00189440", "deviceName": "Test device",
                    "time": "2022-07-18T09:33:28.823500726+00:00"},
    )


def test_documented_ack_event() -> None:
    payload = event_with(deduplicationId="856a03e7-80f6-4c26-b971-9dcb34a59c2e",
                         time="2022-07-18T09:38:49.235700766+00:00",
                         queueItemId="1bbcab1d-6ec6-4136-b3f5-d63be1dc08de",
                         acknowledged=True, fCntDown=3)
    event = parse_event("ack", payload)
    assert (event.kind, dict(event.attributes)) == ("ack", {
        "acknowledged": "true", "deduplicationId": "856a03e7-80f6-4c26-b971-9dcb34a59c2e",
        "deviceName": "Test device", "fCntDown": "3",
        "queueItemId": "1bbcab1d-6ec6-4136-b3f5-d63be1dc08de",
        "time": "2022-07-18T09:38:49.235700766+00:00",
    })


def test_documented_txack_event() -> None:
    payload = event_with(
        downlinkId=3461958127, time="2022-07-18T09:37:48.929184085+00:00",
        queueItemId="42cb6459-a640-46ec-9623-bdff39dc4736", fCntDown=2,
        gatewayId="0016c001f153a14c",
        txInfo={"frequency": 867900000, "power": 14,
                "modulation": {"lora": {"bandwidth": 125000, "spreadingFactor": 7,
                                        "codeRate": "CR_4_5", "polarizationInversion": True}},
                "timing": {"delay": {"delay": "1s"}}, "context": "ICYVGw=="},
    )
    event = parse_event("txack", payload)
    assert dict(event.attributes) == {
        "deviceName": "Test device", "downlinkId": "3461958127", "fCntDown": "2",
        "gatewayId": "0016c001f153a14c", "queueItemId": "42cb6459-a640-46ec-9623-bdff39dc4736",
        "time": "2022-07-18T09:37:48.929184085+00:00",
        "txInfo.context": "ICYVGw==", "txInfo.frequency": "867900000",
        "txInfo.modulation.lora.bandwidth": "125000", "txInfo.modulation.lora.codeRate": "CR_4_5",
        "txInfo.modulation.lora.polarizationInversion": "true",
        "txInfo.modulation.lora.spreadingFactor": "7", "txInfo.power": "14",
        "txInfo.timing.delay.delay": "1s",
    }


def test_documented_log_event() -> None:
    payload = event_with(time="2022-07-18T09:39:57.311414029+00:00", level="ERROR",
                         code="UPLINK_MIC",
                         description="MIC of join-request is invalid, make sure keys are correct",
                         context={"deduplication_id": "4e91db13-5ce3-4c8c-ab0f-dfc626cf0771"})
    event = parse_event("log", payload)
    assert dict(event.attributes) == {
        "code": "UPLINK_MIC", "context.deduplication_id": "4e91db13-5ce3-4c8c-ab0f-dfc626cf0771",
        "description": "MIC of join-request is invalid, make sure keys are correct",
        "deviceName": "Test device", "level": "ERROR",
        "time": "2022-07-18T09:39:57.311414029+00:00",
    }
    assert (event.battery_level, event.location) == (None, None)


def test_documented_location_event() -> None:
    payload = event_with(deduplicationId="63d870b9-b769-4d88-8b33-8e43f58851a7",
                         time="2022-07-18T09:55:11.059481003+00:00",
                         location={"latitude": 37.344214, "longitude": -8.839375, "altitude": 2})
    event = parse_event("location", payload)
    assert event.location == Location(37.344214, -8.839375)
    assert event.attributes["location.altitude"] == "2"


def test_documented_downlink_command() -> None:
    """mqtt.md "Scheduling a downlink": devEui, confirmed, fPort, base64 data."""
    body = json.loads(downlink_payload(dev_eui="0102030405060708", data=b"\x01\x02", f_port=10))
    assert body == {"devEui": "0102030405060708", "confirmed": True, "fPort": 10,
                    "data": base64.b64encode(b"\x01\x02").decode()}


def test_downlink_with_id_unconfirmed() -> None:
    body = json.loads(downlink_payload(dev_eui="0102030405060708", data=b"", f_port=2,
                                       confirmed=False, id="cmd-1"))
    assert body == {"devEui": "0102030405060708", "confirmed": False, "fPort": 2, "data": "",
                    "id": "cmd-1"}


@pytest.mark.parametrize(("dev_eui", "f_port"), [("01020304", 10), ("0102030405060708", 0),
                                                 ("0102030405060708", 224)])
def test_downlink_rejects_bad_arguments(dev_eui: str, f_port: int) -> None:
    with pytest.raises(ValueError):
        downlink_payload(dev_eui=dev_eui, data=b"\x00", f_port=f_port)


@pytest.mark.parametrize(("payload", "message"), [
    pytest.param(b'{"deviceInfo": ', "ChirpStack event: payload is not JSON: Expecting value at byte 15",
                 id="truncated-json"),
    pytest.param(b"[1]", "ChirpStack event: payload is a JSON array, not an object", id="array"),
    pytest.param(json.dumps({**UP, "deviceInfo": {**DEVICE_INFO, "devEui": "xyz"}}).encode(),
                 "ChirpStack event deviceInfo.devEui string 'xyz' is not 16 hex digits", id="bad-dev-eui"),
    pytest.param(json.dumps({k: v for k, v in UP.items() if k != "deviceInfo"}).encode(),
                 "ChirpStack event deviceInfo is null, not an object", id="no-device-info"),
    pytest.param(up(data="not base64!"),
                 "ChirpStack uplink data is not base64: Only base64 data is allowed", id="bad-base64"),
    pytest.param(up(fCnt=-1), "ChirpStack event fCnt is number -1, not a counter", id="negative-fcnt"),
    pytest.param(up(time="yesterday"),
                 "ChirpStack event time: timestamp 'yesterday' is not an ISO-8601 time:"
                 " Invalid isoformat string: 'yesterday'", id="bad-time"),
])
def test_invalid_uplinks_say_what_is_wrong(payload: bytes, message: str) -> None:
    with pytest.raises(DecodeError) as caught:
        parse_uplink(payload)
    assert str(caught.value) == message


def test_unknown_event_type() -> None:
    with pytest.raises(DecodeError, match="event type 'up' is not one of"):
        parse_event("up", event_with())


def test_location_out_of_range() -> None:
    with pytest.raises(DecodeError, match=r"location \(95.0, 1.0\) is out of range"):
        parse_event("location", event_with(location={"latitude": 95.0, "longitude": 1.0}))


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)


@given(st.binary(max_size=200))
def test_random_bytes_raise_nothing_but_decode_error(data: bytes) -> None:
    for parse in (parse_uplink, lambda b: parse_event("status", b)):
        try:
            parse(data)
        except DecodeError:
            pass


@given(_JSON, _JSON, _JSON)
def test_random_json_in_the_documented_event_raises_nothing_but_decode_error(
    obj: Any, data: Any, rx: Any
) -> None:
    event = {**UP, "object": obj, "rxInfo": rx, "fCnt": data}
    for kind in (None, "location", "status"):
        payload = json.dumps({**event, "location": obj, "batteryLevel": data}).encode()
        try:
            parse_uplink(payload) if kind is None else parse_event(kind, payload)
        except DecodeError:
            pass
