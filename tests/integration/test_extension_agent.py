"""A data engineer's agent, named in settings, runs as its own worker role."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from datetime import timedelta

import pytest
from confluent_kafka import Consumer

from pipeline.agents.rolling import DERIVED_TOPIC
from pipeline.metrics import skip_to_end
from pipeline.settings import Settings, Topics
from schemas import Telemetry, utcnow
from tests.conftest import WorkerProcess, unique_id
from tests.integration.helpers import produce_telemetry

pytestmark = pytest.mark.integration

AGENT = "rolling-mean=pipeline.agents.rolling:register_rolling_mean"


def test_rolling_mean_agent_from_settings(
    worker: WorkerProcess, start_process: Callable[..., subprocess.Popen[bytes]],
    stack: Settings,
) -> None:
    skip_to_end(stack.kafka_bootstrap, ["webscada-rolling-mean"], Topics.VALID)  # no old backlog
    proc = start_process("worker", "--role", "rolling-mean", log_name="test-rolling-mean.log",
                         env={"WEBSCADA_EXTRA_AGENTS": json.dumps([AGENT])})
    device = unique_id("roll")
    t0 = utcnow() - timedelta(seconds=30)
    produce_telemetry(stack, device, {"level": 10.0}, ts=t0)
    produce_telemetry(stack, device, {"level": 14.0}, ts=t0 + timedelta(seconds=2))

    consumer = Consumer({"bootstrap.servers": stack.kafka_bootstrap, "group.id": unique_id("g"),
                         "auto.offset.reset": "earliest", "topic.metadata.refresh.interval.ms": 1000})
    consumer.subscribe([DERIVED_TOPIC])  # the topic appears once the agent has started
    got: list[Telemetry] = []
    deadline = time.monotonic() + 90
    try:
        while len(got) < 2 and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None or msg.error() or msg.key() != device.encode():
                continue
            got.append(Telemetry.decode(msg.value() or b""))
    finally:
        consumer.close()
    assert proc.poll() is None
    got.sort(key=lambda r: r.ts)
    assert [dict(r.metrics) for r in got] == [
        {"level_mean_60s": 10.0},
        {"level_mean_60s": 12.0, "level_rate": 2.0},
    ]
