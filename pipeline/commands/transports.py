"""How a command reaches its device: one plan per protocol (pure; no I/O here).

- ``mqtt``: publish ``devices/{id}/commands``, QoS 1, JSON ``{"id", "name", "params"}``;
  ``gsm``: the same under ``gsm/``. The broker's PUBACK makes the command ``sent``.
- ``lorawan``: publish ChirpStack v4's ``application/{application_id}/device/{dev_eui}/command/down``
  with ``{"id", "devEui", "confirmed", "fPort", "data" | "object"}``; the downlink's queue
  item id is the command id, so ChirpStack's ``txack``/``ack`` events find it again.
  Params convention: ``data_hex`` or ``data_base64`` give the payload bytes; otherwise the
  command goes as ``object`` ``{"name", "params"}`` for the device profile's codec
  (``encodeDownlink``) to encode. ``f_port`` (1..223, default 10) and ``confirmed``
  (default true: only a confirmed downlink ever gets an ``ack``) are taken out of params.
- ``http`` and ``websocket``: nothing to publish; the command stays ``queued`` until the
  device polls (HTTP) or is connected (WebSocket), both served by the API.
- anything else (``bluetooth``, a deleted device): the command fails with the reason.

Devices must treat ``id`` as an idempotency key: after a crash the dispatcher may
publish a command a second time (docs/design.md, "Guarantees"; at most once per crash).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from schemas.records import Command

__all__ = [
    "DEFAULT_F_PORT",
    "Hold",
    "Publish",
    "Reject",
    "UndeliverableCommand",
    "chirpstack_downlink",
    "device_message",
    "plan",
]

DEFAULT_F_PORT = 10
_TOPIC_PREFIXES = {"mqtt": "devices", "gsm": "gsm"}
_POLLED = frozenset({"http", "websocket"})
_LORAWAN_CONTROL = frozenset({"data_hex", "data_base64", "f_port", "confirmed"})


class UndeliverableCommand(ValueError):
    """A command that no transport can carry; the message says why (it becomes ``failed``)."""


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish ``payload`` on MQTT ``topic`` at QoS 1; the PUBACK makes the command ``sent``."""

    topic: str
    payload: bytes
    transport: str


@dataclass(frozen=True, slots=True)
class Hold:
    """Leave the command ``queued``: the device fetches it (HTTP poll, WebSocket connect)."""

    transport: str


@dataclass(frozen=True, slots=True)
class Reject:
    """The command cannot be delivered: it becomes ``failed`` with ``detail``."""

    detail: str


Plan = Publish | Hold | Reject


def device_message(command: Command) -> dict[str, Any]:
    """What a device receives (MQTT, GSM, HTTP poll, WebSocket): ``{"id", "name", "params"}``."""
    return {"id": command.id, "name": command.name, "params": dict(command.params)}


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _lorawan_bytes(params: dict[str, Any]) -> bytes | None:
    if "data_hex" in params:
        raw = params["data_hex"]
        try:
            return bytes.fromhex(raw) if isinstance(raw, str) else _bad("data_hex", raw)
        except ValueError:
            _bad("data_hex", raw)
    if "data_base64" in params:
        raw = params["data_base64"]
        try:
            if isinstance(raw, str):
                return base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            pass
        _bad("data_base64", raw)
    return None


def _bad(name: str, value: object) -> bytes:
    kind = "hex" if name == "data_hex" else "base64"
    raise UndeliverableCommand(f"params.{name} {value!r:.60} is not a {kind} string")


def chirpstack_downlink(command: Command, application_id: str) -> Publish:
    """The ChirpStack v4 ``command/down`` publication of ``command`` (see the module docstring);
    raises :class:`UndeliverableCommand`. The device id must be the devEUI."""
    # The LoRaWAN connector owns the ChirpStack format; imported here so the API,
    # which uses this module too, does not load the connectors.
    from connectors.codecs.chirpstack import downlink_payload
    from connectors.lorawan import downlink_topic

    params = dict(command.params)
    f_port = params.get("f_port", DEFAULT_F_PORT)
    if isinstance(f_port, bool) or not isinstance(f_port, int) or not 1 <= f_port <= 223:
        raise UndeliverableCommand(f"params.f_port {f_port!r} is not an integer from 1 to 223")
    confirmed = params.get("confirmed", True)
    if not isinstance(confirmed, bool):
        raise UndeliverableCommand(f"params.confirmed {confirmed!r} is not true or false")
    data = _lorawan_bytes(params)
    dev_eui = command.device_id.lower()
    try:
        topic = downlink_topic(application_id, dev_eui)
        if data is not None:
            payload = downlink_payload(dev_eui=dev_eui, data=data, f_port=f_port,
                                       confirmed=confirmed, id=command.id)
        else:  # for the device profile's codec, which the connector's helper does not cover
            rest = {k: v for k, v in params.items() if k not in _LORAWAN_CONTROL}
            payload = _json_bytes({"id": command.id, "devEui": dev_eui, "confirmed": confirmed,
                                   "fPort": f_port,
                                   "object": {"name": command.name, "params": rest}})
    except ValueError as exc:
        raise UndeliverableCommand(f"LoRaWAN downlink to {command.device_id}: {exc}") from exc
    return Publish(topic, payload, "chirpstack")


def plan(command: Command, protocol: str | None, application_id: str | None) -> Plan:
    """How to deliver ``command`` to a device of ``protocol`` (None: the device is gone)."""
    if protocol is None:
        return Reject(f"device {command.device_id} does not exist")
    if protocol in _TOPIC_PREFIXES:
        topic = f"{_TOPIC_PREFIXES[protocol]}/{command.device_id}/commands"
        return Publish(topic, _json_bytes(device_message(command)), protocol)
    if protocol == "lorawan":
        if not application_id:
            return Reject(f"LoRaWAN device {command.device_id} has no application_id")
        try:
            return chirpstack_downlink(command, application_id)
        except UndeliverableCommand as exc:
            return Reject(str(exc))
    if protocol in _POLLED:
        return Hold(protocol)
    return Reject(f"no command transport for protocol {protocol!r}")
