"""This machine's own Kafka ceiling, with the pipeline's Avro Telemetry records.

``raw``: confluent-kafka straight through the local broker, with the producer
configuration every project producer uses (:func:`pipeline.producer.producer_config`:
acks=all, idempotence, linger, lz4). A dedicated 6-partition topic is created for
the run and deleted afterwards. N pre-encoded readings (keyed by device id) are
produced while a consumer in a thread of this process reads them concurrently;
then two more consumers re-read the full topic, one only counting, one also
running ``Telemetry.decode`` on every value. Consumers are assigned all
partitions from the beginning (fresh group id, no group rebalance to wait for),
so the figures are the data path alone. CPU is this process's (all threads,
librdkafka's included) and, separately, the broker's.

``perf_tool``: Kafka's own ``ProducerPerformance`` from the broker's jars, with
records of the average encoded Telemetry size (random bytes, uncompressed).

    .venv/bin/python -m bench.ceiling [--quick]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from bench.common import cpu_seconds, make_readings
from infra.services import Kafka
from pipeline.producer import producer_config
from pipeline.settings import Settings
from schemas import Telemetry

__all__ = ["run"]

PARTITIONS = 6
_DEVICES = 100
_PERF_SUMMARY = re.compile(
    r"(?P<records>\d+) records sent, (?P<rate>[\d.]+) records/sec \((?P<mb>[\d.]+) MB/sec\), "
    r"(?P<avg>[\d.]+) ms avg latency, (?P<max>[\d.]+) ms max latency(?P<rest>.*)"
)
_PERF_PERCENTILE = re.compile(r"([\d.]+) ms ([\d.]+)th")


@dataclass
class _Reader:
    """Consumes ``expected`` records of a topic on a thread; notes when the last arrived."""

    bootstrap: str
    topic: str
    expected: int
    decode: bool = False
    timeout_s: float = 60.0
    count: int = 0
    errors: int = 0
    last_at: float = 0.0

    def __post_init__(self) -> None:
        self._consumer = Consumer({
            "bootstrap.servers": self.bootstrap,
            "group.id": f"bench-ceiling-{uuid.uuid4().hex[:12]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        })
        self._consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING)
                               for p in range(PARTITIONS)])
        self._thread = threading.Thread(target=self._loop, name="bench-reader", daemon=True)

    def start(self) -> _Reader:
        self._thread.start()
        return self

    def _loop(self) -> None:
        deadline = time.perf_counter() + self.timeout_s
        try:
            while self.count < self.expected and time.perf_counter() < deadline:
                for msg in self._consumer.consume(num_messages=10_000, timeout=0.2):
                    err = msg.error()
                    if err is not None:
                        if err.code() != KafkaError._PARTITION_EOF:
                            self.errors += 1
                        continue
                    if self.decode:
                        Telemetry.decode(msg.value() or b"")
                    self.count += 1
                    self.last_at = time.perf_counter()
        finally:
            self._consumer.close()

    def join(self) -> None:
        self._thread.join()


def _create_topic(admin: AdminClient, topic: str) -> None:
    for future in admin.create_topics([NewTopic(topic, PARTITIONS, 1)]).values():
        future.result(timeout=30)


def _delete_topic(admin: AdminClient, topic: str) -> None:
    for future in admin.delete_topics([topic]).values():
        future.result(timeout=30)


def _produce(settings: Settings, topic: str, records: list[tuple[str, bytes]]) -> tuple[float, int]:
    """Produce ``records`` and wait for every acknowledgement: (wall seconds, failures)."""
    producer = Producer(producer_config(settings.kafka_bootstrap, client_id="bench-ceiling"))
    failed = 0

    def on_delivery(err: KafkaError | None, _msg: object) -> None:
        nonlocal failed
        if err is not None:
            failed += 1

    start = time.perf_counter()
    for n, (key, value) in enumerate(records):
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        if n % 1000 == 0:
            producer.poll(0)
    left = producer.flush(60)
    return time.perf_counter() - start, failed + left


def _rate(count: int, seconds: float) -> float:
    return round(count / seconds) if seconds > 0 else 0.0


def _raw(settings: Settings, topic: str, records: list[tuple[str, bytes]]) -> dict[str, Any]:
    n = len(records)
    broker = Kafka(settings).pid()
    broker_cpu0 = cpu_seconds(broker) if broker else 0.0
    reader = _Reader(settings.kafka_bootstrap, topic, n).start()
    cpu0 = time.process_time()
    start = time.perf_counter()
    produce_s, failed = _produce(settings, topic, records)
    reader.join()
    cpu = time.process_time() - cpu0
    broker_cpu = cpu_seconds(broker) - broker_cpu0 if broker else None
    both_s = reader.last_at - start
    out: dict[str, Any] = {
        "records": n, "failed": failed, "consumed": reader.count,
        "produce_seconds": round(produce_s, 3), "produce_rate": _rate(n, produce_s),
        "produce_consume_seconds": round(both_s, 3), "produce_consume_rate": _rate(reader.count, both_s),
        "client_cpu_seconds": round(cpu, 3),
        "broker_cpu_seconds": round(broker_cpu, 3) if broker_cpu is not None else None,
    }
    print(f"raw: produced {n:,} in {produce_s:.2f} s ({out['produce_rate']:,}/s); produce+consume "
          f"{both_s:.2f} s ({out['produce_consume_rate']:,}/s); CPU {cpu:.2f} s here, "
          f"{out['broker_cpu_seconds']} s broker", flush=True)
    for decode in (False, True):
        name = "consume_decode" if decode else "consume"
        reader = _Reader(settings.kafka_bootstrap, topic, n, decode=decode)
        cpu0 = time.process_time()
        start = time.perf_counter()
        reader.start().join()
        seconds, cpu = reader.last_at - start, time.process_time() - cpu0
        out[f"{name}_records"] = reader.count
        out[f"{name}_seconds"] = round(seconds, 3)
        out[f"{name}_rate"] = _rate(reader.count, seconds)
        out[f"{name}_cpu_seconds"] = round(cpu, 3)
        print(f"raw: re-read ({name.replace('_', ' + ')}) {reader.count:,} in {seconds:.2f} s "
              f"({out[f'{name}_rate']:,}/s), CPU {cpu:.2f} s", flush=True)
    return out


def _perf_tool(settings: Settings, topic: str, records: int, size: int, timeout: float) -> dict[str, Any]:
    props = [f"bootstrap.servers={settings.kafka_bootstrap}", "acks=all"]
    argv = ["java", "-Xmx256m", "-Dlog4j2.level=WARN", "-cp", f"{Kafka(settings).libs}/*",
            "org.apache.kafka.tools.ProducerPerformance", "--topic", topic,
            "--num-records", str(records), "--record-size", str(size), "--throughput", "-1",
            "--producer-props", *props]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (subprocess.TimeoutExpired, OSError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    # Progress lines (every 5 s) lack the percentiles; the final summary has them.
    summary = [m for line in done.stdout.splitlines() if (m := _PERF_SUMMARY.search(line))]
    if done.returncode != 0 or not summary or "50th" not in summary[-1]["rest"]:
        return {"error": f"exit {done.returncode}: {(done.stdout + done.stderr)[-600:]}"}
    last = summary[-1]
    out: dict[str, Any] = {
        "records": int(last["records"]), "record_size": size, "producer_props": props[1:],
        "records_per_second": float(last["rate"]), "mb_per_second": float(last["mb"]),
        "avg_latency_ms": float(last["avg"]), "max_latency_ms": float(last["max"]),
    }
    for value, point in _PERF_PERCENTILE.findall(last["rest"]):
        out[f"p{point}_ms"] = float(value)
    print(f"perf tool: {last.group(0)}", flush=True)
    return out


def run(settings: Settings, *, quick: bool = False) -> dict[str, Any]:
    """Raw confluent-kafka and ProducerPerformance figures on a throwaway topic."""
    n = 50_000 if quick else 200_000
    prefix = f"bench-ceiling-{uuid.uuid4().hex[:8]}"
    records = [(r.device_id, r.encode()) for r in make_readings(prefix, _DEVICES, n // _DEVICES)]
    size = round(sum(len(value) for _, value in records) / len(records))
    print(f"ceiling: {len(records):,} Telemetry records, {size} bytes on average", flush=True)
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    topic = f"bench.ceiling.{prefix.rsplit('-', 1)[1]}"
    _create_topic(admin, topic)
    try:
        raw = _raw(settings, topic, records)
        perf = _perf_tool(settings, topic, n, size, timeout=30 if quick else 60)
    finally:
        _delete_topic(admin, topic)
    return {"record_bytes": size, "raw": raw, "perf_tool": perf}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Kafka ceiling of this machine.")
    parser.add_argument("--quick", action="store_true", help="fewer records (50,000)")
    args = parser.parse_args()
    print(json.dumps(run(Settings(), quick=args.quick), indent=2))
