"""Stage ladder: process CPU per reading of each stage of the stream worker.

Every stage runs as its own worker role process (``webscada worker --role R``),
so its CPU time is its own: two bare consumers of ``telemetry.valid`` from
:mod:`bench.stages` (consume only; + Avro decode), then the real roles:
validate (``telemetry.raw`` → ``telemetry.valid``), each sink, and the alarm
engine with a rule that raises and clears. One batch of readings goes into
``telemetry.raw``; when every group has committed the end of its topic, each
process's CPU time since the batch went in, less what it burns idle, divided by
the readings, is that stage's CPU-µs per reading. The services' CPU (Kafka,
PostgreSQL, Redis, InfluxDB) over the same interval is reported beside them.

    .venv/bin/python -m bench.ladder [--quick]
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from typing import Any

from confluent_kafka import Producer

from bench.common import BenchRule, Proc, make_readings, services_cpu, wait_drained
from bench.stages import EXTRA_AGENTS
from pipeline.metrics import skip_to_end
from pipeline.producer import producer_config
from pipeline.settings import Settings, Topics

__all__ = ["produce", "run"]

# (label, worker role); the order is the ladder's
STAGES = [
    ("consume only (Faust take_events)", "bench-consume"),
    ("+ Avro decode", "bench-decode"),
    ("validate agent (decode, checks, produce)", "validate"),
    ("sink-redis alone", "sink-redis"),
    ("sink-influxdb alone", "sink-influxdb"),
    ("sink-postgres alone", "sink-postgres"),
    ("alarm engine", "alarms"),
]
SINKS = ("sink-redis", "sink-influxdb", "sink-postgres")
WORKER_ENV = {
    "WEBSCADA_EXTRA_AGENTS": json.dumps(EXTRA_AGENTS),
    "WEBSCADA_METRICS_PORT_BASE": "0",
    "WEBSCADA_LOG_LEVEL": "warning",
}


def produce(settings: Settings, prefix: str, devices: int, per_device: int, application_id: str,
            topic: str = Topics.RAW) -> int:
    """Readings into ``topic`` as fast as Kafka takes them; returns how many."""
    producer = Producer(producer_config(settings.kafka_bootstrap, client_id="webscada-bench"))
    count = 0
    for record in make_readings(prefix, devices, per_device, application_id=application_id):
        producer.produce(topic, record.encode(), record.device_id.encode())
        count += 1
        if count % 5000 == 0:
            producer.poll(0)
    if producer.flush(60) != 0:
        raise RuntimeError("Kafka did not acknowledge the ladder's readings")
    return count


def run(settings: Settings, *, quick: bool = False) -> dict[str, Any]:
    devices, per_device = (100, 100) if quick else (100, 300)
    run_id = uuid.uuid4().hex[:6]
    application_id = f"bench-{run_id}"
    roles = [role for _, role in STAGES]
    groups = [f"webscada-{role}" for role in roles]
    skip_to_end(settings.kafka_bootstrap, ["webscada-bench-consume", "webscada-bench-decode"], Topics.VALID)
    rule = BenchRule(settings, application_id)
    procs = {role: Proc.start(f"ladder-{role}", "worker", "--role", role, settings=settings,
                              env=WORKER_ENV) for role in roles}
    try:
        # Warm-up: every role joined, connected to its store and drained any backlog.
        produce(settings, f"ladder-warm-{run_id}", 50, 20, application_id)
        if not wait_drained(settings, groups, timeout=180):
            raise RuntimeError("the ladder's worker roles did not drain the warm-up readings")
        idle_from = time.monotonic()
        cpu0 = {role: proc.cpu_seconds() for role, proc in procs.items()}
        time.sleep(3)
        idle_s = time.monotonic() - idle_from
        cpu1 = {role: proc.cpu_seconds() for role, proc in procs.items()}
        idle_rate = {role: (cpu1[role] - cpu0[role]) / idle_s for role in roles}

        services0 = services_cpu()
        started = time.monotonic()
        count = produce(settings, f"ladder-{run_id}", devices, per_device, application_id)
        if not wait_drained(settings, groups, timeout=600):
            raise RuntimeError("the ladder's worker roles did not drain the readings")
        elapsed = time.monotonic() - started
        cpu2 = {role: proc.cpu_seconds() for role, proc in procs.items()}
        services1 = services_cpu()
        dead = [role for role, proc in procs.items() if not proc.alive()]
        if dead:
            raise RuntimeError(f"ladder roles died: {', '.join(dead)}")
    finally:
        for proc in procs.values():
            proc.stop()
        rule.retire()

    def per_reading(seconds: float) -> float:
        return round(seconds / count * 1e6, 1)

    stages = {role: per_reading(max(0.0, cpu2[role] - cpu1[role] - idle_rate[role] * elapsed))
              for role in roles}
    services = {name: per_reading(services1[name] - services0.get(name, 0.0)) for name in services1}
    sinks_total = round(sum(stages[s] for s in SINKS), 1)
    workers_total = round(stages["validate"] + sinks_total + stages["alarms"], 1)
    services_total = round(sum(v for k, v in services.items() if k != "mosquitto"), 1)
    everything = workers_total + services_total
    result: dict[str, Any] = {
        "readings": count,
        "wall_seconds": round(elapsed, 2),
        "cpu_us_per_reading": stages,
        "all_sinks_us": sinks_total,
        "worker_total_us": workers_total,
        "services_us": services,
        "services_total_us": services_total,
        "alarms_raised": rule.alarms(),
        # Two cores spent on nothing else: the most readings/s this CPU cost allows.
        "cpu_bound_readings_per_s": round(2 / (everything / 1e6)) if everything else None,
    }
    print(f"stage ladder: {count} readings through every role, CPU-µs per reading "
          f"(process CPU time, idle burn subtracted), {elapsed:.1f} s wall", flush=True)
    for label, role in STAGES:
        print(f"  {label:44s} {stages[role]:8.1f}", flush=True)
    print(f"  {'all three sinks':44s} {sinks_total:8.1f}", flush=True)
    print(f"  {'worker total (validate + sinks + alarms)':44s} {workers_total:8.1f}", flush=True)
    for name, value in services.items():
        print(f"  service {name:36s} {value:8.1f}", flush=True)
    print(f"  => worker + services {everything:.0f} CPU-µs per reading: at most "
          f"{result['cpu_bound_readings_per_s']} readings/s on 2 cores "
          f"({result['alarms_raised']} alarms raised on the way)", flush=True)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Stage ladder (CPU-µs per reading)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(json.dumps(run(Settings(), quick=args.quick), indent=2))
