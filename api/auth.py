"""Who is calling: bearer-token authentication for REST, Socket.IO and WebSockets.

For now a single development token (``settings.dev_token``) is accepted. The
rest of the API only sees :class:`Authenticator` and :class:`Principal`, so a
JWT implementation with users and roles can replace :class:`DevTokenAuthenticator`
without touching the routes.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from pydantic import SecretStr
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from api.errors import Unauthorized
from api.rooms import Room

__all__ = [
    "Authenticator",
    "DevTokenAuthenticator",
    "Principal",
    "authenticator_of",
    "bearer_token",
    "principal_of",
    "requires_auth",
    "websocket_token",
]

Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller."""

    subject: str
    roles: frozenset[str]


class Authenticator(Protocol):
    def authenticate(self, token: str | None) -> Principal | None:
        """The caller owning ``token``, or None when it is missing or invalid."""

    def may_join(self, principal: Principal, room: Room) -> bool:
        """Whether ``principal`` may receive the events of ``room``."""


class DevTokenAuthenticator:
    """Accepts exactly one shared token; its holder is an admin."""

    def __init__(self, token: SecretStr) -> None:
        self._token = token.get_secret_value().encode()

    def authenticate(self, token: str | None) -> Principal | None:
        if not token:
            return None
        if not hmac.compare_digest(token.encode(), self._token):
            return None
        return Principal("dev", frozenset({"admin"}))

    def may_join(self, principal: Principal, room: Room) -> bool:
        return True


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if any."""
    value = headers.get("authorization")
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def websocket_token(conn: HTTPConnection) -> str | None:
    """A WebSocket's token: the ``token`` query parameter, else the Authorization header."""
    return conn.query_params.get("token") or bearer_token(conn.headers)


def authenticator_of(conn: HTTPConnection) -> Authenticator:
    authenticator: Authenticator = conn.app.state.authenticator
    return authenticator


def principal_of(request: Request) -> Principal:
    """The caller of a route decorated with :func:`requires_auth`."""
    principal: Principal = request.state.principal
    return principal


def requires_auth(endpoint: Endpoint) -> Endpoint:
    """Answer 401 unless the request carries a valid bearer token."""

    @functools.wraps(endpoint)
    async def guarded(request: Request) -> Response:
        principal = authenticator_of(request).authenticate(bearer_token(request.headers))
        if principal is None:
            raise Unauthorized(
                "unauthorized", "send a valid token as 'Authorization: Bearer <token>'"
            )
        request.state.principal = principal
        return await endpoint(request)

    return guarded
