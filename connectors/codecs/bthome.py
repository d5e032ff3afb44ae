"""BTHome v2 service data (UUID 0xFCD2), optionally AES-CCM encrypted (bthome.io).

Input is the service data after the UUID: the device-information byte, then
(when its bit 1 is set) the advertiser's MAC address, then objects, each an
object id and a little-endian value. Encrypted data ends with a 4-byte counter
and a 4-byte MIC; the nonce is MAC + UUID (``d2 fc``) + device-information
byte + counter.

Metric names are the property names of bthome.io's object table in snake_case
(``temperature``, ``humidity``, ``pm2_5``, ``mass_kg``, ``uv_index`` ...); metrics carry
no unit, so where the table gives one property in two units the unit is part of
the name (``mass_kg``/``mass_lb``, ``distance_mm``/``distance_m``, ``volume``
in litres/``volume_ml``). A
property sent more than once is numbered in packet order (``temperature_1``,
``temperature_2``), as bthome.io prescribes. Binary sensors give 0/1; the four
whose property name is also a measurement are named after what 1 means, so
that a low-battery flag is never read as a 1 % battery: ``battery_low``,
``power_on``, ``gas_detected``, ``moisture_wet``. Events give a number
(button: the event id; dimmer: steps, negative to the left) and their name in
the metadata. Packet id, counter, device type, firmware, text, raw and
timestamp objects and the settings revision go to the metadata. A command
(0x3B) gives its opcode as the metric ``command``, the opcode's name (when
bthome.io names it) as ``command`` in the metadata and its arguments, hex,
as ``command_args``.

As bthome.io says, parsing stops at an object id that is not in the table;
the measurements before it are kept and ``metadata["unparsed"]`` says where it
stopped. With no measurement before it, that is a :class:`DecodeError`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from connectors.codecs._types import Decoded, MetadataValue, read_int, scaled
from connectors.errors import DecodeError

__all__ = ["BTHOME_OBJECTS", "BTHOME_UUID", "BthomeObject", "decode_bthome"]

BTHOME_UUID = "0000fcd2-0000-1000-8000-00805f9b34fb"
_UUID_BYTES = b"\xd2\xfc"  # 0xFCD2, little-endian, as it is sent

Kind = Literal[
    "sensor", "binary", "button", "dimmer", "command", "packet_id", "text", "raw", "timestamp",
    "device_type", "firmware", "settings_revision",
]


@dataclass(frozen=True, slots=True)
class BthomeObject:
    """One row of bthome.io's object table; ``size`` 0 means a length byte comes first
    (for a command: the length of its arguments, after which come the opcode and them)."""

    name: str
    size: int
    signed: bool = False
    numerator: int = 1
    denominator: int = 1
    kind: Kind = "sensor"


def _s(name: str, size: int, factor: tuple[int, int] = (1, 1), *, signed: bool = False) -> BthomeObject:
    return BthomeObject(name, size, signed, factor[0], factor[1])


def _b(name: str) -> BthomeObject:
    return BthomeObject(name, 1, kind="binary")


_C1, _C01, _C001, _C0001 = (1, 10), (1, 100), (1, 1000), (1, 1_000_000)

BTHOME_OBJECTS: dict[int, BthomeObject] = {
    0x00: BthomeObject("packet_id", 1, kind="packet_id"),
    0x01: _s("battery", 1),
    0x02: _s("temperature", 2, _C01, signed=True),
    0x03: _s("humidity", 2, _C01),
    0x04: _s("pressure", 3, _C01),
    0x05: _s("illuminance", 3, _C01),
    0x06: _s("mass_kg", 2, _C01),
    0x07: _s("mass_lb", 2, _C01),
    0x08: _s("dewpoint", 2, _C01, signed=True),
    0x09: _s("count", 1),
    0x0A: _s("energy", 3, _C001),
    0x0B: _s("power", 3, _C01),
    0x0C: _s("voltage", 2, _C001),
    0x0D: _s("pm2_5", 2),
    0x0E: _s("pm10", 2),
    0x0F: _b("generic_boolean"),
    0x10: _b("power_on"),
    0x11: _b("opening"),
    0x12: _s("co2", 2),
    0x13: _s("tvoc", 2),
    0x14: _s("moisture", 2, _C01),
    0x15: _b("battery_low"),
    0x16: _b("battery_charging"),
    0x17: _b("carbon_monoxide"),
    0x18: _b("cold"),
    0x19: _b("connectivity"),
    0x1A: _b("door"),
    0x1B: _b("garage_door"),
    0x1C: _b("gas_detected"),
    0x1D: _b("heat"),
    0x1E: _b("light"),
    0x1F: _b("lock"),
    0x20: _b("moisture_wet"),
    0x21: _b("motion"),
    0x22: _b("moving"),
    0x23: _b("occupancy"),
    0x24: _b("plug"),
    0x25: _b("presence"),
    0x26: _b("problem"),
    0x27: _b("running"),
    0x28: _b("safety"),
    0x29: _b("smoke"),
    0x2A: _b("sound"),
    0x2B: _b("tamper"),
    0x2C: _b("vibration"),
    0x2D: _b("window"),
    0x2E: _s("humidity", 1),
    0x2F: _s("moisture", 1),
    0x3A: BthomeObject("button", 1, kind="button"),
    0x3B: BthomeObject("command", 0, kind="command"),
    0x3C: BthomeObject("dimmer", 2, kind="dimmer"),
    0x3D: _s("count", 2),
    0x3E: _s("count", 4),
    0x3F: _s("rotation", 2, _C1, signed=True),
    0x40: _s("distance_mm", 2),
    0x41: _s("distance_m", 2, _C1),
    0x42: _s("duration", 3, _C001),
    0x43: _s("current", 2, _C001),
    0x44: _s("speed", 2, _C01),
    0x45: _s("temperature", 2, _C1, signed=True),
    0x46: _s("uv_index", 1, _C1),
    0x47: _s("volume", 2, _C1),
    0x48: _s("volume_ml", 2),
    0x49: _s("volume_flow_rate", 2, _C001),
    0x4A: _s("voltage", 2, _C1),
    0x4B: _s("gas", 3, _C001),
    0x4C: _s("gas", 4, _C001),
    0x4D: _s("energy", 4, _C001),
    0x4E: _s("volume", 4, _C001),
    0x4F: _s("water", 4, _C001),
    0x50: BthomeObject("timestamp", 4, kind="timestamp"),
    0x51: _s("acceleration", 2, _C001),
    0x52: _s("gyroscope", 2, _C001),
    0x53: BthomeObject("text", 0, kind="text"),
    0x54: BthomeObject("raw", 0, kind="raw"),
    0x55: _s("volume_storage", 4, _C001),
    0x56: _s("conductivity", 2),
    0x57: _s("temperature", 1, signed=True),
    0x58: _s("temperature", 1, (35, 100), signed=True),
    0x59: _s("count", 1, signed=True),
    0x5A: _s("count", 2, signed=True),
    0x5B: _s("count", 4, signed=True),
    0x5C: _s("power", 4, _C01, signed=True),
    0x5D: _s("current", 2, _C001, signed=True),
    0x5E: _s("direction", 2, _C01),
    0x5F: _s("precipitation", 2, _C1),  # mm; bthome.io corrected its factor from 1 in May 2025
    0x60: _s("channel", 1),
    0x61: _s("rotational_speed", 2),
    0x62: _s("speed", 4, _C0001, signed=True),
    0x63: _s("acceleration", 4, _C0001, signed=True),
    0x64: _s("light_level", 1),
    0x65: BthomeObject("settings_revision", 1, kind="settings_revision"),
    0xF0: BthomeObject("device_type_id", 2, kind="device_type"),
    0xF1: BthomeObject("firmware_version", 4, kind="firmware"),
    0xF2: BthomeObject("firmware_version", 3, kind="firmware"),
}

_BUTTON_EVENTS = {
    0x00: None, 0x01: "press", 0x02: "double_press", 0x03: "triple_press", 0x04: "long_press",
    0x05: "long_double_press", 0x06: "long_triple_press", 0x80: "hold_press",
}
_DIMMER_EVENTS = {0x00: (None, 0), 0x01: ("rotate_left", -1), 0x02: ("rotate_right", 1)}
_COMMANDS = {0x00: "off", 0x01: "on", 0x02: "toggle", 0x03: "step_up", 0x04: "step_down"}
_COMMAND_ARGS_MASK = 0x1F  # the length byte's high 3 bits are reserved
_COUNTER_AND_MIC = 8


def decode_bthome(
    service_data: bytes, *, bind_key: bytes | None = None, mac: bytes | None = None
) -> Decoded:
    """Decode BTHome v2 service data; encrypted data needs ``bind_key`` (16 bytes) and a MAC.

    ``mac`` is the advertiser's address in display order (``54:48:E6:8F:80:A5``
    is ``bytes.fromhex("5448E68F80A5")``); a MAC carried in the data wins. With
    a ``bind_key``, unencrypted data is refused (as bthome-ble does: a downgrade).
    Raises :class:`DecodeError` naming the problem and its byte offset.
    """
    if bind_key is not None and len(bind_key) != 16:
        raise ValueError(f"a BTHome bind key is 16 bytes, got {len(bind_key)}")
    if mac is not None and len(mac) != 6:
        raise ValueError(f"a MAC address is 6 bytes, got {len(mac)}")
    data = bytes(service_data)
    if not data:
        raise DecodeError("BTHome service data is empty", offset=0)
    info = data[0]
    if info >> 5 != 2:
        raise DecodeError(
            f"BTHome version {info >> 5} in device information 0x{info:02x} at byte 0"
            " is not supported (only version 2)",
            offset=0,
        )
    metadata: dict[str, MetadataValue] = {
        "bthome_version": 2, "encrypted": info & 1, "trigger_based": (info >> 2) & 1,
    }
    start = 1
    if info & 0x02:
        if len(data) < 7:
            raise DecodeError(
                f"BTHome MAC address needs 6 bytes at byte 1, only {len(data) - 1} left", offset=1
            )
        mac = data[1:7][::-1]
        start = 7
    if mac is not None:
        metadata["mac"] = ":".join(f"{b:02X}" for b in mac)
    if bind_key is not None and not info & 0x01:
        # A device with a key sends encrypted data; plain data in its name may be forged.
        raise DecodeError(
            f"BTHome advertisement is not encrypted (device information 0x{info:02x} at byte 0)"
            " but the device has a bind key", offset=0,
        )
    if info & 0x01:
        data = _decrypt(data, start, bind_key, mac)
        metadata["encryption_counter"] = int.from_bytes(data[-_COUNTER_AND_MIC:][:4], "little")
        data = data[:-_COUNTER_AND_MIC]
    return _objects(data, start, metadata)


def _decrypt(data: bytes, start: int, bind_key: bytes | None, mac: bytes | None) -> bytes:
    """``data`` with the ciphertext replaced in place by the plaintext (same length)."""
    if bind_key is None:
        raise DecodeError(
            f"BTHome advertisement is encrypted (device information 0x{data[0]:02x} at byte 0)"
            " and no bind key is configured", offset=0,
        )
    if mac is None:
        raise DecodeError("BTHome decryption needs the advertiser's MAC address", offset=0)
    if len(data) - start < _COUNTER_AND_MIC:
        raise DecodeError(
            f"BTHome encrypted data is {len(data)} bytes, too short for the 4-byte counter"
            f" and 4-byte MIC after byte {start - 1}", offset=start,
        )
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESCCM

    counter_at = len(data) - _COUNTER_AND_MIC
    counter, mic = data[counter_at : counter_at + 4], data[counter_at + 4 :]
    nonce = mac + _UUID_BYTES + data[:1] + counter
    try:
        plain = AESCCM(bind_key, tag_length=4).decrypt(nonce, data[start:counter_at] + mic, None)
    except InvalidTag as exc:
        raise DecodeError(
            f"BTHome decryption failed at byte {start}: wrong bind key, wrong MAC or"
            " corrupted data (MIC does not match)", offset=start,
        ) from exc
    return data[:start] + plain + data[counter_at:]


_Entry = tuple[str, float | None, MetadataValue | None]  # (name, metric or None, metadata or None)


def _objects(data: bytes, start: int, metadata: dict[str, MetadataValue]) -> Decoded:
    entries: list[_Entry] = []  # in packet order
    at = start
    while at < len(data):
        obj_id = data[at]
        spec = BTHOME_OBJECTS.get(obj_id)
        if spec is None:
            where = f"object id 0x{obj_id:02x} unknown at byte {at}"
            if not any(metric is not None for _, metric, _ in entries):
                raise DecodeError(f"BTHome {where}", offset=at)
            metadata["unparsed"] = where  # bthome.io: a receiver stops at an unknown id
            break
        if spec.kind == "command":
            found, at = _command(data, at + 1, spec, obj_id)
            entries.extend(found)
        else:
            entry, at = _object(data, at + 1, spec, obj_id)
            entries.append(entry)
    metrics: dict[str, float] = {}
    seen = Counter(name for name, _, _ in entries)
    numbered: Counter[str] = Counter()
    for name, metric, meta in entries:
        numbered[name] += 1
        final = f"{name}_{numbered[name]}" if seen[name] > 1 else name
        if metric is not None:
            metrics[final] = metric
        if meta is not None:
            metadata[final] = meta
    return Decoded(metrics, metadata)


def _command(data: bytes, at: int, spec: BthomeObject, obj_id: int) -> tuple[list[_Entry], int]:
    """A command's two entries (opcode, arguments), and the offset after it."""
    what = f"BTHome {spec.name} (object id 0x{obj_id:02x})"
    length = read_int(data, at, 1, signed=False, little_endian=True, what=what)
    chunk = _chunk(data, at + 1, 1 + (length & _COMMAND_ARGS_MASK), what)
    opcode, args = chunk[0], chunk[1:]
    entries: list[_Entry] = [(spec.name, float(opcode), _COMMANDS.get(opcode)),
                             ("command_args", None, args.hex())]
    return entries, at + 1 + len(chunk)


def _chunk(data: bytes, at: int, size: int, what: str) -> bytes:
    if at + size > len(data):
        raise DecodeError(
            f"{what} needs {size} bytes at byte {at}, only {len(data) - at} left", offset=at
        )
    return data[at : at + size]


def _object(data: bytes, at: int, spec: BthomeObject, obj_id: int) -> tuple[_Entry, int]:
    """One object's entry, and the offset after it; ``at`` is just past the object id."""
    what = f"BTHome {spec.name} (object id 0x{obj_id:02x})"
    size = spec.size
    if size == 0:  # text and raw: a length byte, then that many bytes
        size = read_int(data, at, 1, signed=False, little_endian=True, what=what)
        at += 1
        chunk = _chunk(data, at, size, what)
        if spec.kind == "raw":
            return (spec.name, None, chunk.hex()), at + size
        try:
            return (spec.name, None, chunk.decode("utf-8")), at + size
        except UnicodeDecodeError as exc:
            raise DecodeError(
                f"{what} is not UTF-8 at byte {at + exc.start}", offset=at + exc.start
            ) from exc
    raw = read_int(data, at, size, signed=spec.signed, little_endian=True, what=what)
    end = at + size
    if spec.kind == "sensor":
        return (spec.name, scaled(raw, spec.numerator, spec.denominator), None), end
    if spec.kind == "binary":
        return (spec.name, 1.0 if raw else 0.0, None), end
    if spec.kind == "button":
        if raw not in _BUTTON_EVENTS:
            raise DecodeError(f"{what} event 0x{raw:02x} unknown at byte {at}", offset=at)
        return (spec.name, float(raw), _BUTTON_EVENTS[raw]), end
    if spec.kind == "dimmer":
        event, steps = raw & 0xFF, raw >> 8
        if event not in _DIMMER_EVENTS:
            raise DecodeError(f"{what} event 0x{event:02x} unknown at byte {at}", offset=at)
        name, sign = _DIMMER_EVENTS[event]
        return (spec.name, float(sign * steps), name), end
    if spec.kind == "timestamp":
        moment = datetime.fromtimestamp(raw, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return (spec.name, None, moment), end
    if spec.kind == "firmware":
        parts = raw.to_bytes(size, "little")[::-1]
        return (spec.name, None, ".".join(str(p) for p in parts)), end
    return (spec.name, None, float(raw)), end  # packet id, device type id, settings revision
