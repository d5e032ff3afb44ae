"""The dispatcher's MQTT connection: commands out (QoS 1, PUBACK awaited), acks in.

One paho client with a persistent session (clean session off, a client id that
stays the same across restarts of the process, like the MQTT connector's). Acks
are read through shared subscriptions (``$share/{group}/...``): however many
dispatchers run, each ack reaches one of them, and an ack routed to a dispatcher
that is down or was killed is kept by the broker until it reconnects. An
incoming ack is acknowledged to the broker (PUBACK) only when the caller says so,
after Kafka took its status. Each dispatcher process therefore needs its own
client id; a dispatcher retired for good leaves a session the broker keeps
feeding (wipe it by connecting once with that id and a clean session, or let
Mosquitto's ``persistent_client_expiration`` remove it).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from pipeline.commands.transports import Publish

__all__ = ["CommandLink", "Incoming"]

log = logging.getLogger(__name__)

_POLL_S = 0.01


@dataclass(frozen=True, slots=True)
class Incoming:
    """A message received on an ack subscription, not yet acknowledged to the broker."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    session: int  # which connection it came on: an ack is only valid on that one


class CommandLink:
    """Publishes commands and receives acks; :meth:`start` inside the event loop."""

    def __init__(self, *, host: str, port: int, client_id: str, ack_topics: Sequence[str] = (),
                 share_group: str = "webscada-command-acks", clean_session: bool = False,
                 keepalive_s: int = 30,
                 puback_timeout_s: float = 10.0, queue_size: int = 1000,
                 credentials: tuple[str, str] | None = None, tls_ca: str | None = None) -> None:
        self.host, self.port, self.client_id = host, port, client_id
        self._credentials = credentials
        self._tls_ca = tls_ca
        self._subscriptions = [f"$share/{share_group}/{topic}" for topic in ack_topics]
        self._clean_session = clean_session
        self._keepalive_s = keepalive_s
        self._puback_timeout_s = puback_timeout_s
        self._queue_size = queue_size
        self._client: paho.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._incoming: asyncio.Queue[Incoming] | None = None
        self._connected = threading.Event()
        self._session = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        if self._client is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._incoming = asyncio.Queue(self._queue_size)
        client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                             client_id=self.client_id, clean_session=self._clean_session,
                             protocol=paho.MQTTv311, manual_ack=True)
        if self._credentials is not None:
            client.username_pw_set(*self._credentials)
        if self._tls_ca is not None:
            client.tls_set(ca_certs=self._tls_ca)
        client.suppress_exceptions = True
        client.enable_logger(logging.getLogger(f"{__name__}.paho"))
        client.reconnect_delay_set(1, 30)
        client.max_inflight_messages_set(100)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client
        client.connect_async(self.host, self.port, self._keepalive_s)
        client.loop_start()

    def stop(self) -> None:
        """Disconnect; the session (and its share of the acks) stays with the broker."""
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def incoming(self) -> Incoming:
        """The next ack message, in arrival order."""
        assert self._incoming is not None, "start() first"
        return await self._incoming.get()

    def acknowledge(self, message: Incoming) -> None:
        """PUBACK ``message``, unless its connection is gone (the broker then dropped it)."""
        with self._lock:
            if self._client is None or message.session != self._session or message.qos == 0:
                return
            self._client.ack(message.mid, message.qos)

    async def publish_all(self, publications: Sequence[Publish], *, retry_delay_s: float = 1.0) -> None:
        """Publish every one at QoS 1 and return once the broker acknowledged each (PUBACK).

        What is not acknowledged within the timeout is published again (same payload,
        same command id) until it is; the caller must not report ``sent`` before.
        """
        pending = list(publications)
        delay = retry_delay_s
        while pending:
            pending = await self._publish_once(pending)
            if pending:
                log.warning("%d command(s) not acknowledged by mqtt://%s:%d; retrying in %.0f s",
                            len(pending), self.host, self.port, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _publish_once(self, publications: list[Publish]) -> list[Publish]:
        client = self._client
        assert client is not None, "start() first"
        deadline = asyncio.get_running_loop().time() + self._puback_timeout_s
        while not self._connected.is_set():
            if asyncio.get_running_loop().time() > deadline:
                return publications
            await asyncio.sleep(0.05)
        infos = [(pub, client.publish(pub.topic, pub.payload, qos=1)) for pub in publications]
        while asyncio.get_running_loop().time() < deadline:
            if all(info.is_published() for _, info in infos):
                return []
            await asyncio.sleep(_POLL_S)
        return [pub for pub, info in infos if not info.is_published()]

    # paho callbacks (network thread)

    def _on_connect(self, client: paho.Client, userdata: Any, flags: paho.ConnectFlags,
                    reason: ReasonCode, properties: Any) -> None:
        if reason.is_failure:
            log.error("dispatcher: mqtt://%s:%d refused the connection: %s",
                      self.host, self.port, reason)
            return
        with self._lock:
            self._session += 1
        for topic in self._subscriptions:
            client.subscribe(topic, qos=1)
        self._connected.set()
        log.info("dispatcher: connected to mqtt://%s:%d as %s (session present: %s)",
                 self.host, self.port, self.client_id, flags.session_present)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: paho.DisconnectFlags,
                       reason: ReasonCode, properties: Any) -> None:
        self._connected.clear()
        if self._client is not None:
            log.warning("dispatcher: lost mqtt://%s:%d (%s); reconnecting",
                        self.host, self.port, reason)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        loop, queue = self._loop, self._incoming
        if loop is None or queue is None:
            return
        item = Incoming(message.topic, bytes(message.payload), message.mid, message.qos,
                        self._session)
        # Blocks the network thread while the queue is full: the broker's in-flight
        # window then holds further acks back instead of this process buffering them.
        asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()
