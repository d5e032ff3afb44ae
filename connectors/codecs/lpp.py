"""Cayenne Low Power Payload: ``channel, type, value`` triples, big-endian.

The standard IPSO-derived types of the myDevices reference plus the extended
types of the widely used extended Cayenne LPP libraries (generic sensor,
voltage, current, frequency, percentage, altitude, load, concentration, power,
distance, energy, direction, unix time, colour, switch). ChirpStack v4's own
Cayenne codec implements the standard set; the extended ones are what devices
built with the extended Arduino/C libraries send.

Metric names follow The Things Stack's Cayenne formatter, flattened with ``_``:
the lower-case type name, the channel, then the axis or part for multi-value
types: ``temperature_3``, ``accelerometer_6_x``, ``gps_1_latitude``.
"""

from __future__ import annotations

from dataclasses import dataclass

from connectors.codecs._types import Decoded, read_int, scaled
from connectors.errors import DecodeError

__all__ = ["LPP_TYPES", "LppField", "LppType", "decode_lpp"]


@dataclass(frozen=True, slots=True)
class LppField:
    """One value of a type: name suffix ("" for single-value types), size, sign, divisor."""

    suffix: str
    size: int
    signed: bool
    divisor: int = 1


@dataclass(frozen=True, slots=True)
class LppType:
    name: str
    fields: tuple[LppField, ...]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.fields)


def _one(name: str, size: int, *, signed: bool = False, divisor: int = 1) -> LppType:
    return LppType(name, (LppField("", size, signed, divisor),))


def _axes(name: str, divisor: int) -> LppType:
    return LppType(name, tuple(LppField(axis, 2, True, divisor) for axis in ("x", "y", "z")))


LPP_TYPES: dict[int, LppType] = {
    # standard types (myDevices reference, IPSO object id - 3200)
    0: _one("digital_in", 1),
    1: _one("digital_out", 1),
    2: _one("analog_in", 2, signed=True, divisor=100),
    3: _one("analog_out", 2, signed=True, divisor=100),
    101: _one("luminosity", 2),
    102: _one("presence", 1),
    103: _one("temperature", 2, signed=True, divisor=10),
    104: _one("relative_humidity", 1, divisor=2),
    113: _axes("accelerometer", 1000),
    115: _one("barometric_pressure", 2, divisor=10),
    134: _axes("gyrometer", 100),
    136: LppType("gps", (
        LppField("latitude", 3, True, 10_000),
        LppField("longitude", 3, True, 10_000),
        LppField("altitude", 3, True, 100),
    )),
    # extended types
    100: _one("generic_sensor", 4),
    116: _one("voltage", 2, divisor=100),
    117: _one("current", 2, divisor=1000),
    118: _one("frequency", 4),
    120: _one("percentage", 1),
    121: _one("altitude", 2, signed=True),
    122: _one("load", 3, signed=True, divisor=1000),
    125: _one("concentration", 2),
    128: _one("power", 2),
    130: _one("distance", 4, divisor=1000),
    131: _one("energy", 4, divisor=1000),
    132: _one("direction", 2),
    133: _one("unix_time", 4),
    135: LppType("colour", tuple(LppField(part, 1, False) for part in ("r", "g", "b"))),
    142: _one("switch", 1),
}


def decode_lpp(data: bytes) -> Decoded:
    """Decode a Cayenne LPP payload; :class:`DecodeError` says what is wrong and at which byte."""
    data = bytes(data)
    if not data:
        raise DecodeError("Cayenne LPP payload is empty", offset=0)
    metrics: dict[str, float] = {}
    offset = 0
    while offset < len(data):
        channel = data[offset]
        if offset + 1 >= len(data):
            raise DecodeError(
                f"Cayenne LPP channel {channel} at byte {offset} has no type byte", offset=offset
            )
        type_id = data[offset + 1]
        lpp_type = LPP_TYPES.get(type_id)
        if lpp_type is None:
            raise DecodeError(
                f"Cayenne LPP type 0x{type_id:02x} unknown at byte {offset + 1}", offset=offset + 1
            )
        at = offset + 2
        if at + lpp_type.size > len(data):
            raise DecodeError(
                f"Cayenne LPP {lpp_type.name} on channel {channel} needs {lpp_type.size} bytes"
                f" at byte {at}, only {len(data) - at} left",
                offset=at,
            )
        for part in lpp_type.fields:
            name = f"{lpp_type.name}_{channel}" + (f"_{part.suffix}" if part.suffix else "")
            if name in metrics:
                raise DecodeError(
                    f"Cayenne LPP {lpp_type.name} on channel {channel} repeated at byte {offset}",
                    offset=offset,
                )
            raw = read_int(data, at, part.size, signed=part.signed, little_endian=False, what=name)
            metrics[name] = scaled(raw, 1, part.divisor)
            at += part.size
        offset = at
    return Decoded(metrics)
