"""The validate agent's routing, on events as Faust hands them over (no services)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pipeline.agents.profiles import MetricLimits, ProfileCache, RecentIds, limits_from_json, split_metrics
from pipeline.agents.validate import Validator
from pipeline.producer import partition_for
from pipeline.settings import Settings, Topics
from schemas import DeadLetter, Telemetry, utcnow
from schemas.batch import ReadingBatch, decode_batch, to_micros


@dataclass
class _Message:
    key: bytes | None
    value: bytes
    topic: str = Topics.RAW
    partition: int = 2
    offset: int = 40


@dataclass
class _Event:
    message: _Message


def _reading(device: str = "d1", message_id: str = "m1", **metrics: float) -> Telemetry:
    now = utcnow()
    return Telemetry(device_id=device, protocol="mqtt", ts=now, received_at=now, message_id=message_id,
                     metrics=metrics or {"temperature": 20.0})


def _validator(*, auto_register: bool = True, limits: dict[str, Any] | None = None,
               known: set[str] | None = None) -> Validator:
    cache = ProfileCache("unused")
    cache.limits = {"d1": limits_from_json(limits or {})}
    cache.known_devices = known or set()
    cache.loaded = True
    return Validator(Settings(auto_register=auto_register), cache)


def _route(validator: Validator, *records: Telemetry | bytes) -> list[tuple[str, Any]]:
    events = [_Event(_Message(r.device_id.encode() if isinstance(r, Telemetry) else None,
                              r.encode() if isinstance(r, Telemetry) else r)) for r in records]
    out: list[tuple[str, Any]] = []
    for item in validator.route(events):  # type: ignore[arg-type]
        if item.topic == Topics.DLQ:
            out.append((item.topic, DeadLetter.decode(item.value)))
        else:
            batch = decode_batch(item.value)
            out += [(item.topic, batch.telemetry(i)) for i in range(len(batch))]
    return out


def _batch_event(*records: Telemetry, partition: int) -> _Event:
    return _Event(_Message(None, ReadingBatch.of(records).encode(), partition=partition))


def test_valid_reading_passes_unchanged() -> None:
    record = _reading()
    assert _route(_validator(), record) == [(Topics.VALID, record)]


def test_out_of_range_metric_goes_to_dlq_and_the_rest_passes() -> None:
    record = _reading(temperature=150.0, humidity=40.0)
    routed = _route(_validator(limits={"temperature": {"unit": "°C", "min": -40, "max": 125}}), record)
    assert [topic for topic, _ in routed] == [Topics.DLQ, Topics.VALID]
    letter = routed[0][1]
    assert letter.reason == "out of profile range: temperature 150.0 is above the maximum 125.0"
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == (Topics.RAW, 2, 40)
    assert letter.payload == record.encode()
    assert dict(routed[1][1].metrics) == {"humidity": 40.0}


def test_all_metrics_out_of_range_sends_only_a_dead_letter() -> None:
    routed = _route(_validator(limits={"temperature": {"min": 0}}), _reading(temperature=-3.0))
    assert [topic for topic, _ in routed] == [Topics.DLQ]
    assert routed[0][1].reason == (
        "no metric within its profile range: temperature -3.0 is below the minimum 0.0"
    )


def test_duplicate_message_id_is_dropped() -> None:
    validator = _validator()
    first = _reading(message_id="same", level=1.0)
    again = _reading(message_id="same", level=2.0)
    assert _route(validator, first, again) == [(Topics.VALID, first)]


def test_rejected_reading_is_not_remembered_so_a_replay_passes() -> None:
    validator = _validator(limits={"temperature": {"max": 10}})
    record = _reading(message_id="r1", temperature=50.0)
    assert [t for t, _ in _route(validator, record)] == [Topics.DLQ]
    validator._profiles.limits = {}  # the fix: the profile was corrected
    assert _route(validator, record) == [(Topics.VALID, record)]


def test_unknown_device_when_auto_register_is_off() -> None:
    routed = _route(_validator(auto_register=False, known={"other"}), _reading())
    assert routed[0][0] == Topics.DLQ
    assert routed[0][1].reason == "unknown device"
    known = _reading()
    assert _route(_validator(auto_register=False, known={"d1"}), known) == [(Topics.VALID, known)]


def test_undecodable_and_future_values_are_dead_lettered() -> None:
    routed = _route(_validator(), b"\xc3\x01garbage!!")
    assert routed[0][1].reason.startswith("writer schema fingerprint 67617262616765")
    now = datetime.now(UTC)
    future = Telemetry(device_id="d1", protocol="mqtt", ts=now + timedelta(hours=1), received_at=now,
                       message_id="f", metrics={"x": 1.0})
    assert "in the future" in _route(_validator(), future)[0][1].reason


def test_limits_parsing_ignores_malformed_entries() -> None:
    assert limits_from_json({"t": {"unit": "K", "min": 1, "max": "high"}, "bad": 3}) == {
        "t": MetricLimits(unit="K", min=1.0, max=None)
    }
    assert split_metrics({"t": 5.0}, {}) == ({"t": 5.0}, {})


def test_recent_ids_keep_the_last_size_and_forget_the_oldest() -> None:
    for bulk in (False, True):
        recent = RecentIds(size=3)
        for n in range(20):
            if bulk:
                recent.remember_all([n])
            else:
                recent.remember(n)
            assert all(k in recent for k in range(max(0, n - 2), n + 1))  # the last 3, always
            assert not any(k in recent for k in range(0, n - 5))  # never more than 6
        assert recent.known([19, 19, 18, 0, 1]) == 2


def test_the_same_message_id_from_two_devices_is_two_readings() -> None:
    validator = _validator()
    one, other = _reading("d1", message_id="1"), _reading("d2", message_id="1")
    assert _route(validator, one, other) == [(Topics.VALID, one), (Topics.VALID, other)]
    assert _route(validator, _reading("d2", message_id="1")) == []  # the repeat of d2's "1"


def test_a_poison_reading_in_a_batch_goes_to_the_dlq_alone() -> None:
    good = [_reading("d1", message_id=f"g{i}", level=float(i)) for i in range(3)]
    now = utcnow()
    bad = Telemetry(device_id="d1", protocol="mqtt", ts=now + timedelta(days=2), received_at=now,
                    message_id="late", metrics={"level": 9.0})
    event = _batch_event(good[0], bad, good[1], good[2], partition=partition_for("d1", 6))
    out = _validator().route([event])  # type: ignore[list-item]
    letters = [DeadLetter.decode(o.value) for o in out if o.topic == Topics.DLQ]
    assert len(letters) == 1
    assert "in the future" in letters[0].reason
    assert letters[0].details["message_id"] == "late"
    assert letters[0].details["batch_index"] == "1"
    assert (letters[0].source_partition, letters[0].source_offset) == (partition_for("d1", 6), 40)
    assert decode_batch(letters[0].payload).telemetry(0) == bad  # the reading alone, replayable
    passed = [o for o in out if o.topic == Topics.VALID]
    assert [o.partition for o in passed] == [partition_for("d1", 6)]
    batch = decode_batch(passed[0].value)
    assert [batch.telemetry(i) for i in range(len(batch))] == good  # in order


def test_a_large_clean_batch_is_forwarded_as_it_came_to_the_same_partition() -> None:
    records = [_reading("d1", message_id=f"c{i}") for i in range(300)]
    event = _batch_event(*records, partition=partition_for("d1", 6))
    [out] = _validator().route([event])  # type: ignore[list-item]
    assert (out.topic, out.partition, out.value) == (Topics.VALID, event.message.partition,
                                                     event.message.value)


def test_small_batches_of_a_partition_are_merged_into_one_record() -> None:
    devices = [f"m-{i}" for i in range(40) if partition_for(f"m-{i}", 6) == 1][:3]
    events = [_batch_event(_reading(device, message_id="x"), partition=1) for device in devices]
    [out] = _validator().route(events)  # type: ignore[arg-type]
    assert out.partition == 1
    assert decode_batch(out.value).device_id == devices


def test_readings_are_regrouped_by_their_own_partition() -> None:
    devices = [f"dev-{i}" for i in range(20)]
    records = [_reading(device, message_id="m") for device in devices]
    out = _validator().route([_batch_event(*records, partition=0)])  # type: ignore[list-item]
    seen: dict[str, int] = {}
    for item in out:
        batch = decode_batch(item.value)
        for device in batch.device_id:
            seen[device] = item.partition
    assert seen == {device: partition_for(device, 6) for device in devices}
    assert len({partition_for(device, 6) for device in devices}) == len(out) > 1


def test_a_reading_before_1970_is_dead_lettered() -> None:
    early = Telemetry(device_id="d1", protocol="mqtt", ts=datetime(1969, 12, 31, tzinfo=UTC),
                      received_at=utcnow(), message_id="old", metrics={"x": 1.0})
    [(topic, letter)] = _route(_validator(), ReadingBatch.of([early]).encode())
    assert topic == Topics.DLQ and "before 1970" in letter.reason


def test_readings_of_one_device_at_one_instant_are_counted() -> None:
    from pipeline.agents.validate import SAME_TIME

    validator = _validator()
    first = _reading("d1", message_id="a", level=1.0)
    same_instant = Telemetry(device_id="d1", protocol="mqtt", ts=first.ts, received_at=first.ts,
                             message_id="b", metrics={"flow": 2.0})
    before = SAME_TIME._value.get()
    assert len(_route(validator, first, same_instant)) == 2  # both pass: the stores merge them
    assert SAME_TIME._value.get() == before + 1


def test_whole_batch_checks_route_as_reading_by_reading_checks() -> None:
    # The validator checks a batch on whole columns when it can and reading by reading when
    # something is wrong; both must route every reading alike. Random batches with
    # repeated identities, repeated instants, out-of-range metrics, unknown devices, future
    # and pre-1970 times, bad names and values, against a validator that always goes
    # reading by reading.
    from pipeline.agents.validate import DUPLICATES, SAME_TIME

    rng = random.Random(7)
    base = utcnow() - timedelta(minutes=1)
    for auto_register in (True, False):
        events = []
        for n in range(60):
            batch = ReadingBatch()
            for _ in range(rng.randrange(1, 12)):
                ts = base + timedelta(seconds=rng.randrange(30))
                odd = rng.random()
                if odd < 0.03:
                    ts = datetime(1969, 1, 1, tzinfo=UTC)
                elif odd < 0.06:
                    ts = utcnow() + timedelta(hours=1)
                metrics = {"temperature": float(rng.randrange(-50, 150)), "flow": 1.0}
                if rng.random() < 0.03:
                    metrics = {"time": 1.0} if rng.random() < 0.5 else {"x": math.nan}
                batch.append(device_id=rng.choice(["d1", "d2", "d3", "stranger"]),
                             protocol=rng.choice(["mqtt", "http"]), ts=to_micros(ts),
                             received_at=to_micros(ts), message_id=str(rng.randrange(40)),
                             metrics=metrics)
            events.append(_Event(_Message(None, batch.encode(), offset=n)))
        routes = []
        for whole_batches in (True, False):
            validator = _validator(auto_register=auto_register, known={"d1", "d2", "d3"},
                                   limits={"temperature": {"min": -40, "max": 125}})
            if not whole_batches:
                validator._all_pass = lambda *_: False  # type: ignore[method-assign]
            counters = (DUPLICATES._value.get(), SAME_TIME._value.get())
            out = []
            for start in range(0, len(events), 7):
                for item in validator.route(events[start:start + 7]):  # type: ignore[arg-type]
                    if item.topic == Topics.DLQ:
                        letter = DeadLetter.decode(item.value)
                        out.append((item.topic, letter.reason, letter.source_offset, letter.payload))
                    else:
                        readings = decode_batch(item.value)
                        out += [(item.topic, item.partition, readings.json(i)) for i in range(len(readings))]
            routes.append((out, DUPLICATES._value.get() - counters[0], SAME_TIME._value.get() - counters[1]))
        assert routes[0] == routes[1]
        assert routes[0][1] > 0 and routes[0][2] > 0
        assert any(topic == Topics.DLQ for topic, *_ in routes[0][0])


def _claiming(device: str, message_id: str, application_id: str | None) -> Telemetry:
    now = utcnow()
    return Telemetry(device_id=device, protocol="mqtt", ts=now, received_at=now, message_id=message_id,
                     metrics={"temperature": 20.0}, application_id=application_id)


def test_the_registry_wins_over_the_application_a_reading_claims() -> None:
    validator = _validator()
    validator._profiles.applications = {"d1": "plant-a"}
    spoofed, silent = _claiming("d1", "s1", "plant-b"), _claiming("d1", "s2", None)
    own, stranger = _claiming("d1", "s3", "plant-a"), _claiming("d9", "s4", "plant-b")
    for records in ([spoofed, silent, own, stranger],  # single records
                    [ReadingBatch.of([spoofed, silent, own, stranger])]):  # one batch record
        validator._recent = RecentIds()
        events = [_Event(_Message(None, r.encode()))
                  for r in records]
        passed = [decode_batch(item.value) for item in validator.route(events)  # type: ignore[arg-type]
                  if item.topic == Topics.VALID]
        apps = {batch.message_id[i]: batch.application_id[i] for batch in passed
                for i in range(len(batch))}
        assert apps == {"s1": "plant-a", "s2": "plant-a", "s3": "plant-a", "s4": "plant-b"}
