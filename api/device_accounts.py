"""The MQTT accounts of registered devices, kept in step with the registry.

A device registered with protocol ``mqtt`` or ``gsm`` gets an account in
Mosquitto when it is created (user name = device id, password = its API key), a
new password when its key is rotated, and loses it when it is deleted or moved to
another protocol (see :mod:`pipeline.mqtt_accounts`). A registration whose
account the broker did not take is undone and answered ``503``: a device must not
hold a key that works over HTTP but not over MQTT.

A device whose protocol changes *to* MQTT gets its account with its next key
(``POST /api/devices/{id}/api-key``): only the key's hash is stored.

:func:`reconcile` removes accounts of devices that are gone (deleted while the
broker was away); the API runs it every ``RECONCILE_S`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from psycopg_pool import AsyncConnectionPool

from api.errors import ServiceUnavailable
from pipeline.mqtt_accounts import DEVICE_PROTOCOLS, AccountAdmin, AccountError

__all__ = ["RECONCILE_S", "close_account", "open_account", "reconcile", "reconcile_forever"]

log = logging.getLogger(__name__)

RECONCILE_S = 30.0


async def open_account(admin: AccountAdmin | None, device_id: str, protocol: str, api_key: str) -> None:
    """Give an MQTT/GSM device its account (or a new password); ``503`` if the broker refused."""
    if admin is None or protocol not in DEVICE_PROTOCOLS:
        return
    try:
        await asyncio.to_thread(admin.add_device, device_id, protocol, api_key)
    except AccountError as exc:
        log.warning("MQTT account of device %s not created: %s", device_id, exc)
        raise ServiceUnavailable("MQTT broker unavailable",
                                 "the device's MQTT account could not be created; try again") from exc


async def close_account(admin: AccountAdmin | None, device_id: str) -> None:
    """Remove a device's account, if any; a broker away now is mended by :func:`reconcile`."""
    if admin is None:
        return
    try:
        await asyncio.to_thread(admin.remove_device, device_id)
    except AccountError as exc:
        log.warning("MQTT account of device %s not removed yet (retried within %.0f s): %s",
                    device_id, RECONCILE_S, exc)


async def reconcile(admin: AccountAdmin, pool: AsyncConnectionPool[Any]) -> int:
    """Remove the accounts of devices that are not registered with an MQTT protocol; how many."""
    held = await asyncio.to_thread(admin.device_accounts)
    if not held:
        return 0
    async with pool.connection(timeout=5.0) as conn:
        cursor = await conn.execute(
            "SELECT id FROM devices WHERE id = ANY(%s) AND protocol = ANY(%s)",
            (sorted(held), sorted(DEVICE_PROTOCOLS)))
        kept = {row[0] for row in await cursor.fetchall()}
    stale = held - kept
    for device_id in sorted(stale):
        await asyncio.to_thread(admin.remove_device, device_id)
    if stale:
        log.info("removed the MQTT accounts of %d devices no longer registered for MQTT", len(stale))
    return len(stale)


async def reconcile_forever(admin: AccountAdmin, pool: AsyncConnectionPool[Any]) -> None:
    """:func:`reconcile` every ``RECONCILE_S`` s, for as long as the API runs."""
    while True:
        await asyncio.sleep(RECONCILE_S)
        try:
            await reconcile(admin, pool)
        except Exception as exc:  # broker or database away: next round
            log.info("MQTT account reconciliation skipped: %s", exc)
