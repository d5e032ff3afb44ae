"""Bluetooth LE connector: BTHome v2 and RuuviTag advertisements to Kafka.

A ``bleak`` scanner calls :meth:`BluetoothConnector.on_advertisement` for each
advertisement heard. Advertisements of addresses listed in the device file are
decoded (BTHome v2 service data, UUID 0xFCD2, decrypted when the device has a
bind key; RuuviTag data format 5, manufacturer id 0x0499) and produced to
``telemetry.raw``, batched with the other readings of their partition; an
advertisement that cannot be decoded goes to ``telemetry.dlq`` with its reason
and bytes. Other addresses are ignored and counted.

Devices repeat one advertisement many times. The same bytes from the same
device within ``repeat_window_s`` are the same reading: they are dropped, and
the reading's ``message_id`` is derived from the device id, the bytes and the
moment they were first heard, so it is stable for that advertisement.

The device file (TOML or JSON, by extension)::

    [devices."A4:C1:38:8D:18:B2"]
    device_id = "greenhouse-1"
    bind_key = "231d39c1d7cc1ab1aee224cd096db932"   # only for encrypted BTHome

    {"devices": {"CB:B8:33:4C:88:4F": {"device_id": "fridge"},
                 "A4:C1:38:8D:18:B2": "greenhouse-1"}}
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import tomllib
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvloop
from prometheus_client import Counter as PromCounter

from connectors._signals import on_stop_signals
from connectors.codecs import BTHOME_UUID, RUUVI_COMPANY_ID, Decoded, decode_bthome, decode_ruuvi
from connectors.errors import BluetoothConfigError, PayloadError, ProduceError
from connectors.metrics import MESSAGES_RECEIVED, MESSAGES_REJECTED, serve_metrics
from connectors.payload import dead_letter_for_error, derive_message_id
from connectors.producer import Delivery, RecordProducer
from pipeline.logs import configure_logging
from pipeline.settings import Settings
from schemas.errors import InvalidRecordError
from schemas.records import DEVICE_ID_PATTERN, SystemEvent, Telemetry, TelemetryMetadata, utcnow

if TYPE_CHECKING:
    from bleak.backends.device import BLEDevice
    from bleak.backends.scanner import AdvertisementData

__all__ = ["BluetoothConnector", "BluetoothDevice", "load_devices", "main"]

logger = logging.getLogger(__name__)

PROTOCOL = "bluetooth"
STAGE = "connector.bluetooth"

ADVERTISEMENTS_IGNORED = PromCounter(
    "webscada_connector_ble_advertisements_ignored",
    "Bluetooth advertisements not turned into records: unconfigured address, repeat, no payload.",
    ["reason"],
)

_ADDRESS = re.compile(
    r"^(?:[0-9A-F]{2}:){5}[0-9A-F]{2}$"  # BlueZ, Windows
    r"|^[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}$"  # CoreBluetooth
)
_BIND_KEY = re.compile(r"^[0-9a-fA-F]{32}$")


@dataclass(frozen=True, slots=True)
class BluetoothDevice:
    """One configured advertiser: its address (upper case), device id and BTHome bind key."""

    address: str
    device_id: str
    bind_key: bytes | None = None

    def __post_init__(self) -> None:
        if not _ADDRESS.fullmatch(self.address):
            raise ValueError(f"address {self.address!r} is not a Bluetooth address")
        if not DEVICE_ID_PATTERN.fullmatch(self.device_id):
            raise ValueError(f"device id {self.device_id!r} does not match {DEVICE_ID_PATTERN.pattern}")
        if self.bind_key is not None and len(self.bind_key) != 16:
            raise ValueError("a bind key is 16 bytes (32 hex digits)")

    @property
    def mac(self) -> bytes | None:
        """The address as 6 bytes (for BTHome decryption), None for a CoreBluetooth UUID."""
        return bytes.fromhex(self.address.replace(":", "")) if len(self.address) == 17 else None


def load_devices(path: Path) -> dict[str, BluetoothDevice]:
    """The device file as address → device; :class:`BluetoothConfigError` says what is wrong."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BluetoothConfigError(f"cannot read the Bluetooth device file {path}: {exc}") from exc
    try:
        data: Any = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
        raise BluetoothConfigError(f"{path} is not valid {kind}: {exc}") from exc
    entries = data.get("devices") if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        raise BluetoothConfigError(f"{path} needs a 'devices' table of address = device")
    devices: dict[str, BluetoothDevice] = {}
    for address, entry in entries.items():
        if isinstance(entry, str):
            entry = {"device_id": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("device_id"), str):
            raise BluetoothConfigError(f"{path}: device {address!r} needs a device_id string")
        key = entry.get("bind_key")
        if key is not None and (not isinstance(key, str) or not _BIND_KEY.fullmatch(key)):
            raise BluetoothConfigError(f"{path}: device {address!r} bind_key is not 32 hex digits")
        try:
            device = BluetoothDevice(str(address).upper(), entry["device_id"],
                                     bytes.fromhex(key) if key else None)
        except ValueError as exc:
            raise BluetoothConfigError(f"{path}: device {address!r}: {exc}") from exc
        devices[device.address] = device
    return devices


class BluetoothConnector:
    """Turns advertisements of configured devices into records on Kafka.

    The producer is the caller's: started before, closed after. ``clock``
    gives the receive time (tests pass a fixed one).
    """

    def __init__(
        self,
        *,
        producer: RecordProducer,
        devices: Mapping[str, BluetoothDevice],
        repeat_window_s: float = 30.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._producer = producer
        self._devices = {address.upper(): device for address, device in devices.items()}
        self._repeat_window_s = repeat_window_s
        self._clock = clock
        self._first_heard: dict[tuple[str, str], tuple[bytes, datetime]] = {}
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._failure: str | None = None
        self.stats: Counter[str] = Counter()

    @property
    def failure(self) -> str | None:
        """Why the connector gave up (Kafka refused records for good), else None."""
        return self._failure

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def request_stop(self) -> None:
        """Ask :meth:`scan` to stop; safe from a signal handler and from any thread."""
        self._stop.set()
        loop, wakeup = self._loop, self._wakeup
        if loop is not None and wakeup is not None:
            try:
                loop.call_soon_threadsafe(wakeup.set)
            except RuntimeError:
                pass  # the loop has already closed: scan() is over

    def on_advertisement(self, device: BLEDevice, advertisement: AdvertisementData) -> None:
        """bleak's detection callback; never raises into the scanner."""
        try:
            self.handle(
                device.address, rssi=advertisement.rssi,
                service_data=advertisement.service_data,
                manufacturer_data=advertisement.manufacturer_data,
            )
        except Exception:
            # A bug here must not stop the scanner's callbacks for every other device.
            logger.exception("%s: failed on an advertisement of %s", STAGE, device.address)

    def handle(
        self,
        address: str,
        *,
        rssi: int | None,
        service_data: Mapping[str, bytes],
        manufacturer_data: Mapping[int, bytes],
    ) -> None:
        """Decode one advertisement and produce its reading(s) or dead letter(s)."""
        device = self._devices.get(address.upper())
        if device is None:
            self._ignore("unconfigured")
            return
        payloads: list[tuple[str, bytes, Callable[[bytes], Decoded]]] = []
        if BTHOME_UUID in service_data:
            payloads.append(("bthome", bytes(service_data[BTHOME_UUID]), lambda data: decode_bthome(
                data, bind_key=device.bind_key, mac=device.mac)))
        if RUUVI_COMPANY_ID in manufacturer_data:
            payloads.append(("ruuvi", bytes(manufacturer_data[RUUVI_COMPANY_ID]), decode_ruuvi))
        if not payloads:
            self._ignore("no_payload")
            return
        now = self._clock()
        for fmt, data, decode in payloads:
            if self._is_repeat(device.address, fmt, data, now):
                self._ignore("repeated")
                continue
            MESSAGES_RECEIVED.labels(PROTOCOL).inc()
            self.stats["received"] += 1
            self._forward(device, fmt, data, decode, rssi=rssi, now=now)

    async def scan(self, *, scanner_factory: Callable[..., Any] | None = None) -> int:
        """Scan until :meth:`request_stop`; 0 on a clean stop, 1 when scanning or Kafka failed.

        ``scanner_factory`` replaces ``bleak.BleakScanner`` (tests).
        """
        if scanner_factory is None:
            from bleak import BleakScanner  # here, so the module imports without BlueZ

            scanner_factory = BleakScanner
        self._loop, self._wakeup = asyncio.get_running_loop(), asyncio.Event()
        scanner = scanner_factory(detection_callback=self.on_advertisement)
        try:
            await scanner.start()
        except Exception as exc:  # BleakError, D-Bus or OS errors: no adapter, no BlueZ
            self._failure = (f"cannot start the Bluetooth scanner (is BlueZ running, with an"
                             f" adapter?): {exc!r}")
            logger.error("%s: %s", STAGE, self._failure)
            self._event("connector_down", self._failure)
            return 1
        self._event("connector_up", f"scanning for {len(self._devices)} configured devices")
        try:
            if not self._stop.is_set():
                await self._wakeup.wait()
        finally:
            await scanner.stop()
            self._event("connector_down", "stopped")
        return 1 if self._failure else 0

    # parts

    def _is_repeat(self, address: str, fmt: str, data: bytes, now: datetime) -> bool:
        """True for bytes heard from this device less than ``repeat_window_s`` ago."""
        key = (address, fmt)
        last = self._first_heard.get(key)
        if last is not None and last[0] == data:
            if (now - last[1]).total_seconds() < self._repeat_window_s:
                return True
        self._first_heard[key] = (data, now)
        return False

    def _forward(
        self, device: BluetoothDevice, fmt: str, data: bytes, decode: Callable[[bytes], Decoded],
        *, rssi: int | None, now: datetime,
    ) -> None:
        source = f"ble:{device.address}/{fmt}"
        try:
            telemetry = self._telemetry(device, fmt, decode(data), data, rssi=rssi, now=now)
        except PayloadError as exc:
            MESSAGES_REJECTED.labels(PROTOCOL, exc.code).inc()
            self.stats["rejected"] += 1
            logger.info("%s: %s from %s rejected: %s", STAGE, fmt, device.address, exc)
            dead = dead_letter_for_error(exc, data, device_id=device.device_id, stage=STAGE,
                                         source_topic=source, failed_at=now)
            self._send(lambda: self._producer.send_dead_letter(dead, self._delivered))
            return
        self.stats["produced"] += 1
        self._send(lambda: self._producer.send_telemetry(telemetry, self._delivered))

    def _telemetry(
        self, device: BluetoothDevice, fmt: str, decoded: Decoded, data: bytes,
        *, rssi: int | None, now: datetime,
    ) -> Telemetry:
        if not decoded.metrics:
            raise PayloadError(f"{fmt} advertisement carries no available measurement")
        extra = {"address": device.address, "format": fmt}
        extra.update({k: _text(v) for k, v in decoded.metadata.items()})
        battery = decoded.metrics.get("battery") if fmt == "bthome" else None
        try:
            return Telemetry(
                device_id=device.device_id, protocol=PROTOCOL, ts=now, received_at=now,
                # ``now`` is when these bytes were first heard: repeats never get here
                message_id=derive_message_id(device.device_id, fmt.encode() + b"\0" + data, now),
                metrics=decoded.metrics,
                metadata=TelemetryMetadata(
                    signal_strength=rssi,
                    battery_level=battery if battery is not None and battery <= 100 else None,
                    extra=extra,
                ),
            )
        except InvalidRecordError as exc:
            raise PayloadError(f"{fmt} reading is not a valid Telemetry record: {exc}") from exc

    def _send(self, produce: Callable[[], None]) -> None:
        try:
            produce()
        except ProduceError as exc:
            self._fail(f"Kafka refused a record: {exc}")

    def _delivered(self, delivery: Delivery) -> None:
        if not delivery.ok:
            # No redelivery exists for a radio broadcast; the device's next one carries on.
            self.stats["undelivered"] += 1
            if delivery.fatal or self._producer.fatal_error:
                self._fail(f"Kafka producer failed: {delivery.error}")

    def _ignore(self, reason: str) -> None:
        self.stats[reason] += 1
        ADVERTISEMENTS_IGNORED.labels(reason).inc()

    def _event(self, kind: str, message: str) -> None:
        try:
            self._producer.send_system_event(SystemEvent(kind=kind, source=STAGE, message=message))
        except ProduceError as exc:
            logger.warning("%s: cannot send %s: %s", STAGE, kind, exc)

    def _fail(self, reason: str) -> None:
        if self._failure is None:
            self._failure = reason
            logger.error("%s: giving up: %s", STAGE, reason)
        self.request_stop()


def _text(value: float | str) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def main(settings: Settings, *, config_path: Path, metrics_port: int | None = None) -> int:
    """``webscada connect bluetooth --config PATH``: scan until SIGINT/SIGTERM.

    0 on a clean stop, 1 when scanning or Kafka failed, 2 for a bad device file.
    ``metrics_port`` serves the Prometheus counters on ``settings.metrics_host``.
    """
    configure_logging(settings, role="connect:bluetooth")
    try:
        devices = load_devices(config_path)
    except BluetoothConfigError as exc:
        logger.error("%s: %s", STAGE, exc)
        return 2
    if metrics_port:
        serve_metrics(settings.metrics_host, metrics_port)
    producer = RecordProducer.from_settings(settings, connector=PROTOCOL)
    connector = BluetoothConnector(producer=producer, devices=devices)
    with producer, on_stop_signals(connector.request_stop):
        # Readings are spread by the partition count of telemetry.raw: learn it before
        # scanning, so the scanner's callbacks never wait for it.
        while not producer.readings.wait_ready(1.0):
            if connector.stop_requested:
                return 0
            logger.info("%s: waiting for Kafka at %s", STAGE, settings.kafka_bootstrap)
        code = uvloop.run(connector.scan())
    logger.info("%s: stopped (%s)", STAGE, dict(connector.stats))
    return code
