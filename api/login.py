"""``POST /api/auth/token`` (password login), ``POST /api/auth/refresh``, ``GET /api/auth/me``.

Failed attempts are counted in Redis per client address and per user name; past
the limit the answer is ``429`` with ``Retry-After`` until the window ends. A
successful login clears the user's counter.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import parse_qsl

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
from api.openapi import describe
from api.services import services_of
from api.tokens import AccessTokens
from api.users import User, UserStore

__all__ = ["MAX_BODY_BYTES", "login_routes"]

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4096
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_TOKEN = {
    "type": "object",
    "required": ["access_token", "token_type", "expires_in", "refresh_token"],
    "properties": {
        "access_token": {"type": "string"}, "token_type": {"type": "string", "enum": ["bearer"]},
        "expires_in": {"type": "integer"}, "refresh_token": {"type": "string"},
    },
}
_LOGIN_ERRORS = (401, 422, 429, 503)


async def _credentials(request: Request, fields: tuple[str, ...]) -> dict[str, str]:
    """The named string fields of a JSON or form-encoded body."""
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise InvalidField("body", f"{len(body)} bytes", f"at most {MAX_BODY_BYTES} bytes")
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    data: Any
    if kind == "application/x-www-form-urlencoded":
        data = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    else:
        try:
            data = json.loads(body or b"null")
        except (ValueError, UnicodeDecodeError):
            raise InvalidField("body", None, "expected a JSON object or a form") from None
    if not isinstance(data, dict):
        raise InvalidField("body", None, f"expected an object with {', '.join(fields)}")
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


async def _check_limits(request: Request, keys: list[tuple[str, int]]) -> None:
    client = services_of(request).redis
    for key, limit in keys:
        result = await ratelimit.peek(client, key, limit=limit)
        if not result.allowed:
            raise TooManyRequests(
                "too many failed attempts", result.retry_after_s,
                f"try again in {result.retry_after_s} s",
            )


async def _count_failure(request: Request, keys: list[tuple[str, int]], window_s: int) -> None:
    client = services_of(request).redis
    for key, limit in keys:
        await ratelimit.hit(client, key, limit=limit, window_s=window_s)


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
        headers=_NO_STORE,
    )


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
    keys = [
        (f"login:addr:{_address(request)}", config.login_limit_per_address),
        (f"login:user:{given['username'][:64]}", config.login_limit_per_user),
    ]
    try:
        await _check_limits(request, keys)
        user = await users.check_password(given["username"], given["password"])
        if user is None:
            await _count_failure(request, keys, config.login_window_s)
            raise Unauthorized("invalid credentials", "wrong user name or password")
        await ratelimit.reset(services_of(request).redis, keys[1][0])
        refresh = await users.issue_refresh(user, config.refresh_token_ttl_s)
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
    keys = [(f"refresh:addr:{_address(request)}", config.login_limit_per_address)]
    try:
        await _check_limits(request, keys)
        rotated = await users.rotate_refresh(given["refresh_token"], config.refresh_token_ttl_s)
        if rotated is None:
            await _count_failure(request, keys, config.login_window_s)
            raise Unauthorized("invalid refresh token", "log in again")
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
