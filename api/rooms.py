"""Socket.IO rooms: ``device:{id}``, ``application:{id}``, ``alarms`` and ``system``."""

from __future__ import annotations

from dataclasses import dataclass

from schemas.records import APPLICATION_ID_PATTERN, DEVICE_ID_PATTERN

__all__ = ["ROOM_KINDS", "Room", "RoomError", "parse_room"]

# Kinds that name one thing, and the kinds that are a single room on their own.
_SCOPED = ("device", "application")
_SINGLE = ("alarms", "system")
ROOM_KINDS = _SCOPED + _SINGLE


class RoomError(ValueError):
    """A subscription request that does not name a valid room."""


@dataclass(frozen=True, slots=True)
class Room:
    kind: str
    ident: str | None = None

    def __post_init__(self) -> None:
        if self.kind in _SINGLE:
            if self.ident is not None:
                raise RoomError(f"room {self.kind!r} takes no id")
        elif self.kind in _SCOPED:
            # Application ids share the device-id alphabet: both end up in keys and tags.
            pattern = DEVICE_ID_PATTERN if self.kind == "device" else APPLICATION_ID_PATTERN
            if self.ident is None or not pattern.fullmatch(self.ident):
                raise RoomError(f"{self.kind} id {self.ident!r} does not match {pattern.pattern}")
        else:
            raise RoomError(
                f"unknown room kind {self.kind!r}; expected one of {', '.join(ROOM_KINDS)}"
            )

    def __str__(self) -> str:
        return self.kind if self.ident is None else f"{self.kind}:{self.ident}"

    @classmethod
    def device(cls, device_id: str) -> Room:
        return cls("device", device_id)

    @classmethod
    def application(cls, application_id: str) -> Room:
        return cls("application", application_id)


def parse_room(data: object) -> Room:
    """The room of a ``subscribe``/``unsubscribe`` payload: ``{"room": "device:x"}`` or a string."""
    raw = data.get("room") if isinstance(data, dict) else data
    if not isinstance(raw, str) or not raw:
        raise RoomError('expected {"room": "<kind>[:<id>]"} or a room name string')
    kind, sep, ident = raw.partition(":")
    return Room(kind, ident if sep else None)
