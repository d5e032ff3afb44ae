"""The Kafka records of the command lifecycle (topics ``commands`` and ``commands.status``)."""

from __future__ import annotations

from pipeline.producer import Outgoing
from pipeline.settings import Topics
from schemas.records import Command, CommandStatus

__all__ = ["command_record", "status_record"]


def command_record(command: Command) -> Outgoing:
    """The ``commands`` record of ``command``, keyed by device id."""
    return Outgoing(Topics.COMMANDS, command.device_id.encode(), command.encode())


def status_record(status: CommandStatus) -> Outgoing:
    """The ``commands.status`` record of ``status``, keyed by device id."""
    return Outgoing(Topics.COMMAND_STATUS, status.device_id.encode(), status.encode())
