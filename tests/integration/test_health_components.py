"""Heartbeats in /health: a connector killed with kill -9 shows as down, and up again when back.

An API process of its own (``webscada api``) with ``WEBSCADA_HEALTH_REQUIRED`` naming the
GSM connector, as ``webscada run`` names everything it starts.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from typing import Any

import httpx
import pytest

from pipeline.settings import Settings
from tests.conftest import WorkerProcess, free_port, wait_until

pytestmark = pytest.mark.integration


def test_a_killed_connector_is_down_in_health_until_it_is_back(
        stack: Settings, worker: WorkerProcess, start_scoped_process: Any) -> None:
    port = free_port()
    start_scoped_process("api", log_name="test-api-health.log",
                         env={"WEBSCADA_API_PORT": str(port),
                              "WEBSCADA_HEALTH_REQUIRED": json.dumps(["connect:gsm"])})

    def health() -> tuple[int, dict[str, Any]] | None:
        try:
            answer = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10)
        except httpx.TransportError:
            return None
        return answer.status_code, answer.json()

    def connector() -> subprocess.Popen[bytes]:
        return start_scoped_process("connect", "gsm", log_name="test-connector-gsm-health.log",
                                    mqtt_client_id="webscada-connector-gsm-health")

    gsm = connector()
    _, body = wait_until(lambda: (h := health()) and h[0] == 200 and h, timeout=60,
                            what="/health 200 with the GSM connector beating")
    entry = body["components"]["connect:gsm"]
    assert entry["status"] == "up" and entry["required"]
    assert any(i["pid"] == gsm.pid and "unacknowledged" in i["detail"] for i in entry["instances"])
    validate = body["components"]["worker:validate"]  # the worker's roles beat too
    assert validate["status"] == "up" and not validate["required"]
    assert "lag" in validate["instances"][0]["detail"]

    gsm.send_signal(signal.SIGKILL)
    gsm.wait(10)
    killed = time.monotonic()
    _, body = wait_until(lambda: (h := health()) and h[0] == 503 and h, timeout=30,
                            what="/health 503 after the connector's kill -9")
    print(f"\nkill -9 of the connector showed in /health after {time.monotonic() - killed:.1f} s")
    assert body["status"] == "degraded"
    assert body["components"]["connect:gsm"]["status"] in ("stale", "down")
    assert all(d["status"] == "up" for d in body["dependencies"].values())  # only the connector

    connector()
    wait_until(lambda: (h := health()) and h[0] == 200 and h, timeout=60,
               what="/health 200 once the connector is back")
