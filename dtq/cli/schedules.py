"""`dtq schedules list|get|create|pause|resume|delete|trigger`: cron schedules over the API."""

from __future__ import annotations

import argparse
import json
from typing import Any

from dtq.cli.common import UsageError, add_json_flag, add_parser, add_remote_flags
from dtq.cli.output import print_record, print_rows, wants_json
from dtq.cli.tasks import client_for


def cmd_schedules(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        if args.action == "list":
            rows = client.list_schedules(limit=100)
            if wants_json(args.json):
                print_rows(rows, True)
            else:
                print_rows([{k: s[k] for k in ("name", "cron", "timezone", "paused",
                                               "next_run_at", "last_run_at", "last_task_id")}
                            for s in rows], False)  # fmt: skip
        elif args.action == "create":
            try:
                task = json.loads(args.task)
            except ValueError as exc:
                raise UsageError("--task", f"invalid JSON: {exc}") from None
            if not isinstance(task, dict):
                raise UsageError("--task", "a JSON object (a task create body)")
            options: dict[str, Any] = {"timezone": args.timezone, "catch_up": args.catch_up,
                                       "paused": args.paused}  # fmt: skip
            print_record(client.create_schedule(args.name, args.cron, task, **options), args.json)
        elif args.action == "get":
            print_record(client.get_schedule(args.name), args.json)
        elif args.action in ("pause", "resume"):
            changed = client.update_schedule(args.name, paused=args.action == "pause")
            print_record(changed, args.json)
        elif args.action == "trigger":
            print_record(client.trigger_schedule(args.name)["task"], args.json)
        else:
            client.delete_schedule(args.name)
            print(f"deleted schedule {args.name}")
    return 0


def register(sub: Any) -> None:
    schedules = add_parser(sub, "schedules", "cron schedules that submit tasks").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = add_parser(schedules, "list", "list schedules with their next and last run")
    add_remote_flags(p)
    add_json_flag(p)
    p.set_defaults(func=cmd_schedules)
    p = add_parser(schedules, "create", "create a schedule: NAME CRON --task JSON")
    p.add_argument("name", help="the schedule's name")
    p.add_argument("cron", help="5 fields, e.g. '*/5 * * * *' (quote it)")
    p.add_argument("--task", required=True,
                   help='the task to submit, e.g. \'{"name": "Send Report"}\'')  # fmt: skip
    p.add_argument("--timezone", default="UTC", help="IANA time zone (default: UTC)")
    p.add_argument("--catch-up", choices=["none", "one"], default="none",
                   help="after downtime: skip missed ticks, or fire the latest once")  # fmt: skip
    p.add_argument("--paused", action="store_true", help="create it paused")
    add_remote_flags(p)
    add_json_flag(p)
    p.set_defaults(func=cmd_schedules)
    for action, what in (
        ("get", "show a schedule"),
        ("pause", "stop a schedule firing"),
        ("resume", "let a paused schedule fire again"),
        ("trigger", "submit a schedule's task now"),
        ("delete", "delete a schedule"),
    ):
        p = add_parser(schedules, action, what)
        p.add_argument("name", help="the schedule's name")
        add_remote_flags(p)
        add_json_flag(p)
        p.set_defaults(func=cmd_schedules)
