"""Commands back to devices: state machine, PostgreSQL store, transports and the dispatcher role.

Only the pure parts are exported here, so the API can use them without loading
Faust; the worker role is :func:`pipeline.commands.agent.register_dispatcher`.
"""

from pipeline.commands.acks import ACK_TOPICS, AckError, parse_ack
from pipeline.commands.kafka import command_record, status_record
from pipeline.commands.lifecycle import (
    DEVICE_ACK_STATUSES,
    FINAL,
    OPEN,
    STATUSES,
    InvalidTransition,
    check_transition,
    is_due,
    may_advance,
    predecessors,
)
from pipeline.commands.transports import (
    Hold,
    Publish,
    Reject,
    UndeliverableCommand,
    chirpstack_downlink,
    device_message,
    plan,
)

__all__ = [
    "ACK_TOPICS",
    "DEVICE_ACK_STATUSES",
    "FINAL",
    "OPEN",
    "STATUSES",
    "AckError",
    "Hold",
    "InvalidTransition",
    "Publish",
    "Reject",
    "UndeliverableCommand",
    "check_transition",
    "chirpstack_downlink",
    "command_record",
    "device_message",
    "is_due",
    "may_advance",
    "parse_ack",
    "plan",
    "predecessors",
    "status_record",
]
