"""Unit tests of the response-hygiene middleware (api.hygiene), alone and in the whole app."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from api.app import create_app, starlette_of
from api.auth import DevTokenAuthenticator
from api.errors import ServiceUnavailable, exception_handlers
from api.hygiene import CONTENT_SECURITY_POLICY, ResponseHygiene
from pipeline.settings import Settings


async def _json(request: Request) -> Response:
    return JSONResponse({"token": "secret"})


async def _cached(request: Request) -> Response:
    return JSONResponse({}, headers={"Cache-Control": "max-age=60"})


async def _page(request: Request) -> Response:
    return HTMLResponse("<p>hi</p>")


async def _crash(request: Request) -> Response:
    raise RuntimeError("password=hunter2 at /srv/internal.py")


async def _store_down(request: Request) -> Response:
    raise ServiceUnavailable("PostgreSQL unavailable", "connection to 10.0.0.7:5432 refused")


async def _raw_502(request: Request) -> Response:
    return PlainTextResponse("Traceback: KeyError in secret_module", status_code=502)


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    (tmp_path / "page.html").write_text("<p>static</p>")
    (tmp_path / "app.js").write_text("1")
    app = Starlette(routes=[
        Route("/api/token", _json), Route("/api/cached", _cached), Route("/page", _page),
        Route("/api/crash", _crash), Route("/api/down", _store_down), Route("/raw", _raw_502),
        Mount("/static", StaticFiles(directory=tmp_path)),
    ], exception_handlers=exception_handlers())
    transport = httpx.ASGITransport(app=ResponseHygiene(app), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.local") as c:
        yield c


def _always(response: httpx.Response) -> str:
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    request_id = response.headers["x-request-id"]
    assert len(request_id) == 16
    return request_id


async def test_every_answer_has_nosniff_referrer_policy_and_a_request_id(client: httpx.AsyncClient) -> None:
    answers = [await client.get(path) for path in ("/api/token", "/page", "/static/app.js", "/nowhere")]
    ids = {_always(response) for response in answers}
    assert len(ids) == len(answers)  # one id per request
    assert answers[3].status_code == 404


async def test_html_answers_get_the_csp_wherever_they_come_from(client: httpx.AsyncClient) -> None:
    for path in ("/page", "/static/page.html"):
        page = await client.get(path)
        assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY, path
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY"
    script = await client.get("/static/app.js")
    assert "content-security-policy" not in script.headers


async def test_api_answers_are_not_stored_unless_the_route_says_otherwise(client: httpx.AsyncClient) -> None:
    token = await client.get("/api/token")
    assert (token.headers["cache-control"], token.headers["pragma"]) == ("no-store", "no-cache")
    assert (await client.get("/api/cached")).headers["cache-control"] == "max-age=60"
    assert "cache-control" not in (await client.get("/page")).headers


async def test_redirects_never_echo_the_host_header(client: httpx.AsyncClient) -> None:
    redirected = await client.get("/static", headers={"Host": "evil.example"})
    assert redirected.status_code in (301, 302, 307, 308)
    assert redirected.headers["location"] == "/static/"


async def test_a_crash_is_a_generic_500_whose_request_id_is_logged(
        client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="api.hygiene"):
        crashed = await client.get("/api/crash")
    request_id = _always(crashed)
    assert crashed.status_code == 500
    assert crashed.json() == {"error": "internal error", "detail": "internal error",
                              "request_id": request_id}
    assert "RuntimeError" not in crashed.text and "hunter2" not in crashed.text
    logged = [r for r in caplog.records if request_id in r.getMessage()]
    assert logged and logged[0].exc_info is not None  # the traceback is in the log, not the answer


async def test_5xx_bodies_say_nothing_internal(client: httpx.AsyncClient,
                                               caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        down = await client.get("/api/down")
        raw = await client.get("/raw")
    assert down.status_code == 503
    assert down.json() == {"error": "PostgreSQL unavailable",
                           "detail": "temporarily unavailable; try again later",
                           "request_id": _always(down)}
    assert raw.status_code == 502 and raw.headers["content-type"] == "application/json"
    assert raw.json() == {"error": "internal error", "detail": "internal error",
                          "request_id": _always(raw)}
    text = caplog.text
    assert "10.0.0.7" in text and _always(down) in text  # the details went to the log
    assert "secret_module" in text and _always(raw) in text


# ---- in the whole app (no lifespan, no services) ------------------------------------------------


@pytest.fixture
async def app_client() -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings(), authenticator=DevTokenAuthenticator(SecretStr("unit-token")))
    assert starlette_of(app).routes  # the route table is still reachable for the tests
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as c:
        yield c


async def test_the_dashboard_and_its_static_copy_send_the_same_policy(app_client: httpx.AsyncClient) -> None:
    root = await app_client.get("/")
    static = await app_client.get("/static/index.html")
    assert root.status_code == static.status_code == 200
    assert root.headers["content-security-policy"] == static.headers["content-security-policy"] \
        == CONTENT_SECURITY_POLICY
    moved = await app_client.get("/static", headers={"Host": "evil.example"})
    assert moved.headers["location"] == "/static/"
    refused = await app_client.get("/api/devices")
    assert refused.status_code == 401 and refused.headers["cache-control"] == "no-store"
    _always(refused)


async def test_a_body_that_is_not_json_is_415_in_the_app(app_client: httpx.AsyncClient) -> None:
    headers = {"Authorization": "Bearer unit-token", "Content-Type": "text/plain"}
    refused = await app_client.post("/api/devices", content=b'{"id": "x"}', headers=headers)
    assert refused.status_code == 415 and refused.json()["error"] == "unsupported media type"
