"""LoRaWAN connector: ChirpStack v4's MQTT integration to Kafka.

Subscribes to ``application/+/device/+/event/+`` (QoS 1, persistent session,
each message acknowledged only after Kafka took its records: the machinery of
:class:`connectors.mqtt.MqttConnector`) and translates each event:

- ``up``: a reading (protocol ``lorawan``) for ``telemetry.raw``, batched with others.
  device_id is the devEUI in lower-case hex, application_id comes from
  ``deviceInfo``, metrics from ``object`` (flattened) or ``data`` as Cayenne
  LPP, rssi/snr/gateway of the best gateway into metadata, message_id from
  ``deduplicationId`` (else devEUI + fCnt). ``object`` leaves that are not
  numbers are reported in one DLQ record, as the MQTT connector does; an
  uplink without any reading goes to the DLQ whole.
- ``join``, ``status``, ``ack``, ``txack``, ``log``, ``location``: a
  ``SystemEvent`` on ``system`` whose ``kind`` is the event type, keyed by the
  device. A ``status`` event with a battery level also becomes a reading: the
  battery as ``metadata.battery_level`` (so Redis and InfluxDB keep it as the
  device's ``battery_level``) and the event's link ``margin`` (dB) as the one
  metric, since a reading needs a metric and ``battery_level`` is reserved for
  the metadata field of that name.
- anything malformed or of another event type: a dead letter with the reason
  and the original bytes.

:func:`send_downlink` publishes a downlink in ChirpStack v4's ``command/down``
format.
"""

from __future__ import annotations

import logging
import math
import re
from datetime import datetime

import paho.mqtt.client as paho

from connectors.codecs.chirpstack import (
    EVENT_KINDS,
    ChirpstackEvent,
    downlink_payload,
    parse_event,
    parse_uplink,
)
from connectors.errors import DecodeError, PayloadError
from connectors.mqtt import Output, OutRecord, run
from connectors.payload import ParsedReading, RejectedField, dead_letter_for_error, derive_message_id
from connectors.reading import ReadingRow
from pipeline.settings import Settings, Topics
from schemas.errors import InvalidRecordError
from schemas.records import SystemEvent, Telemetry, TelemetryMetadata

__all__ = [
    "CLIENT_ID",
    "STAGE",
    "SUBSCRIPTION",
    "UnsupportedEventError",
    "downlink_topic",
    "main",
    "send_downlink",
    "translate",
]

logger = logging.getLogger(__name__)

CLIENT_ID = "webscada-connector-lorawan"
SUBSCRIPTION = "application/+/device/+/event/+"
STAGE = "connector.lorawan"
_TOPIC = re.compile(
    r"^application/(?P<app>[^/]+)/device/(?P<dev_eui>[^/]+)/event/(?P<event>[^/]+)$"
)
_DEV_EUI = re.compile(r"^[0-9a-fA-F]{16}$")
# The attributes that say what an event was about, for the event's message.
_SUMMARY = {
    "join": ("devAddr",),
    "status": ("batteryLevel", "margin", "externalPowerSource"),
    "ack": ("acknowledged", "queueItemId", "fCntDown"),
    "txack": ("queueItemId", "fCntDown", "gatewayId"),
    "log": ("level", "code", "description"),
    "location": ("location.latitude", "location.longitude", "location.source"),
}


class UnsupportedEventError(PayloadError):
    """A ChirpStack event type this connector does not handle (e.g. ``integration``)."""

    code = "unsupported_event"


def translate(topic: str, payload: bytes, received_at: datetime) -> list[Output]:
    """The readings and records one ChirpStack event becomes (never raises on bad input)."""
    match = _TOPIC.fullmatch(topic)
    if match is None:
        error = PayloadError(f"topic {topic!r} is not application/+/device/+/event/+")
        return [_dead(error, payload, topic, None)]
    dev_eui = match["dev_eui"].lower() if _DEV_EUI.fullmatch(match["dev_eui"]) else None
    event_type = match["event"]
    try:
        if event_type == "up":
            return _uplink(topic, payload, received_at)
        if event_type in EVENT_KINDS:
            return _event(event_type, topic, payload, received_at)
        error = UnsupportedEventError(
            f"ChirpStack event type {event_type!r} is not handled"
            f" (up, {', '.join(sorted(EVENT_KINDS))})"
        )
    except PayloadError as exc:
        error = exc
    except InvalidRecordError as exc:
        error = PayloadError(f"ChirpStack {event_type} event is not a valid record: {exc}")
    return [_dead(error, payload, topic, dev_eui)]


def _uplink(topic: str, payload: bytes, received_at: datetime) -> list[Output]:
    uplink = parse_uplink(payload)
    telemetry = None
    if uplink.metrics:
        telemetry = Telemetry(
            device_id=uplink.device_id, protocol="lorawan", ts=uplink.ts or received_at,
            received_at=received_at, message_id=uplink.message_id, metrics=uplink.metrics,
            application_id=uplink.application_id, metadata=uplink.metadata,
        )
    rejected = tuple(RejectedField(f"object.{name}", why) for name, why in uplink.ignored.items())
    if telemetry is None and not rejected:
        rejected = (RejectedField("data", "no reading: neither object nor Cayenne LPP data"),)
    row = None if telemetry is None else ReadingRow.of(telemetry)
    reading = ParsedReading(uplink.device_id, uplink.message_id, bytes(payload), row, rejected)
    records: list[Output] = []
    if row is not None:
        records.append(row)
    dead = reading.dead_letter(stage=STAGE, source_topic=f"mqtt:{topic}")
    if dead is not None:
        records.append(OutRecord(Topics.DLQ, dead.device_id, dead.encode(), reading.reject_code))
    return records


def _event(event_type: str, topic: str, payload: bytes, received_at: datetime) -> list[Output]:
    event = parse_event(event_type, payload)
    attributes = {**event.attributes, "application_id": event.application_id}
    system = SystemEvent(
        kind=event_type, source=STAGE, device_id=event.device_id, at=event.ts or received_at,
        message=_message(event), attributes=attributes,
    )
    records: list[Output] = [OutRecord(Topics.SYSTEM, event.device_id, system.encode())]
    battery = _battery_reading(event, payload, received_at)
    if battery is not None:
        records.append(ReadingRow.of(battery))
    return records


def _battery_reading(
    event: ChirpstackEvent, payload: bytes, received_at: datetime
) -> Telemetry | None:
    if event.kind != "status" or event.battery_level is None:
        return None
    try:
        margin = float(event.attributes.get("margin", "0"))  # absent: the Protobuf default 0
    except ValueError as exc:
        raise DecodeError(f"ChirpStack status margin {event.attributes['margin']!r}"
                          " is not a number") from exc
    if not math.isfinite(margin):
        raise DecodeError(f"ChirpStack status margin {margin} is not finite")
    dedup = event.attributes.get("deduplicationId")
    message_id = (f"{dedup}-status" if dedup
                  else derive_message_id(event.device_id, bytes(payload), None))
    return Telemetry(
        device_id=event.device_id, protocol="lorawan", ts=event.ts or received_at,
        received_at=received_at, message_id=message_id, metrics={"margin": margin},
        application_id=event.application_id, status=None,
        metadata=TelemetryMetadata(battery_level=event.battery_level),
    )


def _message(event: ChirpstackEvent) -> str:
    parts = [f"{name}={event.attributes[name]}" for name in _SUMMARY.get(event.kind, ())
             if name in event.attributes]
    return f"ChirpStack {event.kind} event" + (f": {', '.join(parts)}" if parts else "")


def _dead(error: PayloadError, payload: bytes, topic: str, device_id: str | None) -> OutRecord:
    dead = dead_letter_for_error(error, payload, device_id=device_id, stage=STAGE,
                                 source_topic=f"mqtt:{topic}")
    return OutRecord(Topics.DLQ, dead.device_id, dead.encode(), error.code)


def downlink_topic(application_id: str, dev_eui: str) -> str:
    """``application/{application_id}/device/{dev_eui}/command/down`` (devEUI lower-case)."""
    if not application_id or any(c in application_id for c in "/+#\0"):
        raise ValueError(f"application id {application_id!r} cannot be part of an MQTT topic")
    if not _DEV_EUI.fullmatch(dev_eui):
        raise ValueError(f"devEui {dev_eui!r} is not 16 hex digits")
    return f"application/{application_id}/device/{dev_eui.lower()}/command/down"


def send_downlink(
    client: paho.Client,
    *,
    application_id: str,
    dev_eui: str,
    data: bytes,
    f_port: int,
    confirmed: bool = True,
    id: str | None = None,
    qos: int = 1,
) -> paho.MQTTMessageInfo:
    """Queue a downlink with ChirpStack: publish it on the device's ``command/down`` topic.

    ``id`` (a UUID) becomes the queue item id that ChirpStack's later ``ack``
    and ``txack`` events carry as ``queueItemId``. The returned info tells when
    the broker took it (``is_published()``); raises ValueError on a bad id/port.
    """
    body = downlink_payload(dev_eui=dev_eui, data=data, f_port=f_port, confirmed=confirmed, id=id)
    return client.publish(downlink_topic(application_id, dev_eui), body, qos=qos)


def main(
    settings: Settings,
    *,
    client_id: str | None = None,
    host: str | None = None,
    port: int | None = None,
    metrics_port: int | None = None,
) -> int:
    """``webscada connect lorawan``: ChirpStack's MQTT integration (default: the settings' broker)."""
    return run(settings, protocol="lorawan", subscription=SUBSCRIPTION, translator=translate,
               client_id=client_id or CLIENT_ID, host=host, port=port, metrics_port=metrics_port)
