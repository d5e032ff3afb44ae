"""Who is calling, and what they may do: bearer tokens for REST, Socket.IO and WebSockets.

Routes see only :class:`Authenticator`, :class:`Principal` and the decorators:

- ``@requires_auth``: any authenticated user (401 otherwise);
- ``@requires_auth(role="operator")`` or ``@requires_role("operator")``: that role or a
  higher one (``viewer`` < ``operator`` < ``admin``; 403 otherwise).

Object-level checks (a device of an application the caller may not see answers 404)
use :meth:`Principal.may_see`; :mod:`api.access` has the helpers for devices.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, overload

from pydantic import SecretStr
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from api.errors import Forbidden, Unauthorized
from api.rooms import Room
from api.tokens import ROLES, AccessTokens

__all__ = [
    "AUTH_ATTRIBUTE",
    "ROLES",
    "Authenticator",
    "DevTokenAuthenticator",
    "JwtAuthenticator",
    "Principal",
    "authenticator_of",
    "bearer_token",
    "principal_of",
    "requires_auth",
    "requires_role",
    "websocket_token",
]

Endpoint = Callable[[Request], Awaitable[Response]]

# Set on every guarded endpoint: the least role it needs. /openapi.json and the
# security tests read it from the route table.
AUTH_ATTRIBUTE = "__webscada_role__"
_RANK = {role: rank for rank, role in enumerate(ROLES)}


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: a user name, its role(s) and the applications granted to it."""

    subject: str
    roles: frozenset[str]
    applications: frozenset[str] = field(default_factory=frozenset)

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    @property
    def role(self) -> str:
        """The highest role held."""
        return max(self.roles, key=lambda r: _RANK.get(r, -1), default="viewer")

    def has_role(self, role: str) -> bool:
        """Whether the caller holds ``role`` or a higher one."""
        need = _RANK[role]
        return any(_RANK.get(held, -1) >= need for held in self.roles)

    def may_see(self, application_id: str | None) -> bool:
        """Whether objects of ``application_id`` are visible; admins see all, including
        objects of no application."""
        if self.is_admin:
            return True
        return application_id is not None and application_id in self.applications


class Authenticator(Protocol):
    def authenticate(self, token: str | None) -> Principal | None:
        """The caller owning ``token``, or None when it is missing or invalid."""

    def may_join(self, principal: Principal, room: Room) -> bool:
        """Whether ``principal`` may receive the events of ``room`` as far as the room's
        name tells; a ``device:`` room also needs the device to be visible (checked
        against PostgreSQL by :mod:`api.access`)."""


def _may_join(principal: Principal, room: Room) -> bool:
    if room.kind == "application":
        return principal.may_see(room.ident)
    if room.kind == "device":
        return True
    return principal.is_admin  # alarms and system span every application


class JwtAuthenticator:
    """Accepts the API's own access tokens (:class:`api.tokens.AccessTokens`)."""

    def __init__(self, tokens: AccessTokens) -> None:
        self.tokens = tokens

    def authenticate(self, token: str | None) -> Principal | None:
        if not token:
            return None
        claims = self.tokens.verify(token)
        if claims is None:
            return None
        return Principal(claims.subject, frozenset({claims.role}), claims.applications)

    def may_join(self, principal: Principal, room: Room) -> bool:
        return _may_join(principal, room)

    def expires_at(self, token: str) -> float | None:
        """When a valid ``token`` expires (epoch seconds); long-lived connections end then."""
        claims = self.tokens.verify(token)
        return float(claims.expires_at) if claims else None


class DevTokenAuthenticator:
    """One shared token whose holder is an admin. Never used by the app unless passed
    explicitly to ``create_app(authenticator=...)``: a test double, not a login."""

    def __init__(self, token: SecretStr) -> None:
        self._token = token.get_secret_value().encode()

    def authenticate(self, token: str | None) -> Principal | None:
        if not token:
            return None
        if not hmac.compare_digest(token.encode(), self._token):
            return None
        return Principal("dev", frozenset({"admin"}))

    def may_join(self, principal: Principal, room: Room) -> bool:
        return _may_join(principal, room)


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


def _guard(endpoint: Endpoint, role: str) -> Endpoint:
    if role not in _RANK:
        raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")

    @functools.wraps(endpoint)
    async def guarded(request: Request) -> Response:
        principal = authenticator_of(request).authenticate(bearer_token(request.headers))
        if principal is None:
            raise Unauthorized(
                "unauthorized", "send a valid token as 'Authorization: Bearer <token>'"
            )
        standing = getattr(request.app.state, "user_standing", None)
        if standing is not None and not await standing.allows(principal.subject):
            raise Unauthorized("unauthorized", "the token's user was removed or disabled")
        if not principal.has_role(role):
            raise Forbidden("forbidden", f"this needs the role {role!r} or higher")
        request.state.principal = principal
        return await endpoint(request)

    setattr(guarded, AUTH_ATTRIBUTE, role)
    return guarded


@overload
def requires_auth(endpoint: Endpoint, /) -> Endpoint: ...
@overload
def requires_auth(*, role: str = "viewer") -> Callable[[Endpoint], Endpoint]: ...


def requires_auth(
    endpoint: Endpoint | None = None, /, *, role: str = "viewer"
) -> Endpoint | Callable[[Endpoint], Endpoint]:
    """401 unless the request carries a valid bearer token; 403 unless its user holds
    ``role`` or higher. Use bare (any user) or as ``@requires_auth(role="operator")``."""
    if endpoint is not None:
        return _guard(endpoint, role)
    return lambda inner: _guard(inner, role)


def requires_role(role: str) -> Callable[[Endpoint], Endpoint]:
    """Same as ``requires_auth(role=role)``."""
    return requires_auth(role=role)
