"""`webscada decode`: published payloads in, JSON out; malformed ones exit 2 saying where."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from typing import Any

import pytest

from pipeline.cli import main as cli
from pipeline.settings import ROOT
from tests.unit.test_chirpstack import UP


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = cli(["decode", *argv])
    out, err = capsys.readouterr()
    return code, json.loads(out) if code == 0 else out, err


def test_lpp(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "lpp", "03 67 01 10 05 67 00 FF") == (
        0, {"metrics": {"temperature_3": 27.2, "temperature_5": 25.5}, "metadata": {}}, ""
    )


def test_bthome(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "bthome", "0x400009015d025d0903b718") == (0, {
        "metrics": {"battery": 93.0, "temperature": 23.97, "humidity": 63.27},
        "metadata": {"bthome_version": 2.0, "encrypted": 0.0, "trigger_based": 0.0,
                     "packet_id": 9.0},
    }, "")


def test_encrypted_bthome_with_key_and_mac(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "bthome", "41e445f3c9962b332211006c7c4519",
                       "--bind-key", "231d39c1d7cc1ab1aee224cd096db932", "--mac", "54:48:E6:8F:80:A5")
    assert code == 0
    assert out["metrics"] == {"temperature": 25.06, "humidity": 50.55}
    assert out["metadata"]["encryption_counter"] == 1122867


def test_ruuvi(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "ruuvi", "0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F")
    assert code == 0
    assert out["metrics"]["temperature"] == 24.3
    assert out["metadata"] == {"data_format": 5.0, "mac": "CB:B8:33:4C:88:4F"}


def test_chirpstack_from_stdin(capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps({**UP, "data": "A2cBEAVnAP8="})))
    assert run(capsys, "chirpstack", "-") == (0, {
        "device_id": "0101010101010101",
        "metrics": {"temperature_3": 27.2, "temperature_5": 25.5},
        "metadata": {
            "application_id": "17c82e96-be03-4f38-aef3-f83d48582d97",
            "message_id": "3ac7e3c4-4401-4b8d-9386-a5c902f9202d",
            "time": "2022-07-18T09:34:15.775023Z", "f_cnt": 0, "f_port": 1,
            "signal_strength": -36.0, "snr": 10.5, "gateway_id": "0016c001f153a14c",
            "dev_addr": "00189440", "device_name": "Test device",
        },
    }, "")


@pytest.mark.parametrize(("argv", "message"), [
    pytest.param(("lpp", "0367zz10"), "webscada decode lpp: payload is not hex: 'z' at hex digit 4 (byte 2)",
                 id="not-hex"),
    pytest.param(("ruuvi", "0512F"), "webscada decode ruuvi: payload has an odd number of hex digits (5):"
                 " byte 2 is incomplete", id="odd-hex"),
    pytest.param(("lpp", "0100010599"), "webscada decode lpp: Cayenne LPP type 0x99 unknown at byte 4",
                 id="unknown-lpp-type"),
    pytest.param(("bthome", "41d2fcefe52eb212d600112233bc38c966"),
                 "webscada decode bthome: BTHome advertisement is encrypted (device information 0x41"
                 " at byte 0) and no bind key is configured", id="encrypted-without-key"),
    pytest.param(("bthome", "4004138a01", "--bind-key", "abcd"),
                 "webscada decode bthome: a BTHome bind key is 16 bytes, got 2", id="short-key"),
    pytest.param(("chirpstack", '{"deviceInfo": '),
                 "webscada decode chirpstack: ChirpStack event: payload is not JSON: Expecting value"
                 " at byte 15", id="bad-json"),
    pytest.param(("lpp", ""), "webscada decode lpp: payload is empty", id="empty"),
])
def test_malformed_payload_exits_2_saying_what_and_where(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], message: str
) -> None:
    code, out, err = run(capsys, *argv)
    assert (code, out, err.strip()) == (2, "", message)


def test_the_command_exits_with_status_2() -> None:
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "decode", "lpp", "03990110"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr.strip()) == (
        2, "", "webscada decode lpp: Cayenne LPP type 0x99 unknown at byte 1"
    )


def test_dlq_since_understands_relative_and_zoned_times() -> None:
    from datetime import UTC, datetime, timedelta

    import pytest

    from pipeline.dlq import parse_since

    now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    assert parse_since("-10m", now) == now - timedelta(minutes=10)
    assert parse_since("-2h", now) == now - timedelta(hours=2)
    assert parse_since("-1d", now) == now - timedelta(days=1)
    assert parse_since("-1w", now) == now - timedelta(weeks=1)
    assert parse_since("2026-11-27T10:00:00+00:00") == datetime(2026, 11, 27, 10, tzinfo=UTC)
    for bad in ("10m", "-10y", "2026-11-27T10:00:00", "yesterday", "-99999999d"):
        with pytest.raises(ValueError, match="neither a relative time"):
            parse_since(bad, now)
