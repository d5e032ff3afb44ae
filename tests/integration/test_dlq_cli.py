"""`webscada dlq list|show|replay` against the real Kafka and worker."""

from __future__ import annotations

import io
import json
from datetime import timedelta

import pytest

from pipeline import dlq
from pipeline.settings import Settings, Topics
from schemas import DeadLetter, Telemetry, utcnow
from tests.conftest import WorkerProcess, unique_id, wait_until
from tests.integration.helpers import produce_raw, redis_latest

pytestmark = pytest.mark.integration


def test_list_show_and_replay_after_a_fix(worker: WorkerProcess, stack: Settings) -> None:
    # A reading an older, buggy version rejected: valid today, so a replay must land.
    device = unique_id("replay")
    now = utcnow()
    reading = Telemetry(device_id=device, protocol="mqtt", ts=now - timedelta(seconds=5),
                        received_at=now, message_id=f"{device}-1", metrics={"level": 7.25})
    letter = DeadLetter(reason="metric level out of range (old profile)", stage="agent.validate",
                        payload=reading.encode(), source_topic=Topics.RAW, device_id=device,
                        source_partition=0, source_offset=0)
    produce_raw(stack, Topics.DLQ, letter.encode(), device.encode())

    where = dlq.Filter(device_id=device)
    found = wait_until(lambda: dlq.list_letters(stack, where), what="the dead letter in `dlq list`")
    assert [item.letter.reason for item in found] == ["metric level out of range (old profile)"]

    listing = io.StringIO()
    assert dlq.main_list(stack, where, limit=10, out=listing) == 0
    assert found[0].ref in listing.getvalue()
    assert "1 dead letter(s) match" in listing.getvalue()

    shown = io.StringIO()
    assert dlq.main_show(stack, found[0].ref, out=shown) == 0
    detail = json.loads(shown.getvalue())
    assert detail["device_id"] == device
    assert detail["source_topic"] == Topics.RAW
    assert detail["reason"] == "metric level out of range (old profile)"

    dry = io.StringIO()
    assert dlq.main_replay(stack, where, dry_run=True, out=dry) == 0
    assert "1 dead letter(s) would be replayed" in dry.getvalue()
    assert redis_latest(stack, device) == {}

    replayed = io.StringIO()
    assert dlq.main_replay(stack, where, out=replayed) == 0
    assert "1 dead letter(s) replayed, 0 failed" in replayed.getvalue()
    latest = wait_until(lambda: redis_latest(stack, device), what="replayed reading in Redis")
    assert latest["level"] == "7.25"


def test_show_of_unknown_reference_fails_clearly(stack: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert dlq.main_show(stack, "not-a-ref") == 2
    assert "is not PARTITION:OFFSET" in capsys.readouterr().err
    assert dlq.main_show(stack, "0:999999999") == 1
    assert "no dead letter at 0:999999999" in capsys.readouterr().err


def test_a_bluetooth_dead_letter_is_named_as_not_replayable(stack: Settings) -> None:
    # A BLE advertisement's dead letter names its radio source, no topic: a replay says so
    # (and fails) instead of producing to a topic name Kafka refuses.
    device = unique_id("ble-dl")
    letter = DeadLetter(reason="BTHome packet truncated", stage="connector.bluetooth",
                        payload=bytes.fromhex("40020a"), source_topic="ble:AA:BB:CC:DD:EE:FF/bthome",
                        device_id=device)
    produce_raw(stack, Topics.DLQ, letter.encode(), device.encode())
    where = dlq.Filter(device_id=device)
    [found] = wait_until(lambda: dlq.list_letters(stack, where), what="the dead letter in `dlq list`")
    said = io.StringIO()
    assert dlq.main_replay(stack, where, out=said) == 1
    assert f"cannot replay {found.ref}: its source 'ble:AA:BB:CC:DD:EE:FF/bthome'" in said.getvalue()
    assert "0 dead letter(s) replayed" in said.getvalue()
