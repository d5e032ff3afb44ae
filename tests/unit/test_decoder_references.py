"""Our BLE decoders cross-checked against the reference libraries on generated payloads.

``bthome-ble`` (Home Assistant's BTHome parser) decodes every BTHome v2 object id
of :data:`connectors.codecs.bthome.BTHOME_OBJECTS`, and ``ruuvitag-sensor``'s
``Df5Decoder`` every RuuviTag data format 5 field, at boundary values, negative
values, "not available" markers and hypothesis-drawn payloads; our result must
equal theirs. Names differ by design (ours carry the unit where one property
has two, binary sensors are named after what 1 means), so each object is
compared with the reference's value for the same object.

Where the two differ, the format's own specification (bthome.io's object table;
docs.ruuvi.com / ruuvi-sensor-protocols ``dataformat_05.md``) decides. Each
difference has its own test below:

case                            ours                       reference               why
------------------------------  -------------------------  ----------------------  ---------------------------
BTHome 0x5F precipitation       factor 0.1 (was 1: fixed)  factor 0.1              bthome.io corrected it 2025
BTHome 0x58 temperature x 0.35  exact: 1 → 0.35 °C         rounded: 0.3 °C         it rounds to 0.1
BTHome 0x48 volume in mL        volume_ml (was volume)     volume, as litres       a metric has no unit
BTHome kg+lb, mm+m, L+mL        both kept                  the last one only       it keys by device class
BTHome button event 0x81        refused (DecodeError)      hold_release            not in bthome.io's table
BTHome truncated, bad UTF-8     packet refused (DLQ)       keeps what came before  it contradicts itself
BTHome empty text or raw        "" in metadata             left out                the device sent it
Ruuvi temperature, humidity     0.005 °C, 0.0025 %         rounded to 0.01         the spec's resolution
Ruuvi one axis not available    other two kept             all three left out      a marker per field
Ruuvi movement 255, seq 65535   left out                   numbers                 spec: not available
Ruuvi MAC FF:FF:FF:FF:FF:FF     left out                   ffffffffffff            spec: not available

Units only (not differences): Ruuvi acceleration in g and battery in V here, mG
and mV there. BTHome 0x3B (command) and 0x65 (settings revision) were missing
here until this cross-check: parsing stopped at them, losing the objects after.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from bleak.backends.device import BLEDevice
from bthome_ble import BTHomeBluetoothDeviceData, SensorUpdate
from bthome_ble.const import MEAS_TYPES
from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from habluetooth import BluetoothServiceInfoBleak
from hypothesis import given, settings
from hypothesis import strategies as st
from ruuvitag_sensor.decoder import Df5Decoder
from sensor_state_data import DeviceKey

from connectors.codecs import Decoded, DecodeError, decode_bthome, decode_ruuvi
from connectors.codecs.bthome import BTHOME_OBJECTS, BTHOME_UUID, BthomeObject

# ---- BTHome ------------------------------------------------------------------------------

ADDRESS = "A4:C1:38:8D:18:B2"
KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
PLAIN_INFO = b"\x40"
KNOWN_DIFFERENT = {0x58}  # rounded by the reference: see test_temperature_factor_0_35_is_not_rounded
_DEVICE_INFO = {"device_type", "firmware"}


def _reference(service_data: bytes, bind_key: bytes | None = None) -> tuple[SensorUpdate, Any]:
    """bthome-ble's reading of one advertisement (a fresh parser: no packet-id memory)."""
    parser = BTHomeBluetoothDeviceData(bind_key)
    info = BluetoothServiceInfoBleak(
        name="reference", address=ADDRESS, rssi=-60, manufacturer_data={},
        service_data={BTHOME_UUID: service_data}, service_uuids=[BTHOME_UUID], source="local",
        device=BLEDevice(ADDRESS, None, None), advertisement=None, connectable=False, time=0.0,
        tx_power=None)
    return parser.update(info), parser


def _reference_key(obj_id: int) -> tuple[str, object]:
    """The reference's key of an object and what it numbers duplicates by."""
    form = MEAS_TYPES[obj_id].meas_format
    if form is None:
        return "", None
    return str(getattr(form, "device_class", form)), form


@dataclass(frozen=True)
class Obj:
    """One object of a generated packet: its id and the bytes after the id."""

    obj_id: int
    body: bytes

    @property
    def spec(self) -> BthomeObject:
        return BTHOME_OBJECTS[self.obj_id]

    def encode(self) -> bytes:
        return bytes([self.obj_id]) + self.body


def _int_body(spec: BthomeObject, raw: int) -> bytes:
    return raw.to_bytes(spec.size, "little", signed=spec.signed)


def _bounds(spec: BthomeObject) -> list[int]:
    bits = 8 * spec.size
    if spec.signed:
        low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        return [low, low + 1, -1, 0, 1, high - 1, high]
    return [0, 1, 2, (1 << bits) - 2, (1 << bits) - 1]


def _boundary_objects(obj_id: int) -> list[Obj]:
    spec = BTHOME_OBJECTS[obj_id]
    if spec.kind == "button":
        return [Obj(obj_id, bytes([event])) for event in (0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x80)]
    if spec.kind == "dimmer":
        return [Obj(obj_id, bytes([event, steps])) for event in (0, 1, 2) for steps in (0, 1, 255)]
    if spec.kind == "command":
        return [Obj(obj_id, bytes([len(args) | reserved, opcode]) + args)
                for opcode in (0, 1, 2, 3, 4, 0x7F, 0xFF)
                for args, reserved in ((b"", 0), (b"\x05", 0), (bytes(range(31)), 0), (b"\x05", 0xE0))]
    if spec.kind == "text":
        return [Obj(obj_id, bytes([len(text)]) + text)
                for text in (b"A", b"Hello World!", "°C ≥ 0 🌡".encode(), b"x" * 255)]
    if spec.kind == "raw":
        return [Obj(obj_id, bytes([len(raw)]) + raw) for raw in (b"\x00", b"\xff\x00\x80", bytes(255))]
    return [Obj(obj_id, _int_body(spec, raw)) for raw in _bounds(spec)]


def _compare(objects: list[Obj], ours: Decoded, reference: SensorUpdate, parser: Any) -> None:
    """Every object of ``objects`` (in packet order) decoded alike by both."""
    our_counts = Counter(o.spec.name for o in objects)
    their_counts = Counter(_reference_key(o.obj_id)[1] for o in objects)
    our_seen: Counter[str] = Counter()
    their_seen: Counter[object] = Counter()
    for obj in objects:
        spec = obj.spec
        our_seen[spec.name] += 1
        name = f"{spec.name}_{our_seen[spec.name]}" if our_counts[spec.name] > 1 else spec.name
        key, form = _reference_key(obj.obj_id)
        their_seen[form] += 1
        key = f"{key}_{their_seen[form]}" if their_counts[form] > 1 else key
        where = f"object 0x{obj.obj_id:02x} {obj.body.hex()} ({name} / {key})"
        if spec.kind == "sensor":
            assert ours.metrics[name] == reference.entity_values[DeviceKey(key)].native_value, where
        elif spec.kind == "binary":
            expected = float(bool(reference.binary_entity_values[DeviceKey(key)].native_value))
            assert ours.metrics[name] == expected, where
        elif spec.kind in ("button", "dimmer", "command"):
            event = reference.events.get(DeviceKey(key))
            properties = (event.event_properties if event else None) or {}
            assert ours.metadata.get(name) == (event.event_type if event else None), where
            if spec.kind == "button":
                assert ours.metrics[name] == obj.body[0], where
            elif spec.kind == "dimmer" and event is not None:
                steps = properties["steps"]
                assert isinstance(steps, int)
                assert ours.metrics[name] == (-steps if event.event_type == "rotate_left" else steps)
            elif spec.kind == "command":
                assert ours.metrics[name] == obj.body[1], where
                args_name = name.replace("command", "command_args", 1)
                if event is not None:
                    assert ours.metadata[args_name] == properties["args"], where
        elif spec.kind == "timestamp":
            moment = reference.entity_values[DeviceKey(key)].native_value
            assert isinstance(moment, datetime)
            assert ours.metadata[name] == moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), where
        elif spec.kind == "device_type":
            assert ours.metadata[name] == parser.device_type_id, where
        elif spec.kind == "firmware":
            assert ours.metadata[name] == reference.devices[None].sw_version, where
        else:  # packet id, settings revision, text, raw: a sensor there, metadata here
            assert ours.metadata[name] == reference.entity_values[DeviceKey(key)].native_value, where


def _check(objects: list[Obj]) -> None:
    payload = PLAIN_INFO + b"".join(o.encode() for o in objects)
    reference, parser = _reference(payload)
    _compare(objects, decode_bthome(payload), reference, parser)


@pytest.mark.parametrize("obj_id", [pytest.param(i, id=f"0x{i:02x}-{s.name}")
                                    for i, s in BTHOME_OBJECTS.items() if i not in KNOWN_DIFFERENT])
def test_every_object_id_at_its_boundaries_decodes_as_bthome_ble(obj_id: int) -> None:
    """Each value alone, and behind a battery reading (so that metadata-only objects count)."""
    for obj in _boundary_objects(obj_id):
        _check([obj])
        _check([Obj(0x01, b"\x61"), obj])


def test_every_object_id_is_known_to_bthome_ble() -> None:
    assert set(BTHOME_OBJECTS) <= set(MEAS_TYPES)


def test_every_reference_object_id_is_ours() -> None:
    """Nothing the reference parses makes ours stop early (bthome.io: parsing stops at an
    unknown id, so a missing one loses every object after it)."""
    assert set(MEAS_TYPES) <= set(BTHOME_OBJECTS)


def _object_strategy() -> st.SearchStrategy[Obj]:
    def body(obj_id: int) -> st.SearchStrategy[Obj]:
        spec = BTHOME_OBJECTS[obj_id]
        if spec.kind in ("button", "dimmer", "command", "text", "raw"):
            return st.sampled_from(_boundary_objects(obj_id))
        bits = 8 * spec.size
        low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if spec.signed else (0, (1 << bits) - 1)
        return st.integers(low, high).map(lambda raw: Obj(obj_id, _int_body(spec, raw)))

    ids = sorted(i for i in BTHOME_OBJECTS if i not in KNOWN_DIFFERENT)
    return st.sampled_from(ids).flatmap(body)


def _comparable(objects: list[Obj]) -> bool:
    """Packets the reference can represent: no two objects on one key in different units
    (kg and lb, mm and m, L and mL: it keeps the last), at most one device-info object."""
    forms: dict[tuple[str, str], object] = {}
    for obj in objects:
        key, form = _reference_key(obj.obj_id)
        if form is not None and forms.setdefault((type(form).__name__, key), form) != form:
            return False
    return sum(o.spec.kind in _DEVICE_INFO for o in objects) <= 1


@settings(max_examples=300, deadline=None)
@given(st.lists(_object_strategy(), min_size=1, max_size=8)
       .map(lambda objs: sorted(objs, key=lambda o: o.obj_id)).filter(_comparable))
def test_generated_packets_decode_as_bthome_ble(objects: list[Obj]) -> None:
    """Several objects in bthome.io's order (ascending ids), repeated ones numbered."""
    _check([Obj(0x01, b"\x61"), *objects])


@settings(max_examples=100, deadline=None)
@given(st.lists(_object_strategy(), min_size=1, max_size=6)
       .map(lambda objs: sorted(objs, key=lambda o: o.obj_id)).filter(_comparable),
       st.integers(0, 0xFFFFFFFF))
def test_generated_encrypted_packets_decode_as_bthome_ble(objects: list[Obj], counter: int) -> None:
    """Encrypted as bthome.io/encryption says; both derive the same nonce and read the same."""
    objects = [Obj(0x01, b"\x61"), *objects]
    info = b"\x41"
    mac = bytes.fromhex(ADDRESS.replace(":", ""))
    count = counter.to_bytes(4, "little")
    sealed = AESCCM(KEY, tag_length=4).encrypt(
        mac + b"\xd2\xfc" + info + count, b"".join(o.encode() for o in objects), None)
    payload = info + sealed[:-4] + count + sealed[-4:]
    reference, parser = _reference(payload, KEY)
    ours = decode_bthome(payload, bind_key=KEY, mac=mac)
    assert ours.metadata["encryption_counter"] == counter
    _compare(objects, ours, reference, parser)


# -- the known differences (each asserts both sides, so a change in either shows up)


def test_precipitation_uses_bthome_io_factor_0_1() -> None:
    """bthome.io's table: 0x5F uint16, factor 0.1, example 5FA00F → 400.0 mm."""
    payload = bytes.fromhex("405FA00F")
    assert decode_bthome(payload).metrics == {"precipitation": 400.0}
    assert _reference(payload)[0].entity_values[DeviceKey("precipitation")].native_value == 400.0


@pytest.mark.parametrize(("raw", "exact", "rounded"), [
    (1, 0.35, 0.3), (3, 1.05, 1.0), (-1, -0.35, -0.3), (127, 44.45, 44.4), (-128, -44.8, -44.8),
    (-22, -7.7, -7.7),  # bthome.io's example 58EA
])
def test_temperature_factor_0_35_is_not_rounded(raw: int, exact: float, rounded: float) -> None:
    payload = PLAIN_INFO + b"\x58" + raw.to_bytes(1, "little", signed=True)
    assert decode_bthome(payload).metrics["temperature"] == pytest.approx(exact, abs=1e-12)
    assert _reference(payload)[0].entity_values[DeviceKey("temperature")].native_value == rounded


def test_volume_in_millilitres_has_its_own_name() -> None:
    payload = bytes.fromhex("4047875648DC87")  # 2215.1 L, then 34780 mL
    assert decode_bthome(payload).metrics == {"volume": 2215.1, "volume_ml": 34780.0}
    reference = _reference(payload)[0].entity_values
    assert reference[DeviceKey("volume")].native_value == 34780  # the litres are gone


def test_mass_in_two_units_keeps_both() -> None:
    payload = bytes.fromhex("40065E1F073E1D")
    assert decode_bthome(payload).metrics == {"mass_kg": 80.3, "mass_lb": 74.86}
    assert _reference(payload)[0].entity_values[DeviceKey("mass")].native_value == 74.86


def test_button_event_0x81_is_not_in_bthome_io() -> None:
    payload = bytes.fromhex("40015d3a81")
    with pytest.raises(DecodeError, match="event 0x81 unknown"):
        decode_bthome(payload)
    assert _reference(payload)[0].events[DeviceKey("button")].event_type == "hold_release"


@pytest.mark.parametrize("hex_data", ["40015d02ca", "40015d5302c328"])  # truncated; not UTF-8
def test_a_packet_that_contradicts_itself_is_refused_whole(hex_data: str) -> None:
    payload = bytes.fromhex(hex_data)
    with pytest.raises(DecodeError):
        decode_bthome(payload)
    assert _reference(payload)[0].entity_values[DeviceKey("battery")].native_value == 93


def test_empty_text_is_kept_empty() -> None:
    payload = bytes.fromhex("40015d5300")
    assert decode_bthome(payload).metadata["text"] == ""
    assert DeviceKey("text") not in _reference(payload)[0].entity_values


# ---- RuuviTag data format 5 -------------------------------------------------------------

_DF5 = struct.Struct(">BhHHhhhHBH6s")  # docs.ruuvi.com "Data format 5": big-endian fields
MAC = bytes.fromhex("CBB8334C884F")
NO_MAC = b"\xff" * 6


def _df5(temperature: int = 4860, humidity: int = 21396, pressure: int = 50044,
         acceleration: tuple[int, int, int] = (4, -4, 1036), battery: int = 1377,
         tx_power: int = 22, movement: int = 66, sequence: int = 205, mac: bytes = MAC) -> bytes:
    """A format-5 payload of raw field values (defaults: the specification's valid vector)."""
    return _DF5.pack(5, temperature, humidity, pressure, *acceleration,
                     battery << 5 | tx_power, movement, sequence, mac)


def _compare_ruuvi(payload: bytes) -> None:
    ours = decode_ruuvi(payload)
    theirs = Df5Decoder().decode_data(payload.hex())
    assert theirs is not None
    metrics = ours.metrics
    for name, key in (("temperature", "temperature"), ("humidity", "humidity")):
        if theirs[key] is None:
            assert name not in metrics
        else:  # they round to 0.01; we keep the specification's resolution
            assert metrics[name] == pytest.approx(theirs[key], abs=0.005 + 1e-9)
    assert metrics.get("pressure") == theirs["pressure"]
    axes = [metrics.get(f"acceleration_{axis}") for axis in "xyz"]
    if theirs["acceleration_x"] is None:
        assert None in axes
    else:
        assert [a * 1000 for a in axes if a is not None] == pytest.approx(
            [theirs["acceleration_x"], theirs["acceleration_y"], theirs["acceleration_z"]], abs=1e-9)
    battery = metrics.get("battery_voltage")
    assert (None if battery is None else round(battery * 1000)) == theirs["battery"]
    assert metrics.get("tx_power") == theirs["tx_power"]
    movement, sequence = metrics.get("movement_counter"), metrics.get("measurement_sequence")
    assert movement == (None if theirs["movement_counter"] == 255 else theirs["movement_counter"])
    assert sequence == (None if theirs["measurement_sequence_number"] == 65535
                        else theirs["measurement_sequence_number"])
    mac = ours.metadata.get("mac")
    assert mac == (None if theirs["mac"] == "ffffffffffff"
                   else ":".join(theirs["mac"][i:i + 2] for i in range(0, 12, 2)).upper())


@given(st.builds(
    _df5,
    temperature=st.integers(-0x8000, 0x7FFF), humidity=st.integers(0, 0xFFFF),
    pressure=st.integers(0, 0xFFFF),
    acceleration=st.tuples(*[st.integers(-0x8000, 0x7FFF)] * 3),
    battery=st.integers(0, 0x7FF), tx_power=st.integers(0, 0x1F), movement=st.integers(0, 255),
    sequence=st.integers(0, 0xFFFF), mac=st.one_of(st.just(NO_MAC), st.binary(min_size=6, max_size=6)),
))
def test_generated_ruuvi_payloads_decode_as_ruuvitag_sensor(payload: bytes) -> None:
    _compare_ruuvi(payload)


RUUVI_BOUNDARIES = {
    "temperature": [-0x8000, -0x7FFF, -1, 0, 1, 0x7FFE, 0x7FFF],
    "humidity": [0, 1, 40000, 0xFFFE, 0xFFFF],
    "pressure": [0, 1, 51325, 0xFFFE, 0xFFFF],
    "battery": [0, 1, 1400, 0x7FE, 0x7FF],
    "tx_power": [0, 1, 22, 30, 31],
    "movement": [0, 1, 254, 255],
    "sequence": [0, 1, 0xFFFE, 0xFFFF],
}


@pytest.mark.parametrize(("field", "raw"), [
    pytest.param(field, raw, id=f"{field}={raw}")
    for field, values in RUUVI_BOUNDARIES.items() for raw in values
])
def test_ruuvi_field_boundaries_decode_as_ruuvitag_sensor(field: str, raw: int) -> None:
    fields: dict[str, Any] = {field: raw}
    _compare_ruuvi(_df5(**fields))


@pytest.mark.parametrize("acceleration", [
    (-0x8000, 0, 0), (0, -0x8000, 0), (0, 0, -0x8000), (-0x8000, -0x8000, -0x8000),
    (-0x7FFF, 0x7FFF, -1), (1000, -1000, 0),
])
def test_ruuvi_acceleration_boundaries(acceleration: tuple[int, int, int]) -> None:
    _compare_ruuvi(_df5(acceleration=acceleration))


def test_ruuvi_temperature_and_humidity_keep_the_specification_resolution() -> None:
    """docs.ruuvi.com: 0.005 °C and 0.0025 % steps; the reference rounds both to 0.01."""
    payload = _df5(temperature=1, humidity=1)
    assert decode_ruuvi(payload).metrics["temperature"] == 0.005
    assert decode_ruuvi(payload).metrics["humidity"] == 0.0025
    theirs = Df5Decoder().decode_data(payload.hex())
    assert theirs is not None and (theirs["temperature"], theirs["humidity"]) == (0.01, 0.0)


def test_ruuvi_one_missing_axis_leaves_the_others() -> None:
    payload = _df5(acceleration=(-0x8000, 5, -7))
    metrics = decode_ruuvi(payload).metrics
    assert (metrics.get("acceleration_x"), metrics["acceleration_y"], metrics["acceleration_z"]) == (
        None, 0.005, -0.007)
    theirs = Df5Decoder().decode_data(payload.hex())
    assert theirs is not None and theirs["acceleration_y"] is None


def test_ruuvi_not_available_counters_and_mac_are_left_out() -> None:
    """docs.ruuvi.com: movement 255, sequence 65535 and an all-ones MAC mean "not available"."""
    payload = _df5(movement=255, sequence=0xFFFF, mac=NO_MAC)
    ours = decode_ruuvi(payload)
    assert "movement_counter" not in ours.metrics and "measurement_sequence" not in ours.metrics
    assert "mac" not in ours.metadata
    theirs = Df5Decoder().decode_data(payload.hex())
    assert theirs is not None
    assert (theirs["movement_counter"], theirs["measurement_sequence_number"], theirs["mac"]) == (
        255, 65535, "ffffffffffff")
