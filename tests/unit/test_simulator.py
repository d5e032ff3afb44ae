"""Simulated devices produce readings the payload parser accepts, and a few bad ones."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime

from connectors.errors import PayloadError
from connectors.payload import parse_reading
from connectors.simulator import SimulatedDevice

NOW_MS = 1714564800000
# after every simulated step: device times may not run ahead of their arrival
RECEIVED = datetime(2024, 5, 1, 12, 40, 0, tzinfo=UTC)


def test_readings_drift_within_bounds_and_parse() -> None:
    device = SimulatedDevice("sim-1", random.Random(7))
    assert device.topic == "devices/sim-1/telemetry"
    good = bad = 0
    previous: dict[str, float] = {}
    for step in range(2000):
        payload = device.next_payload(NOW_MS + step * 1000)
        try:
            result = parse_reading(payload, device_id="sim-1", protocol="mqtt",
                                   received_at=RECEIVED)
        except PayloadError:
            bad += 1
            continue
        if result.telemetry is None or result.rejected:
            bad += 1
            continue
        good += 1
        telemetry = result.telemetry
        metrics = dict(telemetry.metrics)
        assert set(metrics) == {"temperature", "humidity", "pressure", "flow"}
        assert -20 <= metrics["temperature"] <= 60 and 0 <= metrics["humidity"] <= 100
        assert 950 <= metrics["pressure"] <= 1050 and 0 <= metrics["flow"] <= 40
        if previous:  # drifting, not jumping
            assert abs(metrics["temperature"] - previous["temperature"]) < 2.0
        previous = metrics
        assert telemetry.ts == datetime.fromtimestamp((NOW_MS + step * 1000) / 1000, UTC)
        assert telemetry.metadata.battery_level is not None
        assert 0 < telemetry.metadata.battery_level <= 100
        assert telemetry.metadata.signal_strength is not None
        assert telemetry.metadata.location is not None
    assert good + bad == 2000
    assert 2 <= bad <= 30  # about 1 in 200


def test_malformed_messages_are_of_every_kind() -> None:
    device = SimulatedDevice("sim-2", random.Random(1))
    kinds = set()
    for _ in range(200):
        payload = device._malformed(NOW_MS)
        try:
            body = json.loads(payload)
        except ValueError:
            kinds.add("not json")
            continue
        if body["timestamp"] == "yesterday":
            kinds.add("bad timestamp")
        elif "temperature" in body["telemetry"]:
            kinds.add("string field")
        else:
            kinds.add("no metric")
    assert kinds == {"not json", "bad timestamp", "string field", "no metric"}
