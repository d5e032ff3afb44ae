"""The alarm engine: rules, the per-(rule, device) state machine,
PostgreSQL state and the ``alarms`` worker role.

``register_alarms`` is imported from :mod:`pipeline.alarms.agent` by the app's role
table; it is not re-exported here so that importing the engine does not import Faust.
"""

from pipeline.alarms.engine import Decision, Tracker, condition_normal, stale_due, step, violates
from pipeline.alarms.events import EVENTS, AlarmEvent
from pipeline.alarms.rules import (
    ACTIVE_STATES,
    COMPARISONS,
    OPERATORS,
    SEVERITIES,
    STATES,
    AlarmRule,
    RuleError,
    parse_rule,
    parse_rule_patch,
)

__all__ = [
    "ACTIVE_STATES",
    "COMPARISONS",
    "EVENTS",
    "OPERATORS",
    "SEVERITIES",
    "STATES",
    "AlarmEvent",
    "AlarmRule",
    "Decision",
    "RuleError",
    "Tracker",
    "condition_normal",
    "parse_rule",
    "parse_rule_patch",
    "stale_due",
    "step",
    "violates",
]
