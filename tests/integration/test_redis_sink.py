"""The Redis latest-value sink against the real Redis: one script call per device per batch."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import redis

from pipeline.settings import Settings
from pipeline.sinks.redis import RedisLatestSink
from schemas import Telemetry, iso_utc, utcnow
from schemas.batch import ReadingBatch
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
    # A later batch of older readings changes nothing; a newer one does.
    await sink.write(ReadingBatch.of([reading(a, 10, temperature=-1.0, pressure=1.0)]))
    assert redis_latest(stack, a)["temperature"] == "3.0" and "pressure" not in redis_latest(stack, a)
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
