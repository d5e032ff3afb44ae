"""The alarm state machine of one (rule, device): pure, no I/O, no clock of its own.

Comparison rules raise when the condition has held for ``for_seconds`` of
*device* time (on-delay) and clear when the value has been back past the
deadband for ``off_delay_seconds`` (off-delay):

====  =================  ==============================
op    raises when        clears when
====  =================  ==============================
>     v > t              v <= t - deadband
>=    v >= t             v < t - deadband
<     v < t              v >= t + deadband
<=    v <= t             v > t + deadband
==    v == t             abs(v - t) > deadband
!=    v != t             v == t (deadband not used)
====  =================  ==============================

Stale rules raise when no reading has arrived for ``for_seconds`` of wall-clock
time (see :func:`stale_due`) and clear once readings have come in again for
``off_delay_seconds`` of device time. Any reading of the device counts; a stale
rule's ``metric`` is only a label.

The caller flips :attr:`Tracker.active` only after the store confirmed the
transition, so a refused transition (shelved, already done before a replay)
leaves the tracker as the store says it is.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from pipeline.alarms.rules import AlarmRule

__all__ = ["Decision", "Tracker", "condition_normal", "stale_due", "step", "violates"]


class Decision(enum.Enum):
    NONE = "none"
    RAISE = "raise"
    CLEAR = "clear"


@dataclass(slots=True)
class Tracker:
    """What the engine remembers of one (rule, device)."""

    active: bool = False
    # device time since which the raise condition holds (while not active)
    bad_since: datetime | None = None
    # device time since which the clear condition holds (while active)
    good_since: datetime | None = None
    # newest device time judged; older readings are ignored (out of order or replayed)
    floor: datetime | None = None

    def reset_timers(self) -> None:
        self.bad_since = None
        self.good_since = None

    def set_active(self, active: bool, at: datetime | None = None) -> None:
        self.active = active
        self.reset_timers()
        if at is not None and (self.floor is None or at > self.floor):
            self.floor = at


def violates(rule: AlarmRule, value: float, *, active: bool) -> bool:
    """Whether ``value`` is in alarm: the raise condition, or (``active``) not yet cleared."""
    t = rule.threshold
    if t is None or rule.is_stale:
        return False
    band = rule.deadband if active else 0.0
    op = rule.operator
    if op == ">":
        return value > t - band
    if op == ">=":
        return value >= t - band
    if op == "<":
        return value < t + band
    if op == "<=":
        return value <= t + band
    if op == "==":
        return abs(value - t) <= band
    return value != t  # "!="


def condition_normal(rule: AlarmRule, value: float) -> bool:
    """Whether ``value`` would let an active alarm of ``rule`` clear (past the deadband)."""
    return not violates(rule, value, active=True)


def step(rule: AlarmRule, tracker: Tracker, value: float | None, ts: datetime) -> Decision:
    """Judge one reading at device time ``ts``.

    ``value`` is the rule metric's value (None for a stale rule: any reading counts).
    Updates the tracker's timers; the caller applies the returned decision.
    """
    if tracker.floor is not None and ts <= tracker.floor:
        return Decision.NONE
    tracker.floor = ts
    if rule.is_stale:
        if not tracker.active:
            return Decision.NONE
        return _clear_after_delay(rule, tracker, ts)
    assert value is not None, "a comparison rule needs the metric's value"
    if not tracker.active:
        tracker.good_since = None
        if not violates(rule, value, active=False):
            tracker.bad_since = None
            return Decision.NONE
        if tracker.bad_since is None:
            tracker.bad_since = ts
        held = (ts - tracker.bad_since).total_seconds()
        return Decision.RAISE if held >= rule.for_seconds else Decision.NONE
    tracker.bad_since = None
    if violates(rule, value, active=True):
        tracker.good_since = None
        return Decision.NONE
    return _clear_after_delay(rule, tracker, ts)


def _clear_after_delay(rule: AlarmRule, tracker: Tracker, ts: datetime) -> Decision:
    if tracker.good_since is None:
        tracker.good_since = ts
    held = (ts - tracker.good_since).total_seconds()
    return Decision.CLEAR if held >= rule.off_delay_seconds else Decision.NONE


def stale_due(rule: AlarmRule, tracker: Tracker, *, last_heard: float, now: float) -> bool:
    """Whether a stale rule must raise now: silent for ``for_seconds`` (wall clock, epoch s)."""
    return rule.is_stale and not tracker.active and now - last_heard >= rule.for_seconds
