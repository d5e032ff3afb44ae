"""Simulated devices of every protocol sending drifting telemetry, for demos and load.

Each device has temperature, humidity, pressure and flow wandering around set
points of its own, a slowly draining battery and a noisy signal, and sends a
reading every ``interval_s``, the way a real device of its protocol does:

- ``mqtt``: ``{prefix}-{i}`` publishes the seed device structure to
  ``devices/{id}/telemetry`` (QoS 1);
- ``gsm``: ``{prefix}-gsm-{i}`` publishes the same plus ``imei`` and ``csq`` to
  ``gsm/{id}/telemetry``;
- ``lorawan``: a devEUI publishes ChirpStack v4 ``up`` events with Cayenne LPP
  ``data`` and one or two gateways' rxInfo to
  ``application/{app}/device/{devEUI}/event/up``, and now and then a ``status``
  event with its battery level;
- ``http``: ``{prefix}-http-{i}`` POSTs to ``/api/devices/{id}/telemetry`` with its
  API key and an Idempotency-Key;
- ``websocket``: ``{prefix}-ws-{i}`` sends frames on ``/ws/devices/{id}`` and acks
  every command pushed to it.

HTTP and WebSocket devices get fresh API keys in PostgreSQL at start-up
(:mod:`connectors._simnet`). About one message in 200 is malformed on purpose,
to exercise the dead-letter path (and the API's 422).
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from connectors._signals import on_stop_signals
from connectors._simformats import (
    chirpstack_status,
    chirpstack_uplink,
    csq_for_dbm,
    dev_eui_for,
    imei_for,
    lpp_encode,
)
from connectors._values import clip
from pipeline.logs import configure_logging
from pipeline.mqtt_accounts import login
from pipeline.settings import Settings

if TYPE_CHECKING:
    from connectors._simnet import ApiDevices

__all__ = ["MALFORMED_RATE", "SIM_APPLICATION", "SIM_PROTOCOLS", "SimulatedDevice", "build_fleet",
           "main"]

logger = logging.getLogger(__name__)

MALFORMED_RATE = 1 / 200
SIM_PROTOCOLS = ("mqtt", "gsm", "lorawan", "http", "websocket")
SIM_APPLICATION = "simulation"
_MQTT_FAMILY = frozenset({"mqtt", "gsm", "lorawan"})
_STATUS_EVERY = 20  # a LoRaWAN device answers ChirpStack's DevStatusReq every so many uplinks
_CSQ_UNKNOWN_RATE = 1 / 100
_CONNECT_TIMEOUT_S = 30.0
_DRAIN_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class _Signal:
    """A mean-reverting random walk: set point, pull back per step, noise, bounds."""

    set_point: float
    pull: float
    noise: float
    low: float
    high: float

    def step(self, value: float, rng: random.Random) -> float:
        value += self.pull * (self.set_point - value) + rng.gauss(0.0, self.noise)
        return min(self.high, max(self.low, value))


class SimulatedDevice:
    """One device's state; :meth:`next_message` advances it by one reading."""

    def __init__(self, device_id: str, rng: random.Random, protocol: str = "mqtt", *,
                 serial: int = 1, application_id: str = SIM_APPLICATION) -> None:
        if protocol not in SIM_PROTOCOLS:
            raise ValueError(f"protocol {protocol!r} is not one of {', '.join(SIM_PROTOCOLS)}")
        self.device_id = device_id
        self.protocol = protocol
        self.application_id = application_id
        self.topic = {
            "mqtt": f"devices/{device_id}/telemetry",
            "gsm": f"gsm/{device_id}/telemetry",
            "lorawan": f"application/{application_id}/device/{device_id}/event/up",
        }.get(protocol, "")
        self._imei = imei_for(serial)
        self._f_cnt = 0
        self._gateways = [f"{serial:04x}" + "c001f153a1".ljust(12, "0"), "0016c001f153a14c"]
        self._rng = rng
        self._signals = {
            "temperature": _Signal(rng.uniform(18.0, 26.0), 0.05, 0.15, -20.0, 60.0),
            "humidity": _Signal(rng.uniform(35.0, 60.0), 0.05, 0.4, 0.0, 100.0),
            "pressure": _Signal(rng.uniform(1005.0, 1020.0), 0.02, 0.3, 950.0, 1050.0),
            "flow": _Signal(rng.uniform(8.0, 15.0), 0.1, 0.5, 0.0, 40.0),
        }
        self._values = {name: s.set_point for name, s in self._signals.items()}
        self._battery = rng.uniform(60.0, 100.0)
        self._rssi = rng.uniform(-85.0, -55.0)
        self._location = (round(rng.uniform(51.0, 53.0), 5), round(rng.uniform(4.0, 6.0), 5))

    def next_payload(self, now_ms: int) -> bytes:
        """The next reading as bytes; now and then a malformed one."""
        return self.next_message(now_ms)[1]

    def next_message(self, now_ms: int) -> tuple[str, bytes]:
        """The next message: its MQTT topic ("" for HTTP and WebSocket) and its bytes."""
        for name, signal in self._signals.items():
            self._values[name] = signal.step(self._values[name], self._rng)
        self._battery -= self._rng.uniform(0.0, 0.02)
        if self._battery < 5.0:
            self._battery = 100.0  # battery swapped
        rssi = self._rssi + self._rng.gauss(0.0, 3.0)
        malformed = self._rng.random() < MALFORMED_RATE
        if self.protocol == "lorawan":
            return self._lorawan(now_ms, rssi, malformed)
        if malformed:
            return self.topic, self._malformed(now_ms)
        body: dict[str, object] = {
            "timestamp": now_ms,
            "telemetry": {name: round(value, 2) for name, value in self._values.items()},
            "metadata": {
                "signalStrength": round(rssi),
                "batteryLevel": round(self._battery, 1),
                "location": {"lat": self._location[0], "lon": self._location[1]},
            },
        }
        if self.protocol == "gsm":
            unknown = self._rng.random() < _CSQ_UNKNOWN_RATE
            body["imei"] = self._imei
            body["csq"] = 99 if unknown else csq_for_dbm(rssi)
        return self.topic, json.dumps(body, separators=(",", ":")).encode()

    def _lorawan(self, now_ms: int, rssi: float, malformed: bool) -> tuple[str, bytes]:
        self._f_cnt += 1
        if self._f_cnt % _STATUS_EVERY == 0:
            status = chirpstack_status(
                dev_eui=self.device_id, application_id=self.application_id,
                name=f"sim {self.device_id}", now_ms=now_ms, battery=self._battery,
                margin=max(0, round((rssi + 120) / 3)),
            )
            return self.topic.removesuffix("/up") + "/status", status
        values = self._values
        data = lpp_encode([(1, "temperature", values["temperature"]),
                           (2, "relative_humidity", values["humidity"]),
                           (3, "barometric_pressure", values["pressure"]),
                           (4, "analog_input", values["flow"])])
        if malformed:
            data = data[:-1]  # cut off mid-value: the LPP decoder must say where
        snr = self._rng.uniform(-5.0, 11.0)
        rx = [(self._gateways[0], rssi, snr)]
        if self._rng.random() < 0.3:  # a second, farther gateway heard it too
            rx.append((self._gateways[1], rssi - self._rng.uniform(3, 15), snr - 4.0))
        return self.topic, chirpstack_uplink(
            dev_eui=self.device_id, application_id=self.application_id,
            name=f"sim {self.device_id}", f_cnt=self._f_cnt, now_ms=now_ms, data=data, rx=rx,
        )

    def _malformed(self, now_ms: int) -> bytes:
        good = {"timestamp": now_ms, "telemetry": {"temperature": 20.0}}
        choice = self._rng.randrange(4)
        if choice == 0:  # cut off mid-way
            return json.dumps(good).encode()[:-7]
        if choice == 1:  # a non-numeric metric beside valid ones
            good["telemetry"] = {"temperature": 20.0, "mode": "manual"}
        elif choice == 2:  # no metric at all
            good["telemetry"] = {"mode": "manual"}
        else:
            good["timestamp"] = "yesterday"
        return json.dumps(good).encode()


def build_fleet(
    rng: random.Random, *, devices: int, prefix: str, protocols: Sequence[str]
) -> list[SimulatedDevice]:
    """``devices`` simulated devices of each protocol in ``protocols``."""
    unknown = set(protocols) - set(SIM_PROTOCOLS)
    if unknown:
        raise ValueError(f"unknown protocol(s) {', '.join(sorted(unknown))};"
                         f" choose from {', '.join(SIM_PROTOCOLS)}")
    chirpstack_app = str(uuid.uuid5(uuid.NAMESPACE_URL, f"webscada-simulator/{prefix}"))
    names = {"mqtt": "{prefix}-{i}", "gsm": "{prefix}-gsm-{i}", "http": "{prefix}-http-{i}",
             "websocket": "{prefix}-ws-{i}"}
    fleet = []
    for protocol in dict.fromkeys(protocols):  # in order, once each
        for i in range(1, devices + 1):
            if protocol == "lorawan":
                fleet.append(SimulatedDevice(dev_eui_for(f"{prefix}-lorawan-{i}"), rng, protocol,
                                             serial=i, application_id=chirpstack_app))
            else:
                fleet.append(SimulatedDevice(names[protocol].format(prefix=prefix, i=i), rng,
                                             protocol, serial=i))
    return fleet


def main(
    settings: Settings,
    *,
    devices: int = 5,
    interval_s: float = 1.0,
    count: int | None = None,
    prefix: str = "sim",
    protocols: Sequence[str] = ("mqtt",),
    api_url: str | None = None,
) -> int:
    """``webscada simulate``: send until ``count`` readings per device or SIGINT/SIGTERM.

    ``api_url`` (default: the settings' API address) is where HTTP and
    WebSocket devices send. Returns 0 when every reading was confirmed (broker
    PUBACK, API answer), 1 otherwise.
    """
    configure_logging(settings, role="simulate")
    if devices < 1 or interval_s < 0 or (count is not None and count < 0):
        raise ValueError("devices must be >= 1, interval_s >= 0 and count >= 0")
    rng = random.Random()
    fleet = build_fleet(rng, devices=devices, prefix=prefix, protocols=protocols)
    stop = threading.Event()
    connected = threading.Event()
    client = _mqtt_client(settings, prefix, rng, connected) if any(
        d.protocol in _MQTT_FAMILY for d in fleet) else None
    api = None
    with on_stop_signals(stop.set):
        try:
            if client is not None and not _wait_for(connected, stop, _CONNECT_TIMEOUT_S):
                if not stop.is_set():
                    logger.error("no MQTT broker at %s:%d", settings.mqtt_host, settings.mqtt_port)
                return 1
            over_api = [(d.device_id, d.protocol) for d in fleet if d.protocol not in _MQTT_FAMILY]
            if over_api:
                from connectors._simnet import ApiDevices, register_devices

                keys = register_devices(settings, over_api, SIM_APPLICATION)
                api = ApiDevices(api_url or f"http://{settings.api_host}:{settings.api_port}", keys)
                api.start()
            logger.info("simulating %d devices (%s) every %.2f s",
                        len(fleet), ", ".join(dict.fromkeys(d.protocol for d in fleet)), interval_s)
            unconfirmed = _publish(client, api, fleet, stop, connected, interval_s=interval_s,
                                   count=count)
        finally:
            if api is not None:
                api.close()
            if client is not None:
                client.disconnect()
                client.loop_stop()
    if api is not None:
        unconfirmed += api.failed
    if unconfirmed:
        logger.error("%d readings were not confirmed", unconfirmed)
        return 1
    return 0


def _mqtt_client(settings: Settings, prefix: str, rng: random.Random,
                 connected: threading.Event) -> paho.Client:
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"webscada-simulator-{clip(prefix, 40)}-{rng.randrange(1 << 32):08x}",
        clean_session=True,
        protocol=paho.MQTTv311,
    )

    def on_connect(c: paho.Client, u: object, f: object, reason: ReasonCode, p: object) -> None:
        if reason.is_failure:
            logger.error("MQTT broker refused the simulator: %s", reason)
        else:
            connected.set()

    def on_disconnect(c: paho.Client, u: object, f: object, reason: ReasonCode, p: object) -> None:
        connected.clear()

    login(client, settings, "simulator")
    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.reconnect_delay_set(1, 10)
    client.max_queued_messages_set(10_000)
    client.connect_async(settings.mqtt_host, settings.mqtt_port, keepalive=30)
    client.loop_start()
    return client


def _publish(
    client: paho.Client | None,
    api: ApiDevices | None,
    fleet: list[SimulatedDevice],
    stop: threading.Event,
    connected: threading.Event,
    *,
    interval_s: float,
    count: int | None,
) -> int:
    """Send rounds until done or stopped; returns MQTT readings the broker never confirmed.

    While the broker is away readings are skipped (and counted), not queued:
    a simulator has no reason to replay the past.
    """
    in_flight: deque[paho.MQTTMessageInfo] = deque()
    lost = rounds = 0
    next_round = time.monotonic()
    while (count is None or rounds < count) and not stop.is_set():
        now_ms = time.time_ns() // 1_000_000
        for device in fleet:
            topic, payload = device.next_message(now_ms)
            if device.protocol not in _MQTT_FAMILY:
                assert api is not None
                api.submit(device.device_id, device.protocol, payload)
                continue
            info = (client.publish(topic, payload, qos=1)
                    if client is not None and connected.is_set() else None)
            if info is not None and info.rc == paho.MQTT_ERR_SUCCESS:
                in_flight.append(info)
            else:
                lost += 1
        while in_flight and _confirmed(in_flight[0]):
            in_flight.popleft()
        rounds += 1
        next_round += interval_s
        stop.wait(max(0.0, next_round - time.monotonic()))
    deadline = time.monotonic() + _DRAIN_TIMEOUT_S
    while in_flight and time.monotonic() < deadline:
        if _confirmed(in_flight[0]):
            in_flight.popleft()
        else:
            time.sleep(0.05)
    return lost + sum(1 for info in in_flight if not _confirmed(info))


def _confirmed(info: paho.MQTTMessageInfo) -> bool:
    try:
        return info.is_published()
    except (ValueError, RuntimeError):  # paho's way of saying it was never sent
        return False


def _wait_for(event: threading.Event, stop: threading.Event, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not stop.is_set() and time.monotonic() < deadline:
        if event.wait(0.2):
            return True
    return False
