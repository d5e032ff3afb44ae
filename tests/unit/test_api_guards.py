"""Unit tests of the API's guards: masking of secrets, the connection limiter, the password
pool, and uvicorn's protocol with header and body timeouts (on a local socket, no services)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from argon2 import PasswordHasher
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api.connlimit import ConnectionLimiter
from api.masking import mask_email, mask_rule_json, mask_url
from api.passwords import HashingBusy, Passwords
from api.server import guarded_http_protocol

# ---- masking ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "shown"), [
    ("https://hooks.example.com/services/T0/B0/XXXX", "https://hooks.example.com/***"),
    ("https://user:secret@hooks.example.com:8443/x?token=abc#f", "https://hooks.example.com:8443/***"),
    ("http://[::1]:9000/hook", "http://[::1]:9000/***"),
    ("http://", "***"),
    ("http://host:99999/", "***"),  # a port out of range: urlsplit refuses it
])
def test_webhook_urls_keep_only_scheme_and_host(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_emails_keep_one_letter_and_the_domain() -> None:
    assert mask_email("operator@plant.example") == "o***@plant.example"
    assert mask_email("@plant.example") == "***"
    assert mask_email("nobody") == "***"


def test_a_rules_json_is_masked_without_changing_the_original() -> None:
    rule = {"id": "r1", "notify": {"emails": ["a@b.c"], "webhooks": ["https://h/t"],
                                   "sms": ["+4915112345678"], "throttle_seconds": 300.0}}
    masked = mask_rule_json(rule)
    assert masked["notify"] == {"emails": ["a***@b.c"], "webhooks": ["https://h/***"],
                                "sms": ["+4915***78"], "throttle_seconds": 300.0, "masked": True}
    assert rule["notify"]["webhooks"] == ["https://h/t"]


# ---- connections per user --------------------------------------------------------------------


def test_connection_limiter_counts_per_user() -> None:
    limiter = ConnectionLimiter(2)
    assert limiter.acquire("ann") and limiter.acquire("ann")
    assert not limiter.acquire("ann")
    assert limiter.acquire("bob")
    limiter.release("ann")
    assert limiter.held("ann") == 1 and limiter.acquire("ann")
    for _ in range(5):
        limiter.release("bob")  # more releases than acquires never go negative
    assert limiter.held("bob") == 0
    with pytest.raises(ValueError):
        ConnectionLimiter(0)


# ---- the password pool -----------------------------------------------------------------------

_CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


async def test_password_checks_run_off_the_event_loop() -> None:
    passwords = Passwords(PasswordHasher(), workers=1, max_waiting=4)
    stored = passwords.hash("correct horse battery")
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        results = await asyncio.gather(passwords.verify_async(stored, "wrong horse battery"),
                                       passwords.verify_async(stored, "correct horse battery"))
    finally:
        ticker.cancel()
        passwords.close()
    assert results == [False, True]
    assert ticks >= 5  # the loop kept running while two full-cost hashes were checked


async def test_the_password_pool_refuses_beyond_its_bound() -> None:
    passwords = Passwords(_CHEAP, workers=1, max_waiting=1)
    release = threading.Event()
    started = threading.Event()

    def slow(_: str | None, __: str) -> bool:
        started.set()
        release.wait(5)
        return False

    passwords.verify = slow  # type: ignore[method-assign]
    first = asyncio.create_task(passwords.verify_async(None, "x" * 10))
    second = asyncio.create_task(passwords.verify_async(None, "x" * 10))
    await asyncio.sleep(0)
    assert passwords.in_flight == 2
    with pytest.raises(HashingBusy):
        await passwords.verify_async(None, "x" * 10)
    release.set()
    assert await asyncio.gather(first, second) == [False, False]
    assert passwords.in_flight == 0
    assert (await passwords.hash_async("long enough")).startswith("$argon2id$")
    passwords.close()


# ---- slow headers and bodies -----------------------------------------------------------------


async def _echo(request: Request) -> Response:
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > 10:  # answered before the rest of the body is read
            return JSONResponse({"error": "body too large"}, status_code=413)
    return JSONResponse({"got": size})


@pytest.fixture(scope="module")
def guarded_server() -> Iterator[int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    app = Starlette(routes=[Route("/echo", _echo, methods=["GET", "POST"])])
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning",
                            http=guarded_http_protocol(0.5, 0.5), timeout_keep_alive=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    yield port
    server.should_exit = True
    thread.join(5)


def _closed_after(sock: socket.socket, limit_s: float = 5.0) -> tuple[float, bytes]:
    """Seconds until the server closes ``sock``, and what it sent before."""
    started = time.monotonic()
    sock.settimeout(limit_s)
    received = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return time.monotonic() - started, received
        received += chunk


def test_slow_headers_are_cut_off(guarded_server: int) -> None:
    with socket.create_connection(("127.0.0.1", guarded_server)) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        waited, received = _closed_after(sock)
    assert waited < 2.0 and received == b""
    with socket.create_connection(("127.0.0.1", guarded_server)) as sock:  # nothing sent at all
        waited, _ = _closed_after(sock)
    assert waited < 2.0


def test_slow_bodies_are_cut_off(guarded_server: int) -> None:
    with socket.create_connection(("127.0.0.1", guarded_server)) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\nab")
        waited, received = _closed_after(sock)
    assert waited < 2.0 and received == b""


def test_prompt_requests_and_keep_alive_are_untouched(guarded_server: int) -> None:
    with socket.create_connection(("127.0.0.1", guarded_server)) as sock:
        sock.settimeout(5)
        for _ in range(2):
            sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
            assert b'{"got":3}' in sock.recv(65536)
            time.sleep(0.8)  # idle between requests longer than both timeouts: keep-alive rules
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b'{"got":0}' in sock.recv(65536)


def test_an_answer_before_the_body_ends_closes_the_connection(guarded_server: int) -> None:
    with socket.create_connection(("127.0.0.1", guarded_server)) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"10\r\n" + b"x" * 16 + b"\r\n")  # more than the route takes, and not the end
        waited, received = _closed_after(sock)
    assert received.startswith(b"HTTP/1.1 413") and waited < 2.0


def test_a_small_rest_of_a_body_answered_early_is_read_and_the_connection_kept(
        guarded_server: int) -> None:
    """Closing with unread bytes would reset the connection under the client's feet."""
    with socket.create_connection(("127.0.0.1", guarded_server)) as sock:
        sock.settimeout(5)
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n" + b"x" * 12)
        assert sock.recv(65536).startswith(b"HTTP/1.1 413")
        sock.sendall(b"y" * 8)  # the rest of the refused body
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")  # the same connection, reused
        assert b'{"got":0}' in sock.recv(65536)


def test_a_large_rest_answered_early_ends_gracefully(guarded_server: int) -> None:
    """The answer, then end-of-file while the client still writes; closed within the linger."""
    with socket.create_connection(("127.0.0.1", guarded_server)) as sock:
        sock.settimeout(5)
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n"
                     + b"x" * 16)
        received = b""
        started = time.monotonic()
        while True:
            sock.sendall(b"z" * 4096)  # still sending: no reset while the server lingers
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        assert received.startswith(b"HTTP/1.1 413") and time.monotonic() - started < 2.0
