"""Cayenne LPP with published vectors: bytes in, the complete reading out.

Sources: the Cayenne LPP reference documentation's examples (myDevices,
reproduced in myDevicesIoT/CayenneLPP and the C reference library's README),
The Things Stack's Cayenne formatter page (which also fixes the metric names)
and ChirpStack v4's own codec test (chirpstack/src/codec/cayenne_lpp.rs).
"""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.codecs import Decoded, DecodeError, decode_lpp

# ChirpStack v4, chirpstack/src/codec/cayenne_lpp.rs, test_lpp: two channels of every standard type.
CHIRPSTACK_ALL_TYPES = bytes([
    3, 0, 100, 5, 0, 210,
    3, 1, 100, 5, 1, 210,
    3, 2, 0, 10, 5, 2, 3, 232,
    3, 3, 0, 10, 5, 3, 3, 232,
    3, 101, 0, 10, 5, 101, 3, 232,
    3, 102, 5, 5, 102, 3,
    3, 103, 1, 16, 5, 103, 0, 255,
    3, 104, 41, 5, 104, 150,
    3, 113, 0, 1, 0, 2, 0, 3, 5, 113, 3, 234, 7, 211, 11, 187,
    3, 115, 4, 31, 5, 115, 9, 196,
    3, 134, 0, 1, 0, 2, 0, 3, 5, 134, 3, 233, 7, 210, 11, 187,
    1, 136, 6, 118, 95, 242, 150, 10, 0, 3, 232,
])


def test_reference_two_temperature_sensors() -> None:
    """Cayenne LPP docs, "Device with 2 temperature sensors" (also The Things Stack's example)."""
    assert decode_lpp(bytes.fromhex("03670110056700FF")) == Decoded(
        {"temperature_3": 27.2, "temperature_5": 25.5}
    )


def test_reference_temperature_and_accelerometer() -> None:
    """Cayenne LPP docs, "Device with temperature and acceleration sensors", frame N."""
    assert decode_lpp(bytes.fromhex("0167FFD7067104D2FB2E0000")) == Decoded({
        "temperature_1": -4.1,
        "accelerometer_6_x": 1.234, "accelerometer_6_y": -1.234, "accelerometer_6_z": 0.0,
    })


def test_reference_accelerometer_alone() -> None:
    """Cayenne LPP docs, the same device, frame N+1."""
    assert decode_lpp(bytes.fromhex("067104D2FB2E0000")) == Decoded(
        {"accelerometer_6_x": 1.234, "accelerometer_6_y": -1.234, "accelerometer_6_z": 0.0}
    )


def test_reference_gps() -> None:
    """Cayenne LPP docs, "Device with GPS"."""
    assert decode_lpp(bytes.fromhex("018806765FF2960A0003E8")) == Decoded(
        {"gps_1_latitude": 42.3519, "gps_1_longitude": -87.9094, "gps_1_altitude": 10.0}
    )


def test_the_things_stack_pressure_and_temperature() -> None:
    """The Things Stack, Cayenne formatter page: frm_payload "AHMnvwBnAN4="."""
    assert decode_lpp(base64.b64decode("AHMnvwBnAN4=")) == Decoded(
        {"barometric_pressure_0": 1017.5, "temperature_0": 22.2}
    )


def test_chirpstack_codec_every_standard_type() -> None:
    assert decode_lpp(CHIRPSTACK_ALL_TYPES) == Decoded({
        "digital_in_3": 100.0, "digital_in_5": 210.0,
        "digital_out_3": 100.0, "digital_out_5": 210.0,
        "analog_in_3": 0.1, "analog_in_5": 10.0,
        "analog_out_3": 0.1, "analog_out_5": 10.0,
        "luminosity_3": 10.0, "luminosity_5": 1000.0,
        "presence_3": 5.0, "presence_5": 3.0,
        "temperature_3": 27.2, "temperature_5": 25.5,
        "relative_humidity_3": 20.5, "relative_humidity_5": 75.0,
        "accelerometer_3_x": 0.001, "accelerometer_3_y": 0.002, "accelerometer_3_z": 0.003,
        "accelerometer_5_x": 1.002, "accelerometer_5_y": 2.003, "accelerometer_5_z": 3.003,
        "barometric_pressure_3": 105.5, "barometric_pressure_5": 250.0,
        "gyrometer_3_x": 0.01, "gyrometer_3_y": 0.02, "gyrometer_3_z": 0.03,
        "gyrometer_5_x": 10.01, "gyrometer_5_y": 20.02, "gyrometer_5_z": 30.03,
        "gps_1_latitude": 42.3519, "gps_1_longitude": -87.9094, "gps_1_altitude": 10.0,
    })


def test_extended_types_by_their_table() -> None:
    """No published vector covers the extended types: this one follows their table
    (type, size, resolution, sign) as the extended libraries define it."""
    payload = bytes.fromhex(
        "0164000186A0"  # generic sensor 100000
        "01740159"  # voltage 3.45 V
        "01750457"  # current 1.111 A
        "01760000C350"  # frequency 50000 Hz
        "017857"  # percentage 87 %
        "0179FF9C"  # altitude -100 m
        "017AFFFC18"  # load -1.0 kg
        "017D01F4"  # concentration 500 ppm
        "018004D2"  # power 1234 W
        "018200003039"  # distance 12.345 m
        "0183000F4240"  # energy 1000.0 kWh
        "0184010E"  # direction 270 deg
        "01856553F100"  # unix time 1700000000
        "0187FF8000"  # colour 255, 128, 0
        "018E01"  # switch on
    )
    assert decode_lpp(payload) == Decoded({
        "generic_sensor_1": 100000.0, "voltage_1": 3.45, "current_1": 1.111,
        "frequency_1": 50000.0, "percentage_1": 87.0, "altitude_1": -100.0, "load_1": -1.0,
        "concentration_1": 500.0, "power_1": 1234.0, "distance_1": 12.345, "energy_1": 1000.0,
        "direction_1": 270.0, "unix_time_1": 1700000000.0,
        "colour_1_r": 255.0, "colour_1_g": 128.0, "colour_1_b": 0.0, "switch_1": 1.0,
    })


@pytest.mark.parametrize(("payload", "message", "offset"), [
    pytest.param("0100010599", "Cayenne LPP type 0x99 unknown at byte 4", 4, id="unknown-type"),
    pytest.param("036701", "Cayenne LPP temperature on channel 3 needs 2 bytes at byte 2, only 1 left",
                 2, id="truncated-value"),
    pytest.param("0367011005", "Cayenne LPP channel 5 at byte 4 has no type byte", 4,
                 id="channel-without-type"),
    pytest.param("0367011003670FF0", "Cayenne LPP temperature on channel 3 repeated at byte 4", 4,
                 id="repeated-channel-and-type"),
    pytest.param("018806765FF2960A0003",
                 "Cayenne LPP gps on channel 1 needs 9 bytes at byte 2, only 8 left", 2,
                 id="truncated-gps"),
    pytest.param("", "Cayenne LPP payload is empty", 0, id="empty"),
])
def test_invalid_payloads_name_the_problem_and_the_byte(payload: str, message: str,
                                                        offset: int) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_lpp(bytes.fromhex(payload))
    assert str(caught.value) == message
    assert caught.value.offset == offset
    assert caught.value.code == "undecodable"


@given(st.binary(max_size=64))
def test_random_bytes_raise_nothing_but_decode_error(data: bytes) -> None:
    try:
        decoded = decode_lpp(data)
    except DecodeError:
        return
    assert all(isinstance(v, float) for v in decoded.metrics.values())
