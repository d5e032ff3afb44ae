"""The Redis latest-value sink against the real Redis: one script call per device per batch."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import pytest
import redis

from pipeline.settings import Settings
from pipeline.sinks.redis import RedisLatestSink
from schemas import Location, Telemetry, TelemetryMetadata, iso_utc, utcnow
from schemas.batch import ReadingBatch, iso_micros
from schemas.latest import TIMES_KEY
from tests.conftest import unique_id
from tests.integration.helpers import redis_latest

pytestmark = pytest.mark.integration


def reading(device: str, seconds_ago: float, **metrics: float) -> Telemetry:
    ts = utcnow() - timedelta(seconds=seconds_ago)
    return Telemetry(device_id=device, protocol="mqtt", ts=ts, received_at=ts,
                     message_id=f"{device}-{seconds_ago}", metrics=metrics)


@pytest.fixture
async def sink(stack: Settings) -> AsyncIterator[RedisLatestSink]:
    sink = RedisLatestSink(url=stack.redis_url, ttl_s=120)
    await sink.setup()
    yield sink
    await sink.close()


async def test_batch_out_of_order_keeps_newest_values_of_every_metric(
    sink: RedisLatestSink, stack: Settings
) -> None:
    a, b = unique_id("rs"), unique_id("rs")
    newest = reading(a, 1, temperature=3.0)
    batch = [newest, reading(b, 5, level=7.0), reading(a, 3, temperature=1.0, humidity=50.0),
             reading(a, 2, temperature=2.0)]
    await sink.write(ReadingBatch.of(batch))
    assert redis_latest(stack, a) == {"ts": iso_utc(newest.ts), "protocol": "mqtt", "temperature": "3.0",
                                "humidity": "50.0"}
    assert redis_latest(stack, b)["level"] == "7.0"
    # A later batch of an older reading overwrites no newer value, but brings a metric the
    # device had not reported since; a newer reading moves the values it carries.
    older = reading(a, 10, temperature=-1.0, pressure=1.0)
    await sink.write(ReadingBatch.of([older]))
    stored = redis_latest(stack, a)
    assert (stored["temperature"], stored["pressure"], stored["ts"]) == ("3.0", "1.0", iso_utc(newest.ts))
    assert redis_times(stack, a)["pressure"] == iso_utc(older.ts)
    newer = reading(a, 0, temperature=4.0)
    await sink.write(ReadingBatch.of([newer]))
    stored = redis_latest(stack, a)
    assert stored["temperature"] == "4.0" and stored["ts"] == iso_utc(newer.ts)


async def test_many_readings_of_one_device_span_several_calls(
    sink: RedisLatestSink, stack: Settings
) -> None:
    device = unique_id("rs")
    batch = [reading(device, 1000 - i, seq=float(i)) for i in range(450)]
    await sink.write(ReadingBatch.of(list(reversed(batch))))
    assert redis_latest(stack, device)["seq"] == "449.0"


async def test_script_flushed_by_redis_is_loaded_again(sink: RedisLatestSink, stack: Settings) -> None:
    from pipeline.errors import TransientSinkError

    device = unique_id("rs")
    await sink.write(ReadingBatch.of([reading(device, 2, level=1.0)]))
    client = redis.Redis.from_url(stack.redis_url)
    client.script_flush()
    client.close()
    with pytest.raises(TransientSinkError):
        await sink.write(ReadingBatch.of([reading(device, 1, level=2.0)]))
    await sink.write(ReadingBatch.of([reading(device, 1, level=2.0)]))  # the retry write_batch would make
    assert redis_latest(stack, device)["level"] == "2.0"


async def test_each_metric_keeps_its_own_time(sink: RedisLatestSink, stack: Settings) -> None:
    device = unique_id("rs")
    first = reading(device, 30, level=1.0, flow=1.0)
    second = reading(device, 10, level=2.0)
    await sink.write(ReadingBatch.of([first, second]))
    assert redis_times(stack, device) == {"level": iso_utc(second.ts), "flow": iso_utc(first.ts)}
    late = reading(device, 20, level=9.0, flow=5.0, valve=1.0)  # between the two
    await sink.write(ReadingBatch.of([late]))
    stored = redis_latest(stack, device)
    assert (stored["level"], stored["flow"], stored["valve"]) == ("2.0", "5.0", "1.0")
    assert stored["ts"] == iso_utc(second.ts)  # the newest reading's time
    assert redis_times(stack, device) == {"level": iso_utc(second.ts), "flow": iso_utc(late.ts),
                                          "valve": iso_utc(late.ts)}
    client = redis.Redis.from_url(stack.redis_url)
    try:
        assert 0 < int(client.ttl(TIMES_KEY.format(device_id=device))) <= 120  # type: ignore[arg-type]
    finally:
        client.close()


async def test_location_and_gateway_are_in_the_latest_view(sink: RedisLatestSink,
                                                           stack: Settings) -> None:
    device = unique_id("rs")
    record = Telemetry(device_id=device, protocol="lorawan", ts=utcnow(), received_at=utcnow(),
                       message_id="loc", metrics={"level": 1.0},
                       metadata=TelemetryMetadata(location=Location(52.5, 4.25), gateway_id="gw-9"))
    await sink.write(ReadingBatch.of([record]))
    stored = redis_latest(stack, device)
    assert (stored["location_lat"], stored["location_lon"], stored["gateway_id"]) == ("52.5", "4.25", "gw-9")


def redis_times(stack: Settings, device: str) -> dict[str, str]:
    """Each metric's time as the times hash keeps it (µs since 1970), as ISO-8601."""
    client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    try:
        stored: dict[str, str] = client.hgetall(TIMES_KEY.format(device_id=device))  # type: ignore[assignment]
    finally:
        client.close()
    assert all(micros.isdigit() for micros in stored.values()), stored
    return {name: iso_micros(int(micros)) for name, micros in stored.items()}


def _random_readings(rng: random.Random, device: str, base: datetime) -> list[Telemetry]:
    """40 readings within one second (many sharing a time), sparse metrics and envelope
    fields (so rare, at times, that the newest reading carrying one is older than the hash)."""
    rare = rng.choice([0.03, 0.1, 0.4])
    readings = []
    for n in range(40):
        ts = base + timedelta(milliseconds=rng.randrange(10) * 100)
        names = rng.sample(["a", "b", "c", "d"], rng.randrange(1, 4))
        location = (Location(rng.uniform(-80, 80), rng.uniform(-170, 170))
                    if rng.random() < rare else None)
        metadata = TelemetryMetadata(
            signal_strength=float(rng.randrange(-90, -40)) if rng.random() < rare else None,
            gateway_id=f"gw{rng.randrange(3)}" if rng.random() < rare else None, location=location)
        readings.append(Telemetry(
            device_id=device, protocol="mqtt", ts=ts, received_at=ts, message_id=f"m{n}",
            metrics={name: float(rng.randrange(100)) for name in names}, metadata=metadata,
            status=f"s{n}" if rng.random() < rare else None))
    return readings


def _expected(readings: list[Telemetry]) -> tuple[dict[str, str], dict[str, str]]:
    """The latest hash and times hash the rule of schemas.latest gives, reading by reading
    in the order given: envelope fields and ``ts`` from a reading not older than ``ts``,
    each metric from a reading not older than that metric's time."""
    fields: dict[str, str] = {}
    times: dict[str, str] = {}
    for one in readings:
        at = iso_utc(one.ts)
        if "ts" not in fields or at >= fields["ts"]:
            fields.update(ts=at, protocol=one.protocol)
            meta = one.metadata
            for name, value in (("status", one.status), ("gateway_id", meta.gateway_id)):
                if value is not None:
                    fields[name] = value
            if meta.signal_strength is not None:
                fields["signal_strength"] = repr(meta.signal_strength)
            if meta.location is not None:
                fields["location_lat"] = repr(meta.location.lat)
                fields["location_lon"] = repr(meta.location.lon)
        for name, value in one.metrics.items():
            if name not in times or at >= times[name]:
                fields[name], times[name] = repr(value), at
    return fields, times


async def test_one_batch_leaves_what_its_readings_written_one_by_one_leave(
    sink: RedisLatestSink, stack: Settings
) -> None:
    # The sink folds a device's readings before Redis sees them; the hashes must be those
    # that writing every reading on its own, in time order, leaves, and what the rule says:
    # every field from the newest reading that carried it, nothing older than the hash's.
    base = utcnow() - timedelta(minutes=5)
    for seed in range(12):
        folded_id, single_id = unique_id("rf"), unique_id("rs")
        # what an earlier batch left, mid-way in time
        earlier = Telemetry(device_id=folded_id, protocol="http", ts=base + timedelta(milliseconds=450),
                            received_at=base, message_id="seed", metrics={"a": -1.0, "e": -2.0},
                            status="old")
        for device in (folded_id, single_id):
            await sink.write(ReadingBatch.of([Telemetry(
                device_id=device, protocol=earlier.protocol, ts=earlier.ts, received_at=base,
                message_id="seed", metrics=dict(earlier.metrics), status=earlier.status)]))
        # the same readings under both ids: shuffled in one batch, and one by one
        rng = random.Random(seed)
        folded = _random_readings(rng, folded_id, base)
        rng.shuffle(folded)
        await sink.write(ReadingBatch.of(folded))
        # oldest first; of two readings with the same time the later in the batch wins
        in_time = sorted(folded, key=lambda r: r.ts)
        for one in in_time:
            await sink.write(ReadingBatch.of([Telemetry(
                device_id=single_id, protocol=one.protocol, ts=one.ts, received_at=one.received_at,
                message_id=one.message_id, metrics=dict(one.metrics), metadata=one.metadata,
                status=one.status)]))
        assert redis_latest(stack, folded_id) == redis_latest(stack, single_id)
        assert redis_times(stack, folded_id) == redis_times(stack, single_id)
        assert (redis_latest(stack, folded_id), redis_times(stack, folded_id)) == _expected(
            [earlier, *in_time])
