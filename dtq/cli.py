"""The `dtq` command line."""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
from collections.abc import Sequence
from functools import partial
from typing import Any

import httpx
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
        trio.run(partial(serve, settings, freeze_gc=True))
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
    size = backup(settings.data_dir, args.dest, progress=_progress_bytes)
    print(f"backup of {settings.data_dir} written to {args.dest} ({size / 1e6:.1f} MB)")
    return 0


def _client(args: argparse.Namespace) -> Any:
    from dtq.client import Client

    return Client(args.url, api_key=args.api_key, token=args.token)


def cmd_worker(args: argparse.Namespace) -> int:
    import logging

    from dtq.client.worker import load_worker
    from dtq.logs import configure_logging

    configure_logging(load_settings({"log_format": args.log_format}))
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise here
    worker = load_worker(args.target)
    if args.url:
        worker.url = args.url
    if args.api_key:
        worker.api_key = args.api_key
    if args.token:
        worker.token = args.token
    if args.queues:
        worker.queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    if args.concurrency:
        worker.concurrency = args.concurrency
    if args.worker_id:
        worker.worker_id = args.worker_id
    if args.any_name:
        worker.any_name = True
    try:
        worker.run()
    except KeyboardInterrupt:
        return 130
    except BaseExceptionGroup as group:
        refused, other = group.split(DtqError)
        if refused is None or other is not None:
            raise
        exc: BaseException = refused  # e.g. a wrong API key: one line, not a traceback
        while isinstance(exc, BaseExceptionGroup):
            exc = exc.exceptions[0]
        raise exc from None
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    payload = json.loads(args.payload) if args.payload else None
    with _client(args) as client:
        if args.file:
            return _submit_file(client, args)
        task = client.submit(
            args.name, payload, priority=args.priority, queue=args.queue, delay=args.delay,
            retry_count=args.retry_count, idempotency_key=args.idempotency_key,
        )  # fmt: skip
        if args.wait:
            task = client.wait(task.id, timeout=args.timeout)
        _print(task, args.json)
        return 0 if task.status != "failed" else 2


def _submit_file(client: Any, args: argparse.Namespace) -> int:
    """Bulk submit: one JSON task body per line, in batches of 500, with a progress bar."""
    with open(args.file) as fh:
        numbered = [(n, json.loads(line)) for n, line in enumerate(fh, 1) if line.strip()]
    fields = set(inspect.signature(client._submit).parameters)
    for n, body in numbered:  # what the client cannot send is a one-line error, not a traceback
        if not isinstance(body, dict) or "name" not in body:
            raise ValueError(f"{args.file}, line {n}: expected a JSON object with a name")
        if unknown := sorted(set(body) - fields):
            raise ValueError(f"{args.file}, line {n}: unknown field(s): {', '.join(unknown)}")
    bodies = [body for _, body in numbered]
    done = 0
    for i in range(0, len(bodies), 500):
        client.submit_many(bodies[i : i + 500])
        done += len(bodies[i : i + 500])
        _progress(done, len(bodies))
    print(f"submitted {done} tasks", file=sys.stderr)
    return 0


def _progress(done: int, total: int, *, megabytes: bool = False) -> None:
    """A one-line progress bar on stderr, only on a terminal."""
    if not sys.stderr.isatty():
        return
    width = 40
    filled = int(width * done / max(total, 1))
    amount = f"{done / 1e6:.1f}/{total / 1e6:.1f} MB" if megabytes else f"{done}/{total}"
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {amount}")
    if done >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def _progress_bytes(done: int, total: int) -> None:
    _progress(done, total, megabytes=True)


def cmd_tasks(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.action == "list":
            filters = {"status": args.status, "priority": args.priority,
                       "worker_id": args.worker_id, "sort": args.sort, "order": args.order}  # fmt: skip
            rows = []
            for task in client.list(**{k: v for k, v in filters.items() if v}):
                rows.append(task)
                if len(rows) >= args.limit:
                    break
            if args.json or not sys.stdout.isatty():
                _print(rows, True)
            else:
                _print([{"id": t.id, "name": t.name, "status": t.status, "priority": t.priority,
                         "queue": t.queue, "attempts": t.attempts, "created_at": t.created_at}
                        for t in rows], False)  # fmt: skip
        elif args.action == "get":
            _print(client.get(args.task_id), True)
        elif args.action == "cancel":
            _print(client.cancel(args.task_id), args.json)
        else:
            client.delete(args.task_id)
            print(f"deleted {args.task_id}")
    return 0


def cmd_workers(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print(client.workers(args.status), args.json)
    return 0


# -- parser ------------------------------------------------------------------------------


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="data directory (DTQ_DATA_DIR, default ./dtq-data)")
    p.add_argument("--config", help="TOML settings file (DTQ_CONFIG)")
    p.add_argument("--json", action="store_true", help="print JSON")


def _remote(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="server URL (DTQ_URL, default http://127.0.0.1:5000)")
    p.add_argument("--api-key", help="API key (DTQ_API_KEY)")
    p.add_argument("--token", help="bearer token (DTQ_TOKEN)")
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

    p = sub.add_parser("worker", help="run a worker: dtq worker MODULE:ATTR")
    p.add_argument("target", help="MODULE:ATTR of a dtq.Worker")
    p.add_argument("--queues", help="comma-separated queues (default: all)")
    p.add_argument("--concurrency", type=int, help="tasks at once")
    p.add_argument("--worker-id", help="worker id (default host-pid-random)")
    p.add_argument(
        "--any-name", action="store_true",
        help="lease tasks of any name, also those without a handler (they fail as UnknownTask); "
        "by default a worker leases only the names it has handlers for",
    )  # fmt: skip
    p.add_argument("--log-format", choices=["auto", "json", "console"], default="auto")
    _remote(p)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("submit", help="submit a task")
    p.add_argument("name", nargs="?", default="", help="task name")
    p.add_argument("--payload", help="JSON payload")
    p.add_argument("--priority", choices=["low", "medium", "high"])
    p.add_argument("--queue")
    p.add_argument("--delay", type=float, help="seconds from now")
    p.add_argument("--retry-count", type=int)
    p.add_argument("--idempotency-key")
    p.add_argument("--wait", action="store_true", help="wait until it is finished")
    p.add_argument("--timeout", type=float, help="with --wait: give up after this many seconds")
    p.add_argument("--file", help="bulk: a file of JSON task bodies, one per line")
    _remote(p)
    p.set_defaults(func=cmd_submit)

    tasks = sub.add_parser("tasks", help="list, get, cancel, delete tasks").add_subparsers(
        dest="action", required=True
    )
    p = tasks.add_parser("list", help="list tasks")
    p.add_argument("--status", choices=["pending", "running", "completed", "failed", "cancelled"])
    p.add_argument("--priority", choices=["low", "medium", "high"])
    p.add_argument("--worker-id")
    p.add_argument("--sort", choices=["created_at", "updated_at", "duration"])
    p.add_argument("--order", choices=["asc", "desc"])
    p.add_argument("--limit", type=int, default=50)
    _remote(p)
    p.set_defaults(func=cmd_tasks)
    for action in ("get", "cancel", "delete"):
        p = tasks.add_parser(action, help=f"{action} a task")
        p.add_argument("task_id")
        _remote(p)
        p.set_defaults(func=cmd_tasks)

    workers = sub.add_parser("workers", help="list workers").add_subparsers(
        dest="action", required=True
    )
    p = workers.add_parser("list", help="list workers")
    p.add_argument("--status", choices=["active", "inactive"])
    _remote(p)
    p.set_defaults(func=cmd_workers)

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
    except httpx.HTTPError as exc:
        print(f"dtq: error: cannot reach the server: {exc}", file=sys.stderr)
        return 1
    except TimeoutError as exc:
        print(f"dtq: error: {exc or 'timed out'}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
