"""Secrets in objects shown to users who may read the object but not its secrets.

Alarm rules name where notifications go: e-mail addresses (personal data) and
webhook URLs, which often carry their credential in the path, the query or the
user-info part (``https://hooks.example.com/services/T0/B0/XXXX``). Non-admins
see only where a webhook goes (scheme and host) and an address's domain.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

__all__ = ["MASK", "mask_email", "mask_phone", "mask_rule_json", "mask_url"]

MASK = "***"


def mask_email(address: str) -> str:
    """``ops@example.com`` -> ``o***@example.com``."""
    local, at, domain = address.rpartition("@")
    if not at or not local:
        return MASK
    return f"{local[0]}{MASK}@{domain}"


def mask_url(url: str) -> str:
    """``https://u:p@host:8443/path?q`` -> ``https://host:8443/***``: no user info, path,
    query or fragment."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return MASK
    if not parts.scheme or not host:
        return MASK
    where = f"[{host}]" if ":" in host else host
    if port is not None:
        where += f":{port}"
    return f"{parts.scheme}://{where}/{MASK}"


def mask_phone(number: str) -> str:
    """``+4917****89``: country and a little of the number, enough to tell them apart."""
    return number[:5] + MASK + number[-2:] if len(number) > 8 else MASK


def mask_rule_json(rule: dict[str, Any]) -> dict[str, Any]:
    """A copy of a rule's JSON (:meth:`AlarmRule.to_json`) with its notification targets masked."""
    notify = dict(rule.get("notify") or {})
    notify["emails"] = [mask_email(e) for e in notify.get("emails", [])]
    notify["webhooks"] = [mask_url(u) for u in notify.get("webhooks", [])]
    notify["sms"] = [mask_phone(n) for n in notify.get("sms", [])]
    notify["masked"] = True
    return {**rule, "notify": notify}
