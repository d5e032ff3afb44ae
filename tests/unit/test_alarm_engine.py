"""The pure alarm state machine: operators, deadband, on/off delay, flapping, stale data, rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pipeline.alarms import (
    AlarmRule,
    Decision,
    RuleError,
    Tracker,
    condition_normal,
    parse_rule,
    parse_rule_patch,
    stale_due,
    step,
    violates,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def rule(**fields: object) -> AlarmRule:
    base: dict[str, object] = {"id": "r1", "name": "high", "metric": "temperature", "operator": ">",
                               "threshold": 50.0}
    base.update(fields)
    return AlarmRule(**base)  # type: ignore[arg-type]


def run(r: AlarmRule, values: list[float], *, every_s: float = 1.0,
        tracker: Tracker | None = None) -> tuple[list[Decision], Tracker]:
    """Feed ``values`` one per ``every_s`` s of device time; apply raise/clear like the store would."""
    tracker = tracker or Tracker()
    start = tracker.floor + timedelta(seconds=every_s) if tracker.floor else T0
    decisions = []
    for i, value in enumerate(values):
        ts = start + timedelta(seconds=i * every_s)
        decision = step(r, tracker, value, ts)
        if decision is not Decision.NONE:
            tracker.set_active(decision is Decision.RAISE, ts)
        decisions.append(decision)
    return decisions, tracker


def transitions(decisions: list[Decision]) -> list[str]:
    return [d.value for d in decisions if d is not Decision.NONE]


@pytest.mark.parametrize(("operator", "raise_at", "stay", "clear_at"), [
    (">", 51.0, 48.5, 48.0),
    (">=", 50.0, 48.1, 47.9),
    ("<", 49.0, 51.5, 52.0),
    ("<=", 50.0, 51.9, 52.1),
    ("==", 50.0, 51.9, 52.1),
])
def test_operator_raises_and_clears_past_the_deadband(operator: str, raise_at: float, stay: float,
                                                      clear_at: float) -> None:
    r = rule(operator=operator, deadband=2.0)
    decisions, _ = run(r, [raise_at, stay, stay, clear_at])
    assert transitions(decisions) == ["raise", "clear"]
    assert decisions[-1] is Decision.CLEAR


@pytest.mark.parametrize(("operator", "normal"), [
    (">", 50.0), (">=", 49.99), ("<", 50.0), ("<=", 50.01), ("==", 50.5), ("!=", 50.0),
])
def test_value_on_the_normal_side_raises_nothing(operator: str, normal: float) -> None:
    decisions, tracker = run(rule(operator=operator), [normal] * 5)
    assert transitions(decisions) == []
    assert not tracker.active


def test_not_equal_ignores_the_deadband() -> None:
    r = rule(operator="!=", threshold=1.0, deadband=5.0)
    assert transitions(run(r, [0.0, 3.0, 1.0])[0]) == ["raise", "clear"]


def test_flapping_around_the_threshold_raises_once() -> None:
    """Deadband 2, value ±1 around the threshold 50 times: one raise, then one clear."""
    r = rule(threshold=50.0, deadband=2.0, off_delay_seconds=5.0)
    flapping = [51.0 if i % 2 == 0 else 49.0 for i in range(50)]
    decisions, tracker = run(r, flapping)
    assert transitions(decisions) == ["raise"]
    assert tracker.active
    decisions, tracker = run(r, [47.9] * 10, tracker=tracker)
    assert transitions(decisions) == ["clear"]
    assert decisions.index(Decision.CLEAR) == 5  # after the 5 s off-delay of device time


def test_without_deadband_flapping_raises_every_time() -> None:
    flapping = [51.0 if i % 2 == 0 else 49.0 for i in range(10)]
    assert transitions(run(rule(), flapping)[0]) == ["raise", "clear"] * 5


def test_on_delay_in_device_time() -> None:
    r = rule(for_seconds=10.0)
    decisions, tracker = run(r, [60.0] * 10, every_s=1.0)  # 9 s of device time: not yet
    assert transitions(decisions) == []
    assert tracker.bad_since == T0
    decisions, _ = run(r, [60.0], tracker=tracker)  # 10 s
    assert transitions(decisions) == ["raise"]


def test_on_delay_restarts_when_the_condition_breaks() -> None:
    r = rule(for_seconds=3.0)
    assert transitions(run(r, [60, 60, 60, 40, 60, 60, 60])[0]) == []
    assert transitions(run(r, [60, 60, 60, 60])[0]) == ["raise"]


def test_off_delay_restarts_when_the_value_goes_back_into_alarm() -> None:
    r = rule(off_delay_seconds=3.0)
    decisions, _ = run(r, [60, 40, 40, 60, 40, 40, 40, 40])
    assert transitions(decisions) == ["raise", "clear"]
    assert decisions.index(Decision.CLEAR) == 7  # 3 s after the last return to normal (index 4)


def test_older_or_replayed_readings_are_ignored() -> None:
    r = rule()
    tracker = Tracker()
    assert step(r, tracker, 60.0, T0) is Decision.RAISE
    tracker.set_active(True, T0)
    assert step(r, tracker, 10.0, T0) is Decision.NONE  # the same reading again
    assert step(r, tracker, 10.0, T0 - timedelta(seconds=5)) is Decision.NONE  # older
    assert step(r, tracker, 10.0, T0 + timedelta(seconds=1)) is Decision.CLEAR


def test_violates_and_condition_normal() -> None:
    r = rule(deadband=2.0)
    assert violates(r, 50.5, active=False)
    assert not violates(r, 50.0, active=False)
    assert violates(r, 48.5, active=True)
    assert not condition_normal(r, 48.5)
    assert condition_normal(r, 48.0)


def test_stale_rule_raises_on_silence_and_clears_when_readings_resume() -> None:
    r = rule(operator="stale", metric=None, threshold=None, for_seconds=30.0, off_delay_seconds=2.0)
    tracker = Tracker()
    assert not stale_due(r, tracker, last_heard=1000.0, now=1029.9)
    assert stale_due(r, tracker, last_heard=1000.0, now=1030.0)
    tracker.set_active(True, T0)
    assert not stale_due(r, tracker, last_heard=1000.0, now=2000.0)  # already active
    assert step(r, tracker, None, T0 + timedelta(seconds=40)) is Decision.NONE
    assert step(r, tracker, None, T0 + timedelta(seconds=41)) is Decision.NONE
    assert step(r, tracker, None, T0 + timedelta(seconds=42)) is Decision.CLEAR


def test_comparison_rule_is_never_stale() -> None:
    assert not stale_due(rule(), Tracker(), last_heard=0.0, now=1e9)


# --- rules ---------------------------------------------------------------------------------
def test_parse_rule_from_json() -> None:
    r = parse_rule({"name": "hot", "device_id": "boiler-1", "metric": "temperature", "operator": ">=",
                    "threshold": 90, "deadband": 2, "for_seconds": 5, "off_delay_seconds": 10,
                    "severity": "critical",
                    "notify": {"emails": ["ops@example.com"], "webhooks": ["http://127.0.0.1:9/x"],
                               "sms": ["+4915112345678"], "throttle_seconds": 60}}, rule_id="abc")
    assert (r.id, r.device_id, r.threshold, r.deadband, r.severity) == ("abc", "boiler-1", 90.0, 2.0,
                                                                         "critical")
    assert r.notify_emails == ("ops@example.com",)
    assert r.to_json()["notify"] == {"emails": ["ops@example.com"], "webhooks": ["http://127.0.0.1:9/x"],
                                     "sms": ["+4915112345678"], "throttle_seconds": 60.0}
    assert r.applies_to("boiler-1", None) and not r.applies_to("boiler-2", None)


@pytest.mark.parametrize(("body", "field"), [
    ({"operator": ">", "metric": "t", "threshold": 1}, "name"),
    ({"name": "x", "operator": "~", "metric": "t", "threshold": 1}, "operator"),
    ({"name": "x", "operator": ">", "threshold": 1}, "metric"),
    ({"name": "x", "operator": ">", "metric": "t"}, "threshold"),
    ({"name": "x", "operator": ">", "metric": "t", "threshold": "hot"}, "threshold"),
    ({"name": "x", "operator": ">", "metric": "t", "threshold": 1, "deadband": -1}, "deadband"),
    ({"name": "x", "operator": ">", "metric": "t", "threshold": 1, "severity": "bad"}, "severity"),
    ({"name": "x", "operator": ">", "metric": "t", "threshold": 1, "device_id": "a b"}, "device_id"),
    ({"name": "x", "operator": ">", "metric": "t", "threshold": 1, "device_id": "a",
      "application_id": "b"}, "application_id"),
    ({"name": "x", "operator": "stale"}, "for_seconds"),
    ({"name": "x", "operator": ">", "metric": "t", "threshold": 1, "colour": "red"}, "colour"),
    ({"name": "x", "operator": ">", "metric": "t", "threshold": 1, "notify": {"emails": ["nope"]}},
     "notify.emails"),
    ({"name": "x", "operator": ">", "metric": "t", "threshold": 1, "notify": {"sms": ["0151234567"]}},
     "notify.sms"),
    ({"name": "x", "operator": ">", "metric": "t", "threshold": 1, "notify": {"sms": "+4915112345678"}},
     "notify.sms"),
    ({"name": "x", "operator": ">", "metric": "t", "threshold": 1,
      "notify": {"webhooks": ["ftp://x"]}}, "notify.webhooks"),
    ([1, 2], "body"),
])
def test_parse_rule_names_the_bad_field(body: object, field: str) -> None:
    with pytest.raises(RuleError) as caught:
        parse_rule(body)
    assert caught.value.field == field


def test_patch_rule_checks_the_result_and_moves_scope() -> None:
    r = rule(device_id="dev-1")
    moved = parse_rule_patch(r, {"application_id": "plant-a", "threshold": 70})
    assert (moved.device_id, moved.application_id, moved.threshold, moved.id) == (None, "plant-a", 70.0,
                                                                                  "r1")
    with pytest.raises(RuleError) as caught:
        parse_rule_patch(r, {"operator": "stale"})
    assert caught.value.field == "for_seconds"
