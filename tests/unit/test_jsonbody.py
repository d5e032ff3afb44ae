"""Unit tests of the one JSON body reader (api.jsonbody) and of history times out of range."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api.errors import BadRequest, InvalidField, exception_handlers
from api.history import parse_history_query
from api.jsonbody import MAX_DEPTH, UnsupportedMediaType, check_json_type, json_object, parse_json
from api.readings import InvalidReadings, parse_readings

NOW = datetime(2026, 5, 6, 12, 0, tzinfo=UTC)


def _message(raw: bytes) -> str:
    with pytest.raises(InvalidField) as refused:
        parse_json(raw)
    assert refused.value.status_code == 422
    message: str = refused.value.detail["message"]
    return message


@pytest.mark.parametrize(("raw", "says"), [
    (b'{"a": 1, "a": 2}', "duplicate key 'a'"),
    (b'{"x": {"b": 1, "b": 1}}', "duplicate key 'b'"),
    (b'{"a": "\\ud800"}', "lone UTF-16 surrogate"),
    (b'{"\\udfff": 1}', "a key holds a lone UTF-16 surrogate"),
    (b'["x\\udc00y"]', "lone UTF-16 surrogate"),
    (b'{"a": "\xed\xa0\x80"}', "not UTF-8"),  # a surrogate written raw
    (b'{"a": "b\\u0000"}', "a string holds a NUL character"),
    (b'{"\\u0000": 1}', "a key holds a NUL character"),
    (b"[" * 5000 + b"]" * 5000, f"nested deeper than {MAX_DEPTH} levels"),
    (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), "nested deeper"),
    (b'{"a": NaN}', "NaN is not a JSON number"),
    (b'{"a": -Infinity}', "-Infinity is not a JSON number"),
    (b'{"a": 1e400}', "beyond the range of a double"),
    (b'{"a": -1E+400}', "beyond the range of a double"),
    (b'{"a": 9223372036854775808}', "beyond 64 bits"),
    (b'{"a": ' + b"9" * 5000 + b"}", "beyond 64 bits"),
    (b'{"a": 1,}', "not JSON"),
    (b"\xff\xfe", "not UTF-8"),
    (b"", "not JSON"),
])
def test_odd_json_is_refused_naming_the_problem(raw: bytes, says: str) -> None:
    assert says in _message(raw)


def test_ordinary_json_passes_unchanged() -> None:
    raw = (b'{"name": "caf\xc3\xa9 \\u00e9", "n": -9223372036854775808, "f": 1.5e300,'
           b' "deep": ' + b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1) + b', "pair": "\\ud83d\\ude00"}')
    value = parse_json(raw)
    assert value["name"] == "café é" and value["n"] == -(2**63) and value["f"] == 1.5e300
    assert value["pair"] == "\U0001f600"  # an escaped surrogate pair is one character


@pytest.mark.parametrize(("header", "kind"), [
    ("application/json", "application/json"),
    ("Application/JSON; charset=UTF-8", "application/json"),
    ('application/json; charset="utf-8"', "application/json"),
])
def test_json_content_types(header: str, kind: str) -> None:
    assert check_json_type({"content-type": header}) == kind


@pytest.mark.parametrize("header", ["text/plain", "application/x-www-form-urlencoded",
                                    "multipart/form-data; boundary=x", "application/jsonx",
                                    "application/json; charset=latin-1", ""])
def test_other_content_types_are_415(header: str) -> None:
    with pytest.raises(UnsupportedMediaType):
        check_json_type({"content-type": header} if header else {})
    assert check_json_type({}, missing_ok=True) is None


async def _echo(request: Request) -> Response:
    return JSONResponse(await json_object(request, limit=100))


async def _echo_form(request: Request) -> Response:
    return JSONResponse(await json_object(request, limit=100, form=True))


async def _echo_optional_device(request: Request) -> Response:
    return JSONResponse(await json_object(request, limit=100, optional=True, devices=True))


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = Starlette(routes=[Route("/json", _echo, methods=["POST"]),
                            Route("/form", _echo_form, methods=["POST"]),
                            Route("/device", _echo_optional_device, methods=["POST"])],
                    exception_handlers=exception_handlers())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        yield c


async def _post(client: httpx.AsyncClient, path: str, body: Any, content_type: str | None) -> httpx.Response:
    headers = {"Content-Type": content_type} if content_type else {}
    return await client.post(path, content=body, headers=headers)


async def test_routes_answer_415_413_and_422_as_json(client: httpx.AsyncClient) -> None:
    ok = await _post(client, "/json", b'{"a": 1}', "application/json; charset=utf-8")
    assert (ok.status_code, ok.json()) == (200, {"a": 1})
    for content_type in (None, "text/plain", "application/x-www-form-urlencoded"):
        refused = await _post(client, "/json", b'{"a": 1}', content_type)
        assert refused.status_code == 415, content_type
        assert refused.json()["error"] == "unsupported media type"
    too_large = await _post(client, "/json", b'{"a": "' + b"x" * 200 + b'"}', "application/json")
    assert (too_large.status_code, too_large.json()["error"]) == (413, "body too large")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
        yield b'{"a": "'
        yield b"x" * 200 + b'"}'

    streamed = await client.post("/json", content=chunks(), headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413
    for body in (b'{"a": 1, "a": 2}', b"[1]", b"", b'"\\ud800"'):
        refused = await _post(client, "/json", body, "application/json")
        assert refused.status_code == 422, body
        assert refused.json()["detail"]["field"] == "body"


async def test_forms_where_allowed_by_the_same_rules(client: httpx.AsyncClient) -> None:
    form = "application/x-www-form-urlencoded"
    ok = await _post(client, "/form", b"username=al%C3%AFce&password=p+w", form)
    assert ok.json() == {"username": "alïce", "password": "p w"}
    assert (await _post(client, "/form", b'{"a": 1}', "application/json")).json() == {"a": 1}
    for body, says in ((b"a=1&a=2", "duplicate field 'a'"), (b"a=%00", "NUL"),
                       (b"a=%ED%A0%80", "not UTF-8"), (b"a=%FF", "not UTF-8")):
        refused = await _post(client, "/form", body, form)
        assert refused.status_code == 422 and says in refused.json()["detail"]["message"], body
    assert (await _post(client, "/form", b"a=1", "text/plain")).status_code == 415


async def test_device_routes_take_a_body_without_content_type(client: httpx.AsyncClient) -> None:
    assert (await _post(client, "/device", b'{"a": 1}', None)).json() == {"a": 1}
    assert (await _post(client, "/device", b"", None)).json() == {}  # optional: empty is {}
    assert (await _post(client, "/device", b'{"a": 1}', "text/plain")).status_code == 415


# ---- history times ----------------------------------------------------------------------


@pytest.mark.parametrize("start", ["-999999999w", "-999999999d", "-600000d",
                                   "0001-01-01T00:00:00+01:00", "1500-01-01T00:00:00Z"])
def test_history_times_beyond_influxdbs_range_are_422_not_an_overflow(start: str) -> None:
    with pytest.raises(InvalidField) as refused:
        parse_history_query("dev-1", {"metric": "t", "start": start}, max_points=10_000, now=NOW)
    assert refused.value.detail["field"] == "start"
    with pytest.raises(InvalidField):
        parse_history_query("dev-1", {"metric": "t", "start": "-1h", "stop": "9999-12-31T23:59:59-01:00"},
                            max_points=10_000, now=NOW)


def test_history_malformed_times_stay_400() -> None:
    with pytest.raises(BadRequest):
        parse_history_query("dev-1", {"metric": "t", "start": "-1y"}, max_points=10_000, now=NOW)


# ---- HTTP ingest: its own parser, the same refusals without naming exception classes ------------


@pytest.mark.parametrize(("body", "says"), [
    (b'{"t": 1, "status": "a\\u0000b"}', "a string holds a NUL character"),
    (b'[{"t": 1, "gateway": "\\u0000"}]', "a string holds a NUL character"),
    (b"[" * 5000 + b"]" * 5000, f"nested deeper than {MAX_DEPTH} levels"),
    (b'{"t": ' + b"9" * 5000 + b"}", "beyond 64 bits"),
])
def test_ingest_refuses_nul_and_names_no_exception_class(body: bytes, says: str) -> None:
    with pytest.raises(InvalidReadings) as refused:
        parse_readings(body, device_id="dev-1", protocol="http", received_at=NOW, application_id=None)
    message = refused.value.detail()["message"]
    assert says in message
    assert "Error" not in message  # no RecursionError, ValueError ...


def test_ingest_keeps_a_backslash_u0000_that_is_text() -> None:
    body = b'{"t": 1, "status": "C:\\\\u0000"}'  # an escaped backslash, then the text u0000
    (row,) = parse_readings(body, device_id="dev-1", protocol="http", received_at=NOW,
                            application_id=None)
    assert row is not None
