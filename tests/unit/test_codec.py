"""The Avro single-object codec (schemas/codec.py) against the Avro specification."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import pytest
from fastavro import schemaless_writer
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from schemas.codec import MAGIC, SCHEMA_DIR, registry
from schemas.errors import MalformedRecordError, UnknownFingerprintError
from schemas.records import DeadLetter, Location, Telemetry, TelemetryMetadata

# CRC-64-AVRO exactly as the Avro specification ("Schema Fingerprints") defines it,
# written here independently of fastavro so that the codec is checked against the spec.
_CRC_EMPTY = 0xC15D213AA4D7A795


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        fp = byte
        for _ in range(8):
            fp = (fp >> 1) ^ (_CRC_EMPTY & -(fp & 1))
        table.append(fp)
    return table


_CRC_TABLE = _crc_table()


def crc64_avro(data: bytes) -> int:
    fp = _CRC_EMPTY
    for byte in data:
        fp = (fp >> 8) ^ _CRC_TABLE[(fp ^ byte) & 0xFF]
    return fp


def schema_fingerprint(path_name: str) -> bytes:
    """The 8-byte little-endian fingerprint of a schema file, per the spec."""
    raw = json.loads((SCHEMA_DIR / path_name).read_text(encoding="utf-8"))
    return crc64_avro(to_parsing_canonical_form(raw).encode("utf-8")).to_bytes(8, "little")


T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
T1 = datetime(2024, 5, 1, 12, 0, 1, 654321, tzinfo=UTC)


def full_telemetry() -> Telemetry:
    return Telemetry(
        device_id="pump-7",
        protocol="mqtt",
        ts=T0,
        received_at=T1,
        message_id="m-42",
        metrics={"temperature": 21.5, "pressure": 1013.25, "running": 1.0},
        application_id="plant-a",
        status="ok",
        metadata=TelemetryMetadata(
            signal_strength=-67.0,
            battery_level=88.0,
            snr=7.5,
            gateway_id="gw-1",
            location=Location(52.1, 4.3),
            extra={"imei": "356938035643809"},
        ),
    )


def test_int_fingerprint_is_the_spec_value() -> None:
    expected = (0x7275D51A3F395C8F).to_bytes(8, "little")
    assert expected == bytes.fromhex("8f5c393f1ad57572")
    assert crc64_avro(b'"int"') == 0x7275D51A3F395C8F
    # The computation schemas/codec.py uses for every schema file.
    canonical = to_parsing_canonical_form("int")
    assert canonical == '"int"'
    assert bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO")) == expected


def test_current_schema_fingerprints_follow_the_spec() -> None:
    assert registry().fingerprint_of("Telemetry") == schema_fingerprint("telemetry.avsc")
    assert registry().fingerprint_of("DeadLetter") == schema_fingerprint("dead_letter.avsc")
    assert schema_fingerprint("telemetry.avsc") != schema_fingerprint("telemetry.v1.avsc")


def test_telemetry_round_trip() -> None:
    record = full_telemetry()
    data = record.encode()
    assert data[:2] == b"\xc3\x01" == MAGIC
    assert data[2:10] == schema_fingerprint("telemetry.avsc")
    decoded = Telemetry.decode(data)
    assert decoded == record
    assert decoded.to_json() == {
        "device_id": "pump-7",
        "protocol": "mqtt",
        "ts": "2024-05-01T12:00:00.123456Z",
        "received_at": "2024-05-01T12:00:01.654321Z",
        "message_id": "m-42",
        "application_id": "plant-a",
        "metrics": {"temperature": 21.5, "pressure": 1013.25, "running": 1.0},
        "status": "ok",
        "metadata": {
            "signal_strength": -67.0,
            "battery_level": 88.0,
            "snr": 7.5,
            "gateway_id": "gw-1",
            "location": {"lat": 52.1, "lon": 4.3},
            "extra": {"imei": "356938035643809"},
        },
    }


def test_telemetry_round_trip_with_only_required_fields() -> None:
    record = Telemetry(device_id="d1", protocol="http", ts=T0, received_at=T0,
                       message_id="x", metrics={"v": 0.0})
    assert Telemetry.decode(record.encode()) == record


def test_dead_letter_round_trip() -> None:
    record = DeadLetter(
        reason="payload is not JSON: Expecting value at byte 0",
        stage="connector.mqtt",
        payload=b"\x00\xffnot json",
        source_topic="mqtt:devices/pump-7/telemetry",
        device_id="pump-7",
        source_partition=3,
        source_offset=123456789012,
        failed_at=T1,
        details={"code": "not_json"},
    )
    data = record.encode()
    assert data[2:10] == schema_fingerprint("dead_letter.avsc")
    assert DeadLetter.decode(data) == record


def test_v1_telemetry_is_read_with_defaults_for_new_fields() -> None:
    v1_raw = json.loads((SCHEMA_DIR / "telemetry.v1.avsc").read_text(encoding="utf-8"))
    body = io.BytesIO()
    schemaless_writer(body, parse_schema(v1_raw), {
        "device_id": "old-1",
        "protocol": "lorawan",
        "ts": T0,
        "received_at": T1,
        "message_id": "legacy-9",
        "application_id": None,
        "metrics": {"temperature_3": 27.2},
        "metadata": {"signal_strength": -101.0, "battery_level": None, "snr": 5.25,
                     "gateway_id": "gw-9", "location": None},
    })
    data = MAGIC + schema_fingerprint("telemetry.v1.avsc") + body.getvalue()

    assert Telemetry.decode(data) == Telemetry(
        device_id="old-1",
        protocol="lorawan",
        ts=T0,
        received_at=T1,
        message_id="legacy-9",
        metrics={"temperature_3": 27.2},
        application_id=None,
        status=None,
        metadata=TelemetryMetadata(signal_strength=-101.0, snr=5.25, gateway_id="gw-9",
                                   extra={}),
    )


def test_unknown_fingerprint() -> None:
    data = full_telemetry().encode()
    forged = MAGIC + bytes.fromhex("0102030405060708") + data[10:]
    with pytest.raises(UnknownFingerprintError) as caught:
        Telemetry.decode(forged)
    assert str(caught.value) == (
        f"writer schema fingerprint 0102030405060708 is not among the schemas in {SCHEMA_DIR}"
    )


def test_truncated_body() -> None:
    data = full_telemetry().encode()
    with pytest.raises(MalformedRecordError) as caught:
        Telemetry.decode(data[:-5])
    # Cut inside the last string, metadata.extra["imei"] (15 bytes, 11 of them left).
    assert str(caught.value) == (
        f"io.webscada.Telemetry body does not decode at byte {len(data) - 5}:"
        " EOFError: Expected 15 bytes, read 11"
    )


def test_wrong_magic() -> None:
    data = full_telemetry().encode()
    with pytest.raises(MalformedRecordError) as caught:
        Telemetry.decode(b"\xc3\x02" + data[2:])
    assert str(caught.value) == "value starts with c302, not the single-object marker c301"


def test_shorter_than_header() -> None:
    with pytest.raises(MalformedRecordError) as caught:
        Telemetry.decode(b"\xc3\x01abc")
    assert str(caught.value) == (
        "value is 5 bytes, shorter than the 10-byte single-object header"
    )


def test_trailing_bytes() -> None:
    data = full_telemetry().encode()
    with pytest.raises(MalformedRecordError) as caught:
        Telemetry.decode(data + b"\x00\x00")
    assert str(caught.value) == (
        "2 unexpected trailing bytes after the io.webscada.Telemetry body"
    )
