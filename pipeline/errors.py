"""Exceptions of the pipeline package."""

from __future__ import annotations

__all__ = ["PermanentSinkError", "PipelineError", "SinkError", "TransientSinkError"]


class PipelineError(Exception):
    """Base of the pipeline's own errors."""


class SinkError(PipelineError):
    """A sink could not write a batch."""


class TransientSinkError(SinkError):
    """The store is unreachable or overloaded: retry the same batch later."""


class PermanentSinkError(SinkError):
    """The store rejected the data itself: retrying the same records cannot help."""
