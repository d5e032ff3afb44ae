"""The shared connector producer, over an in-memory stand-in for confluent-kafka."""

from __future__ import annotations

from typing import Any, cast

import pytest
from confluent_kafka import KafkaError, Producer
from prometheus_client import REGISTRY

import connectors.producer as producer_module
from connectors.errors import ProducerClosedError
from connectors.producer import Delivery, RecordProducer
from tests.unit.fakes import FakeKafka


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(f"webscada_connector_{name}_total", labels) or 0.0


def make(fake: FakeKafka) -> RecordProducer:
    return RecordProducer(bootstrap_servers="127.0.0.1:1", connector="unit",
                          poll_interval_s=0.01, client=cast(Producer, fake))


def test_configuration_is_the_projects(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[dict[str, Any]] = []

    def fake_producer(config: dict[str, Any]) -> FakeKafka:
        built.append(config)
        return FakeKafka()

    monkeypatch.setattr(producer_module, "Producer", fake_producer)
    producer = RecordProducer(bootstrap_servers="kafka:9092", connector="mqtt",
                              config={"linger.ms": 20})
    assert built == []  # nothing before start()
    with producer:
        pass
    (config,) = built
    assert {k: config[k] for k in ("bootstrap.servers", "client.id", "acks",
                                   "enable.idempotence", "linger.ms", "compression.type")} == {
        "bootstrap.servers": "kafka:9092",
        "client.id": "webscada-connector-mqtt",
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 20,
        "compression.type": "lz4",
    }


def test_delivery_reports() -> None:
    fake = FakeKafka()
    seen: list[Delivery] = []
    before = counter("records_produced", connector="unit", topic="telemetry.raw")
    with make(fake) as producer:
        producer.produce("telemetry.raw", "dev-1", b"one", seen.append)
        producer.produce("telemetry.raw", None, b"two", seen.append)
        fake.deliver(0)
        fake.deliver(1, KafkaError(KafkaError._MSG_TIMED_OUT, "Local: Message timed out",
                                   retriable=True))
    assert [(r.topic, r.key, r.value) for r in fake.records] == [
        ("telemetry.raw", "dev-1", b"one"), ("telemetry.raw", None, b"two"),
    ]
    assert seen == [
        Delivery("telemetry.raw", 0, 0),
        Delivery("telemetry.raw", 0, None, "Local: Message timed out", retriable=True),
    ]
    assert counter("records_produced", connector="unit", topic="telemetry.raw") == before + 1


def test_a_failing_callback_does_not_break_delivery_reporting() -> None:
    fake = FakeKafka()
    seen: list[Delivery] = []

    def broken(delivery: Delivery) -> None:
        raise RuntimeError("bug in a callback")

    with make(fake) as producer:
        producer.produce("system", None, b"a", broken)
        producer.produce("system", None, b"b", seen.append)
        fake.deliver_all()
    assert seen == [Delivery("system", 0, 1)]


def test_full_queue_applies_backpressure_instead_of_dropping() -> None:
    fake = FakeKafka(buffer_full=3)
    before = counter("producer_backpressure", connector="unit")
    with make(fake) as producer:
        producer.produce("telemetry.raw", "dev-1", b"value")
    assert [r.value for r in fake.records] == [b"value"]
    assert fake.buffer_full == 0
    assert counter("producer_backpressure", connector="unit") == before + 1


def test_produce_needs_a_started_open_producer() -> None:
    producer = make(FakeKafka())
    with pytest.raises(ProducerClosedError, match="not started"):
        producer.produce("telemetry.raw", None, b"x")
    producer.start()
    assert producer.close() == 0
    with pytest.raises(ProducerClosedError, match="closed"):
        producer.produce("telemetry.raw", None, b"x")
