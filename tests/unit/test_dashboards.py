"""The Grafana provisioning and the Prometheus scrape configuration of infra/: valid dashboard
JSON, PromQL that Prometheus' grammar parses, metric names the code defines, Flux that
queries what the InfluxDB sink writes, and a scrape target for every process."""

from __future__ import annotations

import re

import promql_parser
import pytest
import yaml

from pipeline.app import ROLES
from pipeline.run import connector_metrics_ports
from pipeline.settings import Settings
from pipeline.sinks.influxdb import MEASUREMENT
from tests import dashboards as d

PROM_QUERIES = [q for q in d.queries() if q.datasource == d.PROMETHEUS_UID]
FLUX_QUERIES = [q for q in d.queries() if q.datasource == d.INFLUX_UID]


def _id(query: d.Query) -> str:
    return f"{query.dashboard}:{query.panel}"


def test_both_dashboards_are_there() -> None:
    uids = {d.load(path)["uid"] for path in d.DASHBOARDS}
    assert uids == {"webscada-pipeline-health", "webscada-device-metrics"}
    assert len(PROM_QUERIES) >= 10 and len(FLUX_QUERIES) >= 4


@pytest.mark.parametrize("path", d.DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_json_has_what_grafana_needs(path: object) -> None:
    dashboard = d.load(path)  # type: ignore[arg-type]
    assert isinstance(dashboard["uid"], str) and 0 < len(dashboard["uid"]) <= 40
    assert dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    assert "id" not in dashboard or dashboard["id"] is None  # provisioning assigns it
    assert set(dashboard["time"]) == {"from", "to"}
    ids = [panel["id"] for panel in d.panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in d.panels(dashboard):
        assert panel["type"] in {"timeseries", "stat", "table", "row", "gauge", "text"}, panel["type"]
        grid = panel["gridPos"]
        assert {"x", "y", "w", "h"} <= set(grid) and 0 <= grid["x"] and grid["x"] + grid["w"] <= 24
        assert panel["datasource"]["uid"] in {d.PROMETHEUS_UID, d.INFLUX_UID}
        refs = [target["refId"] for target in panel.get("targets", [])]
        assert refs and len(refs) == len(set(refs)), f"{panel['title']}: refIds"
    # template variables a query refers to are defined
    defined = {v["name"] for v in dashboard["templating"]["list"]}
    used = set(re.findall(r"\$\{?([a-zA-Z]\w*)", path.read_text()))  # type: ignore[attr-defined]
    assert used <= defined, f"undefined variables {used - defined}"


def test_the_datasources_match_the_dashboards_and_come_from_the_environment() -> None:
    config = yaml.safe_load((d.GRAFANA / "datasources" / "webscada.yaml").read_text())
    by_uid = {source["uid"]: source for source in config["datasources"]}
    assert set(by_uid) == {d.PROMETHEUS_UID, d.INFLUX_UID}
    influx = by_uid[d.INFLUX_UID]
    assert influx["type"] == "influxdb" and influx["jsonData"]["version"] == "Flux"
    # the stack's own settings, by their environment names
    assert influx["url"] == "${WEBSCADA_INFLUX_URL}"
    assert influx["jsonData"]["organization"] == "${WEBSCADA_INFLUX_ORG}"
    assert influx["jsonData"]["defaultBucket"] == "${WEBSCADA_INFLUX_BUCKET}"
    assert influx["secureJsonData"]["token"] == "${WEBSCADA_INFLUX_TOKEN}"
    for name in ("influx_url", "influx_org", "influx_bucket", "influx_token"):
        assert name in Settings.model_fields
    assert by_uid[d.PROMETHEUS_UID]["type"] == "prometheus"
    provider = yaml.safe_load((d.GRAFANA / "dashboards" / "webscada.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == "${GF_PATHS_PROVISIONING}/dashboards"


@pytest.mark.parametrize("query", PROM_QUERIES, ids=_id)
def test_promql_parses(query: d.Query) -> None:
    expr = d.promql(query.text)
    assert "$" not in expr, f"a Grafana variable is left in {expr!r}"
    promql_parser.parse(expr)  # raises ValueError on a syntax error or an unknown function


@pytest.mark.parametrize("query", PROM_QUERIES, ids=_id)
def test_promql_uses_only_metrics_the_code_defines(query: d.Query) -> None:
    families = d.defined_families()
    unknown = {name for name in d.metric_names(query.text) - d.PROMETHEUS_OWN
               if d.family_of(name, families) is None}
    assert not unknown, f"not defined by the code: {sorted(unknown)}"


def test_the_parser_would_catch_mistakes() -> None:
    with pytest.raises(ValueError):
        promql_parser.parse("sum(rate(webscada_sink_records_total[1m])")
    with pytest.raises(ValueError):
        promql_parser.parse("rates(webscada_sink_records_total[1m])")
    families = d.defined_families()
    assert d.family_of("webscada_sink_delay_seconds_bucket", families) == "webscada_sink_delay_seconds"
    assert d.family_of("webscada_connector_readings_produced_total", families) \
        == "webscada_connector_readings_produced"
    assert d.family_of("webscada_connector_readings_produced", families) is None  # no _total
    assert d.family_of("webscada_consumer_lag_total", families) is None  # a gauge


def test_the_health_dashboard_covers_what_the_issue_asks() -> None:
    used = d.dashboard_metric_names()
    for name in ("webscada_telemetry_ingested_total", "webscada_sink_delay_seconds_bucket",
                 "webscada_kafka_consumer_lag", "webscada_kafka_topic_end_offset",
                 "webscada_sink_errors_total"):
        assert name in used


@pytest.mark.parametrize("query", FLUX_QUERIES, ids=_id)
def test_flux_reads_what_the_influxdb_sink_writes(query: d.Query) -> None:
    text = query.text
    assert text.count("(") == text.count(")") and text.count("{") == text.count("}")
    assert text.count('"') % 2 == 0
    assert "v.defaultBucket" in text and "bucket: \"" not in text  # the datasource's bucket
    assert f'r._measurement == "{MEASUREMENT}"' in text
    if "device_id ==" in text:
        assert 'r.device_id == "${device}"' in text
    if "from(" in text:
        assert "range(start: v.timeRangeStart, stop: v.timeRangeStop)" in text


def test_prometheus_scrapes_the_api_every_worker_role_and_every_connector() -> None:
    config = yaml.safe_load(d.PROMETHEUS_YML.read_text())
    settings = Settings.model_construct()  # the defaults, whatever this environment sets
    by_job = {job["job_name"]: [target for static in job["static_configs"] for target in static["targets"]]
              for job in config["scrape_configs"]}
    host = settings.metrics_host
    assert by_job["webscada-api"] == [f"{settings.api_host}:{settings.api_port}"]
    base = settings.metrics_port_base
    assert by_job["webscada-worker"] == [f"{host}:{base + i}" for i in range(len(ROLES))]
    ports = connector_metrics_ports(settings.model_copy(update={"mqtt_connectors": 1}))
    assert sorted(by_job["webscada-connector"]) == sorted(f"{host}:{port}" for port in ports.values())
    roles = [static["labels"]["role"] for job in config["scrape_configs"]
             if job["job_name"] == "webscada-worker" for static in job["static_configs"]]
    assert roles == list(ROLES)

