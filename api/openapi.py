"""``GET /openapi.json``, generated from the app's own route table so it cannot drift.

Every ``Route`` becomes an operation: its summary and description are the
endpoint's docstring, its path parameters come from the route's convertors, its
security from :func:`api.auth.requires_auth` (the role it needs), and whatever
the endpoint declares with :func:`describe` (query parameters, request body,
success answer) is added. Routes without a declaration still appear, with
generic answers.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from starlette.convertors import FloatConvertor, IntegerConvertor
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from api.auth import AUTH_ATTRIBUTE

__all__ = ["DESCRIBE_ATTRIBUTE", "describe", "openapi_document", "openapi_route"]

DESCRIBE_ATTRIBUTE = "__webscada_openapi__"
_CONVERTOR = re.compile(r"\{(\w+):\w+\}")
F = TypeVar("F", bound=Callable[..., Any])

_ERROR = {"$ref": "#/components/schemas/Error"}
_ERRORS = {
    "400": "bad request (e.g. an impossible range)",
    "401": "missing or invalid bearer token",
    "403": "the role does not allow this",
    "404": "no such object, or not visible to the caller",
    "413": "the body is too large",
    "415": "the body is not application/json",
    "422": "invalid input; the body names the field",
    "429": "rate limited; see Retry-After",
    "503": "a backing store is unavailable",
}


def describe(
    *,
    query: Sequence[dict[str, Any]] = (),
    body: dict[str, Any] | None = None,
    response: dict[str, Any] | None = None,
    status: int = 200,
    errors: Sequence[int] = (400, 401, 403, 404, 422, 429, 503),
    content_type: str = "application/json",
    other: dict[int, dict[str, Any]] | None = None,
) -> Callable[[F], F]:
    """Declare an endpoint's OpenAPI details: query parameters (OpenAPI parameter
    objects without ``in``), request body schema, success status and schema, the
    error statuses (JSON error body) and ``other`` statuses with a JSON body of
    their own schema."""

    def mark(endpoint: F) -> F:
        setattr(endpoint, DESCRIBE_ATTRIBUTE, {
            "query": list(query), "body": body, "response": response, "status": status,
            "errors": list(errors), "content_type": content_type, "other": dict(other or {}),
        })
        return endpoint

    return mark


def _path_and_parameters(route: Route) -> tuple[str, list[dict[str, Any]]]:
    path = _CONVERTOR.sub(r"{\1}", route.path)  # /x/{id:int} -> /x/{id}
    parameters = []
    for name, convertor in route.param_convertors.items():
        schema: dict[str, Any] = {"type": "string"}
        if isinstance(convertor, IntegerConvertor):
            schema = {"type": "integer", "minimum": 0}
        elif isinstance(convertor, FloatConvertor):
            schema = {"type": "number", "minimum": 0}
        elif name in ("device_id", "application_id"):
            schema = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"}
        parameters.append({"name": name, "in": "path", "required": True, "schema": schema})
    return path, parameters


def _operation(endpoint: Callable[..., Any], path_parameters: list[dict[str, Any]]) -> dict[str, Any]:
    doc = inspect.getdoc(endpoint) or ""
    summary, _, description = doc.partition("\n")
    spec = getattr(endpoint, DESCRIBE_ATTRIBUTE, None) or {
        "query": [], "body": None, "response": None, "status": 200,
        "errors": [400, 401, 403, 404, 413, 415, 422, 429, 503], "content_type": "application/json",
        "other": {},
    }
    role = getattr(endpoint, AUTH_ATTRIBUTE, None)
    operation: dict[str, Any] = {
        "operationId": f"{endpoint.__module__}.{endpoint.__name__}",
        "summary": summary.strip() or endpoint.__name__.replace("_", " "),
        "parameters": path_parameters + [{**q, "in": "query"} for q in spec["query"]],
        "responses": {},
    }
    if description.strip():
        operation["description"] = description.strip()
    if role is not None:
        operation["security"] = [{"bearer": []}]
        operation["x-required-role"] = role
    else:
        operation["security"] = []
    if spec["body"] is not None:
        operation["requestBody"] = {
            "required": True, "content": {"application/json": {"schema": spec["body"]}},
        }
    success = {"description": "success",
               "content": {spec["content_type"]: {"schema": spec["response"] or {}}}}
    operation["responses"][str(spec["status"])] = success
    errors = set(spec["errors"]) | ({401, 403} if role is not None else set())
    if spec["body"] is not None:  # every body goes through api.jsonbody
        errors |= {413, 415, 422}
    for code in sorted(errors):
        operation["responses"][str(code)] = {
            "description": _ERRORS.get(str(code), "error"),
            "content": {"application/json": {"schema": _ERROR}},
        }
    for code, schema in spec["other"].items():
        operation["responses"][str(code)] = {
            "description": _ERRORS.get(str(code), "see the body"),
            "content": {"application/json": {"schema": schema}},
        }
    return operation


def openapi_document(routes: Sequence[BaseRoute], *, title: str, version: str) -> dict[str, Any]:
    """The OpenAPI 3.0 document of every HTTP route in ``routes``."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if not isinstance(route, Route) or not route.include_in_schema:
            continue
        path, parameters = _path_and_parameters(route)
        for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
            paths.setdefault(path, {})[method.lower()] = _operation(route.endpoint, parameters)
    return {
        "openapi": "3.0.3",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}, "detail": {},
                                   "request_id": {"type": "string"}},
                }
            },
        },
    }


def openapi_route(title: str = "WebSCADA Stream", version: str = "0.1.0") -> Route:
    """``GET /openapi.json``, built on first request from the app's routes as they are then."""

    async def openapi(request: Request) -> Response:
        """The OpenAPI document of this API."""
        cached = getattr(request.app.state, "openapi", None)
        if cached is None:
            cached = openapi_document(request.app.routes, title=title, version=version)
            request.app.state.openapi = cached
        return JSONResponse(cached)

    return Route("/openapi.json", openapi, methods=["GET"], include_in_schema=False)
