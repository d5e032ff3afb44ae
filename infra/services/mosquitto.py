"""Mosquitto 2 from Debian's package, persistent, with its data under .stack/mosquitto."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import ClassVar

from infra.services._base import Service, StackError, apt_install, port_answers, wait_for, which

__all__ = ["BROKER_OPTIONS", "DYNSEC_PLUGIN", "Mosquitto"]

# Debian's build of Mosquitto's dynamic-security plugin (package mosquitto).
DYNSEC_PLUGIN = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"

# The broker's behaviour, here and in infra/mosquitto/mosquitto.conf (Docker): only the
# listener and the persistence folder differ.
BROKER_OPTIONS = (
    "persistence true",
    "autosave_interval 5",
    # QoS 1 messages for a disconnected persistent session (the connector)
    # are kept, not dropped: the connector's restart must lose nothing.
    "max_queued_messages 1000000",
    "max_queued_bytes 0",
    "max_inflight_messages 1000",
    "persistent_client_expiration 7d",
    "log_dest stdout",
    "log_type error",
    "log_type warning",
    "log_type notice",
    "connection_messages true",
)


class Mosquitto(Service):
    name: ClassVar[str] = "mosquitto"

    @property
    def address(self) -> str:
        return f"mqtt://{self.settings.mqtt_host}:{self.settings.mqtt_port}"

    def answers(self) -> bool:
        return port_answers(self.settings.mqtt_host, self.settings.mqtt_port)

    def install(self) -> None:
        # mosquitto-clients: mosquitto_pub, the bench's MQTT devices (and handy for trying things)
        missing = [package for package, binary in (("mosquitto", "mosquitto"),
                                                   ("mosquitto-clients", "mosquitto_pub"))
                   if which(binary, "/usr/sbin") is None]
        if missing:
            apt_install(*missing)

    def publisher(self) -> str:
        """The path of ``mosquitto_pub``, installed first when missing."""
        self.install()
        found = which("mosquitto_pub")
        if found is None:
            raise StackError("mosquitto_pub not found after installing mosquitto-clients")
        return found

    def write_accounts(self) -> Path:
        """The dynamic-security plugin's file: the service accounts (passwords made on the
        first start), the anonymous setting, the devices' accounts kept. Broker stopped."""
        from pipeline.mqtt_accounts import broker_config

        path = self.state_dir / "dynamic-security.json"
        existing = json.loads(path.read_text()) if path.exists() else None
        fresh = path.with_suffix(".tmp")
        descriptor = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            json.dump(broker_config(self.settings, existing), file, indent=1)
        fresh.replace(path)
        return path

    def _certificates(self) -> list[str]:
        from infra.tls import ensure_server_files

        files = ensure_server_files(self.settings.stack_dir, [self.settings.mqtt_host])
        return [f"cafile {files.ca}", f"certfile {files.server}", f"keyfile {files.server_key}"]

    def _tls_listeners(self) -> list[str]:
        """MQTT over TLS (password login) and mutual TLS (the certificate's common name is
        the user name: no password asked, the account's ACLs apply)."""
        settings = self.settings
        if not (settings.mqtt_tls_port or settings.mqtt_mtls_port):
            return []
        certificates = self._certificates()
        lines: list[str] = []
        if settings.mqtt_tls_port:
            lines += [f"listener {settings.mqtt_tls_port} {settings.mqtt_host}", *certificates]
        if settings.mqtt_mtls_port:
            lines += [f"listener {settings.mqtt_mtls_port} {settings.mqtt_host}", *certificates,
                      "require_certificate true", "use_identity_as_username true"]
        return lines

    def start(self) -> None:
        binary = which("mosquitto", "/usr/sbin")
        if binary is None:
            raise StackError("mosquitto not found")
        if not Path(DYNSEC_PLUGIN).exists():
            raise StackError(f"Mosquitto's dynamic-security plugin not found at {DYNSEC_PLUGIN}")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        accounts = self.write_accounts()
        config = self.state_dir / "mosquitto.conf"
        anonymous = "true" if self.settings.mqtt_allow_anonymous else "false"
        lines = [
            f"listener {self.settings.mqtt_port} {self.settings.mqtt_host}",
            f"persistence_location {self.state_dir}/",
            f"allow_anonymous {anonymous}",
            f"plugin {DYNSEC_PLUGIN}",
            f"plugin_opt_config_file {accounts}",
            *BROKER_OPTIONS,
        ]
        if self.settings.mqtt_tls:  # the production profile: no plain MQTT at all
            lines[1:1] = self._certificates()
        lines += self._tls_listeners()
        if os.geteuid() == 0:
            # Keep the files under .stack writable: a dev broker on loopback only.
            lines.append("user root")
        config.write_text("\n".join(lines) + "\n")
        self.spawn([binary, "-c", str(config)])
        wait_for("Mosquitto", self.answers, timeout=30)
