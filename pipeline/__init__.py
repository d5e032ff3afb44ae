"""WebSCADA Stream's pipeline: settings, the stream agents, the worker and the CLI."""

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

# The one place the version is written is pyproject.toml; this reads the installed metadata.
try:
    __version__ = version("webscada-stream")
except PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"
