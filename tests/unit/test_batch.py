"""TelemetryBatch: the columnar record of many readings, and Kafka's partitioner."""

from __future__ import annotations

import io
import math
import re
import struct
from datetime import UTC, datetime, timedelta

import pytest
from fastavro import schemaless_writer
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.producer import by_partition, murmur2, partition_for
from schemas import MAGIC, MalformedRecordError, Telemetry, TelemetryMetadata, UnknownSchemaError, iso_utc
from schemas.batch import (
    ReadingBatch,
    _batch_schema,
    _pack,
    batch_passes,
    check_row,
    decode_batch,
    from_micros,
    is_batch,
    iso_micros,
    to_micros,
)
from schemas.records import Location, SystemEvent

AT = datetime(2026, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


def _reading(device: str = "d1", mid: str = "m1", **kwargs: object) -> Telemetry:
    values = {"device_id": device, "protocol": "mqtt", "ts": AT, "received_at": AT + timedelta(seconds=1),
              "message_id": mid, "metrics": {"temperature": 21.5}}
    values.update(kwargs)
    return Telemetry(**values)  # type: ignore[arg-type]


def test_a_batch_round_trips_every_field() -> None:
    records = [
        _reading(),
        _reading("d2", "m2", application_id="plant", status="ok", metrics={"a": 1.0, "b": -2.5},
                 metadata=TelemetryMetadata(signal_strength=-67, battery_level=88, snr=7.5,
                                            gateway_id="gw", location=Location(52.1, 4.3),
                                            extra={"imei": "35"})),
    ]
    data = ReadingBatch.of(records).encode()
    assert is_batch(data)
    batch = decode_batch(data)
    assert len(batch) == 2
    assert [batch.telemetry(i) for i in range(2)] == records
    assert [batch.json(i) for i in range(2)] == [r.to_json() for r in records]


def test_an_older_single_record_reads_as_a_batch_of_one() -> None:
    record = _reading(status="ok")
    batch = decode_batch(record.encode())
    assert not is_batch(record.encode())
    assert len(batch) == 1 and batch.telemetry(0) == record


def test_other_values_are_refused_with_a_reason() -> None:
    with pytest.raises(UnknownSchemaError, match=r"SystemEvent, expected io\.webscada\.TelemetryBatch"):
        decode_batch(SystemEvent(kind="x", source="y").encode())
    data = ReadingBatch.of([_reading()]).encode()
    with pytest.raises(MalformedRecordError, match="does not decode"):
        decode_batch(data[:-3])
    with pytest.raises(MalformedRecordError, match="trailing bytes"):
        decode_batch(data + b"\x00")


def test_columns_of_different_lengths_are_not_encoded() -> None:
    batch = ReadingBatch.of([_reading(), _reading("d2")])
    batch.message_id.pop()
    with pytest.raises(MalformedRecordError, match="columns differ in length"):
        batch.encode()


def _forged(**fields: object) -> bytes:
    """A TelemetryBatch of two readings with some Avro fields replaced."""
    schema = _batch_schema()
    record = _pack(ReadingBatch.of([_reading(), _reading("d2", application_id="a")]))
    record.update(fields)
    out = io.BytesIO()
    schemaless_writer(out, schema.parsed, record)
    return MAGIC + schema.fingerprint + out.getvalue()


@pytest.mark.parametrize(("fields", "reason"), [
    ({"count": 3}, "has 2 entries for 3 readings"),
    ({"ts": b"\x00" * 12}, "ts is 12 bytes, not a whole number of 8-byte items"),
    ({"device_id": struct.pack("<2i", 0, 99)}, "device_id refers outside the"),
    ({"device_id": struct.pack("<2i", 0, -1)}, "device_id refers outside the"),
    ({"application_id": struct.pack("<2i", -2, -1)}, "application_id refers outside the"),
    ({"metric_count": struct.pack("<2i", 1, 2)}, "metric_count adds up to 3, not to the 2 names"),
    ({"message_id": ["only-one"]}, "message_id has 1 entries for 2 readings"),
    ({"extra": [{"index": 5, "values": {"a": "b"}}]}, "extra of reading 5 of 2"),
    ({"extra": [{"index": -1, "values": {"a": "b"}}]}, "extra of reading -1 of 2"),
])
def test_a_batch_that_contradicts_itself_is_malformed(fields: dict[str, object], reason: str) -> None:
    with pytest.raises(MalformedRecordError, match=re.escape(reason)):
        decode_batch(_forged(**fields))


def test_strings_repeat_once_and_numbers_are_packed() -> None:
    batch = ReadingBatch.of([_reading(mid=str(i)) for i in range(100)])
    record = _pack(batch)
    assert sorted(record["strings"]) == ["d1", "mqtt", "temperature"]
    assert len(record["ts"]) == 800 and len(record["metric_value"]) == 800
    assert len(batch.encode()) < 100 * 64  # about 60 bytes a reading of one metric


@pytest.mark.parametrize(("change", "reason"), [
    ({"device_id": "bad id"}, "device_id 'bad id' does not match"),
    ({"protocol": "carrier-pigeon"}, "protocol 'carrier-pigeon' is not one of"),
    ({"message_id": ""}, "message_id must be 1 to 128 characters"),
    ({"metrics": {}}, "reading has no metric"),
    ({"metrics": {"ts": 1.0}}, "metric name 'ts' is not allowed"),
    ({"metrics": {"a b": 1.0}}, "metric name 'a b' is not allowed"),
    ({"metrics": {"x": math.nan}}, "metric x is not finite"),
    ({"metrics": {"x": math.inf}}, "metric x is not finite"),
    ({"meta": {"snr": math.inf}}, "metadata snr is not finite"),
    ({"meta": {"rssi": 1.0}}, "metadata 'rssi' is not one of"),
    ({"meta": {"lat": 91.0, "lon": 0.0}}, "location (91.0, 0.0) is out of range"),
    ({"meta": {"lat": 1.0}}, "location needs both lat and lon"),
    ({"gateway_id": ""}, "gateway_id must be 1 to 128 characters"),
])
def test_check_row_refuses_what_telemetry_refuses(change: dict[str, object], reason: str) -> None:
    batch = ReadingBatch.of([_reading()])
    for name, value in change.items():
        getattr(batch, name)[0] = value
    assert reason in (check_row(batch, 0) or "")
    assert check_row(ReadingBatch.of([_reading()]), 0) is None


# Every change above, and harmless ones: batch_passes must say False exactly when one of
# the readings of a batch breaks a rule (it checks whole columns; check_row one reading).
_CHANGES = [
    {"device_id": "bad id"}, {"protocol": "carrier-pigeon"}, {"message_id": ""},
    {"message_id": "m" * 129}, {"application_id": ""}, {"application_id": "a" * 129},
    {"application_id": "a\\b"}, {"application_id": "a\nb"},
    {"metrics": {}}, {"metrics": {"ts": 1.0}}, {"metrics": {"a b": 1.0}}, {"metrics": {"_x": 1.0}},
    {"metrics": {"x": math.nan}}, {"metrics": {"x": -math.inf}}, {"meta": {"snr": math.inf}},
    {"meta": {"rssi": 1.0}}, {"meta": {"lat": 91.0, "lon": 0.0}}, {"meta": {"lat": 1.0}},
    {"meta": {"lon": 1.0}}, {"meta": {"lat": 1.0, "lon": -181.0}}, {"gateway_id": ""},
    # harmless
    {"device_id": "d-2"}, {"protocol": "lorawan"}, {"message_id": "m" * 128},
    {"application_id": "app"}, {"metrics": {"x": 1e300, "y": -0.0}}, {"meta": {"snr": -3.5}},
    {"meta": {"lat": -90.0, "lon": 180.0, "battery_level": 3.0}}, {"gateway_id": "gw"},
]


@settings(max_examples=600, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 7), st.sampled_from(_CHANGES)), max_size=6),
       st.integers(1, 8))
def test_batch_passes_agrees_with_check_row(changes: list[tuple[int, dict[str, object]]],
                                            size: int) -> None:
    batch = ReadingBatch.of([_reading(mid=str(i)) for i in range(size)])
    for row, change in changes:
        for name, value in change.items():
            getattr(batch, name)[row % size] = value
    each = [check_row(batch, i) for i in range(size)]
    assert batch_passes(batch) == all(reason is None for reason in each), each
    # and the same of the batch as it arrives from Kafka (lazy columns)
    assert batch_passes(decode_batch(batch.encode())) == batch_passes(batch)


@given(st.integers(min_value=0, max_value=253402300799999999))
def test_iso_micros_is_iso_utc(micros: int) -> None:
    assert iso_micros(micros) == iso_utc(from_micros(micros))
    assert to_micros(from_micros(micros)) == micros


def test_murmur2_matches_the_java_client() -> None:
    # Kafka's UtilsTest vectors (signed 32-bit results of Utils.murmur2).
    vectors = {"21": -973932308, "foobar": -790332482, "a-little-bit-long-string": -985981536,
               "a-little-bit-longer-string": -1486304829,
               "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971, "abc": 479470107}
    for text, expected in vectors.items():
        assert murmur2(text.encode()) == expected & 0xFFFFFFFF


def test_partitions_keep_each_device_together_in_order() -> None:
    devices = ["a", "b", "a", "c", "b", "a"]
    groups = by_partition(devices, 6)
    assert sorted(i for rows in groups.values() for i in rows) == list(range(6))
    for partition, rows in groups.items():
        assert rows == sorted(rows)
        assert all(partition_for(devices[i], 6) == partition for i in rows)
