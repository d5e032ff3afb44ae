"""GSM connector: AT+CSQ to dBm (3GPP TS 27.007 8.5), IMEI check digits, the parsed reading."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from connectors.errors import NotJsonError
from connectors.gsm import csq_to_dbm, imei_is_valid, parse_gsm_reading

RECEIVED = datetime(2024, 5, 1, 12, 0, 1, tzinfo=UTC)


@pytest.mark.parametrize(("csq", "dbm"), [
    (0, -113), (1, -111), (2, -109), (10, -93), (15, -83), (30, -53), (31, -51), (99, None),
])
def test_csq_maps_to_dbm_as_ts_27_007_says(csq: int, dbm: int | None) -> None:
    assert csq_to_dbm(csq) == dbm


@pytest.mark.parametrize("csq", [-1, 32, 98, 100, True, 15.5, "15", None])
def test_csq_outside_0_to_31_and_99_is_refused(csq: object) -> None:
    with pytest.raises(ValueError, match="csq"):
        csq_to_dbm(csq)  # type: ignore[arg-type]


@pytest.mark.parametrize("imei", [
    "490154203237518",  # the worked example of the Luhn check digit for IMEIs
    "356938035643809",
    "352099001761481",
    "000000000000000",
])
def test_imeis_with_a_valid_check_digit(imei: str) -> None:
    assert imei_is_valid(imei)


@pytest.mark.parametrize("imei", [
    "490154203237517",  # last digit off by one
    "490154203237519",
    "49015420323751",  # 14 digits (no check digit)
    "4901542032375180",  # 16 digits (IMEISV is not an IMEI)
    "49015420323751a",
    "\uff14" * 15,  # FULLWIDTH DIGIT FOUR: a digit to str.isdigit, not to an IMEI
    "",
])
def test_imeis_that_fail(imei: str) -> None:
    assert not imei_is_valid(imei)


def parse(body: dict[str, object], device_id: str = "modem-7"):  # type: ignore[no-untyped-def]
    return parse_gsm_reading(json.dumps(body).encode(), device_id, RECEIVED)


def test_csq_becomes_signal_strength_and_imei_metadata() -> None:
    reading = parse({"timestamp": 1714564800000, "telemetry": {"temperature": 21.5},
                     "metadata": {"batteryLevel": 80}, "imei": "490154203237518", "csq": 15})
    assert reading.rejected == ()
    telemetry = reading.telemetry
    assert telemetry is not None
    assert (telemetry.device_id, telemetry.protocol) == ("modem-7", "gsm")
    assert dict(telemetry.metrics) == {"temperature": 21.5}
    meta = telemetry.metadata
    assert (meta.signal_strength, meta.battery_level) == (-83.0, 80.0)
    assert dict(meta.extra) == {"imei": "490154203237518", "csq": "15"}
    assert telemetry.ts == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def test_csq_wins_over_the_bodys_signal_strength_but_99_leaves_it() -> None:
    known = parse({"temperature": 1, "csq": 31, "metadata": {"signalStrength": -70}})
    assert known.telemetry is not None and known.telemetry.metadata.signal_strength == -51.0
    unknown = parse({"temperature": 1, "csq": 99, "metadata": {"signalStrength": -70}})
    assert unknown.telemetry is not None and unknown.telemetry.metadata.signal_strength == -70.0
    assert unknown.telemetry.metadata.extra["csq"] == "99"
    assert unknown.rejected == ()


def test_imei_and_csq_inside_metadata_are_read_too() -> None:
    reading = parse({"temperature": 1, "metadata": {"imei": 490154203237518, "csq": 0.0}})
    assert reading.rejected == ()
    assert reading.telemetry is not None
    assert reading.telemetry.metadata.signal_strength == -113.0
    assert dict(reading.telemetry.metadata.extra) == {"imei": "490154203237518", "csq": "0"}


def test_bad_imei_and_csq_are_rejected_fields_and_the_reading_stays() -> None:
    reading = parse({"temperature": 4.5, "imei": "490154203237517", "csq": 40})
    assert reading.telemetry is not None
    assert dict(reading.telemetry.metrics) == {"temperature": 4.5}
    assert reading.telemetry.metadata.signal_strength is None
    assert dict(reading.telemetry.metadata.extra) == {}
    assert [(f.name, f.reason) for f in reading.rejected] == [
        ("csq", "csq 40 is not 0 to 31 or 99"),
        ("imei", "string '490154203237517' is not a 15-digit IMEI with a valid Luhn check digit"),
    ]
    dead = reading.dead_letter(stage="connector.gsm", source_topic="mqtt:gsm/modem-7/telemetry")
    assert dead is not None
    assert dead.details["code"] == "rejected_fields"
    assert dead.details["field.imei"].startswith("string '490154203237517'")


def test_imei_and_csq_are_never_metrics() -> None:
    reading = parse({"csq": 12, "imei": "356938035643809"})
    assert reading.telemetry is None
    assert reading.reject_code == "no_valid_metric"


def test_a_body_that_is_not_json_is_a_payload_error() -> None:
    with pytest.raises(NotJsonError):
        parse_gsm_reading(b"AT+CSQ: 15,99", "modem-7", RECEIVED)
