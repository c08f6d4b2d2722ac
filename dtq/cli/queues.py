"""Queue commands: dtq queues list|get|pause|resume|set|purge (and how `tasks explain`
prints)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from dtq.cli.common import UsageError, add_json_flag, add_parser, add_remote_flags
from dtq.cli.output import print_record, print_rows, wants_json

_COLUMNS = ("name", "paused", "pending", "scheduled", "running", "failed", "concurrency_limit",
            "concurrency_limit_per_key", "rate_limit_per_second", "workers_polling")  # fmt: skip


def _limit(text: str, kind: type) -> Any:
    """`none` removes a limit; otherwise a positive number of `kind`."""
    if text.lower() in ("none", "null", "off"):
        return None
    try:
        value = kind(text)
    except ValueError:
        msg = f"expected a positive number or 'none', got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive (or 'none'), got {text!r}")
    return value


def cmd_queues(args: argparse.Namespace) -> int:
    from dtq.cli.tasks import client_for  # (one way to build a client for every command)

    with client_for(args) as client:
        if args.action == "list":
            rows = client.list_queues(limit=100)
            if wants_json(args.json):
                print_rows(rows, True)
            else:
                print_rows([{c: r.get(c) for c in _COLUMNS} for r in rows], False)
            return 0
        if args.action == "get":
            print_record(client.get_queue(args.name), args.json)
        elif args.action == "pause":
            print_record(client.pause_queue(args.name), args.json)
        elif args.action == "resume":
            print_record(client.resume_queue(args.name), args.json)
        elif args.action == "purge":
            purged = client.purge_queue(args.name)
            if wants_json(args.json):
                print(json.dumps({"queue": args.name, "purged": purged}))
            else:
                print(f"purged {purged} pending tasks from {args.name}")
        else:
            fields = {
                f: getattr(args, f)
                for f in ("concurrency_limit", "concurrency_limit_per_key", "rate_limit_per_second")
                if hasattr(args, f)  # left out: unchanged
            }
            if args.paused is not None:
                fields["paused"] = args.paused == "yes"
            if not fields:
                raise UsageError("set", "give at least one of --concurrency-limit, "
                                 "--concurrency-limit-per-key, --rate-limit, --paused")  # fmt: skip
            print_record(client.update_queue(args.name, **fields), args.json)
    return 0


def print_explanation(explained: dict[str, Any], as_json: bool) -> None:
    if wants_json(as_json):
        print(json.dumps(explained, indent=2))
        return
    runnable = "runnable" if explained["runnable"] else "not runnable"
    print(f"{explained['status']}, {runnable}")
    for reason in explained["reasons"]:
        print(f"  {reason['code']}: {reason['message']}")


def register(sub: Any) -> None:
    queues = add_parser(sub, "queues", "list, inspect, pause, limit and purge queues")
    actions = queues.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = add_parser(actions, "list", "every queue with its figures and limits")
    add_remote_flags(p)
    add_json_flag(p)
    p.set_defaults(func=cmd_queues)
    for action, what in (
        ("get", "show a queue"),
        ("pause", "stop leasing the queue's tasks (running ones finish)"),
        ("resume", "lease the queue's tasks again"),
        ("purge", "delete the queue's pending tasks"),
    ):
        p = add_parser(actions, action, what)
        p.add_argument("name", help="the queue's name")
        add_remote_flags(p)
        add_json_flag(p)
        p.set_defaults(func=cmd_queues)
    p = add_parser(actions, "set", "set or remove (with 'none') a queue's limits")
    p.add_argument("name", help="the queue's name")
    p.add_argument("--concurrency-limit", type=lambda t: _limit(t, int), default=argparse.SUPPRESS,
                   help="running tasks of the queue at most, across all workers")  # fmt: skip
    p.add_argument("--concurrency-limit-per-key", type=lambda t: _limit(t, int), default=argparse.SUPPRESS,
                   help="running tasks per concurrency_key at most")  # fmt: skip
    p.add_argument("--rate-limit", dest="rate_limit_per_second", default=argparse.SUPPRESS,
                   type=lambda t: _limit(t, float), help="leases started per second at most")  # fmt: skip
    p.add_argument("--paused", choices=["yes", "no"], help="pause or resume")
    add_remote_flags(p)
    add_json_flag(p)
    p.set_defaults(func=cmd_queues)
