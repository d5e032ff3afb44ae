"""The dashboard's static files: vendored libraries as recorded, no CDN, no inline code,
and the metric-list route's Flux text and parameter checks (api.device_metrics)."""

from __future__ import annotations

import hashlib
import re

import pytest

from api.app import STATIC_DIR
from api.device_metrics import MAX_START_S, metrics_flux, parse_start
from api.errors import InvalidField

VENDOR = STATIC_DIR / "vendor"


def test_vendored_files_match_their_recorded_checksums() -> None:
    sums = dict(reversed(line.split("  ", 1)) for line in (VENDOR / "SHA256SUMS").read_text().splitlines())
    assert {"socket.io.min.js", "uPlot.iife.min.js", "uPlot.min.css",
            "LICENSE.socket.io-client", "LICENSE.uplot"} <= set(sums)
    for name, digest in sums.items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name


def test_vendored_versions_are_pinned_and_match_the_files() -> None:
    pins = {}
    for line in (VENDOR / "VERSIONS").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            package, version, *_ = line.split()
            pins[package] = version
    assert all(re.fullmatch(r"\d+\.\d+\.\d+", v) for v in pins.values()), pins
    assert f"Socket.IO v{pins['socket.io-client']}" in (VENDOR / "socket.io.min.js").read_text()[:200]
    assert f"(v{pins['uplot']})" in (VENDOR / "uPlot.iife.min.js").read_text()[:200]


def test_the_page_loads_only_its_own_files() -> None:
    html = (STATIC_DIR / "index.html").read_text()
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sources and all(s.startswith("/static/") for s in sources), sources
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline script (the CSP forbids it)"
    assert "<style" not in html and " style=" not in html, "inline style (the CSP forbids it)"
    for name in ("sio.js", "chart.js"):
        assert not (STATIC_DIR / name).exists(), f"hand-written {name} is back"


def test_parse_start() -> None:
    assert parse_start(None) == 30 * 86400
    assert parse_start("-2h") == 7200
    assert parse_start("-1w") == 604800
    for bad in ("30d", "-0d", "-1m", "-99999w", "now", "-1d; drop", ""):
        with pytest.raises(InvalidField):
            parse_start(bad)
    assert parse_start("-260w") <= MAX_START_S


def test_metrics_flux_quotes_what_it_is_given() -> None:
    flux = metrics_flux("pump-1", 'tele"metry', 3600)
    assert 'import "influxdata/influxdb/schema"' in flux
    assert 'bucket: "tele\\"metry"' in flux
    assert 'r.device_id == "pump-1"' in flux and "start: -3600s" in flux
