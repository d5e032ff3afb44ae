"""The wheel as a user gets it: built from the tracked files, installed with the pinned
versions into a fresh virtual environment, run outside the checkout (no services needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from pipeline.settings import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _sh(*argv: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode == 0, f"{argv}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip wheel` of a copy of the tracked files (what a clean clone has)."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    source = tmp_path_factory.mktemp("source")
    archive = source / "tracked.tar"
    # the work tree as it is (uncommitted changes too), limited to tracked files
    names = _sh("git", "ls-files", "-z", cwd=ROOT).split("\0")
    with tarfile.open(archive, "w") as tar:
        for name in filter(None, names):
            if (ROOT / name).is_file():
                tar.add(ROOT / name, arcname=name)
    tree = source / "tree"
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="data")
    out = tmp_path_factory.mktemp("dist")
    _sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, tree, cwd=tree)
    (built,) = out.glob("webscada_stream-*.whl")
    return built


def test_the_wheel_carries_every_file_the_stack_needs(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    needed = [name for name in _sh("git", "ls-files", "infra", "schemas", "api", cwd=ROOT).split()
              if (ROOT / name).is_file()]
    missing = [name for name in needed if name not in names]
    assert not missing, missing
    for name in ("infra/influxdb/rustc-wrapper.sh", "infra/kafka/pom.xml",
                 "infra/prometheus/prometheus.yml", "schemas/telemetry.avsc", "api/static/index.html"):
        assert name in names


def test_installed_into_a_fresh_venv_it_runs(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    _sh(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    bin_ = venv / "bin"
    _sh(bin_ / "pip", "install", "-q", "--disable-pip-version-check", "-c", ROOT / "constraints.txt",
        wheel, cwd=tmp_path)
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("WEBSCADA_", "VIRTUAL_ENV", "PYTHON"))}
    env |= {"HOME": str(tmp_path / "home"), "XDG_DATA_HOME": str(tmp_path / "data")}
    version = _sh(bin_ / "webscada", "--version", cwd=tmp_path, env=env)
    assert version.startswith("webscada ") and "unknown" not in version
    assert "decode" in _sh(bin_ / "webscada", "--help", cwd=tmp_path, env=env)
    # a Cayenne LPP temperature of 27.2 °C on channel 3, decoded by the installed package
    decoded = json.loads(_sh(bin_ / "webscada", "decode", "lpp", "03670110", cwd=tmp_path, env=env))
    assert decoded["metrics"] == {"temperature_3": 27.2}
    # state outside site-packages; the files the services read are there
    probe = _sh(bin_ / "python", "-c", (
        "import pipeline.settings as s, infra.services.influxdb as i, infra.services.kafka as k,"
        " infra.migrate as m, schemas.codec as c, api.app as a\n"
        "print(s.Settings().stack_dir)\n"
        "assert i.RUSTC_WRAPPER.is_file() and k.POM.is_file() and k.LOG4J.is_file()\n"
        "assert len(list(m.MIGRATIONS.glob('*.sql'))) >= 7 and list(c.SCHEMA_DIR.glob('*.avsc'))\n"
        "assert (a.STATIC_DIR / 'index.html').is_file()\n"
        "print(i.RUSTC_WRAPPER)"), cwd=tmp_path, env=env).split("\n")
    assert probe[0] == str(tmp_path / "data" / "webscada")
    assert probe[1].startswith(str(venv))
    status = subprocess.run([bin_ / "webscada", "stack", "status"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert status.returncode in (0, 1), status.stderr  # 1: a service is down
    for service in ("postgres", "redis", "mosquitto", "kafka", "influxdb"):
        assert service in status.stdout
