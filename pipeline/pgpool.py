"""PostgreSQL connection pools that come back within seconds of an outage.

psycopg_pool retries a lost connection with a doubling delay for up to five
minutes by default, so after a one-minute outage its next attempt can be a
minute away while the caller keeps timing out. Here a pool gives up on a
reconnection after a few seconds instead; the next caller's ``connection()``
then grows the pool with a fresh, immediate attempt, so recovery follows the
caller's own retry schedule. Every pooled connection is checked before it is
handed out, so a restart costs one reconnect, not one failed operation.
"""

from __future__ import annotations

from typing import Any

from psycopg_pool import AsyncConnectionPool

__all__ = ["RECONNECT_TIMEOUT_S", "make_pool"]

RECONNECT_TIMEOUT_S = 5.0


def make_pool(conninfo: str, *, name: str, max_size: int = 4, timeout: float = 10.0,
              connect_timeout: int = 5, autocommit: bool = True) -> AsyncConnectionPool[Any]:
    """An unopened pool (``await pool.open(wait=False)`` it inside the event loop)."""
    return AsyncConnectionPool(
        conninfo, min_size=1, max_size=max_size, open=False, timeout=timeout, name=name,
        kwargs={"autocommit": autocommit, "connect_timeout": connect_timeout},
        check=AsyncConnectionPool.check_connection,
        reconnect_timeout=RECONNECT_TIMEOUT_S,
    )
