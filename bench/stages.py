"""Stream agents for the stage ladder: the bottom rungs, below any real agent.

They consume ``telemetry.valid`` the way every sink does (``take_events`` batches
of ``sink_batch_size``) and do nothing (``bench-consume``) or only decode each
record (``bench-decode``). The ladder runs them as extra worker roles through
the documented extension point::

    WEBSCADA_EXTRA_AGENTS='["bench-consume=bench.stages:register_consume"]' \\
        webscada worker --role bench-consume
"""

from __future__ import annotations

from typing import cast

import faust
from faust.streams import Stream
from faust.types import StreamT

from pipeline.settings import Settings, Topics
from schemas import Telemetry

__all__ = ["EXTRA_AGENTS", "register_consume", "register_decode"]

EXTRA_AGENTS = [
    "bench-consume=bench.stages:register_consume",
    "bench-decode=bench.stages:register_decode",
]


def _register(app: faust.App, settings: Settings, *, decode: bool) -> None:
    from pipeline.app import raw_topic

    source = raw_topic(app, Topics.VALID, settings)

    @app.agent(source, name="bench-decode" if decode else "bench-consume")
    async def consume(stream: StreamT[bytes]) -> None:
        batches = cast(Stream[bytes], stream).take_events(settings.sink_batch_size,
                                                           within=settings.sink_batch_within_s)
        async for events in batches:
            if decode:
                for event in events:
                    Telemetry.decode(event.message.value or b"")


def register_consume(app: faust.App, settings: Settings) -> None:
    _register(app, settings, decode=False)


def register_decode(app: faust.App, settings: Settings) -> None:
    _register(app, settings, decode=True)
