"""The Bluetooth connector driven through bleak's detection callback with real
advertisement bytes (bthome-ble and docs.ruuvi.com vectors); Kafka faked."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from confluent_kafka import Producer

from connectors.bluetooth import BluetoothConnector, BluetoothDevice, load_devices
from connectors.codecs import BTHOME_UUID, RUUVI_COMPANY_ID
from connectors.errors import BluetoothConfigError
from connectors.producer import RecordProducer
from pipeline.producer import partition_for
from schemas.codec import registry
from schemas.records import DeadLetter
from tests.unit.fakes import FakeKafka, raw_readings

THERMO = "A4:C1:38:8D:18:B2"
SHELLY = "54:48:E6:8F:80:A5"
RUUVI = "CB:B8:33:4C:88:4F"
KEY = "231d39c1d7cc1ab1aee224cd096db932"
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)

BTHOME_TEMP_HUM = bytes.fromhex("4002ca0903bf13")
BTHOME_BATTERY_TEMP_HUM = bytes.fromhex("400009015d025d0903b718")
BTHOME_ENCRYPTED = bytes.fromhex("41a47266c95f730011223378237214")
RUUVI_VALID = bytes.fromhex("0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F")
RUUVI_INVALID = bytes.fromhex("058000FFFFFFFF800080008000FFFFFFFFFFFFFFFFFFFFFF")


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def advertisement(address: str, *, service: bytes | None = None, ruuvi: bytes | None = None,
                  rssi: int = -60) -> tuple[BLEDevice, AdvertisementData]:
    """What bleak hands the detection callback for one advertisement."""
    service_data = {BTHOME_UUID: service} if service is not None else {}
    manufacturer = {RUUVI_COMPANY_ID: ruuvi} if ruuvi is not None else {}
    device = BLEDevice(address, None, details=None)
    data = AdvertisementData(
        local_name=None, manufacturer_data=manufacturer, service_data=service_data,
        service_uuids=list(service_data), tx_power=None, rssi=rssi, platform_data=(),
    )
    return device, data


@pytest.fixture
def kafka() -> FakeKafka:
    return FakeKafka()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def connector(kafka: FakeKafka, clock: Clock) -> Iterator[BluetoothConnector]:
    # no lingering: each reading is produced (as a batch of one) before the test looks
    producer = RecordProducer(bootstrap_servers="127.0.0.1:1", connector="bluetooth",
                              poll_interval_s=0.01, batch_linger_ms=0, raw_partitions=6,
                              client=cast(Producer, kafka)).start()
    devices = {
        THERMO: BluetoothDevice(THERMO, "thermo-1"),
        SHELLY: BluetoothDevice(SHELLY, "shelly-ht", bytes.fromhex(KEY)),
        RUUVI: BluetoothDevice(RUUVI, "fridge"),
    }
    yield BluetoothConnector(producer=producer, devices=devices, clock=clock)
    producer.close(timeout=0)


def records(kafka: FakeKafka, topic: str) -> list[Any]:
    if topic == "telemetry.raw":
        return list(raw_readings(kafka))
    out: list[Any] = []
    for record in kafka.records:
        if record.topic != topic:
            continue
        if topic == "telemetry.dlq":
            out.append(DeadLetter.decode(record.value))
        else:
            out.append(registry().decode(record.value, "SystemEvent").record)
    return out


def test_bthome_advertisement_becomes_a_reading(connector: BluetoothConnector, kafka: FakeKafka) -> None:
    connector.on_advertisement(*advertisement(THERMO, service=BTHOME_BATTERY_TEMP_HUM, rssi=-71))
    [reading] = records(kafka, "telemetry.raw")
    # a batch record: no key, the partition Kafka would give the key "thermo-1"
    assert (kafka.records[0].key, kafka.records[0].partition) == (None, partition_for("thermo-1", 6))
    assert (reading.device_id, reading.protocol, reading.ts, reading.received_at) == (
        "thermo-1", "bluetooth", T0, T0)
    assert dict(reading.metrics) == {"battery": 93.0, "temperature": 23.97, "humidity": 63.27}
    assert (reading.metadata.signal_strength, reading.metadata.battery_level) == (-71.0, 93.0)
    assert dict(reading.metadata.extra) == {
        "address": THERMO, "format": "bthome", "bthome_version": "2", "encrypted": "0",
        "trigger_based": "0", "packet_id": "9", "mac": THERMO,
    }


def test_encrypted_bthome_is_decrypted_with_the_configured_key(
    connector: BluetoothConnector, kafka: FakeKafka
) -> None:
    connector.on_advertisement(*advertisement(SHELLY, service=BTHOME_ENCRYPTED))
    [reading] = records(kafka, "telemetry.raw")
    assert (reading.device_id, dict(reading.metrics)) == (
        "shelly-ht", {"temperature": 25.06, "humidity": 50.55})


def test_ruuvi_advertisement_becomes_a_reading(connector: BluetoothConnector, kafka: FakeKafka) -> None:
    connector.on_advertisement(*advertisement(RUUVI, ruuvi=RUUVI_VALID, rssi=-80))
    [reading] = records(kafka, "telemetry.raw")
    assert reading.device_id == "fridge"
    assert dict(reading.metrics) == {
        "temperature": 24.3, "humidity": 53.49, "pressure": 1000.44, "acceleration_x": 0.004,
        "acceleration_y": -0.004, "acceleration_z": 1.036, "battery_voltage": 2.977,
        "tx_power": 4.0, "movement_counter": 66.0, "measurement_sequence": 205.0,
    }
    assert reading.metadata.signal_strength == -80.0
    assert reading.metadata.battery_level is None
    assert reading.metadata.extra["mac"] == RUUVI


def test_a_repeated_advertisement_is_one_reading_with_a_stable_message_id(
    connector: BluetoothConnector, kafka: FakeKafka, clock: Clock
) -> None:
    for _ in range(3):
        connector.on_advertisement(*advertisement(THERMO, service=BTHOME_TEMP_HUM))
        clock.now += timedelta(seconds=2)
    clock.now = T0 + timedelta(seconds=45)  # past the repeat window: a new reading of the same value
    connector.on_advertisement(*advertisement(THERMO, service=BTHOME_TEMP_HUM))
    first, second = records(kafka, "telemetry.raw")
    assert first.message_id != second.message_id
    assert connector.stats["repeated"] == 2

    # the same bytes first heard at the same moment give the same id (a restarted connector agrees)
    again = FakeKafka()
    producer = RecordProducer(bootstrap_servers="127.0.0.1:1", connector="bluetooth",
                              client=cast(Producer, again)).start()  # partitions asked, reading lingers
    other = BluetoothConnector(producer=producer, devices={THERMO: BluetoothDevice(THERMO, "thermo-1")},
                               clock=lambda: T0)
    other.on_advertisement(*advertisement(THERMO, service=BTHOME_TEMP_HUM))
    producer.close(timeout=0)
    assert records(again, "telemetry.raw")[0].message_id == first.message_id


def test_unconfigured_addresses_are_ignored_and_counted(
    connector: BluetoothConnector, kafka: FakeKafka
) -> None:
    connector.on_advertisement(*advertisement("11:22:33:44:55:66", service=BTHOME_TEMP_HUM))
    connector.on_advertisement(*advertisement(THERMO))  # configured, but nothing we decode
    assert kafka.records == []
    assert (connector.stats["unconfigured"], connector.stats["no_payload"]) == (1, 1)


@pytest.mark.parametrize(("address", "kwargs", "reason"), [
    pytest.param(THERMO, {"service": bytes.fromhex("41d2fcefe52eb212d600112233bc38c966")},
                 "BTHome advertisement is encrypted (device information 0x41 at byte 0) and no bind"
                 " key is configured", id="encrypted-without-key"),
    pytest.param(SHELLY, {"service": bytes.fromhex("4004138a01")},
                 "BTHome advertisement is not encrypted (device information 0x40 at byte 0) but the"
                 " device has a bind key", id="downgrade"),
    pytest.param(THERMO, {"service": bytes.fromhex("40feca09")},
                 "BTHome object id 0xfe unknown at byte 1", id="unknown-object"),
    pytest.param(RUUVI, {"ruuvi": RUUVI_INVALID},
                 "ruuvi advertisement carries no available measurement", id="ruuvi-not-available"),
    pytest.param(RUUVI, {"ruuvi": RUUVI_VALID[:-1]},
                 "RuuviTag data format 5 is 24 bytes, got 23: missing bytes from byte 23",
                 id="ruuvi-truncated"),
])
def test_undecodable_advertisements_of_configured_devices_go_to_the_dlq(
    connector: BluetoothConnector, kafka: FakeKafka, address: str, kwargs: dict[str, Any],
    reason: str,
) -> None:
    connector.on_advertisement(*advertisement(address, **kwargs))
    assert records(kafka, "telemetry.raw") == []
    [dead] = records(kafka, "telemetry.dlq")
    assert dead.reason == reason
    assert dead.payload == next(iter(kwargs.values()))
    assert dead.stage == "connector.bluetooth"
    assert dead.source_topic.startswith(f"ble:{address}/")
    assert dead.device_id == connector._devices[address].device_id


def test_scan_runs_the_scanner_until_stopped(connector: BluetoothConnector, kafka: FakeKafka) -> None:
    calls: list[str] = []

    class FakeScanner:
        def __init__(self, *, detection_callback: Callable[[BLEDevice, AdvertisementData], None]):
            self.callback = detection_callback

        async def start(self) -> None:
            calls.append("start")
            self.callback(*advertisement(THERMO, service=BTHOME_TEMP_HUM))
            asyncio.get_running_loop().call_later(0.05, connector.request_stop)

        async def stop(self) -> None:
            calls.append("stop")

    assert asyncio.run(connector.scan(scanner_factory=FakeScanner)) == 0
    assert calls == ["start", "stop"]
    assert len(records(kafka, "telemetry.raw")) == 1
    assert [e["kind"] for e in records(kafka, "system")] == ["connector_up", "connector_down"]


def test_scan_reports_a_scanner_that_cannot_start(connector: BluetoothConnector, kafka: FakeKafka) -> None:
    class NoAdapter:
        def __init__(self, **_: Any) -> None:
            pass

        async def start(self) -> None:
            raise OSError("No Bluetooth adapters found.")

    assert asyncio.run(connector.scan(scanner_factory=NoAdapter)) == 1
    assert connector.failure is not None and "No Bluetooth adapters found." in connector.failure
    [event] = records(kafka, "system")
    assert event["kind"] == "connector_down"


def test_device_file_in_toml(tmp_path: Path) -> None:
    path = tmp_path / "ble.toml"
    path.write_text(f'[devices."{THERMO.lower()}"]\ndevice_id = "thermo-1"\n\n'
                    f'[devices."{SHELLY}"]\ndevice_id = "shelly-ht"\nbind_key = "{KEY}"\n')
    assert load_devices(path) == {
        THERMO: BluetoothDevice(THERMO, "thermo-1"),
        SHELLY: BluetoothDevice(SHELLY, "shelly-ht", bytes.fromhex(KEY)),
    }


def test_device_file_in_json(tmp_path: Path) -> None:
    path = tmp_path / "ble.json"
    path.write_text(json.dumps({"devices": {RUUVI: "fridge", THERMO: {"device_id": "thermo-1"}}}))
    assert load_devices(path) == {RUUVI: BluetoothDevice(RUUVI, "fridge"),
                                  THERMO: BluetoothDevice(THERMO, "thermo-1")}


@pytest.mark.parametrize(("name", "text", "message"), [
    ("a.toml", "devices = 3", "needs a 'devices' table"),
    ("a.toml", "[devices", "is not valid TOML"),
    ("a.json", '{"devices": {"not-an-address": "x"}}', "is not a Bluetooth address"),
    ("a.json", f'{{"devices": {{"{THERMO}": "bad id!"}}}}', "does not match"),
    ("a.json", f'{{"devices": {{"{THERMO}": {{"device_id": "t", "bind_key": "12"}}}}}}',
     "bind_key is not 32 hex digits"),
    ("a.json", f'{{"devices": {{"{THERMO}": {{}}}}}}', "needs a device_id string"),
])
def test_bad_device_files_are_refused(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(BluetoothConfigError, match=message):
        load_devices(path)


def test_missing_device_file(tmp_path: Path) -> None:
    with pytest.raises(BluetoothConfigError, match="cannot read"):
        load_devices(tmp_path / "nope.toml")
