"""The dashboard in a real headless Chromium against the whole system.

Five simulated devices publish over MQTT; the connector, the worker and the API
carry their readings to the page. At 1400x900 the test logs in, checks that the
device table shows every column without horizontal scrolling, searches, opens a
device (its history is drawn without pressing anything), publishes a reading
over MQTT and watches it reach the table and the chart, raises an alarm over
MQTT and watches the banner and the page title, sends a command. At 390x844 it
checks that nothing needs horizontal scrolling and acknowledges the alarm.
Screenshots of both sizes go to docs/dashboard.png and docs/dashboard-phone.png.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
import paho.mqtt.publish
import pytest
from playwright.async_api import Browser, Page, expect

from pipeline.mqtt_accounts import credentials
from pipeline.settings import ROOT, Settings
from tests.conftest import WorkerProcess, unique_id, wait_until
from tests.integration.conftest import create_user
from tests.integration.helpers import device_row, influx_points

if TYPE_CHECKING:
    from tests.integration.conftest import ApiServer

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

SCREENSHOT = ROOT / "docs" / "dashboard.png"
SCREENSHOT_PHONE = ROOT / "docs" / "dashboard-phone.png"
WIDE = {"width": 1400, "height": 900}
PHONE = {"width": 390, "height": 844}
DEVICES = 5


async def _log_in(page: Page, base_url: str, username: str, password: str) -> None:
    await page.goto(base_url + "/")
    await page.fill("#username", username)
    await page.fill("#password", password)
    await page.click("#login button[type=submit]")
    await expect(page.locator("#status")).to_have_text("live", timeout=20_000)
    await expect(page.locator("#who")).to_contain_text(username)


async def _horizontal_overflow(page: Page) -> dict[str, Any]:
    """How far the page and the device table reach beyond what is visible, in px."""
    result: dict[str, Any] = await page.evaluate("""() => {
        const wrap = document.querySelector('.devices-panel .table-wrap');
        const right = wrap.getBoundingClientRect().right;
        const hidden = [...document.querySelectorAll('#devices thead th')]
            .filter((th) => getComputedStyle(th).display !== 'none')
            .filter((th) => th.getBoundingClientRect().right > right + 1)
            .map((th) => th.textContent.trim());
        const wide = [...document.querySelectorAll('body *')]
            .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 1)
            .filter((e) => !e.parentElement
                || e.parentElement.getBoundingClientRect().right <= window.innerWidth + 1)
            .map((e) => `${e.tagName}#${e.id}.${e.className}`).slice(0, 5);
        return {page: document.documentElement.scrollWidth - window.innerWidth, wide,
                table: wrap.scrollWidth - wrap.clientWidth, cut_columns: hidden,
                columns: [...document.querySelectorAll('#devices thead th')]
                    .filter((th) => getComputedStyle(th).display !== 'none').length};
    }""")
    return result


async def test_dashboard_wide_and_phone(
    api_server: ApiServer,
    browser: Browser,
    worker: WorkerProcess,
    start_scoped_process: Callable[..., subprocess.Popen[bytes]],
    stack: Settings,
) -> None:
    prefix = f"pump-{uuid.uuid4().hex[:4]}"
    device = f"{prefix}-3"
    start_scoped_process("connect", "mqtt", log_name="test-e2e-connector.log",
                         mqtt_client_id=unique_id("webscada-connector-e2e"))
    await asyncio.sleep(2)  # let the connector subscribe before the first reading
    start_scoped_process("simulate", "--devices", str(DEVICES), "--interval", "0.5", "--prefix", prefix,
                         log_name="test-e2e-simulator.log")
    for i in range(1, DEVICES + 1):
        await asyncio.to_thread(wait_until, lambda i=i: device_row(stack, f"{prefix}-{i}"), timeout=90,
                                what=f"{prefix}-{i} registered")
    # the history the device view must draw by itself: some points in InfluxDB first
    await asyncio.to_thread(wait_until, lambda: len(influx_points(stack, device, "-1h")) >= 6,
                            timeout=60, what=f"{device} in InfluxDB")

    username, password = create_user(stack, "admin")
    api_server.usernames.append(username)
    async with httpx.AsyncClient(base_url=api_server.base_url, timeout=10,
                                 headers={"Authorization": f"Bearer {api_server.token}"}) as client:
        # the metric list of the device view comes from InfluxDB's schema, not from Redis
        listed = (await client.get(f"/api/devices/{device}/metrics")).json()
        assert "temperature" in [m["name"] for m in listed["metrics"]], listed

    page = await browser.new_page(viewport=WIDE)
    console: list[str] = []
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    page.on("response", lambda r: console.append(f"error: {r.status} {r.url}") if r.status >= 400 else None)
    # A rule the probe reading below breaks, made first: the alarm engine re-reads its rules
    # every 2 s, and a reading it judges before then raises nothing.
    rule_id = await _create_rule(api_server, device, threshold=50.0)
    try:
        await _log_in(page, api_server.base_url, username, password)

        # The device list: the simulated devices with every column visible at 1400 px.
        await page.fill("#device-search", prefix)
        await expect(page.locator("#devices tbody tr")).to_have_count(DEVICES, timeout=30_000)
        value = page.locator(f'tr[data-device="{device}"] .metric[data-metric="temperature"] .metric-value')
        await expect(value).to_be_visible(timeout=30_000)
        first = await value.inner_text()
        await expect(value).not_to_have_text(first, timeout=30_000)  # live
        await expect(page.locator(f'tr[data-device="{device}"] td.age-fresh')).to_be_visible()
        overflow = await _horizontal_overflow(page)
        assert overflow["columns"] == 7 and overflow["cut_columns"] == [], overflow
        assert overflow["page"] <= 0 and overflow["table"] <= 0, overflow

        # Search narrows; sorting by a column reorders.
        await page.fill("#device-search", device)
        await expect(page.locator("#devices tbody tr")).to_have_count(1)
        await page.fill("#device-search", prefix)
        await expect(page.locator("#devices tbody tr")).to_have_count(DEVICES)
        await page.click('#devices th[data-sort="id"] button')  # id was ascending: now descending
        await expect(page.locator("#devices tbody tr").first).to_have_attribute(
            "data-device", f"{prefix}-{DEVICES}")
        await page.click('#devices th[data-sort="id"] button')
        await expect(page.locator("#devices tbody tr").first).to_have_attribute("data-device", f"{prefix}-1")

        # The device view opens with its history drawn: nothing pressed.
        await page.click(f'tr[data-device="{device}"] td.device-id')
        await expect(page.locator("#detail-id")).to_have_text(device)
        chart = page.locator("#chart")
        await expect(page.locator("#history-info")).to_contain_text("points", timeout=15_000)
        await expect(chart.locator("canvas")).to_have_count(1)
        drawn = int(await chart.get_attribute("data-points") or 0)
        assert drawn > 0
        picked = await page.locator("#history-metrics input:checked").count()
        assert picked >= 2  # several metrics at once
        await expect(page.locator("#history-stats tbody tr")).to_have_count(picked)  # min/max/mean

        # A reading published over MQTT reaches the table and extends the chart.
        probe = 77.7
        before = int(await chart.get_attribute("data-points") or 0)
        published = time.monotonic()
        await asyncio.to_thread(_publish_reading, stack, device, {"e2e_probe": probe})
        cell = page.locator(f'tr[data-device="{device}"] .metric[data-metric="e2e_probe"] .metric-value')
        await expect(cell).to_have_text(str(probe), timeout=10_000)
        reached_table = time.monotonic() - published
        await page.wait_for_function(  # a function, not a string: the page's CSP forbids eval
            "(before) => Number(document.querySelector('#chart').dataset.points) > before",
            arg=before, timeout=10_000)
        # ... and raises the alarm: banner and title count.
        banner = page.locator("#alarm-banner")
        await expect(banner).to_contain_text("critical", timeout=20_000)
        raised = time.monotonic() - published
        await expect(page).to_have_title(re.compile(r"^\(\d+\) WebSCADA Stream$"))
        row = page.locator(f'#alarms tbody tr[data-device="{device}"]').first
        await expect(row).to_contain_text("active_unacked", timeout=10_000)
        await expect(row).to_contain_text("e2e-rule")
        print(f"\nMQTT reading -> table {reached_table:.2f} s, -> alarm banner {raised:.2f} s")

        # Commands: send one and watch its status change live.
        await page.fill("#command-name", "reboot")
        await page.fill("#command-params", '{"delay_s": 1}')
        await page.click("#command-form button[type=submit]")
        item = page.locator("#commands li").first
        await expect(item).to_contain_text("reboot: queued", timeout=10_000)
        await expect(item).to_contain_text("sent", timeout=60_000)
        command_id = await item.get_attribute("data-command")
        await asyncio.to_thread(_publish_ack, stack, device, str(command_id))  # the device's part
        await expect(item).to_contain_text("acked", timeout=30_000)

        # A range preset reloads the history (and the picture shows the last 15 minutes).
        await page.click('#history-presets button[data-range="900"]')
        await expect(page.locator('#history-presets button[data-range="900"]')).to_have_attribute(
            "aria-pressed", "true")
        await expect(page.locator("#history-info")).to_contain_text("points", timeout=15_000)
        await page.wait_for_timeout(1500)  # a few more live readings for the picture
        await page.evaluate("() => window.scrollTo(0, 0)")
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SCREENSHOT))

        # The phone: nothing only reachable by scrolling sideways; acknowledge from there.
        phone = await browser.new_page(viewport=PHONE)
        try:
            await _log_in(phone, api_server.base_url, username, password)
            await phone.fill("#device-search", prefix)
            await expect(phone.locator("#devices tbody tr")).to_have_count(DEVICES, timeout=30_000)
            await expect(phone.locator(f'tr[data-device="{device}"] .metric-value').first).to_be_visible()
            overflow = await _horizontal_overflow(phone)
            assert overflow["page"] <= 0 and overflow["table"] <= 0, overflow
            assert overflow["cut_columns"] == [], overflow
            await phone.screenshot(path=str(SCREENSHOT_PHONE))
            alarm = phone.locator(f'#alarms tbody tr[data-device="{device}"]').first
            ack = alarm.locator("button", has_text="Acknowledge")
            await ack.scroll_into_view_if_needed()
            box = await ack.bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], box
            count = await phone.locator("#alarm-banner").get_attribute("data-count")
            await ack.click()
            await expect(alarm).to_contain_text("active_acked", timeout=20_000)
            await expect(phone.locator("#alarm-banner")).not_to_have_attribute("data-count", str(count))
        finally:
            await phone.close()
        await expect(row).to_contain_text("active_acked", timeout=20_000)  # live on the wide page too
        errors = [line for line in console if line.startswith("error")]
        assert not errors, errors  # e.g. a Content-Security-Policy violation
    finally:
        await _delete_rule(api_server, rule_id)
        await page.close()


async def _create_rule(api_server: ApiServer, device: str, threshold: float) -> str:
    headers = {"Authorization": f"Bearer {api_server.token}"}
    rule = {"name": unique_id("e2e-rule"), "device_id": device, "metric": "e2e_probe",
            "operator": ">", "threshold": threshold, "deadband": 0.0, "for_seconds": 0,
            "off_delay_seconds": 0, "severity": "critical"}
    async with httpx.AsyncClient(base_url=api_server.base_url, headers=headers, timeout=10) as client:
        response = await client.post("/api/alarm-rules", json=rule)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def _delete_rule(api_server: ApiServer, rule_id: str) -> None:
    headers = {"Authorization": f"Bearer {api_server.token}"}
    async with httpx.AsyncClient(base_url=api_server.base_url, headers=headers, timeout=10) as client:
        await client.delete(f"/api/alarm-rules/{rule_id}")


def _publish(settings: Settings, topic: str, payload: dict[str, Any]) -> None:
    paho.mqtt.publish.single(
        topic, json.dumps(payload), qos=1, hostname=settings.mqtt_host, port=settings.mqtt_port,
        client_id=unique_id("e2e-device"),
        auth=dict(zip(("username", "password"), credentials(settings, "simulator"), strict=True)),
    )


def _publish_reading(settings: Settings, device: str, metrics: dict[str, float]) -> None:
    _publish(settings, f"devices/{device}/telemetry",
             {"timestamp": int(time.time() * 1000), "telemetry": metrics})


def _publish_ack(settings: Settings, device: str, command_id: str) -> None:
    _publish(settings, f"devices/{device}/commands/ack",
             {"id": command_id, "status": "acked", "detail": "done"})
