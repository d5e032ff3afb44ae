"""The MQTT connector's contract, with Kafka and the broker connection faked.

Above all: a message is acknowledged to the broker only after Kafka took every
record made from it (its reading's batch record, its dead letter), and in the
order the messages arrived.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import cast

import paho.mqtt.client as paho
import pytest
from confluent_kafka import KafkaError, Producer
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from connectors.mqtt import SESSION_EXPIRY_S, MqttConnector
from connectors.mqtt import _drain as drain
from connectors.payload import ParsedReading, parse_reading
from connectors.producer import RecordProducer
from pipeline.producer import partition_for
from schemas.batch import decode_batch
from schemas.codec import registry
from schemas.records import DeadLetter
from tests.conftest import wait_until
from tests.unit.fakes import FakeKafka, FakeMqtt, raw_readings

GOOD = b'{"messageId": "m-1", "timestamp": 1714564800000, "telemetry": {"temperature": 21.5}}'
TOPIC = "devices/dev-1/telemetry"


def message(mid: int, payload: bytes, topic: str = TOPIC, qos: int = 1) -> paho.MQTTMessage:
    msg = paho.MQTTMessage(mid=mid, topic=topic.encode())
    msg.payload = payload
    msg.qos = qos
    return msg


def connect(mqtt: FakeMqtt, granted: int = 1) -> None:
    mqtt.on_connect(mqtt, None, paho.ConnectFlags(session_present=True),
                    ReasonCode(PacketTypes.CONNACK, identifier=0), None)
    mqtt.on_subscribe(mqtt, None, 1, [ReasonCode(PacketTypes.SUBACK, identifier=granted)], None)


def on_topic(kafka: FakeKafka, topic: str) -> list[int]:
    """Indexes of the records produced to ``topic``."""
    return [i for i, r in enumerate(kafka.records) if r.topic == topic]


def system_kinds(kafka: FakeKafka) -> list[str]:
    return [registry().decode(kafka.records[i].value, "SystemEvent").record["kind"]
            for i in on_topic(kafka, "system")]


@pytest.fixture
def kafka() -> FakeKafka:
    return FakeKafka()


@pytest.fixture
def mqtt() -> FakeMqtt:
    return FakeMqtt()


def started(kafka: FakeKafka, mqtt: FakeMqtt, linger_ms: float = 0,
            **options: object) -> MqttConnector:
    """A connector on a producer that sends each reading at once (as a batch of one) unless
    ``linger_ms`` is given."""
    producer = RecordProducer(bootstrap_servers="127.0.0.1:1", connector="mqtt",
                              poll_interval_s=0.01, batch_linger_ms=linger_ms, raw_partitions=6,
                              client=cast(Producer, kafka)).start()
    connector = MqttConnector(producer=producer, client_id="unit", retry_delay_s=0.0,
                              client=cast(paho.Client, mqtt), **options)  # type: ignore[arg-type]
    connector.start()
    return connector


@pytest.fixture
def connector(kafka: FakeKafka, mqtt: FakeMqtt) -> Iterator[MqttConnector]:
    connector = started(kafka, mqtt)
    connect(mqtt)
    yield connector
    connector.stop(timeout=0)


def test_start_connects_in_the_background_and_subscribes_at_qos1(
    connector: MqttConnector, mqtt: FakeMqtt, kafka: FakeKafka
) -> None:
    assert mqtt.calls == ["enable_logger", "reconnect_delay_set(1, 30)",
                          "connect_async(127.0.0.1, 1883, 30)", "loop_start"]
    assert mqtt.subscriptions == [("devices/+/telemetry", 1)]
    assert mqtt.unsubscriptions == []
    assert connector.wait_connected(0)
    (up,) = on_topic(kafka, "system")
    assert kafka.records[up].key is None
    event = registry().decode(kafka.records[up].value, "SystemEvent").record
    assert (event["kind"], event["source"], event["message"], event["attributes"]) == (
        "connector_up", "connector.mqtt", "subscribed to devices/+/telemetry",
        {"broker": "mqtt://127.0.0.1:1883", "client_id": "unit"},
    )


def test_reading_is_acknowledged_only_after_kafka_took_it(
    connector: MqttConnector, mqtt: FakeMqtt, kafka: FakeKafka
) -> None:
    mqtt.on_message(mqtt, None, message(7, GOOD))
    (raw,) = on_topic(kafka, "telemetry.raw")
    record = kafka.records[raw]
    assert (record.key, record.partition) == (None, partition_for("dev-1", 6))
    (telemetry,) = raw_readings(kafka)
    assert (telemetry.device_id, telemetry.protocol, telemetry.message_id,
            dict(telemetry.metrics)) == ("dev-1", "mqtt", "m-1", {"temperature": 21.5})
    assert mqtt.acks == []
    kafka.deliver(raw)
    assert mqtt.acks == [(7, 1)]


def test_acknowledgements_follow_arrival_order(
    connector: MqttConnector, mqtt: FakeMqtt, kafka: FakeKafka
) -> None:
    for mid in (1, 2, 3):
        mqtt.on_message(mqtt, None, message(mid, GOOD))
    first, second, third = on_topic(kafka, "telemetry.raw")
    kafka.deliver(third)
    kafka.deliver(second)
    assert mqtt.acks == []
    kafka.deliver(first)
    assert mqtt.acks == [(1, 1), (2, 1), (3, 1)]


def test_bad_payload_goes_to_the_dlq_then_is_acknowledged(
    connector: MqttConnector, mqtt: FakeMqtt, kafka: FakeKafka
) -> None:
    mqtt.on_message(mqtt, None, message(4, b"{not json"))
    assert on_topic(kafka, "telemetry.raw") == []
    (dlq,) = on_topic(kafka, "telemetry.dlq")
    dead = DeadLetter.decode(kafka.records[dlq].value)
    assert kafka.records[dlq].key == "dev-1"
    assert (dead.reason, dead.stage, dead.payload, dead.source_topic, dead.device_id,
            dict(dead.details)) == (
        "payload is not JSON: Expecting property name enclosed in double quotes at byte 1",
        "connector.mqtt", b"{not json", "mqtt:devices/dev-1/telemetry", "dev-1",
        {"code": "not_json"},
    )
    kafka.deliver(dlq)
    assert mqtt.acks == [(4, 1)]


def test_bad_device_id_in_topic_goes_to_the_dlq_without_key(
    connector: MqttConnector, mqtt: FakeMqtt, kafka: FakeKafka
) -> None:
    mqtt.on_message(mqtt, None, message(5, GOOD, topic="devices/-bad/telemetry"))
    (dlq,) = on_topic(kafka, "telemetry.dlq")
    assert kafka.records[dlq].key is None
    assert DeadLetter.decode(kafka.records[dlq].value).details["code"] == "bad_device_id"


def test_partly_rejected_reading_is_acknowledged_after_both_records(
    connector: MqttConnector, mqtt: FakeMqtt, kafka: FakeKafka
) -> None:
    mqtt.on_message(mqtt, None, message(9, b'{"temperature": 20, "mode": "auto"}'))
    (raw,) = on_topic(kafka, "telemetry.raw")
    (dlq,) = on_topic(kafka, "telemetry.dlq")
    assert DeadLetter.decode(kafka.records[dlq].value).reason == (
        "dropped 1 field from reading: mode (string 'auto' is not a number)"
    )
    kafka.deliver(raw)
    assert mqtt.acks == []
    kafka.deliver(dlq)
    assert mqtt.acks == [(9, 1)]


def test_failed_delivery_is_sent_again_and_only_then_acknowledged(
    connector: MqttConnector, mqtt: FakeMqtt, kafka: FakeKafka
) -> None:
    mqtt.on_message(mqtt, None, message(3, GOOD))
    (raw,) = on_topic(kafka, "telemetry.raw")
    kafka.deliver(raw, KafkaError(KafkaError._MSG_TIMED_OUT, "timed out", retriable=True))
    assert mqtt.acks == []
    wait_until(lambda: len(on_topic(kafka, "telemetry.raw")) == 2, timeout=5, what="resend")
    again = on_topic(kafka, "telemetry.raw")[1]
    assert kafka.records[again].value == kafka.records[raw].value
    kafka.deliver(again)
    assert mqtt.acks == [(3, 1)]
    assert connector.failure is None


def test_fatal_producer_error_stops_the_connector(
    connector: MqttConnector, mqtt: FakeMqtt, kafka: FakeKafka
) -> None:
    mqtt.on_message(mqtt, None, message(3, GOOD))
    (raw,) = on_topic(kafka, "telemetry.raw")
    kafka.deliver(raw, KafkaError(KafkaError._FATAL, "fenced", fatal=True))
    assert connector.wait(0)
    assert connector.failure == "Kafka producer failed: fenced"
    assert mqtt.acks == []


def test_messages_of_a_lost_connection_are_left_to_the_broker(
    connector: MqttConnector, mqtt: FakeMqtt, kafka: FakeKafka
) -> None:
    mqtt.on_message(mqtt, None, message(11, GOOD))
    mqtt.on_disconnect(mqtt, None, paho.DisconnectFlags(False),
                       ReasonCode(PacketTypes.DISCONNECT, identifier=0x80), None)
    assert not connector.wait_connected(0)
    connect(mqtt)
    (raw,) = on_topic(kafka, "telemetry.raw")
    kafka.deliver(raw)
    assert mqtt.acks == []  # the broker redelivers message 11 on the new connection
    assert system_kinds(kafka) == ["connector_up", "connector_down", "connector_up"]
    assert mqtt.subscriptions == [("devices/+/telemetry", 1)] * 2


def test_qos0_message_is_forwarded_without_ack(
    connector: MqttConnector, mqtt: FakeMqtt, kafka: FakeKafka
) -> None:
    mqtt.on_message(mqtt, None, message(0, GOOD, qos=0))
    mqtt.on_message(mqtt, None, message(12, GOOD))
    kafka.deliver_all()
    assert mqtt.acks == [(12, 1)]


def test_stop_flushes_then_disconnects_and_ignores_late_messages(
    kafka: FakeKafka, mqtt: FakeMqtt
) -> None:
    connector = started(kafka, mqtt)
    connect(mqtt)
    mqtt.on_message(mqtt, None, message(1, GOOD))
    kafka.deliver_all()
    connector.stop(timeout=0)
    mqtt.on_message(mqtt, None, message(2, GOOD))
    assert len(on_topic(kafka, "telemetry.raw")) == 1
    assert mqtt.acks == [(1, 1)]
    assert mqtt.calls[-2:] == ["disconnect", "loop_stop"]
    assert system_kinds(kafka) == ["connector_up", "connector_down"]
    assert connector.wait(0)
    assert connector.stop() == 0  # idempotent


def test_refused_subscription_fails_the_connector(kafka: FakeKafka, mqtt: FakeMqtt) -> None:
    connector = started(kafka, mqtt)
    connect(mqtt, granted=0x80)
    assert connector.wait(0)
    assert connector.failure is not None
    assert connector.failure.startswith("broker refused the subscription to devices/+/telemetry")
    connector.stop(timeout=0)


def test_prefix_and_protocol_are_parameters(kafka: FakeKafka, mqtt: FakeMqtt) -> None:
    connector = started(kafka, mqtt, prefix="gsm", protocol="gsm")
    connect(mqtt)
    assert mqtt.subscriptions == [("gsm/+/telemetry", 1)]
    mqtt.on_message(mqtt, None, message(1, GOOD, topic="gsm/modem-4/telemetry"))
    mqtt.on_message(mqtt, None, message(2, b"[]", topic="gsm/modem-4/telemetry"))
    (telemetry,) = raw_readings(kafka)
    assert (telemetry.device_id, telemetry.protocol) == ("modem-4", "gsm")
    (dlq,) = on_topic(kafka, "telemetry.dlq")
    dead = DeadLetter.decode(kafka.records[dlq].value)
    assert (dead.stage, dead.source_topic) == ("connector.gsm", "mqtt:gsm/modem-4/telemetry")
    connector.stop(timeout=0)


def test_readings_of_a_partition_share_one_record_and_are_acknowledged_together(
    kafka: FakeKafka, mqtt: FakeMqtt
) -> None:
    connector = started(kafka, mqtt, linger_ms=60_000)  # only the stop sends them
    connect(mqtt)
    for mid in (1, 2, 3):
        mqtt.on_message(mqtt, None, message(mid, GOOD.replace(b"m-1", f"m-{mid}".encode())))
    mqtt.on_message(mqtt, None, message(4, b'{"mode": "auto"}'))  # no reading: only a dead letter
    assert on_topic(kafka, "telemetry.raw") == []
    (dlq,) = on_topic(kafka, "telemetry.dlq")
    kafka.deliver(dlq)
    assert mqtt.acks == []  # message 4 waits for the three before it
    cast(RecordProducer, connector._producer).readings.flush()
    (raw,) = on_topic(kafka, "telemetry.raw")
    batch = decode_batch(kafka.records[raw].value)
    assert (batch.device_id, batch.message_id) == (["dev-1"] * 3, ["m-1", "m-2", "m-3"])
    kafka.deliver(raw)
    assert mqtt.acks == [(1, 1), (2, 1), (3, 1), (4, 1)]
    connector.stop(timeout=0)


def test_a_reading_kafka_cannot_take_goes_to_the_dlq_in_its_place(
    kafka: FakeKafka, mqtt: FakeMqtt
) -> None:
    def parser(payload: bytes, device_id: str, received_at: datetime) -> ParsedReading:
        # a parser that lets through text UTF-8 cannot hold (the payload parser refuses it)
        parsed = parse_reading(payload, device_id=device_id, protocol="mqtt",
                               received_at=received_at)
        assert parsed.row is not None
        return parsed._replace(row=parsed.row._replace(status="\ud800"))

    connector = started(kafka, mqtt, parser=parser)
    connect(mqtt)
    mqtt.on_message(mqtt, None, message(8, GOOD))
    assert on_topic(kafka, "telemetry.raw") == []
    (dlq,) = wait_until(lambda: on_topic(kafka, "telemetry.dlq"), timeout=5, what="dead letter")
    refused = DeadLetter.decode(kafka.records[dlq].value)
    assert (refused.details["code"], refused.payload, refused.device_id) == ("refused", GOOD, "dev-1")
    assert refused.reason.startswith("reading not accepted for Kafka: reading cannot be encoded")
    assert mqtt.acks == []
    kafka.deliver(dlq)
    assert mqtt.acks == [(8, 1)]
    connector.stop(timeout=0)


def test_mqtt5_session_is_persistent(kafka: FakeKafka, mqtt: FakeMqtt) -> None:
    connector = started(kafka, mqtt, mqtt_version=5)
    # kept by the broker while the connector is away, as 3.1.1's clean session off
    assert mqtt.connect_options["clean_start"] is False
    assert mqtt.connect_options["properties"].SessionExpiryInterval == SESSION_EXPIRY_S
    connector.stop(timeout=0)


def test_shared_subscription_and_a_session_from_before_it(kafka: FakeKafka, mqtt: FakeMqtt) -> None:
    connector = started(kafka, mqtt, shared_group="webscada")
    connect(mqtt)  # the broker had a session of this client id
    assert mqtt.subscriptions == [("$share/webscada/devices/+/telemetry", 1)]
    # its old plain subscription would deliver every message a second time
    assert mqtt.unsubscriptions == ["devices/+/telemetry"]
    mqtt.on_message(mqtt, None, message(5, GOOD))  # messages arrive under their own topic
    (telemetry,) = raw_readings(kafka)
    assert telemetry.device_id == "dev-1"
    connector.stop(timeout=0)


def test_a_retiring_connector_takes_what_was_kept_then_leaves(kafka: FakeKafka, mqtt: FakeMqtt) -> None:
    connector = started(kafka, mqtt, shared_group="webscada")
    connect(mqtt)
    mqtt.on_message(mqtt, None, message(6, GOOD))  # kept for this session while it was away
    drain(connector, quiet_s=0.05)
    assert mqtt.unsubscriptions[-1] == "$share/webscada/devices/+/telemetry"
    kafka.deliver_all()
    connector.stop(timeout=0)
    assert mqtt.acks == [(6, 1)]
