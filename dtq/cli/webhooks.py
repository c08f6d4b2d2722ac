"""`dtq webhooks list|create|get|delete|deliveries`: webhook registrations over the API."""

from __future__ import annotations

import argparse
from typing import Any

from dtq.cli.common import add_json_flag, add_parser, add_remote_flags
from dtq.cli.output import print_record, print_rows, wants_json
from dtq.cli.tasks import client_for

_LIST_FIELDS = ("id", "url", "events", "description", "created_at")
_DELIVERY_FIELDS = ("id", "event", "task_id", "queue", "status", "attempts", "last_status_code",
                    "next_attempt_at", "completed_at")  # fmt: skip


def cmd_webhooks(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        if args.action == "list":
            rows = client.list_webhooks()
            _print_rows(rows, _LIST_FIELDS, args.json)
        elif args.action == "create":
            hook = client.create_webhook(args.webhook_url, args.events or ["*"], secret=args.secret,
                                         description=args.description)  # fmt: skip
            print_record(hook, args.json)
            if not wants_json(args.json):
                print("the secret signs every delivery (X-DTQ-Signature); it is shown only now")
        elif args.action == "get":
            print_record(client.get_webhook(args.webhook_id), args.json)
        elif args.action == "deliveries":
            rows = client.webhook_deliveries(args.webhook_id, status=args.status,
                                             skip=args.skip, limit=args.limit)  # fmt: skip
            _print_rows(rows, _DELIVERY_FIELDS, args.json)
        else:
            client.delete_webhook(args.webhook_id)
            print(f"deleted webhook {args.webhook_id}")
    return 0


def _print_rows(rows: list[dict[str, Any]], fields: tuple[str, ...], json_flag: bool) -> None:
    if wants_json(json_flag):
        print_rows(rows, True)
    else:
        print_rows([{k: row.get(k) for k in fields} for row in rows], False)


def register(sub: Any) -> None:
    webhooks = add_parser(sub, "webhooks", "HTTP callbacks for task and queue events")
    actions = webhooks.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = add_parser(actions, "list", "list registered webhooks")
    add_remote_flags(p)
    add_json_flag(p)
    p.set_defaults(func=cmd_webhooks)
    p = add_parser(actions, "create", "register a webhook: WEBHOOK_URL --event KIND ...")
    # (not `url`: that is the server's, --url)
    p.add_argument(
        "webhook_url", metavar="WEBHOOK_URL", help="where deliveries are POSTed (http or https)"
    )
    p.add_argument("--event", dest="events", action="append", metavar="KIND",
                   help='an event kind, e.g. task.completed; repeat for more (default: "*", '
                   "every task and queue event)")  # fmt: skip
    p.add_argument("--secret", help="the signing secret, 16-256 characters (default: generated)")
    p.add_argument("--description", help="what it is for")
    add_remote_flags(p)
    add_json_flag(p)
    p.set_defaults(func=cmd_webhooks, events=None)
    for action, what in (("get", "show a webhook"), ("delete", "delete a webhook")):
        p = add_parser(actions, action, what)
        p.add_argument("webhook_id", help="the webhook's id")
        add_remote_flags(p)
        add_json_flag(p)
        p.set_defaults(func=cmd_webhooks)
    p = add_parser(actions, "deliveries", "a webhook's deliveries, newest first, with attempts")
    p.add_argument("webhook_id", help="the webhook's id")
    p.add_argument("--status", choices=["pending", "delivered", "failed"],
                   help="only deliveries in this state (default: all)")  # fmt: skip
    p.add_argument("--skip", type=int, default=0, help="leave out the first N (default: 0)")
    p.add_argument("--limit", type=int, default=50, help="at most N, up to 100 (default: 50)")
    add_remote_flags(p)
    add_json_flag(p)
    p.set_defaults(func=cmd_webhooks)
