"""RuuviTag data format 5 with the specification's test vectors (docs.ruuvi.com,
"Data format 5 (RAWv2)", Test vectors: valid, maximum, minimum and invalid values)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.codecs import Decoded, DecodeError, decode_ruuvi

VALID = "0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F"


def test_valid_data() -> None:
    assert decode_ruuvi(bytes.fromhex(VALID)) == Decoded(
        {
            "temperature": 24.3, "humidity": 53.49, "pressure": 1000.44,
            "acceleration_x": 0.004, "acceleration_y": -0.004, "acceleration_z": 1.036,
            "battery_voltage": 2.977, "tx_power": 4.0,
            "movement_counter": 66.0, "measurement_sequence": 205.0,
        },
        {"data_format": 5.0, "mac": "CB:B8:33:4C:88:4F"},
    )


def test_maximum_values() -> None:
    assert decode_ruuvi(bytes.fromhex("057FFFFFFEFFFE7FFF7FFF7FFFFFDEFEFFFECBB8334C884F")) == Decoded(
        {
            "temperature": 163.835, "humidity": 163.835, "pressure": 1155.34,
            "acceleration_x": 32.767, "acceleration_y": 32.767, "acceleration_z": 32.767,
            "battery_voltage": 3.646, "tx_power": 20.0,
            "movement_counter": 254.0, "measurement_sequence": 65534.0,
        },
        {"data_format": 5.0, "mac": "CB:B8:33:4C:88:4F"},
    )


def test_minimum_values() -> None:
    assert decode_ruuvi(bytes.fromhex("058001000000008001800180010000000000CBB8334C884F")) == Decoded(
        {
            "temperature": -163.835, "humidity": 0.0, "pressure": 500.0,
            "acceleration_x": -32.767, "acceleration_y": -32.767, "acceleration_z": -32.767,
            "battery_voltage": 1.6, "tx_power": -40.0,
            "movement_counter": 0.0, "measurement_sequence": 0.0,
        },
        {"data_format": 5.0, "mac": "CB:B8:33:4C:88:4F"},
    )


def test_invalid_values_are_all_left_out() -> None:
    """Every field "not available": no metric and no MAC, yet well-formed."""
    assert decode_ruuvi(bytes.fromhex("058000FFFFFFFF800080008000FFFFFFFFFFFFFFFFFFFFFF")) == Decoded(
        {}, {"data_format": 5.0}
    )


@pytest.mark.parametrize(("hex_data", "message", "offset"), [
    pytest.param("03170145355803E804E705E60886", "RuuviTag data format 3 at byte 0 is not"
                 " supported (only format 5)", 0, id="format-3 (the ruuvi-sensor-protocol crate example)"),
    pytest.param(VALID[:-2], "RuuviTag data format 5 is 24 bytes, got 23: missing bytes from byte 23",
                 23, id="truncated"),
    pytest.param(VALID + "00", "RuuviTag data format 5 is 24 bytes, got 25: extra bytes at byte 24",
                 24, id="too-long"),
    pytest.param("", "RuuviTag data is empty", 0, id="empty"),
])
def test_invalid_data(hex_data: str, message: str, offset: int) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_ruuvi(bytes.fromhex(hex_data))
    assert str(caught.value) == message
    assert caught.value.offset == offset


@given(st.binary(max_size=32))
def test_random_bytes_raise_nothing_but_decode_error(data: bytes) -> None:
    try:
        decode_ruuvi(data)
    except DecodeError:
        pass


@given(st.binary(min_size=23, max_size=23).map(lambda b: b"\x05" + b))
def test_random_format_5_data_always_decodes(data: bytes) -> None:
    decoded = decode_ruuvi(data)
    assert set(decoded.metrics) <= {
        "temperature", "humidity", "pressure", "acceleration_x", "acceleration_y",
        "acceleration_z", "battery_voltage", "tx_power", "movement_counter",
        "measurement_sequence",
    }
