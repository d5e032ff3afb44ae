"""One client cannot stall the API or lock a user out: password hashing off the event loop,
atomic login limits, bounded bodies on the routes anyone may call, WebSocket limits.

Run against the real stack (``api_server``); each login test uses loopback addresses
of its own (127.x.y.z), so the per-address counters of other tests do not interfere.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import httpx
import pytest

from api.config import load_api_config
from tests.conftest import unique_id
from tests.integration.conftest import create_user
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
