"""uvicorn's HTTP protocol with the timeouts it lacks: slow headers and slow bodies.

uvicorn closes an idle keep-alive connection (``timeout_keep_alive``), but waits
forever for the rest of a request whose first bytes have arrived, and keeps
reading (and discarding) a body after the answer has been sent. A client could so
hold connections open with a byte now and then. :func:`guarded_http_protocol`
returns a protocol class that closes the connection when

- a request's headers are not complete ``header_timeout_s`` after the connection
  opened or the request's first byte arrived;
- its body is not complete ``body_timeout_s`` after its headers;
- the answer has been sent before the body was complete (e.g. a 413): the rest is
  not read, and the connection cannot be reused anyway.

WebSocket upgrades leave this protocol, and its timers with it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["GuardedHttpProtocol", "guarded_http_protocol"]


class GuardedHttpProtocol(HttpToolsProtocol):
    """See the module; the timeouts are class attributes set by :func:`guarded_http_protocol`."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.logger.info("closing a connection whose request was too slow to arrive")
            self.transport.close()

    # ---- protocol and parser callbacks -----------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm(self.header_timeout_s)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
        if not (self.parser.should_upgrade() and self._should_upgrade()):
            self._arm(self.body_timeout_s)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        self._disarm()
        super().handle_websocket_upgrade()

    def on_response_complete(self) -> None:
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not self.transport.is_closing():
            # Answered before the body was complete: do not read (and drop) the rest.
            self._disarm()
            self.transport.close()
        super().on_response_complete()


def guarded_http_protocol(header_timeout_s: float, body_timeout_s: float) -> type[GuardedHttpProtocol]:
    """A :class:`GuardedHttpProtocol` subclass with these timeouts, for ``uvicorn.Config(http=...)``."""
    return type(
        "GuardedHttpProtocol",
        (GuardedHttpProtocol,),
        {"header_timeout_s": header_timeout_s, "body_timeout_s": body_timeout_s},
    )
