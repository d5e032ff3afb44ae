"""Response hygiene for every HTTP answer of the API, in one pure ASGI middleware.

:class:`ResponseHygiene` wraps the whole app (REST, dashboard, static files,
Socket.IO's polling) and only touches the answer's start and, for a 5xx, its body:

- every answer: ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer``
  and ``X-Request-ID`` (an id made here for each request, also in the log lines
  of its errors);
- HTML answers (``/`` and ``/static/*.html``): the dashboard's
  ``Content-Security-Policy`` (own origin only, ``frame-ancestors 'none'``) and
  ``X-Frame-Options: DENY``;
- ``/api/`` answers that set no ``Cache-Control``: ``Cache-Control: no-store`` (and
  ``Pragma: no-cache``), so
  tokens (login, refresh), device API keys (creation, rotation) and per-user data
  are kept by no cache;
- redirects: a ``Location`` naming the host the client sent in ``Host`` becomes
  relative, so a forged ``Host`` is never echoed (Starlette's trailing-slash
  redirect, e.g. ``/static``, builds an absolute URL from it);
- 5xx: a body that does not carry this request's id (as
  :func:`api.errors.server_error_body` and ``/health``'s report do) is replaced by
  the generic one (it is logged instead), and an exception that escapes the app
  is logged with the request id and answered by a generic 500.

WebSocket and lifespan traffic passes untouched. The cost is one id and one pass
over the answer's headers per request (measured: docs/design.md, "Response hygiene").
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import REQUEST_ID_KEY, server_error_body

__all__ = ["CONTENT_SECURITY_POLICY", "ResponseHygiene"]

log = logging.getLogger(__name__)

#: The dashboard loads nothing from elsewhere and may not be framed; browsers enforce it.
CONTENT_SECURITY_POLICY = "default-src 'self'; connect-src 'self'; frame-ancestors 'none'"

_ALWAYS = ((b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"))
_HTML = ((b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
         (b"x-frame-options", b"DENY"))
_NO_STORE = ((b"cache-control", b"no-store"), (b"pragma", b"no-cache"))  # RFC 6749 5.1
_OURS = frozenset({b"x-content-type-options", b"referrer-policy", b"x-request-id"})


def _relative(location: bytes, host: bytes) -> bytes:
    """``location`` without scheme and authority when they name ``host`` (the echo)."""
    scheme, sep, rest = location.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        return location
    authority, slash, path = rest.partition(b"/")
    if authority.lower() != host.lower():
        return location
    return slash + path if slash else b"/"


def _headers(raw: Iterable[tuple[bytes, bytes]], request_id: bytes, *, api: bool,
             redirect: bool, host: bytes | None) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    html = cached = has_policy = False
    for name, value in raw:
        lowered = name.lower()
        if lowered == b"content-type":
            html = value[:9].lower() == b"text/html"
        elif lowered == b"cache-control":
            cached = True
        elif lowered == b"content-security-policy":
            has_policy = True
        elif lowered == b"location" and redirect and host:
            value = _relative(value, host)
        elif lowered in _OURS:
            continue
        out.append((name, value))
    out.extend(_ALWAYS)
    out.append((b"x-request-id", request_id))
    if html:
        out.extend(h for h in _HTML if not (has_policy and h[0] == b"content-security-policy"))
    if api and not cached:
        out.extend(_NO_STORE)
    return out


def _host(scope: Scope) -> bytes | None:
    for name, value in scope.get("headers", ()):
        if name == b"host":
            return bytes(value)
    return None


def _generic(start: Message, request_id: str) -> tuple[Message, bytes]:
    """A 5xx answer's start and body with the generic body (other headers kept)."""
    body = json.dumps(server_error_body(start["status"], _label(start), request_id)).encode()
    headers = [(n, v) for n, v in start["headers"]
               if n.lower() not in (b"content-type", b"content-length")]
    headers += [(b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode())]
    return {**start, "headers": headers}, body


def _label(start: Message) -> str:
    return "service unavailable" if start["status"] == 503 else "internal error"


class ResponseHygiene:
    """The middleware (see the module); ``app`` is the wrapped application."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = secrets.token_hex(8)
        scope[REQUEST_ID_KEY] = request_id
        rid = request_id.encode()
        api = scope["path"].startswith("/api/")
        started = finished = False
        held: Message | None = None  # a 5xx start, sent once its body is known
        held_body: list[bytes] = []

        async def send_checked(message: Message) -> None:
            nonlocal started, finished, held
            kind = message["type"]
            if kind == "http.response.start":
                started = True
                status = message["status"]
                message = {**message, "headers": _headers(
                    message.get("headers", ()), rid, api=api, redirect=300 <= status < 400,
                    host=_host(scope) if 300 <= status < 400 else None)}
                if status >= 500:
                    held = message
                    return
            elif kind == "http.response.body" and held is not None:
                held_body.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                start, body = held, b"".join(held_body)
                held = None
                if rid not in body:  # not our generic body: log what it said, send that instead
                    log.error("request %s: %s %s answered %d: %r", request_id, scope.get("method"),
                              scope["path"], start["status"], body[:500])
                    start, body = _generic(start, request_id)
                await send(start)
                message = {"type": "http.response.body", "body": body}
            if kind == "http.response.body" and not message.get("more_body", False):
                finished = True
            await send(message)

        try:
            await self.app(scope, receive, send_checked)
        except Exception as exc:
            log.error("request %s: unhandled error on %s %s", request_id, scope.get("method"),
                      scope["path"], exc_info=exc)
            if finished:
                return  # the answer (Starlette's generic 500) is out already
            if started and held is None:
                raise  # half an answer is out: only the server can end the connection
            start, body = _generic({"type": "http.response.start", "status": 500,
                                    "headers": _headers((), rid, api=api, redirect=False, host=None)},
                                   request_id)
            await send(start)
            await send({"type": "http.response.body", "body": body})
