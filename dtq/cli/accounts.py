"""login, logout, and API keys and users: through the API, or on a data directory.

`keys` and `users` talk to the server whenever its URL is known (a flag, DTQ_URL or a saved
login). They work on a data directory only when `--data-dir` is given, and never create one:
a key made in a fresh store would carry another JWT secret and be refused by the real server.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import time
from pathlib import Path
from typing import Any

import trio

from dtq.cli.common import (
    ROLES,
    UsageError,
    add_json_flag,
    add_parser,
    add_remote_flags,
    add_store_flags,
    settings_from,
)
from dtq.cli.config import SavedLogin, forget_login, login_path, resolve_remote, save_login
from dtq.cli.output import print_rows, wants_json
from dtq.cli.tasks import client_for
from dtq.client import DEFAULT_URL, Client
from dtq.settings import Settings


class NoServer(Exception):
    """Neither a server URL nor a data directory: say how to give one."""


def read_secret(prompt: str, *, confirm: bool = False) -> str:
    """From the terminal without echo; else the first line of standard input (a pipe, a file),
    so scripts and tests can provide it."""
    if sys.stdin.isatty():
        secret = getpass.getpass(prompt)
        if confirm and getpass.getpass("Again: ") != secret:
            raise ValueError("the passwords do not match")
    else:
        secret = sys.stdin.readline().rstrip("\r\n")
    if not secret:
        raise ValueError("no password given")
    return secret


# -- login / logout --------------------------------------------------------------------------


def cmd_login(args: argparse.Namespace) -> int:
    url = (args.url or os.environ.get("DTQ_URL") or DEFAULT_URL).rstrip("/")
    password = read_secret(f"Password for {args.username} at {url}: ")
    with Client(url) as client:
        client.api_key = None  # this logs in as a user, whatever DTQ_API_KEY says
        reply = client.sign_in(args.username, password)
    expires_in = reply.get("expires_in")
    expires_at = time.time() + float(expires_in) if expires_in else None
    path = save_login(SavedLogin(url, str(reply["token"]), args.username, expires_at))
    role = reply.get("role", "?")
    hours = f", valid for {float(expires_in) / 3600:g} h" if expires_in else ""
    print(f"Logged in to {url} as {args.username} ({role}){hours}.")
    print(f"The token is kept in {path}; `dtq logout` forgets it.")
    return 0


def cmd_logout(args: argparse.Namespace) -> int:
    saved = forget_login()
    if saved is None:
        print("Not logged in.")
    else:
        print(f"Logged out of {saved.url} (the saved token is deleted).")
    return 0


# -- where keys and users live ------------------------------------------------------------------


def _offline_settings(args: argparse.Namespace) -> Settings | None:
    """Settings for working on a data directory, or None to go through the API."""
    if args.data_dir is None:
        remote = resolve_remote(args)
        if not remote.url_known:
            raise NoServer(
                "no server to talk to: run `dtq login --url URL` (or give --url or DTQ_URL), "
                "or --data-dir DIR to work on the server's data directory"
            )
        return None
    if args.url:
        raise UsageError("--data-dir", "give --url or --data-dir, not both")
    store = Path(args.data_dir) / "data.mdb"
    if not store.is_file():
        raise UsageError(
            "--data-dir",
            f"no dtq data in {args.data_dir!r} (no data.mdb); give the directory the server "
            "uses, or --url to go through the API",
        )
    return settings_from(args)


async def _with_accounts(settings: Settings, fn: Any) -> Any:
    from dtq.clock import TrioClock
    from dtq.core.accounts import Accounts
    from dtq.server import open_writer

    # LMDB serialises writers across processes, so this is safe beside a running server.
    async with open_writer(settings) as store:
        return await fn(await Accounts.open(store, TrioClock(), settings))


def _offline(settings: Settings, fn: Any) -> Any:
    return trio.run(_with_accounts, settings, fn)


# -- keys ---------------------------------------------------------------------------------------


def cmd_keys(args: argparse.Namespace) -> int:
    settings = _offline_settings(args)
    if args.action == "create":
        return _create_key(args, settings)
    if args.action == "list":
        if settings is None:
            with client_for(args) as client:
                keys = client.api_keys()
        else:

            async def listed(a: Any) -> Any:
                return await a.list_api_keys()

            keys = [
                {"key_id": k.key_id, "name": k.name, "role": k.role.value,
                 "created_by": k.created_by}
                for k in _offline(settings, listed)
            ]  # fmt: skip
        fields = ("key_id", "name", "role", "created_by")
        print_rows([{f: k.get(f) for f in fields} for k in keys], args.json)
        return 0
    if settings is None:
        with client_for(args) as client:
            client.revoke_api_key(args.key_id)
    else:
        _offline(settings, lambda a: a.revoke_api_key(args.key_id))
    print(f"revoked {args.key_id}")
    return 0


def _create_key(args: argparse.Namespace, settings: Settings | None) -> int:
    limits = {
        "rate_limit_per_minute": args.rate_limit_per_minute,
        "rate_limit_per_hour": args.rate_limit_per_hour,
    }
    if settings is None:
        with client_for(args) as client:
            made = client.create_api_key(args.name, args.role, **limits)
            url = client.url
        key_id, role, full = made["key_id"], made["role"], made["key"]
    else:
        from dtq.core.accounts import ApiKeyCreate
        from dtq.core.auth import Role

        body = ApiKeyCreate(name=args.name, role=Role(args.role), **limits)
        record, full = _offline(settings, lambda a: a.create_api_key(body, "cli"))
        key_id, role, url = record.key_id, record.role.value, None
    if wants_json(args.json):
        import json

        print(json.dumps({"key_id": key_id, "name": args.name, "role": role, "key": full}))
        return 0
    print(f"API key {key_id} ({role}) created. It is shown only this once:\n")
    print(f"    {full}\n")
    print("Use it from the shell (dtq worker, dtq submit and dtq.Client read these):\n")
    if url:
        print(f"    export DTQ_URL={url}")
    print(f"    export DTQ_API_KEY={full}\n")
    print("or send it with any request:\n")
    print(f'    curl -H "X-API-Key: {full}" {url or DEFAULT_URL}/api/v1/tasks')
    return 0


# -- users --------------------------------------------------------------------------------------


def _password(args: argparse.Namespace, prompt: str) -> str:
    return args.password or os.environ.get("DTQ_USER_PASSWORD") or read_secret(prompt, confirm=True)


def cmd_users(args: argparse.Namespace) -> int:
    settings = _offline_settings(args)
    if args.action == "list":
        if settings is None:
            with client_for(args) as client:
                users = [{"username": u["username"], "role": u["role"]} for u in client.users()]
        else:

            async def listed(a: Any) -> Any:
                return await a.list_users()

            users = [
                {"username": u.username, "role": u.role.value} for u in _offline(settings, listed)
            ]
        print_rows(users, args.json)
        return 0
    password = _password(args, f"New password for {args.username}: ")
    if args.action == "create":
        if settings is None:
            with client_for(args) as client:
                client.create_user(args.username, password, args.role)
        else:
            from dtq.core.accounts import UserCreate
            from dtq.core.auth import Role

            body = UserCreate(username=args.username, password=password, role=Role(args.role))
            _offline(settings, lambda a: a.create_user(body))
        print(f"user {args.username} ({args.role}) created")
        return 0
    if settings is None:
        with client_for(args) as client:
            client.set_password(args.username, password)
    else:
        from dtq.core.accounts import validate_username

        name = validate_username(args.username)
        _offline(settings, lambda a: a.set_password(name, password))
    print(f"password of {args.username} changed")
    return 0


# -- parser -------------------------------------------------------------------------------------


def _where(p: argparse.ArgumentParser) -> None:
    add_remote_flags(p)
    add_store_flags(p, explicit=True)
    add_json_flag(p)


def register(sub: Any) -> None:
    p = add_parser(
        sub, "login", "log in to a server and keep the token for the other commands",
        description="Log in as a user; the token and URL are kept (mode 0600) in "
        f"{login_path()} for submit, tasks, workers, keys and users. The password is read "
        "from the terminal, or from the first line of standard input when that is not one.",
    )  # fmt: skip
    p.add_argument("--url", help="server URL (else DTQ_URL, else http://127.0.0.1:5000)")
    p.add_argument("--username", default="admin", help="user to log in as")
    p.set_defaults(func=cmd_login)

    p = add_parser(sub, "logout", "forget the saved login")
    p.set_defaults(func=cmd_logout)

    keys = add_parser(
        sub, "keys", "manage API keys (through the API, or on a data directory with --data-dir)"
    ).add_subparsers(dest="action", required=True, metavar="ACTION")
    p = add_parser(keys, "create", "create an API key (printed once)")
    p.add_argument("--role", required=True, choices=ROLES,
                   help="what the key may do: admin (everything), operator (tasks, workers, "
                   "analytics), worker (run tasks, submit), viewer (read only)")  # fmt: skip
    p.add_argument("--name", default="cli", help="a name to recognise the key by")
    p.add_argument("--rate-limit-per-minute", type=int,
                   help="this key's own limit (default: the server's; 0: none)")  # fmt: skip
    p.add_argument("--rate-limit-per-hour", type=int,
                   help="this key's own limit (default: the server's; 0: none)")  # fmt: skip
    _where(p)
    p.set_defaults(func=cmd_keys)
    p = add_parser(keys, "list", "list API keys (never the keys themselves)")
    _where(p)
    p.set_defaults(func=cmd_keys)
    p = add_parser(keys, "revoke", "revoke an API key")
    p.add_argument("key_id", help="the key's id (see `dtq keys list`)")
    _where(p)
    p.set_defaults(func=cmd_keys)

    users = add_parser(
        sub, "users", "manage users (through the API, or on a data directory with --data-dir)"
    ).add_subparsers(dest="action", required=True, metavar="ACTION")
    p = add_parser(users, "create", "create a user")
    p.add_argument("username", help="letters, digits and _ . @ -")
    p.add_argument("--role", default="viewer", choices=ROLES, help="the user's role")
    p.add_argument("--password", help="else DTQ_USER_PASSWORD, else asked for")
    _where(p)
    p.set_defaults(func=cmd_users)
    p = add_parser(users, "list", "list users")
    _where(p)
    p.set_defaults(func=cmd_users)
    p = add_parser(
        users, "set-password", "set a user's password",
        description="Set a user's password through the API (as an admin), or on the data "
        "directory with --data-dir: the way back in when the admin password is lost.",
    )  # fmt: skip
    p.add_argument("username", help="the user")
    p.add_argument("--password", help="else DTQ_USER_PASSWORD, else asked for")
    _where(p)
    p.set_defaults(func=cmd_users)
