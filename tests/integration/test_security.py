"""Security of the API against the real stack: authentication, authorization, rate limits, secrets.

The lists of routes come from the app's own route table, so a route added
later is checked without editing this file.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import jwt
import psycopg
import pytest
import socketio
from starlette.routing import Route, WebSocketRoute
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from api.app import create_app, starlette_of
from api.auth import AUTH_ATTRIBUTE
from api.config import load_api_config
from pipeline.settings import Settings, Topics
from schemas.records import Telemetry, TelemetryMetadata
from tests.conftest import unique_id
from tests.integration.conftest import create_user, login
from tests.integration.helpers import produce_raw

if TYPE_CHECKING:
    from tests.integration.conftest import ApiServer

pytestmark = pytest.mark.integration

# Routes anyone may call: the page, probes, the schema and the login itself.
PUBLIC = {"/", "/health", "/metrics", "/openapi.json", "/api/auth/token", "/api/auth/refresh"}
WRITES = {"POST", "PUT", "PATCH", "DELETE"}


def _routes(settings: Settings) -> list[BaseRouteInfo]:
    found = []
    for route in starlette_of(create_app(settings)).routes:
        if isinstance(route, Route | WebSocketRoute):
            path = route.path
            for name, convertor in route.param_convertors.items():
                value = "1" if type(convertor).__name__ in ("IntegerConvertor", "FloatConvertor") \
                    else "sec-probe-1"
                path = re.sub(r"\{" + name + r"(:\w+)?\}", value, path)
            methods = sorted((route.methods or set()) - {"HEAD"}) if isinstance(route, Route) else []
            found.append(BaseRouteInfo(route.path, path, methods, isinstance(route, WebSocketRoute),
                                       getattr(route.endpoint, AUTH_ATTRIBUTE, None),
                                       set(route.param_convertors)))
    return found


class BaseRouteInfo:
    def __init__(self, template: str, path: str, methods: list[str], websocket: bool,
                 role: str | None, params: set[str]) -> None:
        self.template, self.path, self.methods, self.websocket = template, path, methods, websocket
        self.role, self.params = role, params


_BODY = {"name": "probe", "params": {}, "ttl_s": 60, "id": "sec-probe-1", "protocol": "http"}


async def _call(client: httpx.AsyncClient, method: str, path: str,
                token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = _BODY if method in WRITES else None
    return await client.request(method, path, headers=headers, json=body)


# ---- authentication ----------------------------------------------------------


async def test_every_route_without_token_is_401(api_server: ApiServer) -> None:
    routes = _routes(api_server.settings)
    assert any(r.template == "/api/devices" for r in routes)
    failures = []
    async with httpx.AsyncClient(base_url=api_server.base_url, timeout=15) as client:
        for route in routes:
            if route.websocket or route.template in PUBLIC:
                continue
            for method in route.methods:
                response = await _call(client, method, route.path, None)
                if response.status_code != 401:
                    failures.append(f"{method} {route.template}: {response.status_code}")
    assert failures == []


async def test_every_websocket_without_token_is_refused(api_server: ApiServer) -> None:
    for route in _routes(api_server.settings):
        if not route.websocket:
            continue
        path = route.path if "topic" not in route.params else route.template.replace(
            "{topic}", Topics.VALID)
        try:
            async with ws_connect(f"{api_server.ws_url}{path}") as ws:
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(), 10)
            assert closed.value.rcvd is not None, route.template
            assert closed.value.rcvd.code in (4401, 1008), route.template
        except InvalidStatus as exc:  # refused at the handshake
            assert exc.response.status_code in (401, 403), route.template


def _forge(settings: Settings, **changes: Any) -> str:
    config = load_api_config(settings)
    now = int(time.time())
    claims = {"iss": config.jwt_issuer, "aud": config.jwt_audience, "sub": "forger", "iat": now,
              "nbf": now, "exp": now + 600, "jti": uuid.uuid4().hex, "role": "admin", "apps": []}
    key = changes.pop("key", config.jwt_secret.get_secret_value())
    algorithm = changes.pop("algorithm", "HS256")
    headers = changes.pop("headers", {"typ": "at+jwt"})
    claims.update(changes)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers)


def _unsigned(settings: Settings, sub: str = "forger") -> str:
    signed = _forge(settings, sub=sub)
    _, payload, _ = signed.split(".")
    header = jwt.utils.base64url_encode(b'{"alg":"none","typ":"at+jwt"}').decode()
    return f"{header}.{payload}."


@pytest.mark.parametrize(
    "forgery",
    ["alg_none", "wrong_signature", "expired", "wrong_audience", "wrong_issuer", "hs512",
     "no_exp", "no_typ"],
)
async def test_forged_or_stale_jwt_is_rejected(api_server: ApiServer, forgery: str) -> None:
    settings = api_server.settings
    # a user that exists: a token naming one that does not is refused for that alone
    sub, _ = create_user(settings, "admin")
    api_server.usernames.append(sub)
    past = int(time.time()) - 3600
    token = {
        "alg_none": lambda: _unsigned(settings, sub),
        "wrong_signature": lambda: _forge(settings, sub=sub, key="x" * 48),
        "expired": lambda: _forge(settings, sub=sub, iat=past - 60, nbf=past - 60, exp=past),
        "wrong_audience": lambda: _forge(settings, sub=sub, aud="someone-else"),
        "wrong_issuer": lambda: _forge(settings, sub=sub, iss="someone-else"),
        "hs512": lambda: _forge(settings, sub=sub, algorithm="HS512"),
        "no_exp": lambda: _forge(settings, sub=sub, exp=None),
        "no_typ": lambda: _forge(settings, sub=sub, headers={}),
    }[forgery]()
    async with httpx.AsyncClient(base_url=api_server.base_url, timeout=10) as client:
        response = await client.get("/api/devices", headers={"Authorization": f"Bearer {token}"})
        control = await client.get(
            "/api/devices", headers={"Authorization": f"Bearer {_forge(settings, sub=sub)}"})
        stranger = await client.get(  # well made, but for a user that does not exist
            "/api/devices", headers={"Authorization": f"Bearer {_forge(settings, sub='nobody-here')}"})
    assert stranger.status_code == 401
    assert response.status_code == 401
    assert control.status_code == 200  # the same token, properly made, is accepted
    client_sio = socketio.AsyncClient(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client_sio.connect(api_server.base_url, auth={"token": token},
                                 transports=["websocket"], wait_timeout=10)
    await client_sio.disconnect()


async def test_refresh_token_rotates_and_reuse_revokes_the_family(api_server: ApiServer) -> None:
    name, password = create_user(api_server.settings, "viewer")
    api_server.usernames.append(name)
    first = await asyncio.to_thread(login, api_server.base_url, name, password)
    async with httpx.AsyncClient(base_url=api_server.base_url, timeout=10) as client:
        second = await client.post("/api/auth/refresh", json={"refresh_token": first["refresh_token"]})
        assert second.status_code == 200
        body = second.json()
        assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token"}
        assert body["token_type"] == "bearer" and 0 < body["expires_in"] <= 3600 * 6
        me = await client.get("/api/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"})
        assert me.json()["username"] == name and me.json()["role"] == "viewer"
        reused = await client.post("/api/auth/refresh", json={"refresh_token": first["refresh_token"]})
        successor = await client.post("/api/auth/refresh", json={"refresh_token": body["refresh_token"]})
    assert reused.status_code == 401
    assert successor.status_code == 401  # the whole family went with the reuse


async def test_login_accepts_a_form_and_refuses_bad_passwords(api_server: ApiServer) -> None:
    name, password = create_user(api_server.settings, "operator")
    api_server.usernames.append(name)
    async with httpx.AsyncClient(base_url=api_server.base_url, timeout=10) as client:
        form = await client.post("/api/auth/token", data={"username": name, "password": password})
        wrong = await client.post("/api/auth/token", json={"username": name, "password": "nope-nope"})
        missing = await client.post("/api/auth/token", json={"username": name})
    assert form.status_code == 200 and form.headers["cache-control"] == "no-store"
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid credentials"
    assert missing.status_code == 422 and missing.json()["detail"]["field"] == "password"


# ---- rate limits -------------------------------------------------------------


def _loopback_address() -> str:
    return f"127.{random.randint(1, 254)}.{random.randint(0, 254)}.{random.randint(2, 254)}"


async def test_repeated_failed_logins_of_a_user_get_429(api_server: ApiServer) -> None:
    name, password = create_user(api_server.settings, "viewer")
    api_server.usernames.append(name)
    limit = load_api_config(api_server.settings).login_limit_per_user
    transport = httpx.AsyncHTTPTransport(local_address=_loopback_address())
    async with httpx.AsyncClient(base_url=api_server.base_url, timeout=10, transport=transport) as c:
        codes = [(await c.post("/api/auth/token", json={"username": name, "password": "wrong-pass"}))
                 .status_code for _ in range(limit)]
        blocked = await c.post("/api/auth/token", json={"username": name, "password": password})
    assert codes == [401] * limit
    assert blocked.status_code == 429  # even the right password, until the window ends
    assert 1 <= int(blocked.headers["retry-after"]) <= load_api_config(api_server.settings).login_window_s


async def test_repeated_failed_logins_from_an_address_get_429(api_server: ApiServer) -> None:
    limit = load_api_config(api_server.settings).login_limit_per_address
    transport = httpx.AsyncHTTPTransport(local_address=_loopback_address())
    async with httpx.AsyncClient(base_url=api_server.base_url, timeout=10, transport=transport) as c:
        for _ in range(limit):
            response = await c.post("/api/auth/token",
                                    json={"username": unique_id("nobody"), "password": "whatever-1"})
            assert response.status_code == 401
        blocked = await c.post("/api/auth/token",
                               json={"username": unique_id("nobody"), "password": "whatever-1"})
    assert blocked.status_code == 429
    assert int(blocked.headers["retry-after"]) >= 1


# ---- authorization -----------------------------------------------------------


@pytest.fixture
def two_applications(api_server: ApiServer) -> Iterator[dict[str, str]]:
    """Devices in applications A and B, and tokens of viewers and operators of each."""
    app_a, app_b = unique_id("app-a"), unique_id("app-b")
    dev_a, dev_b = unique_id("dev-a"), unique_id("dev-b")
    with psycopg.connect(api_server.settings.pg_conninfo, autocommit=True) as conn:
        for device, application in ((dev_a, app_a), (dev_b, app_b)):
            conn.execute("INSERT INTO devices (id, protocol, application_id) VALUES (%s, 'mqtt', %s)",
                         (device, application))
    try:
        yield {
            "app_a": app_a, "app_b": app_b, "dev_a": dev_a, "dev_b": dev_b,
            "viewer_a": api_server.user_token("viewer", [app_a]),
            "operator_a": api_server.user_token("operator", [app_a]),
            "viewer_b": api_server.user_token("viewer", [app_b]),
            "operator_b": api_server.user_token("operator", [app_b]),
        }
    finally:
        with psycopg.connect(api_server.settings.pg_conninfo, autocommit=True) as conn:
            conn.execute("DELETE FROM devices WHERE id = ANY(%s)", ([dev_a, dev_b],))


async def test_viewer_gets_403_on_every_write(api_server: ApiServer,
                                              two_applications: dict[str, str]) -> None:
    token = two_applications["viewer_a"]
    failures, checked = [], 0
    async with httpx.AsyncClient(base_url=api_server.base_url, timeout=15) as client:
        for route in _routes(api_server.settings):
            if route.websocket or route.template in PUBLIC:
                continue
            path = route.path.replace("sec-probe-1", two_applications["dev_a"])
            for method in set(route.methods) & WRITES:
                response = await _call(client, method, path, token)
                # Bearer routes refuse the role; device routes (API key) refuse the bearer.
                expected = {403} if route.role is not None else {401, 403}
                checked += 1
                if response.status_code not in expected:
                    failures.append(f"{method} {route.template}: {response.status_code}")
    assert checked >= 3  # at least the user administration routes
    assert failures == []


async def test_other_applications_objects_answer_404(api_server: ApiServer,
                                                     two_applications: dict[str, str]) -> None:
    """Every device route, read by a viewer and written by an operator of application B,
    answers 404 for a device of application A."""
    dev_a = two_applications["dev_a"]
    failures, checked = [], 0
    async with httpx.AsyncClient(base_url=api_server.base_url, timeout=15) as client:
        for route in _routes(api_server.settings):
            if route.websocket or "device_id" not in route.params or route.role not in (
                    "viewer", "operator"):
                continue
            path = re.sub(r"\{device_id(:\w+)?\}", dev_a, route.template)
            path = re.sub(r"\{\w+(:\w+)?\}", "1", path)
            for method in route.methods:
                token = two_applications["operator_b" if method in WRITES else "viewer_b"]
                response = await _call(client, method, path, token)
                checked += 1
                if response.status_code != 404:
                    failures.append(f"{method} {route.template}: {response.status_code}")
        listed = await client.get("/api/devices", params={"limit": 5000},
                                  headers={"Authorization": f"Bearer {two_applications['viewer_b']}"})
        own = await client.get("/api/devices", params={"limit": 5000},
                               headers={"Authorization": f"Bearer {two_applications['viewer_a']}"})
    assert checked >= 2  # at least latest and history
    assert failures == []
    assert dev_a not in {d["id"] for d in listed.json()}
    assert two_applications["dev_b"] in {d["id"] for d in listed.json()}
    assert {d["id"] for d in own.json()} >= {dev_a}
    assert {d["application_id"] for d in own.json()} == {two_applications["app_a"]}


# ---- live streams ------------------------------------------------------------


def _reading(device_id: str, application_id: str) -> bytes:
    now = datetime.now(UTC)
    return Telemetry(device_id=device_id, protocol="mqtt", ts=now, received_at=now,
                     message_id=uuid.uuid4().hex, metrics={"temperature": 20.0},
                     application_id=application_id, metadata=TelemetryMetadata()).encode()


async def test_socketio_join_of_another_applications_room_is_refused_and_silent(
    api_server: ApiServer, two_applications: dict[str, str]
) -> None:
    apps = two_applications
    client = socketio.AsyncClient(reconnection=False)
    received: list[dict[str, Any]] = []

    @client.on("telemetry")
    async def on_telemetry(data: dict[str, Any]) -> None:
        received.append(data)

    await client.connect(api_server.base_url, auth={"token": apps["viewer_a"]},
                         transports=["websocket"], wait_timeout=10)
    try:
        for room in (f"application:{apps['app_b']}", f"device:{apps['dev_b']}", "alarms", "system",
                     f"device:{unique_id('unknown')}"):
            ack = await client.call("subscribe", {"room": room}, timeout=10)
            assert ack["ok"] is False, room
        ack = await client.call("subscribe", {"room": f"application:{apps['app_a']}"}, timeout=10)
        assert ack == {"ok": True, "room": f"application:{apps['app_a']}"}
        # 10 s of readings of both devices: A's arrive (the control), B's never do.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for device, application in ((apps["dev_a"], apps["app_a"]), (apps["dev_b"], apps["app_b"])):
                await asyncio.to_thread(produce_raw, api_server.settings, Topics.VALID,
                                        _reading(device, application), device.encode())
            await asyncio.sleep(1.0)
        await asyncio.sleep(2.0)
    finally:
        await client.disconnect()
    devices = {event["device_id"] for event in received}
    assert apps["dev_b"] not in devices
    assert apps["dev_a"] in devices


async def test_websocket_origin_is_checked(api_server: ApiServer) -> None:
    url = f"{api_server.ws_url}/ws/topics/{Topics.SYSTEM}?token={api_server.token}"
    with pytest.raises(InvalidStatus) as refused:
        async with ws_connect(url, origin="http://evil.example"):  # type: ignore[arg-type]
            pass
    assert refused.value.response.status_code == 403
    async with ws_connect(url, origin=api_server.base_url) as ws:  # type: ignore[arg-type]
        await asyncio.sleep(0.5)
        assert ws.close_code is None
    client = socketio.AsyncClient(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(api_server.base_url, auth={"token": api_server.token},
                             headers={"Origin": "http://evil.example"},
                             transports=["websocket"], wait_timeout=10)
    await client.disconnect()


async def test_topic_tail_shows_a_viewer_only_its_applications(
    api_server: ApiServer, two_applications: dict[str, str]
) -> None:
    apps = two_applications
    url = f"{api_server.ws_url}/ws/topics/{Topics.VALID}?token={apps['viewer_a']}"
    seen: set[str] = set()
    async with ws_connect(url) as ws:
        deadline = time.monotonic() + 30
        while apps["dev_a"] not in seen and time.monotonic() < deadline:
            for device, application in ((apps["dev_b"], apps["app_b"]), (apps["dev_a"], apps["app_a"])):
                await asyncio.to_thread(produce_raw, api_server.settings, Topics.VALID,
                                        _reading(device, application), device.encode())
            try:
                while True:
                    frame = await asyncio.wait_for(ws.recv(), 1.0)
                    seen.add(str(httpx.Response(200, text=str(frame)).json()["key"]))
            except TimeoutError:
                pass
    assert apps["dev_a"] in seen
    assert seen <= {apps["dev_a"]}


# ---- secrets at rest -----------------------------------------------------------


def _pg_dump() -> str:
    found = shutil.which("pg_dump")
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_dump"))
    assert versions, "pg_dump not found (Debian package postgresql-client)"
    return str(versions[-1])


def test_database_dump_holds_no_plaintext_password_or_key(api_server: ApiServer) -> None:
    settings = api_server.settings
    name, password = create_user(settings, "viewer")
    api_server.usernames.append(name)
    tokens = login(api_server.base_url, name, password)
    secrets_in_play = [password, str(tokens["refresh_token"])]
    device_id = unique_id("dump-dev")
    created = httpx.post(
        f"{api_server.base_url}/api/devices", headers={"Authorization": f"Bearer {api_server.token}"},
        json={"id": device_id, "name": "dump", "protocol": "http", "application_id": "dump-app"},
        timeout=15,
    )
    if created.status_code == 201:  # the device registry route exists: its key must not be stored
        secrets_in_play.append(created.json()["api_key"])
    try:
        with tempfile.TemporaryDirectory() as folder:
            target = Path(folder) / "dump.sql"
            subprocess.run(
                [_pg_dump(), "-h", settings.pg_host, "-p", str(settings.pg_port),
                 "-U", settings.pg_user, "-d", settings.pg_database, "-f", str(target)],
                env={**os.environ, "PGPASSWORD": settings.pg_password.get_secret_value()},
                check=True, timeout=120, capture_output=True,
            )
            dump = target.read_text(encoding="utf-8", errors="replace")
    finally:
        with psycopg.connect(settings.pg_conninfo, autocommit=True) as conn:
            conn.execute("DELETE FROM devices WHERE id = %s", (device_id,))
    assert name in dump  # the user is in the dump ...
    assert "$argon2id$" in dump
    for secret in secrets_in_play:  # ... but none of its secrets
        assert secret not in dump


async def test_socketio_connection_ends_when_its_token_expires(api_server: ApiServer) -> None:
    now = int(time.time())
    user, _ = create_user(api_server.settings, "admin")  # it exists: only the expiry ends it
    api_server.usernames.append(user)
    token = _forge(api_server.settings, sub=user, iat=now, nbf=now, exp=now + 3)
    client = socketio.AsyncClient(reconnection=False)
    await client.connect(api_server.base_url, auth={"token": token}, transports=["websocket"],
                         wait_timeout=10)
    try:
        assert client.connected
        for _ in range(100):
            if not client.connected:
                break
            await asyncio.sleep(0.1)
        assert not client.connected
    finally:
        await client.disconnect()


async def test_alarms_of_another_application_are_invisible(api_server: ApiServer,
                                                           two_applications: dict[str, str]) -> None:
    """An alarm of application A's device: listed, read and acknowledged only within A."""
    dev_a = two_applications["dev_a"]
    with psycopg.connect(api_server.settings.pg_conninfo, autocommit=True) as conn:
        rule_id = conn.execute(
            "INSERT INTO alarm_rules (name, device_id, metric, operator, threshold, severity) "
            "VALUES (%s, %s, 'temperature', '>', 50, 'major') RETURNING id",
            (unique_id("rule"), dev_a)).fetchone()[0]  # type: ignore[index]
        alarm_id = str(conn.execute(
            "INSERT INTO alarms (rule_id, device_id, metric, state, severity, value) "
            "VALUES (%s, %s, 'temperature', 'active_unacked', 'major', 60) RETURNING id",
            (rule_id, dev_a)).fetchone()[0])  # type: ignore[index]
    try:
        async with httpx.AsyncClient(base_url=api_server.base_url, timeout=15) as client:
            def auth(who: str) -> dict[str, str]:
                return {"Authorization": f"Bearer {two_applications[who]}"}

            listed_b = await client.get("/api/alarms", params={"limit": 1000}, headers=auth("viewer_b"))
            listed_a = await client.get("/api/alarms", params={"limit": 1000}, headers=auth("viewer_a"))
            assert alarm_id not in {a["id"] for a in listed_b.json()}
            assert alarm_id in {a["id"] for a in listed_a.json()}
            by_device = await client.get("/api/alarms", params={"device_id": dev_a}, headers=auth("viewer_b"))
            assert by_device.status_code == 404
            assert (await client.get(f"/api/alarms/{alarm_id}", headers=auth("viewer_b"))).status_code == 404
            ack_b = await client.post(f"/api/alarms/{alarm_id}/ack", headers=auth("operator_b"))
            assert ack_b.status_code == 404
            assert (await client.get(f"/api/alarms/{alarm_id}", headers=auth("viewer_a"))).status_code == 200
    finally:
        with psycopg.connect(api_server.settings.pg_conninfo, autocommit=True) as conn:
            conn.execute("DELETE FROM alarm_events WHERE alarm_id = %s", (alarm_id,))
            conn.execute("DELETE FROM alarms WHERE id = %s", (alarm_id,))
            conn.execute("DELETE FROM alarm_rules WHERE id = %s", (rule_id,))


async def test_a_removed_or_disabled_users_token_stops_working(api_server: ApiServer) -> None:
    """An access token is valid for 15 minutes; its user's removal ends it within the check
    interval (WEBSCADA_WS_CREDENTIAL_CHECK_S), on every route."""
    import psycopg

    from tests.integration.conftest import create_user
    from tests.integration.conftest import login as log_in

    settings = api_server.settings
    removed, removed_password = create_user(settings, "viewer")
    disabled, disabled_password = create_user(settings, "operator")
    api_server.usernames.extend([removed, disabled])
    tokens = {name: str(log_in(api_server.base_url, name, password)["access_token"])
              for name, password in ((removed, removed_password), (disabled, disabled_password))}
    async with httpx.AsyncClient(base_url=api_server.base_url, timeout=15) as client:
        async def status(name: str) -> int:
            answer = await client.get("/api/devices", headers={"Authorization": f"Bearer {tokens[name]}"})
            return answer.status_code

        assert [await status(removed), await status(disabled)] == [200, 200]  # the control
        with psycopg.connect(settings.pg_conninfo, autocommit=True) as conn:
            conn.execute("DELETE FROM users WHERE username = %s", (removed,))
            conn.execute("UPDATE users SET disabled = true WHERE username = %s", (disabled,))
        deadline = asyncio.get_running_loop().time() + 30
        while [await status(removed), await status(disabled)] != [401, 401]:
            assert asyncio.get_running_loop().time() < deadline, "the tokens still work"
            await asyncio.sleep(0.5)
