"""``webscada user add|grant|passwd|list``: manage the users of the API from the shell."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import secrets
import sys
from typing import TextIO

from api.passwords import PasswordError, Passwords
from api.tokens import ROLES
from api.users import UserError, UserStore, connect_once
from pipeline.settings import Settings

__all__ = ["ADMIN_USER", "add_arguments", "ensure_admin", "main", "read_new_password"]

ADMIN_USER = "admin"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``user`` sub-commands, for the ``webscada`` parser."""
    sub = parser.add_subparsers(dest="user_action", required=True)
    p = sub.add_parser("add", help="create a user")
    p.add_argument("name")
    p.add_argument("--role", required=True, choices=list(reversed(ROLES)))
    p.add_argument("--password-stdin", action="store_true",
                   help="read the password from the first line of standard input")
    p = sub.add_parser("grant", help="let a user see an application")
    p.add_argument("name")
    p.add_argument("application")
    p = sub.add_parser("passwd", help="change a user's password (revokes its refresh tokens)")
    p.add_argument("name")
    p.add_argument("--password-stdin", action="store_true")
    sub.add_parser("list", help="users, roles and granted applications")


def read_new_password(from_stdin: bool, stdin: TextIO = sys.stdin) -> str:
    """A new password: the first line of stdin, or typed twice at a terminal."""
    if from_stdin:
        return stdin.readline().rstrip("\r\n")
    if not stdin.isatty():
        raise UserError("no terminal to ask for a password: use --password-stdin")
    first = getpass.getpass("New password: ")
    if getpass.getpass("Repeat it: ") != first:
        raise UserError("the two passwords differ")
    return first


async def _run(settings: Settings, args: argparse.Namespace) -> str:
    store = UserStore(lambda: connect_once(settings.pg_conninfo), Passwords())
    action = args.user_action
    if action == "add":
        user = await store.add(args.name, read_new_password(args.password_stdin), args.role)
        return f"user {user.username} added ({user.role})"
    if action == "grant":
        await store.grant(args.name, args.application)
        return f"user {args.name} may now see application {args.application}"
    if action == "passwd":
        if await store.get(args.name) is None:
            raise UserError(f"no user {args.name!r}")
        await store.set_password(args.name, read_new_password(args.password_stdin))
        return f"password of {args.name} changed; its refresh tokens are revoked"
    lines = []
    async with connect_once(settings.pg_conninfo) as conn:
        cursor = await conn.execute(
            "SELECT u.username, u.role, u.disabled, string_agg(a.application_id, ',' ORDER BY"
            " a.application_id) FROM users u LEFT JOIN user_applications a ON a.user_id = u.id"
            " GROUP BY u.id ORDER BY u.username"
        )
        for name, role, disabled, apps in await cursor.fetchall():
            scope = "all applications" if role == "admin" else (apps or "no application")
            lines.append(f"{name:24} {role:9} {scope}{'  (disabled)' if disabled else ''}")
    return "\n".join(lines) or "no users"


def main(settings: Settings, args: argparse.Namespace) -> int:
    """Run one ``user`` sub-command; 0 on success, 2 with a message on a user error."""
    try:
        print(asyncio.run(_run(settings, args)))
    except (UserError, PasswordError) as exc:
        print(f"webscada user {args.user_action}: {exc}", file=sys.stderr)
        return 2
    return 0


async def _ensure_admin(settings: Settings) -> str:
    from api.config import load_api_config

    store = UserStore(lambda: connect_once(settings.pg_conninfo), Passwords())
    if await store.get(ADMIN_USER) is not None:
        saved = settings.stack_dir / "admin-password"
        where = f" (password in {saved})" if saved.exists() else ""
        return f"Log in as {ADMIN_USER}{where}."
    configured = load_api_config(settings).admin_password
    if configured is not None:
        await store.add(ADMIN_USER, configured.get_secret_value(), "admin")
        return f"Created user {ADMIN_USER} with the password of WEBSCADA_ADMIN_PASSWORD."
    password = secrets.token_urlsafe(15)
    await store.add(ADMIN_USER, password, "admin")
    saved = settings.stack_dir / "admin-password"
    saved.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(saved, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(password + "\n")
    os.chmod(saved, 0o600)  # an older file may have had other bits
    return (f"Created user {ADMIN_USER} with password {password} "
            f"(shown once; also in {saved}, mode 0600).")


def ensure_admin(settings: Settings) -> str:
    """Create the user ``admin`` unless it exists; says how to log in.

    Its password is ``WEBSCADA_ADMIN_PASSWORD`` when set, else generated, written to
    ``<stack_dir>/admin-password`` (mode 0600) and shown in the returned text, once.
    """
    return asyncio.run(_ensure_admin(settings))
