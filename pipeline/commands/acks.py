"""Device answers to commands, as they arrive over MQTT, turned into ``CommandStatus`` records.

- MQTT devices publish ``devices/{id}/commands/ack`` and GSM devices
  ``gsm/{id}/commands/ack``, JSON ``{"id", "status", "detail"}`` with status
  ``delivered`` (received), ``acked`` (carried out) or ``failed``.
- ChirpStack v4 publishes ``application/{app}/device/{dev_eui}/event/txack`` when a
  gateway took the downlink for transmission (→ ``delivered``) and ``event/ack`` when
  the device confirmed a confirmed downlink (``"acknowledged": true`` → ``acked``,
  false or timed out → ``failed``); ``queueItemId`` is the command id.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pipeline.commands.lifecycle import DEVICE_ACK_STATUSES
from schemas.errors import InvalidRecordError
from schemas.records import CommandStatus

__all__ = ["ACK_TOPICS", "AckError", "parse_ack"]

# Topic filters the dispatcher subscribes to (each as a shared subscription).
ACK_TOPICS = (
    "devices/+/commands/ack",
    "gsm/+/commands/ack",
    "application/+/device/+/event/ack",
    "application/+/device/+/event/txack",
)
_MAX_DETAIL = 1000


class AckError(ValueError):
    """An ack message that cannot become a status; the message names what is wrong."""


def _json_object(payload: bytes) -> dict[str, Any]:
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise AckError(f"ack payload is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise AckError(f"ack payload is not a JSON object: {payload[:80]!r}")
    return body


def _status(command_id: object, device_id: str, status: str, at: datetime,
            detail: str) -> CommandStatus:
    if not isinstance(command_id, str) or not command_id:
        raise AckError(f"ack has no command id (got {command_id!r:.80})")
    try:
        return CommandStatus(command_id, device_id, status, at, detail[:_MAX_DETAIL])
    except InvalidRecordError as exc:
        raise AckError(str(exc)) from exc


def _device_ack(device_id: str, body: dict[str, Any], at: datetime) -> CommandStatus:
    status = body.get("status")
    if status not in DEVICE_ACK_STATUSES:
        raise AckError(f"ack status {status!r:.40} is not one of "
                       f"{', '.join(sorted(DEVICE_ACK_STATUSES))}")
    detail = body.get("detail")
    text = "" if detail is None else detail if isinstance(detail, str) else json.dumps(detail)
    return _status(body.get("id"), device_id, str(status), at, text)


def _chirpstack(event: str, dev_eui: str, body: dict[str, Any], at: datetime) -> CommandStatus:
    item = body.get("queueItemId")
    if event == "txack":
        gateway = body.get("gatewayId") or "?"
        return _status(item, dev_eui, "delivered", at, f"LoRaWAN txack by gateway {gateway}")
    if body.get("acknowledged") is True:
        return _status(item, dev_eui, "acked", at, "LoRaWAN confirmed downlink acknowledged")
    return _status(item, dev_eui, "failed", at, "LoRaWAN downlink not acknowledged by the device")


def parse_ack(topic: str, payload: bytes, at: datetime) -> CommandStatus:
    """The status an ack message on ``topic`` reports. Raises :class:`AckError`."""
    parts = topic.split("/")
    if len(parts) == 4 and parts[0] in ("devices", "gsm") and parts[2:] == ["commands", "ack"]:
        return _device_ack(parts[1], _json_object(payload), at)
    if (len(parts) == 6 and parts[0] == "application" and parts[2] == "device"
            and parts[4] == "event" and parts[5] in ("ack", "txack")):
        return _chirpstack(parts[5], parts[3].lower(), _json_object(payload), at)
    raise AckError(f"topic {topic!r} is not a command ack topic")
