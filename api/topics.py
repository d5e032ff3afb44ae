"""``/ws/topics/{topic}?from=latest|earliest``: one topic's tail as JSON over a plain WebSocket.

Each connection gets its own aiokafka consumer (no consumer group, every
partition assigned), stopped when the client goes away. Frames wait in a bounded
queue that drops its oldest frame when full, so a slow reader costs a fixed
amount of memory and simply misses records (counted in ``/metrics``).

Admins get every record; other users only records whose value names an
application granted to them (``application_id``), so a topic whose records carry
none shows them nothing. A user with no application granted (and not admin) can
be shown nothing: its connection stays open but no consumer is created and
nothing is read or decoded for it.

``from=earliest`` replays at most ``ws_replay_max_records`` records (settings)
before the end of each partition, not the whole retention. One user holds at most
``ws_max_per_user`` connections (with its Socket.IO connections) per process. A
connection ends when its access token expires (4401; the client reconnects
with a fresh one), and within ``ws_credential_check_s`` of its user being
deleted or disabled (4401, ``user removed or disabled``; :mod:`api.connwatch`).

A handshake from a browser page of another origin (``Origin`` not in the
configured list) is refused with HTTP 403. Close codes: 4401 bad, missing or
expired token, 4404 unknown topic, 4400 bad ``from``, 4429 too many connections
of this user, 1013 Kafka unreachable, 1011 reading Kafka failed mid-stream.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from typing import Generic, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.errors import KafkaError
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketState

from api.access import origin_allowed
from api.auth import Principal, authenticator_of, websocket_token
from api.config import ApiConfig
from api.connlimit import ConnectionLimiter
from api.connwatch import ConnectionWatch
from api.metrics import WS_CLIENTS, WS_DROPPED, WS_FRAMES
from api.payloads import dumps, record_views, topic_frame
from pipeline.settings import Settings, Topics
from schemas.batch import is_batch
from schemas.errors import CodecError, InvalidRecordError

__all__ = ["DEFAULT_QUEUE_SIZE", "FROM_POSITIONS", "DropOldestQueue", "topic_stream_route"]

log = logging.getLogger(__name__)

FROM_POSITIONS = ("latest", "earliest")
DEFAULT_QUEUE_SIZE = 1000
_MAX_REASON = 120  # a close reason must fit in 123 bytes
_START_TIMEOUT_S = 10.0

T = TypeVar("T")


class DropOldestQueue(Generic[T]):
    """A bounded FIFO for one consumer task; a put on a full queue evicts the oldest item."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, got {maxsize}")
        self._items: collections.deque[T] = collections.deque(maxlen=maxsize)
        self._nonempty = asyncio.Event()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> bool:
        """Add ``item``; True when the oldest item was dropped to make room."""
        dropped = len(self._items) == self._items.maxlen
        self._items.append(item)  # a full deque discards from the left
        self.dropped += dropped
        self._nonempty.set()
        return dropped

    async def get(self) -> T:
        while not self._items:
            self._nonempty.clear()
            await self._nonempty.wait()
        return self._items.popleft()


def _reason(text: str) -> str:
    return text.encode()[:_MAX_REASON].decode(errors="ignore")


def _frames(message: ConsumerRecord[bytes, bytes], principal: Principal) -> list[str]:
    """The frames of one record: one per reading of a telemetry batch, else one."""
    if message.value is None:
        return []
    try:
        views = record_views(message.value)
    except (CodecError, InvalidRecordError) as exc:
        log.warning(
            "ws tail: skipping %s[%d]@%d: %s",
            message.topic, message.partition, message.offset, exc,
        )
        return []
    batched = len(views) > 1 or is_batch(message.value)
    frames: list[str] = []
    for index, (schema, value) in enumerate(views):
        if not principal.is_admin and not principal.may_see(value.get("application_id")):
            continue
        frames.append(dumps(topic_frame(
            topic=message.topic, partition=message.partition, offset=message.offset,
            key=message.key, timestamp_ms=message.timestamp, schema=schema, value=value,
            index=index if batched else None,
        )))
    return frames


async def _pump(
    consumer: AIOKafkaConsumer, topic: str, queue: DropOldestQueue[str], principal: Principal
) -> None:
    while True:
        batches = await consumer.getmany(timeout_ms=1000, max_records=200)
        for messages in batches.values():
            for message in messages:
                for text in _frames(message, principal):
                    if queue.put(text):
                        WS_DROPPED.labels(topic).inc()
        await asyncio.sleep(0)  # let the sender run between batches of a replay


async def _send(websocket: WebSocket, topic: str, queue: DropOldestQueue[str]) -> None:
    while True:
        await websocket.send_text(await queue.get())
        WS_FRAMES.labels(topic).inc()


async def _watch(websocket: WebSocket) -> None:
    while (await websocket.receive())["type"] != "websocket.disconnect":
        pass  # the client has nothing to say; we only notice when it leaves


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    if (
        websocket.client_state is WebSocketState.CONNECTED
        and websocket.application_state is WebSocketState.CONNECTED
    ):
        with contextlib.suppress(RuntimeError, OSError):
            await websocket.close(code, _reason(reason))


async def _expire(expires_at: float | None) -> None:
    """Returns when the connection's token expires (never when it has no expiry)."""
    if expires_at is None:
        await asyncio.Event().wait()
    else:
        await asyncio.sleep(max(0.0, expires_at - time.time()))


async def _stream(
    websocket: WebSocket, consumer: AIOKafkaConsumer | None, topic: str, size: int,
    principal: Principal, expires_at: float | None, revoked: asyncio.Event,
) -> None:
    """Until the client leaves, the token expires, the user is removed (``revoked``) or
    Kafka fails. Without a consumer (a user who can see nothing) nothing is read."""
    queue: DropOldestQueue[str] = DropOldestQueue(size)
    pump = (asyncio.create_task(_pump(consumer, topic, queue, principal)) if consumer is not None
            else asyncio.create_task(asyncio.Event().wait()))
    expiry = asyncio.create_task(_expire(expires_at))
    tasks = [pump, asyncio.create_task(_send(websocket, topic, queue)),
             asyncio.create_task(_watch(websocket)), expiry, asyncio.create_task(revoked.wait())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        if queue.dropped:
            log.info("ws tail %s: client too slow, %d frames dropped", topic, queue.dropped)
    pump_error = results[0]
    if isinstance(pump_error, Exception):  # the pump only ends by failing (or being cancelled)
        log.warning("ws tail %s: reading Kafka failed: %r", topic, pump_error)
        await _close(websocket, 1011, "reading Kafka failed")  # the log has the error
    elif expiry.done() and not expiry.cancelled():
        await _close(websocket, 4401, "token expired: reconnect with a fresh one")
    elif revoked.is_set():
        await _close(websocket, 4401, "user removed or disabled")
    else:
        await _close(websocket, 1000, "")


async def _start_at(consumer: AIOKafkaConsumer, start: str, max_records: int) -> None:
    """For ``earliest``: each partition from at most ``max_records`` before its end."""
    if start != "earliest":
        return  # the consumer's auto_offset_reset is latest
    # aiokafka assigns the partitions once metadata arrives, and offers nothing to wait on
    while not consumer.assignment():  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    partitions = sorted(consumer.assignment())
    begins = await consumer.beginning_offsets(partitions)
    ends = await consumer.end_offsets(partitions)
    for partition in partitions:
        consumer.seek(partition, max(begins[partition], ends[partition] - max_records))


def topic_stream_route(
    path: str = "/ws/topics/{topic}", *, queue_size: int = DEFAULT_QUEUE_SIZE
) -> WebSocketRoute:
    """The WebSocket route; each client's queue holds at most ``queue_size`` frames."""

    async def topic_stream(websocket: WebSocket) -> None:
        topic: str = websocket.path_params["topic"]
        if not origin_allowed(websocket):
            await websocket.close(1008)  # before the accept: the handshake is answered 403
            return
        # Accept first: a close code (4401, 4404) can only be sent on an open WebSocket.
        await websocket.accept()
        principal = authenticator_of(websocket).authenticate(websocket_token(websocket))
        if principal is None:
            await _close(websocket, 4401, "unauthorized: pass ?token= or Authorization: Bearer")
            return
        if topic not in Topics.ALL:
            await _close(websocket, 4404, f"unknown topic {topic!r}")
            return
        start = websocket.query_params.get("from", "latest")
        if start not in FROM_POSITIONS:
            await _close(websocket, 4400, f"from must be latest or earliest, not {start!r}")
            return
        limiter: ConnectionLimiter = websocket.app.state.ws_limiter
        if not limiter.acquire(principal.subject):
            await _close(websocket, 4429, f"at most {limiter.per_user} connections per user")
            return
        revoked = asyncio.Event()

        async def revoke() -> None:
            revoked.set()

        watch: ConnectionWatch[str] | None = getattr(websocket.app.state, "user_watch", None)
        try:
            held = watch.holding(principal.subject, revoke) if watch else contextlib.nullcontext()
            with held:
                await _serve(websocket, topic, start, principal, revoked)
        finally:
            limiter.release(principal.subject)

    async def _serve(websocket: WebSocket, topic: str, start: str, principal: Principal,
                     revoked: asyncio.Event) -> None:
        settings: Settings = websocket.app.state.settings
        config: ApiConfig = websocket.app.state.api_config
        expires = getattr(authenticator_of(websocket), "expires_at", None)
        expires_at = expires(websocket_token(websocket) or "") if expires is not None else None
        WS_CLIENTS.labels(topic).inc()
        if not principal.is_admin and not principal.applications:
            try:  # nothing it may see: no consumer, nothing read or decoded
                await _stream(websocket, None, topic, 1, principal, expires_at, revoked)
            finally:
                WS_CLIENTS.labels(topic).dec()
            return
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            client_id="webscada-api-ws",
        )
        try:
            async with asyncio.timeout(_START_TIMEOUT_S):
                await consumer.start()
                await _start_at(consumer, start, config.ws_replay_max_records)
            await _stream(websocket, consumer, topic, queue_size, principal, expires_at, revoked)
        except (KafkaError, TimeoutError) as exc:
            log.warning("ws tail %s: cannot reach Kafka: %s", topic, exc)
            await _close(websocket, 1013, "Kafka unavailable, try again later")
        finally:
            WS_CLIENTS.labels(topic).dec()
            await consumer.stop()

    return WebSocketRoute(path, topic_stream)
