"""The dashboard in a real headless Chromium against the whole system.

A simulated device publishes over MQTT; the connector, the worker and the API
carry its readings to the page. The test logs in, watches a value change live,
opens the device's history chart, acknowledges an alarm, sends a command and
watches its status, and saves a screenshot to docs/dashboard.png.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from playwright.async_api import Browser, expect

from pipeline.mqtt_accounts import credentials
from pipeline.settings import ROOT, Settings
from tests.conftest import WorkerProcess, unique_id, wait_until
from tests.integration.conftest import create_user
from tests.integration.helpers import device_row

if TYPE_CHECKING:
    from tests.integration.conftest import ApiServer

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

SCREENSHOT = ROOT / "docs" / "dashboard.png"


async def test_dashboard_login_live_values_and_history(
    api_server: ApiServer,
    browser: Browser,
    worker: WorkerProcess,
    start_scoped_process: Callable[..., subprocess.Popen[bytes]],
    stack: Settings,
) -> None:
    prefix = unique_id("e2e")
    device = f"{prefix}-1"
    start_scoped_process("connect", "mqtt", log_name="test-e2e-connector.log",
                         mqtt_client_id=unique_id("webscada-connector-e2e"))
    await asyncio.sleep(2)  # let the connector subscribe before the first reading
    start_scoped_process("simulate", "--devices", "2", "--interval", "0.5", "--prefix", prefix,
                         log_name="test-e2e-simulator.log")
    await asyncio.to_thread(wait_until, lambda: device_row(stack, device), timeout=90,
                            what=f"{device} registered")

    username, password = create_user(stack, "admin")
    api_server.usernames.append(username)
    async with httpx.AsyncClient(base_url=api_server.base_url, timeout=10) as client:
        routes = (await client.get("/openapi.json")).json()["paths"]

    page = await browser.new_page(viewport={"width": 1400, "height": 900})
    try:
        await page.goto(api_server.base_url + "/")
        await page.fill("#username", username)
        await page.fill("#password", password)
        await page.click("#login button[type=submit]")
        await expect(page.locator("#status")).to_have_text("live", timeout=20_000)
        await expect(page.locator("#who")).to_contain_text(username)

        # Live: the temperature cell of the simulated device changes by itself.
        value = page.locator(f'tr[data-device="{device}"] .metric[data-metric="temperature"] .metric-value')
        await expect(value).to_be_visible(timeout=30_000)
        first = await value.inner_text()
        await expect(value).not_to_have_text(first, timeout=30_000)
        await expect(page.locator(f'tr[data-device="{device}"] td.age-fresh')).to_be_visible()

        # History: open the device, pick the metric and a range, draw the chart.
        await page.click(f'tr[data-device="{device}"] td.device-id')
        await expect(page.locator("#detail-id")).to_have_text(device)
        await page.select_option("#history-metric", "temperature")
        await page.select_option("#history-range", "15m")
        for _ in range(20):  # the InfluxDB sink writes in batches; the first points may lag
            await page.click("#history-show")
            await expect(page.locator("#history-info")).to_contain_text("points", timeout=10_000)
            if int(await page.locator("#chart").get_attribute("data-points") or 0) > 0:
                break
            await page.wait_for_timeout(1000)
        assert int(await page.locator("#chart").get_attribute("data-points") or 0) > 0

        # Alarms: a rule that always holds raises an alarm of the device; acknowledge it.
        if "/api/alarms" not in routes:
            await expect(page.locator("#alarms-info")).to_contain_text("not available")
        else:
            rule_id = await _create_rule(api_server, device)
            try:
                row = page.locator(f'#alarms tbody tr:has(td:text-is("{device}"))').first
                await expect(row).to_contain_text("active_unacked", timeout=60_000)
                await row.locator("button", has_text="Acknowledge").click()
                await expect(row).to_contain_text("active_acked", timeout=20_000)
            finally:
                await _delete_rule(api_server, rule_id)

        # Commands: send one and watch its status change live.
        if "/api/devices/{device_id}/commands" not in routes:
            await page.fill("#command-name", "reboot")
            await page.click("#command-form button[type=submit]")
            await expect(page.locator("#command-info")).to_contain_text("not available")
        else:
            await page.fill("#command-name", "reboot")
            await page.fill("#command-params", '{"delay_s": 1}')
            await page.click("#command-form button[type=submit]")
            item = page.locator("#commands li").first
            await expect(item).to_contain_text("reboot: queued", timeout=10_000)
            await expect(item).to_contain_text("sent", timeout=60_000)
            # The simulator does not answer commands (yet), so the test plays the device's
            # part: the ack an MQTT device publishes once it carried the command out.
            command_id = await item.get_attribute("data-command")
            await asyncio.to_thread(_publish_ack, stack, device, str(command_id))
            await expect(item).to_contain_text("acked", timeout=30_000)

        await page.wait_for_timeout(1500)  # a few more live readings for the picture
        Path(SCREENSHOT).parent.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SCREENSHOT))
    finally:
        await page.close()


async def _create_rule(api_server: ApiServer, device: str) -> str:
    headers = {"Authorization": f"Bearer {api_server.token}"}
    rule = {"name": unique_id("e2e-rule"), "device_id": device, "metric": "temperature",
            "operator": ">", "threshold": -1000.0, "deadband": 0.0, "for_seconds": 0,
            "off_delay_seconds": 0, "severity": "major"}
    async with httpx.AsyncClient(base_url=api_server.base_url, headers=headers, timeout=10) as client:
        response = await client.post("/api/alarm-rules", json=rule)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def _delete_rule(api_server: ApiServer, rule_id: str) -> None:
    headers = {"Authorization": f"Bearer {api_server.token}"}
    async with httpx.AsyncClient(base_url=api_server.base_url, headers=headers, timeout=10) as client:
        await client.delete(f"/api/alarm-rules/{rule_id}")


def _publish_ack(settings: Settings, device: str, command_id: str) -> None:
    import json

    import paho.mqtt.publish

    paho.mqtt.publish.single(
        f"devices/{device}/commands/ack",
        json.dumps({"id": command_id, "status": "acked", "detail": "done"}),
        qos=1, hostname=settings.mqtt_host, port=settings.mqtt_port,
        client_id=unique_id("e2e-device"),
        auth=dict(zip(("username", "password"), credentials(settings, "simulator"), strict=True)),
    )
