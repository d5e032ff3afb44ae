"""MQTT connector: device readings from ``{prefix}/{device_id}/telemetry`` to Kafka.

Each message is acknowledged to the broker (PUBACK) only after Kafka
acknowledged every record made from it: the batch record on ``telemetry.raw``
holding its reading (:class:`~connectors.buffer.ReadingBuffer`) and/or its dead
letter on ``telemetry.dlq``. With a persistent session (clean session off, fixed
client id) the broker redelivers whatever was not acknowledged when the
connector died, so a ``kill -9`` loses nothing; a redelivered payload gets the
same ``message_id``, which the sinks deduplicate on.

Acknowledgements go out in the order the messages arrived (MQTT 3.1.1, 4.6), in
bulk as each batch is acknowledged; a record Kafka is slow to take holds back
the acks behind it, and the broker's in-flight window then throttles delivery
to this connector.

Several connector processes share the load through a shared subscription
(``$share/{group}/devices/+/telemetry``): the broker gives each message to one
of them. Each has its own client id and session; the broker keeps queueing a
share for a member that is away, which gets it when it is back. The connector
speaks MQTT 3.1.1, with the ``$share`` filter of MQTT 5 that Mosquitto 2 (like
EMQX, HiveMQ and VerneMQ) also takes from 3.1.1 clients: paho's MQTT 5 receive
costs more than twice its 3.1.1 receive per message (192 against 80 CPU-µs,
``python -m bench.connector --bare``). ``mqtt_version=5`` is there for brokers
that share only with MQTT 5 clients.

Per message the connector does little: decode the JSON (orjson), build the
reading's row (:mod:`connectors.payload`), add it to its partition's batch.

The topic prefix, protocol and payload parser are parameters, so the GSM
connector (``gsm/+/telemetry``) runs this same class. A connector whose topics
carry more than readings (ChirpStack's ``application/+/device/+/event/+``)
passes its own ``subscription`` and a :data:`Translator` that turns one message
into any number of readings (:class:`~connectors.reading.ReadingRow`, batched)
and records (:class:`OutRecord`, produced as they are).
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from connectors._signals import on_stop_signals
from connectors.errors import PayloadError, ProduceError, ReadingRefusedError
from connectors.metrics import BROKER_CONNECTED, MESSAGES_RECEIVED, MESSAGES_REJECTED, serve_metrics
from connectors.payload import ParsedReading, dead_letter_for_error, parse_reading
from connectors.producer import Delivery, RecordProducer
from connectors.reading import ReadingRow
from pipeline.heartbeat import Heartbeat
from pipeline.logs import configure_logging
from pipeline.mqtt_accounts import broker_ca, credentials
from pipeline.settings import Settings, Topics
from schemas.records import SystemEvent

__all__ = ["SESSION_EXPIRY_S", "MqttConnector", "OutRecord", "Output", "Parser", "Translator",
           "forget_session", "main", "run"]

logger = logging.getLogger(__name__)

Parser = Callable[[bytes, str, datetime], ParsedReading]
"""``(payload, device_id, received_at) -> ParsedReading``; raises PayloadError."""


@dataclass(frozen=True, slots=True)
class OutRecord:
    """One Kafka record made from an MQTT message; ``reject_code`` marks a dead letter."""

    topic: str
    key: str | None
    value: bytes
    reject_code: str | None = None


Output = OutRecord | ReadingRow
"""What a message becomes: a record produced as it is, or a reading for the batches."""

Translator = Callable[[str, bytes, datetime], Sequence[Output]]
"""``(mqtt_topic, payload, received_at) -> outputs``. Bad input must become a
dead letter, not an exception; an empty result acknowledges the message as is."""

# MQTT 5 sessions outlive a connector this long (the local Mosquitto's limit for MQTT 3.1.1
# sessions): a connector away for less gets every message it missed.
SESSION_EXPIRY_S = 7 * 24 * 3600


@dataclass(slots=True)
class _Pending:
    """A received message waiting for Kafka to take its records."""

    mid: int
    qos: int
    outstanding: int
    topic: str
    payload: bytes
    current: bool = True  # False once its connection is gone: the broker redelivers it


class MqttConnector:
    """Subscribes to ``{prefix}/+/telemetry`` at QoS 1 and forwards readings to Kafka.

    :meth:`start` returns at once (paho's network thread connects, and
    reconnects, in the background); :meth:`stop` stops taking messages, waits
    for Kafka, acknowledges what Kafka took and disconnects. The producer is the
    caller's: started before :meth:`start`, closed after :meth:`stop`.

    ``client`` replaces the paho client this builds (clean session off, manual
    acks, MQTT 3.1.1 or ``mqtt_version`` 5); whoever passes one must configure it
    likewise. With ``shared_group`` the subscription is
    ``$share/{shared_group}/{subscription}``.
    """

    def __init__(
        self,
        *,
        producer: RecordProducer,
        client_id: str,
        host: str = "127.0.0.1",
        port: int = 1883,
        prefix: str = "devices",
        protocol: str = "mqtt",
        parser: Parser | None = None,
        subscription: str | None = None,
        translator: Translator | None = None,
        shared_group: str | None = None,
        mqtt_version: int = 4,
        session_expiry_s: int = SESSION_EXPIRY_S,
        keepalive_s: int = 30,
        reconnect_min_s: int = 1,
        reconnect_max_s: int = 30,
        retry_delay_s: float = 1.0,
        client: paho.Client | None = None,
        credentials: tuple[str, str] | None = None,
        tls_ca: str | None = None,
    ) -> None:
        self.host, self.port, self.client_id = host, port, client_id
        self._credentials = credentials
        self._tls_ca = tls_ca
        self.prefix, self.protocol = prefix, protocol
        self.topic_filter = subscription or f"{prefix}/+/telemetry"
        self.subscription = (f"$share/{shared_group}/{self.topic_filter}" if shared_group
                             else self.topic_filter)
        self.stage = f"connector.{protocol}"
        if mqtt_version not in (4, 5):
            raise ValueError(f"mqtt_version {mqtt_version} is not 4 (3.1.1) or 5")
        self._mqtt_version = mqtt_version
        self._session_expiry_s = session_expiry_s
        self._topic_head, self._topic_tail = f"{prefix}/", "/telemetry"
        self._devices_of_topics: dict[str, str] = {}  # topics repeat: each is cut up once
        self._received = MESSAGES_RECEIVED.labels(protocol)
        self._producer = producer
        self._add_reading = producer.send_reading
        self._parser: Parser = parser or functools.partial(_parse, protocol=protocol)
        self._translator: Translator = translator or self._records
        self._keepalive_s = keepalive_s
        self._reconnect = (reconnect_min_s, reconnect_max_s)
        self._retry_delay_s = retry_delay_s

        self._given_client = client
        self._client: paho.Client | None = None
        self._lock = threading.Lock()
        self._pending: deque[_Pending] = deque()
        self._retries: queue.SimpleQueue[tuple[_Pending, Output] | None] = queue.SimpleQueue()
        self._retry_thread: threading.Thread | None = None
        self._stop_requested = threading.Event()
        self._stopping = threading.Event()
        self._connected = threading.Event()
        self._left = threading.Event()
        self.received = 0  # messages taken in so far
        self._up = False
        self._failure: str | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, *, producer: RecordProducer, **options: Any
    ) -> MqttConnector:
        options.setdefault("client_id", settings.mqtt_client_id)
        options.setdefault("credentials", credentials(settings, "connector"))
        options.setdefault("tls_ca", broker_ca(settings))
        return cls(producer=producer, host=settings.mqtt_host, port=settings.mqtt_port, **options)

    @property
    def failure(self) -> str | None:
        """Why the connector gave up (Kafka refused records for good), else None."""
        return self._failure

    @property
    def unacknowledged(self) -> int:
        """Messages taken in whose records Kafka has not acknowledged yet (no PUBACK sent)."""
        return len(self._pending)

    def wait_connected(self, timeout: float | None = None) -> bool:
        """True once connected and subscribed (before ``timeout`` s)."""
        return self._connected.wait(timeout)

    def request_stop(self) -> None:
        """Ask :func:`run` to stop; safe from a signal handler."""
        self._stop_requested.set()

    def wait(self, timeout: float | None = None) -> bool:
        """True once a stop was requested (or the connector failed)."""
        return self._stop_requested.wait(timeout)

    def start(self) -> None:
        if self._client is not None:
            raise RuntimeError("connector already started")
        if self._given_client is not None:
            client = self._given_client
        elif self._mqtt_version == 5:
            client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                 client_id=self.client_id, protocol=paho.MQTTv5, manual_ack=True)
        else:
            client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                 client_id=self.client_id, clean_session=False,
                                 protocol=paho.MQTTv311, manual_ack=True)
        if self._credentials is not None:
            client.username_pw_set(*self._credentials)
        if self._tls_ca is not None:
            client.tls_set(ca_certs=self._tls_ca)
        # Last resort only: every known failure is handled in the callbacks themselves.
        client.suppress_exceptions = True
        client.enable_logger(logging.getLogger(f"{__name__}.paho"))
        client.reconnect_delay_set(*self._reconnect)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_unsubscribe = self._on_unsubscribe
        self._client = client
        self._retry_thread = threading.Thread(
            target=self._retry_loop, name=f"{self.stage}-retry", daemon=True
        )
        self._retry_thread.start()
        if self._mqtt_version == 5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = self._session_expiry_s
            # paho keeps clean_start and the properties for every reconnect.
            client.connect_async(self.host, self.port, self._keepalive_s, clean_start=False,
                                 properties=properties)
        else:
            client.connect_async(self.host, self.port, self._keepalive_s)
        client.loop_start()

    def leave(self, timeout: float = 10.0) -> bool:
        """Unsubscribe, so that the broker stops handing this session messages (a shared
        subscription's other members get them); True once the broker confirmed."""
        if self._client is None:
            return False
        self._client.unsubscribe(self.subscription)
        return self._left.wait(timeout)

    def stop(self, timeout: float = 10.0) -> int:
        """Stop; returns how many records Kafka had not taken within ``timeout`` s.

        Messages whose records were not taken stay unacknowledged and come back
        from the broker on the next start.
        """
        client = self._client
        if client is None or self._stopping.is_set():
            return 0
        self._stopping.set()
        self._stop_requested.set()
        left = self._producer.flush(timeout)
        if self._up:
            self._up = False
            self._event("connector_down", "stopped")
            self._producer.flush(min(timeout, 5.0))
        self._retries.put(None)
        if self._retry_thread is not None:
            self._retry_thread.join()
        client.disconnect()  # queued after the PUBACKs, so those go out first
        client.loop_stop()
        return left

    # paho callbacks (network thread)

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: paho.ConnectFlags,
        reason: ReasonCode, properties: Any,
    ) -> None:
        if reason.is_failure:
            logger.error("%s: mqtt://%s:%d refused the connection: %s",
                         self.stage, self.host, self.port, reason)
            return
        self._forget_pending()  # anything not acknowledged yet is redelivered on this connection
        if flags.session_present and self.subscription != self.topic_filter:
            # A session of a connector from before shared subscriptions would get every
            # message twice: once through the share, once through its own subscription.
            client.unsubscribe(self.topic_filter)
        client.subscribe(self.subscription, qos=1)
        logger.info("%s: connected to mqtt://%s:%d (session present: %s)",
                    self.stage, self.host, self.port, flags.session_present)

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int,
        reasons: list[ReasonCode], properties: Any,
    ) -> None:
        if any(r.is_failure for r in reasons):
            self._fail(f"broker refused the subscription to {self.subscription}: {reasons}")
            return
        self._connected.set()
        BROKER_CONNECTED.labels(self.protocol).set(1)
        if not self._up:
            self._up = True
            self._event("connector_up", f"subscribed to {self.subscription}")

    def _on_unsubscribe(self, client: paho.Client, userdata: Any, mid: int,
                        reasons: list[ReasonCode], properties: Any) -> None:
        self._left.set()

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: paho.DisconnectFlags,
        reason: ReasonCode, properties: Any,
    ) -> None:
        self._connected.clear()
        BROKER_CONNECTED.labels(self.protocol).set(0)
        self._forget_pending()
        if self._stopping.is_set():
            return
        logger.warning("%s: lost mqtt://%s:%d (%s); reconnecting",
                       self.stage, self.host, self.port, reason)
        if self._up:
            self._up = False
            self._event("connector_down", f"lost the MQTT broker: {reason}")

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        # Runs once per device message: kept to the fewest calls.
        if self._stopping.is_set():
            return  # left unacknowledged: the broker redelivers it to the next session
        self._received.inc()
        self.received += 1  # only this thread writes it
        topic, payload = message.topic, bytes(message.payload)  # bytes(bytes) is no copy
        outputs = self._translate(topic, payload)
        entry = _Pending(message.mid, message.qos, len(outputs), topic, payload)
        with self._lock:
            self._pending.append(entry)
            if not outputs:
                self._ack_ready()
        if len(outputs) == 1 and type(outputs[0]) is ReadingRow:  # the common case
            try:
                self._add_reading(outputs[0], functools.partial(self._delivered, entry, outputs[0]))
            except ProduceError as exc:
                self._fail(f"cannot produce to {Topics.RAW}: {exc}")
            return
        for output in outputs:
            if not self._send(entry, output):
                return

    def _forget_pending(self) -> None:
        with self._lock:
            for entry in self._pending:
                entry.current = False
            self._pending.clear()

    # from the payload to Kafka records

    def _translate(self, topic: str, payload: bytes) -> Sequence[Output]:
        try:
            outputs = self._translator(topic, payload, datetime.now(UTC))
        except Exception as exc:
            # A translator bug must neither lose the message nor kill the network thread.
            logger.exception("%s: failed on a payload from %s", self.stage, topic)
            error = PayloadError(f"connector failed on this payload: {exc!r}")
            return [self._dead(error, topic, payload, None)]
        for output in outputs:
            if type(output) is OutRecord and output.reject_code is not None:
                MESSAGES_REJECTED.labels(self.protocol, output.reject_code).inc()
        return outputs

    def _records(self, topic: str, payload: bytes, received_at: datetime) -> list[Output]:
        source = f"mqtt:{topic}"
        device_id = self._device_id(topic)
        try:
            reading = self._parser(payload, device_id, received_at)
        except PayloadError as exc:
            error = exc
        except Exception as exc:
            # A parser bug must neither lose the message nor kill the network thread.
            logger.exception("%s: parser failed on a payload from %s", self.stage, topic)
            error = PayloadError(f"connector failed on this payload: {exc!r}")
        else:
            if reading.row is not None and not reading.rejected:
                return [reading.row]  # the common case
            outputs: list[Output] = []
            if reading.row is not None:
                outputs.append(reading.row)
            code = reading.reject_code
            dead = reading.dead_letter(stage=self.stage, source_topic=source)
            if code is not None and dead is not None:
                outputs.append(OutRecord(Topics.DLQ, dead.device_id, dead.encode(), code))
            return outputs
        return [self._dead(error, topic, payload, device_id)]

    def _dead(self, error: PayloadError, topic: str, payload: bytes,
              device_id: str | None) -> OutRecord:
        dead = dead_letter_for_error(error, payload, device_id=device_id, stage=self.stage,
                                     source_topic=f"mqtt:{topic}")
        return OutRecord(Topics.DLQ, dead.device_id, dead.encode(), error.code)

    def _device_id(self, topic: str) -> str:
        found = self._devices_of_topics.get(topic)
        if found is not None:
            return found
        head, tail = self._topic_head, self._topic_tail
        found = ""  # not a telemetry topic: rejected as a bad device id
        if topic.startswith(head) and topic.endswith(tail):
            found = topic[len(head) : len(topic) - len(tail)]
        if len(self._devices_of_topics) < 100_000:
            self._devices_of_topics[topic] = found
        return found

    def _send(self, entry: _Pending, output: Output) -> bool:
        callback = functools.partial(self._delivered, entry, output)
        try:
            if isinstance(output, OutRecord):
                self._producer.produce(output.topic, output.key, output.value, callback)
            else:
                self._producer.send_reading(output, callback)
        except ProduceError as exc:
            self._fail(f"cannot produce to {_topic_of(output)}: {exc}")
            return False
        return True

    # producer callbacks (poll thread)

    def _delivered(self, entry: _Pending, output: Output, delivery: Delivery) -> None:
        if delivery.error is not None:
            if self._stopping.is_set() or not entry.current:
                return  # the broker redelivers that message
            if delivery.fatal or self._producer.fatal_error:
                self._fail(f"Kafka producer failed: {delivery.error}")
            elif delivery.refused and isinstance(output, ReadingRow):
                # Sending it again cannot help: the message goes to the DLQ in its place.
                error = ReadingRefusedError(f"reading not accepted for Kafka: {delivery.error}")
                dead = self._dead(error, entry.topic, entry.payload, output.device_id)
                MESSAGES_REJECTED.labels(self.protocol, error.code).inc()
                self._retries.put((entry, dead))
            else:
                self._retries.put((entry, output))
            return
        with self._lock:
            entry.outstanding -= 1
            if entry.outstanding == 0 and entry.current:
                self._ack_ready()

    def _ack_ready(self) -> None:
        """Acknowledge, in arrival order, every message whose records Kafka took."""
        client = self._client
        pending = self._pending
        while pending and pending[0].outstanding <= 0:
            entry = pending.popleft()
            if entry.qos > 0 and client is not None:
                client.ack(entry.mid, entry.qos)

    def _retry_loop(self) -> None:
        while (item := self._retries.get()) is not None:
            entry, output = item
            if not entry.current:
                continue
            if self._stopping.wait(self._retry_delay_s):
                return
            logger.info("%s: sending a record to %s again", self.stage, _topic_of(output))
            self._send(entry, output)

    def _event(self, kind: str, message: str) -> None:
        event = SystemEvent(
            kind=kind, source=self.stage, message=message,
            attributes={"broker": f"mqtt://{self.host}:{self.port}", "client_id": self.client_id},
        )
        try:
            self._producer.send_system_event(event)
        except ProduceError as exc:
            logger.warning("%s: cannot send %s: %s", self.stage, kind, exc)

    def _fail(self, reason: str) -> None:
        if self._stopping.is_set():
            return
        if self._failure is None:
            self._failure = reason
            logger.error("%s: giving up: %s", self.stage, reason)
        self._stop_requested.set()


def _topic_of(output: Output) -> str:
    return output.topic if isinstance(output, OutRecord) else Topics.RAW


def _parse(payload: bytes, device_id: str, received_at: datetime, *, protocol: str) -> ParsedReading:
    return parse_reading(payload, device_id=device_id, protocol=protocol, received_at=received_at)


def run(
    settings: Settings,
    *,
    prefix: str = "devices",
    protocol: str = "mqtt",
    parser: Parser | None = None,
    client_id: str | None = None,
    subscription: str | None = None,
    translator: Translator | None = None,
    shared_group: str | None = None,
    host: str | None = None,
    port: int | None = None,
    metrics_port: int | None = None,
    retire: bool = False,
) -> int:
    """Run a connector of this kind until SIGINT/SIGTERM; 0 on a clean stop, 1 on failure.

    ``host``/``port`` override the settings' MQTT broker (e.g. ChirpStack's own);
    ``metrics_port`` serves the Prometheus counters on ``settings.metrics_host``.
    ``retire`` ends the client id's session instead: take what the broker kept for
    it until nothing more comes, leave the (shared) subscription, and have the
    broker forget the session, so that no share of the messages waits there.
    """
    configure_logging(settings, role=f"connect:{protocol}")
    if metrics_port:
        serve_metrics(settings.metrics_host, metrics_port)
    producer = RecordProducer.from_settings(settings, connector=protocol)
    options: dict[str, Any] = {"host": host or settings.mqtt_host, "port": port or settings.mqtt_port}
    connector = MqttConnector(
        producer=producer, prefix=prefix, protocol=protocol, parser=parser,
        client_id=client_id or settings.mqtt_client_id, subscription=subscription,
        translator=translator, shared_group=shared_group,
        credentials=credentials(settings, "connector"), tls_ca=broker_ca(settings), **options,
    )
    with producer, on_stop_signals(connector.request_stop):
        # Readings are spread by the partition count of telemetry.raw: learn it before
        # taking messages, so the network thread never waits for it.
        while not producer.readings.wait_ready(1.0):
            if connector.wait(0):
                return 0
            logger.info("%s: waiting for Kafka at %s", connector.stage, settings.kafka_bootstrap)
        connector.start()
        heartbeat = Heartbeat(settings.redis_url, f"connect:{protocol}",
                              detail=lambda: {"unacknowledged": connector.unacknowledged}).start()
        if retire:
            _drain(connector)
        else:
            while not connector.wait(1.0):
                pass
        left = connector.stop()
        heartbeat.stop()
    if left:
        logger.warning("%s: %d records not taken by Kafka; the broker will redeliver them",
                       connector.stage, left)
    elif retire and not connector.failure:
        forget_session(connector.host, connector.port, connector.client_id,
                       credentials(settings, "connector"), broker_ca(settings))
        logger.info("%s: session %s retired", connector.stage, connector.client_id)
    return 1 if connector.failure else 0


def _drain(connector: MqttConnector, quiet_s: float = 3.0) -> None:
    """Take messages until none came for ``quiet_s``, then leave the subscription."""
    if not connector.wait_connected(30):
        connector.request_stop()
        return
    seen = -1
    while seen != connector.received and not connector.wait(quiet_s):
        seen = connector.received
    connector.leave()
    connector.wait(1.0)  # messages the broker sent before it took the unsubscribe


def forget_session(host: str, port: int, client_id: str,
                   login: tuple[str, str] | None = None, tls_ca: str | None = None) -> None:
    """Have the broker drop the persistent session of ``client_id`` (and what it queued)."""
    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
                         clean_session=True, protocol=paho.MQTTv311)
    if login is not None:
        client.username_pw_set(*login)
    if tls_ca is not None:
        client.tls_set(ca_certs=tls_ca)
    client.connect(host, port)
    client.disconnect()


def main(settings: Settings, *, client_id: str | None = None, retire: bool = False,
         metrics_port: int | None = None) -> int:
    """``webscada connect mqtt``: the MQTT connector for ``devices/+/telemetry`` (a plain
    persistent subscription), or, with ``mqtt_connectors`` above one, one of the processes
    sharing ``$share/{mqtt_share_group or "webscada"}/devices/+/telemetry``."""
    group = settings.mqtt_share_group or ("webscada" if settings.mqtt_connectors > 1 else None)
    return run(settings, client_id=client_id, shared_group=group,
               retire=retire, metrics_port=metrics_port)
