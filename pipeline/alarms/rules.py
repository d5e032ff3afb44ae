"""Alarm rules: the typed, self-checking record and the parsing of its JSON form.

A rule's JSON (``POST /api/alarm-rules``)::

    {"name", "device_id" | "application_id" (neither: every device), "metric",
     "operator": "> >= < <= == != stale", "threshold", "deadband", "for_seconds",
     "off_delay_seconds", "severity", "enabled",
     "notify": {"emails": [...], "webhooks": [...], "throttle_seconds": 300}}
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from pipeline.sms import E164
from schemas.records import APPLICATION_ID_PATTERN, DEVICE_ID_PATTERN, METRIC_NAME_PATTERN, iso_utc

__all__ = [
    "ACTIVE_STATES",
    "COMPARISONS",
    "OPERATORS",
    "SEVERITIES",
    "STATES",
    "AlarmRule",
    "RuleError",
    "parse_rule",
    "parse_rule_patch",
]

COMPARISONS = (">", ">=", "<", "<=", "==", "!=")
OPERATORS = (*COMPARISONS, "stale")
SEVERITIES = ("critical", "major", "minor", "warning", "info")
STATES = ("active_unacked", "active_acked", "cleared_unacked", "cleared_acked")
ACTIVE_STATES = ("active_unacked", "active_acked")

_EMAIL = re.compile(r"^[^@\s<>,;]+@[^@\s<>,;]+$")
_MAX_SECONDS = 30 * 86400.0
_MAX_TARGETS = 20


class RuleError(ValueError):
    """A rule field that breaks the contract; ``field`` names it."""

    def __init__(self, field: str, value: object, message: str) -> None:
        super().__init__(f"{field}: {message} (got {value!r})")
        self.field = field
        self.value = value
        self.message = message


@dataclass(frozen=True, slots=True)
class AlarmRule:
    """One alarm rule. Checks every field and their combination on construction."""

    id: str
    name: str
    operator: str
    metric: str | None = None
    threshold: float | None = None
    deadband: float = 0.0
    for_seconds: float = 0.0
    off_delay_seconds: float = 0.0
    severity: str = "major"
    device_id: str | None = None
    application_id: str | None = None
    enabled: bool = True
    notify_emails: tuple[str, ...] = ()
    notify_webhooks: tuple[str, ...] = ()
    notify_sms: tuple[str, ...] = ()
    notify_throttle_seconds: float = 300.0
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not 1 <= len(self.name.strip()) <= 200:
            raise RuleError("name", self.name, "must be a string of 1 to 200 characters")
        if self.operator not in OPERATORS:
            raise RuleError("operator", self.operator, f"must be one of {' '.join(OPERATORS)}")
        if self.severity not in SEVERITIES:
            raise RuleError("severity", self.severity, f"must be one of {' '.join(SEVERITIES)}")
        for name, pattern in (("device_id", DEVICE_ID_PATTERN), ("application_id", APPLICATION_ID_PATTERN)):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not pattern.fullmatch(value)):
                raise RuleError(name, value, f"must match {pattern.pattern}")
        if self.device_id is not None and self.application_id is not None:
            raise RuleError("application_id", self.application_id,
                            "a rule is scoped to a device or to an application, not both")
        if self.metric is not None and (not isinstance(self.metric, str)
                                        or not METRIC_NAME_PATTERN.fullmatch(self.metric)):
            raise RuleError("metric", self.metric, f"must match {METRIC_NAME_PATTERN.pattern}")
        for name, low in (("threshold", -math.inf), ("deadband", 0.0), ("for_seconds", 0.0),
                          ("off_delay_seconds", 0.0), ("notify_throttle_seconds", 0.0)):
            value = getattr(self, name)
            if value is None and name == "threshold":
                continue
            object.__setattr__(self, name, _number(name, value, low))
        for name in ("for_seconds", "off_delay_seconds", "notify_throttle_seconds"):
            if getattr(self, name) > _MAX_SECONDS:
                raise RuleError(name, getattr(self, name), f"must be at most {_MAX_SECONDS:.0f}")
        if not isinstance(self.enabled, bool):
            raise RuleError("enabled", self.enabled, "must be true or false")
        if self.operator == "stale":
            if self.for_seconds <= 0:
                raise RuleError("for_seconds", self.for_seconds,
                                "a stale rule needs the silence (seconds) that raises it")
        else:
            if self.metric is None:
                raise RuleError("metric", None, f"operator {self.operator} needs a metric")
            if self.threshold is None:
                raise RuleError("threshold", None, f"operator {self.operator} needs a threshold")
        object.__setattr__(self, "notify_emails",
                           _targets("notify.emails", self.notify_emails, _is_email, "an e-mail address"))
        object.__setattr__(self, "notify_webhooks",
                           _targets("notify.webhooks", self.notify_webhooks, _is_url, "an http(s) URL"))
        object.__setattr__(self, "notify_sms",
                           _targets("notify.sms", self.notify_sms, E164.fullmatch,
                                    "a phone number in E.164 form (+ and 7 to 15 digits)"))

    @property
    def is_stale(self) -> bool:
        return self.operator == "stale"

    def applies_to(self, device_id: str, application_id: str | None) -> bool:
        if self.device_id is not None:
            return self.device_id == device_id
        if self.application_id is not None:
            return self.application_id == application_id
        return True

    def same_condition(self, other: AlarmRule) -> bool:
        """Whether ``other`` judges readings exactly as this rule does."""
        keys = ("metric", "operator", "threshold", "deadband", "for_seconds", "off_delay_seconds",
                "device_id", "application_id", "enabled")
        return all(getattr(self, k) == getattr(other, k) for k in keys)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "device_id": self.device_id,
            "application_id": self.application_id,
            "metric": self.metric,
            "operator": self.operator,
            "threshold": self.threshold,
            "deadband": self.deadband,
            "for_seconds": self.for_seconds,
            "off_delay_seconds": self.off_delay_seconds,
            "severity": self.severity,
            "enabled": self.enabled,
            "notify": {
                "emails": list(self.notify_emails),
                "webhooks": list(self.notify_webhooks),
                "sms": list(self.notify_sms),
                "throttle_seconds": self.notify_throttle_seconds,
            },
            "created_at": iso_utc(self.created_at) if self.created_at else None,
            "updated_at": iso_utc(self.updated_at) if self.updated_at else None,
        }


def _number(field: str, value: object, low: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RuleError(field, value, "must be a number")
    number = float(value)
    if not math.isfinite(number):
        raise RuleError(field, value, "must be finite")
    if number < low:
        raise RuleError(field, value, f"must be >= {low:g}")
    return number


def _is_email(value: str) -> bool:
    return bool(_EMAIL.match(value)) and len(value) <= 254


def _is_url(value: str) -> bool:
    return value.startswith(("http://", "https://")) and len(value) <= 2000 and " " not in value


def _targets(field: str, values: object, valid: Any, what: str) -> tuple[str, ...]:
    if isinstance(values, str) or not isinstance(values, list | tuple):
        raise RuleError(field, values, f"must be a list, each {what}")
    if len(values) > _MAX_TARGETS:
        raise RuleError(field, values, f"at most {_MAX_TARGETS} entries")
    for value in values:
        if not isinstance(value, str) or not valid(value):
            raise RuleError(field, value, f"is not {what}")
    return tuple(dict.fromkeys(values))  # de-duplicated, order kept


_FIELDS = ("name", "device_id", "application_id", "metric", "operator", "threshold", "deadband",
           "for_seconds", "off_delay_seconds", "severity", "enabled")
_NOTIFY_FIELDS = {"emails": "notify_emails", "webhooks": "notify_webhooks", "sms": "notify_sms",
                  "throttle_seconds": "notify_throttle_seconds"}


def _fields(data: object) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise RuleError("body", type(data).__name__, "must be a JSON object")
    unknown = sorted(set(data) - set(_FIELDS) - {"notify"})
    if unknown:
        raise RuleError(unknown[0], data[unknown[0]], "is not a rule field")
    out = {name: data[name] for name in _FIELDS if name in data}
    notify = data.get("notify")
    if notify is not None:
        if not isinstance(notify, Mapping):
            raise RuleError("notify", notify,
                            'must be an object {"emails", "webhooks", "sms", "throttle_seconds"}')
        for key, value in notify.items():
            if key not in _NOTIFY_FIELDS:
                raise RuleError(f"notify.{key}", value, "is not a notification field")
            out[_NOTIFY_FIELDS[key]] = value
    if "notify_throttle_seconds" in out:
        out["notify_throttle_seconds"] = _number("notify.throttle_seconds",
                                                 out["notify_throttle_seconds"], 0.0)
    return out


def parse_rule(data: object, *, rule_id: str = "") -> AlarmRule:
    """A new rule from its JSON form; raises :class:`RuleError` naming the bad field."""
    fields = _fields(data)
    for required in ("name", "operator"):
        if required not in fields:
            raise RuleError(required, None, "is required")
    return AlarmRule(id=rule_id, **fields)


def parse_rule_patch(rule: AlarmRule, data: object) -> AlarmRule:
    """``rule`` with the fields of a PATCH body applied (the result is checked as a whole)."""
    fields = _fields(data)
    if "id" in fields:  # pragma: no cover - _fields never yields it
        del fields["id"]
    # Setting one scope clears the other, so a PATCH can move a rule between scopes.
    if fields.get("device_id") is not None and "application_id" not in fields:
        fields["application_id"] = None
    if fields.get("application_id") is not None and "device_id" not in fields:
        fields["device_id"] = None
    return replace(rule, **fields)
