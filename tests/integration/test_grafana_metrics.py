"""The Grafana dashboards against the live system: every Prometheus metric the health
dashboard uses is on the /metrics of the processes Prometheus scrapes (the API, the
worker roles, a connector started with --metrics-port), and every Flux query of the
device dashboard returns a reading just written, from the real InfluxDB.

A labelled family (a Counter with labels, say) is in the exposition, as its HELP and
TYPE lines, from the moment it is defined; its samples only once a label was used. So
every family is looked for by its HELP line, and the ones a reading makes are looked
for as samples too, after one went through the pipeline.
"""

from __future__ import annotations

import re
import subprocess
import urllib.request
from collections.abc import Callable

import pytest
from influxdb_client import InfluxDBClient
from prometheus_client.parser import text_string_to_metric_families

from pipeline.app import ROLES
from pipeline.settings import Settings
from tests import dashboards as d
from tests.conftest import WorkerProcess, free_port, unique_id, wait_until
from tests.integration.helpers import produce_telemetry

pytestmark = [pytest.mark.integration, pytest.mark.influxdb]

# What one reading through the pipeline puts in the exposition as samples (beyond HELP).
AFTER_A_READING = ("webscada_telemetry_ingested_total", "webscada_sink_delay_seconds_bucket",
                   "webscada_sink_records_total", "webscada_kafka_consumer_lag",
                   "webscada_kafka_topic_end_offset")


def _scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            return str(response.read().decode())
    except OSError:
        return None


def _families(text: str) -> dict[str, set[str]]:
    """Family name → the sample names present (empty for a family with HELP/TYPE only)."""
    return {family.name: {sample.name for sample in family.samples}
            for family in text_string_to_metric_families(text)}


def _help_lines(text: str) -> set[str]:
    return set(re.findall(r"^# HELP (\S+) ", text, flags=re.MULTILINE))


def test_every_metric_the_health_dashboard_uses_is_on_a_live_metrics_endpoint(
        stack: Settings, worker: WorkerProcess,
        start_scoped_process: Callable[..., subprocess.Popen[bytes]]) -> None:
    api_port, connector_port = free_port(), free_port()
    start_scoped_process("api", log_name="test-grafana-api.log",
                         env={"WEBSCADA_API_PORT": str(api_port)})
    start_scoped_process("connect", "gsm", "--metrics-port", str(connector_port),
                         log_name="test-grafana-gsm.log", mqtt_client_id=unique_id("grafana-gsm"))
    wait_until(lambda: _scrape(api_port), timeout=60, what="the API's /metrics")
    wait_until(lambda: _scrape(connector_port), timeout=60, what="the GSM connector's /metrics")
    # the API's tail reads telemetry.valid from its end: a reading after it started
    device = unique_id("grafana")
    produce_telemetry(stack, device, {"temperature": 21.5})
    ports = {"api": api_port, "connector-gsm": connector_port}
    ports |= {role: stack.metrics_port_base + i for i, role in enumerate(ROLES)}

    def scraped() -> dict[str, str] | None:
        texts = {name: _scrape(port) for name, port in ports.items()}
        samples: set[str] = set()
        for text in texts.values():
            for names in _families(text or "").values():
                samples |= names
        if not all(texts.values()) or not set(AFTER_A_READING) <= samples:
            return None
        return {name: text for name, text in texts.items() if text}

    texts = wait_until(scraped, timeout=90, interval=1.0,
                       what="every process's /metrics with the figures of one reading")
    families = d.defined_families()
    helps: set[str] = set().union(*(_help_lines(text) for text in texts.values()))
    present = {name: set() for name in helps}
    for text in texts.values():
        for family, names in _families(text).items():
            present.setdefault(family, set()).update(names)
    missing = []
    for name in sorted(d.dashboard_metric_names()):
        family = d.family_of(name, families)
        assert family is not None, f"{name} is defined nowhere in the code"
        # prometheus_client writes a counter's HELP under its sample name (`..._total`)
        if family not in helps and f"{family}_total" not in helps:
            missing.append(name)
    assert not missing, f"no live /metrics has these families: {missing}"
    for name in AFTER_A_READING:
        assert any(name in names for names in present.values()), f"no samples of {name}"
    # the connector process serves the connector families itself
    assert "webscada_connector_readings_produced_total" in _help_lines(texts["connector-gsm"])


def _flux(text: str, settings: Settings, device: str) -> str:
    """A dashboard's Flux as Grafana sends it: its ``v`` record defined after the imports."""
    lines = text.splitlines()
    imports = [line for line in lines if line.startswith("import ")]
    rest = [line for line in lines if not line.startswith("import ")]
    v = (f'v = {{timeRangeStart: -1h, timeRangeStop: now(), windowPeriod: 10s, '
         f'defaultBucket: "{settings.influx_bucket}"}}')
    return "\n".join([*imports, v, *rest]).replace("${device}", device)


def test_every_flux_query_of_the_device_dashboard_returns_a_fresh_reading(
        stack: Settings, worker: WorkerProcess) -> None:
    device = unique_id("grafana-dev")
    produce_telemetry(stack, device, {"temperature": 21.5, "humidity": 40.0})
    with InfluxDBClient(url=stack.influx_url, token=stack.influx_token.get_secret_value(),
                        org=stack.influx_org) as client:
        query_api = client.query_api()

        def rows(query: str) -> list[dict[str, object]]:
            return [dict(record.values) for table in query_api.query(_flux(query, stack, device))
                    for record in table.records]

        flux = [q for q in d.queries() if q.datasource == d.INFLUX_UID]
        assert flux
        for query in flux:
            got = wait_until(lambda q=query: rows(q.text), timeout=60,  # type: ignore[misc]
                             what=f"rows of {query.dashboard}: {query.panel}")
            if query.panel == "variable device":
                assert device in {row["_value"] for row in got}
            else:
                assert {row["_field"] for row in got} >= {"temperature", "humidity"}, query.panel
