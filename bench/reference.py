"""A fixed CPU workload for normalising figures taken on a noisy shared machine.

Encodes the same 20,000 Telemetry-shaped dicts with ``fastavro.schemaless_writer``
against ``schemas/telemetry.avsc`` for a fixed number of rounds, in quick mode
too, so every run does exactly the same work. ``records_per_cpu_second`` of a run
says how fast this machine was at that moment: divide another figure taken
alongside by it to compare runs across machines or busy periods.

    .venv/bin/python -m bench.reference [--quick]
"""

from __future__ import annotations

import argparse
import io
import json
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from fastavro import parse_schema, schemaless_writer

from pipeline.settings import Settings
from schemas import SCHEMA_DIR

__all__ = ["RECORDS", "ROUNDS", "run"]

RECORDS = 20_000
ROUNDS = 15
_SEED = 20_240_601
_START = datetime(2024, 6, 1, tzinfo=UTC)
_PROTOCOLS = ("mqtt", "lorawan", "http", "gsm")


def _schema() -> Any:
    # As schemas.codec loads it: the current version's file, parsed by fastavro.
    return parse_schema(json.loads((SCHEMA_DIR / "telemetry.avsc").read_text(encoding="utf-8")))


def _records() -> list[dict[str, Any]]:
    """The fixed input: 200 devices x 100 readings, values from a seeded generator."""
    rng = random.Random(_SEED)
    out = []
    for i in range(RECORDS):
        device = f"ref-device-{i % 200:04d}"
        ts = _START + timedelta(milliseconds=10 * i)
        out.append({
            "device_id": device,
            "protocol": _PROTOCOLS[i % len(_PROTOCOLS)],
            "ts": ts,
            "received_at": ts + timedelta(milliseconds=rng.randint(1, 500)),
            "message_id": f"{device}-{i // 200}",
            "application_id": "reference" if i % 3 else None,
            "metrics": {
                "seq": float(i // 200),
                "temperature": round(15 + rng.random() * 20, 2),
                "humidity": round(30 + rng.random() * 50, 1),
                "pressure": round(990 + rng.random() * 40, 2),
                "level": rng.random() * 100,
            },
            "status": "ok" if i % 10 == 0 else None,
            "metadata": {
                "signal_strength": float(rng.randint(-120, -40)),
                "battery_level": float(rng.randint(0, 100)),
                "snr": round(rng.uniform(-20, 10), 1),
                "gateway_id": f"gw-{i % 7}" if i % 2 else None,
                "location": {"lat": 52.0 + rng.random(), "lon": 4.0 + rng.random()} if i % 5 == 0 else None,
                "extra": {"f_cnt": str(i // 200)} if i % 4 == 1 else {},
            },
        })
    return out


def _encode_all(schema: Any, records: list[dict[str, Any]]) -> int:
    size = 0
    for record in records:
        out = io.BytesIO()
        schemaless_writer(out, schema, record)
        size += len(out.getvalue())
    return size


def run(settings: Settings, *, quick: bool = False) -> dict[str, Any]:
    """Encode the fixed records ``ROUNDS`` times; ``quick`` changes nothing (runs must compare)."""
    schema = _schema()
    records = _records()
    _encode_all(schema, records)  # warm-up: caches, allocator
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(ROUNDS):
        _encode_all(schema, records)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    encoded = RECORDS * ROUNDS
    result = {
        "records": encoded,
        "records_per_cpu_second": round(encoded / cpu),
        "records_per_second": round(encoded / wall),
        "cpu_seconds": round(cpu, 3),
        "wall_seconds": round(wall, 3),
    }
    print(f"reference: {encoded:,} Avro encodes in {cpu:.2f} s CPU / {wall:.2f} s wall: "
          f"{result['records_per_cpu_second']:,} records/CPU-s, "
          f"{result['records_per_second']:,} records/s", flush=True)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Fixed Avro-encoding reference workload.")
    parser.add_argument("--quick", action="store_true", help="accepted for symmetry; same work")
    args = parser.parse_args()
    print(json.dumps(run(Settings(), quick=args.quick), indent=2))
