"""Where every ``webscada`` process sets up its logs: readable text by default, or one JSON
object a line (``WEBSCADA_LOG_FORMAT=json``) for a log collector, each carrying the process's
role (``worker:validate``, ``connect:mqtt``, ``api`` ...) and its pid."""

from __future__ import annotations

import logging
import sys
from typing import IO

from pipeline.settings import Settings

__all__ = ["TEXT_FORMAT", "configure_logging", "set_role"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s %(role)s %(process)d"
_JSON_RENAMES = {"asctime": "time", "levelname": "level", "name": "logger", "process": "pid"}


class _RoleFilter(logging.Filter):
    """Stamps every record passing the handler with the process's role (None: not known)."""

    def __init__(self, role: str | None) -> None:
        super().__init__()
        self.role = role

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "role"):
            record.role = self.role
        return True


def _ours() -> logging.Handler | None:
    return next((h for h in logging.root.handlers if getattr(h, "_webscada", False)), None)


def set_role(role: str) -> None:
    """Name the role of this process in its logs from now on (a forked worker role, say)."""
    handler = _ours()
    if handler is not None:
        for f in handler.filters:
            if isinstance(f, _RoleFilter):
                f.role = role


def configure_logging(settings: Settings, *, role: str | None = None, level: str | None = None,
                      stream: IO[str] | None = None, force: bool = False) -> None:
    """Send the root logger's records to ``stream`` (stderr) in ``settings.log_format``.

    Like ``logging.basicConfig``, it leaves a root logger that has handlers as it is, unless
    ``force``: a later call (a connector's ``main`` after the command line's) only names the
    role, keeping the level the command line chose.
    """
    if logging.root.handlers and not force:
        if role is not None:
            set_role(role)
        return
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler._webscada = True  # type: ignore[attr-defined]
    handler.addFilter(_RoleFilter(role))
    if settings.log_format == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(JsonFormatter(_JSON_FIELDS, rename_fields=_JSON_RENAMES))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    for old in list(logging.root.handlers):
        logging.root.removeHandler(old)
        old.close()
    logging.root.addHandler(handler)
    logging.root.setLevel((level or settings.log_level).upper())
