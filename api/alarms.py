"""Alarm routes: rules (``/api/alarm-rules``) and alarms (``/api/alarms``, ack, clear, shelve).

Reading needs any authenticated user; acknowledging, clearing and shelving need
``operator``; changing rules needs ``admin``. A non-admin sees the rules of its
applications (a rule of an application granted to it, or of a device in one) and
the rules of every device, with their notification targets masked
(:mod:`api.masking`); any other rule answers 404 as if it did not exist. Every operator action is a
conditional transition in PostgreSQL (409 when the alarm is not in a state that
allows it) and publishes its ``AlarmEvent`` on topic ``alarms``; should Kafka
not acknowledge in time, the event stays in the outbox and the alarm engine
relays it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import datetime
from typing import Any, cast

import psycopg
from psycopg_pool import PoolTimeout
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api.access import require_device
from api.auth import Principal, principal_of, requires_auth
from api.errors import ApiError, InvalidField, NotFound, ServiceUnavailable
from api.jsonbody import json_object
from api.masking import mask_rule_json
from api.services import services_of
from pipeline.alarms.catalog import AlarmFilter, RuleCatalog
from pipeline.alarms.engine import condition_normal
from pipeline.alarms.rules import (
    ACTIVE_STATES,
    SEVERITIES,
    STATES,
    AlarmRule,
    RuleError,
    parse_rule,
    parse_rule_patch,
)
from pipeline.alarms.store import AlarmStore, StoredEvent, StoreUnavailable
from pipeline.producer import AsyncProducer, Outgoing
from pipeline.settings import Topics
from schemas.latest import LATEST_KEY
from schemas.records import DEVICE_ID_PATTERN, utcnow

__all__ = ["PUBLISH_TIMEOUT_S", "Conflict", "alarm_routes"]

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 10.0
_STATE_ALIASES = {"active": ACTIVE_STATES, "cleared": ("cleared_unacked", "cleared_acked"),
                  "unacked": ("active_unacked", "cleared_unacked")}
_MAX_SHELVE_MINUTES = 30 * 24 * 60


class Conflict(ApiError):
    status_code = 409


# --- helpers -----------------------------------------------------------------------------
def _catalog(request: Request) -> RuleCatalog:
    state = request.app.state
    catalog: RuleCatalog | None = getattr(state, "alarm_catalog", None)
    pool = services_of(request).pool
    if catalog is None or catalog.store.pool is not pool:
        catalog = state.alarm_catalog = RuleCatalog(AlarmStore(pool))
    return catalog


def _producer(request: Request) -> AsyncProducer:
    state = request.app.state
    producer: AsyncProducer | None = getattr(state, "alarm_producer", None)
    if producer is None:
        bootstrap = state.settings.kafka_bootstrap
        producer = state.alarm_producer = AsyncProducer(bootstrap, client_id="webscada-api-alarms")
    return producer


def _uuid(request: Request, name: str, what: str) -> str:
    raw: str = request.path_params[name]
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise NotFound(f"no such {what}", raw) from None


async def _guarded(action: Any) -> Any:
    try:
        return await action
    except StoreUnavailable as exc:
        raise ServiceUnavailable("PostgreSQL unavailable", str(exc)) from exc


def _invalid(exc: RuleError) -> InvalidField:
    return InvalidField(exc.field, exc.value, exc.message)


async def _publish(request: Request, catalog: RuleCatalog, events: list[StoredEvent]) -> None:
    if not events:
        return
    records = [Outgoing(Topics.ALARMS, s.event.device_id.encode(), s.event.encode()) for s in events]
    try:
        await asyncio.wait_for(_producer(request).send_all(records), PUBLISH_TIMEOUT_S)
        await catalog.store.mark_published([s.outbox_id for s in events])
    except (TimeoutError, StoreUnavailable) as exc:
        # The transition is committed and its event is in the outbox: the engine relays it.
        log.warning("alarm events %s not published now (%s); left to the relay",
                    [s.outbox_id for s in events], exc)


# --- rules ----------------------------------------------------------------------------------
async def _visible_rules(request: Request, rules: list[AlarmRule]) -> list[AlarmRule]:
    """The rules the caller may read: admins all; others the rules of a granted
    application, of a device in one, and the rules of every device."""
    principal = principal_of(request)
    if principal.is_admin:
        return rules
    devices = sorted({rule.device_id for rule in rules if rule.device_id is not None})
    visible_devices: set[str] = set()
    if devices and principal.applications:
        try:
            async with services_of(request).pool.connection(timeout=5.0) as conn:
                cur = await conn.execute(
                    "SELECT id FROM devices WHERE id = ANY(%s) AND application_id = ANY(%s)",
                    (devices, sorted(principal.applications)),
                )
                visible_devices = {row[0] for row in await cur.fetchall()}
        except (PoolTimeout, psycopg.OperationalError) as exc:
            raise ServiceUnavailable("PostgreSQL unavailable", str(exc)) from exc
    return [rule for rule in rules if _rule_visible(principal, rule, visible_devices)]


def _rule_visible(principal: Principal, rule: AlarmRule, visible_devices: set[str]) -> bool:
    if rule.device_id is not None:
        return rule.device_id in visible_devices
    if rule.application_id is not None:
        return principal.may_see(rule.application_id)
    return True  # a rule of every device judges the caller's devices too


def _rule_json(principal: Principal, rule: AlarmRule) -> dict[str, Any]:
    shown = rule.to_json()
    return shown if principal.is_admin else mask_rule_json(shown)


@requires_auth
async def list_rules(request: Request) -> Response:
    """The alarm rules the caller may see (deleted ones excepted); notification targets are
    masked for non-admins."""
    rules = await _visible_rules(request, await _guarded(_catalog(request).all()))
    principal = principal_of(request)
    return JSONResponse([_rule_json(principal, rule) for rule in rules])


@requires_auth(role="admin")
async def create_rule(request: Request) -> Response:
    """Create an alarm rule; 201 with the rule, 422 naming a bad field."""
    try:
        rule = parse_rule(await json_object(request))
    except RuleError as exc:
        raise _invalid(exc) from exc
    created = await _guarded(_catalog(request).create(rule))
    return JSONResponse(created.to_json(), status_code=201)


async def _rule(request: Request) -> AlarmRule:
    """The rule, or 404 when it does not exist or the caller may not see it."""
    rule_id = _uuid(request, "rule_id", "alarm rule")
    rule = await _guarded(_catalog(request).get(rule_id))
    if rule is None or not await _visible_rules(request, [rule]):
        raise NotFound("no such alarm rule", rule_id)
    return cast(AlarmRule, rule)


@requires_auth
async def get_rule(request: Request) -> Response:
    """One alarm rule (notification targets masked for non-admins)."""
    return JSONResponse(_rule_json(principal_of(request), await _rule(request)))


@requires_auth(role="admin")
async def patch_rule(request: Request) -> Response:
    """Change some fields of a rule; the engine picks the change up within seconds."""
    rule = await _rule(request)
    try:
        changed = parse_rule_patch(rule, await json_object(request))
    except RuleError as exc:
        raise _invalid(exc) from exc
    updated = await _guarded(_catalog(request).update(changed))
    if updated is None:
        raise NotFound("no such alarm rule", rule.id)
    return JSONResponse(updated.to_json())


@requires_auth(role="admin")
async def delete_rule(request: Request) -> Response:
    """Delete a rule; its active alarms are cleared. 204."""
    rule = await _rule(request)
    catalog = _catalog(request)
    if not await _guarded(catalog.delete(rule.id)):
        raise NotFound("no such alarm rule", rule.id)
    who = principal_of(request).subject
    events = await _guarded(catalog.store.clear_rule(rule.id, by=who, message="rule deleted"))
    await _publish(request, catalog, events)
    return Response(status_code=204)


# --- alarms ----------------------------------------------------------------------------------
def _filter(request: Request) -> AlarmFilter:
    params = request.query_params
    states: list[str] = []
    for raw in filter(None, (params.get("state") or "").split(",")):
        if raw in _STATE_ALIASES:
            states += _STATE_ALIASES[raw]
        elif raw in STATES:
            states.append(raw)
        else:
            raise InvalidField("state", raw, f"must be one of {', '.join((*STATES, *_STATE_ALIASES))}")
    severities = [s for s in (params.get("severity") or "").split(",") if s]
    for severity in severities:
        if severity not in SEVERITIES:
            raise InvalidField("severity", severity, f"must be one of {', '.join(SEVERITIES)}")
    device_id = params.get("device_id") or None
    if device_id is not None and not DEVICE_ID_PATTERN.fullmatch(device_id):
        raise InvalidField("device_id", device_id, f"must match {DEVICE_ID_PATTERN.pattern}")
    rule_id = params.get("rule_id") or None
    if rule_id is not None:
        try:
            rule_id = str(uuid.UUID(rule_id))
        except ValueError:
            raise InvalidField("rule_id", params.get("rule_id"), "must be a UUID") from None
    numbers = {}
    for name, default, high in (("limit", 100, 1000), ("offset", 0, 2**31 - 1)):
        given = params.get(name)
        try:
            numbers[name] = default if given is None else int(given)
        except ValueError:
            raise InvalidField(name, given, "must be an integer") from None
        if not 0 <= numbers[name] <= high or (name == "limit" and numbers[name] == 0):
            raise InvalidField(name, given, f"must be between {1 if name == 'limit' else 0} and {high}")
    return AlarmFilter(tuple(dict.fromkeys(states)), tuple(severities), device_id, rule_id,
                       numbers["limit"], numbers["offset"])


@requires_auth
async def list_alarms(request: Request) -> Response:
    """Alarms, newest first. Filters: `state` (comma list; also active, cleared, unacked),
    `device_id`, `severity`, `rule_id`; paging: `limit`, `offset`."""
    where = _filter(request)
    principal = principal_of(request)
    if where.device_id is not None:
        await require_device(request, principal, where.device_id)
    alarms = await _guarded(_catalog(request).alarms(where))
    if not principal.is_admin:
        alarms = await _visible(request, alarms)
    return JSONResponse(alarms)


async def _visible(request: Request, alarms: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Only the alarms of devices in the caller's applications (object-level access)."""
    devices = sorted({alarm["device_id"] for alarm in alarms})
    if not devices:
        return alarms
    applications = sorted(principal_of(request).applications)
    async with services_of(request).pool.connection() as conn:
        cur = await conn.execute(
            "SELECT id FROM devices WHERE id = ANY(%s) AND application_id = ANY(%s)",
            (devices, applications),
        )
        allowed = {row[0] for row in await cur.fetchall()}
    return [alarm for alarm in alarms if alarm["device_id"] in allowed]


async def _visible_alarm(request: Request, alarm_id: str, *, history: bool = False) -> dict[str, Any]:
    """The alarm, or 404 when it does not exist or belongs to a device the caller may not see."""
    alarm = await _guarded(_catalog(request).alarm(alarm_id, history=history))
    if alarm is None:
        raise NotFound("no such alarm", alarm_id)
    try:
        await require_device(request, principal_of(request), alarm["device_id"], must_exist=False)
    except NotFound:
        raise NotFound("no such alarm", alarm_id) from None
    return cast(dict[str, Any], alarm)


@requires_auth
async def get_alarm(request: Request) -> Response:
    """One alarm with its history of events."""
    alarm_id = _uuid(request, "alarm_id", "alarm")
    return JSONResponse(await _visible_alarm(request, alarm_id, history=True))


async def _condition_normal(request: Request, alarm: dict[str, Any]) -> bool:
    """Whether the alarm's condition has returned to normal, judged on the latest reading."""
    rule = await _guarded(_catalog(request).get(alarm["rule_id"]))
    if rule is None or not rule.enabled:
        return True  # no rule judges it any more
    try:
        found = await services_of(request).redis.hgetall(
            LATEST_KEY.format(device_id=alarm["device_id"]))
    except Exception as exc:
        raise ServiceUnavailable("Redis unavailable", str(exc)) from exc
    latest = cast(dict[str, str], found)
    if rule.is_stale:
        if "ts" not in latest:
            return False
        age = (utcnow() - datetime.fromisoformat(latest["ts"].replace("Z", "+00:00"))).total_seconds()
        return age < rule.for_seconds
    raw = latest.get(rule.metric or "")
    return raw is None or condition_normal(rule, float(raw))


async def _act(request: Request, action: str) -> Response:
    alarm_id = _uuid(request, "alarm_id", "alarm")
    catalog = _catalog(request)
    visible = await _visible_alarm(request, alarm_id)
    shelve_s = 0.0
    if action == "shelve":
        minutes = (await json_object(request)).get("minutes")
        if isinstance(minutes, bool) or not isinstance(minutes, int | float) \
                or not 0 <= minutes <= _MAX_SHELVE_MINUTES:
            raise InvalidField("minutes", minutes,
                               f"must be a number from 0 (unshelve) to {_MAX_SHELVE_MINUTES}")
        shelve_s = float(minutes) * 60.0
    if action == "clear":
        alarm = visible
        if alarm["state"] in ACTIVE_STATES and not await _condition_normal(request, alarm):
            raise Conflict("condition still active",
                           "the latest reading still violates the rule; it clears by itself once normal")
    who = principal_of(request).subject
    before, stored = await _guarded(catalog.store.operator_action(
        action, alarm_id, by=who, shelve_s=shelve_s, message=f"{action} by {who}"))
    if before is None:
        raise NotFound("no such alarm", alarm_id)
    if stored is None:
        raise Conflict(f"cannot {action} an alarm in state {before}", {"state": before})
    await _publish(request, catalog, [stored])
    return JSONResponse(await _guarded(catalog.alarm(alarm_id, history=True)))


@requires_auth(role="operator")
async def ack_alarm(request: Request) -> Response:
    """Acknowledge an alarm (409 when already acknowledged)."""
    return await _act(request, "ack")


@requires_auth(role="operator")
async def clear_alarm(request: Request) -> Response:
    """Clear an active alarm whose condition has returned to normal (409 while it has not)."""
    return await _act(request, "clear")


@requires_auth(role="operator")
async def shelve_alarm(request: Request) -> Response:
    """Shelve the alarm's (rule, device) for `{"minutes"}` (0 unshelves): no new alarm is raised meanwhile."""
    return await _act(request, "shelve")


def alarm_routes() -> list[Route]:
    return [
        Route("/api/alarm-rules", list_rules, methods=["GET"]),
        Route("/api/alarm-rules", create_rule, methods=["POST"]),
        Route("/api/alarm-rules/{rule_id}", get_rule, methods=["GET"]),
        Route("/api/alarm-rules/{rule_id}", patch_rule, methods=["PATCH"]),
        Route("/api/alarm-rules/{rule_id}", delete_rule, methods=["DELETE"]),
        Route("/api/alarms", list_alarms, methods=["GET"]),
        Route("/api/alarms/{alarm_id}", get_alarm, methods=["GET"]),
        Route("/api/alarms/{alarm_id}/ack", ack_alarm, methods=["POST"]),
        Route("/api/alarms/{alarm_id}/clear", clear_alarm, methods=["POST"]),
        Route("/api/alarms/{alarm_id}/shelve", shelve_alarm, methods=["POST"]),
    ]
