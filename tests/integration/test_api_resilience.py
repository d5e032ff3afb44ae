"""One client cannot stall the API or lock a user out: password hashing off the event loop,
atomic login limits, bounded bodies on the routes anyone may call, WebSocket limits.

Run against the real stack (``api_server``); each login test uses loopback addresses
of its own (127.x.y.z), so the per-address counters of other tests do not interfere.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx
import jwt
import psycopg
import pytest
import socketio
from aiokafka import AIOKafkaConsumer, TopicPartition
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

import api.topics as topics_module
from api.config import load_api_config
from pipeline.settings import Topics
from schemas.codec import registry
from schemas.records import SystemEvent, Telemetry, TelemetryMetadata
from tests.conftest import unique_id
from tests.integration.conftest import create_user
from tests.integration.helpers import produce_raw
from tests.integration.live import create_device

if TYPE_CHECKING:
    from tests.integration.conftest import ApiServer

pytestmark = pytest.mark.integration

# What a user would accept from /health while the API is under a login storm.
HEALTH_P99_BOUND_S = 1.0


def _address() -> str:
    return f"127.{random.randint(1, 254)}.{random.randint(0, 254)}.{random.randint(2, 254)}"


def _client(api: ApiServer, address: str | None = None, timeout: float = 60) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(local_address=address or _address())
    return httpx.AsyncClient(base_url=api.base_url, timeout=timeout, transport=transport)


async def _login(client: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
    return await client.post("/api/auth/token", json={"username": username, "password": password})


def _reading(device_id: str, application_id: str) -> bytes:
    now = datetime.now(UTC)
    return Telemetry(device_id=device_id, protocol="mqtt", ts=now, received_at=now,
                     message_id=uuid.uuid4().hex, metrics={"temperature": 20.0},
                     application_id=application_id, metadata=TelemetryMetadata()).encode()


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98]


# ---- password hashing off the event loop ---------------------------------------------------


async def test_fifty_parallel_failed_logins_do_not_stall_health_or_ingest(
    api_server: ApiServer,
) -> None:
    device, key = await asyncio.to_thread(create_device, api_server, "http")
    health: list[tuple[float, int]] = []
    ingest: list[int] = []
    storm_over = asyncio.Event()

    async def poll(client: httpx.AsyncClient) -> None:
        while not storm_over.is_set():
            started = time.perf_counter()
            answer = await client.get("/health")
            health.append((time.perf_counter() - started, answer.status_code))
            sent = await client.post(f"/api/devices/{device}/telemetry",
                                     json={"temperature": 20.0}, headers={"X-API-Key": key})
            ingest.append(sent.status_code)
            await asyncio.sleep(0.05)

    async def failed_login() -> int:
        # Each from an address and for a name of its own: no limit applies, every one is hashed.
        async with _client(api_server) as client:
            return (await _login(client, unique_id("storm"), "not-the-password")).status_code

    async with _client(api_server, "127.0.0.1", timeout=30) as prober:
        poller = asyncio.create_task(poll(prober))
        await asyncio.sleep(1.0)
        before = len(health)
        started = time.perf_counter()
        codes = await asyncio.gather(*(failed_login() for _ in range(50)))
        storm_s = time.perf_counter() - started
        storm_over.set()
        await poller
    during = [latency for latency, _ in health[before:]]
    p99 = _p99(during)
    print(f"\n50 parallel failed logins took {storm_s:.1f} s ({codes.count(401)} x 401, "
          f"{codes.count(503)} x 503); /health during them: {len(during)} polls, "
          f"median {statistics.median(during) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
          f"max {max(during) * 1000:.0f} ms; device ingest: {len(ingest)} x {sorted(set(ingest))}")
    assert set(codes) <= {401, 503}
    assert codes.count(401) >= 40  # the pool queues them; it sheds only beyond its bound
    assert {status for _, status in health} == {200}
    assert set(ingest) == {202}
    assert p99 < HEALTH_P99_BOUND_S


# ---- login limits -------------------------------------------------------------------------


@pytest.fixture
async def user(api_server: ApiServer) -> AsyncIterator[tuple[str, str]]:
    name, password = await asyncio.to_thread(create_user, api_server.settings, "viewer")
    api_server.usernames.append(name)
    yield name, password


async def test_thirty_parallel_wrong_passwords_evaluate_at_most_the_limit(
    api_server: ApiServer, user: tuple[str, str]
) -> None:
    name, _ = user
    limit = load_api_config(api_server.settings).login_limit_per_user
    async with _client(api_server) as client:
        answers = await asyncio.gather(*(_login(client, name, f"wrong-{i}-pass") for i in range(30)))
    codes = [answer.status_code for answer in answers]
    print(f"\n30 parallel wrong passwords: {codes.count(401)} evaluated (401), "
          f"{codes.count(429)} refused (429); limit {limit}")
    assert codes.count(401) <= limit
    assert codes.count(401) + codes.count(429) == 30
    assert all(int(a.headers["retry-after"]) >= 1 for a in answers if a.status_code == 429)


async def test_a_strangers_failures_elsewhere_do_not_lock_the_user_out(
    api_server: ApiServer, user: tuple[str, str]
) -> None:
    name, password = user
    stranger = _address()
    async with _client(api_server, stranger) as client:
        codes = [(await _login(client, name, "guessing-1")).status_code for _ in range(30)]
        right_from_there = await _login(client, name, password)
    assert 429 in codes
    assert right_from_there.status_code == 429  # the pair (user, stranger's address) is blocked
    async with _client(api_server) as client:
        mine = await _login(client, name, password)
    assert mine.status_code == 200, mine.text


async def test_many_strangers_only_delay_new_addresses_and_never_the_users_own(
    api_server: ApiServer, user: tuple[str, str]
) -> None:
    name, password = user
    config = load_api_config(api_server.settings)
    home = _address()
    async with _client(api_server, home) as client:
        assert (await _login(client, name, password)).status_code == 200  # home is now known
    # Strangers from several addresses fail beyond the user-wide delay threshold.
    failures = 0
    while failures <= config.login_user_delay_after:
        async with _client(api_server) as client:
            for _ in range(config.login_limit_per_user):
                code = (await _login(client, name, "guessing-2")).status_code
                failures += code == 401
                assert code in (401, 429)
                if code == 429:
                    break
    async with _client(api_server) as client:
        delayed = await _login(client, name, password)
    assert delayed.status_code == 429
    assert delayed.json()["error"] == "failed attempts for this user are being slowed down"
    assert 1 <= int(delayed.headers["retry-after"]) <= config.login_user_max_delay_s
    async with _client(api_server, home) as client:
        at_home = await _login(client, name, password)
    assert at_home.status_code == 200, at_home.text


# ---- bodies of the routes anyone may call -------------------------------------------------


@pytest.mark.parametrize("path", ["/api/auth/token", "/api/auth/refresh"])
async def test_large_bodies_are_refused_while_they_stream(api_server: ApiServer, path: str) -> None:
    sent = 0

    async def fifty_megabytes() -> AsyncIterator[bytes]:
        nonlocal sent
        chunk = b" " * 65536
        for _ in range(800):
            sent += len(chunk)
            yield chunk

    async with _client(api_server, timeout=30) as client:
        declared = await client.post(path, content=b"{" + b" " * 60_000 + b"}",
                                     headers={"Content-Type": "application/json"})
        try:
            streamed = await client.post(path, content=fifty_megabytes(),
                                         headers={"Content-Type": "application/json"})
            status = streamed.status_code
        except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
            status = 413  # the server answered and closed while the body was still being sent
    assert declared.status_code == 413 and declared.json()["error"] == "body too large"
    assert status == 413
    assert sent < 50 * 1024 * 1024  # it stopped reading long before the end


# ---- alarm rules: filtered by application, secrets masked ---------------------------------


async def test_alarm_rules_are_filtered_by_application_and_masked(api_server: ApiServer) -> None:
    app_a, app_b = unique_id("rules-a"), unique_id("rules-b")
    dev_a, dev_b = unique_id("rdev-a"), unique_id("rdev-b")
    with psycopg.connect(api_server.settings.pg_conninfo, autocommit=True) as conn:
        for device, application in ((dev_a, app_a), (dev_b, app_b)):
            conn.execute("INSERT INTO devices (id, protocol, application_id) VALUES (%s, 'mqtt', %s)",
                         (device, application))
    secret = "T00/B00/" + uuid.uuid4().hex
    notify = {"emails": ["operator@plant.example"],
              "webhooks": [f"https://user:pw@hooks.example.com:8443/services/{secret}?token={secret}"]}
    admin = {"Authorization": f"Bearer {api_server.token}"}
    viewer_a = {"Authorization": f"Bearer {api_server.user_token('viewer', [app_a])}"}
    nobody = {"Authorization": f"Bearer {api_server.user_token('viewer')}"}
    created: dict[str, str] = {}
    try:
        async with httpx.AsyncClient(base_url=api_server.base_url, timeout=15) as client:
            for name, scope in (("app_a", {"application_id": app_a}), ("dev_a", {"device_id": dev_a}),
                                ("app_b", {"application_id": app_b}), ("dev_b", {"device_id": dev_b}),
                                ("every", {})):
                answer = await client.post("/api/alarm-rules", headers=admin, json={
                    "name": unique_id(name), "metric": "temperature", "operator": ">",
                    "threshold": 50, "notify": notify, **scope})
                assert answer.status_code == 201, answer.text
                created[name] = answer.json()["id"]
            listed = {r["id"]: r for r in (await client.get("/api/alarm-rules", headers=viewer_a)).json()}
            listed_nobody = {r["id"] for r in
                             (await client.get("/api/alarm-rules", headers=nobody)).json()}
            one = {name: await client.get(f"/api/alarm-rules/{rule}", headers=viewer_a)
                   for name, rule in created.items()}
            as_admin = (await client.get(f"/api/alarm-rules/{created['app_a']}", headers=admin)).json()
    finally:
        with psycopg.connect(api_server.settings.pg_conninfo, autocommit=True) as conn:
            conn.execute("DELETE FROM alarm_rules WHERE id = ANY(%s)", (list(created.values()),))
            conn.execute("DELETE FROM devices WHERE id = ANY(%s)", ([dev_a, dev_b],))
    mine = {created["app_a"], created["dev_a"], created["every"]}
    assert mine <= set(listed)
    assert not {created["app_b"], created["dev_b"]} & set(listed)
    assert {n: r.status_code for n, r in one.items()} == {
        "app_a": 200, "dev_a": 200, "app_b": 404, "dev_b": 404, "every": 200}
    assert created["every"] in listed_nobody and not (mine - {created["every"]}) & listed_nobody
    for rule in [listed[r] for r in mine] + [one["app_a"].json()]:
        assert secret not in str(rule) and "operator@" not in str(rule)
        assert rule["notify"]["webhooks"] == ["https://hooks.example.com:8443/***"]
        assert rule["notify"]["emails"] == ["o***@plant.example"]
    assert as_admin["notify"]["webhooks"] == notify["webhooks"]  # admins see the targets


# ---- WebSockets: per-user limit, bounded replays, nothing read for a user who sees nothing --


async def test_websockets_per_user_are_limited(api_server: ApiServer) -> None:
    limit = load_api_config(api_server.settings).ws_max_per_user
    token = api_server.user_token("viewer", [unique_id("ws-app")])
    url = f"{api_server.ws_url}/ws/topics/{Topics.SYSTEM}?token={token}"
    async with contextlib.AsyncExitStack() as stack:
        sockets = [await stack.enter_async_context(ws_connect(url)) for _ in range(limit)]
        async with ws_connect(url) as extra:
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(extra.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4429
        sio = socketio.AsyncClient(reconnection=False)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await sio.connect(api_server.base_url, auth={"token": token}, transports=["websocket"],
                              wait_timeout=10)
        await sio.disconnect()
        assert all(ws.close_code is None for ws in sockets)
        await sockets[0].close()
        await asyncio.sleep(0.5)
        await sio.connect(api_server.base_url, auth={"token": token}, transports=["websocket"],
                          wait_timeout=10)  # a place is free again
        await sio.disconnect()


async def test_a_user_who_sees_nothing_gets_no_consumer_and_nothing_decoded(
    api_server: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[int] = []
    original = topics_module.record_views

    def counting(value: bytes) -> Any:
        decoded.append(len(value))
        return original(value)

    monkeypatch.setattr(topics_module, "record_views", counting)
    device, application = unique_id("ws-none-dev"), unique_id("ws-none-app")
    await asyncio.to_thread(produce_raw, api_server.settings, Topics.VALID,
                            _reading(device, application), device.encode())
    nothing = api_server.user_token("viewer")
    started = time.perf_counter()
    async with ws_connect(f"{api_server.ws_url}/ws/topics/{Topics.VALID}?from=earliest"
                          f"&token={nothing}") as ws:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 3)
        assert ws.close_code is None
    assert decoded == []
    print(f"\nviewer without application: connection held {time.perf_counter() - started:.1f} s, "
          "0 records decoded")
    # The control: a viewer of the application is replayed the reading.
    token = api_server.user_token("viewer", [application])
    async with ws_connect(f"{api_server.ws_url}/ws/topics/{Topics.VALID}?from=earliest"
                          f"&token={token}") as ws:
        async with asyncio.timeout(30):
            while json.loads(await ws.recv())["key"] != device:
                pass
    assert decoded


async def test_earliest_replays_at_most_the_configured_records_per_partition(
    api_server: ApiServer,
) -> None:
    settings = api_server.settings
    key = unique_id("replay")
    for index in range(8):
        event = SystemEvent(kind="replay_bound", source="tests.resilience", device_id=key,
                            attributes={"index": str(index)})
        await asyncio.to_thread(produce_raw, settings, Topics.SYSTEM, event.encode(), key.encode())
    consumer = AIOKafkaConsumer(Topics.SYSTEM, bootstrap_servers=settings.kafka_bootstrap,
                                group_id=None, enable_auto_commit=False, auto_offset_reset="latest")
    await consumer.start()
    try:
        async with asyncio.timeout(20):
            await topics_module._start_at(consumer, "earliest", 3)
        partitions = sorted(consumer.assignment())
        ends = await consumer.end_offsets(partitions)
        got = await consumer.getmany(timeout_ms=3000, max_records=10_000)
    finally:
        await consumer.stop()
    records = [message for messages in got.values() for message in messages]
    ours = [m for m in records if m.key == key.encode()]
    assert len(records) <= 3 * len(partitions)
    assert all(m.offset >= ends[TopicPartition(m.topic, m.partition)] - 3 for m in records)
    indexes = [registry().decode(m.value, SystemEvent.SCHEMA).record["attributes"]["index"]
               for m in ours if m.value is not None]
    assert indexes == ["5", "6", "7"]


async def test_topic_websocket_closes_when_its_token_expires(api_server: ApiServer) -> None:
    config = load_api_config(api_server.settings)
    now = int(time.time())
    user, _ = create_user(api_server.settings, "admin")  # it exists: only the expiry ends it
    api_server.usernames.append(user)
    token = jwt.encode({"iss": config.jwt_issuer, "aud": config.jwt_audience, "sub": user,
                        "iat": now, "nbf": now, "exp": now + 3, "jti": uuid.uuid4().hex,
                        "role": "admin", "apps": []},
                       config.jwt_secret.get_secret_value(), algorithm="HS256",
                       headers={"typ": "at+jwt"})
    async with ws_connect(f"{api_server.ws_url}/ws/topics/{Topics.SYSTEM}?token={token}") as ws:
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(15):
                while True:
                    await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    assert closed.value.rcvd.reason != "user removed or disabled"
