"""Who may talk to the real Mosquitto: devices with their own accounts, services with theirs.

Accounts live in Mosquitto's dynamic-security plugin (pipeline/mqtt_accounts.py);
devices get theirs from the API's registry. "Delivered to the connector" is checked
with a subscriber logged in as the connector's account, on the connector's topics.
"""

from __future__ import annotations

import json
import stat
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.reasoncodes import ReasonCode

from pipeline.mqtt_accounts import SERVICE_ACCOUNTS, AccountAdmin, password_path
from pipeline.settings import Settings
from tests.conftest import unique_id, wait_until
from tests.integration.conftest import ApiServer
from tests.integration.live import create_device

pytestmark = pytest.mark.integration


class Client:
    """A paho client that records how its connection and subscriptions went, and messages."""

    def __init__(self, settings: Settings, username: str | None = None, password: str | None = None,
                 *, protocol: int = mqtt.MQTTv311) -> None:
        self.settings = settings
        self.connack: ReasonCode | None = None
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.granted: dict[int, list[ReasonCode]] = {}
        self.acked: dict[int, ReasonCode] = {}
        self.messages: list[tuple[str, bytes]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=unique_id("auth"),
                                  protocol=protocol)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *args: self.disconnected.set()
        self.client.on_subscribe = lambda c, u, mid, codes, p: self.granted.__setitem__(mid, codes)
        self.client.on_publish = lambda c, u, mid, code, p: self.acked.__setitem__(mid, code)
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload))

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode,
                    properties: Any) -> None:
        self.connack = reason
        self.connected.set()

    def connect(self) -> ReasonCode:
        """Connect; the broker's CONNACK reason (stops trying again when refused)."""
        self.client.connect(self.settings.mqtt_host, self.settings.mqtt_port, keepalive=10)
        self.client.loop_start()
        assert self.connected.wait(10), "no CONNACK"
        assert self.connack is not None
        if self.connack.is_failure:
            self.close()
        return self.connack

    def subscribe(self, topic: str) -> list[ReasonCode]:
        _, mid = self.client.subscribe(topic, qos=1)
        return wait_until(lambda: self.granted.get(mid), timeout=10, what=f"SUBACK for {topic}")

    def publish(self, topic: str, payload: dict[str, Any] | str) -> int:
        body = payload if isinstance(payload, str) else json.dumps(payload)
        info = self.client.publish(topic, body, qos=1)
        info.wait_for_publish(10)
        return info.mid

    def got(self, topic: str) -> list[bytes]:
        return [payload for t, payload in self.messages if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    made: list[Client] = []
    yield made
    for client in made:
        client.close()


def _service(settings: Settings, account: str, made: list[Client]) -> Client:
    username = SERVICE_ACCOUNTS[account].username
    client = Client(settings, username, password_path(settings, account).read_text().strip())
    made.append(client)
    assert not client.connect().is_failure, f"{account} refused"
    return client


def _device(settings: Settings, device_id: str, key: str, made: list[Client],
            **options: Any) -> Client:
    client = Client(settings, device_id, key, **options)
    made.append(client)
    return client


def _refused(settings: Settings, username: str | None, password: str | None) -> bool:
    client = Client(settings, username, password)
    try:
        return client.connect().is_failure
    finally:
        client.close()


def test_strangers_and_wrong_passwords_are_refused(stack: Settings, api_server: ApiServer,
                                                   clients: list[Client]) -> None:
    device_id, key = create_device(api_server, "mqtt")
    assert not _device(stack, device_id, key, clients).connect().is_failure  # the control
    assert _refused(stack, None, None)  # anonymous
    assert _refused(stack, device_id, key + "x")
    assert _refused(stack, device_id, "")
    assert _refused(stack, unique_id("nobody"), key)
    assert _refused(stack, SERVICE_ACCOUNTS["connector"].username, key)


def test_a_device_publishes_only_as_itself(stack: Settings, api_server: ApiServer,
                                           clients: list[Client]) -> None:
    connector = _service(stack, "connector", clients)
    assert connector.subscribe("devices/+/telemetry")[0].value == 1
    me, my_key = create_device(api_server, "mqtt")
    victim, _ = create_device(api_server, "mqtt")
    device = _device(stack, me, my_key, clients)
    assert not device.connect().is_failure

    device.publish(f"devices/{victim}/telemetry", {"metrics": {"temperature": 99.0}})  # spoofed
    device.publish(f"devices/{victim}/commands/ack", {"id": "x", "status": "acked"})
    device.publish(f"devices/{me}/telemetry", {"metrics": {"temperature": 21.0}})  # the control
    wait_until(lambda: connector.got(f"devices/{me}/telemetry"), what="the device's own reading")
    time.sleep(0.5)
    assert connector.got(f"devices/{victim}/telemetry") == []
    assert [topic for topic, _ in connector.messages if victim in topic] == []


def test_mqtt5_devices_are_told_a_publish_was_not_authorised(
        stack: Settings, api_server: ApiServer, clients: list[Client]) -> None:
    me, key = create_device(api_server, "mqtt")
    device = _device(stack, me, key, clients, protocol=mqtt.MQTTv5)
    assert not device.connect().is_failure
    own = device.publish(f"devices/{me}/telemetry", {"metrics": {"t": 1.0}})
    foreign = device.publish(f"devices/{unique_id('other')}/telemetry", {"metrics": {"t": 1.0}})
    wait_until(lambda: own in device.acked and foreign in device.acked, what="both PUBACKs")
    assert not device.acked[own].is_failure  # success, or "no matching subscribers"
    assert device.acked[foreign].value == 0x87  # not authorized: nothing was taken


def test_a_device_subscribes_only_to_its_own_commands(stack: Settings, api_server: ApiServer,
                                                      clients: list[Client]) -> None:
    for protocol, prefix in (("mqtt", "devices"), ("gsm", "gsm")):
        me, key = create_device(api_server, protocol)
        device = _device(stack, me, key, clients)
        assert not device.connect().is_failure
        assert device.subscribe(f"{prefix}/{me}/commands")[0].value == 1
        assert device.subscribe(f"{prefix}/{unique_id('other')}/commands")[0].value == 0x80
        assert device.subscribe(f"{prefix}/+/commands")[0].value == 0x80
        assert device.subscribe("#")[0].value == 0x80
        assert device.subscribe(f"{prefix}/+/telemetry")[0].value == 0x80


def test_rotated_and_deleted_keys_stop_working_at_once(stack: Settings, api_server: ApiServer,
                                                       clients: list[Client]) -> None:
    me, old_key = create_device(api_server, "gsm")
    device = _device(stack, me, old_key, clients)
    assert not device.connect().is_failure
    headers = {"Authorization": f"Bearer {api_server.token}"}

    started = time.monotonic()
    rotated = httpx.post(f"{api_server.base_url}/api/devices/{me}/api-key", headers=headers, timeout=15)
    assert rotated.status_code == 200, rotated.text
    took = time.monotonic() - started
    new_key = rotated.json()["api_key"]
    assert _refused(stack, me, old_key)  # by the very next connection: in force once answered
    print(f"\nrotation answered in {took * 1000:.0f} ms; the old key was refused right after")
    assert device.disconnected.wait(5), "the session on the old key was not closed"
    again = _device(stack, me, new_key, clients)
    assert not again.connect().is_failure

    deleted = httpx.delete(f"{api_server.base_url}/api/devices/{me}", headers=headers, timeout=15)
    assert deleted.status_code == 200, deleted.text
    assert again.disconnected.wait(5), "the deleted device's session was not closed"
    assert _refused(stack, me, new_key)


def test_moving_a_device_off_mqtt_removes_its_account(stack: Settings, api_server: ApiServer,
                                                      clients: list[Client]) -> None:
    me, key = create_device(api_server, "mqtt")
    assert not _refused(stack, me, key)
    moved = httpx.patch(f"{api_server.base_url}/api/devices/{me}", json={"protocol": "http"},
                        headers={"Authorization": f"Bearer {api_server.token}"}, timeout=15)
    assert moved.status_code == 200, moved.text
    assert _refused(stack, me, key)
    http_device, _ = create_device(api_server, "http")
    assert http_device not in AccountAdmin(stack).device_accounts()


def test_service_accounts_and_their_limits(stack: Settings, clients: list[Client]) -> None:
    mode = stat.S_IMODE(password_path(stack, "chirpstack").stat().st_mode)
    assert mode == 0o600
    connector = _service(stack, "connector", clients)
    assert connector.subscribe("application/+/device/+/event/+")[0].value == 1
    assert connector.subscribe("$share/auth-test/devices/+/telemetry")[0].value == 1
    assert connector.subscribe("$CONTROL/dynamic-security/#")[0].value == 0x80
    dispatcher = _service(stack, "dispatcher", clients)
    assert dispatcher.subscribe("$share/auth-test/devices/+/commands/ack")[0].value == 1
    chirpstack = _service(stack, "chirpstack", clients)
    assert chirpstack.subscribe("devices/+/telemetry")[0].value == 0x80

    app, dev_eui = unique_id("app"), "0102030405060708"
    uplink = f"application/{app}/device/{dev_eui}/event/up"
    spoofed = f"devices/{unique_id('spoof')}/telemetry"
    chirpstack.publish(spoofed, {"metrics": {"t": 1.0}})
    chirpstack.publish(uplink, {"deviceInfo": {"devEui": dev_eui}, "object": {"t": 1.0}})
    wait_until(lambda: connector.got(uplink), what="ChirpStack's uplink at the connector")
    assert connector.got(spoofed) == []

    # only the admin account changes accounts
    simulator = _service(stack, "simulator", clients)
    assert simulator.subscribe("$CONTROL/dynamic-security/v1/response")[0].value == 0x80


def test_a_service_account_name_is_no_device_id(api_server: ApiServer) -> None:
    response = httpx.post(f"{api_server.base_url}/api/devices",
                          headers={"Authorization": f"Bearer {api_server.token}"},
                          json={"id": "chirpstack", "protocol": "mqtt"}, timeout=15)
    assert response.status_code == 422, response.text
    assert response.json()["detail"]["field"] == "id"
