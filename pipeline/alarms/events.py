"""The ``AlarmEvent`` record (``schemas/alarm_event.avsc``) published on topic ``alarms``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from schemas.codec import registry
from schemas.errors import InvalidRecordError
from schemas.records import check_device_id, iso_utc

__all__ = ["EVENTS", "AlarmEvent"]

EVENTS = ("raised", "acknowledged", "cleared", "shelved", "unshelved")


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    """One transition of one alarm (Avro ``io.webscada.AlarmEvent``), keyed by device id."""

    alarm_id: str
    rule_id: str
    device_id: str
    event: str
    state: str
    severity: str
    at: datetime
    metric: str | None = None
    value: float | None = None
    by: str | None = None
    message: str = ""

    SCHEMA = "io.webscada.AlarmEvent"

    def __post_init__(self) -> None:
        check_device_id(self.device_id)
        if self.event not in EVENTS:
            raise InvalidRecordError(f"alarm event {self.event!r} is not one of {', '.join(EVENTS)}")
        if self.at.tzinfo is None:
            raise InvalidRecordError(f"alarm event time {self.at.isoformat()} has no time zone")
        object.__setattr__(self, "at", self.at.astimezone(UTC))

    def to_avro(self) -> dict[str, Any]:
        return {
            "alarm_id": self.alarm_id,
            "rule_id": self.rule_id,
            "device_id": self.device_id,
            "event": self.event,
            "state": self.state,
            "severity": self.severity,
            "metric": self.metric,
            "value": self.value,
            "at": self.at,
            "by": self.by,
            "message": self.message,
        }

    @classmethod
    def from_avro(cls, data: Mapping[str, Any]) -> AlarmEvent:
        return cls(**{k: data[k] for k in data})

    def encode(self) -> bytes:
        return registry().encode(self.SCHEMA, self.to_avro())

    @classmethod
    def decode(cls, data: bytes) -> AlarmEvent:
        return cls.from_avro(registry().decode(data, cls.SCHEMA).record)

    def to_json(self) -> dict[str, Any]:
        return {**self.to_avro(), "at": iso_utc(self.at)}
