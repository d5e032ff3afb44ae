"""MQTT over TLS against the real Mosquitto, with the stack's own CA (infra/tls.py).

Port ``mqtt_tls_port``: TLS, devices log in with their password. Port
``mqtt_mtls_port``: mutual TLS, the client certificate's common name is the user
name (a certificate from ``webscada device cert ID``). "Delivered" is checked with a
subscriber logged in as the connector's account on the plain loopback listener.
"""

from __future__ import annotations

import ssl
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from infra.tls import tls_files
from pipeline.mqtt_accounts import login
from pipeline.settings import Settings
from tests.conftest import free_port, unique_id, wait_until
from tests.integration.conftest import ApiServer
from tests.integration.live import create_device

pytestmark = pytest.mark.integration


def _tls_client(settings: Settings, port: int, *, username: str | None = None,
                password: str | None = None, cert: tuple[Path, Path] | None = None,
                ca: Path | None = None) -> tuple[mqtt.Client, Any]:
    """A connected client and the CONNACK reason (``None`` when the handshake failed)."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=unique_id("tls"))
    client.tls_set(ca_certs=str(ca or tls_files(settings.stack_dir).ca),
                   certfile=str(cert[0]) if cert else None, keyfile=str(cert[1]) if cert else None)
    if username is not None:
        client.username_pw_set(username, password)
    answered = threading.Event()
    reasons: list[Any] = []
    client.on_connect = lambda c, u, f, reason, p: (reasons.append(reason), answered.set())
    try:
        client.connect(settings.mqtt_host, port, keepalive=10)
    except (ssl.SSLError, OSError):
        return client, None
    client.loop_start()
    if not answered.wait(10):
        client.loop_stop()
        return client, None
    return client, reasons[0]


def _close(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()


def _send(client: mqtt.Client, topic: str, payload: str) -> None:
    client.publish(topic, payload, qos=1).wait_for_publish(10)


class _Listener:
    """The connector's view: everything on devices/+/telemetry."""

    def __init__(self, settings: Settings) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=unique_id("sub"))
        login(self.client, settings, "connector")
        subscribed = threading.Event()
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload))
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.on_connect = lambda c, *args: c.subscribe("devices/+/telemetry", qos=1)
        self.client.connect(settings.mqtt_host, settings.mqtt_port)
        self.client.loop_start()
        assert subscribed.wait(10)

    def got(self, topic: str) -> list[bytes]:
        return [payload for t, payload in self.messages if t == topic]


def _device_certificate(settings: Settings, device_id: str, folder: Path) -> tuple[Path, Path]:
    """``webscada device cert`` as a user runs it."""
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "device", "cert", device_id,
                           "--out", str(folder)], capture_output=True, text=True, timeout=60,
                          env=settings_env(settings))
    assert done.returncode == 0, done.stdout + done.stderr
    key = folder / f"{device_id}.key"
    assert key.stat().st_mode & 0o777 == 0o600
    return folder / f"{device_id}.pem", key


def settings_env(settings: Settings) -> dict[str, str]:
    import os

    return {**os.environ, "WEBSCADA_STACK_DIR": str(settings.stack_dir)}


def test_devices_over_tls_with_their_password(stack: Settings, api_server: ApiServer) -> None:
    listener = _Listener(stack)
    device_id, key = create_device(api_server, "mqtt")
    client, reason = _tls_client(stack, stack.mqtt_tls_port, username=device_id, password=key)
    assert reason is not None and not reason.is_failure, reason
    try:
        _send(client, f"devices/{device_id}/telemetry", '{"telemetry": {"t": 1.0}}')
        wait_until(lambda: listener.got(f"devices/{device_id}/telemetry"), what="the TLS reading")
    finally:
        _close(client)
        _close(listener.client)
    _, wrong = _tls_client(stack, stack.mqtt_tls_port, username=device_id, password="wrong")
    assert wrong is not None and wrong.is_failure


def test_a_client_that_does_not_trust_the_broker_gets_no_connection(stack: Settings,
                                                                     tmp_path: Path) -> None:
    # a CA of its own, not the stack's: the handshake fails before any MQTT
    other = tmp_path / "other-ca"
    subprocess.run([sys.executable, "-c", "from pathlib import Path; from infra.tls import "
                    f"ensure_server_files; ensure_server_files(Path({str(other)!r}), [])"],
                   check=True, timeout=60)
    _, reason = _tls_client(stack, stack.mqtt_tls_port, username="x", password="y",
                            ca=tls_files(other).ca)
    assert reason is None


def test_devices_with_a_client_certificate(stack: Settings, api_server: ApiServer,
                                           tmp_path: Path) -> None:
    listener = _Listener(stack)
    device_id, _ = create_device(api_server, "mqtt")
    stranger_id = unique_id("unregistered")
    cert = _device_certificate(stack, device_id, tmp_path)
    stranger = _device_certificate(stack, stranger_id, tmp_path)
    client, reason = _tls_client(stack, stack.mqtt_mtls_port, cert=cert)
    assert reason is not None and not reason.is_failure, reason
    # a certificate of the CA without an account: it may connect, but publish nothing
    unknown, unknown_reason = _tls_client(stack, stack.mqtt_mtls_port, cert=stranger)
    try:
        _send(client, "devices/someone-else/telemetry", "spoofed")
        if unknown_reason is not None and not unknown_reason.is_failure:
            _send(unknown, f"devices/{stranger_id}/telemetry", "no account")
        _send(client, f"devices/{device_id}/telemetry", "control")
        wait_until(lambda: listener.got(f"devices/{device_id}/telemetry"), what="the mTLS reading")
    finally:
        _close(client)
        _close(unknown)
        _close(listener.client)
    assert listener.got("devices/someone-else/telemetry") == []
    assert listener.got(f"devices/{stranger_id}/telemetry") == []

    # without a certificate the mutual-TLS listener lets nobody in, password or not
    _, no_cert = _tls_client(stack, stack.mqtt_mtls_port, username=device_id, password="x")
    assert no_cert is None or no_cert.is_failure


def test_the_production_profile_has_no_plain_mqtt(stack: Settings, tmp_path: Path) -> None:
    """WEBSCADA_MQTT_TLS=true: a broker of its own (own folder and port) whose only listener
    speaks TLS; the services' ways in (login, the account admin, the health probe) use it."""
    import asyncio
    import contextlib

    from api.health import check_mqtt
    from infra.services.mosquitto import Mosquitto
    from pipeline.mqtt_accounts import AccountAdmin, broker_ca, credentials

    port = free_port()
    settings = stack.model_copy(update={"stack_dir": tmp_path / "stack", "mqtt_port": port,
                                        "mqtt_tls": True, "mqtt_tls_port": 0, "mqtt_mtls_port": 0})
    broker = Mosquitto(settings)
    broker.start()
    try:
        plain = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=unique_id("plain"))
        plain.username_pw_set(*credentials(settings, "simulator"))  # no TLS: refused
        accepted = threading.Event()
        plain.on_connect = lambda c, u, f, reason, p: accepted.set() if not reason.is_failure else None
        with contextlib.suppress(OSError):
            plain.connect(settings.mqtt_host, port, keepalive=5)
            plain.loop_start()
        assert not accepted.wait(3), "a client without TLS got in"
        plain.loop_stop()

        AccountAdmin(settings).add_device("tls-only-device", "mqtt", "its-api-key-1")
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=unique_id("tls"))
        client.username_pw_set("tls-only-device", "its-api-key-1")
        client.tls_set(ca_certs=broker_ca(settings))
        answered = threading.Event()
        reasons: list[Any] = []
        client.on_connect = lambda c, u, f, reason, p: (reasons.append(reason), answered.set())
        client.connect(settings.mqtt_host, port, keepalive=10)
        client.loop_start()
        assert answered.wait(10) and not reasons[0].is_failure
        _close(client)
        asyncio.run(check_mqtt(settings.mqtt_host, port, broker_ca(settings)))
    finally:
        broker.stop()


def test_the_api_serves_https_with_a_certificate(stack: Settings, start_scoped_process: Any) -> None:
    """`webscada api` given the local CA's server certificate answers HTTPS; a client that
    checks it with the CA gets its answer, one without the CA is refused."""

    import httpx

    files = tls_files(stack.stack_dir)
    port = free_port()
    start_scoped_process("api", log_name="test-api-https.log",
                         env={"WEBSCADA_API_PORT": str(port),
                              "WEBSCADA_API_TLS_CERTFILE": str(files.server),
                              "WEBSCADA_API_TLS_KEYFILE": str(files.server_key)})
    url = f"https://127.0.0.1:{port}/health"

    def answered() -> httpx.Response | None:
        try:
            return httpx.get(url, verify=str(files.ca), timeout=5)
        except httpx.TransportError:
            return None

    response = wait_until(answered, timeout=60, what="the API over HTTPS")
    assert response.status_code in (200, 503) and "dependencies" in response.json()
    with pytest.raises(httpx.ConnectError):  # the system's CAs do not know ours
        httpx.get(url, timeout=5)
    with pytest.raises(httpx.TransportError):  # no plain HTTP on that port
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
