"""Soak: 30 devices on every ingest path for two minutes, and nothing accepted is lost.

The last check of issue 11 ("nothing lost"). Devices send as real ones do: MQTT
and GSM devices publish QoS 1 to Mosquitto, ChirpStack publishes LoRaWAN
uplinks, HTTP devices post single readings and arrays (some with an
Idempotency-Key, retrying on 503/429), WebSocket devices send frames. Every
device numbers its messages from 1, so message ids collide across devices all
the time; some readings come without a time, and some are bad on purpose
(a reserved metric name, a time far in the future). Afterwards, exactly:

    points in InfluxDB == readings PUBACKed or answered 202 - readings dead-lettered

where a reading counts as dead-lettered when it was refused whole: a dead letter
that only reports dropped fields (a reserved metric beside good ones, a bad IMEI)
leaves its reading stored. The dead letters are exactly the bad readings sent
over the MQTT family (HTTP and WebSocket answer those 422 and keep nothing);
every device has its Redis latest hash and PostgreSQL row, and both agree with
InfluxDB's newest point.

Shares the stack with the other disruptive tests; run alone:

    flock -x /tmp/webscada-stack.lock .venv/bin/pytest -m disruptive tests/integration/test_soak.py

``WEBSCADA_SOAK_S`` shortens (or lengthens) the two minutes for a local run.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import random
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition
from influxdb_client import InfluxDBClient
from websockets.asyncio.client import connect as ws_connect

from pipeline.mqtt_accounts import login
from pipeline.settings import Settings, Topics
from schemas import CodecError, DeadLetter, InvalidRecordError, iso_utc
from schemas.batch import decode_batch
from tests.conftest import WorkerProcess, unique_id, wait_until
from tests.integration.conftest import ApiServer
from tests.integration.helpers import redis_latest
from tests.integration.live import create_device, publish

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.disruptive]

SOAK_S = float(os.environ.get("WEBSCADA_SOAK_S", "120"))
PATHS = ("mqtt", "gsm", "lorawan", "http", "websocket")
DEVICES_PER_PATH = 6  # 30 devices
PAUSE_S = (0.3, 0.7)  # between a device's messages: ~2 a second, ~90 readings/s in all
DRAIN_TIMEOUT_S = 300.0
STALL_S = 60.0  # no new point for this long: the stores are done
IMEI = "490154203237518"  # Luhn check digit right
BAD_IMEI = "490154203237519"
# Connector codes of dead letters whose reading was still stored (with its other values).
PARTIAL = "rejected_fields"

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Starter = Callable[..., subprocess.Popen[bytes]]


@dataclass
class Device:
    """One simulated device and what became of each of its messages.

    ``number`` counts the readings it made, from 1 on every device: each reading's
    ``seq`` metric and, mostly, its message id. ``accepted`` maps the message id of
    each reading the path took (PUBACK, or 202 / ``ok`` frame) to its ``seq``;
    ``dead`` and ``partial`` hold the message ids of readings sent bad on purpose:
    rejected whole (a dead letter, no point) or in part (a dead letter and a point).
    """

    device_id: str
    path: str
    rng: random.Random
    key: str = ""  # API key (HTTP, WebSocket)
    number: int = 0
    accepted: dict[str, int | None] = field(default_factory=dict)
    dead: set[str] = field(default_factory=set)
    partial: set[str] = field(default_factory=set)
    refused: int = 0  # readings answered 422 (HTTP, WebSocket)
    retried: int = 0  # requests or frames sent again after a 429, a 503 or a broken connection
    unanswered: list[str] = field(default_factory=list)
    published: dict[int, tuple[str, int | None]] = field(default_factory=dict)  # MQTT mid -> reading
    acked: set[int] = field(default_factory=set)

    def next(self) -> int:
        self.number += 1
        return self.number


@dataclass
class Soak:
    settings: Settings
    base_ms: int  # device times of readings that carry one: base_ms + 10 * seq
    application: str  # the LoRaWAN application of the ChirpStack devices
    devices: list[Device]

    def ts_ms(self, seq: int) -> int:
        return self.base_ms + 10 * seq

    def iso(self, seq: int, rng: random.Random) -> str:
        zone = timezone(timedelta(minutes=rng.choice([0, 120, -330, 345])))
        moment = EPOCH + timedelta(milliseconds=self.ts_ms(seq))
        return moment.astimezone(zone).isoformat(timespec="milliseconds")

    def far_future_ms(self) -> int:
        return int(time.time() * 1000) + 86_400_000


# --- the MQTT family: MQTT, GSM, LoRaWAN (ChirpStack) ------------------------------------------


def _kind(rng: random.Random) -> str:
    return rng.choices(["good", "flat", "untimed", "partial", "reserved", "future"],
                       weights=[45, 10, 25, 8, 6, 6])[0]


def mqtt_body(soak: Soak, dev: Device, kind: str, n: int) -> dict[str, Any]:
    rng = dev.rng
    reading: dict[str, Any] = {"messageId": n if rng.random() < 0.5 else str(n)}
    values: dict[str, Any] = {"seq": n, "temperature": round(rng.uniform(-20, 60), 2)}
    if kind == "partial":
        values["time"] = n  # reserved: dropped, the rest kept
    elif kind == "reserved":
        values = {"time": n, "status": 3}  # nothing a store may keep as a metric
    if kind == "future":
        reading["timestamp"] = soak.far_future_ms()
    elif kind != "untimed":
        reading["timestamp"] = soak.ts_ms(n) if rng.random() < 0.5 else soak.iso(n, rng)
    if kind == "flat":
        reading.update(values)
    else:
        reading["telemetry"] = values
        reading["metadata"] = {"signalStrength": rng.randint(-90, -50), "batteryLevel": 80}
    if dev.path == "gsm":
        reading["csq"] = rng.randint(0, 31)
        reading["imei"] = BAD_IMEI if kind == "partial" and rng.random() < 0.5 else IMEI
    return reading


def lorawan_uplink(soak: Soak, dev: Device, kind: str, n: int) -> dict[str, Any]:
    rng = dev.rng
    values: dict[str, Any] = {"seq": n, "temperature": round(rng.uniform(-20, 60), 2)}
    if kind == "partial":
        values["time"] = n
    elif kind == "reserved":
        values = {"time": n}
    up: dict[str, Any] = {
        "deduplicationId": str(n),
        "deviceInfo": {"tenantId": "52f14cd4-c6f1-4fbd-8f87-4025e1d49242", "tenantName": "ChirpStack",
                       "applicationId": soak.application, "applicationName": "soak",
                       "deviceProfileId": "14855bf7-d10d-4aee-b618-ebfcb64dc7ad",
                       "deviceProfileName": "JS codec", "deviceName": "soak sensor",
                       "devEui": dev.device_id, "tags": {}},
        "devAddr": "00189440", "dr": 5, "fCnt": n, "fPort": 2, "object": values,
        "rxInfo": [{"gatewayId": "0016c001f153a14c", "rssi": rng.randint(-110, -50), "snr": 7.5}],
        "txInfo": {"frequency": 868100000},
    }
    if kind == "future":
        up["time"] = iso_utc(EPOCH + timedelta(milliseconds=soak.far_future_ms()))
    elif kind not in ("untimed", "flat"):
        up["time"] = soak.iso(n, rng)
    return up


def mqtt_client(settings: Settings, dev: Device) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=unique_id("soak-pub"))
    login(client, settings, "simulator")
    client.on_publish = lambda c, u, mid, rc, p: dev.acked.add(mid)
    client.connect(settings.mqtt_host, settings.mqtt_port)
    client.loop_start()
    return client


async def mqtt_device(soak: Soak, dev: Device, until: float) -> None:
    client = mqtt_client(soak.settings, dev)
    try:
        while time.monotonic() < until:
            kind, n = _kind(dev.rng), dev.next()
            if dev.path == "lorawan":
                topic = f"application/{soak.application}/device/{dev.device_id}/event/up"
                body = lorawan_uplink(soak, dev, kind, n)
            else:
                topic = f"{'gsm' if dev.path == 'gsm' else 'devices'}/{dev.device_id}/telemetry"
                body = mqtt_body(soak, dev, kind, n)
            if kind in ("reserved", "future"):
                dev.dead.add(str(n))
            elif kind == "partial":
                dev.partial.add(str(n))
            info = client.publish(topic, json.dumps(body), qos=1)
            dev.published[info.mid] = (str(n), None if kind == "reserved" else n)
            await asyncio.sleep(dev.rng.uniform(*PAUSE_S))
        # accepted: what the broker acknowledged (PUBACK)
        for _ in range(300):  # up to 60 s
            if dev.acked.issuperset(dev.published):
                break
            await asyncio.sleep(0.2)
        for mid, (message_id, seq) in dev.published.items():
            if mid in dev.acked:
                dev.accepted[message_id] = seq
            else:
                dev.unanswered.append(message_id)
    finally:
        client.loop_stop()
        client.disconnect()


# --- HTTP and WebSocket -------------------------------------------------------------------------


def api_request(soak: Soak, dev: Device) -> tuple[Any, list[tuple[str, int]], str | None, str | None]:
    """A body (one reading or an array), its readings as (message id, seq), the Idempotency-Key
    (HTTP, sometimes) and, for a body bad on purpose, the field the 422 must name."""
    rng = dev.rng
    size = 1 if rng.random() < 0.5 else rng.randint(2, 6)
    key = f"r{dev.number + 1}" if dev.path == "http" and rng.random() < 0.3 else None
    items: list[dict[str, Any]] = []
    readings: list[tuple[str, int]] = []
    bad: str | None = None
    for i in range(size):
        n = dev.next()
        item: dict[str, Any] = {"messageId": str(n),
                                "telemetry": {"seq": n, "temperature": round(rng.uniform(-20, 60), 2)}}
        roll = rng.random()
        if roll < 0.3:
            pass  # no time: the time it was received (plus its index in an array, in µs)
        elif roll < 0.6:
            item["timestamp"] = soak.iso(n, rng)
        else:
            item["timestamp"] = soak.ts_ms(n)
        if bad is None and rng.random() < 0.04:
            where = "" if size == 1 else f"[{i}]."
            if rng.random() < 0.5:
                item["telemetry"]["time"] = 1.0
                bad = f"{where}telemetry.time"
            else:
                item["timestamp"] = soak.far_future_ms()
                bad = f"{where}timestamp"
        items.append(item)
        message_id = str(n) if key is None else key if size == 1 else f"{key}-{i}"
        readings.append((message_id, n))
    return (items[0] if size == 1 else items), readings, key, bad


def _accept(dev: Device, answer_ids: list[str], readings: list[tuple[str, int]]) -> None:
    assert answer_ids == [message_id for message_id, _ in readings], (dev.device_id, answer_ids)
    for message_id, seq in readings:
        dev.accepted[message_id] = seq


async def http_device(soak: Soak, dev: Device, http: httpx.AsyncClient, until: float) -> None:
    url = f"/api/devices/{dev.device_id}/telemetry"
    while time.monotonic() < until:
        body, readings, key, bad = api_request(soak, dev)
        headers = {"X-API-Key": dev.key, **({"Idempotency-Key": key} if key else {})}
        content = json.dumps(body)
        retry = key is not None and bad is None and dev.rng.random() < 0.1
        status = 0
        answer_body: Any = None
        for _ in range(20):  # a device retries what was not answered, with the same key
            try:
                response = await http.post(url, content=content, headers=headers)
            except httpx.TransportError:
                dev.retried += 1
                await asyncio.sleep(0.5)
                continue
            status, answer_body = response.status_code, response.json()
            if status in (202, 422) and not (status == 202 and retry):
                break
            if status in (429, 503):
                dev.retried += 1
            retry = False  # a 202 answered again: the readings must not be doubled
            await asyncio.sleep(1.0 if status in (429, 503) else 0.1)
        if status == 202:
            assert answer_body["accepted"] == len(readings), answer_body
            _accept(dev, answer_body["message_ids"], readings)
        elif status == 422 and bad is not None:
            assert answer_body["detail"]["field"] == bad, answer_body
            dev.refused += len(readings)
        else:
            dev.unanswered += [f"{m} ({status} {answer_body})" for m, _ in readings]
        await asyncio.sleep(dev.rng.uniform(*PAUSE_S))


async def _reply(ws: Any) -> dict[str, Any]:
    """The answer to the frame just sent (a command pushed meanwhile is skipped: none is queued)."""
    while True:
        frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if frame.get("type") != "command":
            return frame


async def websocket_device(soak: Soak, dev: Device, ws_url: str, until: float) -> None:
    async with ws_connect(f"{ws_url}/ws/devices/{dev.device_id}?api_key={dev.key}") as ws:
        while time.monotonic() < until:
            body, readings, _, bad = api_request(soak, dev)
            answer: dict[str, Any] = {}
            for _ in range(20):
                await ws.send(json.dumps(body))
                answer = await _reply(ws)
                if answer["ok"] or answer["status"] not in (429, 503):
                    break
                dev.retried += 1
                await asyncio.sleep(1.0)
            if answer["ok"]:
                _accept(dev, answer["message_ids"], readings)
            elif answer["status"] == 422 and bad is not None:
                assert answer["detail"]["field"] == bad, answer
                dev.refused += len(readings)
            else:
                dev.unanswered += [f"{m} ({answer})" for m, _ in readings]
            await asyncio.sleep(dev.rng.uniform(*PAUSE_S))


async def run_devices(soak: Soak, api: ApiServer) -> None:
    until = time.monotonic() + SOAK_S
    async with httpx.AsyncClient(base_url=api.base_url, timeout=30) as http:
        tasks = []
        for dev in soak.devices:
            if dev.path == "http":
                tasks.append(http_device(soak, dev, http, until))
            elif dev.path == "websocket":
                tasks.append(websocket_device(soak, dev, api.ws_url, until))
            else:
                tasks.append(mqtt_device(soak, dev, until))
        await asyncio.gather(*tasks)


# --- reading back --------------------------------------------------------------------------------


class DeadLetters:
    """Dead letters written to ``telemetry.dlq`` from now on (the end offsets of now onwards)."""

    def __init__(self, settings: Settings) -> None:
        self._consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "unused",
                                   "enable.auto.commit": False})
        partitions = self._consumer.list_topics(Topics.DLQ, timeout=10).topics[Topics.DLQ].partitions
        self._next = {p: self._end(p) for p in partitions}
        self._consumer.assign([TopicPartition(Topics.DLQ, p, offset) for p, offset in self._next.items()])
        self.letters: list[DeadLetter] = []

    def _end(self, partition: int) -> int:
        return int(self._consumer.get_watermark_offsets(TopicPartition(Topics.DLQ, partition), timeout=10)[1])

    def read(self) -> list[DeadLetter]:
        """Everything up to the topic's current end, added to ``letters``."""
        ends = {p: self._end(p) for p in self._next}
        deadline = time.monotonic() + 60
        while any(self._next[p] < end for p, end in ends.items()):
            assert time.monotonic() < deadline, "telemetry.dlq not read to its end"
            msg = self._consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            self._next[msg.partition() or 0] = (msg.offset() or 0) + 1
            try:
                self.letters.append(DeadLetter.decode(msg.value() or b""))
            except (CodecError, InvalidRecordError):
                continue  # not a dead letter of this pipeline: none of the soak's
        return self.letters

    def close(self) -> None:
        self._consumer.close()


def message_id_of(letter: DeadLetter) -> str:
    """The message id of the reading a dead letter holds, wherever its stage put it."""
    if "message_id" in letter.details:  # a reading the parser or the validate agent rejected
        return letter.details["message_id"]
    try:
        return decode_batch(letter.payload).message_id[0]
    except (CodecError, InvalidRecordError):  # not a record: the device's own body
        body = json.loads(letter.payload)
        return str(body.get("messageId", body.get("deduplicationId")))


def influx_points(soak: Soak, start: datetime) -> dict[str, dict[str, dict[str, float]]]:
    """Per device of the soak: its InfluxDB points, time -> {field: value}."""
    # tag comparisons joined by "or": InfluxDB reads only these series (a "contains" would
    # make it read the whole bucket)
    wanted = " or ".join(f'r.device_id == "{dev.device_id}"' for dev in soak.devices)
    stop = iso_utc(datetime.now(UTC) + timedelta(days=3))  # a far-future point would show
    flux = (f'from(bucket: "{soak.settings.influx_bucket}") |> range(start: {iso_utc(start)}, stop: {stop})'
            f' |> filter(fn: (r) => r._measurement == "telemetry" and ({wanted}))'
            ' |> keep(columns: ["_time", "_field", "_value", "device_id"])')
    with InfluxDBClient(url=soak.settings.influx_url, token=soak.settings.influx_token.get_secret_value(),
                        org=soak.settings.influx_org, timeout=60_000) as client:
        raw = client.query_api().query_raw(flux, dialect=None)
    text = raw.data.decode() if hasattr(raw, "data") else str(raw)
    found: dict[str, dict[str, dict[str, float]]] = {dev.device_id: {} for dev in soak.devices}
    for table in text.split("\r\n\r\n"):
        for row in csv.DictReader(io.StringIO(table.strip())):
            if row.get("device_id"):
                found[row["device_id"]].setdefault(row["_time"], {})[row["_field"]] = float(row["_value"])
    return found


def expected_points(dev: Device, lost: set[str]) -> set[int | None]:
    return {seq for message_id, seq in dev.accepted.items() if message_id not in lost}


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# --- the test ------------------------------------------------------------------------------------


def _start_connectors(start: Starter, settings: Settings, application: str) -> None:
    """The MQTT, GSM and LoRaWAN connectors, each ready when a probe reading reached Redis."""
    for protocol in ("mqtt", "gsm", "lorawan"):
        client_id = f"webscada-connector-{protocol}-soak-{os.getpid()}"
        proc = start("connect", protocol, "--client-id", client_id, mqtt_client_id=client_id,
                     log_name=f"test-soak-connector-{protocol}.log")
        time.sleep(2)
        assert proc.poll() is None, f"see .stack/logs/test-soak-connector-{protocol}.log"
    probes = {"mqtt": unique_id("soakprobe"), "gsm": unique_id("soakprobe"),
              "lorawan": uuid.uuid4().hex[:16]}
    publish(settings, f"devices/{probes['mqtt']}/telemetry", {"telemetry": {"probe": 1}})
    publish(settings, f"gsm/{probes['gsm']}/telemetry", {"telemetry": {"probe": 1}})
    probe_up = {"deviceInfo": {"applicationId": application, "devEui": probes["lorawan"]},
                "object": {"probe": 1}}
    publish(settings, f"application/{application}/device/{probes['lorawan']}/event/up", probe_up)
    for protocol, device in probes.items():
        def arrived(device: str = device) -> dict[str, str]:
            return redis_latest(settings, device)

        wait_until(arrived, timeout=60, what=f"a probe reading through the {protocol} connector")


def _letters(dead_letters: DeadLetters, devices: list[Device]) -> dict[str, dict[str, set[str]]]:
    """Per device, the message ids of its dead letters: ``lost`` (the reading was not stored)
    and ``partial`` (fields dropped, the reading stored)."""
    found: dict[str, dict[str, set[str]]] = {dev.device_id: {"lost": set(), "partial": set()}
                                             for dev in devices}
    for letter in dead_letters.read():
        if letter.device_id in found:
            kind = "partial" if letter.details.get("code") == PARTIAL else "lost"
            found[letter.device_id][kind].add(message_id_of(letter))
    return found


def _read_back(soak: Soak, dead_letters: DeadLetters, since: datetime, sent_at: float
               ) -> tuple[dict[str, dict[str, set[str]]], dict[str, dict[str, dict[str, float]]]]:
    """The dead letters and points of the soak's devices once the stores have settled."""
    devices = soak.devices

    # Control: every reading sent bad on purpose over the MQTT family is in the DLQ ...
    def bad_ones_arrived() -> bool:
        found = _letters(dead_letters, devices)
        return all(found[dev.device_id]["lost"] >= dev.dead
                   and found[dev.device_id]["partial"] >= dev.partial for dev in devices)

    wait_until(bad_ones_arrived, timeout=120, interval=1, what="the bad readings in the DLQ")

    # ... and InfluxDB holds as many points as were accepted and not dead-lettered.
    def progress() -> tuple[bool, int]:
        """Whether every device has its expected count of points; how many points in all."""
        found = _letters(dead_letters, devices)
        points = influx_points(soak, since)
        done = all(len(points[d.device_id]) == len(expected_points(d, found[d.device_id]["lost"]))
                   for d in devices)
        return done, sum(map(len, points.values()))

    # Wait while the stores move; one that stood still for a minute will not catch up.
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    done, stored = progress()
    moved = time.monotonic()
    while not done and time.monotonic() < min(deadline, moved + STALL_S):
        time.sleep(2)
        done, now_stored = progress()
        if now_stored != stored:
            stored, moved = now_stored, time.monotonic()
    state = "settled" if done else "stopped short of the expected points"
    print(f"stores {state} {time.monotonic() - sent_at:.1f} s after the last reading was sent")
    time.sleep(5)  # late duplicates or dead letters would land now
    return _letters(dead_letters, devices), influx_points(soak, since)


def check_stores(soak: Soak, found: dict[str, dict[str, set[str]]],
                 points: dict[str, dict[str, dict[str, float]]]) -> None:
    devices = soak.devices
    accepted = sum(len(dev.accepted) for dev in devices)
    lost = sum(len(found[dev.device_id]["lost"]) for dev in devices)
    stored = sum(len(points[dev.device_id]) for dev in devices)
    print(f"{stored} points in InfluxDB, {lost} readings dead-lettered (and "
          f"{sum(len(found[d.device_id]['partial']) for d in devices)} dead letters of dropped fields)")
    # The dead letters are exactly the readings sent bad on purpose (the whole reading or a field).
    wrong = {dev.device_id: {kind: sorted(found[dev.device_id][kind] ^ expected)
                             for kind, expected in (("lost", dev.dead), ("partial", dev.partial))
                             if found[dev.device_id][kind] != expected}
             for dev in devices}
    assert not any(wrong.values()), f"dead letters other than the bad readings sent: {wrong}"
    # Every accepted reading not dead-lettered is one point, with its own seq; nothing else.
    differences = {}
    for dev in devices:
        expected = expected_points(dev, found[dev.device_id]["lost"])
        seqs = Counter(values.get("seq") for values in points[dev.device_id].values())
        missing = sorted(seq for seq in expected if seq is not None and seqs[float(seq)] == 0)
        doubled = sorted(seq for seq, count in seqs.items() if seq is not None and count > 1)
        unknown = sorted(str(seq) for seq in seqs if seq is None or int(seq) not in expected)
        if missing or doubled or unknown:
            differences[dev.device_id] = {"missing": missing, "twice": doubled, "not accepted": unknown}
    assert not differences, f"InfluxDB differs from what was accepted: {differences}"
    assert stored == accepted - lost
    fields = {name for of_device in points.values() for values in of_device.values() for name in values}
    assert fields <= {"seq", "temperature", "signal_strength", "battery_level", "snr"}, fields

    # Each device's latest view and registry row agree with its newest point.
    with psycopg.connect(soak.settings.pg_conninfo) as conn:
        rows = {row[0]: row[1:] for row in conn.execute(
            "SELECT id, last_seen, last_message_id, identifiers FROM devices WHERE id = ANY(%s)",
            ([dev.device_id for dev in devices],))}
    for dev in devices:
        newest = max(points[dev.device_id], key=_parse_time)
        newest_seq = int(points[dev.device_id][newest]["seq"])
        message_id = next(m for m, seq in dev.accepted.items() if seq == newest_seq)
        latest = redis_latest(soak.settings, dev.device_id)
        assert latest, f"{dev.device_id}: no latest values in Redis"
        assert (latest["ts"], float(latest["seq"])) == (iso_utc(_parse_time(newest)), newest_seq), (
            dev.device_id, latest)
        assert dev.device_id in rows, f"{dev.device_id}: no devices row in PostgreSQL"
        last_seen, last_message_id, identifiers = rows[dev.device_id]
        assert (last_seen, last_message_id) == (_parse_time(newest), message_id), dev.device_id
        if dev.path == "gsm":
            assert identifiers.get("imei") == IMEI, (dev.device_id, identifiers)


async def test_soak_every_ingest_path_loses_nothing_it_accepted(
    worker: WorkerProcess, api_server: ApiServer, stack: Settings, start_scoped_process: Starter
) -> None:
    run = unique_id("soak")
    application = str(uuid.uuid4())
    await asyncio.to_thread(_start_connectors, start_scoped_process, stack, application)
    devices: list[Device] = []
    for path in PATHS:
        for i in range(DEVICES_PER_PATH):
            rng = random.Random(f"{run}-{path}-{i}")
            if path == "lorawan":  # a devEUI
                devices.append(Device(uuid.uuid4().hex[:16], path, rng))
            elif path in ("http", "websocket"):
                device_id, key = await asyncio.to_thread(
                    create_device, api_server, path, run, f"{run}-{path}-{i}")
                devices.append(Device(device_id, path, rng, key=key))
            else:
                devices.append(Device(f"{run}-{path}-{i}", path, rng))
    started = datetime.now(UTC)
    soak = Soak(stack, int(started.timestamp() * 1000) - 3_600_000, application, devices)
    dead_letters = await asyncio.to_thread(DeadLetters, stack)
    try:
        await run_devices(soak, api_server)
        sent_at = time.monotonic()
        unanswered = {dev.device_id: dev.unanswered for dev in devices if dev.unanswered}
        assert not unanswered, f"readings neither accepted nor refused: {unanswered}"
        by_path: Counter[str] = Counter()
        for dev in devices:
            by_path[dev.path] += len(dev.accepted)
        print(f"\n{sum(by_path.values())} readings accepted in {SOAK_S:.0f} s ({dict(by_path)}); "
              f"{sum(dev.refused for dev in devices)} answered 422; "
              f"{sum(dev.retried for dev in devices)} requests or frames sent again after a 429 or 503")
        found, points = await asyncio.to_thread(
            _read_back, soak, dead_letters, started - timedelta(hours=2), sent_at)
    finally:
        dead_letters.close()
    await asyncio.to_thread(check_stores, soak, found, points)
