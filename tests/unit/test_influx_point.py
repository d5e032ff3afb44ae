"""The InfluxDB point of a reading, as line protocol."""

from __future__ import annotations

from datetime import UTC, datetime

from pipeline.sinks.influxdb import line_of, lines_of
from schemas import Telemetry, TelemetryMetadata
from schemas.batch import ReadingBatch


def _reading(ts: datetime, **kwargs: object) -> Telemetry:
    return Telemetry(device_id="pump-7", protocol="mqtt", ts=ts, received_at=ts, message_id="m",
                     metrics={"temperature": 21.5, "flow_rate": 3.0}, **kwargs)  # type: ignore[arg-type]


def test_point_carries_tags_fields_and_exact_microsecond_time() -> None:
    # 156752 µs is one of the values a float conversion turns into ...751.
    ts = datetime(2026, 11, 27, 5, 49, 9, 156752, tzinfo=UTC)
    record = _reading(ts, application_id="plant-a:b.c",
                      metadata=TelemetryMetadata(signal_strength=-67, battery_level=88))
    batch = ReadingBatch.of([record])
    line = line_of(batch, 0)
    assert line == (
        "telemetry,application_id=plant-a:b.c,device_id=pump-7,protocol=mqtt "
        "temperature=21.5,flow_rate=3.0,signal_strength=-67.0,battery_level=88.0 "  # floats: no i suffix
        f"{int(ts.timestamp()) * 1_000_000 + 156752}"
    )


def test_tag_values_are_escaped_should_an_unchecked_batch_carry_odd_text() -> None:
    # application ids keep the device-id alphabet (validate refuses others); the line is
    # still well formed for a batch that was never checked
    batch = ReadingBatch()
    batch.append(device_id="pump-7", protocol="mqtt", ts=1, received_at=1, message_id="m",
                 metrics={"x": 1.0}, application_id="plant a,b=c")
    assert line_of(batch, 0).startswith("telemetry,application_id=plant\\ a\\,b\\=c,device_id=pump-7,")


def test_point_without_application_has_no_application_tag() -> None:
    ts = datetime(2026, 1, 1, tzinfo=UTC)
    line = line_of(ReadingBatch.of([_reading(ts)]), 0)
    assert line.startswith("telemetry,device_id=pump-7,protocol=mqtt ")
    assert line.endswith(" 1767225600000000")


def test_a_batch_is_one_line_per_reading_in_order() -> None:
    first, second = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)
    body = lines_of(ReadingBatch.of([_reading(first), _reading(second, application_id="a")]))
    assert body.split("\n") == [
        "telemetry,device_id=pump-7,protocol=mqtt temperature=21.5,flow_rate=3.0 1767225600000000",
        "telemetry,application_id=a,device_id=pump-7,protocol=mqtt temperature=21.5,flow_rate=3.0 "
        "1767312000000000",
    ]


def test_big_and_small_numbers_are_written_as_influxdb_parses_floats() -> None:
    record = Telemetry(device_id="d", protocol="mqtt", ts=datetime(2026, 1, 1, tzinfo=UTC),
                       received_at=datetime(2026, 1, 1, tzinfo=UTC), message_id="m",
                       metrics={"big": 1e300, "small": -2.5e-300, "whole": 7})
    line = line_of(ReadingBatch.of([record]), 0)
    assert " big=1e+300,small=-2.5e-300,whole=7.0 " in line


def test_the_location_is_stored_as_two_fields() -> None:
    from schemas import Location

    ts = datetime(2026, 1, 1, tzinfo=UTC)
    line = line_of(ReadingBatch.of([_reading(ts, metadata=TelemetryMetadata(
        snr=7.5, location=Location(52.5, -4.25)))]), 0)
    assert " temperature=21.5,flow_rate=3.0,snr=7.5,location_lat=52.5,location_lon=-4.25 " in line
