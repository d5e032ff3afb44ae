"""The example extension agent's arithmetic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pipeline.agents.rolling import RollingWindow, derive
from schemas import Telemetry

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


def test_window_mean_and_rate() -> None:
    window = RollingWindow(timedelta(seconds=60))
    assert window.add(T0, 10.0) == (10.0, None)
    assert window.add(T0 + timedelta(seconds=10), 20.0) == (15.0, 1.0)
    assert window.add(T0 + timedelta(seconds=20), 0.0) == (10.0, -2.0)
    # 70 s after the first sample, the first two have left the 60 s window.
    assert window.add(T0 + timedelta(seconds=75), 4.0) == (2.0, 4.0 / 55)


def test_late_sample_does_not_disturb_the_window() -> None:
    window = RollingWindow(timedelta(seconds=60))
    window.add(T0 + timedelta(seconds=10), 10.0)
    assert window.add(T0, 99.0) == (10.0, None)
    assert [v for _, v in window.samples] == [10.0]


def test_derive_names_metrics_per_source_metric() -> None:
    windows: dict[tuple[str, str], RollingWindow] = {}
    first = Telemetry(device_id="d1", protocol="mqtt", ts=T0, received_at=T0, message_id="m1",
                      metrics={"temperature": 20.0})
    second = Telemetry(device_id="d1", protocol="mqtt", ts=T0 + timedelta(seconds=4), received_at=T0,
                       message_id="m2", metrics={"temperature": 22.0})
    assert dict(derive(first, windows).metrics) == {"temperature_mean_60s": 20.0}
    out = derive(second, windows)
    assert dict(out.metrics) == {"temperature_mean_60s": 21.0, "temperature_rate": 0.5}
    assert out.message_id == "m2:rolling"
