"""``POST /api/auth/token`` (password login), ``POST /api/auth/refresh``, ``GET /api/auth/me``.

Attempts are counted and decided in Redis in one step before the password is
checked (:func:`api.ratelimit.login_attempt`): per client address, per (user,
address) pair, and per user over all addresses (exponential delay, then a
ceiling, both waived for addresses the user has logged in from). Past a limit
the answer is ``429`` with ``Retry-After``. A successful login refunds its
attempt and clears the pair's counter. The password is checked in the hashing
pool off the event loop; when that pool is full the answer is ``503``.

Bodies (JSON or a form, at most :data:`MAX_BODY_BYTES`) are read by
:mod:`api.jsonbody`, counted as they stream in, so a client cannot make the API
hold a large body of a route anyone may call.
"""

from __future__ import annotations

import asyncio
import logging

import psycopg
import redis.exceptions
from psycopg_pool import PoolTimeout
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api import ratelimit
from api.auth import principal_of, requires_auth
from api.config import ApiConfig
from api.errors import InvalidField, ServiceUnavailable, TooManyRequests, Unauthorized
from api.jsonbody import json_object
from api.openapi import describe
from api.passwords import HashingBusy
from api.services import services_of
from api.tokens import AccessTokens
from api.users import User, UserStore

__all__ = ["MAX_BODY_BYTES", "login_routes"]

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4096
_TOKEN = {
    "type": "object",
    "required": ["access_token", "token_type", "expires_in", "refresh_token"],
    "properties": {
        "access_token": {"type": "string"}, "token_type": {"type": "string", "enum": ["bearer"]},
        "expires_in": {"type": "integer"}, "refresh_token": {"type": "string"},
    },
}
_LOGIN_ERRORS = (400, 401, 413, 415, 422, 429, 503)
_REFUSALS = {
    "address": "too many failed attempts from this address",
    "user-address": "too many failed attempts for this user from this address",
    "user": "too many failed attempts for this user",
    "user-delay": "failed attempts for this user are being slowed down",
}


async def _credentials(request: Request, fields: tuple[str, ...]) -> dict[str, str]:
    """The named string fields of a JSON or form-encoded body (:mod:`api.jsonbody`)."""
    data = await json_object(request, limit=MAX_BODY_BYTES, form=True)
    out: dict[str, str] = {}
    for name in fields:
        value = data.get(name)
        if not isinstance(value, str) or not value:
            raise InvalidField(name, None, "required, a non-empty string")
        if len(value) > 1024:
            raise InvalidField(name, None, "at most 1024 characters")
        out[name] = value
    return out


def _address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _refused(verdict: ratelimit.Verdict) -> TooManyRequests:
    reason = _REFUSALS.get(verdict.refused_by or "", "too many failed attempts")
    return TooManyRequests(reason, verdict.retry_after_s, f"try again in {verdict.retry_after_s} s")


async def _token_answer(request: Request, user: User, refresh_token: str) -> Response:
    tokens: AccessTokens = request.app.state.tokens
    access = tokens.issue(user.username, user.role, user.applications)
    return JSONResponse(
        {
            "access_token": access,
            "token_type": "bearer",
            "expires_in": tokens.ttl_s,
            "refresh_token": refresh_token,
        },
    )  # Cache-Control: no-store, as every /api/ answer (api.hygiene)


def _guarded_by_services(method: str, path: str, exc: Exception) -> ServiceUnavailable:
    log.warning("%s %s: a store is unavailable: %s", method, path, exc)
    return ServiceUnavailable("store unavailable", str(exc))


_STORE_ERRORS = (
    PoolTimeout, psycopg.OperationalError,
    redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
)


@describe(
    body={"type": "object", "required": ["username", "password"],
          "properties": {"username": {"type": "string"}, "password": {"type": "string"}}},
    response=_TOKEN, errors=_LOGIN_ERRORS,
)
async def issue_token(request: Request) -> Response:
    """Log in with a user name and password (JSON or form) and get an access and a refresh token."""
    given = await _credentials(request, ("username", "password"))
    config: ApiConfig = request.app.state.api_config
    users: UserStore = request.app.state.users
    redis = services_of(request).redis
    name, address, limits = given["username"][:64], _address(request), config.login_limits
    try:
        verdict = await ratelimit.login_attempt(redis, name, address, limits)
        if not verdict.allowed:
            raise _refused(verdict)
        try:
            user = await users.check_password(given["username"], given["password"])
        except BaseException:  # not evaluated (a store, the pool, the client gone): refund it
            await asyncio.shield(ratelimit.login_not_evaluated(redis, name, address))
            raise
        if user is None:
            raise Unauthorized("invalid credentials", "wrong user name or password")
        await ratelimit.login_succeeded(redis, name, address, limits)
        refresh = await users.issue_refresh(user, config.refresh_token_ttl_s)
    except HashingBusy as exc:
        raise ServiceUnavailable("busy", "too many logins are being checked; try again shortly") \
            from exc
    except _STORE_ERRORS as exc:
        raise _guarded_by_services("POST", "/api/auth/token", exc) from exc
    return await _token_answer(request, user, refresh)


@describe(
    body={"type": "object", "required": ["refresh_token"],
          "properties": {"refresh_token": {"type": "string"}}},
    response=_TOKEN, errors=_LOGIN_ERRORS,
)
async def refresh_token(request: Request) -> Response:
    """Trade a refresh token (used once) for a new access token and a new refresh token."""
    given = await _credentials(request, ("refresh_token",))
    config: ApiConfig = request.app.state.api_config
    users: UserStore = request.app.state.users
    redis = services_of(request).redis
    key = f"refresh:addr:{_address(request)}"
    try:
        verdict = await ratelimit.attempt(redis, [(key, config.login_limit_per_address)],
                                          window_s=config.login_window_s)
        if not verdict.allowed:
            raise _refused(verdict)
        try:
            rotated = await users.rotate_refresh(given["refresh_token"], config.refresh_token_ttl_s)
        except BaseException:
            await asyncio.shield(ratelimit.refund(redis, [key]))
            raise
        if rotated is None:
            raise Unauthorized("invalid refresh token", "log in again")
        await ratelimit.refund(redis, [key])
    except _STORE_ERRORS as exc:
        raise _guarded_by_services("POST", "/api/auth/refresh", exc) from exc
    user, successor = rotated
    return await _token_answer(request, user, successor)


@describe(
    response={"type": "object", "required": ["username", "role", "applications"],
              "properties": {"username": {"type": "string"}, "role": {"type": "string"},
                             "applications": {"type": "array", "items": {"type": "string"}},
                             "all_applications": {"type": "boolean"}}},
    errors=(401, 403),
)
@requires_auth
async def who_am_i(request: Request) -> Response:
    """The caller: user name, role and the applications it may see (admins: all)."""
    principal = principal_of(request)
    return JSONResponse(
        {
            "username": principal.subject,
            "role": principal.role,
            "applications": sorted(principal.applications),
            "all_applications": principal.is_admin,
        }
    )


def login_routes() -> list[Route]:
    return [
        Route("/api/auth/token", issue_token, methods=["POST"]),
        Route("/api/auth/refresh", refresh_token, methods=["POST"]),
        Route("/api/auth/me", who_am_i, methods=["GET"]),
    ]
