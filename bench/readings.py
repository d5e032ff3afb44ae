"""The bench's readings: what its devices measure, as device JSON lines and as Kafka records.

Every reading has five metrics (``seq``, the per-device sequence number the
stores are checked with; ``bench_level``, which the bench's alarm rule
watches; three ordinary ones) and radio metadata, like a typical field device.
``bench_level`` stays below the rule's threshold except, for one device in
ten, the last five of every 50 readings: some alarms are raised and cleared
while every reading is judged, as in a plant where alarms are the exception.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from pipeline.producer import partition_for
from schemas import Telemetry
from schemas.batch import Metadata, ReadingBatch, iso_micros
from schemas.codec import registry

__all__ = [
    "ALARM_METRIC",
    "ALARM_THRESHOLD",
    "bench_level",
    "device_line",
    "drain_batches",
    "single_records",
]

ALARM_METRIC = "bench_level"
ALARM_THRESHOLD = 26.5  # the rule: bench_level > 26.5, deadband 1
_METADATA: Metadata = {"signal_strength": -67.0, "battery_level": 88.0, "snr": 7.5}


def bench_level(seq: int, n: int) -> float:
    """``bench_level`` of reading ``seq`` of the ``n``-th device: above the alarm threshold
    only for every tenth device, in the last 5 of each 50 readings."""
    if n % 10 == 0 and seq % 50 >= 45:
        return 27.5
    return 20.0 + seq % 10 / 10


def _metrics(seq: int, n: int) -> dict[str, float]:
    return {"seq": float(seq), ALARM_METRIC: bench_level(seq, n),
            "temperature": 20.0 + (seq + n) % 70 / 10, "humidity": 40.0 + seq % 20,
            "pressure": 1013.25}


def device_line(seq: int, n: int, ts_us: int) -> str:
    """One reading in the device format of README "Sending data" (what an MQTT device
    publishes, or one element of an HTTP device's array), timestamped ``ts_us``."""
    # Written out rather than json.dumps'd: the load generator must cost little.
    return (f'{{"timestamp":"{iso_micros(ts_us)}","telemetry":{{"seq":{seq},'
            f'"{ALARM_METRIC}":{bench_level(seq, n)},"temperature":{20.0 + (seq + n) % 70 / 10},'
            f'"humidity":{40 + seq % 20},"pressure":1013.25}},'
            f'"metadata":{{"signalStrength":-67,"batteryLevel":88}}}}')


def drain_batches(devices: Sequence[str], per_device: int, *, start_us: int, step_us: int,
                  batch_readings: int, partitions: int,
                  application_id: str | None = None) -> list[tuple[int, bytes]]:
    """``len(devices) * per_device`` readings as encoded ``TelemetryBatch`` records with
    their partitions, formed as a connector forms them: readings in time order, each
    device's in its own partition, cut into batches of ``batch_readings`` per partition.
    Records of different partitions alternate, so the topic fills evenly."""
    where = [partition_for(device, partitions) for device in devices]
    open_batches: dict[int, ReadingBatch] = {}
    by_partition: dict[int, list[bytes]] = {p: [] for p in range(partitions)}
    for seq in range(per_device):
        ts = start_us + seq * step_us
        for n, device in enumerate(devices):
            partition = where[n]
            batch = open_batches.get(partition)
            if batch is None:
                batch = open_batches[partition] = ReadingBatch()
            batch.append(device_id=device, protocol="mqtt", ts=ts, received_at=ts,
                         message_id=f"{device}-{ts}", metrics=_metrics(seq, n),
                         application_id=application_id, metadata=_METADATA)
            if len(batch) >= batch_readings:
                by_partition[partition].append(batch.encode())
                del open_batches[partition]
    for partition, batch in open_batches.items():
        by_partition[partition].append(batch.encode())
    records: list[tuple[int, bytes]] = []
    longest = max(len(values) for values in by_partition.values())
    for i in range(longest):
        records += [(p, values[i]) for p, values in by_partition.items() if i < len(values)]
    return records


def single_records(devices: Sequence[str], per_device: int, *,
                   start_us: int) -> Iterator[tuple[bytes, bytes]]:
    """``len(devices) * per_device`` readings as single ``Telemetry`` records (key, value):
    one reading per Kafka record, the unit of the raw Kafka rate."""
    codec = registry()
    # Encoded from plain dicts: building a checked Telemetry per reading would cost more
    # than the rest of the bench's preparation.
    metadata = {**_METADATA, "gateway_id": None, "location": None, "extra": {}}
    for seq in range(per_device):
        ts = start_us + seq * 10_000
        for n, device in enumerate(devices):
            yield device.encode(), codec.encode(Telemetry.SCHEMA, {
                "device_id": device, "protocol": "mqtt", "ts": ts, "received_at": ts,
                "message_id": f"{device}-{ts}", "application_id": None, "metrics": _metrics(seq, n),
                "status": None, "metadata": metadata})
