"""Nothing lost on the way: a device body, once accepted, is every store's write exactly.

Generated device JSON (good, reserved and malformed metric names; numbers at the
edges of a double, booleans, text, NaN; every way of giving a time, and none;
metadata with location and identifiers) goes through the ingest parser. Each
reading it accepts is followed through what the pipeline writes: the Kafka
``TelemetryBatch`` record, the Redis latest fields, the InfluxDB line and the
PostgreSQL upsert row. Every metric must come out bit for bit as the device sent
it, and the time as the device meant it. What the parser refuses must say why.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.errors import BadMessageIdError, BadTimestampError, PayloadError
from connectors.payload import ParsedReading, parse_reading
from connectors.reading import ReadingRow, encode_rows
from pipeline.sinks.influxdb import MEASUREMENT, line_of
from pipeline.sinks.postgres import IDENTIFIER_KEYS, device_rows
from pipeline.sinks.redis import folded
from schemas.batch import ReadingBatch, batch_passes, check_row, decode_batch, iso_micros
from schemas.latest import NUMERIC_METADATA
from schemas.records import APPLICATION_ID_RULE, DEVICE_ID_PATTERN, METRIC_NAME_PATTERN, RESERVED_METRICS

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SKEW_S = 300.0  # how far ahead of its arrival a device time may be (the default setting)
SKEW_US = int(SKEW_S * 1_000_000)
# Top-level keys of a body that are never metrics (the parser skips them in a flat body).
ENVELOPE = {"timestamp", "telemetry", "metadata", "messageId", "applicationId", "deviceId"}
# metadata key -> name in the reading's numeric metadata
META_NUMBERS = {"signalStrength": "signal_strength", "batteryLevel": "battery_level", "snr": "snr"}


def same(a: float, b: float) -> bool:
    """The identical double (-0.0 is not 0.0)."""
    return a.hex() == b.hex()


def micros(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


# --- what a device sends -----------------------------------------------------------------------

good_names = st.sampled_from(["temperature", "flow_rate", "p", "7", "Zone.1", "a:b", "x/y", "m-3"]) | (
    st.from_regex(METRIC_NAME_PATTERN, fullmatch=True).filter(lambda n: n not in ENVELOPE))
reserved_names = st.sampled_from(sorted(RESERVED_METRICS))
bad_names = st.sampled_from(["_value", "_time", "_measurement", "_field", "_start", "_x", "", "x y",
                             "a,b", "a=b", "é", "-lead", ".lead", "a\nb", "a\\b", "n" * 129])
names = st.one_of(good_names, reserved_names, bad_names).filter(lambda n: n not in ENVELOPE)

edge_floats = st.sampled_from([-0.0, 0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1e-310, 1e308,
                               -1e308, 1.7976931348623157e308, 0.1, 1 / 3, 2.0**53, 2.0**53 + 2])
values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False), edge_floats,
    st.integers(-(2**63), 2**64 - 1), st.integers(2**64, 10**30), st.integers(-(10**30), -(2**63)),
    st.booleans(),
    st.sampled_from([math.nan, math.inf, -math.inf]),  # json.dumps writes NaN, Infinity
    st.sampled_from(["NaN", "inf", "-Infinity", "12", "on", ""]), st.none(), st.just([1]),
)


@dataclass
class Body:
    """A generated device body and what the parser must make of it."""

    obj: dict[str, Any]
    received_at: datetime
    metrics: dict[str, float] = field(default_factory=dict)
    rejected: set[str] = field(default_factory=set)  # paths of the values to be dropped
    status: str | None = None
    ts: int | None = None  # µs; None: the time it was received
    bad_timestamp: bool = False
    message_id: str | None = None  # None: derived from the bytes
    bad_message_id: bool = False
    application_id: str | None = None
    meta: dict[str, float] = field(default_factory=dict)
    gateway_id: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def payload(self) -> bytes:
        return json.dumps(self.obj).encode()


def _number(value: object, *, allow_bool: bool) -> float | None:
    """The double a JSON value becomes, or None where the parser must refuse it."""
    if isinstance(value, bool):
        return float(value) if allow_bool else None
    if isinstance(value, int):
        try:
            return float(value)
        except OverflowError:
            return None
    if isinstance(value, float) and math.isfinite(value):
        return value
    return None


@st.composite
def metric_values(draw: st.DrawFn, body: Body) -> None:
    pairs = draw(st.dictionaries(names, values, max_size=6))
    nested = draw(st.booleans())
    prefix = "telemetry." if nested else ""
    for name, value in pairs.items():
        if name == "status" and isinstance(value, str):
            body.status = value  # a text status is the reading's status, not a metric
            continue
        number = _number(value, allow_bool=True)
        if number is None or name in RESERVED_METRICS or not METRIC_NAME_PATTERN.fullmatch(name):
            body.rejected.add(prefix + name)
        else:
            body.metrics[name] = number
    if nested:
        body.obj["telemetry"] = pairs
    else:
        body.obj.update(pairs)


@st.composite
def timestamps(draw: st.DrawFn, body: Body) -> None:
    received = micros(body.received_at)
    how = draw(st.sampled_from(["absent", "null", "iso", "iso-z", "iso-naive", "epoch-ms",
                                "epoch-s", "epoch-s-half", "before-1970", "far-future", "garbage"]))
    if how == "absent":
        return
    if how == "null":
        body.obj["timestamp"] = None
        return
    if how == "garbage":
        body.obj["timestamp"] = draw(st.sampled_from(["yesterday", "", "2024-13-01", True, [1]]))
        body.bad_timestamp = True
        return
    if how == "before-1970":
        body.obj["timestamp"] = draw(st.sampled_from(
            [-1, -1000, "1969-12-31T23:59:59.999999Z", "0999-06-01T00:00:00Z", -1e12]))
        body.bad_timestamp = True
        return
    if how == "far-future":
        body.obj["timestamp"] = draw(st.sampled_from([
            (received + SKEW_US) // 1000 + 1_000,  # epoch ms, a second beyond the skew
            "9999-12-31T23:59:59.999999+00:00", 99_999_999_999, 253402300800000, 1e300]))
        body.bad_timestamp = True
        return
    # a time around the arrival: mostly before it, sometimes within or beyond the skew
    offset = draw(st.one_of(st.integers(-(60 * 365 * 86400 * 10**6), 0),
                            st.integers(-(10**6), SKEW_US + 10**6)))
    moment = max(body.received_at + timedelta(microseconds=offset), EPOCH)
    if how == "epoch-ms":
        moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
        body.obj["timestamp"] = micros(moment) // 1000
        if micros(moment) < 10**14:  # below 1e11 an epoch number is seconds: use ISO
            body.obj["timestamp"] = moment.isoformat()
    elif how in ("epoch-s", "epoch-s-half"):
        moment = moment.replace(microsecond=0)
        half = how == "epoch-s-half"
        if half:
            moment += timedelta(milliseconds=500)
        seconds = micros(moment) / 10**6
        body.obj["timestamp"] = seconds if half else int(seconds)
    else:
        minutes = draw(st.integers(-14 * 60 + 1, 14 * 60 - 1))
        zone = timezone(timedelta(minutes=minutes)) if how == "iso" else UTC
        local = moment.astimezone(zone)
        text = local.isoformat()
        if how == "iso-z":
            text = local.replace(tzinfo=None).isoformat() + "Z"
        elif how == "iso-naive":
            text = local.replace(tzinfo=None).isoformat()
        body.obj["timestamp"] = text
    ts = micros(moment)
    body.ts = ts
    body.bad_timestamp = not 0 <= ts <= received + SKEW_US


@st.composite
def message_ids(draw: st.DrawFn, body: Body) -> None:
    how = draw(st.sampled_from(["absent", "text", "int", "empty", "long", "bool", "float", "null"]))
    if how == "absent":
        return
    if how == "text":
        value: Any = draw(st.text(min_size=1, max_size=128))
        body.message_id = value
    elif how == "int":
        value = draw(st.integers(-(2**63), 2**64 - 1))
        body.message_id = str(value)
    else:
        value = {"empty": "", "long": "m" * 129, "bool": True, "float": 1.5, "null": None}[how]
        body.bad_message_id = True
    body.obj["messageId"] = value


@st.composite
def metadata(draw: st.DrawFn, body: Body) -> None:
    block: dict[str, Any] = {}
    for key, name in META_NUMBERS.items():
        if draw(st.booleans()):
            value = draw(values)
            block[key] = value
            number = _number(value, allow_bool=False)
            if value is None:
                continue  # a null metadata value is as good as absent
            if number is None:
                body.rejected.add(f"metadata.{key}")
            else:
                body.meta[name] = number
    how = draw(st.sampled_from(["none", "good", "out-of-range", "half", "not-object"]))
    if how == "good":
        lat = draw(st.floats(-90, 90) | st.sampled_from([-0.0, 90, -90, 5e-324]))
        lon = draw(st.floats(-180, 180) | st.sampled_from([-0.0, 180, -180]))
        block["location"] = {"lat": lat, "lon": lon}
        body.meta["lat"], body.meta["lon"] = float(lat), float(lon)
    elif how != "none":
        block["location"] = {"out-of-range": {"lat": 91.5, "lon": 0}, "half": {"lat": 1.0},
                             "not-object": "52.1,4.3"}[how]
        body.rejected.add("metadata.location")
    if draw(st.booleans()):
        gateway = draw(st.text(min_size=1, max_size=128) | st.sampled_from(["", 7, "g" * 129]))
        block["gatewayId"] = gateway
        if isinstance(gateway, str) and 0 < len(gateway) <= 128:
            body.gateway_id = gateway
        else:
            body.rejected.add("metadata.gatewayId")
    extra = draw(st.dictionaries(st.sampled_from(["imei", "serial", "iccid", "fw", "site"]),
                                 st.text(max_size=20) | st.integers(0, 10**15) | st.just([1]),
                                 max_size=3))
    for key, value in extra.items():
        block[key] = value
        if isinstance(value, str):
            body.extra[key] = value
        elif isinstance(value, int):
            body.extra[key] = json.dumps(value)
        else:
            body.rejected.add(f"metadata.{key}")
    empty_block = draw(st.booleans())  # an empty metadata object, or none at all
    if block or empty_block:
        body.obj["metadata"] = block


# Any text a device may name its application with (spaces, commas, equals signs, quotes,
# control characters, backslashes ...): kept only in the device-id alphabet, the one rule
# for application ids (see test_an_application_id_outside_the_rule_is_refused).
_ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-"
application_ids = st.text(min_size=1, max_size=128) | st.text(_ID_CHARS, min_size=1, max_size=130) | (
    st.sampled_from(["plant a,b=c", " lead", "trail ", "=", ",", "x=y z,w", "\"q\"", "é\x85\u2028",
                     "ends\\", "a\nb", "a\x00b", "a\x7fb", "plant-1", "ok\n", "_x", "a" * 128]))


def _keeps_application_id(app: object) -> bool:
    return (isinstance(app, str) and 0 < len(app) <= 128 and app[0] not in "_.:-"
            and all(c in _ID_CHARS for c in app))


@st.composite
def bodies(draw: st.DrawFn) -> Body:
    received_at = draw(st.datetimes(datetime(1975, 1, 1), datetime(2090, 1, 1), timezones=st.just(UTC)))
    body = Body(obj={}, received_at=received_at)
    draw(metric_values(body))
    draw(timestamps(body))
    draw(message_ids(body))
    draw(metadata(body))
    if draw(st.booleans()):
        app = draw(application_ids | st.sampled_from(["", 5, "a" * 129]))
        body.obj["applicationId"] = app
        if _keeps_application_id(app):
            body.application_id = app
        else:
            body.rejected.add("applicationId")
    return body


device_ids = (st.sampled_from(["pump-7", "a", "GW.01:x_y-z"])
              | st.from_regex(DEVICE_ID_PATTERN, fullmatch=True))


# --- what the stores are given -----------------------------------------------------------------

_FLOAT_TEXT = re.compile(r"-?\d+(\.\d+)?(e[+-]\d+)?")
# What InfluxDB 2 (models/points.go) unescapes in a measurement, tag key or tag value: only
# these three; any other backslash is kept as it is.
_TAG_ESCAPES = {"\\,": ",", "\\ ": " ", "\\=": "="}


def _split(text: str, sep: str) -> list[str]:
    """``text`` split as InfluxDB splits a line: at each ``sep`` not right after a backslash."""
    parts, start = [], 0
    for i, char in enumerate(text):
        if char == sep and (i == 0 or text[i - 1] != "\\"):
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _unescape(text: str) -> str:
    for escaped, char in _TAG_ESCAPES.items():
        text = text.replace(escaped, char)
    return text


def _pair(text: str) -> tuple[str, str]:
    key, value = _split(text, "=")
    return _unescape(key), _unescape(value)


def parse_line(line: str) -> tuple[str, dict[str, str], dict[str, str], int]:
    """A line of line protocol as InfluxDB 2 reads it: measurement, tags, fields (text), time."""
    # InfluxDB ends a point at a line break and drops a carriage return (seen on 2.7.12)
    assert "\n" not in line and "\r" not in line, f"a line break inside the point: {line!r}"
    head, fields, stamp = _split(line, " ")
    measurement, *tags = _split(head, ",")
    return (_unescape(measurement), dict(map(_pair, tags)), dict(map(_pair, _split(fields, ","))),
            int(stamp))


def check_kafka(row: ReadingRow) -> ReadingBatch:
    """The record the connectors produce, as every consumer decodes it."""
    batch = decode_batch(encode_rows([row]))
    assert len(batch) == 1
    assert batch.metrics[0].keys() == row.metrics.keys()
    assert all(same(batch.metrics[0][name], value) for name, value in row.metrics.items())
    assert batch.meta[0].keys() == row.meta.keys()
    assert all(same(batch.meta[0][name], value) for name, value in row.meta.items())
    assert (batch.ts[0], batch.received_at[0], batch.message_id[0], batch.device_id[0]) == (
        row.ts, row.received_at, row.message_id, row.device_id)
    assert (batch.application_id[0], batch.status[0], batch.gateway_id[0], dict(batch.extra[0])) == (
        row.application_id, row.status, row.gateway_id, row.extra)
    return batch


def check_redis(batch: ReadingBatch, row: ReadingRow) -> None:
    # the script compares times as numbers (µs, sent as decimal text that Lua's tonumber
    # reads exactly below 2**53); the hash's ``ts`` is the same time as ISO-8601
    at = str(row.ts)
    assert int(at) == row.ts < 2**53
    newest, newest_text, envelope, metrics = folded(batch)[row.device_id]
    assert newest == at
    assert micros(datetime.fromisoformat(newest_text)) == row.ts and newest_text == iso_micros(row.ts)
    stored = {metrics[i]: (metrics[i + 1], metrics[i + 2]) for i in range(0, len(metrics), 3)}
    assert stored.keys() == row.metrics.keys()
    for name, (text, time) in stored.items():
        assert same(float(text), row.metrics[name]), (name, text)
        assert time == at
    fields = {envelope[i]: (envelope[i + 1], envelope[i + 2]) for i in range(0, len(envelope), 3)}
    assert all(time == at for _, time in fields.values())
    expected_text = {"protocol": row.protocol, "application_id": row.application_id,
                     "status": row.status, "gateway_id": row.gateway_id}
    assert {k: v for k, (v, _) in fields.items() if k in expected_text} == {
        k: v for k, v in expected_text.items() if v is not None}
    numeric = {k: v for k, (v, _) in fields.items() if k not in expected_text}
    assert numeric.keys() == {NUMERIC_METADATA[name] for name in row.meta}
    assert all(same(float(numeric[NUMERIC_METADATA[name]]), value) for name, value in row.meta.items())


def check_influxdb(batch: ReadingBatch, row: ReadingRow) -> None:
    measurement, tags, fields, stamp = parse_line(line_of(batch, 0))
    assert measurement == MEASUREMENT
    expected_tags = {"device_id": row.device_id, "protocol": row.protocol}
    if row.application_id is not None:
        expected_tags["application_id"] = row.application_id
    assert tags == expected_tags
    assert stamp == row.ts  # precision µs
    expected = dict(row.metrics)
    expected.update({NUMERIC_METADATA[name]: value for name, value in row.meta.items()})
    assert fields.keys() == expected.keys()
    for name, text in fields.items():
        assert _FLOAT_TEXT.fullmatch(text), f"{name}={text} is not a float InfluxDB reads"
        assert same(float(text), expected[name]), (name, text)


def check_postgres(batch: ReadingBatch, row: ReadingRow) -> None:
    rows = device_rows(batch)
    assert rows == [{
        "id": row.device_id, "protocol": row.protocol, "application_id": row.application_id,
        "last_seen": iso_micros(row.ts), "message_id": row.message_id,
        "identifiers": {k: v for k, v in row.extra.items() if k in IDENTIFIER_KEYS},
    }]
    assert orjson.loads(orjson.dumps(rows)) == rows  # the one JSON parameter of the upsert


def parse(body: Body, device_id: str) -> ParsedReading:
    return parse_reading(body.payload, device_id=device_id, protocol="mqtt",
                         received_at=body.received_at, max_future_skew_s=SKEW_S)


# --- the properties ----------------------------------------------------------------------------


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies(), device_ids)
def test_an_accepted_reading_is_written_to_every_store_exactly_as_sent(body: Body, device_id: str) -> None:
    try:
        result = parse(body, device_id)
    except PayloadError as exc:
        assert body.bad_timestamp or body.bad_message_id, f"refused a good body: {exc}"
        # the time is checked first: a body with both faults is refused for its time
        assert isinstance(exc, BadTimestampError if body.bad_timestamp else BadMessageIdError)
        assert ("timestamp" if body.bad_timestamp else "messageId") in str(exc)
        return
    assert not body.bad_timestamp and not body.bad_message_id, "accepted a body it must refuse"
    assert {f.name for f in result.rejected} == body.rejected
    assert all(f.reason for f in result.rejected)
    if body.message_id is not None:
        assert result.message_id == body.message_id
    row = result.row
    if not body.metrics:
        assert row is None
        letter = result.dead_letter(stage="connector.mqtt",
                                    source_topic=f"mqtt:devices/{device_id}/telemetry")
        assert letter is not None and letter.payload == body.payload
        assert all(f"{f.name} ({f.reason})" in letter.reason for f in result.rejected)
        return
    assert row is not None
    # the reading is what the device sent ...
    assert row.metrics.keys() == body.metrics.keys()
    assert all(same(row.metrics[name], value) for name, value in body.metrics.items())
    assert row.ts == (micros(body.received_at) if body.ts is None else body.ts)
    assert row.received_at == micros(body.received_at)
    assert row.meta.keys() == body.meta.keys()
    assert all(same(row.meta[name], value) for name, value in body.meta.items())
    assert (row.device_id, row.message_id, row.status, row.application_id, row.gateway_id) == (
        device_id, result.message_id, body.status, body.application_id, body.gateway_id)
    assert row.extra == body.extra
    if body.rejected:  # the reading is kept, and one dead letter names what was dropped
        letter = result.dead_letter(stage="connector.mqtt", source_topic="mqtt:t")
        assert letter is not None
        assert all(f"{f.name} ({f.reason})" in letter.reason for f in result.rejected)
    # ... and every store is given exactly that
    batch = check_kafka(row)
    check_redis(batch, row)
    check_influxdb(batch, row)
    check_postgres(batch, row)


@pytest.mark.parametrize("value", [-0.0, 5e-324, 1e308, 2.0**53 + 2, 123456789.125])
def test_edge_values_keep_their_bits_in_every_store(value: float) -> None:
    """The doubles a string round-trip most easily breaks, each through all four formats."""
    body = Body(obj={"telemetry": {"v": value}, "timestamp": "1999-12-31T23:59:59.999999-01:00",
                     "metadata": {"location": {"lat": -0.0, "lon": 5e-324}}},
                received_at=datetime(2024, 5, 1, tzinfo=UTC))
    row = parse(body, "edge").row
    assert row is not None and same(row.metrics["v"], value)
    assert row.ts == micros(datetime(2000, 1, 1, 0, 59, 59, 999999, tzinfo=UTC))
    batch = check_kafka(row)
    check_redis(batch, row)
    check_influxdb(batch, row)
    check_postgres(batch, row)


@pytest.mark.parametrize(
    "application_id", ["plant\\north", "plant\\,a", "ends\\", "plant\nA", "plant\rA", "nul\x00",
                       "plant A", "trailing\n"],
    ids=["backslash", "backslash-comma", "trailing-backslash", "line-feed", "carriage-return", "nul",
         "space", "trailing-line-feed"])
def test_an_application_id_outside_the_rule_is_refused(application_id: str) -> None:
    r"""Application ids keep the device-id alphabet, the one rule wherever they appear (a
    user can be granted only such an application). InfluxDB could not keep some of these
    in a tag value as sent anyway (seen on InfluxDB 2.7.12: it unescapes only ``\,``,
    ``\ `` and ``\=``, so a backslash is stored doubled or escapes the comma after it; a
    line feed ends the point; a carriage return is dropped). The parser drops the field,
    naming it, and keeps the reading; a record carrying one anyway is refused by the
    validate agent's check."""
    body = Body(obj={"t": 1.5, "applicationId": application_id}, received_at=datetime.now(UTC))
    result = parse(body, "pump-7")
    assert result.row is not None and result.row.application_id is None
    [rejected] = result.rejected
    assert rejected.name == "applicationId" and "letters, digits" in rejected.reason
    batch = ReadingBatch.of([result.row.telemetry()])
    batch.application_id[0] = application_id
    assert check_row(batch, 0) == APPLICATION_ID_RULE and not batch_passes(batch)


def test_the_postgres_row_is_each_devices_newest_reading() -> None:
    """``device_rows`` folds a batch: per device the newest reading and all its identifiers."""
    received = datetime(2024, 5, 1, tzinfo=UTC)
    rows = []
    for device, ts, message_id, extra in [("a", 3, "1", {"imei": "490154203237518"}),
                                          ("b", 1, "1", {}), ("a", 2, "2", {"serial": "S1", "fw": "2"}),
                                          ("a", 3, "3", {})]:
        body = Body(obj={"t": 1, "timestamp": ts, "messageId": message_id,
                         "metadata": extra}, received_at=received)
        row = parse(body, device).row
        assert row is not None
        rows.append(row)
    batch = decode_batch(encode_rows(rows))
    assert device_rows(batch) == [
        {"id": "a", "protocol": "mqtt", "application_id": None, "last_seen": "1970-01-01T00:00:03.000000Z",
         "message_id": "3", "identifiers": {"imei": "490154203237518", "serial": "S1"}},
        {"id": "b", "protocol": "mqtt", "application_id": None, "last_seen": "1970-01-01T00:00:01.000000Z",
         "message_id": "1", "identifiers": {}},
    ]


def test_a_body_with_no_usable_metric_is_one_dead_letter_naming_each_field() -> None:
    body = Body(obj={"telemetry": {"time": 1, "_value": 2, "t": "warm"}}, received_at=datetime.now(UTC))
    result = parse(body, "pump-7")
    assert result.row is None
    letter = result.dead_letter(stage="connector.mqtt", source_topic="mqtt:devices/pump-7/telemetry")
    assert letter is not None
    assert letter.reason == ("no valid metric in reading: telemetry.time ('time' is not an allowed name);"
                             " telemetry._value ('_value' is not an allowed name);"
                             " telemetry.t (string 'warm' is not a number)")


def test_the_generated_bodies_reach_every_outcome() -> None:
    """The property above is only as good as its examples: each outcome must be drawn."""
    seen: set[str] = set()

    @settings(max_examples=300, deadline=None, database=None)
    @given(bodies())
    def outcomes(body: Body) -> None:
        try:
            result = parse(body, "pump-7")
        except BadTimestampError:
            seen.add("bad timestamp")
            return
        except BadMessageIdError:
            seen.add("bad messageId")
            return
        seen.add("no metric" if result.row is None else "partly rejected" if result.rejected
                 else "accepted whole")
        if result.row is not None and body.ts is None:
            seen.add("received time")

    outcomes()
    assert seen == {"bad timestamp", "bad messageId", "no metric", "partly rejected", "accepted whole",
                    "received time"}
