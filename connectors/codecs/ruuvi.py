"""RuuviTag data format 5 (RAWv2): manufacturer data after company id 0x0499.

24 bytes, big-endian, starting with the format byte 5. A field holding its
"not available" value (the largest unsigned, the smallest signed, a MAC of
all ones) is left out. Metrics: ``temperature`` (°C), ``humidity`` (%),
``pressure`` (hPa), ``acceleration_x|y|z`` (g), ``battery_voltage`` (V),
``tx_power`` (dBm), ``movement_counter``, ``measurement_sequence``; the MAC
goes to the metadata.
"""

from __future__ import annotations

from dataclasses import dataclass

from connectors.codecs._types import Decoded, MetadataValue, read_int, scaled
from connectors.errors import DecodeError

__all__ = ["RUUVI_COMPANY_ID", "RUUVI_FIELDS", "RuuviField", "decode_ruuvi"]

RUUVI_COMPANY_ID = 0x0499
_FORMAT = 5
_LENGTH = 24
_MAC_AT = 18


@dataclass(frozen=True, slots=True)
class RuuviField:
    """``value = (raw + offset) * numerator / denominator``, unless raw is ``missing``."""

    name: str
    at: int
    size: int
    signed: bool
    missing: int
    numerator: int = 1
    denominator: int = 1
    offset: int = 0
    shift: int = 0  # for the packed power-info bits: raw >> shift & mask
    mask: int = 0


RUUVI_FIELDS: tuple[RuuviField, ...] = (
    RuuviField("temperature", 1, 2, True, -0x8000, 5, 1000),
    RuuviField("humidity", 3, 2, False, 0xFFFF, 25, 10_000),
    RuuviField("pressure", 5, 2, False, 0xFFFF, 1, 100, offset=50_000),
    RuuviField("acceleration_x", 7, 2, True, -0x8000, 1, 1000),
    RuuviField("acceleration_y", 9, 2, True, -0x8000, 1, 1000),
    RuuviField("acceleration_z", 11, 2, True, -0x8000, 1, 1000),
    # power info: 11 bits of battery mV above 1600, then 5 bits of 2 dBm steps above -40
    RuuviField("battery_voltage", 13, 2, False, 0x7FF, 1, 1000, offset=1600, shift=5, mask=0x7FF),
    RuuviField("tx_power", 13, 2, False, 0x1F, 2, 1, offset=-20, mask=0x1F),
    RuuviField("movement_counter", 15, 1, False, 0xFF),
    RuuviField("measurement_sequence", 16, 2, False, 0xFFFF),
)


def decode_ruuvi(data: bytes) -> Decoded:
    """Decode RuuviTag data format 5; :class:`DecodeError` names the problem and the byte."""
    data = bytes(data)
    if not data:
        raise DecodeError("RuuviTag data is empty", offset=0)
    if data[0] != _FORMAT:
        raise DecodeError(
            f"RuuviTag data format {data[0]} at byte 0 is not supported (only format 5)",
            offset=0,
        )
    if len(data) != _LENGTH:
        raise DecodeError(
            f"RuuviTag data format 5 is {_LENGTH} bytes, got {len(data)}:"
            f" {'missing bytes from' if len(data) < _LENGTH else 'extra bytes at'}"
            f" byte {min(len(data), _LENGTH)}",
            offset=min(len(data), _LENGTH),
        )
    metrics: dict[str, float] = {}
    for spec in RUUVI_FIELDS:
        raw = read_int(data, spec.at, spec.size, signed=spec.signed, little_endian=False,
                       what=f"RuuviTag {spec.name}")
        if spec.mask:
            raw = raw >> spec.shift & spec.mask
        if raw == spec.missing:
            continue
        metrics[spec.name] = scaled(raw + spec.offset, spec.numerator, spec.denominator)
    metadata: dict[str, MetadataValue] = {"data_format": _FORMAT}
    mac = data[_MAC_AT:]
    if mac != b"\xff" * 6:
        metadata["mac"] = ":".join(f"{b:02X}" for b in mac)
    return Decoded(metrics, metadata)
