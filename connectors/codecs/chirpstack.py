"""ChirpStack v4 MQTT-integration JSON: uplink and other device events in, downlinks out.

Events arrive on ``application/{application_id}/device/{dev_eui}/event/{type}``
in the Protocol Buffers JSON mapping, which leaves out fields holding their
default value (an ``fCnt`` of 0 is simply absent).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

from connectors._values import as_number, describe, parse_timestamp
from connectors.codecs.lpp import decode_lpp
from connectors.errors import DecodeError, PayloadError
from connectors.payload import derive_message_id, load_object
from schemas.errors import InvalidRecordError
from schemas.records import METRIC_NAME_PATTERN, RESERVED_METRICS, Location, TelemetryMetadata

__all__ = [
    "EVENT_KINDS",
    "ChirpstackEvent",
    "Uplink",
    "downlink_payload",
    "parse_event",
    "parse_uplink",
]

EVENT_KINDS = frozenset({"join", "status", "ack", "txack", "log", "location"})
"""The event types besides ``up`` that :func:`parse_event` reads."""

_DEV_EUI = re.compile(r"^[0-9a-fA-F]{16}$")
_MAX_ID_CHARS = 128
_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Uplink:
    """One ``up`` event, its readings decoded.

    ``metrics`` come from ``object`` (flattened) when ChirpStack decoded the
    payload, else from ``data`` as Cayenne LPP. ``ignored`` names the
    ``object`` leaves that did not become metrics, and why. ``f_cnt`` and
    ``f_port`` are 0 when the JSON leaves them out (its default value).
    """

    device_id: str
    application_id: str
    message_id: str
    ts: datetime | None
    f_cnt: int | None
    f_port: int | None
    metrics: Mapping[str, float]
    metadata: TelemetryMetadata
    ignored: Mapping[str, str] = field(default_factory=lambda: _EMPTY)

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", MappingProxyType(dict(self.metrics)))
        object.__setattr__(self, "ignored", MappingProxyType(dict(self.ignored)))


@dataclass(frozen=True, slots=True)
class ChirpstackEvent:
    """A ``join``/``status``/``ack``/``txack``/``log``/``location`` event.

    ``attributes`` are the event's own fields (``deviceInfo`` left out, nested
    keys joined with ``.``) as strings, plus ``deviceName``.
    """

    device_id: str
    application_id: str
    kind: str
    ts: datetime | None
    attributes: Mapping[str, str]
    battery_level: float | None = None
    location: Location | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "attributes", MappingProxyType(dict(self.attributes)))


def parse_uplink(payload: bytes) -> Uplink:
    """Parse an ``up`` event; :class:`DecodeError` names the bad field or byte."""
    event = _load(payload)
    device_id, application_id, device_name = _device(event)
    # The Protobuf JSON mapping leaves a 0 out: an absent fCnt or fPort is 0.
    f_cnt = _optional_int(event, "fCnt")
    f_port = _optional_int(event, "fPort")
    message_id = _text(event, "deduplicationId")
    if message_id is None:
        message_id = (
            f"{device_id}-{f_cnt}" if f_cnt is not None
            else derive_message_id(device_id, bytes(payload), None)
        )
    f_cnt, f_port = f_cnt or 0, f_port or 0
    ts = _time(event)
    ignored: dict[str, str] = {}
    if "object" in event and event["object"] is not None:
        if not isinstance(event["object"], dict):
            raise DecodeError(f"ChirpStack uplink object is {describe(event['object'])}, not an object")
        metrics = _flatten_object(event["object"], ignored)
    else:
        metrics = _lpp_metrics(event)
    extra = {"f_cnt": f_cnt, "f_port": f_port, "dev_addr": _text(event, "devAddr"),
             "device_name": device_name}
    rssi, snr, gateway = _best_rx(event.get("rxInfo"))
    metadata = TelemetryMetadata(
        signal_strength=rssi, snr=snr, gateway_id=gateway,
        extra={k: str(v) for k, v in extra.items() if v is not None},
    )
    return Uplink(device_id, application_id, message_id, ts, f_cnt, f_port, metrics, metadata,
                  ignored)


def parse_event(event_type: str, payload: bytes) -> ChirpstackEvent:
    """Parse one of :data:`EVENT_KINDS`; :class:`DecodeError` names the bad field or byte."""
    if event_type not in EVENT_KINDS:
        raise DecodeError(
            f"ChirpStack event type {event_type!r} is not one of {', '.join(sorted(EVENT_KINDS))}"
        )
    event = _load(payload)
    device_id, application_id, device_name = _device(event)
    attributes = {k: v for k, v in _strings(event).items() if not k.startswith("deviceInfo.")}
    if device_name is not None:
        attributes["deviceName"] = device_name
    battery = None
    if event_type == "status" and not (
        event.get("batteryLevelUnavailable") is True or event.get("externalPowerSource") is True
    ):
        battery = _optional_number(event, "batteryLevel")
        if battery is not None and not 0 <= battery <= 100:
            raise DecodeError(f"ChirpStack status batteryLevel {battery} is not a percentage")
    location = None
    if event_type == "location":
        location = _location(event.get("location"))
    return ChirpstackEvent(device_id, application_id, event_type, _time(event), attributes,
                           battery, location)


def downlink_payload(
    *, dev_eui: str, data: bytes, f_port: int, confirmed: bool = True, id: str | None = None
) -> bytes:
    """The JSON to publish on ``application/{app}/device/{dev_eui}/command/down``."""
    if not _DEV_EUI.fullmatch(dev_eui):
        raise ValueError(f"devEui {dev_eui!r} is not 16 hex digits")
    if not 1 <= f_port <= 223:
        raise ValueError(f"fPort {f_port} is not an application port (1 to 223)")
    body: dict[str, Any] = {
        "devEui": dev_eui.lower(),
        "confirmed": confirmed,
        "fPort": f_port,
        "data": base64.b64encode(bytes(data)).decode("ascii"),
    }
    if id is not None:
        body["id"] = id
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


# parts


def _load(payload: bytes) -> dict[str, Any]:
    try:
        return load_object(payload)
    except PayloadError as exc:
        raise DecodeError(f"ChirpStack event: {exc}") from exc


def _device(event: Mapping[str, Any]) -> tuple[str, str, str | None]:
    info = event.get("deviceInfo")
    if not isinstance(info, dict):
        raise DecodeError(f"ChirpStack event deviceInfo is {describe(info)}, not an object")
    dev_eui = info.get("devEui")
    if not isinstance(dev_eui, str) or not _DEV_EUI.fullmatch(dev_eui):
        raise DecodeError(f"ChirpStack event deviceInfo.devEui {describe(dev_eui)} is not 16 hex digits")
    application_id = _text(info, "applicationId", "deviceInfo.")
    if application_id is None:
        raise DecodeError("ChirpStack event deviceInfo.applicationId is missing")
    return dev_eui.lower(), application_id, _text(info, "deviceName", "deviceInfo.")


def _text(obj: Mapping[str, Any], key: str, path: str = "") -> str | None:
    value = obj.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > _MAX_ID_CHARS:
        raise DecodeError(
            f"ChirpStack event {path}{key} is {describe(value)}, not a string of 1 to"
            f" {_MAX_ID_CHARS} characters"
        )
    return value


def _optional_int(obj: Mapping[str, Any], key: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DecodeError(f"ChirpStack event {key} is {describe(value)}, not a counter")
    return value


def _optional_number(obj: Mapping[str, Any], key: str) -> float | None:
    if obj.get(key) is None:
        return None
    number, why = as_number(obj[key], allow_bool=False)
    if number is None:
        raise DecodeError(f"ChirpStack event {key}: {why}")
    return number


def _time(event: Mapping[str, Any]) -> datetime | None:
    if event.get("time") is None:
        return None
    try:
        return parse_timestamp(event["time"])
    except PayloadError as exc:
        raise DecodeError(f"ChirpStack event time: {exc}") from exc


def _lpp_metrics(event: Mapping[str, Any]) -> dict[str, float]:
    data = event.get("data")
    if data is None or data == "":
        return {}
    if not isinstance(data, str):
        raise DecodeError(f"ChirpStack uplink data is {describe(data)}, not base64")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DecodeError(f"ChirpStack uplink data is not base64: {exc}") from exc
    try:
        return dict(decode_lpp(raw).metrics)
    except DecodeError as exc:
        raise DecodeError(
            f"ChirpStack uplink data is not Cayenne LPP: {exc}", offset=exc.offset
        ) from exc


def _flatten_object(obj: Mapping[str, Any], ignored: dict[str, str]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    stack: list[tuple[str, Any]] = [(str(k), v) for k, v in list(obj.items())[::-1]]
    while stack:
        name, value = stack.pop()
        if isinstance(value, dict):
            stack.extend((f"{name}_{k}", v) for k, v in list(value.items())[::-1])
            continue
        if value is None or isinstance(value, str | list):
            ignored[name] = f"{describe(value)} is not a number"
            continue
        number, why = as_number(value, allow_bool=True)
        if number is None:
            ignored[name] = why
        elif name in RESERVED_METRICS or not METRIC_NAME_PATTERN.fullmatch(name):
            ignored[name] = f"{name!r} is not an allowed metric name"
        elif name in metrics:
            ignored[name] = "a second value for this name after flattening"
        else:
            metrics[name] = number
    return metrics


def _best_rx(rx_info: object) -> tuple[float | None, float | None, str | None]:
    """rssi, snr and gateway id of the gateway that heard the uplink best (highest rssi, then snr)."""
    if rx_info is None:
        return None, None, None
    if not isinstance(rx_info, list):
        raise DecodeError(f"ChirpStack uplink rxInfo is {describe(rx_info)}, not an array")
    best: tuple[float, float, str | None] | None = None
    for index, rx in enumerate(rx_info):
        if not isinstance(rx, dict):
            raise DecodeError(f"ChirpStack uplink rxInfo[{index}] is {describe(rx)}, not an object")
        rssi = _optional_number(rx, "rssi")
        if rssi is None:
            continue
        snr = _optional_number(rx, "snr")
        gateway = _text(rx, "gatewayId", f"rxInfo[{index}].")
        candidate = (rssi, snr if snr is not None else float("-inf"), gateway)
        if best is None or candidate[:2] > best[:2]:
            best = candidate
    if best is None:
        return None, None, None
    snr_best = None if best[1] == float("-inf") else best[1]
    return best[0], snr_best, best[2]


def _location(value: object) -> Location:
    if not isinstance(value, dict):
        raise DecodeError(f"ChirpStack location event location is {describe(value)}, not an object")
    lat = _optional_number(value, "latitude")
    lon = _optional_number(value, "longitude")
    if lat is None or lon is None:
        raise DecodeError("ChirpStack location event needs location.latitude and location.longitude")
    try:
        return Location(lat, lon)
    except InvalidRecordError as exc:
        raise DecodeError(f"ChirpStack location event: {exc}") from exc


def _strings(event: Mapping[str, Any]) -> dict[str, str]:
    """Every scalar leaf of ``event`` as dotted path → string; arrays as JSON text."""
    out: dict[str, str] = {}
    stack: list[tuple[str, Any]] = [(str(k), v) for k, v in event.items()]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            stack.extend((f"{path}.{k}", v) for k, v in value.items())
        elif isinstance(value, str):
            out[path] = value
        elif value is not None:
            try:
                out[path] = json.dumps(value)
            except (RecursionError, ValueError) as exc:
                raise DecodeError(f"ChirpStack event {path} cannot be kept: {exc!r}") from exc
    return dict(sorted(out.items()))
