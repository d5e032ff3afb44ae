"""The clients the API opens in its lifespan and closes on shutdown.

Nothing here connects at import time or in a constructor; every client is
created inside :func:`open_services` and tolerates its server being down at
start-up (the pool and Redis connect lazily, the tail retries in the background).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.requests import HTTPConnection

from api.device_accounts import reconcile_forever
from api.streaming import Emitter, TopicTail
from pipeline.mqtt_accounts import AccountAdmin
from pipeline.pgpool import make_pool
from pipeline.settings import Settings

__all__ = ["Services", "open_services", "services_of"]

_CONNECT_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class Services:
    pool: AsyncConnectionPool[Any]
    redis: Redis
    http: aiohttp.ClientSession
    tail: TopicTail
    influx: InfluxDBClientAsync | None = None  # None only where a test builds Services by hand
    accounts: AccountAdmin | None = None  # devices' MQTT accounts; None: managed elsewhere


def services_of(conn: HTTPConnection) -> Services:
    """The services of the running app (set by its lifespan)."""
    services: Services = conn.app.state.services
    return services


@contextlib.asynccontextmanager
async def open_services(settings: Settings, emitter: Emitter) -> AsyncIterator[Services]:
    """Open the PostgreSQL pool, Redis, HTTP session, InfluxDB client and live tail; close them after."""
    async with contextlib.AsyncExitStack() as stack:
        pool = make_pool(settings.pg_conninfo, name="webscada-api",
                         connect_timeout=int(_CONNECT_TIMEOUT_S))
        await pool.open(wait=False)
        stack.push_async_callback(pool.close)

        redis = Redis.from_url(
            settings.redis_url,
            decode_responses=True,
            socket_connect_timeout=_CONNECT_TIMEOUT_S,
            socket_timeout=_CONNECT_TIMEOUT_S,
            # A Redis restart leaves dead pooled connections: retry on a fresh one
            # instead of failing the request, and probe idle connections.
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
            health_check_interval=15,
        )
        stack.push_async_callback(redis.aclose)

        http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=_CONNECT_TIMEOUT_S * 2)
        )
        stack.push_async_callback(http.close)

        tail = TopicTail(bootstrap=settings.kafka_bootstrap, emitter=emitter)
        tail.start()
        stack.push_async_callback(tail.stop)

        influx = InfluxDBClientAsync(
            url=settings.influx_url,
            token=settings.influx_token.get_secret_value(),
            org=settings.influx_org,
            timeout=10_000,
        )
        stack.push_async_callback(influx.close)

        accounts = AccountAdmin(settings) if settings.mqtt_manage_accounts else None
        if accounts is not None:
            reconciler = asyncio.create_task(reconcile_forever(accounts, pool),
                                             name="mqtt-account-reconcile")
            stack.callback(reconciler.cancel)

        yield Services(pool=pool, redis=redis, http=http, tail=tail, influx=influx,
                       accounts=accounts)
