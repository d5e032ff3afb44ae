"""The Redis latest-value sink against the real Redis: one script call per device per batch."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import redis

from pipeline.settings import Settings
from pipeline.sinks.redis import RedisLatestSink
from schemas import Location, Telemetry, TelemetryMetadata, iso_utc, utcnow
from schemas.batch import ReadingBatch
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
    client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    try:
        return client.hgetall(TIMES_KEY.format(device_id=device))  # type: ignore[return-value]
    finally:
        client.close()
