"""The InfluxDB point of a reading, as line protocol."""

from __future__ import annotations

from datetime import UTC, datetime

from influxdb_client import WritePrecision

from pipeline.sinks.influxdb import to_point
from schemas import Telemetry, TelemetryMetadata


def _reading(ts: datetime, **kwargs: object) -> Telemetry:
    return Telemetry(device_id="pump-7", protocol="mqtt", ts=ts, received_at=ts, message_id="m",
                     metrics={"temperature": 21.5, "flow_rate": 3.0}, **kwargs)  # type: ignore[arg-type]


def test_point_carries_tags_fields_and_exact_microsecond_time() -> None:
    # 156752 µs is one of the values a float conversion turns into ...751.
    ts = datetime(2026, 11, 27, 5, 49, 9, 156752, tzinfo=UTC)
    record = _reading(ts, application_id="plant a",
                      metadata=TelemetryMetadata(signal_strength=-67, battery_level=88))
    line = to_point(record).to_line_protocol(WritePrecision.US)
    assert line == (
        "telemetry,application_id=plant\\ a,device_id=pump-7,protocol=mqtt "
        "battery_level=88,flow_rate=3,signal_strength=-67,temperature=21.5 "  # floats: no i suffix
        f"{int(ts.timestamp()) * 1_000_000 + 156752}"
    )


def test_point_without_application_has_no_application_tag() -> None:
    ts = datetime(2026, 1, 1, tzinfo=UTC)
    line = to_point(_reading(ts)).to_line_protocol(WritePrecision.US)
    assert line.startswith("telemetry,device_id=pump-7,protocol=mqtt ")
    assert line.endswith(" 1767225600000000")
