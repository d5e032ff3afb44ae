"""The Bluetooth connector's detection callback, fed a real RuuviTag and a real BTHome
advertisement, puts Telemetry records on the real Kafka's telemetry.raw."""

from __future__ import annotations

import time

import pytest
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from confluent_kafka import Consumer, TopicPartition

from connectors.bluetooth import BluetoothConnector, BluetoothDevice
from connectors.codecs import BTHOME_UUID, RUUVI_COMPANY_ID
from connectors.producer import RecordProducer
from pipeline.producer import partition_for
from pipeline.settings import Settings, Topics
from schemas.batch import decode_batch
from schemas.records import Telemetry
from tests.conftest import unique_id

pytestmark = pytest.mark.integration

RUUVI = "CB:B8:33:4C:88:4F"
THERMO = "A4:C1:38:8D:18:B2"


def _end_offsets(consumer: Consumer, topic: str) -> list[TopicPartition]:
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    ends = []
    for p in partitions:
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        ends.append(TopicPartition(topic, p, high))
    return ends


def test_advertisements_land_on_telemetry_raw(stack: Settings) -> None:
    ruuvi_id, thermo_id = unique_id("ruuvi"), unique_id("thermo")
    consumer = Consumer({"bootstrap.servers": stack.kafka_bootstrap, "group.id": unique_id("ble"),
                         "enable.auto.commit": False})
    start = _end_offsets(consumer, Topics.RAW)

    producer = RecordProducer.from_settings(stack, connector="bluetooth").start()
    connector = BluetoothConnector(producer=producer, devices={
        RUUVI: BluetoothDevice(RUUVI, ruuvi_id), THERMO: BluetoothDevice(THERMO, thermo_id),
    })
    connector.on_advertisement(
        BLEDevice(RUUVI, "Ruuvi 884F", details=None),
        AdvertisementData(local_name="Ruuvi 884F", service_data={}, service_uuids=[],
                          manufacturer_data={RUUVI_COMPANY_ID: bytes.fromhex(
                              "0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F")},
                          tx_power=None, rssi=-77, platform_data=()),
    )
    connector.on_advertisement(
        BLEDevice(THERMO, "ATC_8D18B2", details=None),
        AdvertisementData(local_name="ATC_8D18B2", manufacturer_data={},
                          service_data={BTHOME_UUID: bytes.fromhex("400009015d025d0903b718")},
                          service_uuids=[BTHOME_UUID], tx_power=None, rssi=-58, platform_data=()),
    )
    assert producer.close(timeout=15) == 0, "Kafka did not acknowledge the readings"
    assert connector.failure is None

    consumer.assign(start)
    found: dict[str, Telemetry] = {}
    deadline = time.monotonic() + 30
    try:
        while len(found) < 2 and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            batch = decode_batch(msg.value() or b"")
            for i, device_id in enumerate(batch.device_id):
                if device_id in (ruuvi_id, thermo_id):
                    assert msg.partition() == partition_for(device_id, len(start))
                    found[device_id] = batch.telemetry(i)
    finally:
        consumer.close()

    assert set(found) == {ruuvi_id, thermo_id}
    ruuvi, thermo = found[ruuvi_id], found[thermo_id]
    assert (ruuvi.protocol, ruuvi.metrics["temperature"], ruuvi.metrics["pressure"]) == (
        "bluetooth", 24.3, 1000.44)
    assert ruuvi.metadata.signal_strength == -77.0
    assert dict(thermo.metrics) == {"battery": 93.0, "temperature": 23.97, "humidity": 63.27}
    assert (thermo.metadata.signal_strength, thermo.metadata.battery_level) == (-58.0, 93.0)
