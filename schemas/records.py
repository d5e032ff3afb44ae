"""Typed, immutable records that travel between modules and over Kafka.

Each record checks itself on construction and converts to and from the Avro
dict that :mod:`schemas.codec` encodes.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from schemas.codec import registry
from schemas.errors import InvalidRecordError

__all__ = [
    "APPLICATION_ID_PATTERN",
    "APPLICATION_ID_RULE",
    "COMMAND_NAME_PATTERN",
    "COMMAND_STATUSES",
    "DEVICE_ID_PATTERN",
    "METRIC_NAME_PATTERN",
    "PROTOCOLS",
    "RESERVED_METRICS",
    "Command",
    "CommandStatus",
    "DeadLetter",
    "Location",
    "SystemEvent",
    "Telemetry",
    "TelemetryMetadata",
    "check_device_id",
    "iso_utc",
    "utcnow",
]

DEVICE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
# No leading underscore: InfluxDB reserves such keys (_measurement, _field, _value, _time ...).
METRIC_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$")
# One rule for application ids wherever they appear (readings, the device registry, user
# grants, alarm rules, Socket.IO rooms): the device-id alphabet, up to 128 characters.
# An id with other characters could hold a device but never be granted to a user, and
# InfluxDB cannot keep control characters or backslashes in a tag value as sent.
APPLICATION_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
APPLICATION_ID_RULE = ("application_id must be 1 to 128 letters, digits, '_', '.', ':' or '-', "
                       "starting with a letter or digit")
PROTOCOLS = frozenset({"mqtt", "http", "websocket", "lorawan", "gsm", "bluetooth"})
# Metric names a store keeps for something else, so that every accepted metric is stored
# the same way in Redis, InfluxDB and the API. The one list: every ingest path and the
# validate agent refuse these.
RESERVED_METRICS = frozenset({
    # the Redis latest hash's own fields (and the reading's envelope)
    "ts", "protocol", "application_id", "status", "gateway_id",
    "signal_strength", "battery_level", "snr", "location_lat", "location_lon",
    # InfluxDB: tag keys of every point, and the key line protocol refuses as a field
    "device_id", "time",
})

_EMPTY: Mapping[str, str] = MappingProxyType({})


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso_utc(moment: datetime) -> str:
    """ISO-8601 UTC with fixed microsecond width, so strings sort as times do."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def check_device_id(device_id: object) -> str:
    if not isinstance(device_id, str) or not DEVICE_ID_PATTERN.fullmatch(device_id):
        raise InvalidRecordError(
            f"device_id {device_id!r} does not match {DEVICE_ID_PATTERN.pattern}"
        )
    return device_id


def _aware(moment: datetime, name: str) -> datetime:
    if not isinstance(moment, datetime):
        raise InvalidRecordError(f"{name} must be a datetime, got {type(moment).__name__}")
    if moment.tzinfo is None:
        raise InvalidRecordError(f"{name} {moment.isoformat()} has no time zone")
    return moment.astimezone(UTC)


def _optional_float(value: object, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRecordError(f"metadata {name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise InvalidRecordError(f"metadata {name} is not finite: {value!r}")
    return number


@dataclass(frozen=True, slots=True)
class Location:
    lat: float
    lon: float

    def __post_init__(self) -> None:
        if not (-90.0 <= self.lat <= 90.0) or not (-180.0 <= self.lon <= 180.0):
            raise InvalidRecordError(f"location ({self.lat}, {self.lon}) is out of range")


@dataclass(frozen=True, slots=True)
class TelemetryMetadata:
    signal_strength: float | None = None
    battery_level: float | None = None
    snr: float | None = None
    gateway_id: str | None = None
    location: Location | None = None
    extra: Mapping[str, str] = field(default_factory=lambda: _EMPTY)

    def __post_init__(self) -> None:
        for name in ("signal_strength", "battery_level", "snr"):
            object.__setattr__(self, name, _optional_float(getattr(self, name), name))
        object.__setattr__(self, "extra", MappingProxyType(dict(self.extra)))

    def to_avro(self) -> dict[str, Any]:
        return {
            "signal_strength": self.signal_strength,
            "battery_level": self.battery_level,
            "snr": self.snr,
            "gateway_id": self.gateway_id,
            "location": (
                {"lat": self.location.lat, "lon": self.location.lon} if self.location else None
            ),
            "extra": dict(self.extra),
        }

    @classmethod
    def from_avro(cls, data: Mapping[str, Any]) -> TelemetryMetadata:
        loc = data.get("location")
        return cls(
            signal_strength=data.get("signal_strength"),
            battery_level=data.get("battery_level"),
            snr=data.get("snr"),
            gateway_id=data.get("gateway_id"),
            location=Location(loc["lat"], loc["lon"]) if loc else None,
            extra=data.get("extra") or {},
        )


@dataclass(frozen=True, slots=True)
class Telemetry:
    """One normalised reading (Avro ``io.webscada.Telemetry``)."""

    device_id: str
    protocol: str
    ts: datetime
    received_at: datetime
    message_id: str
    metrics: Mapping[str, float]
    application_id: str | None = None
    status: str | None = None
    metadata: TelemetryMetadata = field(default_factory=TelemetryMetadata)

    SCHEMA = "io.webscada.Telemetry"

    def __post_init__(self) -> None:
        check_device_id(self.device_id)
        if self.protocol not in PROTOCOLS:
            raise InvalidRecordError(
                f"protocol {self.protocol!r} is not one of {', '.join(sorted(PROTOCOLS))}"
            )
        object.__setattr__(self, "ts", _aware(self.ts, "ts"))
        object.__setattr__(self, "received_at", _aware(self.received_at, "received_at"))
        if not self.message_id or len(self.message_id) > 128:
            raise InvalidRecordError("message_id must be 1 to 128 characters")
        if self.application_id is not None and not APPLICATION_ID_PATTERN.fullmatch(self.application_id):
            raise InvalidRecordError(APPLICATION_ID_RULE)
        metrics: dict[str, float] = {}
        for name, value in self.metrics.items():
            if not METRIC_NAME_PATTERN.fullmatch(name) or name in RESERVED_METRICS:
                raise InvalidRecordError(f"metric name {name!r} is not allowed")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidRecordError(f"metric {name} must be a number, got {value!r}")
            number = float(value)
            if not math.isfinite(number):
                raise InvalidRecordError(f"metric {name} is not finite: {value!r}")
            metrics[name] = number
        if not metrics:
            raise InvalidRecordError("reading has no metric")
        object.__setattr__(self, "metrics", MappingProxyType(metrics))

    def to_avro(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "protocol": self.protocol,
            "ts": self.ts,
            "received_at": self.received_at,
            "message_id": self.message_id,
            "application_id": self.application_id,
            "metrics": dict(self.metrics),
            "status": self.status,
            "metadata": self.metadata.to_avro(),
        }

    @classmethod
    def from_avro(cls, data: Mapping[str, Any]) -> Telemetry:
        try:
            return cls(
                device_id=data["device_id"],
                protocol=data["protocol"],
                ts=data["ts"],
                received_at=data["received_at"],
                message_id=data["message_id"],
                metrics=data["metrics"],
                application_id=data.get("application_id"),
                status=data.get("status"),
                metadata=TelemetryMetadata.from_avro(data.get("metadata") or {}),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise InvalidRecordError(f"Telemetry record is incomplete: {exc!r}") from exc

    def encode(self) -> bytes:
        return registry().encode(self.SCHEMA, self.to_avro())

    @classmethod
    def decode(cls, data: bytes) -> Telemetry:
        return cls.from_avro(registry().decode(data, cls.SCHEMA).record)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready view (times as ISO-8601 UTC), as the API streams it."""
        meta = self.metadata
        return {
            "device_id": self.device_id,
            "protocol": self.protocol,
            "ts": iso_utc(self.ts),
            "received_at": iso_utc(self.received_at),
            "message_id": self.message_id,
            "application_id": self.application_id,
            "metrics": dict(self.metrics),
            "status": self.status,
            "metadata": {
                k: v
                for k, v in {
                    "signal_strength": meta.signal_strength,
                    "battery_level": meta.battery_level,
                    "snr": meta.snr,
                    "gateway_id": meta.gateway_id,
                    "location": (
                        {"lat": meta.location.lat, "lon": meta.location.lon}
                        if meta.location
                        else None
                    ),
                    "extra": dict(meta.extra) or None,
                }.items()
                if v is not None
            },
        }


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected input (Avro ``io.webscada.DeadLetter``)."""

    reason: str
    stage: str
    payload: bytes
    source_topic: str
    device_id: str | None = None
    source_partition: int | None = None
    source_offset: int | None = None
    failed_at: datetime = field(default_factory=utcnow)
    details: Mapping[str, str] = field(default_factory=lambda: _EMPTY)

    SCHEMA = "io.webscada.DeadLetter"

    def __post_init__(self) -> None:
        if not self.reason:
            raise InvalidRecordError("a dead letter needs a reason")
        object.__setattr__(self, "failed_at", _aware(self.failed_at, "failed_at"))
        object.__setattr__(self, "details", MappingProxyType(dict(self.details)))

    def to_avro(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "stage": self.stage,
            "device_id": self.device_id,
            "payload": bytes(self.payload),
            "source_topic": self.source_topic,
            "source_partition": self.source_partition,
            "source_offset": self.source_offset,
            "failed_at": self.failed_at,
            "details": dict(self.details),
        }

    @classmethod
    def from_avro(cls, data: Mapping[str, Any]) -> DeadLetter:
        return cls(**{k: data[k] for k in data})

    def encode(self) -> bytes:
        return registry().encode(self.SCHEMA, self.to_avro())

    @classmethod
    def decode(cls, data: bytes) -> DeadLetter:
        return cls.from_avro(registry().decode(data, cls.SCHEMA).record)


@dataclass(frozen=True, slots=True)
class SystemEvent:
    """A component or device lifecycle event (Avro ``io.webscada.SystemEvent``)."""

    kind: str
    source: str
    device_id: str | None = None
    at: datetime = field(default_factory=utcnow)
    message: str = ""
    attributes: Mapping[str, str] = field(default_factory=lambda: _EMPTY)

    SCHEMA = "io.webscada.SystemEvent"

    def __post_init__(self) -> None:
        object.__setattr__(self, "at", _aware(self.at, "at"))
        object.__setattr__(self, "attributes", MappingProxyType(dict(self.attributes)))

    def to_avro(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "source": self.source,
            "device_id": self.device_id,
            "at": self.at,
            "message": self.message,
            "attributes": dict(self.attributes),
        }

    def encode(self) -> bytes:
        return registry().encode(self.SCHEMA, self.to_avro())


COMMAND_NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_.:-]{0,63}$")
COMMAND_STATUSES = ("queued", "sent", "delivered", "acked", "failed", "expired")
_MAX_COMMAND_ID = 64
_MAX_DETAIL = 1000


def _command_id(value: object) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_COMMAND_ID:
        raise InvalidRecordError(f"command id {value!r} must be 1 to {_MAX_COMMAND_ID} characters")
    return value


@dataclass(frozen=True, slots=True)
class Command:
    """A control command to one device (Avro ``io.webscada.Command``); ``params`` is a JSON object."""

    id: str
    device_id: str
    name: str
    params: Mapping[str, Any]
    created_at: datetime
    expires_at: datetime
    requested_by: str | None = None

    SCHEMA = "io.webscada.Command"

    def __post_init__(self) -> None:
        _command_id(self.id)
        check_device_id(self.device_id)
        if not isinstance(self.name, str) or not COMMAND_NAME_PATTERN.fullmatch(self.name):
            raise InvalidRecordError(
                f"command name {self.name!r} does not match {COMMAND_NAME_PATTERN.pattern}"
            )
        if not isinstance(self.params, Mapping):
            raise InvalidRecordError(f"command params must be a JSON object, got {self.params!r}")
        try:
            json.dumps(dict(self.params), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidRecordError(f"command params are not JSON: {exc}") from exc
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))
        object.__setattr__(self, "created_at", _aware(self.created_at, "created_at"))
        object.__setattr__(self, "expires_at", _aware(self.expires_at, "expires_at"))
        if self.expires_at < self.created_at:
            raise InvalidRecordError("command expires_at is before its created_at")

    @property
    def params_json(self) -> str:
        return json.dumps(dict(self.params), separators=(",", ":"), sort_keys=True)

    def to_avro(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "device_id": self.device_id,
            "name": self.name,
            "params_json": self.params_json,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "requested_by": self.requested_by,
        }

    @classmethod
    def from_avro(cls, data: Mapping[str, Any]) -> Command:
        try:
            params = json.loads(data["params_json"])
            return cls(id=data["id"], device_id=data["device_id"], name=data["name"],
                       params=params, created_at=data["created_at"],
                       expires_at=data["expires_at"], requested_by=data.get("requested_by"))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidRecordError(f"Command record is invalid: {exc!r}") from exc

    def encode(self) -> bytes:
        return registry().encode(self.SCHEMA, self.to_avro())

    @classmethod
    def decode(cls, data: bytes) -> Command:
        return cls.from_avro(registry().decode(data, cls.SCHEMA).record)


@dataclass(frozen=True, slots=True)
class CommandStatus:
    """One step of a command's lifecycle (Avro ``io.webscada.CommandStatus``)."""

    command_id: str
    device_id: str
    status: str
    at: datetime = field(default_factory=utcnow)
    detail: str = ""

    SCHEMA = "io.webscada.CommandStatus"

    def __post_init__(self) -> None:
        _command_id(self.command_id)
        check_device_id(self.device_id)
        if self.status not in COMMAND_STATUSES:
            raise InvalidRecordError(
                f"command status {self.status!r} is not one of {', '.join(COMMAND_STATUSES)}"
            )
        object.__setattr__(self, "at", _aware(self.at, "at"))
        if not isinstance(self.detail, str):
            raise InvalidRecordError(f"command status detail must be text, got {self.detail!r}")
        object.__setattr__(self, "detail", self.detail[:_MAX_DETAIL])

    def to_avro(self) -> dict[str, Any]:
        return {"command_id": self.command_id, "device_id": self.device_id,
                "status": self.status, "at": self.at, "detail": self.detail}

    @classmethod
    def from_avro(cls, data: Mapping[str, Any]) -> CommandStatus:
        try:
            return cls(command_id=data["command_id"], device_id=data["device_id"],
                       status=data["status"], at=data["at"], detail=data.get("detail") or "")
        except (KeyError, TypeError) as exc:
            raise InvalidRecordError(f"CommandStatus record is incomplete: {exc!r}") from exc

    def encode(self) -> bytes:
        return registry().encode(self.SCHEMA, self.to_avro())

    @classmethod
    def decode(cls, data: bytes) -> CommandStatus:
        return cls.from_avro(registry().decode(data, cls.SCHEMA).record)
