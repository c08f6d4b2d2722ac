"""The `dtq` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import msgspec
import trio

from dtq import __version__
from dtq.errors import DtqError
from dtq.settings import Settings, load_settings


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        name: getattr(args, name, None)
        for name in ("host", "port", "data_dir", "durability", "certfile", "keyfile", "log_format")
    }
    if getattr(args, "forwarded_allow_ips", None):
        overrides["forwarded_allow_ips"] = args.forwarded_allow_ips.split(",")
    return load_settings(overrides, config_file=getattr(args, "config", None))


def _print(obj: Any, as_json: bool) -> None:
    data = msgspec.to_builtins(obj)
    if as_json or not sys.stdout.isatty():
        print(json.dumps(data, indent=2))
        return
    rows = data if isinstance(data, list) else [data]
    if not rows:
        print("(none)")
        return
    cols = list(rows[0].keys())
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
    print("  ".join(c.upper().ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in cols))


# -- commands ----------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from dtq.logs import configure_logging
    from dtq.net.server import serve

    settings = _settings(args)
    configure_logging(settings)
    try:
        trio.run(serve, settings)
    except KeyboardInterrupt:  # a second Ctrl+C: stop now
        return 130
    return 0


def cmd_openapi(args: argparse.Namespace) -> int:
    from dtq.net.app import build_openapi

    print(json.dumps(build_openapi(), indent=2))
    return 0


def cmd_postman(args: argparse.Namespace) -> int:
    from dtq.net.app import build_openapi
    from dtq.net.postman import build_postman_collection

    collection = build_postman_collection(build_openapi())
    text = json.dumps(collection, indent=2) + "\n"
    if args.output == "-":
        sys.stdout.write(text)
    else:
        with open(args.output, "w") as fh:
            fh.write(text)
    return 0


async def _with_accounts(settings: Settings, fn: Any) -> Any:
    from dtq.accounts import Accounts
    from dtq.clock import TrioClock
    from dtq.runtime import open_writer

    async with open_writer(settings) as (store, writer):
        return await fn(Accounts(store, writer, TrioClock(), settings))


def cmd_keys(args: argparse.Namespace) -> int:
    from dtq.accounts import ApiKeyCreate
    from dtq.auth import Role

    settings = _settings(args)
    if args.action == "create":
        body = ApiKeyCreate(
            name=args.name,
            role=Role(args.role),
            rate_limit_per_minute=args.rate_limit_per_minute,
            rate_limit_per_hour=args.rate_limit_per_hour,
        )
        record, full = trio.run(_with_accounts, settings, lambda a: a.create_api_key(body, "cli"))
        if args.json or not sys.stdout.isatty():
            print(json.dumps({"key_id": record.key_id, "name": record.name,
                              "role": record.role.value, "key": full}))  # fmt: skip
        else:
            print(f"API key {record.key_id} ({record.role}) created. It is shown only once:")
            print(full)
    elif args.action == "list":

        async def keys(a: Any) -> Any:
            return a.list_api_keys()

        rows = trio.run(_with_accounts, settings, keys)
        _print([{"key_id": k.key_id, "name": k.name, "role": k.role.value,
                 "created_by": k.created_by} for k in rows], args.json)  # fmt: skip
    else:
        trio.run(_with_accounts, settings, lambda a: a.revoke_api_key(args.key_id))
        print(f"revoked {args.key_id}")
    return 0


def cmd_users(args: argparse.Namespace) -> int:
    from dtq.accounts import UserCreate
    from dtq.auth import Role

    settings = _settings(args)
    if args.action == "create":
        password = args.password or os.environ.get("DTQ_USER_PASSWORD")
        if not password:
            import getpass

            password = getpass.getpass(f"Password for {args.username}: ")
        body = UserCreate(username=args.username, password=password, role=Role(args.role))
        user = trio.run(_with_accounts, settings, lambda a: a.create_user(body))
        print(f"user {user.username} ({user.role}) created")
    else:

        async def users(a: Any) -> Any:
            return a.list_users()

        rows = trio.run(_with_accounts, settings, users)
        _print([{"username": u.username, "role": u.role.value} for u in rows], args.json)
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    from dtq.storage.backup import backup

    settings = _settings(args)
    size = backup(settings.data_dir, args.dest)
    print(f"backup of {settings.data_dir} written to {args.dest} ({size / 1e6:.1f} MB)")
    return 0


# -- parser ------------------------------------------------------------------------------


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="data directory (DTQ_DATA_DIR, default ./dtq-data)")
    p.add_argument("--config", help="TOML settings file (DTQ_CONFIG)")
    p.add_argument("--json", action="store_true", help="print JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dtq", description="dtq: a distributed task queue")
    parser.add_argument("--version", action="version", version=f"dtq {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the server")
    p.add_argument("--host", help="address to bind (DTQ_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (DTQ_PORT, default 5000)")
    p.add_argument("--data-dir", help="data directory (DTQ_DATA_DIR, default ./dtq-data)")
    p.add_argument("--durability", choices=["fsync", "os"], help="DTQ_DURABILITY (fsync)")
    p.add_argument("--certfile", help="TLS certificate (DTQ_CERTFILE)")
    p.add_argument("--keyfile", help="TLS key (DTQ_KEYFILE)")
    p.add_argument("--forwarded-allow-ips", help="proxies trusted for X-Forwarded-For")
    p.add_argument("--log-format", choices=["auto", "json", "console"], help="DTQ_LOG_FORMAT")
    p.add_argument("--config", help="TOML settings file (DTQ_CONFIG)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("openapi", help="print the OpenAPI document")
    p.set_defaults(func=cmd_openapi)

    p = sub.add_parser("postman", help="write the Postman collection")
    p.add_argument("output", nargs="?", default="postman-collection.json")
    p.set_defaults(func=cmd_postman)

    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(
        dest="action", required=True
    )
    p = keys.add_parser("create", help="create an API key (printed once)")
    p.add_argument("--name", default="cli")
    p.add_argument("--role", default="worker", choices=["admin", "operator", "worker", "viewer"])
    p.add_argument("--rate-limit-per-minute", type=int)
    p.add_argument("--rate-limit-per-hour", type=int)
    _common(p)
    p.set_defaults(func=cmd_keys)
    p = keys.add_parser("list", help="list API keys")
    _common(p)
    p.set_defaults(func=cmd_keys)
    p = keys.add_parser("revoke", help="revoke an API key")
    p.add_argument("key_id")
    _common(p)
    p.set_defaults(func=cmd_keys)

    users = sub.add_parser("users", help="manage users").add_subparsers(
        dest="action", required=True
    )
    p = users.add_parser("create", help="create a user")
    p.add_argument("username")
    p.add_argument("--role", default="viewer", choices=["admin", "operator", "worker", "viewer"])
    p.add_argument("--password", help="(or DTQ_USER_PASSWORD, or asked for)")
    _common(p)
    p.set_defaults(func=cmd_users)
    p = users.add_parser("list", help="list users")
    _common(p)
    p.set_defaults(func=cmd_users)

    p = sub.add_parser("backup", help="hot, consistent copy of the data directory")
    p.add_argument("dest", help="destination directory (must not exist or be empty)")
    p.add_argument("--data-dir", help="data directory (DTQ_DATA_DIR, default ./dtq-data)")
    p.add_argument("--config", help="TOML settings file (DTQ_CONFIG)")
    p.set_defaults(func=cmd_backup)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except DtqError as exc:
        print(f"dtq: error: {exc.message}", file=sys.stderr)
        return 1
    except (OSError, ValueError, msgspec.ValidationError) as exc:
        print(f"dtq: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
