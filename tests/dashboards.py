"""The Grafana dashboards and Prometheus configuration of infra/, read for the tests: their
queries, the metric names those use, and the metric families the code defines."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.settings import ROOT

GRAFANA = ROOT / "infra" / "grafana" / "provisioning"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
PROMETHEUS_YML = ROOT / "infra" / "prometheus" / "prometheus.yml"
PROMETHEUS_UID = "webscada-prometheus"
INFLUX_UID = "webscada-influxdb"

# Series Prometheus makes itself for every target, not any process's /metrics.
PROMETHEUS_OWN = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})

# What a Grafana range-vector variable stands for while parsing (any valid duration).
GRAFANA_DURATIONS = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}

# Sample names of a family in the text exposition, by type (prometheus_client).
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
}
_DEFINITION = re.compile(r"\b(\w*Counter|Gauge|Histogram|Summary)\(\s*\"([a-zA-Z_:][a-zA-Z0-9_:]*)\"")


@dataclass(frozen=True)
class Query:
    dashboard: str
    panel: str
    datasource: str  # the datasource uid
    text: str


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside rows too."""
    found: list[dict[str, Any]] = []
    for panel in dashboard.get("panels", []):
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def queries() -> list[Query]:
    """Every query of every dashboard: panel targets and template variables."""
    found: list[Query] = []
    for path in DASHBOARDS:
        dashboard = load(path)
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                uid = (target.get("datasource") or panel.get("datasource") or {}).get("uid", "")
                text = target.get("expr") if uid == PROMETHEUS_UID else target.get("query")
                if text:
                    found.append(Query(path.name, panel.get("title", ""), uid, text))
        for variable in dashboard.get("templating", {}).get("list", []):
            if variable.get("type") == "query":
                query = variable["query"]
                text = query if isinstance(query, str) else query.get("query", "")
                found.append(Query(path.name, f"variable {variable['name']}",
                                   variable["datasource"]["uid"], text))
    return found


def promql(text: str) -> str:
    """A dashboard's PromQL with Grafana's interval variables replaced by durations."""
    for variable, duration in GRAFANA_DURATIONS.items():
        text = text.replace(variable, duration)
    return text


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (parsed with promql-parser, Prometheus' grammar)."""
    import promql_parser

    names: set[str] = set()

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(promql(expr)), visit)
    return names


def dashboard_metric_names() -> set[str]:
    """Every metric name the Prometheus queries of the dashboards use, Prometheus' own excluded."""
    names: set[str] = set()
    for query in queries():
        if query.datasource == PROMETHEUS_UID:
            names |= metric_names(query.text)
    return names - PROMETHEUS_OWN


def defined_families(root: Path = ROOT) -> dict[str, str]:
    """Metric families the code defines (prometheus_client constructors), name → type, as
    prometheus_client exposes them: a counter's family name is without ``_total``."""
    families: dict[str, str] = {}
    for package in ("api", "connectors", "pipeline", "schemas", "infra"):
        for path in (root / package).rglob("*.py"):
            for kind, name in _DEFINITION.findall(path.read_text()):
                kind = "counter" if kind.endswith("Counter") else kind.lower()
                if kind == "counter":
                    name = name.removesuffix("_total")
                families[name] = kind
    return families


def family_of(sample_name: str, families: dict[str, str]) -> str | None:
    """The family whose exposition has a sample named ``sample_name``, if any."""
    for family, kind in families.items():
        if any(sample_name == family + suffix for suffix in _SUFFIXES[kind]):
            return family
    return None
