"""``GET /health``: every dependency checked concurrently, each within a short timeout."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import ssl
import struct
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiokafka.client import AIOKafkaClient
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import JSONResponse

from api.errors import request_id_of
from api.metrics import DEPENDENCY_UP
from api.openapi import describe
from api.services import services_of
from pipeline.heartbeat import component_health, read_components_async
from pipeline.mqtt_accounts import broker_ca
from pipeline.settings import Settings

__all__ = [
    "CHECK_TIMEOUT_S",
    "CheckResult",
    "check_influxdb",
    "check_kafka",
    "check_mqtt",
    "check_postgres",
    "check_redis",
    "health_endpoint",
    "run_checks",
]

CHECK_TIMEOUT_S = 2.0

Check = Callable[[], Awaitable[None]]

# MQTT 3.1.1 CONNACK return codes (OASIS spec, section 3.2.2.3).
_CONNACK_CODES = {
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}


class DependencyDown(Exception):
    """A dependency answered, but not as a healthy one does."""


@dataclass(frozen=True, slots=True)
class CheckResult:
    up: bool
    latency_ms: float
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": "up" if self.up else "down",
            "latency_ms": round(self.latency_ms, 1),
        }
        if self.error is not None:
            out["error"] = self.error
        return out


async def _timed(check: Check, timeout_s: float) -> CheckResult:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            await check()
    except TimeoutError:
        error: str | None = f"no answer within {timeout_s:g} s"
    except Exception as exc:  # any failure of a probe is that dependency being down
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    else:
        error = None
    return CheckResult(error is None, (time.perf_counter() - started) * 1000, error)


async def run_checks(
    checks: Mapping[str, Check], timeout_s: float = CHECK_TIMEOUT_S
) -> dict[str, CheckResult]:
    """Run all ``checks`` at once; each is down if it raises or exceeds ``timeout_s``."""
    names = list(checks)
    results = await asyncio.gather(*(_timed(checks[n], timeout_s) for n in names))
    return dict(zip(names, results, strict=True))


async def check_kafka(bootstrap: str, timeout_s: float = CHECK_TIMEOUT_S) -> None:
    """A metadata request to the bootstrap servers; at least one broker must be listed."""
    client = AIOKafkaClient(
        bootstrap_servers=bootstrap,
        client_id="webscada-api-health",
        request_timeout_ms=int(timeout_s * 1000),
    )
    try:
        await client.bootstrap()
        if not client.cluster.brokers():
            raise DependencyDown("metadata lists no broker")
    finally:
        await client.close()


async def check_postgres(pool: AsyncConnectionPool[Any], timeout_s: float = CHECK_TIMEOUT_S) -> None:
    async with pool.connection(timeout=timeout_s) as conn:
        await conn.execute("SELECT 1")


async def check_redis(client: Redis) -> None:
    if not await client.ping():
        raise DependencyDown("PING was not answered with PONG")


async def check_influxdb(session: aiohttp.ClientSession, url: str) -> None:
    async with session.get(f"{url.rstrip('/')}/health") as response:
        if response.status != 200:
            raise DependencyDown(f"GET /health answered {response.status}")
        body = await response.json(content_type=None)
        if not isinstance(body, dict) or body.get("status") != "pass":
            raise DependencyDown(f"GET /health reports {body!r:.200}")


def _mqtt_connect_packet(client_id: str, keepalive_s: int = 5) -> bytes:
    encoded_id = client_id.encode()
    variable = b"\x00\x04MQTT" + bytes([4, 0x02]) + struct.pack("!H", keepalive_s)
    payload = struct.pack("!H", len(encoded_id)) + encoded_id
    remaining = len(variable) + len(payload)
    if remaining > 127:  # one-byte remaining length is all a short client id needs
        raise ValueError(f"client id {client_id!r} is too long")
    return bytes([0x10, remaining]) + variable + payload


async def check_mqtt(host: str, port: int, ca: str | None = None) -> None:
    """TCP connect, MQTT 3.1.1 CONNECT (clean session, no account), expect a CONNACK (accepted,
    or refused for want of an account), DISCONNECT."""
    tls = ssl.create_default_context(cafile=ca) if ca else None
    reader, writer = await asyncio.open_connection(host, port, ssl=tls)
    try:
        writer.write(_mqtt_connect_packet(f"webscada-health-{secrets.token_hex(4)}"))
        await writer.drain()
        connack = await reader.readexactly(4)
        if connack[0] != 0x20 or connack[1] != 0x02:
            raise DependencyDown(f"expected CONNACK, got {connack.hex()}")
        # 4/5: bad credentials / not authorised: the broker is up and refuses strangers,
        # as it should (the probe carries no account).
        if connack[3] not in (0, 4, 5):
            reason = _CONNACK_CODES.get(connack[3], "unknown code")
            raise DependencyDown(f"CONNACK refused: {connack[3]} ({reason})")
        writer.write(b"\xe0\x00")  # DISCONNECT
        await writer.drain()
    finally:
        writer.close()
        # The broker may drop the socket first after DISCONNECT.
        with contextlib.suppress(OSError):
            await writer.wait_closed()


_HEALTH = {
    "type": "object",
    "required": ["status", "dependencies", "components"],
    "properties": {
        "status": {"type": "string", "enum": ["ok", "degraded"]},
        "components": {"type": "object", "additionalProperties": {
            "type": "object", "required": ["status", "required", "instances"],
            "properties": {"status": {"type": "string", "enum": ["up", "stale", "down"]},
                           "required": {"type": "boolean"},
                           "last_beat_s": {"type": "number", "nullable": True},
                           "instances": {"type": "array", "items": {"type": "object"}}},
        }},
        "request_id": {"type": "string", "nullable": True},
        "dependencies": {"type": "object", "additionalProperties": {
            "type": "object", "required": ["status", "latency_ms"],
            "properties": {"status": {"type": "string", "enum": ["up", "down"]},
                           "latency_ms": {"type": "number"}, "error": {"type": "string"}},
        }},
    },
}


async def _components(services: Any, settings: Settings) -> dict[str, dict[str, Any]]:
    """The heartbeats' view (:mod:`pipeline.heartbeat`); a required component never heard of
    is down. Redis away: only the required ones, down."""
    try:
        known, beats = await asyncio.wait_for(read_components_async(services.redis), CHECK_TIMEOUT_S)
    except (RedisError, OSError, TimeoutError):
        known, beats = {}, []
    return component_health(known, beats, now=time.time(), required=settings.health_required)


@describe(response=_HEALTH, errors=(), other={503: _HEALTH})
async def health_endpoint(request: Request) -> JSONResponse:
    """Each dependency's state and each process's heartbeat (200 when every dependency and
    every required component is up, 503 otherwise)."""
    settings: Settings = request.app.state.settings
    services = services_of(request)
    checks: dict[str, Check] = {
        "kafka": lambda: check_kafka(settings.kafka_bootstrap),
        "postgres": lambda: check_postgres(services.pool),
        "redis": lambda: check_redis(services.redis),
        "influxdb": lambda: check_influxdb(services.http, settings.influx_url),
        "mqtt": lambda: check_mqtt(settings.mqtt_host, settings.mqtt_port, broker_ca(settings)),
    }
    results = await run_checks(checks)
    for name, result in results.items():
        DEPENDENCY_UP.labels(name).set(1 if result.up else 0)
    components = await _components(services, settings)
    healthy = all(r.up for r in results.values()) and all(
        c["status"] == "up" for c in components.values() if c["required"])
    return JSONResponse(
        {
            "status": "ok" if healthy else "degraded",
            "dependencies": {name: r.to_json() for name, r in results.items()},
            "components": components,
            # its own request id: the report is this route's answer, which the response
            # hygiene (api.hygiene) then sends as it is, also with status 503
            "request_id": request_id_of(request),
        },
        status_code=200 if healthy else 503,
    )
