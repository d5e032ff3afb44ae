"""InfluxDB 2.x OSS, built once from its Go module and cached outside the checkout.

The build compiles Flux's Rust library through influxdata's pkg-config wrapper,
which runs cargo against crates.io. Two adjustments make it build with today's
toolchains: ``RUSTUP_TOOLCHAIN=stable`` overrides Flux's pinned rust-toolchain
file, and a rustc wrapper caps lints at "warn" because Flux denies all warnings
and newer rustc releases added lints its code trips.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlparse

from infra.services._base import Service, StackError, port_answers, wait_for, which

__all__ = ["INFLUXDB_VERSION", "InfluxDB"]

INFLUXDB_VERSION = "v2.7.12"
PKG_CONFIG_VERSION = "v0.2.14"
MODULE = "github.com/influxdata/influxdb/v2"
RUSTC_WRAPPER = Path(__file__).resolve().parent.parent / "influxdb" / "rustc-wrapper.sh"


class InfluxDB(Service):
    name: ClassVar[str] = "influxdb"

    @property
    def address(self) -> str:
        return self.settings.influx_url

    @property
    def host_port(self) -> tuple[str, int]:
        url = urlparse(self.settings.influx_url)
        return url.hostname or "127.0.0.1", url.port or 8086

    @property
    def binary(self) -> Path:
        return self.settings.cache_dir / "bin" / f"influxd-{INFLUXDB_VERSION}"

    def _get(self, path: str, timeout: float = 2.0) -> dict[str, object]:
        with urllib.request.urlopen(self.settings.influx_url + path, timeout=timeout) as resp:
            data = json.loads(resp.read() or b"{}")
        return data if isinstance(data, dict) else {}

    def answers(self) -> bool:
        host, port = self.host_port
        if not port_answers(host, port):
            return False
        return self._get("/health").get("status") == "pass"

    # build ----------------------------------------------------------------------

    def install(self) -> None:
        if self.binary.exists():
            return
        for tool in ("go", "cargo"):
            if which(tool) is None:
                raise StackError(f"{tool} not found: building InfluxDB needs Go and Rust")
        log_path = self.settings.stack_dir / "logs" / "influxdb-build.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        print(f"  influxdb: building influxd {INFLUXDB_VERSION} from its Go module (first run only, "
              f"15-40 min on 2 cores); log: {log_path}", flush=True)
        with open(log_path, "ab") as log:
            def run(argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
                result = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                        stderr=log)
                if result.returncode != 0:
                    raise StackError(f"InfluxDB build step failed: {' '.join(argv)}; see {log_path}")
                return result.stdout.decode()

            info = json.loads(run(["go", "mod", "download", "-json", f"{MODULE}@{INFLUXDB_VERSION}"]))
            src = self.settings.cache_dir / "src" / f"influxdb-{INFLUXDB_VERSION}"
            if not (src / "go.mod").exists():
                shutil.rmtree(src, ignore_errors=True)
                shutil.copytree(info["Dir"], src)
                for folder, _dirs, files in os.walk(src):
                    os.chmod(folder, 0o755)
                    for name in files:
                        os.chmod(os.path.join(folder, name), 0o644)
            bin_dir = self.binary.parent
            bin_dir.mkdir(parents=True, exist_ok=True)
            pkg_config = bin_dir / f"pkg-config-{PKG_CONFIG_VERSION}"
            run(["go", "build", "-o", str(pkg_config), "github.com/influxdata/pkg-config"], cwd=src)
            env = {
                **os.environ,
                "PKG_CONFIG": str(pkg_config),
                "RUSTUP_TOOLCHAIN": "stable",
                "RUSTC_WRAPPER": str(RUSTC_WRAPPER),
                "CGO_ENABLED": "1",
            }
            tmp = self.binary.with_suffix(".tmp")
            run(["nice", "go", "build", "-tags", "sqlite_foreign_keys,sqlite_json",
                 "-o", str(tmp), "./cmd/influxd"], cwd=src, env=env)
            tmp.rename(self.binary)

    # run ------------------------------------------------------------------------

    def start(self) -> None:
        host, port = self.host_port
        data = self.state_dir
        data.mkdir(parents=True, exist_ok=True)
        self.spawn([
            str(self.binary),
            "--http-bind-address", f"{host}:{port}",
            "--bolt-path", str(data / "influxd.bolt"),
            "--engine-path", str(data / "engine"),
            "--sqlite-path", str(data / "influxd.sqlite"),
            "--reporting-disabled",
            "--log-level", "warn",
        ])
        wait_for("InfluxDB", self.answers, timeout=60)

    def prepare(self) -> None:
        """Onboard once: org, bucket, admin user and the configured token."""
        if not self._get("/api/v2/setup").get("allowed"):
            return
        s = self.settings
        body = json.dumps({
            "username": "webscada",
            "password": s.influx_admin_password.get_secret_value(),
            "org": s.influx_org,
            "bucket": s.influx_bucket,
            "token": s.influx_token.get_secret_value(),
            "retentionPeriodSeconds": 0,
        }).encode()
        request = urllib.request.Request(
            s.influx_url + "/api/v2/setup", data=body, method="POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10):
                pass
        except urllib.error.HTTPError as exc:
            raise StackError(f"InfluxDB onboarding failed: {exc.code} {exc.read()[:300]!r}") from exc
