"""HTTP ingest without services: the body rules, the key rules and every refusal's answer.

The endpoint runs in Starlette's test client with PostgreSQL, Redis and Kafka
replaced by small fakes that behave as those do for these requests.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from api.device_hub import DeviceSockets
from api.device_keys import hash_api_key, new_api_key
from api.ingest import IngestConfig, IngestState, ingest_config, ingest_routes
from api.ingest_kafka import IngestProducer, KafkaUnavailable
from api.readings import InvalidReadings, parse_readings
from pipeline.producer import Outgoing, partition_for
from schemas.batch import decode_batch
from schemas.records import Telemetry

RECEIVED = datetime(2024, 5, 1, 12, 0, 1, tzinfo=UTC)
KEY, OTHER_KEY = "k" * 43, "o" * 43


def readings(body: object, **options: Any) -> list[Telemetry]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    options = {"device_id": "esp-1", "protocol": "http", "received_at": RECEIVED,
               "application_id": "plant-a", **options}
    return [row.telemetry() for row in parse_readings(raw, **options)]


def refusal(body: object, **options: Any) -> dict[str, Any]:
    with pytest.raises(InvalidReadings) as caught:
        readings(body, **options)
    return caught.value.detail()


# --- the body --------------------------------------------------------------------------------


def test_single_reading_keeps_the_registered_application_and_the_key_as_id() -> None:
    (reading,) = readings({"timestamp": 1714564800000, "telemetry": {"t": 21.5, "on": True},
                           "applicationId": "spoofed", "messageId": "body-id",
                           "metadata": {"batteryLevel": 50}}, idempotency_key="req-1")
    assert (reading.device_id, reading.protocol, reading.application_id, reading.message_id) == (
        "esp-1", "http", "plant-a", "req-1")
    assert dict(reading.metrics) == {"t": 21.5, "on": 1.0}
    assert reading.metadata.battery_level == 50.0


def test_array_readings_get_key_dash_index_ids() -> None:
    got = readings([{"t": 1}, {"t": 2, "timestamp": "2024-05-01T12:00:00Z"}], idempotency_key="b")
    assert [(r.message_id, r.metrics["t"]) for r in got] == [("b-0", 1.0), ("b-1", 2.0)]
    assert got[0].ts == RECEIVED and got[1].ts == datetime(2024, 5, 1, 12, tzinfo=UTC)


def test_array_items_without_a_timestamp_get_distinct_times() -> None:
    from datetime import timedelta

    got = readings([{"t": float(i)} for i in range(100)])
    assert [r.ts for r in got] == [RECEIVED + timedelta(microseconds=i) for i in range(100)]
    assert len({r.message_id for r in got}) == 100


def test_without_a_key_ids_are_derived_and_stable() -> None:
    first = readings([{"t": 1, "timestamp": 1714564800000}])
    again = readings([{"timestamp": 1714564800000, "t": 1}], received_at=datetime.now(UTC))
    assert first[0].message_id == again[0].message_id  # same reading, other key order


def test_a_string_metric_names_its_field_and_nothing_is_kept() -> None:
    assert refusal({"telemetry": {"t": 20.0, "mode": "manual"}}) == {
        "field": "telemetry.mode", "message": "string 'manual' is not a number",
        "errors": [{"index": None, "field": "telemetry.mode",
                    "message": "string 'manual' is not a number"}],
    }


def test_errors_of_an_array_name_the_index() -> None:
    detail = refusal([{"t": 1}, {"t": "x"}, 7])
    assert detail["field"] == "[1].t"
    assert [(e["index"], e["field"]) for e in detail["errors"]] == [(1, "t"), (2, "")]


@pytest.mark.parametrize(("body", "field", "message"), [
    (b"{nope", "body", "payload is not JSON: Expecting property name enclosed in double quotes at byte 1"),
    (b"[1,", "body", "body is not JSON: Expecting value at byte 3"),
    (b'"text"', "body", "payload is a JSON string, not an object"),
    (b"[]", "body", "the array holds no reading"),
    ({"timestamp": "yesterday", "t": 1}, "timestamp", "timestamp 'yesterday' is not an ISO-8601 time"),
    ({"messageId": "", "t": 1}, "messageId", "messageId must be a string of 1 to 128 characters"),
    ({"status": "ok"}, "telemetry", "the reading has no metric"),
    ({"metadata": {"location": {"lat": 91, "lon": 0}}, "t": 1}, "metadata.location",
     "location (91.0, 0.0) is out of range"),
])
def test_invalid_bodies(body: object, field: str, message: str) -> None:
    detail = refusal(body)
    assert detail["field"] == field
    assert detail["message"].startswith(message)


@pytest.mark.parametrize(("body", "field", "message"), [
    # no UTF-8 text can hold a lone surrogate, so no record can
    (b'{"t": 1, "status": "\\ud800"}', "body", "payload is not JSON: no low surrogate in string"),
    (b'[{"t": 1, "status": "\\udc00"}]', "body", "body is not JSON:"),
    # json reads NaN and 1e400 (orjson does not): they are values that are not numbers
    (b'{"t": NaN}', "t", "nan is not a finite number"),
    (b'[{"t": 1}, {"t": 1e400}]', "[1].t", "inf is not a finite number"),
    (b'\xef\xbb\xbf{"t": 1}', "body", "payload is not JSON: Unexpected UTF-8 BOM"),
])
def test_json_that_orjson_and_json_read_differently(body: bytes, field: str, message: str) -> None:
    detail = refusal(body)
    assert detail["field"] == field
    assert detail["message"].startswith(message)


def test_array_size_is_bounded() -> None:
    assert refusal([{"t": 1}] * 3, max_readings=2)["message"] == (
        "the array holds 3 readings; at most 2 per request")


# --- keys and configuration ------------------------------------------------------------------


def test_keys_are_random_and_stored_as_sha256() -> None:
    assert hash_api_key("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    keys = {new_api_key() for _ in range(100)}
    assert len(keys) == 100 and all(len(k) == 43 for k in keys)


def test_ingest_config_takes_declared_settings_and_defaults_the_rest() -> None:
    config = ingest_config(SimpleNamespace(ingest_rate_limit=5))  # type: ignore[arg-type]
    assert config == IngestConfig(rate_limit=5)


# --- the endpoint ----------------------------------------------------------------------------


@dataclass
class FakeDb:
    """devices(id, api_key_hash, application_id) as the key check queries it."""

    rows: dict[str, tuple[str, str | None]]

    @asynccontextmanager
    async def connection(self, **options: Any):  # type: ignore[no-untyped-def]
        yield self

    async def execute(self, sql: str, params: Sequence[Any]) -> Any:
        if "WHERE id =" in sql:
            row = self.rows.get(params[0])
            return SimpleNamespace(fetchone=_async(row))
        hit = any(stored == params[0] for stored, _ in self.rows.values())
        return SimpleNamespace(fetchone=_async((1,) if hit else None))


def _async(value: Any) -> Any:
    async def result() -> Any:
        return value
    return result


@dataclass
class FakeRedis:
    counts: dict[str, int] = field(default_factory=dict)
    values: dict[str, str] = field(default_factory=dict)

    async def eval(self, script: str, numkeys: int, key: str, *args: Any) -> list[int]:
        self.counts[key] = self.counts.get(key, 0) + 1
        return [self.counts[key], 60]

    async def set(self, key: str, value: str, **options: Any) -> str | None:
        earlier = self.values.get(key)
        if earlier is None:
            self.values[key] = value
        return earlier


@dataclass
class FakeProducer:
    sent: list[Outgoing] = field(default_factory=list)
    down: bool = False

    async def partitions(self, topic: str) -> int:
        if self.down:
            raise KafkaUnavailable(f"Kafka did not tell the partitions of {topic}")
        return 6

    async def send(self, records: Sequence[Outgoing]) -> None:
        if self.down:
            raise KafkaUnavailable("no Kafka broker is reachable")
        self.sent.extend(records)


@pytest.fixture
async def app() -> AsyncIterator[tuple[httpx.AsyncClient, FakeProducer, FakeRedis]]:
    producer, redis = FakeProducer(), FakeRedis()
    starlette = Starlette(routes=ingest_routes())
    starlette.state.services = SimpleNamespace(
        pool=FakeDb({"esp-1": (hash_api_key(KEY), "plant-a"),
                     "esp-2": (hash_api_key(OTHER_KEY), None)}), redis=redis)
    starlette.state.ingest = IngestState(producer, IngestConfig(max_body_bytes=1000, rate_limit=3),
                                         DeviceSockets())
    transport = httpx.ASGITransport(app=starlette)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        yield client, producer, redis


async def post(client: httpx.AsyncClient, body: Any, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await client.post("/api/devices/esp-1/telemetry", content=content, headers=headers)


async def test_accepted_readings_are_in_kafka_before_the_202(app: Any) -> None:
    client, producer, _ = app
    response = await post(client, [{"t": 1}, {"t": 2}], **{"X-API-Key": KEY, "Idempotency-Key": "r-1"})
    assert (response.status_code, response.json()) == (
        202, {"accepted": 2, "message_ids": ["r-1-0", "r-1-1"]})
    # one batch record for the request, in the partition Kafka gives the key "esp-1"
    (record,) = producer.sent
    assert (record.topic, record.key, record.partition) == (
        "telemetry.raw", None, partition_for("esp-1", 6))
    batch = decode_batch(record.value)
    assert (batch.message_id, batch.application_id, batch.protocol) == (
        ["r-1-0", "r-1-1"], ["plant-a"] * 2, ["http"] * 2)
    assert [dict(m) for m in batch.metrics] == [{"t": 1.0}, {"t": 2.0}]


async def test_a_retry_with_the_same_key_gives_identical_records(app: Any) -> None:
    client, producer, _ = app
    headers = {"X-API-Key": KEY, "Idempotency-Key": "same"}
    await post(client, {"t": 1}, **headers)
    await asyncio.sleep(0.01)
    await post(client, {"t": 1}, **headers)
    assert producer.sent[0].value == producer.sent[1].value


@pytest.mark.parametrize(("headers", "status", "error"), [
    ({}, 401, "missing API key"),
    ({"X-API-Key": "wrong"}, 401, "invalid API key"),
    ({"X-API-Key": OTHER_KEY}, 403, "API key of another device"),
])
async def test_keys(app: Any, headers: dict[str, str], status: int, error: str) -> None:
    client, producer, _ = app
    response = await post(client, {"t": 1}, **headers)
    assert (response.status_code, response.json()["error"]) == (status, error)
    if status == 401:
        assert response.headers["www-authenticate"] == 'ApiKey header="X-API-Key"'
    assert producer.sent == []


async def test_too_large_by_content_length_and_by_stream(app: Any) -> None:
    client, _, _ = app
    response = await post(client, b"{" + b" " * 1200 + b"}", **{"X-API-Key": KEY})
    assert (response.status_code, response.json()["error"]) == (413, "body too large")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
        yield b'{"t": 1,'
        yield b" " * 1200 + b"}"

    streamed = await client.post("/api/devices/esp-1/telemetry", content=chunks(),
                           headers={"X-API-Key": KEY})
    assert streamed.status_code == 413


async def test_422_names_the_field_and_rate_limit_429_says_when(app: Any) -> None:
    client, _, redis = app
    response = await post(client, {"telemetry": {"mode": "auto"}}, **{"X-API-Key": KEY})
    assert response.status_code == 422
    assert response.json()["detail"]["field"] == "telemetry.mode"
    bad_key = await post(client, {"t": 1}, **{"X-API-Key": KEY, "Idempotency-Key": "has space"})
    assert (bad_key.status_code, bad_key.json()["detail"]["field"]) == (422, "Idempotency-Key")
    assert (await post(client, {"t": 1}, **{"X-API-Key": KEY})).status_code == 202
    limited = await post(client, {"t": 1}, **{"X-API-Key": KEY})  # the 4th request of the window
    assert (limited.status_code, limited.headers["retry-after"]) == (429, "60")
    assert redis.counts == {"webscada:ratelimit:ingest:esp-1": 4}


async def test_kafka_down_is_503_with_retry_after(app: Any) -> None:
    client, producer, _ = app
    producer.down = True
    response = await post(client, {"t": 1}, **{"X-API-Key": KEY})
    assert (response.status_code, response.json()["error"], response.headers["retry-after"]) == (
        503, "Kafka unavailable", "1")


async def test_bad_json_is_a_4xx_never_a_500(app: Any) -> None:
    client, producer, _ = app
    for body in (b'{"t": 1, "status": "\\ud800"}', b'[{"t": NaN}]', b"\xff"):  # 3: the rate limit
        response = await post(client, body, **{"X-API-Key": KEY})
        assert (response.status_code, response.json()["error"]) == (422, "invalid reading"), body
    assert producer.sent == []


async def test_bad_device_id_is_422_once_a_key_is_given(app: Any) -> None:
    client, _, _ = app
    response = await client.post("/api/devices/-x/telemetry", json={"t": 1}, headers={"X-API-Key": KEY})
    assert (response.status_code, response.json()["detail"]["field"]) == (422, "device_id")


# --- the producer against no Kafka at all ----------------------------------------------------


async def test_producer_without_kafka_fails_within_the_ack_timeout() -> None:
    producer = IngestProducer("127.0.0.1:9", ack_timeout_s=0.5, message_timeout_ms=800)
    producer.start()
    try:
        started = time.monotonic()
        with pytest.raises(KafkaUnavailable):
            await producer.send([Outgoing("telemetry.raw", b"k", b"v")])
        assert time.monotonic() - started < 1.0
        await asyncio.sleep(1.5)  # statistics arrive: no broker up
        assert not producer.available
        started = time.monotonic()
        with pytest.raises(KafkaUnavailable):  # the probe goes out, the next fails at once
            await producer.send([Outgoing("telemetry.raw", b"k", b"v")])
        with pytest.raises(KafkaUnavailable, match="no Kafka broker is reachable"):
            await producer.send([Outgoing("telemetry.raw", b"k", b"v")])
        assert time.monotonic() - started < 1.0
    finally:
        await asyncio.to_thread(producer.close, 0.5)
