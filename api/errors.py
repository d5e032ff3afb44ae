"""The API's exceptions and the handlers that turn every error into JSON.

Every error answer has the shape ``{"error": "<short message>", "detail": <anything>}``.
A 5xx answer says nothing about what went wrong inside: ``{"error": "internal error"}``
(500) or the unavailable service (``"PostgreSQL unavailable"``, 503), a generic
``detail`` and the ``request_id`` of the log line that has the details
(:mod:`api.hygiene` gives every request its id).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response

__all__ = [
    "INTERNAL_ERROR",
    "REQUEST_ID_KEY",
    "ApiError",
    "BadRequest",
    "Forbidden",
    "InvalidField",
    "NotFound",
    "ServiceUnavailable",
    "TooManyRequests",
    "Unauthorized",
    "error_response",
    "exception_handlers",
    "request_id_of",
    "server_error_body",
]

log = logging.getLogger(__name__)

#: Where :mod:`api.hygiene` keeps a request's id in the ASGI scope.
REQUEST_ID_KEY = "webscada.request_id"
INTERNAL_ERROR = "internal error"
_UNAVAILABLE = "temporarily unavailable; try again later"


def request_id_of(conn: HTTPConnection) -> str | None:
    """The id :mod:`api.hygiene` gave this request (None outside that middleware)."""
    found = conn.scope.get(REQUEST_ID_KEY)
    return found if isinstance(found, str) else None


def server_error_body(status_code: int, error: str, request_id: str | None) -> dict[str, Any]:
    """The whole body of a 5xx answer: no exception class, no internal text."""
    if status_code == 503:  # which service is away (a fixed label) is worth knowing
        return {"error": error, "detail": _UNAVAILABLE, "request_id": request_id}
    return {"error": INTERNAL_ERROR if status_code == 500 else error, "detail": INTERNAL_ERROR,
            "request_id": request_id}


class ApiError(Exception):
    """Base of the errors a route raises to answer with a JSON error."""

    status_code = 500

    def __init__(self, error: str, detail: Any = None) -> None:
        super().__init__(error)
        self.error = error
        self.detail = detail


class Unauthorized(ApiError):
    status_code = 401


class BadRequest(ApiError):
    status_code = 400


class Forbidden(ApiError):
    """Authenticated, but the role does not allow this."""

    status_code = 403


class NotFound(ApiError):
    status_code = 404


class TooManyRequests(ApiError):
    """Rate limited; the answer carries ``Retry-After``."""

    status_code = 429

    def __init__(self, error: str, retry_after_s: int, detail: Any = None) -> None:
        super().__init__(error, detail)
        self.retry_after_s = retry_after_s


class InvalidField(ApiError):
    """A path or query value that breaks the contract; the answer names the field."""

    status_code = 422

    def __init__(self, field: str, value: object, message: str) -> None:
        super().__init__(
            f"invalid {field}", {"field": field, "value": value, "message": message}
        )


class ServiceUnavailable(ApiError):
    status_code = 503


def error_response(
    status_code: int, error: str, detail: Any = None, headers: Mapping[str, str] | None = None,
    *, conn: HTTPConnection | None = None,
) -> JSONResponse:
    """The JSON error answer; for a 5xx the generic body, ``detail`` going to the log
    with the request's id instead (``conn``: the request, for its id and path)."""
    if status_code < 500:
        return JSONResponse({"error": error, "detail": detail}, status_code, headers=headers)
    request_id = request_id_of(conn) if conn is not None else None
    where = f"{conn.scope.get('method', 'WS')} {conn.url.path}" if conn is not None else "?"
    # a service away (503) is expected now and then, and may come at every request meanwhile
    level = logging.INFO if status_code == 503 else logging.ERROR
    log.log(level, "request %s: %s answered %d %s: %s", request_id, where, status_code, error, detail)
    return JSONResponse(server_error_body(status_code, error, request_id), status_code,
                        headers=headers)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    headers: dict[str, str] | None = None
    if isinstance(exc, Unauthorized):
        headers = {"WWW-Authenticate": "Bearer"}
    elif isinstance(exc, TooManyRequests):
        headers = {"Retry-After": str(exc.retry_after_s)}
    return error_response(exc.status_code, exc.error, exc.detail, headers, conn=request)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    return error_response(exc.status_code, exc.detail, None, exc.headers, conn=request)


async def _unexpected(request: Request, exc: Exception) -> Response:
    """Starlette re-raises the exception after this answer: :mod:`api.hygiene` logs it
    (traceback and request id); without that middleware, this logs it."""
    request_id = request_id_of(request)
    if request_id is None:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(server_error_body(500, INTERNAL_ERROR, request_id), 500)


def exception_handlers() -> dict[Any, Any]:
    """Starlette ``exception_handlers`` mapping: JSON errors everywhere."""
    return {ApiError: _api_error, HTTPException: _http_error, Exception: _unexpected}
