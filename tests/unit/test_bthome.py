"""BTHome v2 with published vectors: service data in, the complete reading out.

Sources: bthome.io (the format page's example and object-table examples, the
encryption page's worked example) and the reference parser's tests,
Bluetooth-Devices/bthome-ble tests/test_parser_v2.py (service data as given
there, after the 0xFCD2 UUID).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.codecs import Decoded, DecodeError, decode_bthome

KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")  # bthome.io and bthome-ble's example key
MAC = bytes.fromhex("5448E68F80A5")  # 54:48:E6:8F:80:A5, the encrypted examples' device
PLAIN = {"bthome_version": 2.0, "encrypted": 0.0, "trigger_based": 0.0}


def reading(metrics: dict[str, float], **metadata: Any) -> Decoded:
    return Decoded(metrics, {**PLAIN, **metadata})


def encrypted(metrics: dict[str, float], counter: int, **metadata: Any) -> Decoded:
    return Decoded(metrics, {**PLAIN, "encrypted": 1.0, "mac": "54:48:E6:8F:80:A5",
                             "encryption_counter": float(counter), **metadata})


# bthome-ble tests/test_parser_v2.py, unencrypted
PARSER_VECTORS = [
    ("test_bthome_temperature_humidity", "4002ca0903bf13",
     reading({"temperature": 25.06, "humidity": 50.55})),
    ("test_bthome_packet_id_temperature_humidity_battery", "400009015d025d0903b718",
     reading({"battery": 93.0, "temperature": 23.97, "humidity": 63.27}, packet_id=9.0)),
    ("test_bthome_pressure", "4004138a01", reading({"pressure": 1008.83})),
    ("test_bthome_illuminance", "4005138a14", reading({"illuminance": 13460.67})),
    ("test_bthome_mass_kilograms", "40065e1f", reading({"mass_kg": 80.3})),
    ("test_bthome_mass_pounds", "40073e1d", reading({"mass_lb": 74.86})),
    ("test_bthome_dew_point", "4008ca06", reading({"dewpoint": 17.38})),
    ("test_bthome_count", "400960", reading({"count": 96.0})),
    ("test_bthome_energy", "400a138a14", reading({"energy": 1346.067})),
    ("test_bthome_power", "400b021b00", reading({"power": 69.14})),
    ("test_bthome_voltage", "400c020c", reading({"voltage": 3.074})),
    ("test_bthome_binary_sensor", "400f01", reading({"generic_boolean": 1.0})),
    ("test_bthome_binary_sensor_power", "401001", reading({"power_on": 1.0})),
    ("test_bthome_binary_sensor_opening", "401100", reading({"opening": 0.0})),
    ("test_bthome_binary_sensor_window", "402d01", reading({"window": 1.0})),
    ("test_bthome_pm", "400d120c0e021c", reading({"pm2_5": 3090.0, "pm10": 7170.0})),
    ("test_bthome_co2", "4012e204", reading({"co2": 1250.0})),
    ("test_bthome_voc", "40133301", reading({"tvoc": 307.0})),
    ("test_bthome_moisture", "4014020c", reading({"moisture": 30.74})),
    ("test_bthome_event_button_long_press", "403a04",
     reading({"button": 4.0}, button="long_press")),
    ("test_bthome_event_triple_button_device", "403a003a013a03",
     reading({"button_1": 0.0, "button_2": 1.0, "button_3": 3.0},
             button_2="press", button_3="triple_press")),
    ("test_bthome_event_button_hold_press", "403a80",
     reading({"button": 128.0}, button="hold_press")),
    ("test_bthome_event_dimmer_rotate_left_3_steps", "403c0103",
     reading({"dimmer": -3.0}, dimmer="rotate_left")),
    ("test_bthome_rotation", "403f020c", reading({"rotation": 307.4})),
    ("test_bthome_double_temperature", "4002ca0902cf09",
     reading({"temperature_1": 25.06, "temperature_2": 25.11})),
    ("test_bthome_with_mac", "42b2188d38c1a404138a01",
     reading({"pressure": 1008.83}, mac="A4:C1:38:8D:18:B2")),
    ("test_sleepy_device", "4404138a01", reading({"pressure": 1008.83}, trigger_based=1.0)),
    ("test_shelly_blu_ht_display_zb", "40002e01641e012e34451601",
     reading({"battery": 100.0, "light": 1.0, "humidity": 52.0, "temperature": 27.8},
             packet_id=46.0)),
]

# bthome.io, the object tables: each Example column after a 0x40 device-information byte
TABLE_VECTORS = [
    ("acceleration", "518756", {"acceleration": 22.151}),
    ("battery", "0161", {"battery": 97.0}),
    ("co2", "12E204", {"co2": 1250.0}),
    ("conductivity", "56E803", {"conductivity": 1000.0}),
    ("count uint8", "0960", {"count": 96.0}),
    ("count uint16", "3D0960", {"count": 24585.0}),
    ("count uint32", "3E2A2C0960", {"count": 1611213866.0}),
    ("count sint8", "59EA", {"count": -22.0}),
    ("count sint16", "5AEAEA", {"count": -5398.0}),
    ("count sint32", "5BEA0234EA", {"count": -365690134.0}),
    ("current uint16", "434E34", {"current": 13.39}),
    ("current sint16", "5D02EA", {"current": -5.63}),
    ("dewpoint", "08CA06", {"dewpoint": 17.38}),
    ("distance (mm)", "400C00", {"distance_mm": 12.0}),
    ("distance (m)", "414E00", {"distance_m": 7.8}),
    ("duration", "424E3400", {"duration": 13.39}),
    ("energy uint32", "4d12138a14", {"energy": 344593.17}),
    ("energy uint24", "0A138A14", {"energy": 1346.067}),
    ("gas uint24", "4B138A14", {"gas": 1346.067}),
    ("gas uint32", "4C41018A01", {"gas": 25821.505}),
    ("gyroscope", "528756", {"gyroscope": 22.151}),
    ("humidity uint16", "03BF13", {"humidity": 50.55}),
    ("humidity uint8", "2E23", {"humidity": 35.0}),
    ("illuminance", "05138A14", {"illuminance": 13460.67}),
    ("mass (kg)", "065E1F", {"mass_kg": 80.3}),
    ("mass (lb)", "073E1D", {"mass_lb": 74.86}),
    ("moisture uint16", "14020C", {"moisture": 30.74}),
    ("moisture uint8", "2F23", {"moisture": 35.0}),
    ("pm2.5", "0D120C", {"pm2_5": 3090.0}),
    ("pm10", "0E021C", {"pm10": 7170.0}),
    ("power uint24", "0B021B00", {"power": 69.14}),
    ("power sint32", "5C02FBFFFF", {"power": -12.78}),
    ("pressure", "04138A01", {"pressure": 1008.83}),
    ("rotation", "3F020C", {"rotation": 307.4}),
    ("speed", "444E34", {"speed": 133.9}),
    ("temperature sint8", "57EA", {"temperature": -22.0}),
    ("temperature sint8 0.35", "58EA", {"temperature": -7.7}),
    ("temperature sint16 0.1", "451101", {"temperature": 27.3}),
    ("temperature sint16 0.01", "02CA09", {"temperature": 25.06}),
    ("tvoc", "133301", {"tvoc": 307.0}),
    ("voltage 0.001", "0C020C", {"voltage": 3.074}),
    ("voltage 0.1", "4A020C", {"voltage": 307.4}),
    ("volume uint32", "4E87562A01", {"volume": 19551.879}),
    ("volume 0.1", "478756", {"volume": 2215.1}),
    ("volume mL", "48DC87", {"volume_ml": 34780.0}),
    ("volume storage", "5587562A01", {"volume_storage": 19551.879}),
    ("volume flow rate", "49DC87", {"volume_flow_rate": 34.78}),
    ("UV index", "4632", {"uv_index": 5.0}),
    ("water", "4F87562A01", {"water": 19551.879}),
    ("direction", "5E9F8C", {"direction": 359.99}),
    ("precipitation", "5FA00F", {"precipitation": 400.0}),
    ("channel", "6001", {"channel": 1.0}),
    ("rotational speed", "61AC0D", {"rotational_speed": 3500.0}),
    ("speed sint32", "624099DFFF", {"speed": -2.123456}),
    ("acceleration sint32", "630057D0FF", {"acceleration": -3.123456}),
    ("light level", "6402", {"light_level": 2.0}),
    ("binary battery", "1501", {"battery_low": 1.0}),
    ("binary battery charging", "1601", {"battery_charging": 1.0}),
    ("binary carbon monoxide", "1700", {"carbon_monoxide": 0.0}),
    ("binary gas", "1C01", {"gas_detected": 1.0}),
    ("binary moisture", "2001", {"moisture_wet": 1.0}),
    ("binary motion", "2100", {"motion": 0.0}),
    ("binary smoke", "2901", {"smoke": 1.0}),
    ("dimmer rotate right 10 steps", "3C020A", {"dimmer": 10.0}),
]

TABLE_METADATA_VECTORS = [
    ("text", "530C48656C6C6F20576F726C6421", {"text": "Hello World!"}),
    ("raw", "540C48656C6C6F20576F726C6421", {"raw": "48656c6c6f20576f726c6421"}),
    ("timestamp", "505d396164", {"timestamp": "2023-05-14T19:41:17Z"}),
    ("packet id", "0009", {"packet_id": 9.0}),
    ("device type id", "F00100", {"device_type_id": 1.0}),
    ("firmware version uint32", "F100010204", {"firmware_version": "4.2.1.0"}),
    ("firmware version uint24", "F2000106", {"firmware_version": "6.1.0"}),
    ("settings revision", "6503", {"settings_revision": 3.0}),
]

# bthome.io, the events table: command (0x3B) examples
COMMAND_VECTORS = [
    ("off", "3B0000", 0.0, {"command": "off", "command_args": ""}),
    ("on", "3B0001", 1.0, {"command": "on", "command_args": ""}),
    ("toggle", "3B0002", 2.0, {"command": "toggle", "command_args": ""}),
    ("step up 5 steps", "3B010305", 3.0, {"command": "step_up", "command_args": "05"}),
    ("step down 5 steps", "3B010405", 4.0, {"command": "step_down", "command_args": "05"}),
    ("an opcode bthome.io does not name", "3B02F0AABB", 240.0, {"command_args": "aabb"}),
]


def test_bthome_io_format_page_example() -> None:
    """bthome.io, "BTHome Data format": D2FC 40 02C409 03BF13 (UUID left out)."""
    assert decode_bthome(bytes.fromhex("4002C40903BF13")) == reading(
        {"temperature": 25.0, "humidity": 50.55}
    )


@pytest.mark.parametrize(("hex_data", "expected"), [pytest.param(h, e, id=n) for n, h, e in PARSER_VECTORS])
def test_reference_parser_vectors(hex_data: str, expected: Decoded) -> None:
    assert decode_bthome(bytes.fromhex(hex_data)) == expected


@pytest.mark.parametrize(("hex_object", "metrics"), [pytest.param(h, m, id=n) for n, h, m in TABLE_VECTORS])
def test_object_table_examples(hex_object: str, metrics: dict[str, float]) -> None:
    extra = {"dimmer": "rotate_right"} if "dimmer" in metrics else {}
    assert decode_bthome(bytes.fromhex("40" + hex_object)) == reading(metrics, **extra)


@pytest.mark.parametrize(("hex_object", "metadata"),
                         [pytest.param(h, m, id=n) for n, h, m in TABLE_METADATA_VECTORS])
def test_object_table_examples_that_are_metadata(hex_object: str, metadata: dict[str, Any]) -> None:
    """Alone they carry no measurement; behind a battery reading they are its metadata."""
    assert decode_bthome(bytes.fromhex("400161" + hex_object)) == reading({"battery": 97.0}, **metadata)


@pytest.mark.parametrize(("hex_object", "opcode", "metadata"),
                         [pytest.param(h, o, m, id=n) for n, h, o, m in COMMAND_VECTORS])
def test_command_examples(hex_object: str, opcode: float, metadata: dict[str, Any]) -> None:
    assert decode_bthome(bytes.fromhex("40" + hex_object)) == reading({"command": opcode}, **metadata)


def test_two_commands_are_numbered_with_their_arguments() -> None:
    assert decode_bthome(bytes.fromhex("403b00013b010305")) == reading(
        {"command_1": 1.0, "command_2": 3.0},
        command_1="on", command_args_1="", command_2="step_up", command_args_2="05")


def test_encryption_page_worked_example() -> None:
    """bthome.io/encryption: service data d2fc41e445f3c9962b332211006c7c4519, counter 1122867."""
    assert decode_bthome(bytes.fromhex("41e445f3c9962b332211006c7c4519"), bind_key=KEY, mac=MAC) == (
        encrypted({"temperature": 25.06, "humidity": 50.55}, 1122867)
    )


def test_reference_bindkey_correct() -> None:
    """bthome-ble test_bindkey_correct (Shelly BLU H&T)."""
    assert decode_bthome(bytes.fromhex("41a47266c95f730011223378237214"), bind_key=KEY, mac=MAC) == (
        encrypted({"temperature": 25.06, "humidity": 50.55}, 0x33221100)
    )


def test_reference_encrypted_motion() -> None:
    """bthome-ble test_bthome_motion (Shelly BLU Motion)."""
    assert decode_bthome(bytes.fromhex("4187b90011223372b0231f"), bind_key=KEY, mac=MAC) == (
        encrypted({"motion": 1.0}, 0x33221100)
    )


def test_reference_encrypted_with_mac_in_payload() -> None:
    """bthome-ble test_bthome_with_mac_encrypted: the MAC comes from the data itself."""
    data = bytes.fromhex("43a5808fe64854f196c06ffb4900112233f08ecbde")
    assert decode_bthome(data, bind_key=KEY) == encrypted(
        {"temperature": 25.06, "humidity": 50.55}, 0x33221100
    )


@pytest.mark.parametrize(("hex_data", "options", "message", "offset"), [
    pytest.param("41d2fcefe52eb212d600112233bc38c966", {},
                 "BTHome advertisement is encrypted (device information 0x41 at byte 0)"
                 " and no bind key is configured", 0, id="test_encryption_key_needed"),
    pytest.param("41d2fcefe52eb212d600112233bc38c966",
                 {"bind_key": bytes.fromhex("814aac74c4f17b6c1581e1ab87816b99"),
                  "mac": bytes.fromhex("A4C1388D18B2")},
                 "BTHome decryption failed at byte 1: wrong bind key, wrong MAC or corrupted"
                 " data (MIC does not match)", 1, id="test_bindkey_wrong"),
    pytest.param("41ba0db07aeef600", {"bind_key": KEY, "mac": MAC},
                 "BTHome encrypted data is 8 bytes, too short for the 4-byte counter and 4-byte"
                 " MIC after byte 0", 1, id="test_too_short_encryption_advertisement"),
    pytest.param("4004138a01", {"bind_key": bytes.fromhex("814aac74c4f17b6c1581e1ab87816b99")},
                 "BTHome advertisement is not encrypted (device information 0x40 at byte 0) but"
                 " the device has a bind key", 0, id="test_encryption_downgrade_fails"),
    pytest.param("e102000c0404138a01", {},
                 "BTHome version 7 in device information 0xe1 at byte 0 is not supported"
                 " (only version 2)", 0, id="test_has_incorrect_version"),
    pytest.param("40feca09", {}, "BTHome object id 0xfe unknown at byte 1", 1,
                 id="test_bthome_wrong_object_id"),
    pytest.param("4002ca", {},
                 "BTHome temperature (object id 0x02) needs 2 bytes at byte 2, only 1 left", 2,
                 id="truncated-temperature"),
    pytest.param("403a07", {}, "BTHome button (object id 0x3a) event 0x07 unknown at byte 2", 2,
                 id="unknown-button-event"),
    pytest.param("403b0107", {}, "BTHome command (object id 0x3b) needs 2 bytes at byte 3, only 1 left",
                 3, id="truncated-command"),
    pytest.param("", {}, "BTHome service data is empty", 0, id="empty"),
])
def test_invalid_service_data(hex_data: str, options: dict[str, Any], message: str,
                              offset: int) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_bthome(bytes.fromhex(hex_data), **options)
    assert str(caught.value) == message
    assert caught.value.offset == offset


def test_reference_battery_then_wrong_object_id_keeps_the_battery() -> None:
    """bthome-ble test_bthome_battery_wrong_object_id_humidity: parsing stops at 0xfe."""
    assert decode_bthome(bytes.fromhex("40015dfe5d0903b718")) == reading(
        {"battery": 93.0}, unparsed="object id 0xfe unknown at byte 3"
    )


@given(st.binary(max_size=48))
def test_random_bytes_raise_nothing_but_decode_error(data: bytes) -> None:
    try:
        decode_bthome(data)
    except DecodeError:
        pass


@given(st.binary(max_size=48).map(lambda b: b"\x41" + b))
def test_random_encrypted_bytes_raise_nothing_but_decode_error(data: bytes) -> None:
    try:
        decode_bthome(data, bind_key=KEY, mac=MAC)
    except DecodeError:
        pass
