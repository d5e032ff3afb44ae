"""Unit tests of the API's security and streaming parts: tokens, roles, history queries, conflation."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import jwt
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api.auth import AUTH_ATTRIBUTE, JwtAuthenticator, Principal, requires_auth, requires_role
from api.config import ApiEnv, ConfigError, load_api_config, read_or_create_secret
from api.errors import BadRequest, InvalidField, exception_handlers
from api.fanout import Outbox, merge_telemetry
from api.history import flux_query, parse_history_query
from api.openapi import openapi_document
from api.passwords import PasswordError, Passwords
from api.rooms import Room
from api.tokens import AccessTokens, refresh_digest
from pipeline.settings import Settings

SECRET = "s" * 40
NOW = datetime(2026, 5, 6, 12, 0, tzinfo=UTC)


def _tokens(**changes: object) -> AccessTokens:
    args: dict[str, object] = {"secret": SECRET, "issuer": "webscada", "audience": "webscada-api",
                               "ttl_s": 900}
    args.update(changes)
    return AccessTokens(**args)  # type: ignore[arg-type]


# ---- tokens --------------------------------------------------------------------


def test_access_token_round_trip() -> None:
    token = _tokens().issue("alice", "operator", {"plant-1"})
    claims = _tokens().verify(token)
    assert claims is not None
    assert (claims.subject, claims.role, claims.applications) == ("alice", "operator",
                                                                   frozenset({"plant-1"}))
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "HS256", "typ": "at+jwt"}
    assert claims.expires_at - time.time() <= 900


@pytest.mark.parametrize("other", [
    {"secret": "t" * 40}, {"issuer": "someone"}, {"audience": "other-api"},
])
def test_access_token_of_another_key_issuer_or_audience_is_refused(other: dict[str, object]) -> None:
    assert _tokens().verify(_tokens(**other).issue("alice", "admin", set())) is None


def test_expired_and_malformed_tokens_are_refused() -> None:
    expired = _tokens(ttl_s=-60).issue("alice", "admin", set())
    assert _tokens().verify(expired) is None
    for junk in ("", "a.b.c", "not a token", "e30.e30."):
        assert _tokens().verify(junk) is None


def test_refresh_digest_is_not_the_token() -> None:
    assert refresh_digest("abc") != "abc" and len(refresh_digest("abc")) == 64


def test_passwords_hash_verify_and_policy() -> None:
    passwords = Passwords()
    stored = passwords.hash("correct horse")
    assert stored.startswith("$argon2id$") and "correct horse" not in stored
    assert passwords.verify(stored, "correct horse")
    assert not passwords.verify(stored, "wrong horse")
    assert not passwords.verify(None, "correct horse")
    with pytest.raises(PasswordError):
        passwords.hash("short")


# ---- principals and roles ----------------------------------------------------------


def test_principal_roles_and_applications() -> None:
    viewer = Principal("v", frozenset({"viewer"}), frozenset({"a"}))
    admin = Principal("x", frozenset({"admin"}))
    assert viewer.has_role("viewer") and not viewer.has_role("operator")
    assert admin.has_role("operator") and admin.may_see("anything") and admin.may_see(None)
    assert viewer.may_see("a") and not viewer.may_see("b") and not viewer.may_see(None)
    auth = JwtAuthenticator(_tokens())
    assert auth.may_join(viewer, Room.application("a"))
    assert not auth.may_join(viewer, Room.application("b"))
    assert not auth.may_join(viewer, Room("alarms")) and auth.may_join(admin, Room("system"))


async def test_requires_auth_bare_and_with_role() -> None:
    @requires_auth
    async def read(request: Request) -> Response:
        return JSONResponse({"ok": True})

    @requires_role("operator")
    async def write(request: Request) -> Response:
        return JSONResponse({"ok": True})

    assert getattr(read, AUTH_ATTRIBUTE) == "viewer"
    assert getattr(write, AUTH_ATTRIBUTE) == "operator"
    app = Starlette(routes=[Route("/r", read), Route("/w", write, methods=["POST"])],
                    exception_handlers=exception_handlers())
    tokens = _tokens()
    app.state.authenticator = JwtAuthenticator(tokens)
    viewer = {"Authorization": f"Bearer {tokens.issue('v', 'viewer', set())}"}
    operator = {"Authorization": f"Bearer {tokens.issue('o', 'operator', set())}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        assert (await c.get("/r")).status_code == 401
        assert (await c.get("/r", headers=viewer)).status_code == 200
        assert (await c.post("/w", headers=viewer)).status_code == 403
        assert (await c.post("/w", headers=operator)).status_code == 200


# ---- configuration -------------------------------------------------------------------


def test_config_generates_a_private_secret_and_default_origins(tmp_path: Path) -> None:
    settings = Settings(stack_dir=tmp_path, api_port=8123)
    config = load_api_config(settings, ApiEnv())
    secret_file = tmp_path / "jwt-secret"
    assert secret_file.stat().st_mode & 0o777 == 0o600
    assert load_api_config(settings, ApiEnv()).jwt_secret == config.jwt_secret
    assert config.allowed_origins == {"http://127.0.0.1:8123", "http://127.0.0.1:8000",
                                      "http://localhost:8000"}
    assert read_or_create_secret(secret_file) == config.jwt_secret
    with pytest.raises(ConfigError):
        load_api_config(settings, ApiEnv(jwt_secret="short"))  # type: ignore[arg-type]
    custom = load_api_config(settings, ApiEnv(allowed_origins="https://scada.example/, http://x:1"))
    assert custom.allowed_origins == {"https://scada.example", "http://x:1"}


# ---- history queries -------------------------------------------------------------------


def test_history_query_defaults_and_flux_text() -> None:
    query = parse_history_query("dev-1", {"metric": "temperature"}, max_points=10_000, now=NOW)
    assert (query.start, query.stop, query.agg) == (datetime(2026, 5, 6, 11, 0, tzinfo=UTC), NOW,
                                                    "mean")
    assert query.every_s == 5  # 3600 s in at most 1000 points
    flux = flux_query(query, "telemetry", 10_000)
    assert 'r.device_id == "dev-1"' in flux and 'r._field == "temperature"' in flux
    assert "range(start: 2026-05-06T11:00:00.000000Z, stop: 2026-05-06T12:00:00.000000Z)" in flux
    assert "aggregateWindow(every: 5s, fn: mean" in flux


@pytest.mark.parametrize(("params", "error"), [
    ({"metric": 'x") |> drop('}, InvalidField),
    ({}, InvalidField),
    ({"metric": "t", "agg": "median"}, InvalidField),
    ({"metric": "t", "start": "yesterday"}, BadRequest),
    ({"metric": "t", "start": "-1h", "stop": "-2h"}, BadRequest),
    ({"metric": "t", "every": "0s"}, BadRequest),
    ({"metric": "t", "every": "2d"}, BadRequest),
    ({"metric": "t", "start": "-30d", "every": "1s"}, BadRequest),
])
def test_history_query_rejects_bad_input(params: dict[str, str], error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_history_query("dev-1", params, max_points=10_000, now=NOW)


def test_history_query_accepts_iso_times_and_units() -> None:
    query = parse_history_query(
        "dev-1", {"metric": "t", "start": "2026-05-06T10:00:00Z", "stop": "2026-05-06T11:00:00+00:00",
                  "every": "1m", "agg": "max"}, max_points=10_000, now=NOW)
    assert query.every_s == 60 and query.agg == "max"
    assert query.stop - query.start == NOW - datetime(2026, 5, 6, 11, 0, tzinfo=UTC)


# ---- conflation ------------------------------------------------------------------------


def _telemetry(device: str, ts: str, **metrics: float) -> dict[str, object]:
    return {"device_id": device, "ts": ts, "metrics": metrics}


async def test_outbox_conflates_telemetry_per_device_newest_metric_wins() -> None:
    box = Outbox(max_keys=10)
    box.put("telemetry", _telemetry("a", "2026-01-01T00:00:01Z", t=1.0, h=5.0))
    box.put("telemetry", _telemetry("b", "2026-01-01T00:00:01Z", t=7.0))
    box.put("telemetry", _telemetry("a", "2026-01-01T00:00:02Z", t=2.0))
    box.put("telemetry", _telemetry("a", "2026-01-01T00:00:00Z", t=0.0, p=9.0))  # late
    box.put("system", {"kind": "x"})
    box.put("system", {"kind": "y"})
    assert len(box) == 4 and box.conflated == 2
    await asyncio.wait_for(box.wait(), 1)
    first = box.pop()
    assert first == ("telemetry", {"device_id": "a", "ts": "2026-01-01T00:00:02Z",
                                   "metrics": {"t": 2.0, "h": 5.0, "p": 9.0}})
    assert box.pop() == ("telemetry", _telemetry("b", "2026-01-01T00:00:01Z", t=7.0))
    assert [box.pop(), box.pop(), box.pop()] == [("system", {"kind": "x"}), ("system", {"kind": "y"}),
                                                 None]


def test_outbox_is_bounded_dropping_the_oldest() -> None:
    box = Outbox(max_keys=3)
    for i in range(10):
        box.put("telemetry", _telemetry(f"d{i}", "2026-01-01T00:00:00Z", t=float(i)))
    assert len(box) == 3 and box.dropped == 7
    assert box.pop() == ("telemetry", _telemetry("d7", "2026-01-01T00:00:00Z", t=7.0))


def test_merge_keeps_the_newer_envelope() -> None:
    merged = merge_telemetry(_telemetry("a", "2026-01-01T00:00:05Z", t=5.0),
                             _telemetry("a", "2026-01-01T00:00:03Z", t=3.0, h=1.0))
    assert merged == {"device_id": "a", "ts": "2026-01-01T00:00:05Z", "metrics": {"t": 5.0, "h": 1.0}}


# ---- OpenAPI ---------------------------------------------------------------------------


def test_openapi_document_comes_from_the_routes() -> None:
    @requires_auth(role="operator")
    async def change(request: Request) -> Response:
        """Change a thing.

        At length."""
        return JSONResponse({})

    async def public(request: Request) -> Response:
        return JSONResponse({})

    document = openapi_document(
        [Route("/things/{thing_id:int}", change, methods=["PATCH"]), Route("/p", public)],
        title="t", version="1")
    operation = document["paths"]["/things/{thing_id}"]["patch"]
    assert operation["summary"] == "Change a thing."
    assert operation["x-required-role"] == "operator" and operation["security"] == [{"bearer": []}]
    assert operation["parameters"][0]["schema"]["type"] == "integer"
    assert {"200", "401", "403"} <= set(operation["responses"])
    assert document["paths"]["/p"]["get"]["security"] == []


class _FakeSocket:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[object] = asyncio.Queue()


class _FakeSio:
    """What :class:`Fanout` uses of a Socket.IO server: emit, and Engine.IO's send queue."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, object]]] = []
        self.socket = _FakeSocket()
        self.manager = self
        self.eio = self
        self.sockets = {"eio-1": self.socket}

    def eio_sid_from_sid(self, sid: str, namespace: str) -> str:
        return "eio-1"

    async def emit(self, event: str, data: dict[str, object], to: str) -> None:
        self.sent.append((event, data))


async def test_fanout_conflates_while_the_transport_is_backed_up() -> None:
    from api.fanout import Fanout

    sio = _FakeSio()
    fanout = Fanout(sio, max_in_flight=4)  # type: ignore[arg-type]
    fanout.add_client("s1")
    fanout.join("s1", "device:d")
    for _ in range(4):  # a slow link: four packets not yet written
        sio.socket.queue.put_nowait(object())
    for i in range(100):
        await fanout.emit("telemetry", _telemetry("d", f"2026-01-01T00:00:{i // 10:02d}.{i % 10}Z",
                                                  t=float(i)), to=["device:d", "application:x"])
        await asyncio.sleep(0)
    await asyncio.sleep(0.05)
    assert sio.sent == []
    for _ in range(4):  # the link drains
        sio.socket.queue.get_nowait()
        sio.socket.queue.task_done()
    for _ in range(100):
        if sio.sent:
            break
        await asyncio.sleep(0.01)
    assert sio.sent == [("telemetry", _telemetry("d", "2026-01-01T00:00:09.9Z", t=99.0))]
    await fanout.remove_client("s1")
