"""Log format: readable text by default, one JSON object a line with the role when asked."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from pipeline import cli
from pipeline.logs import configure_logging, set_role
from pipeline.settings import Settings


@pytest.fixture
def root_restored() -> Iterator[None]:
    handlers, level = list(logging.root.handlers), logging.root.level
    yield
    for handler in list(logging.root.handlers):
        logging.root.removeHandler(handler)
    for handler in handlers:
        logging.root.addHandler(handler)
    logging.root.setLevel(level)


def test_json_format_writes_one_object_a_line_with_level_logger_message_and_role(
        root_restored: None) -> None:
    out = io.StringIO()
    configure_logging(Settings(log_format="json"), role="worker:validate", stream=out, force=True)
    log = logging.getLogger("pipeline.agents.validate")
    log.info("took %d readings", 5)
    log.warning("a line\nbreak and \"quotes\"")
    set_role("worker:sink-redis")
    log.error("after the fork")
    log.debug("below the level")

    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    records = [json.loads(line) for line in lines]
    assert [(r["level"], r["logger"], r["message"], r["role"]) for r in records] == [
        ("INFO", "pipeline.agents.validate", "took 5 readings", "worker:validate"),
        ("WARNING", "pipeline.agents.validate", "a line\nbreak and \"quotes\"", "worker:validate"),
        ("ERROR", "pipeline.agents.validate", "after the fork", "worker:sink-redis"),
    ]
    assert all(isinstance(r["pid"], int) and r["time"] for r in records)


def test_text_stays_the_default(root_restored: None) -> None:
    assert Settings().log_format == "text"
    out = io.StringIO()
    configure_logging(Settings(), role="api", stream=out, force=True)
    logging.getLogger("api.app").warning("plain")
    line = out.getvalue().strip()
    assert line.endswith(" WARNING api.app: plain")
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_a_later_call_names_the_role_and_keeps_the_level(root_restored: None) -> None:
    out = io.StringIO()
    configure_logging(Settings(log_format="json"), role="connect", level="warning", stream=out, force=True)
    configure_logging(Settings(log_format="text", log_level="debug"), role="connect:mqtt")
    logging.getLogger("connectors.mqtt").info("hidden")
    logging.getLogger("connectors.mqtt").warning("shown")
    [record] = [json.loads(line) for line in out.getvalue().splitlines()]
    assert (record["message"], record["role"]) == ("shown", "connect:mqtt")


def test_log_format_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBSCADA_LOG_FORMAT", "json")
    assert Settings().log_format == "json"
    monkeypatch.setenv("WEBSCADA_LOG_FORMAT", "xml")
    with pytest.raises(ValueError):
        Settings()


@pytest.mark.parametrize(("argv", "role"), [
    (["worker", "--role", "validate"], "worker:validate"),
    (["connect", "mqtt"], "connect:mqtt"),
    (["api"], "api"),
    (["stack", "up"], "stack:up"),
])
def test_the_command_line_names_the_role(argv: list[str], role: str) -> None:
    assert cli._role(cli._parser().parse_args(argv)) == role
