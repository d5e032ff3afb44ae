"""Connectors and HTTP ingest while their brokers go away (docs/design.md, "Guarantees").

These tests stop and restart shared local services. Run them alone:

    flock -x /tmp/webscada-stack.lock .venv/bin/pytest -m disruptive tests/integration

Each restarts, in a ``finally``, whatever it stopped.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest

from infra import stack as local_stack
from infra.services.kafka import Kafka
from infra.services.mosquitto import Mosquitto
from pipeline.mqtt_accounts import login
from pipeline.settings import Settings
from tests.conftest import WorkerProcess, stop_process, unique_id, wait_until
from tests.integration.conftest import ApiServer
from tests.integration.helpers import influx_points
from tests.integration.live import create_device, forget_mqtt_session

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.disruptive]

Starter = Callable[..., subprocess.Popen[bytes]]


def _restart(settings: Settings, service: str) -> None:
    assert local_stack.up(settings, only={service}) == 0, f"{service} did not come back"


def test_mosquitto_restart_during_a_qos1_run_loses_and_doubles_nothing(
    worker: WorkerProcess, start_process: Starter, stack: Settings
) -> None:
    """10,000 QoS 1 readings through the MQTT connector; Mosquitto restarts a third of the way."""
    client_id = f"webscada-connector-restart-test-{os.getpid()}"
    connector = start_process("connect", "mqtt", "--client-id", client_id,
                              log_name="test-connector-restart.log")
    time.sleep(3)
    assert connector.poll() is None
    device = unique_id("restart")
    total = 10_000
    base_ms = int(time.time() * 1000) - total - 60_000
    acked: set[int] = set()
    mids: list[int] = []
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=unique_id("pub"))
    login(publisher, stack, "simulator")
    publisher.on_publish = lambda c, u, mid, rc, p: acked.add(mid)
    publisher.max_inflight_messages_set(200)
    publisher.reconnect_delay_set(1, 2)
    publisher.connect(stack.mqtt_host, stack.mqtt_port)
    publisher.loop_start()
    broker = Mosquitto(stack)
    try:
        for seq in range(total):
            body = json.dumps({"timestamp": base_ms + seq, "telemetry": {"seq": seq}})
            # Queued by paho while the broker is away, sent (again) once it is back.
            mids.append(publisher.publish(f"devices/{device}/telemetry", body, qos=1).mid)
            if seq == total // 3:
                wait_until(lambda: len(acked) > total // 4, timeout=60, what="a quarter acked")
                broker.stop()
                time.sleep(2)
                _restart(stack, "mosquitto")
            elif seq % 500 == 0:
                time.sleep(0.05)
        wait_until(lambda: acked.issuperset(mids), timeout=180, interval=1,
                   what="the broker's PUBACK for every reading")
    finally:
        if not broker.answers():
            _restart(stack, "mosquitto")
        publisher.loop_stop()
        publisher.disconnect()

    def all_points() -> list[dict[str, Any]] | None:
        points = influx_points(stack, device, start="-2h")
        return points if len(points) >= total else None

    try:
        points = wait_until(all_points, timeout=300, interval=3, what=f"{total} points in InfluxDB")
        time.sleep(5)  # late duplicates would show up now
        points = influx_points(stack, device, start="-2h")
        assert len(points) == total
        assert sorted(int(p["value"]) for p in points) == list(range(total))
        assert len({p["time"] for p in points}) == total
        assert connector.poll() is None and worker.poll() is None
    finally:
        stop_process(connector)
        forget_mqtt_session(stack, client_id)


def test_kafka_stopped_http_answers_503_fast_and_never_202s_a_lost_reading(
    worker: WorkerProcess, api_server: ApiServer, stack: Settings
) -> None:
    device, key = create_device(api_server, "http")
    url = f"{api_server.base_url}/api/devices/{device}/telemetry"
    base_ms = int(time.time() * 1000) - 600_000
    answers: list[tuple[int, int, float, float]] = []  # seq, status, sent at, seconds taken
    done = threading.Event()

    def device_loop() -> None:
        seq = 0
        with httpx.Client(timeout=30) as http:
            while not done.is_set():
                started = time.monotonic()
                response = http.post(url, json={"timestamp": base_ms + seq, "telemetry": {"seq": seq}},
                                     headers={"X-API-Key": key, "Idempotency-Key": f"seq-{seq}"})
                answers.append((seq, response.status_code, started, time.monotonic() - started))
                seq += 1
                time.sleep(0.05)

    sender = threading.Thread(target=device_loop, daemon=True)
    sender.start()
    kafka = Kafka(stack)
    try:
        wait_until(lambda: sum(1 for a in answers if a[1] == 202) >= 20, timeout=30,
                   what="readings accepted before the outage")
        kafka.stop()
        stopped = time.monotonic()
        time.sleep(10)
        outage = [a for a in answers if a[2] >= stopped]
    finally:
        if not kafka.answers():
            _restart(stack, "kafka")
    restarted = time.monotonic()
    try:
        wait_until(lambda: any(a[1] == 202 and a[2] > restarted for a in answers), timeout=120,
                   what="a 202 after Kafka came back")
    finally:
        done.set()
        sender.join(40)

    assert outage and {a[1] for a in outage} == {503}
    refused = [a[3] for a in answers if a[1] == 503]  # also those while Kafka shut down
    slowest = max(refused)
    assert slowest < 1.5, f"a 503 took {slowest:.2f} s"
    assert statistics.median(refused) < 1.0
    assert {a[1] for a in answers} <= {202, 503}
    accepted = {a[0] for a in answers if a[1] == 202}

    def landed() -> set[int] | None:
        values = {int(p["value"]) for p in influx_points(stack, device, start="-2h")}
        return values if accepted <= values else None

    values = wait_until(landed, timeout=300, interval=3, what="every 202 reading in InfluxDB")
    assert accepted <= values
    print(f"\n{len(answers)} requests, {len(accepted)} accepted, {len(refused)} answered 503"
          f" ({len(outage)} while Kafka was down): slowest 503 {slowest:.3f} s, median"
          f" {statistics.median(refused):.3f} s;"
          f" slowest 202 {max(a[3] for a in answers if a[1] == 202):.3f} s")
    assert worker.poll() is None
