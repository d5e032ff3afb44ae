"""The pipeline alone: telemetry.raw pre-filled, then drained into all three stores, alarms on.

The worker runs as ``make run`` starts it (every role its own process) with the
bench's alarm rule, and is warmed up first (every role joined its group,
connected to its store, and worked off whatever waited in its topics). Then
every role process is stopped where it stands (SIGSTOP), ``telemetry.raw`` is
filled with the readings as ``TelemetryBatch`` records of the size a connector
forms (its linger window's readings per partition at 10,000 readings/s), and
the roles are let go (SIGCONT). Timed from there: until each sink has written
every reading (its ``webscada_sink_records_total``) and the alarm engine's
group has committed the end of the topic. The three stores are then checked
for every reading (:mod:`bench.stores`).

Stopping warm processes rather than starting them after the fill keeps their
start-up (imports, group join: seconds of CPU per role) out of both the time
and the CPU per reading, which comes from each role's process CPU time
(``/proc``) over the drain.

    .venv/bin/python -m bench.drain [--quick] [--readings N] [--devices N]
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Producer

from bench.common import BenchRule, services_cpu, wait_drained, wait_for
from bench.pipeline import SINKS, WORKER_GROUPS, Pipeline
from bench.readings import drain_batches
from bench.stores import check
from pipeline.metrics import measure_lag
from pipeline.producer import producer_config
from pipeline.settings import Settings, Topics
from schemas.batch import to_micros

__all__ = ["batch_readings", "run"]

PREFIX = "bench-drain"
STEP_US = 10_000  # 10 ms between a device's readings
NOMINAL_RATE = 10_000  # readings/s at which the batch size is reckoned


def batch_readings(settings: Settings) -> int:
    """Readings per batch record that a connector lingering ``connector_linger_ms`` gathers
    for one partition at 10,000 readings/s."""
    return max(1, round(NOMINAL_RATE * settings.connector_linger_ms / 1000
                        / settings.telemetry_partitions))


def _produce(settings: Settings, records: list[tuple[int, bytes]]) -> float:
    """Write ``records`` (partition, value) to telemetry.raw; seconds until all acknowledged."""
    producer = Producer(producer_config(settings.kafka_bootstrap, client_id="webscada-bench-drain"))
    started = time.monotonic()
    for n, (partition, value) in enumerate(records):
        while True:
            try:
                producer.produce(Topics.RAW, value, None, partition=partition)
                break
            except BufferError:
                producer.poll(0.05)
        if n % 500 == 0:
            producer.poll(0)
    if producer.flush(60) != 0:
        raise RuntimeError("Kafka did not acknowledge the pre-filled readings")
    return time.monotonic() - started


def _fill(settings: Settings, devices: list[str], per_device: int) -> tuple[list[tuple[int, bytes]], int]:
    """Encoded records and the first reading's time; the last reading of each device is
    ``start + (per_device - 1) * STEP_US``, a little before now."""
    start_us = to_micros(datetime.now(UTC)) - per_device * STEP_US - 1_000_000
    records = drain_batches(devices, per_device, start_us=start_us, step_us=STEP_US,
                            batch_readings=batch_readings(settings),
                            partitions=settings.telemetry_partitions)
    return records, start_us


def run(settings: Settings, *, quick: bool = False, pipeline: Pipeline | None = None,
        readings: int | None = None, devices: int = 1000) -> dict[str, Any]:
    """Pre-fill telemetry.raw, drain it through the worker, return the figures."""
    readings = readings or (50_000 if quick else 200_000)
    per_device = max(1, readings // devices)
    readings = per_device * devices
    names = [f"{PREFIX}-{d:04d}" for d in range(devices)]
    own = pipeline is None
    pipeline = pipeline or Pipeline(settings, uuid.uuid4().hex[:6])
    rule = BenchRule(settings)
    try:
        pipeline.start_worker()
        # Warm-up: a few readings through every role (rules are picked up within 2 s).
        time.sleep(2.5)
        base = pipeline.metrics.written()
        # (named apart from the measured devices: the stores' check counts ``bench-drain-*``)
        warm, _ = _fill(settings, [f"bench-warm-{d:02d}" for d in range(20)], 20)
        _produce(settings, warm)
        if not wait_for(lambda: all(v - base[s] >= 400 for s, v in pipeline.metrics.written().items()),
                        120, interval=0.5):
            raise RuntimeError("the warm-up readings did not reach every sink")
        if not wait_drained(settings, WORKER_GROUPS, timeout=300):
            raise RuntimeError("the worker did not work off the backlog of its topics within 300 s")
        alarms_before = rule.alarms()
        records, start_us = _fill(settings, names, per_device)
        print(f"pipeline alone: {readings:,} readings of {devices:,} devices in {len(records):,} "
              f"TelemetryBatch records (~{batch_readings(settings)} readings each) pre-filled into "
              f"{Topics.RAW}", flush=True)
        base = pipeline.metrics.written()
        pipeline.freeze()
        try:
            fill_s = _produce(settings, records)
        finally:
            cpu0, services0 = pipeline.role_cpu(), services_cpu()
            started = time.monotonic()
            pipeline.thaw()
        reached: dict[str, float] = {}
        deadline = started + (120 if quick else 300)
        while len(reached) < len(SINKS) + 1 and time.monotonic() < deadline:
            time.sleep(0.2)
            now = time.monotonic()
            for sink, written in pipeline.metrics.written().items():
                if sink not in reached and written - base[sink] >= readings:
                    reached[sink] = now - started
            # Only once every sink has all readings is telemetry.valid complete, so that the
            # alarm engine's group having committed its end means it judged every reading.
            # (Seen at its next commit: within a second.)
            if len(reached) == len(SINKS) and not any(
                    n for (topic, _), n in measure_lag(settings.kafka_bootstrap,
                                                       "webscada-alarms").items()
                    if topic == Topics.VALID):
                reached["alarms"] = now - started
        elapsed = max(reached.values()) if len(reached) == len(SINKS) + 1 else None
        cpu1, services1 = pipeline.role_cpu(), services_cpu()
        pipeline.check_alive()
        stores = check(settings, PREFIX + "-", {name: start_us + (per_device - 1) * STEP_US
                                                 for name in names},
                       readings=readings, start_us=start_us,
                       stop_us=start_us + per_device * STEP_US)
        alarms = rule.alarms() - alarms_before
    finally:
        rule.retire()
        if own:
            pipeline.close()

    def per_reading(seconds: float) -> float:
        return round(seconds / readings * 1e6, 1)

    by_role = {role: per_reading(cpu1[role] - cpu0.get(role, 0.0)) for role in cpu1}
    services = {name: per_reading(services1[name] - services0.get(name, 0.0)) for name in services1}
    result: dict[str, Any] = {
        "readings": readings, "devices": devices, "records": len(records),
        "readings_per_record": batch_readings(settings), "fill_seconds": round(fill_s, 2),
        "seconds": round(elapsed, 2) if elapsed else None,
        "done_at_seconds": {k: round(v, 2) for k, v in reached.items()},
        "readings_per_s": round(readings / elapsed) if elapsed else None,
        "worker_cpu_us_per_reading": round(sum(by_role.values()), 1),
        "worker_cpu_us_per_reading_by_role": by_role,
        "services_cpu_us_per_reading": services,
        "alarms_raised": alarms, "stores": stores,
    }
    done = ", ".join(f"{k} {v:.1f} s" for k, v in result["done_at_seconds"].items())
    print(f"  drained in {result['seconds']} s ({done}): {result['readings_per_s']} readings/s; "
          f"stores {'complete' if stores['complete'] else 'INCOMPLETE'} "
          f"(InfluxDB {stores['influxdb_points']:,} points, Redis {stores['redis_devices_complete']:,}"
          f" and PostgreSQL {stores['postgres_devices_complete']:,} of {devices:,} devices up to "
          f"date); {alarms} alarms raised", flush=True)
    print(f"  worker CPU-µs per reading {result['worker_cpu_us_per_reading']}: "
          + ", ".join(f"{k} {v}" for k, v in by_role.items())
          + "; services: " + ", ".join(f"{k} {v}" for k, v in services.items()), flush=True)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="The pipeline alone: telemetry.raw drained.")
    parser.add_argument("--quick", action="store_true", help="50,000 readings instead of 200,000")
    parser.add_argument("--readings", type=int)
    parser.add_argument("--devices", type=int, default=1000)
    args = parser.parse_args()
    print(json.dumps(run(Settings(), quick=args.quick, readings=args.readings,
                         devices=args.devices), indent=2))
