"""The validate agent's routing, on events as Faust hands them over (no services)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pipeline.agents.profiles import MetricLimits, ProfileCache, RecentIds, limits_from_json, split_by_limits
from pipeline.agents.validate import Validator
from pipeline.settings import Settings, Topics
from schemas import DeadLetter, Telemetry, utcnow


@dataclass
class _Message:
    key: bytes | None
    value: bytes
    topic: str = Topics.RAW
    partition: int = 2
    offset: int = 40


@dataclass
class _Event:
    message: _Message


def _reading(device: str = "d1", message_id: str = "m1", **metrics: float) -> Telemetry:
    now = utcnow()
    return Telemetry(device_id=device, protocol="mqtt", ts=now, received_at=now, message_id=message_id,
                     metrics=metrics or {"temperature": 20.0})


def _validator(*, auto_register: bool = True, limits: dict[str, Any] | None = None,
               known: set[str] | None = None) -> Validator:
    cache = ProfileCache("unused")
    cache.limits = {"d1": limits_from_json(limits or {})}
    cache.known_devices = known or set()
    cache.loaded = True
    return Validator(Settings(auto_register=auto_register), cache)


def _route(validator: Validator, *records: Telemetry | bytes) -> list[tuple[str, Any]]:
    events = [_Event(_Message(r.device_id.encode() if isinstance(r, Telemetry) else None,
                              r.encode() if isinstance(r, Telemetry) else r)) for r in records]
    out = []
    for item in validator.route(events):  # type: ignore[arg-type]
        if item.topic == Topics.DLQ:
            out.append((item.topic, DeadLetter.decode(item.value)))
        else:
            out.append((item.topic, Telemetry.decode(item.value)))
    return out


def test_valid_reading_passes_unchanged() -> None:
    record = _reading()
    assert _route(_validator(), record) == [(Topics.VALID, record)]


def test_out_of_range_metric_goes_to_dlq_and_the_rest_passes() -> None:
    record = _reading(temperature=150.0, humidity=40.0)
    routed = _route(_validator(limits={"temperature": {"unit": "°C", "min": -40, "max": 125}}), record)
    assert [topic for topic, _ in routed] == [Topics.DLQ, Topics.VALID]
    letter = routed[0][1]
    assert letter.reason == "out of profile range: temperature 150.0 is above the maximum 125.0"
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == (Topics.RAW, 2, 40)
    assert letter.payload == record.encode()
    assert dict(routed[1][1].metrics) == {"humidity": 40.0}


def test_all_metrics_out_of_range_sends_only_a_dead_letter() -> None:
    routed = _route(_validator(limits={"temperature": {"min": 0}}), _reading(temperature=-3.0))
    assert [topic for topic, _ in routed] == [Topics.DLQ]
    assert routed[0][1].reason == (
        "no metric within its profile range: temperature -3.0 is below the minimum 0.0"
    )


def test_duplicate_message_id_is_dropped() -> None:
    validator = _validator()
    first = _reading(message_id="same", level=1.0)
    again = _reading(message_id="same", level=2.0)
    assert _route(validator, first, again) == [(Topics.VALID, first)]


def test_rejected_reading_is_not_remembered_so_a_replay_passes() -> None:
    validator = _validator(limits={"temperature": {"max": 10}})
    record = _reading(message_id="r1", temperature=50.0)
    assert [t for t, _ in _route(validator, record)] == [Topics.DLQ]
    validator._profiles.limits = {}  # the fix: the profile was corrected
    assert _route(validator, record) == [(Topics.VALID, record)]


def test_unknown_device_when_auto_register_is_off() -> None:
    routed = _route(_validator(auto_register=False, known={"other"}), _reading())
    assert routed[0][0] == Topics.DLQ
    assert routed[0][1].reason == "unknown device"
    known = _reading()
    assert _route(_validator(auto_register=False, known={"d1"}), known) == [(Topics.VALID, known)]


def test_undecodable_and_future_values_are_dead_lettered() -> None:
    routed = _route(_validator(), b"\xc3\x01garbage!!")
    assert routed[0][1].reason.startswith("writer schema fingerprint 67617262616765")
    now = datetime.now(UTC)
    future = Telemetry(device_id="d1", protocol="mqtt", ts=now + timedelta(hours=1), received_at=now,
                       message_id="f", metrics={"x": 1.0})
    assert "in the future" in _route(_validator(), future)[0][1].reason


def test_limits_parsing_ignores_malformed_entries() -> None:
    assert limits_from_json({"t": {"unit": "K", "min": 1, "max": "high"}, "bad": 3}) == {
        "t": MetricLimits(unit="K", min=1.0, max=None)
    }
    record = _reading(t=5.0)
    assert split_by_limits(record, {}) == (record, {})


def test_recent_ids_forget_the_oldest() -> None:
    recent = RecentIds(size=2)
    for mid in ("a", "b", "c"):
        recent.remember(mid)
    assert "a" not in recent and "b" in recent and "c" in recent
