"""Client-side task commands: submit, tasks list/get/cancel/delete, workers list, worker."""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from typing import Any

from dtq.cli.common import UsageError, add_json_flag, add_parser, add_remote_flags
from dtq.cli.config import resolve_remote
from dtq.cli.output import print_record, print_rows, progress, wants_json
from dtq.cli.queues import print_explanation
from dtq.client import Client
from dtq.errors import DtqError
from dtq.settings import load_settings

STATUSES = ["pending", "running", "completed", "failed", "cancelled"]
PRIORITIES = ["low", "medium", "high"]


def client_for(args: argparse.Namespace) -> Client:
    remote = resolve_remote(args)
    args.used_saved_login = remote.from_login  # for the hint on a 401 (see main)
    client = Client(remote.url)
    # Set after construction: Client() would fall back to the environment for a None.
    client.api_key, client.token = remote.api_key, remote.token
    return client


def cmd_submit(args: argparse.Namespace) -> int:
    try:
        payload = json.loads(args.payload) if args.payload else None
    except ValueError as exc:
        raise UsageError("--payload", f"invalid JSON: {exc}") from None
    wait_timeout = args.wait_timeout
    if args.deprecated_timeout is not None:
        print("dtq: warning: --timeout is now --wait-timeout", file=sys.stderr)
        wait_timeout = args.deprecated_timeout if wait_timeout is None else wait_timeout
    with client_for(args) as client:
        if args.file:
            return _submit_file(client, args)
        if not args.name:
            raise UsageError("name", "a task name is required (or --file)")
        task = client.submit(
            args.name, payload, priority=args.priority, queue=args.queue, delay=args.delay,
            retry_count=args.retry_count, timeout=args.task_timeout,
            idempotency_key=args.idempotency_key,
        )  # fmt: skip
        if args.wait or wait_timeout is not None:
            task = client.wait(task.id, timeout=wait_timeout)
        print_record(task, args.json)
        return 0 if task.status != "failed" else 2


def _submit_file(client: Client, args: argparse.Namespace) -> int:
    """Bulk submit: one JSON task body per line, in batches of 500, with a progress bar."""
    with open(args.file) as fh:
        numbered = []
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                numbered.append((n, json.loads(line)))
            except ValueError as exc:
                raise ValueError(f"{args.file}, line {n}: invalid JSON: {exc}") from None
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
        progress(done, len(bodies))
    print(f"submitted {done} tasks", file=sys.stderr)
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        if args.action == "list":
            return _list_tasks(client, args)
        if args.action == "get":
            print_record(client.get(args.task_id), args.json)
        elif args.action == "cancel":
            print_record(client.cancel(args.task_id), args.json)
        elif args.action == "explain":
            print_explanation(client.explain_task(args.task_id), args.json)
        else:
            client.delete(args.task_id)
            print(f"deleted {args.task_id}")
    return 0


def _list_tasks(client: Client, args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise UsageError("--limit", "must be at least 1")
    if args.skip < 0:
        raise UsageError("--skip", "must be 0 or more")
    filters = {"status": args.status, "priority": args.priority, "worker_id": args.worker_id,
               "queue": args.queue, "name": args.name, "sort": args.sort,
               "order": args.order, "tag": args.tag, "created_after": args.created_after,
               "created_before": args.created_before}  # fmt: skip
    rows = []
    pages = client.list(
        page_size=min(args.limit, 100), skip=args.skip, **{k: v for k, v in filters.items() if v}
    )
    for task in pages:
        rows.append(task)
        if len(rows) >= args.limit:
            break
    if wants_json(args.json):
        print_rows(rows, True)
    else:
        print_rows([{"id": t.id, "name": t.name, "status": t.status, "priority": t.priority,
                     "queue": t.queue, "attempts": t.attempts, "created_at": t.created_at}
                    for t in rows], False)  # fmt: skip
    return 0


def cmd_task_events(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        events = client.task_events(args.task_id, skip=args.skip, limit=args.limit)
    if wants_json(args.json):
        print_rows(events, True)
    else:
        print_rows([{"at": e["at"], "event": e["event"], "attempt": e["attempt"],
                     "worker_id": e.get("worker_id"), "actor": e.get("actor"),
                     "error": (e.get("error") or {}).get("message")}
                    for e in events], False)  # fmt: skip
    return 0


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in {
        "queue": args.queue, "name": args.name, "tag": args.tag,
        "finished_after": args.finished_after, "finished_before": args.finished_before,
        "limit": args.limit}.items() if v is not None}  # fmt: skip


def cmd_retry(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        if args.task_id:
            if args.status:
                raise UsageError("--status", "give a task id or --status, not both")
            print_record(client.retry_task(args.task_id), args.json)
            return 0
        if not args.status:
            raise UsageError("--status", "give a task id, or --status failed|cancelled")
        result = client.retry_tasks(args.status, **_filters(args))
    _print_bulk(result, "retried", args.json)
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        result = client.purge_tasks(args.status, **_filters(args))
    _print_bulk(result, "purged", args.json)
    return 0


def _print_bulk(result: dict[str, Any], verb: str, as_json: bool) -> None:
    if wants_json(as_json):
        print_rows(result, True)
    else:
        print(f"{verb} {result['affected']} of {result['matched']} matching tasks")


def register_operating(tasks: Any) -> None:
    """`dtq tasks events|retry|purge`."""
    p = add_parser(tasks, "events", "show everything that happened to a task, oldest first")
    p.add_argument("task_id", help="the task's id")
    p.add_argument("--skip", type=int, default=0, help="leave out the first N (default: 0)")
    p.add_argument("--limit", type=int,
                   help="at most N, up to 1000 (default: the server's, 1000)")  # fmt: skip
    add_remote_flags(p)
    add_json_flag(p)
    p.set_defaults(func=cmd_task_events)
    for action, what, statuses in (
        ("retry", "send a failed/cancelled task (or every matching one) back to pending",
         ["failed", "cancelled"]),
        ("purge", "delete every finished task that matches", ["completed", "failed", "cancelled"]),
    ):  # fmt: skip
        p = add_parser(tasks, action, what)
        if action == "retry":
            p.add_argument("task_id", nargs="?", help="one task's id (or use --status)")
        p.add_argument("--status", choices=statuses, required=action == "purge",
                       help="the tasks' state")  # fmt: skip
        p.add_argument("--queue", help="only tasks of this queue")
        p.add_argument("--name", help="only tasks of this name")
        p.add_argument("--tag", help="only tasks with this tag")
        p.add_argument("--finished-after", help="finished at or after (RFC 3339)")
        p.add_argument("--finished-before", help="finished before (RFC 3339)")
        p.add_argument("--limit", type=int, help="at most this many")
        add_remote_flags(p)
        add_json_flag(p)
        p.set_defaults(func=cmd_retry if action == "retry" else cmd_purge)


def cmd_workers(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        print_rows(client.workers(args.status), args.json)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    import logging

    if args.processes is not None:
        return _supervise_workers(args)

    from dtq.client.worker import load_worker
    from dtq.logs import configure_logging

    configure_logging(load_settings({"log_format": args.log_format}))
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise here
    worker = load_worker(args.target)
    remote = resolve_remote(args)
    # The module's own settings rank below flags and the environment, above the saved login.
    if remote.url_known and not (remote.from_login and worker.url):
        worker.url = remote.url
    has_own = bool(worker.api_key or worker.token)
    if (remote.api_key or remote.token) and not (remote.from_login and has_own):
        worker.api_key, worker.token = remote.api_key, remote.token
    if args.queues:
        worker.queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    if args.concurrency:
        worker.concurrency = args.concurrency
    if args.threads:
        worker.threads = args.threads
    if args.worker_id:
        worker.worker_id = args.worker_id
    if args.any_name:
        worker.any_name = True
    if args.transport:
        worker.transport = args.transport
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


# Given to children through the environment, not their command line (`ps` shows argv).
_CHILD_ENV = {"url": "DTQ_URL", "api_key": "DTQ_API_KEY", "token": "DTQ_TOKEN"}


def _supervise_workers(args: argparse.Namespace) -> int:
    """`dtq worker --processes N`: the same command N times, under `dtq.cli.supervisor`."""
    import os

    from dtq.cli.supervisor import supervise
    from dtq.logs import configure_logging

    if args.processes < 1:
        raise UsageError("--processes", "must be at least 1")
    configure_logging(load_settings({"log_format": args.log_format}))
    env = dict(os.environ)
    flags: list[str] = []
    for action in args.worker_parser._actions:  # every flag as given, less --processes
        dest = action.dest
        value = getattr(args, dest, None)
        if dest in ("help", "processes", "worker_id") or value is None or value is False:
            continue
        if dest in _CHILD_ENV:
            env[_CHILD_ENV[dest]] = str(value)
        elif not action.option_strings:
            flags.append(str(value))
        elif value is True:
            flags.append(action.option_strings[-1])
        elif value != action.default:
            flags += [action.option_strings[-1], str(value)]

    def command_for(slot: int) -> list[str]:
        own_id = ["--worker-id", f"{args.worker_id}-{slot}"] if args.worker_id else []
        return [sys.executable, "-m", "dtq.cli", "worker", *flags, *own_id]

    return supervise(command_for, args.processes, env=env)


def register(sub: Any) -> None:
    p = add_parser(sub, "worker", "run a worker: dtq worker MODULE:ATTR")
    p.add_argument("target", help="MODULE:ATTR of a dtq.Worker")
    p.add_argument("--queues", help="comma-separated queues to take tasks from (default: all)")
    p.add_argument("--concurrency", type=int, help="tasks run at once (default: the Worker's)")
    p.add_argument("--processes", type=int,
                   help="run N worker processes under one supervisor that restarts a child that "
                   "dies and passes SIGTERM/SIGINT on (for CPU-bound handlers)")  # fmt: skip
    p.add_argument("--threads", type=int,
                   help="threads for sync (def) handlers, a fixed pool (default: --concurrency)")  # fmt: skip
    p.add_argument("--worker-id", help="worker id (default: host-pid-random)")
    p.add_argument(
        "--transport", choices=["auto", "tcp", "ws", "http"],
        help="how to reach the server (else DTQ_TRANSPORT, else auto: the fast lane when the "
        "server offers it, else HTTP); over tcp or ws the server pushes tasks",
    )  # fmt: skip
    p.add_argument(
        "--any-name", action="store_true",
        help="lease tasks of any name, also those without a handler (they fail as UnknownTask); "
        "by default a worker leases only the names it has handlers for",
    )  # fmt: skip
    p.add_argument(
        "--log-format",
        choices=["auto", "json", "console"],
        default="auto",
        help="auto: console on a terminal, else JSON lines",
    )
    add_remote_flags(p)
    p.set_defaults(func=cmd_worker, worker_parser=p)

    p = add_parser(sub, "submit", "submit a task (and wait for its result with --wait)")
    p.add_argument("name", nargs="?", default="", help="task name")
    p.add_argument("--payload", help='JSON payload, e.g. \'{"file_path": "/data/input.csv"}\'')
    p.add_argument("--priority", choices=PRIORITIES, help="(default: the server's, medium)")
    p.add_argument("--queue", help="queue (default: the server's, default)")
    p.add_argument("--delay", type=float, help="run no sooner than this many seconds from now")
    p.add_argument("--retry-count", type=int, help="retries after a failure (default: 0)")
    p.add_argument(
        "--task-timeout",
        type=float,
        help="seconds the task may run before it counts as failed (default: the server's, 3600)",
    )
    p.add_argument("--idempotency-key", help="a resubmit with the same key returns the first task")
    p.add_argument("--wait", action="store_true", help="wait until the task is finished")
    p.add_argument(
        "--wait-timeout",
        type=float,
        help="with --wait: give up after this many seconds (implies --wait; default: never)",
    )
    p.add_argument("--timeout", dest="deprecated_timeout", type=float, help=argparse.SUPPRESS)
    p.add_argument("--file", help="bulk: a file of JSON task bodies, one per line")
    add_remote_flags(p)
    add_json_flag(p)
    p.set_defaults(func=cmd_submit)

    tasks = add_parser(
        sub, "tasks", "list, get, cancel, delete, retry, purge tasks; events"
    ).add_subparsers(dest="action", required=True, metavar="ACTION")
    p = add_parser(tasks, "list", "list tasks, newest first")
    p.add_argument("--status", choices=STATUSES, help="only tasks in this state")
    p.add_argument("--priority", choices=PRIORITIES, help="only tasks of this priority")
    p.add_argument("--queue", help="only tasks of this queue")
    p.add_argument("--name", help="only tasks of this name")
    p.add_argument("--worker-id", help="only tasks run by this worker")
    p.add_argument("--tag", help="only tasks with this tag")
    p.add_argument("--created-after", help="only tasks created at or after (RFC 3339)")
    p.add_argument("--created-before", help="only tasks created before (RFC 3339)")
    p.add_argument("--sort", choices=["created_at", "updated_at", "duration"], default="created_at",
                   help="sort by")  # fmt: skip
    p.add_argument("--order", choices=["asc", "desc"], default="desc", help="sort order")
    p.add_argument("--skip", type=int, default=0, help="leave out the first N matching tasks")
    p.add_argument("--limit", type=int, default=50, help="print at most N tasks")
    add_remote_flags(p)
    add_json_flag(p)
    p.set_defaults(func=cmd_tasks)
    for action, what in (
        ("get", "show a task"),
        ("cancel", "cancel a pending or running task"),
        ("delete", "delete a task"),
        ("explain", "say why a task is (not) running"),
    ):
        p = add_parser(tasks, action, what)
        p.add_argument("task_id", help="the task's id")
        add_remote_flags(p)
        add_json_flag(p)
        p.set_defaults(func=cmd_tasks)

    register_operating(tasks)

    workers = add_parser(sub, "workers", "list workers").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = add_parser(workers, "list", "list workers")
    p.add_argument("--status", choices=["active", "inactive"], help="only workers in this state")
    add_remote_flags(p)
    add_json_flag(p)
    p.set_defaults(func=cmd_workers)
