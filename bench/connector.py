"""The MQTT connector alone: CPU-µs per message under a flood of QoS 1 messages.

Starts ``--connectors`` connector processes (``webscada connect mqtt``, each with
its own client id), waits until they are subscribed and idle, then publishes
``--messages`` readings at QoS 1 with ``mosquitto_pub -l`` (one C process per
device, so the load generator costs little and is not counted), waits until
every reading is on ``telemetry.raw`` and the connectors are idle again, and
reports their CPU time (user + system, all threads) per message, with the idle
CPU of the same span subtracted.

``--bare`` runs, instead of the connector, a paho client that acknowledges
each message as it arrives and does nothing else: the floor set by paho's own
QoS 1 receive, for comparison.

    .venv/bin/python -m bench.connector [--messages 20000] [--devices 20] [--connectors 1]
        [--bare [--bare-protocol 4|5]] [--profile stacks.txt]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from bench.common import Proc
from pipeline.mqtt_accounts import command_line, credentials, login
from pipeline.settings import ROOT, Settings, Topics
from schemas.batch import decode_batch

__all__ = ["run"]

_TICK = os.sysconf("SC_CLK_TCK")

# Acknowledges every message on arrival and counts them: paho's QoS 1 receive and nothing more.
_BARE = """
import sys, threading, paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
c = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=sys.argv[3],
                protocol=int(sys.argv[5]), manual_ack=True)
def on_connect(client, userdata, flags, reason, properties):
    client.subscribe(sys.argv[4], qos=1)
def on_subscribe(*args):
    print("subscribed", flush=True)
def on_message(client, userdata, message):
    client.ack(message.mid, message.qos)
c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
c.username_pw_set(sys.argv[6], sys.argv[7])
c.connect(sys.argv[1], int(sys.argv[2]))
c.loop_forever()
"""


def _payloads(device: str, count: int) -> bytes:
    """``count`` lines of the seed device structure, one second apart (each its own reading)."""
    start = datetime.now(UTC) - timedelta(hours=1)
    lines = []
    for seq in range(count):
        body = {
            "timestamp": (start + timedelta(seconds=seq)).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "telemetry": {"temperature": 20.0 + seq % 70 / 10, "humidity": 40.0 + seq % 20,
                          "pressure": 1013.25, "flow": 3.5 + seq % 7, "seq": seq},
            "metadata": {"signalStrength": -67, "batteryLevel": 88},
        }
        lines.append(json.dumps(body, separators=(",", ":")))
    return ("\n".join(lines) + "\n").encode()


def _raw_ends(consumer: Consumer) -> list[TopicPartition]:
    meta = consumer.list_topics(Topics.RAW, timeout=10).topics[Topics.RAW]
    ends = []
    for partition in sorted(meta.partitions):
        _low, high = consumer.get_watermark_offsets(TopicPartition(Topics.RAW, partition), timeout=10)
        ends.append(TopicPartition(Topics.RAW, partition, high))
    return ends


def _count_readings(consumer: Consumer, prefix: str, expected: int, timeout_s: float) -> int:
    """Readings of devices ``prefix*`` on telemetry.raw from the assigned offsets on."""
    seen = 0
    deadline = time.monotonic() + timeout_s
    while seen < expected and time.monotonic() < deadline:
        for message in consumer.consume(500, timeout=0.5):
            value = message.value()
            if message.error() is not None or value is None:
                continue
            batch = decode_batch(value)
            seen += sum(1 for device in batch.device_id if device.startswith(prefix))
    return seen


def _threads_cpu(procs: list[Proc]) -> dict[str, float]:
    """User and system CPU seconds so far by thread name (librdkafka names its threads
    ``rdk:...``; Python's all carry the process name), summed over the processes."""
    by_name: dict[str, float] = {}
    for proc in procs:
        for task in Path(f"/proc/{proc.pid}/task").iterdir():
            try:
                name = (task / "comm").read_text().strip()
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            for label, ticks in ((f"{name} user", int(fields[11])), (f"{name} sys", int(fields[12]))):
                by_name[label] = by_name.get(label, 0.0) + ticks / _TICK
    return by_name


def _idle(procs: list[Proc], settle_s: float = 1.0, timeout_s: float = 120.0) -> float:
    """Wait until the processes' CPU grows by less than 2 ms per process in ``settle_s``."""
    last = sum(p.cpu_seconds() for p in procs)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(settle_s)
        now = sum(p.cpu_seconds() for p in procs)
        if now - last < 0.002 * len(procs) * settle_s / 0.5:
            return now
        last = now
    return last


def _forget_session(settings: Settings, client_id: str) -> None:
    """Drop the broker's persistent session of a bench connector: left behind, it would
    collect every later device message for days."""
    import paho.mqtt.client as paho

    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    login(client, settings, "connector")
    client.connect(settings.mqtt_host, settings.mqtt_port)
    client.disconnect()


def run(settings: Settings, *, messages: int = 20_000, devices: int = 20, connectors: int = 1,
        bare: bool = False, mqtt_protocol: int = 4, profile: Path | None = None) -> dict[str, Any]:
    if shutil.which("mosquitto_pub") is None:
        from infra.services._base import apt_install

        apt_install("mosquitto-clients")
    run_id = uuid.uuid4().hex[:6]
    prefix = f"cb{run_id}-"
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"bench-{run_id}",
                         "enable.auto.commit": False})
    consumer.assign(_raw_ends(consumer))
    procs: list[Proc] = []
    logs = settings.stack_dir / "logs"
    for i in range(connectors):
        client_id = f"bench-connector-{run_id}-{i}"
        if bare:
            with open(logs / f"bench-bare-{i}.log", "ab") as log:
                popen = subprocess.Popen([sys.executable, "-c", _BARE, settings.mqtt_host,
                                          str(settings.mqtt_port), client_id,
                                          f"$share/bench-{run_id}/devices/+/telemetry",
                                          str(mqtt_protocol),
                                          *credentials(settings, "connector")], cwd=ROOT,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
            procs.append(Proc(popen, f"bare-{i}"))
        else:
            # a share group of this run's own: sessions of other connectors (make run's, say)
            # stay members of theirs even while away, and would be handed a share
            procs.append(Proc.start(f"connector-{i}", "connect", "mqtt", "--client-id", client_id,
                                    settings=settings,
                                    env={"WEBSCADA_MQTT_SHARE_GROUP": f"bench-{run_id}"}))
    try:
        time.sleep(3.0)  # connect, subscribe, settle imports
        if not all(p.alive() for p in procs):
            raise RuntimeError("a connector exited at start; see .stack/logs/bench-*.log")
        idle_from, idle_cpu0 = time.monotonic(), _idle(procs)
        time.sleep(2.0)
        idle_rate = (sum(p.cpu_seconds() for p in procs) - idle_cpu0) / (time.monotonic() - idle_from)
        spy = None
        if profile is not None:
            spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record",
                                    "--nonblocking", "--threads", "-r", "250", "-f", "raw",
                                    "-o", str(profile), "-p", str(procs[0].pid)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
        cpu0 = sum(p.cpu_seconds() for p in procs)
        threads0 = _threads_cpu(procs)
        started = time.monotonic()
        per_device = messages // devices
        with tempfile.TemporaryDirectory() as folder:
            publishers = []
            for d in range(devices):
                path = Path(folder) / f"{d}.jsonl"
                path.write_bytes(_payloads(f"{prefix}{d:03d}", per_device))
                with open(path, "rb") as lines:
                    publishers.append(subprocess.Popen(
                        ["mosquitto_pub", "-h", settings.mqtt_host, "-p", str(settings.mqtt_port),
                         *command_line(settings, "simulator"),
                         "-q", "1", "-t", f"devices/{prefix}{d:03d}/telemetry", "-l"], stdin=lines))
            for publisher in publishers:
                publisher.wait(timeout=300)
        published = time.monotonic() - started
        total = per_device * devices
        seen = total if bare else _count_readings(consumer, prefix, total, timeout_s=120)
        drained = time.monotonic() - started
        cpu1 = _idle(procs)
        wall = time.monotonic() - started
        threads1 = _threads_cpu(procs)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=30)
    finally:
        for proc in procs:
            proc.stop()
        consumer.close()
        for i in range(connectors):
            _forget_session(settings, f"bench-connector-{run_id}-{i}")
    cpu = cpu1 - cpu0 - idle_rate * wall
    result = {
        "mode": "bare paho (ack only)" if bare else "connector",
        "connectors": connectors, "messages": total, "readings_on_kafka": seen,
        "published_s": round(published, 2),
        # until every reading was on telemetry.raw (bare: until every message was published)
        "drained_s": round(drained, 2), "readings_per_s": round(total / drained),
        "wall_s": round(wall, 2),
        "messages_per_s": round(total / wall), "cpu_s": round(cpu, 3),
        "idle_cpu_per_s": round(idle_rate, 4),
        "cpu_us_per_message": round(cpu / total * 1e6, 1),
        "cpu_us_per_message_by_thread": {
            name: round((threads1[name] - threads0.get(name, 0.0)) / total * 1e6, 1)
            for name in sorted(threads1) if threads1[name] - threads0.get(name, 0.0) > 0},
    }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.connector", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--connectors", type=int, default=1)
    parser.add_argument("--bare", action="store_true", help="paho ack-only clients instead")
    parser.add_argument("--bare-protocol", type=int, choices=[4, 5], default=4,
                        help="MQTT version of the bare clients: 4 is 3.1.1 (default), 5 is 5")
    parser.add_argument("--profile", type=Path,
                        help="py-spy samples of the first connector during the flood (collapsed "
                             "stacks) to this file")
    args = parser.parse_args()
    result = run(Settings(), messages=args.messages, devices=args.devices,
                 connectors=args.connectors, bare=args.bare, mqtt_protocol=args.bare_protocol,
                 profile=args.profile)
    print(json.dumps(result, indent=2))
    return 0 if result["readings_on_kafka"] >= result["messages"] else 1


if __name__ == "__main__":
    sys.exit(main())
