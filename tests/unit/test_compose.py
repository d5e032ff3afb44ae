"""infra/compose.yaml and the Dockerfile, checked without Docker (none on these machines):
the compose file against the compose-spec schema check-jsonschema vendors, and against the
settings' defaults; the roles' commands against the command line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from infra.services.mosquitto import BROKER_OPTIONS
from pipeline import cli
from pipeline.settings import ROOT, Settings

COMPOSE = ROOT / "infra" / "compose.yaml"
SPEC = "vendor.compose-spec"  # the compose-spec JSON schema shipped inside check-jsonschema


def _check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", SPEC, str(path)],
        capture_output=True, text=True, timeout=120,
    )


def _default(name: str) -> Any:
    value = Settings.model_fields[name].default
    return value.get_secret_value() if isinstance(value, SecretStr) else value


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_file_is_valid_against_the_compose_spec_schema() -> None:
    result = _check(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_rejects_what_compose_would(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    broken.write_text("services:\n  redis:\n    image: redis:7\n    portz: ['6379:6379']\n")
    assert _check(broken).returncode != 0


def test_every_published_port_binds_loopback_only(compose: dict[str, Any]) -> None:
    published = []
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", (name, port)
                published.append(int(port["published"]))
            else:
                match = re.fullmatch(r"127\.0\.0\.1:(\d+):(\d+)", str(port))
                assert match, f"{name}: {port!r} does not bind 127.0.0.1"
                published.append(int(match[1]))
    assert len(published) == len(set(published))


def test_services_answer_at_the_default_settings_addresses(compose: dict[str, Any]) -> None:
    """`webscada stack up` on the host reuses them with no setting changed."""
    ports = {name: {str(p).split(":")[1] for p in s.get("ports", [])}
             for name, s in compose["services"].items()}
    assert ports["kafka"] == {_default("kafka_bootstrap").split(":")[1]}
    assert ports["postgres"] == {str(_default("pg_port"))}
    assert ports["redis"] == {_default("redis_url").split(":")[2].split("/")[0]}
    assert ports["influxdb"] == {_default("influx_url").rsplit(":", 1)[1]}
    assert ports["mosquitto"] == {str(_default("mqtt_port"))}
    assert ports["api"] == {str(_default("api_port"))}
    kafka = compose["services"]["kafka"]["environment"]
    assert f"PLAINTEXT://{_default('kafka_bootstrap')}" in kafka["KAFKA_ADVERTISED_LISTENERS"]
    assert compose["services"]["kafka"]["image"].startswith("apache/kafka:4.")


def test_influxdb_is_initialised_as_the_settings_expect(compose: dict[str, Any]) -> None:
    init = compose["services"]["influxdb"]["environment"]
    assert compose["services"]["influxdb"]["image"].startswith("influxdb:2.7")
    assert init["DOCKER_INFLUXDB_INIT_MODE"] == "setup"
    assert init["DOCKER_INFLUXDB_INIT_ORG"] == _default("influx_org")
    assert init["DOCKER_INFLUXDB_INIT_BUCKET"] == _default("influx_bucket")
    assert init["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"] == _default("influx_token")
    assert init["DOCKER_INFLUXDB_INIT_PASSWORD"] == _default("influx_admin_password")
    # the user `webscada stack up` onboards (infra/services/influxdb.py)
    assert init["DOCKER_INFLUXDB_INIT_USERNAME"] == "webscada"
    assert '"username": "webscada"' in (ROOT / "infra/services/influxdb.py").read_text()
    grafana = compose["services"]["grafana"]["environment"]
    assert (grafana["WEBSCADA_INFLUX_ORG"], grafana["WEBSCADA_INFLUX_BUCKET"],
            grafana["WEBSCADA_INFLUX_TOKEN"]) == (
        _default("influx_org"), _default("influx_bucket"), _default("influx_token"))


def test_postgres_has_the_settings_database_user_and_password(compose: dict[str, Any]) -> None:
    service = compose["services"]["postgres"]
    assert service["image"] == "postgres:15"
    env = service["environment"]
    assert (env["POSTGRES_DB"], env["POSTGRES_USER"], env["POSTGRES_PASSWORD"]) == (
        _default("pg_database"), _default("pg_user"), _default("pg_password"))


def test_mounted_files_exist_and_mosquitto_behaves_as_the_local_stack(compose: dict[str, Any]) -> None:
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), volume
    conf = (ROOT / "infra/mosquitto/mosquitto.conf").read_text().splitlines()
    assert [option for option in BROKER_OPTIONS if option not in conf] == []
    assert "listener 1883 0.0.0.0" in conf
    assert any(v.startswith("./grafana/provisioning:/etc/grafana/provisioning")
               for v in compose["services"]["grafana"]["volumes"])


def test_project_roles_use_the_image_and_commands_the_cli_knows(compose: dict[str, Any]) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.M)
    assert "pip install -c constraints.txt ." in dockerfile
    assert 'ENTRYPOINT ["webscada"]' in dockerfile
    roles = {name: s for name, s in compose["services"].items() if s.get("build")}
    assert {"setup", "worker", "connect-mqtt", "api"} <= set(roles)
    parser = cli._parser()
    for name, service in roles.items():
        assert service["profiles"] == ["app"], name
        assert service["build"]["dockerfile"] == "Dockerfile"
        assert (COMPOSE.parent / service["build"]["context"] / "Dockerfile").exists()
        args = parser.parse_args(service["command"])  # SystemExit on an unknown command
        assert args.command == service["command"][0]
        env = service["environment"]
        assert env["WEBSCADA_KAFKA_BOOTSTRAP"] == "kafka:19092"
        assert f"INTERNAL://{env['WEBSCADA_KAFKA_BOOTSTRAP']}" in (
            compose["services"]["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"])
    assert roles["api"]["environment"]["WEBSCADA_API_HOST"] == "0.0.0.0"
