"""The API's exceptions and the handlers that turn every error into JSON.

Every error answer has the shape ``{"error": "<short message>", "detail": <anything>}``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

__all__ = [
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
]

log = logging.getLogger(__name__)


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
    status_code: int, error: str, detail: Any = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code, headers=headers)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    headers: dict[str, str] | None = None
    if isinstance(exc, Unauthorized):
        headers = {"WWW-Authenticate": "Bearer"}
    elif isinstance(exc, TooManyRequests):
        headers = {"Retry-After": str(exc.retry_after_s)}
    return error_response(exc.status_code, exc.error, exc.detail, headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    return error_response(exc.status_code, exc.detail, None, exc.headers)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal server error", type(exc).__name__)


def exception_handlers() -> dict[Any, Any]:
    """Starlette ``exception_handlers`` mapping: JSON errors everywhere."""
    return {ApiError: _api_error, HTTPException: _http_error, Exception: _unexpected}
