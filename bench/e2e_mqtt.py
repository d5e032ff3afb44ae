"""End-to-end throughput: MQTT publish → connector → validate → all three sinks.

Starts its own worker and MQTT connector against the running local stack,
publishes ``--readings`` QoS 1 readings spread over ``--devices`` devices as
fast as the broker takes them, and measures until the last reading of every
device is in Redis, InfluxDB and PostgreSQL. Prints readings/s and writes the
figures to bench/results/e2e_mqtt-<time>.json.

    .venv/bin/python -m bench.e2e_mqtt --devices 20 --readings 20000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
import redis
from influxdb_client import InfluxDBClient

from infra import stack
from pipeline.settings import ROOT, Settings

RESULTS = Path(__file__).resolve().parent / "results"


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def _influx_count(settings: Settings, prefix: str) -> int:
    with InfluxDBClient(url=settings.influx_url, token=settings.influx_token.get_secret_value(),
                        org=settings.influx_org, timeout=60_000) as client:
        query = (f'from(bucket: "{settings.influx_bucket}") |> range(start: -1h) '
                 f'|> filter(fn: (r) => r._measurement == "telemetry" and r._field == "seq" '
                 f'and strings.hasPrefix(v: r.device_id, prefix: "{prefix}")) '
                 '|> group() |> count()')
        tables = client.query_api().query('import "strings"\n' + query)
        return sum(int(rec.get_value()) for t in tables for rec in t.records)


def _redis_done(settings: Settings, devices: list[str], last_seq: int) -> bool:
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        pipe = client.pipeline()
        for device in devices:
            pipe.hget(f"webscada:latest:{device}", "seq")
        return all(v is not None and float(v) == last_seq for v in pipe.execute())
    finally:
        client.close()


def _postgres_done(settings: Settings, prefix: str, count: int, last_ms: int) -> bool:
    with psycopg.connect(settings.pg_conninfo) as conn:
        row = conn.execute(
            "SELECT count(*) FROM devices WHERE id LIKE %s AND last_seen >= to_timestamp(%s / 1000.0)",
            (prefix + "%", last_ms),
        ).fetchone()
    return bool(row and row[0] == count)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--readings", type=int, default=20_000, help="total readings")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    settings = Settings()
    if stack.up(settings) != 0:
        return 1
    logs = settings.stack_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    worker = _start(["worker"], logs / "bench-worker.log")
    connector = _start(["connect", "mqtt"], logs / "bench-connector.log")
    prefix = f"bench-{uuid.uuid4().hex[:6]}-"
    devices = [f"{prefix}{i}" for i in range(args.devices)]
    per_device = args.readings // args.devices
    try:
        time.sleep(12)  # worker roles join their consumer groups
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{prefix}pub")
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        acked = threading.Semaphore(0)
        client.on_publish = lambda *_a, **_k: acked.release()
        client.connect(settings.mqtt_host, settings.mqtt_port)
        client.loop_start()
        base_ms = int(time.time() * 1000) - per_device * 10
        started = time.perf_counter()
        for seq in range(per_device):
            for device in devices:
                body = {"timestamp": base_ms + seq * 10,
                        "telemetry": {"seq": seq, "temperature": 20 + (seq % 50) / 10}}
                client.publish(f"devices/{device}/telemetry", json.dumps(body), qos=1)
        total = per_device * len(devices)
        for _ in range(total):
            acked.acquire()
        published = time.perf_counter() - started
        client.loop_stop()
        client.disconnect()
        last_ms = base_ms + (per_device - 1) * 10
        sinks: dict[str, float] = {}
        deadline = time.perf_counter() + args.timeout
        while len(sinks) < 3 and time.perf_counter() < deadline:
            now = time.perf_counter() - started
            if "redis" not in sinks and _redis_done(settings, devices, per_device - 1):
                sinks["redis"] = now
            if "postgres" not in sinks and _postgres_done(settings, prefix, len(devices), last_ms):
                sinks["postgres"] = now
            if "influxdb" not in sinks and _influx_count(settings, prefix) >= total:
                sinks["influxdb"] = time.perf_counter() - started
            time.sleep(0.5)
        if len(sinks) < 3:
            print(f"timed out; reached: {sinks}", file=sys.stderr)
            return 1
        slowest = max(sinks.values())
        result = {
            "benchmark": "e2e_mqtt",
            "command": "python -m bench.e2e_mqtt " + " ".join(sys.argv[1:]),
            "machine": f"{platform.node()} {os.cpu_count()} cpu {platform.python_version()}",
            "devices": len(devices),
            "readings": total,
            "publish_seconds": round(published, 2),
            "seconds_to_sink": {k: round(v, 2) for k, v in sinks.items()},
            "readings_per_second_all_sinks": round(total / slowest, 1),
        }
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"e2e_mqtt-{time.strftime('%Y%m%dT%H%M%S')}.json"
        out.write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2))
        print(f"{total} readings from {len(devices)} MQTT devices reached Redis, InfluxDB and "
              f"PostgreSQL in {slowest:.1f} s: {total / slowest:.0f} readings/s  ({out})")
        return 0
    finally:
        _stop(connector)
        _stop(worker)


if __name__ == "__main__":
    sys.exit(main())
