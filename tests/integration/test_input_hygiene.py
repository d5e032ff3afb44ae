"""Odd input and response hygiene on every route of the real API, from its own route table.

A corpus of odd bodies (lone surrogates, NUL, deep nesting, NaN and huge
numbers, duplicate keys, wrong content types) and odd query values (huge
relative times, NUL, surrogates) goes to every HTTP route and method, with an
admin's token and a device's key so that each request reaches the parsers:
nothing may answer 5xx, and every answer carries the hygiene headers. Then the
long-lived connections: a foreign Origin on ``/ws/devices``, and Socket.IO,
``/ws/topics`` and ``/ws/devices`` closed once their user or key is withdrawn.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from typing import TYPE_CHECKING, Any

import httpx
import psycopg
import pytest
import socketio
from starlette.routing import Route
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from api.app import STATIC_DIR, create_app, starlette_of
from api.hygiene import CONTENT_SECURITY_POLICY
from api.openapi import DESCRIBE_ATTRIBUTE
from pipeline.settings import Topics
from tests.integration.conftest import create_user, login
from tests.integration.live import create_device

if TYPE_CHECKING:
    from tests.integration.conftest import ApiServer

pytestmark = pytest.mark.integration

ODD_JSON = [
    b'{"name": "\\ud800", "status": "\\udfff"}',
    b'{"\\ud800": 1}',
    b'{"name": "\xed\xa0\x80"}',  # a surrogate written raw: not UTF-8
    b'{"name": "a\\u0000b", "username": "x\\u0000", "password": "\\u0000"}',
    b'{"a\\u0000": 1}',
    b"[" * 5000 + b"]" * 5000,
    b'{"a": ' * 5000 + b"1" + b"}" * 5000,
    b'{"t": NaN}',
    b'{"t": Infinity, "minutes": -Infinity}',
    b'{"t": 1e400, "ttl_s": 1e400, "minutes": 1e400, "threshold": 1e400}',
    b'{"t": -1e400}',
    b'{"t": ' + b"9" * 5000 + b"}",
    b"[99999999999999999999999]",
    b'{"name": "x", "name": "y"}',
    b"not json",
    b"\xff\xfe\x00",
    b"null",
    b"[]",
    b'"\\ud800"',
]
FORM = "application/x-www-form-urlencoded"
WRONG_TYPES = [None, "text/plain", FORM,
               "multipart/form-data; boundary=x", "application/json; charset=latin-1"]
# Already percent-encoded: %ED%A0%80 is a lone surrogate written as UTF-8, %00 a NUL.
ODD_QUERY = {
    "start": "-999999999w", "stop": "9999-12-31T23:59:59-01:00", "every": "999999999w",
    "metric": "t%00", "agg": "%ED%A0%80", "limit": "1e400", "offset": "-99999999999999999999",
    "state": "%00", "severity": "%ED%B3%BF", "device_id": "x%00", "rule_id": "%00",
    "from": "%ff",
}
# Routes where an object missing from the path answers (404) before the body is read.
_LOOKED_UP_FIRST = ("{rule_id}", "{alarm_id}", "/api-key")


def _check_hygiene(response: httpx.Response, label: str) -> list[str]:
    problems = []
    if response.status_code >= 500:
        problems.append(f"{label}: {response.status_code} {response.text[:200]}")
    if response.headers.get("x-content-type-options") != "nosniff":
        problems.append(f"{label}: no nosniff")
    if not response.headers.get("referrer-policy") or not response.headers.get("x-request-id"):
        problems.append(f"{label}: no Referrer-Policy or X-Request-ID")
    if response.status_code >= 400 and "error" not in response.json():
        problems.append(f"{label}: error body {response.text[:100]}")
    if "Traceback" in response.text or "Error:" in response.text:
        problems.append(f"{label}: internal text {response.text[:200]}")
    return problems


def _http_routes(api: ApiServer) -> list[tuple[str, str, bool]]:
    """``(method, template, takes_body)`` of every HTTP route."""
    found = []
    for route in starlette_of(create_app(api.settings)).routes:
        if isinstance(route, Route):
            described = getattr(route.endpoint, DESCRIBE_ATTRIBUTE, None) or {}
            for method in sorted((route.methods or set()) - {"HEAD"}):
                found.append((method, route.path, described.get("body") is not None))
    return found


def _path(template: str, method: str, device_id: str) -> str:
    # DELETE and key rotation go to a device that does not exist: the probe's key must stay valid
    keep = method != "DELETE" and "/api-key" not in template
    path = re.sub(r"\{device_id(:\w+)?\}", device_id if keep else "no-such-device", template)
    return re.sub(r"\{\w+(:\w+)?\}", "sec-probe-1", path)


def _loopback() -> str:
    return f"127.{random.randint(1, 254)}.{random.randint(0, 254)}.{random.randint(2, 254)}"


async def test_odd_bodies_and_queries_on_every_route_are_4xx_with_hygiene_headers(
        api_server: ApiServer) -> None:
    device_id, key = await asyncio.to_thread(create_device, api_server, "http", "fuzz-app")
    auth = {"Authorization": f"Bearer {api_server.token}", "X-API-Key": key}
    routes = _http_routes(api_server)
    assert sum(takes_body for _, _, takes_body in routes) >= 8
    problems: list[str] = []
    sent = 0
    transport = httpx.AsyncHTTPTransport(local_address=_loopback())
    async with httpx.AsyncClient(base_url=api_server.base_url, timeout=30, transport=transport) as c:
        for method, template, takes_body in routes:
            path = _path(template, method, device_id)
            if method == "GET":
                for name, value in ODD_QUERY.items():
                    response = await c.get(f"{path}?{name}={value}", headers=auth)
                    sent += 1
                    problems += _check_hygiene(response, f"GET {template}?{name}")
                continue
            strict = takes_body and not any(part in template for part in _LOOKED_UP_FIRST)
            for body in ODD_JSON:
                response = await c.request(method, path, content=body,
                                           headers={**auth, "Content-Type": "application/json"})
                sent += 1
                label = f"{method} {template} {body[:30]!r}"
                problems += _check_hygiene(response, label)
                if strict and response.status_code not in (413, 422):  # login bodies: 4 KiB
                    problems.append(f"{label}: {response.status_code}, expected 422")
            for content_type in WRONG_TYPES:
                headers = {**auth, **({"Content-Type": content_type} if content_type else {})}
                response = await c.request(method, path, content=b'{"name": "x"}', headers=headers)
                sent += 1
                label = f"{method} {template} as {content_type}"
                problems += _check_hygiene(response, label)
                # devices may send no Content-Type; the login routes also take forms
                device_route = template.endswith(("/telemetry", "/ack"))
                allowed = (content_type is None and device_route) or (
                    content_type == FORM and template.startswith("/api/auth/"))
                if strict and not allowed and response.status_code != 415:
                    problems.append(f"{label}: {response.status_code}, expected 415")
    assert sent > 300
    assert problems == [], "\n".join(problems[:60])


async def test_headers_of_pages_static_files_redirects_and_secrets(api_server: ApiServer) -> None:
    admin = {"Authorization": f"Bearer {api_server.token}"}
    async with httpx.AsyncClient(base_url=api_server.base_url, timeout=15) as c:
        root, page = await c.get("/"), await c.get("/static/index.html")
        script = await c.get("/static/app.js")
        moved = await c.get("/static", headers={"Host": "evil.example:8000"})
        name, password = create_user(api_server.settings, "viewer")
        api_server.usernames.append(name)
        token = await c.post("/api/auth/token", json={"username": name, "password": password})
        refreshed = await c.post("/api/auth/refresh",
                                 json={"refresh_token": token.json()["refresh_token"]})
        device_id, _ = await asyncio.to_thread(create_device, api_server, "http", "fuzz-app")
        rotated = await c.post(f"/api/devices/{device_id}/api-key", headers=admin)
        created = await c.post("/api/devices", headers=admin,
                               json={"id": f"{device_id}-2", "protocol": "http"})
        await c.delete(f"/api/devices/{device_id}-2", headers=admin)
    for html in (root, page):
        assert html.status_code == 200
        assert html.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert "frame-ancestors 'none'" in html.headers["content-security-policy"]
    assert "content-security-policy" not in script.headers
    for response in (root, page, script, moved, token, refreshed, rotated, created):
        assert _check_hygiene(response, str(response.url)) == []
    assert moved.status_code in (301, 302, 307, 308)
    assert "evil.example" not in moved.headers["location"] and moved.headers["location"] == "/static/"
    for secret in (token, refreshed, rotated, created):
        assert secret.status_code in (200, 201), secret.text
        assert secret.headers["cache-control"] == "no-store", secret.url
    assert sorted(p.name for p in STATIC_DIR.glob("*.html")) == ["index.html"]


async def test_device_websocket_refuses_a_foreign_origin(api_server: ApiServer) -> None:
    device_id, key = await asyncio.to_thread(create_device, api_server, "websocket", "fuzz-app")
    url = f"{api_server.ws_url}/ws/devices/{device_id}?api_key={key}"
    with pytest.raises(InvalidStatus) as refused:
        async with ws_connect(url, origin="http://evil.example"):  # type: ignore[arg-type]
            pass
    assert refused.value.response.status_code == 403
    async with ws_connect(url) as ws:  # a device sends no Origin
        await ws.send(json.dumps({"t": 1.5}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 15))["ok"] is True
    async with ws_connect(url, origin=api_server.base_url) as ws:  # type: ignore[arg-type]
        await ws.send(b'{"t": "\\ud800"}')
        answer = json.loads(await asyncio.wait_for(ws.recv(), 15))
        assert (answer["ok"], answer["status"]) == (False, 422)


async def _closed_within(ws: Any, seconds: float) -> tuple[int | None, str]:
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(seconds):
            while True:
                await ws.recv()
    received = closed.value.rcvd
    return (received.code, received.reason) if received else (None, "")


async def test_connections_end_when_their_user_or_key_is_withdrawn(api_server: ApiServer) -> None:
    """Deleted user, disabled user, rotated device key: each connection is closed within
    ws_credential_check_s (10 s) plus a margin; a control connection stays open."""
    settings = api_server.settings
    users = {}
    for role in ("deleted", "disabled", "control"):
        name, password = create_user(settings, "admin")
        api_server.usernames.append(name)
        users[role] = (name, str((await asyncio.to_thread(
            login, api_server.base_url, name, password))["access_token"]))
    device_id, key = await asyncio.to_thread(create_device, api_server, "websocket", "fuzz-app")
    sios = {}
    for role, (_, token) in users.items():
        sio = socketio.AsyncClient(reconnection=False)
        await sio.connect(api_server.base_url, auth={"token": token}, transports=["websocket"],
                          wait_timeout=10)
        sios[role] = sio
    topic_url = f"{api_server.ws_url}/ws/topics/{Topics.SYSTEM}?token="
    async with ws_connect(topic_url + users["deleted"][1]) as tail_deleted, \
            ws_connect(topic_url + users["disabled"][1]) as tail_disabled, \
            ws_connect(topic_url + users["control"][1]) as tail_control, \
            ws_connect(f"{api_server.ws_url}/ws/devices/{device_id}?api_key={key}") as device:
        await asyncio.sleep(0.5)
        started = time.monotonic()
        with psycopg.connect(settings.pg_conninfo, autocommit=True) as conn:
            conn.execute("DELETE FROM users WHERE username = %s", (users["deleted"][0],))
            conn.execute("UPDATE users SET disabled = true WHERE username = %s", (users["disabled"][0],))
        async with httpx.AsyncClient(base_url=api_server.base_url, timeout=15) as c:
            rotated = await c.post(f"/api/devices/{device_id}/api-key",
                                   headers={"Authorization": f"Bearer {api_server.token}"})
        assert rotated.status_code == 200
        results = await asyncio.gather(_closed_within(tail_deleted, 20), _closed_within(tail_disabled, 20),
                                       _closed_within(device, 20))
        elapsed = time.monotonic() - started
        deadline = time.monotonic() + 5
        while (sios["deleted"].connected or sios["disabled"].connected) \
                and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        assert tail_control.close_code is None
        print(f"\nconnections of withdrawn credentials closed within {elapsed:.1f} s")
    assert results[0] == results[1] == (4401, "user removed or disabled")
    assert results[2][0] == 4401 and "withdrawn" in results[2][1]
    assert elapsed < 16
    assert not sios["deleted"].connected and not sios["disabled"].connected
    assert sios["control"].connected
    for sio in sios.values():
        await sio.disconnect()
