"""The device JSON body (docs/design.md, "Device-facing interfaces"): bytes in, the complete reading out."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.errors import (
    BadDeviceIdError,
    BadMessageIdError,
    BadTimestampError,
    NotAnObjectError,
    NotJsonError,
    PayloadError,
    PayloadTooLargeError,
)
from connectors.payload import (
    MAX_PAYLOAD_BYTES,
    ParsedReading,
    RejectedField,
    dead_letter_for_error,
    derive_message_id,
    parse_reading,
)
from connectors.reading import ReadingRow
from schemas.records import DeadLetter, Location, Telemetry, TelemetryMetadata

RECEIVED = datetime(2024, 5, 1, 12, 0, 5, tzinfo=UTC)
FAILED = datetime(2024, 5, 1, 12, 0, 6, tzinfo=UTC)
DEVICE_TIME = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)  # epoch ms 1714564800000
SOURCE = "mqtt:devices/pump-7/telemetry"


def parse(payload: bytes, **options: object) -> ParsedReading:
    kwargs: dict[str, object] = {
        "device_id": "pump-7", "protocol": "mqtt", "received_at": RECEIVED, **options,
    }
    return parse_reading(payload, **kwargs)  # type: ignore[arg-type]


def reading(metrics: dict[str, float], message_id: str, **fields: object) -> Telemetry:
    values: dict[str, object] = {
        "device_id": "pump-7", "protocol": "mqtt", "ts": DEVICE_TIME, "received_at": RECEIVED,
        "message_id": message_id, "metrics": metrics, **fields,
    }
    return Telemetry(**values)  # type: ignore[arg-type]


def row(metrics: dict[str, float], message_id: str, **fields: object) -> ReadingRow:
    """The row of that reading: what the parser hands on to the batches."""
    return ReadingRow.of(reading(metrics, message_id, **fields))


SEED = (
    b'{"timestamp": 1714564800000, "telemetry": {"temperature": 21.5, "humidity": 40},'
    b' "metadata": {"signalStrength": -67, "batteryLevel": 88, "snr": 7.5,'
    b' "gatewayId": "gw-1", "location": {"lat": 52.1, "lon": 4.3}},'
    b' "applicationId": "plant-a"}'
)


def test_seed_structure() -> None:
    assert parse(SEED) == ParsedReading(
        device_id="pump-7",
        message_id="eab61f54-004f-55fa-bb13-5b91adfdc0f5",
        payload=SEED,
        row=row(
            {"temperature": 21.5, "humidity": 40.0},
            "eab61f54-004f-55fa-bb13-5b91adfdc0f5",
            application_id="plant-a",
            metadata=TelemetryMetadata(
                signal_strength=-67.0, battery_level=88.0, snr=7.5, gateway_id="gw-1",
                location=Location(52.1, 4.3),
            ),
        ),
        rejected=(),
    )


def test_derived_message_id_is_uuid5_over_device_id_and_bytes() -> None:
    namespace = uuid.UUID("6f0f3a52-3c55-5e7e-9d7b-2a1c4b8e9d01")
    expected = uuid.uuid5(namespace, "pump-7\0" + SEED.decode())
    assert derive_message_id("pump-7", SEED, None) == str(expected)


def test_flat_object_of_numbers() -> None:
    payload = b'{"temperature": 21.5, "flow": -3, "timestamp": "2024-05-01T12:00:00Z"}'
    result = parse(payload, message_id="hint-1")
    assert result == ParsedReading(
        "pump-7", "hint-1", payload,
        row({"temperature": 21.5, "flow": -3.0}, "hint-1"),
    )


def test_booleans_become_zero_and_one() -> None:
    payload = b'{"messageId": "m1", "telemetry": {"pump": true, "valve": false}}'
    result = parse(payload)
    assert result.telemetry == reading({"pump": 1.0, "valve": 0.0}, "m1", ts=RECEIVED)
    assert result.rejected == ()
    assert result.dead_letter(stage="connector.mqtt", source_topic=SOURCE) is None


@pytest.mark.parametrize(
    "payload",
    [
        b'{"messageId": "m1", "timestamp": 1714564800000, "telemetry": {"level": 3, "status": "ok"}}',
        b'{"messageId": "m1", "timestamp": 1714564800000, "level": 3, "status": "ok"}',
    ],
    ids=["in-telemetry", "top-level"],
)
def test_status_string_is_kept_as_status(payload: bytes) -> None:
    assert parse(payload) == ParsedReading(
        "pump-7", "m1", payload, row({"level": 3.0}, "m1", status="ok")
    )


def test_non_numeric_fields_are_dropped_and_reported() -> None:
    payload = (
        b'{"messageId": "m1", "timestamp": 1714564800000, "telemetry": {"temperature": 21.5,'
        b' "mode": "auto", "note": null, "list": [1], "nested": {"a": 1}, "bad": NaN,'
        b' "huge": 1e400}, "metadata": {"batteryLevel": "full"}}'
    )
    rejected = (
        RejectedField("telemetry.mode", "string 'auto' is not a number"),
        RejectedField("telemetry.note", "null is not a number"),
        RejectedField("telemetry.list", "array is not a number"),
        RejectedField("telemetry.nested", "object is not a number"),
        RejectedField("telemetry.bad", "nan is not a finite number"),
        RejectedField("telemetry.huge", "inf is not a finite number"),
        RejectedField("metadata.batteryLevel", "string 'full' is not a number"),
    )
    result = parse(payload)
    assert result == ParsedReading(
        "pump-7", "m1", payload, row({"temperature": 21.5}, "m1"), rejected
    )
    assert result.reject_code == "rejected_fields"
    assert result.dead_letter(
        stage="connector.mqtt", source_topic=SOURCE, failed_at=FAILED
    ) == DeadLetter(
        reason=(
            "dropped 7 fields from reading: telemetry.mode (string 'auto' is not a number);"
            " telemetry.note (null is not a number); telemetry.list (array is not a number);"
            " telemetry.nested (object is not a number); telemetry.bad (nan is not a finite"
            " number); telemetry.huge (inf is not a finite number); metadata.batteryLevel"
            " (string 'full' is not a number)"
        ),
        stage="connector.mqtt",
        payload=payload,
        source_topic=SOURCE,
        device_id="pump-7",
        failed_at=FAILED,
        details={
            "code": "rejected_fields",
            "message_id": "m1",
            "field.telemetry.mode": "string 'auto' is not a number",
            "field.telemetry.note": "null is not a number",
            "field.telemetry.list": "array is not a number",
            "field.telemetry.nested": "object is not a number",
            "field.telemetry.bad": "nan is not a finite number",
            "field.telemetry.huge": "inf is not a finite number",
            "field.metadata.batteryLevel": "string 'full' is not a number",
        },
    )


def test_reserved_and_invalid_metric_names_are_rejected() -> None:
    payload = b'{"messageId": "m1", "ts": 1, "snr": 2, "bad name": 3, "nl\\n": 5, "ok": 4}'
    assert parse(payload).rejected == (
        RejectedField("ts", "'ts' is not an allowed name"),
        RejectedField("snr", "'snr' is not an allowed name"),
        RejectedField("bad name", "'bad name' is not an allowed name"),
        RejectedField("nl\n", "'nl\\n' is not an allowed name"),
    )


def test_bad_metadata_values_are_dropped_and_reported() -> None:
    payload = (
        b'{"messageId": "m1", "timestamp": 1714564800000, "telemetry": {"t": 1},'
        b' "metadata": {"signalStrength": true, "gatewayId": 5,'
        b' "location": {"lat": 95, "lon": 4}, "firmware": "1.2.0", "rssiRaw": 180}}'
    )
    result = parse(payload)
    assert result.telemetry == reading(
        {"t": 1.0}, "m1", metadata=TelemetryMetadata(extra={"firmware": "1.2.0", "rssiRaw": "180"})
    )
    assert result.rejected == (
        RejectedField("metadata.signalStrength", "boolean true is not a number"),
        RejectedField("metadata.gatewayId", "number 5 is not a string of 1 to 128 characters"),
        RejectedField("metadata.location", "location (95.0, 4.0) is out of range"),
    )


def test_no_valid_metric_sends_the_whole_reading_to_dlq() -> None:
    payload = b'{"messageId": "m1", "telemetry": {"mode": "auto"}, "status": "idle"}'
    result = parse(payload)
    assert result == ParsedReading(
        "pump-7", "m1", payload, None,
        (RejectedField("telemetry.mode", "string 'auto' is not a number"),),
    )
    assert result.reject_code == "no_valid_metric"
    assert result.dead_letter(
        stage="connector.mqtt", source_topic=SOURCE, failed_at=FAILED
    ) == DeadLetter(
        reason="no valid metric in reading: telemetry.mode (string 'auto' is not a number)",
        stage="connector.mqtt",
        payload=payload,
        source_topic=SOURCE,
        device_id="pump-7",
        failed_at=FAILED,
        details={"code": "no_valid_metric", "message_id": "m1",
                 "field.telemetry.mode": "string 'auto' is not a number"},
    )


def test_empty_object_has_no_valid_metric() -> None:
    result = parse(b"{}")
    assert result.telemetry is None
    assert result.rejected == ()
    dead = result.dead_letter(stage="connector.mqtt", source_topic=SOURCE, failed_at=FAILED)
    assert dead is not None
    assert dead.reason == "no valid metric in reading"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "payload is not JSON: Expecting value at byte 0"),
        (b"hello", "payload is not JSON: Expecting value at byte 0"),
        (b'{"temperature": 21.', "payload is not JSON: Expecting ',' delimiter at byte 18"),
        ('{"t\u00e9": 1,}'.encode(), "payload is not JSON: Expecting property name enclosed"
                                     " in double quotes at byte 10"),  # char 9
        (b'{"t": 1}\xff', "payload is not UTF-8 text: invalid start byte at byte 8"),
    ],
    ids=["empty", "text", "cut-off", "non-ascii-offset", "not-utf8"],
)
def test_not_json(payload: bytes, message: str) -> None:
    with pytest.raises(NotJsonError) as caught:
        parse(payload)
    assert str(caught.value) == message
    assert caught.value.code == "not_json"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"[1, 2]", "payload is a JSON array, not an object"),
        (b'"temperature"', "payload is a JSON string, not an object"),
        (b"21.5", "payload is a JSON number, not an object"),
        (b"null", "payload is a JSON null, not an object"),
    ],
)
def test_not_an_object(payload: bytes, message: str) -> None:
    with pytest.raises(NotAnObjectError, match=f"^{message}$"):
        parse(payload)


@pytest.mark.parametrize(
    ("timestamp", "message"),
    [
        ('"yesterday"', "timestamp 'yesterday' is not an ISO-8601 time: Invalid isoformat"
                        " string: 'yesterday'"),
        ("true", "timestamp must be ISO-8601 or epoch milliseconds, got boolean true"),
        ("[1]", "timestamp must be ISO-8601 or epoch milliseconds, got array"),
        ("-1", "timestamp -1 is not a time after 1970"),
        ("NaN", "timestamp nan is not a time after 1970"),
        ("1e300", "timestamp 1e+300 is beyond the year 9999"),
        ('"0999-06-01T00:00:00Z"', "timestamp '0999-06-01T00:00:00Z' is before 1970"),
        ('"1969-12-31T23:59:59.999999Z"', "timestamp '1969-12-31T23:59:59.999999Z' is before 1970"),
        ('"2024-05-01T12:05:06Z"',
         "timestamp '2024-05-01T12:05:06Z' is more than 300 s ahead of the time it was received"),
        ("1714565106000", "timestamp 1714565106000 is more than 300 s ahead of the time it was received"),
    ],
)
def test_bad_timestamps(timestamp: str, message: str) -> None:
    with pytest.raises(BadTimestampError) as caught:
        parse(b'{"t": 1, "timestamp": ' + timestamp.encode() + b"}")
    assert str(caught.value) == message


def test_the_allowed_clock_skew_is_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from connectors import payload

    monkeypatch.setenv("WEBSCADA_MAX_FUTURE_SKEW_S", "10")
    payload._max_future_skew_s.cache_clear()
    try:
        assert parse(b'{"t": 1, "timestamp": "2024-05-01T12:00:14Z"}').row is not None  # 9 s ahead
        with pytest.raises(BadTimestampError, match="'2024-05-01T12:00:16Z' is more than 10 s ahead"):
            parse(b'{"t": 1, "timestamp": "2024-05-01T12:00:16Z"}')
        # a caller may still say it itself
        assert parse(b'{"t": 1, "timestamp": "2024-05-01T12:00:16Z"}',
                      max_future_skew_s=60).row is not None
    finally:
        payload._max_future_skew_s.cache_clear()


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        ("1714564800000", DEVICE_TIME),
        ("1714564800123.5", datetime(2024, 5, 1, 12, 0, 0, 123500, tzinfo=UTC)),
        ("1714564800", DEVICE_TIME),  # clearly seconds
        ("1714564800.25", datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC)),
        ('"2024-05-01T12:00:00Z"', DEVICE_TIME),
        ('"2024-05-01T14:00:00+02:00"', DEVICE_TIME),
        ('"2024-05-01T12:00:00.5"', datetime(2024, 5, 1, 12, 0, 0, 500000, tzinfo=UTC)),
        ("null", RECEIVED),
    ],
    ids=["ms", "ms-fraction", "seconds", "seconds-fraction", "iso-z", "iso-offset",
         "iso-no-zone", "null"],
)
def test_timestamps(timestamp: str, expected: datetime) -> None:
    result = parse(b'{"t": 1, "timestamp": ' + timestamp.encode() + b"}")
    assert result.telemetry is not None
    assert result.telemetry.ts == expected


def test_no_timestamp_uses_received_at() -> None:
    payload = b'{"temperature": 21.5}'
    assert parse(payload) == ParsedReading(
        "pump-7", "935d9cb8-365a-5d3e-9ca0-b30bb0412573", payload,
        row({"temperature": 21.5}, "935d9cb8-365a-5d3e-9ca0-b30bb0412573", ts=RECEIVED),
    )


def test_message_id_is_stable_for_identical_bytes() -> None:
    later = datetime(2024, 5, 1, 13, 0, 0, tzinfo=UTC)
    first = parse(SEED).message_id
    assert parse(SEED).message_id == first
    assert parse(SEED, received_at=later).message_id == first  # a broker redelivery
    assert parse(SEED.replace(b"21.5", b"21.6")).message_id != first
    assert parse(SEED, device_id="pump-8").message_id != first


def test_message_id_without_timestamp_depends_on_received_at() -> None:
    later = datetime(2024, 5, 1, 13, 0, 0, tzinfo=UTC)
    payload = b'{"temperature": 21.5}'
    assert parse(payload).message_id == parse(payload).message_id
    assert parse(payload).message_id != parse(payload, received_at=later).message_id


def test_message_id_from_payload_wins_over_hint() -> None:
    assert parse(b'{"messageId": "dev-1", "t": 1}', message_id="hint").message_id == "dev-1"
    assert parse(b'{"messageId": 17, "t": 1}').message_id == "17"
    assert parse(b'{"t": 1}', message_id="hint").message_id == "hint"


@pytest.mark.parametrize(
    ("value", "described"),
    [('""', "string ''"), ("true", "boolean true"), ("[]", "array"),
     ('"' + "x" * 129 + '"', "string '" + "x" * 60 + "...")],
)
def test_bad_message_id(value: str, described: str) -> None:
    with pytest.raises(BadMessageIdError) as caught:
        parse(b'{"t": 1, "messageId": ' + value.encode() + b"}")
    assert str(caught.value) == f"messageId must be a string of 1 to 128 characters, got {described}"


def test_bad_device_id() -> None:
    payload = b'{"t": 1}'
    with pytest.raises(BadDeviceIdError) as caught:
        parse(payload, device_id="bad id!")
    assert str(caught.value) == (
        "device id 'bad id!' does not match ^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
    )
    dead = dead_letter_for_error(caught.value, payload, device_id="bad id!",
                                 stage="connector.mqtt", source_topic=SOURCE, failed_at=FAILED)
    assert dead == DeadLetter(
        reason=str(caught.value), stage="connector.mqtt", payload=payload,
        source_topic=SOURCE, device_id=None, failed_at=FAILED,
        details={"code": "bad_device_id", "device_id": "bad id!"},
    )


def test_device_id_with_trailing_newline_is_rejected() -> None:
    with pytest.raises(BadDeviceIdError):
        parse(b'{"t": 1}', device_id="pump-7\n")


def test_payload_too_large_goes_to_dlq_truncated() -> None:
    payload = b'{"t": "' + b"x" * MAX_PAYLOAD_BYTES + b'"}'
    with pytest.raises(PayloadTooLargeError) as caught:
        parse(payload)
    assert str(caught.value) == (
        f"payload is {len(payload)} bytes, more than the {MAX_PAYLOAD_BYTES} allowed"
    )
    dead = dead_letter_for_error(caught.value, payload, device_id="pump-7",
                                 stage="connector.mqtt", source_topic=SOURCE, failed_at=FAILED)
    assert dead == DeadLetter(
        reason=str(caught.value), stage="connector.mqtt", payload=payload[:MAX_PAYLOAD_BYTES],
        source_topic=SOURCE, device_id="pump-7", failed_at=FAILED,
        details={"code": "too_large", "truncated_from": str(len(payload))},
    )


def test_application_id_argument_wins_over_payload() -> None:
    result = parse(b'{"applicationId": "from-payload", "t": 1}', application_id="from-topic")
    assert result.telemetry is not None
    assert result.telemetry.application_id == "from-topic"


def test_caller_mistakes_are_not_payload_errors() -> None:
    with pytest.raises(ValueError, match="protocol 'smoke' is not one of"):
        parse(b'{"t": 1}', protocol="smoke")
    with pytest.raises(ValueError, match="has no time zone"):
        parse(b'{"t": 1}', received_at=datetime(2024, 5, 1))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_arbitrary_bytes_give_a_result_or_a_payload_error(payload: bytes) -> None:
    try:
        result = parse(payload)
    except PayloadError:
        return
    assert isinstance(result, ParsedReading)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=12,
)
_keys = st.sampled_from(["timestamp", "telemetry", "metadata", "messageId", "applicationId",
                         "status", "temperature", "ts", "location", "signalStrength", "x y"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_keys | st.text(max_size=6), _json_values, max_size=6))
def test_arbitrary_json_objects_give_a_result_or_a_payload_error(obj: dict[str, object]) -> None:
    payload = json.dumps(obj).encode()
    try:
        result = parse(payload)
    except PayloadError:
        return
    assert (result.telemetry is None) == (result.reject_code == "no_valid_metric")
    if result.reject_code is not None:
        assert result.dead_letter(stage="connector.mqtt", source_topic=SOURCE) is not None


# --- JSON read by orjson, exactly as json reads it --------------------------------------------


def test_json_beyond_orjson_reads_as_json_reads_it() -> None:
    assert parse(b'{"t": 1, "messageId": %d}' % (2**64 - 1)).message_id == str(2**64 - 1)
    with pytest.raises(BadMessageIdError, match="an integer of at most 64 bits"):
        parse(b'{"t": 1, "messageId": 123456789012345678901234567890}')  # orjson: a float
    # NaN and 1e400 are values that are not numbers, not a payload that is not JSON
    assert parse(b'{"t": 1, "a": NaN, "b": -Infinity}').rejected == (
        RejectedField("a", "nan is not a finite number"),
        RejectedField("b", "-inf is not a finite number"))


@pytest.mark.parametrize(("payload", "message"), [
    (b'{"t": 1, "status": "\\ud800"}', "payload is not JSON: no low surrogate in string at byte 20"),
    (b'{"t": 1, "x": NaN, "status": "\\udc00"}',
     "payload is not JSON: a string holds a lone surrogate '\\udc00'"),
    (b'\xef\xbb\xbf{"t": 1}', "payload is not JSON: Unexpected UTF-8 BOM (decode using utf-8-sig)"),
], ids=["lone-surrogate", "nan-then-lone-surrogate", "bom"])
def test_text_no_record_can_hold_is_not_json(payload: bytes, message: str) -> None:
    with pytest.raises(NotJsonError) as caught:
        parse(payload)
    assert str(caught.value).startswith(message)


def test_the_row_is_the_checked_reading() -> None:
    result = parse(SEED)
    assert result.row is not None and result.telemetry is not None
    assert ReadingRow.of(result.telemetry) == result.row
    assert (result.row.ts, result.row.meta, result.row.gateway_id) == (
        1714564800000000, {"signal_strength": -67.0, "battery_level": 88.0, "snr": 7.5,
                           "lat": 52.1, "lon": 4.3}, "gw-1")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_keys | st.sampled_from(["t", "flow", "status"]), _json_values, max_size=6),
       st.dictionaries(st.sampled_from(["signalStrength", "snr", "gatewayId", "fw", "location"]),
                       _json_values, max_size=3))
def test_the_quick_path_answers_what_the_full_parser_answers(
    obj: dict[str, object], metadata: dict[str, object]
) -> None:
    if metadata:
        obj["metadata"] = metadata
    payload = json.dumps(obj).encode()
    parse(b'{"t": 1, "flow": 2, "temperature": 3}')  # names the quick path knows

    def outcome() -> object:
        try:
            return parse(payload)
        except PayloadError as exc:
            return repr(exc)

    quick = outcome()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("connectors.payload.quick_fields", lambda obj: None)
        assert outcome() == quick
