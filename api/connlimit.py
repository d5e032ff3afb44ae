"""How many long-lived connections (``/ws/topics`` and Socket.IO together) one user holds.

Counted per API process: behind several processes a user may hold this many in each.
"""

from __future__ import annotations

from collections import Counter

__all__ = ["ConnectionLimiter"]


class ConnectionLimiter:
    """At most ``per_user`` open connections per user name; used from one event loop."""

    def __init__(self, per_user: int) -> None:
        if per_user < 1:
            raise ValueError(f"per_user must be at least 1, got {per_user}")
        self.per_user = per_user
        self._open: Counter[str] = Counter()

    def acquire(self, subject: str) -> bool:
        """Count one more connection of ``subject``; False (nothing counted) at the limit."""
        if self._open[subject] >= self.per_user:
            return False
        self._open[subject] += 1
        return True

    def release(self, subject: str) -> None:
        """One connection of ``subject`` ended."""
        if self._open[subject] <= 1:
            self._open.pop(subject, None)
        else:
            self._open[subject] -= 1

    def held(self, subject: str) -> int:
        return self._open[subject]
