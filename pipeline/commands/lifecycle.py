"""The command state machine: which status may follow which (pure functions).

``queued → sent → delivered → acked | failed``; a device may skip ``delivered``
(and even ``sent`` when its answer overtakes the transport's report);
``expired`` ends any command that has no final status when its TTL passed.
Final statuses are terminal, so a late or replayed status never moves a
command back.
"""

from __future__ import annotations

from datetime import datetime

from schemas.records import COMMAND_STATUSES

__all__ = [
    "DEVICE_ACK_STATUSES",
    "FINAL",
    "OPEN",
    "STATUSES",
    "InvalidTransition",
    "check_transition",
    "is_due",
    "may_advance",
    "predecessors",
]

STATUSES = COMMAND_STATUSES
FINAL = frozenset({"acked", "failed", "expired"})
OPEN = tuple(status for status in STATUSES if status not in FINAL)
# What a device may report in an ack (docs/design.md, "Commands").
DEVICE_ACK_STATUSES = frozenset({"delivered", "acked", "failed"})

_RANK = {"queued": 0, "sent": 1, "delivered": 2, "acked": 3, "failed": 3, "expired": 3}


class InvalidTransition(ValueError):
    """A status that cannot follow the command's current one."""


def _known(status: str) -> None:
    if status not in _RANK:
        raise InvalidTransition(f"unknown command status {status!r}; one of {', '.join(STATUSES)}")


def may_advance(current: str, new: str) -> bool:
    """Whether a command in ``current`` may move to ``new``: forward only, never out of a final
    status, never to the same status again."""
    _known(current)
    _known(new)
    return current not in FINAL and _RANK[new] > _RANK[current]


def check_transition(current: str, new: str) -> None:
    """Raise :class:`InvalidTransition` unless ``current → new`` is allowed."""
    if not may_advance(current, new):
        raise InvalidTransition(f"a {current} command cannot become {new}")


def predecessors(status: str) -> tuple[str, ...]:
    """The statuses from which ``status`` may be reached (the WHERE of a conditional UPDATE)."""
    return tuple(current for current in STATUSES if may_advance(current, status))


def is_due(status: str, expires_at: datetime, now: datetime) -> bool:
    """Whether a command in ``status`` with that expiry should now become ``expired``."""
    return may_advance(status, "expired") and expires_at <= now
