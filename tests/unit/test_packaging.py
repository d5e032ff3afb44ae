"""What an installed copy needs: package data covering infra's files, the state folder
outside a checkout, one version, connectors' metrics ports under `webscada run`."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest

from pipeline import run
from pipeline import settings as settings_module
from pipeline.app import ROLES
from pipeline.settings import ROOT, Settings

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _tracked(folder: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z", folder], cwd=ROOT, capture_output=True, check=True)
    return [ROOT / name for name in out.stdout.decode().split("\0") if name]


@pytest.mark.parametrize("package", ["infra", "schemas", "api"])
def test_package_data_covers_every_file_the_stack_reads(package: str) -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"].get(package, [])
    covered = {path for pattern in patterns for path in (ROOT / package).glob(pattern)}
    # Python modules go in as packages; these are the other files
    needed = [path for path in _tracked(package) if path.suffix != ".py"]
    missing = sorted(str(path.relative_to(ROOT)) for path in needed if path not in covered)
    assert not missing, f"not in [tool.setuptools.package-data] {package}: {missing}"


def test_dependencies_are_ranges_and_the_pins_are_in_constraints() -> None:
    project = PYPROJECT["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["dev"]
    assert not [r for r in requirements if "==" in r]
    assert all(">=" in r and ",<" in r for r in requirements), requirements
    pins = {line.split("==")[0].lower().replace("_", "-")
            for line in (ROOT / "constraints.txt").read_text().splitlines()
            if line and not line.startswith("#")}
    for requirement in requirements:
        name = requirement.split("[")[0].split(">=")[0].lower()
        assert name in pins, f"{name} has no exact version in constraints.txt"
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()


def test_state_stays_in_the_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WEBSCADA_STACK_DIR", raising=False)
    assert Settings().stack_dir == ROOT / ".stack"
    monkeypatch.setenv("WEBSCADA_STACK_DIR", "/srv/webscada")
    assert Settings().stack_dir == Path("/srv/webscada")


def test_installed_state_goes_to_the_user_data_folder(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    monkeypatch.setattr(settings_module, "ROOT", tmp_path / "site-packages")  # no pyproject.toml
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert settings_module._default_stack_dir() == tmp_path / "data" / "webscada"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert settings_module._default_stack_dir() == tmp_path / ".local" / "share" / "webscada"


def test_version_comes_from_the_package_metadata() -> None:
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "--version"], capture_output=True,
                         text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == f"webscada {version('webscada-stream')}"
    assert version("webscada-stream") == PYPROJECT["project"]["version"]
    assert f"## [{PYPROJECT['project']['version']}]" in (ROOT / "CHANGELOG.md").read_text()


def test_run_gives_every_connector_a_metrics_port_of_its_own() -> None:
    settings = Settings.model_construct(mqtt_connectors=3)
    commands = run._commands(settings, devices=1, simulate=False)
    ports = {}
    for name, args in commands.items():
        if args[0] == "connect":
            assert "--metrics-port" in args, name
            ports[name] = int(args[args.index("--metrics-port") + 1])
    assert set(ports) == {"connector-mqtt", "connector-mqtt-1", "connector-mqtt-2",
                          "connector-gsm", "connector-lorawan"}
    assert ports == run.connector_metrics_ports(settings)
    assert ports["connector-mqtt"] == 9400 and ports["connector-lorawan"] == 9402
    worker_ports = set(range(settings.metrics_port_base, settings.metrics_port_base + len(ROLES) + 20))
    assert len(set(ports.values())) == len(ports) and not worker_ports & set(ports.values())
    off = run._commands(Settings.model_construct(connector_metrics_port_base=0), devices=1, simulate=False)
    assert not any("--metrics-port" in args for args in off.values())


def test_connect_takes_a_metrics_port_for_every_protocol() -> None:
    from pipeline.cli import _parser

    for protocol in ("mqtt", "gsm", "lorawan", "bluetooth"):
        args = _parser().parse_args(["connect", protocol, "--metrics-port", "9499"])
        assert args.metrics_port == 9499
