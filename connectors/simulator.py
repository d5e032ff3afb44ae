"""Simulated MQTT devices publishing drifting telemetry, for demos and load.

Device ``{prefix}-{i}`` (i from 1) publishes the seed device structure to
``devices/{device_id}/telemetry`` at QoS 1 every ``interval_s``: temperature,
humidity, pressure and flow wandering around a set point of their own, a
slowly draining battery, a noisy signal and an epoch-ms timestamp. About one
message in 200 is malformed on purpose, to exercise the dead-letter path.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from connectors._signals import on_stop_signals
from connectors._values import clip
from pipeline.settings import Settings

__all__ = ["MALFORMED_RATE", "SimulatedDevice", "main"]

logger = logging.getLogger(__name__)

MALFORMED_RATE = 1 / 200
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
    """One device's state; :meth:`next_payload` advances it by one reading."""

    def __init__(self, device_id: str, rng: random.Random) -> None:
        self.device_id = device_id
        self.topic = f"devices/{device_id}/telemetry"
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
        """The next reading as JSON bytes; now and then a malformed one."""
        for name, signal in self._signals.items():
            self._values[name] = signal.step(self._values[name], self._rng)
        self._battery -= self._rng.uniform(0.0, 0.02)
        if self._battery < 5.0:
            self._battery = 100.0  # battery swapped
        if self._rng.random() < MALFORMED_RATE:
            return self._malformed(now_ms)
        body = {
            "timestamp": now_ms,
            "telemetry": {name: round(value, 2) for name, value in self._values.items()},
            "metadata": {
                "signalStrength": round(self._rssi + self._rng.gauss(0.0, 3.0)),
                "batteryLevel": round(self._battery, 1),
                "location": {"lat": self._location[0], "lon": self._location[1]},
            },
        }
        return json.dumps(body, separators=(",", ":")).encode()

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


def main(
    settings: Settings,
    *,
    devices: int = 5,
    interval_s: float = 1.0,
    count: int | None = None,
    prefix: str = "sim",
) -> int:
    """``webscada simulate``: publish until ``count`` readings per device or SIGINT/SIGTERM.

    Returns 0 when the broker confirmed every reading, 1 otherwise.
    """
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if devices < 1 or interval_s < 0 or (count is not None and count < 0):
        raise ValueError("devices must be >= 1, interval_s >= 0 and count >= 0")
    rng = random.Random()
    fleet = [SimulatedDevice(f"{prefix}-{i}", rng) for i in range(1, devices + 1)]
    stop = threading.Event()
    connected = threading.Event()

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

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.reconnect_delay_set(1, 10)
    client.max_queued_messages_set(10_000)
    client.connect_async(settings.mqtt_host, settings.mqtt_port, keepalive=30)
    client.loop_start()
    with on_stop_signals(stop.set):
        try:
            if not _wait_for(connected, stop, _CONNECT_TIMEOUT_S):
                if not stop.is_set():
                    logger.error("no MQTT broker at %s:%d", settings.mqtt_host, settings.mqtt_port)
                return 1
            logger.info("simulating %d devices %s-1..%s-%d every %.2f s",
                        devices, prefix, prefix, devices, interval_s)
            unconfirmed = _publish(
                client, fleet, stop, connected, interval_s=interval_s, count=count
            )
        finally:
            client.disconnect()
            client.loop_stop()
    if unconfirmed:
        logger.error("%d readings were not confirmed by the broker", unconfirmed)
        return 1
    return 0


def _publish(
    client: paho.Client,
    fleet: list[SimulatedDevice],
    stop: threading.Event,
    connected: threading.Event,
    *,
    interval_s: float,
    count: int | None,
) -> int:
    """Publish rounds until done or stopped; returns readings the broker never confirmed.

    While the broker is away readings are skipped (and counted), not queued:
    a simulator has no reason to replay the past.
    """
    in_flight: deque[paho.MQTTMessageInfo] = deque()
    lost = rounds = 0
    next_round = time.monotonic()
    while (count is None or rounds < count) and not stop.is_set():
        now_ms = time.time_ns() // 1_000_000
        for device in fleet:
            payload = device.next_payload(now_ms)
            info = client.publish(device.topic, payload, qos=1) if connected.is_set() else None
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
