"""User administration over REST, for admins: ``GET|POST /api/users``,
``POST /api/users/{username}/applications`` (the CLI ``webscada user`` does the same)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api.auth import requires_auth
from api.errors import InvalidField, NotFound
from api.jsonbody import json_object
from api.openapi import describe
from api.passwords import PasswordError
from api.tokens import ROLES
from api.users import User, UserError, UserStore

__all__ = ["user_admin_routes"]

_USER = {
    "type": "object",
    "required": ["username", "role", "applications"],
    "properties": {
        "username": {"type": "string"},
        "role": {"type": "string", "enum": list(ROLES)},
        "applications": {"type": "array", "items": {"type": "string"}},
    },
}


def _json(user: User) -> dict[str, object]:
    return {"username": user.username, "role": user.role,
            "applications": sorted(user.applications)}


def _string(data: dict[str, object], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidField(name, value, "required, a non-empty string")
    return value


@describe(response={"type": "array", "items": _USER})
@requires_auth(role="admin")
async def list_users(request: Request) -> Response:
    """Every user with role and granted applications."""
    users: UserStore = request.app.state.users
    return JSONResponse([_json(user) for user in await users.list_all()])


@describe(
    status=201, response=_USER,
    body={"type": "object", "required": ["username", "password", "role"],
          "properties": {"username": {"type": "string"}, "password": {"type": "string"},
                         "role": {"type": "string", "enum": list(ROLES)}}},
)
@requires_auth(role="admin")
async def add_user(request: Request) -> Response:
    """Create a user."""
    data = await json_object(request)
    users: UserStore = request.app.state.users
    role = _string(data, "role")
    if role not in ROLES:
        raise InvalidField("role", role, f"one of {', '.join(ROLES)}")
    try:
        user = await users.add(_string(data, "username"), _string(data, "password"), role)
    except PasswordError as exc:
        raise InvalidField("password", None, str(exc)) from None
    except UserError as exc:
        raise InvalidField("username", data.get("username"), str(exc)) from None
    return JSONResponse(_json(user), status_code=201)


@describe(
    response=_USER,
    body={"type": "object", "required": ["application_id"],
          "properties": {"application_id": {"type": "string"}}},
)
@requires_auth(role="admin")
async def grant_application(request: Request) -> Response:
    """Let a user see an application."""
    username = request.path_params["username"]
    data = await json_object(request)
    users: UserStore = request.app.state.users
    if await users.get(username) is None:
        raise NotFound("no such user", f"user {username} does not exist")
    application_id = _string(data, "application_id")
    try:
        await users.grant(username, application_id)
    except UserError as exc:
        raise InvalidField("application_id", application_id, str(exc)) from None
    user = await users.get(username)
    assert user is not None
    return JSONResponse(_json(user))


def user_admin_routes() -> list[Route]:
    return [
        Route("/api/users", list_users, methods=["GET"]),
        Route("/api/users", add_user, methods=["POST"]),
        Route("/api/users/{username}/applications", grant_application, methods=["POST"]),
    ]
