"""uvicorn's HTTP protocol with the timeouts it lacks: slow headers and slow bodies.

uvicorn closes an idle keep-alive connection (``timeout_keep_alive``), but waits
forever for the rest of a request whose first bytes have arrived, and keeps
reading (and discarding) a body after the answer has been sent. A client could so
hold connections open with a byte now and then. :func:`guarded_http_protocol`
returns a protocol class that closes the connection when

- a request's headers are not complete ``header_timeout_s`` after the connection
  opened or the request's first byte arrived;
- its body is not complete ``body_timeout_s`` after its headers;
- the answer has been sent before the body was complete (e.g. a 413) and the rest
  is large or of unknown size: the connection is closed *gracefully*. Our side is
  shut for writing (the client reads the answer, then end-of-file, and does not
  reuse the connection), what still arrives is read and dropped for at most
  ``linger_s`` and ``LINGER_LIMIT`` bytes (then reading stops, so a client
  cannot make us read a huge body), then the socket is closed. Closing at once with unread bytes
  would make the kernel answer with a reset, which can destroy the answer before
  the client read it. A small remainder (up to ``DISCARD_LIMIT`` bytes, declared
  by ``Content-Length``) is read and dropped and the connection kept, as uvicorn
  does, still within the body timeout.

WebSocket upgrades leave this protocol, and its timers with it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["GuardedHttpProtocol", "guarded_http_protocol"]


#: The most of a body answered early that is still read (and dropped) to keep the connection.
DISCARD_LIMIT = 64 * 1024
#: The most read (and dropped) while a connection lingers before closing; then reading stops.
LINGER_LIMIT = 1024 * 1024


class GuardedHttpProtocol(HttpToolsProtocol):
    """See the module; the timeouts are class attributes set by :func:`guarded_http_protocol`."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    linger_s: float = 2.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._body_declared: int | None = None  # Content-Length of the current request
        self._body_seen = 0
        self._lingering = False  # shut for writing: drop what arrives until closed
        self._lingered = 0  # bytes dropped since

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
            if not self._lingering:
                self.logger.info("closing a connection whose request was too slow to arrive")
            self.transport.close()

    def _linger_then_close(self) -> None:
        """Shut our side for writing, drop what the client still sends, close after ``linger_s``."""
        self._lingering = True
        self.flow.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._arm(self.linger_s)

    # ---- protocol and parser callbacks -----------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:  # the answer is out and the connection is ending: drop it,
            self._lingered += len(data)
            if self._lingered > LINGER_LIMIT:  # but not all of a huge body: let TCP stop it
                self.transport.pause_reading()
            return
        super().data_received(data)

    def eof_received(self) -> None:
        if self._lingering:
            self._disarm()
            self.transport.close()
            return
        super().eof_received()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._body_declared, self._body_seen = None, 0
        self._arm(self.header_timeout_s)

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        if name.lower() == b"content-length" and value.strip().isdigit():
            self._body_declared = int(value)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
        if not (self.parser.should_upgrade() and self._should_upgrade()):
            self._arm(self.body_timeout_s)

    def on_body(self, body: bytes) -> None:
        self._body_seen += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        self._disarm()
        super().handle_websocket_upgrade()

    def on_response_complete(self) -> None:
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not self.transport.is_closing():
            # Answered before the body was complete (the body timer still runs).
            declared = self._body_declared
            if declared is None or declared - self._body_seen > DISCARD_LIMIT:
                super().on_response_complete()
                self._linger_then_close()
                return
        super().on_response_complete()


def guarded_http_protocol(header_timeout_s: float, body_timeout_s: float) -> type[GuardedHttpProtocol]:
    """A :class:`GuardedHttpProtocol` subclass with these timeouts, for ``uvicorn.Config(http=...)``."""
    return type(
        "GuardedHttpProtocol",
        (GuardedHttpProtocol,),
        {"header_timeout_s": header_timeout_s, "body_timeout_s": body_timeout_s},
    )
