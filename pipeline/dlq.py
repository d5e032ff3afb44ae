"""``webscada dlq list|show|replay``: look at dead letters and send them back after a fix.

A dead letter keeps the original bytes and where they came from. Replay sends
them back there: to their Kafka topic (``telemetry.raw`` ...) with the device
id as key, or, for input a connector rejected, to the MQTT topic the device
published on, so the fixed connector parses it again. Each replayed Kafka
record carries a ``webscada-replay-of`` header naming the dead letter.
"""

from __future__ import annotations

import base64
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TextIO

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from pipeline.producer import producer_config
from pipeline.settings import Settings, Topics
from schemas import CodecError, DeadLetter, InvalidRecordError, iso_utc, utcnow
from schemas.batch import decode_batch

__all__ = ["Filter", "Located", "list_letters", "main_list", "main_replay", "main_show", "read_letters"]

MQTT_SOURCE = "mqtt:"
_KAFKA_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")


@dataclass(frozen=True, slots=True)
class Located:
    """A dead letter and its own place in ``telemetry.dlq``."""

    partition: int
    offset: int
    letter: DeadLetter

    @property
    def ref(self) -> str:
        return f"{self.partition}:{self.offset}"


@dataclass(frozen=True, slots=True)
class Filter:
    reason: str | None = None
    device_id: str | None = None
    stage: str | None = None
    since: datetime | None = None

    def matches(self, letter: DeadLetter) -> bool:
        return (
            (self.reason is None or self.reason.lower() in letter.reason.lower())
            and (self.device_id is None or letter.device_id == self.device_id)
            and (self.stage is None or letter.stage == self.stage)
            and (self.since is None or letter.failed_at >= self.since)
        )


def read_letters(settings: Settings, *, idle_s: float = 2.0) -> Iterator[Located]:
    """Every decodable dead letter from the start of the topic, in partition order."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "webscada-dlq-cli",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    try:
        topic = consumer.list_topics(Topics.DLQ, timeout=10).topics[Topics.DLQ]
        partitions = sorted(topic.partitions)
        consumer.assign([TopicPartition(Topics.DLQ, p, 0) for p in partitions])
        at_end: set[int] = set()
        while len(at_end) < len(partitions):
            msg = consumer.poll(idle_s)
            if msg is None:
                break
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition() or 0)
                continue
            try:
                letter = DeadLetter.decode(msg.value() or b"")
            except (CodecError, InvalidRecordError):
                continue
            yield Located(msg.partition() or 0, msg.offset() or 0, letter)
    finally:
        consumer.close()


_RELATIVE = re.compile(r"^-(\d{1,6})([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``--since``: a time relative to now (``-10m``, ``-2h``, ``-1d``, ``-1w``) or ISO-8601
    with a zone. Raises ValueError saying which forms are understood."""
    text = text.strip()
    if match := _RELATIVE.match(text):
        return (now or utcnow()) - timedelta(seconds=int(match[1]) * _UNIT_S[match[2]])
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise ValueError(f"--since {text!r} is neither a relative time like -10m, -2h, -1d, -1w"
                         " nor an ISO-8601 time with a zone like 2026-11-27T10:00:00+00:00")
    return moment


def list_letters(settings: Settings, where: Filter) -> list[Located]:
    found = [item for item in read_letters(settings) if where.matches(item.letter)]
    return sorted(found, key=lambda item: item.letter.failed_at)


def _preview(payload: bytes, width: int = 60) -> str:
    try:
        text = payload.decode("utf-8").replace("\n", " ")
    except UnicodeDecodeError:
        text = "hex:" + payload[: width // 2].hex()
    return text if len(text) <= width else text[: width - 1] + "…"


def main_list(settings: Settings, where: Filter, *, limit: int, out: TextIO = sys.stdout) -> int:
    found = list_letters(settings, where)
    for item in found[-limit:]:
        letter = item.letter
        out.write(f"{item.ref:>10}  {iso_utc(letter.failed_at)}  {letter.stage:18} "
                  f"{letter.device_id or '-':20} {letter.reason}  | {_preview(letter.payload)}\n")
    shown = f"; last {limit} shown" if len(found) > limit else ""
    out.write(f"{len(found)} dead letter(s) match{shown}\n")
    return 0


def _as_json(item: Located) -> dict[str, Any]:
    letter = item.letter
    try:
        payload: Any = {"text": letter.payload.decode("utf-8")}
    except UnicodeDecodeError:
        payload = {"base64": base64.b64encode(letter.payload).decode()}
        try:  # a reading an agent rejected: show it as the API would
            batch = decode_batch(letter.payload)
            payload["readings"] = [batch.json(i) for i in range(len(batch))]
        except (CodecError, InvalidRecordError):
            pass
    return {
        "ref": item.ref, "reason": letter.reason, "stage": letter.stage, "device_id": letter.device_id,
        "source_topic": letter.source_topic, "source_partition": letter.source_partition,
        "source_offset": letter.source_offset, "failed_at": iso_utc(letter.failed_at),
        "details": dict(letter.details), "payload": payload,
    }


def main_show(settings: Settings, ref: str, *, out: TextIO = sys.stdout) -> int:
    try:
        partition, offset = (int(part) for part in ref.split(":"))
    except ValueError:
        print(f"dead letter reference {ref!r} is not PARTITION:OFFSET", file=sys.stderr)
        return 2
    for item in read_letters(settings):
        if item.partition == partition and item.offset == offset:
            out.write(json.dumps(_as_json(item), indent=2) + "\n")
            return 0
    print(f"no dead letter at {ref} in {Topics.DLQ}", file=sys.stderr)
    return 1


def main_replay(settings: Settings, where: Filter, *, dry_run: bool = False,
                out: TextIO = sys.stdout) -> int:
    """Send the matching dead letters back to their source; returns non-zero if any failed."""
    found = list_letters(settings, where)
    to_mqtt = [f for f in found if f.letter.source_topic.startswith(MQTT_SOURCE)]
    to_kafka = [f for f in found if _KAFKA_TOPIC.fullmatch(f.letter.source_topic)]
    # e.g. ``ble:{address}/{format}``: a Bluetooth advertisement cannot be heard again
    unreplayable = [f for f in found if f not in to_mqtt and f not in to_kafka]
    for item in found:
        if item in unreplayable:
            out.write(f"cannot replay {item.ref}: its source {item.letter.source_topic!r} is neither "
                      "a Kafka topic nor an MQTT topic\n")
        else:
            out.write(f"{'would replay' if dry_run else 'replay'} {item.ref} → {item.letter.source_topic}\n")
    replayable = len(found) - len(unreplayable)
    if dry_run or not replayable:
        out.write(f"{replayable} dead letter(s) {'would be ' if dry_run else ''}replayed\n")
        return 1 if unreplayable else 0
    failures = _replay_kafka(settings, to_kafka) + _replay_mqtt(settings, to_mqtt)
    out.write(f"{replayable - failures} dead letter(s) replayed, {failures} failed"
              + (f", {len(unreplayable)} cannot be replayed" if unreplayable else "") + "\n")
    return 1 if failures or unreplayable else 0


def _replay_kafka(settings: Settings, items: list[Located]) -> int:
    if not items:
        return 0
    producer = Producer(producer_config(settings.kafka_bootstrap, client_id="webscada-dlq-replay"))
    errors: list[str] = []

    def on_delivery(err: object, _msg: object) -> None:
        if err is not None:
            errors.append(str(err))

    for item in items:
        letter = item.letter
        key = letter.device_id.encode() if letter.device_id else None
        producer.produce(letter.source_topic, letter.payload, key, on_delivery=on_delivery,
                         headers=[("webscada-replay-of", f"{Topics.DLQ}:{item.ref}".encode())])
    producer.flush(30)
    return len(errors)


def _replay_mqtt(settings: Settings, items: list[Located]) -> int:
    if not items:
        return 0
    import paho.mqtt.client as mqtt

    from pipeline.mqtt_accounts import login

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="")
    login(client, settings, "simulator")  # it speaks for the devices whose readings it replays
    client.connect(settings.mqtt_host, settings.mqtt_port)
    client.loop_start()
    failures = 0
    try:
        for item in items:
            topic = item.letter.source_topic[len(MQTT_SOURCE):]
            info = client.publish(topic, item.letter.payload, qos=1)
            info.wait_for_publish(10)
            failures += not info.is_published()
    finally:
        client.loop_stop()
        client.disconnect()
    return failures
