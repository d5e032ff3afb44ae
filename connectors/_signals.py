"""Run a callback on SIGINT/SIGTERM for the life of a ``with`` block."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["on_stop_signals"]

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def on_stop_signals(callback: Callable[[], None]) -> Iterator[None]:
    """Call ``callback`` on SIGINT or SIGTERM; restore the old handlers afterwards.

    Outside the main thread (where Python cannot install handlers) this does
    nothing, so in-process tests can run a connector's ``main`` on a thread.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        callback()

    previous = {sig: signal.signal(sig, handler) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
