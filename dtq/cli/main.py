"""The parser and the entry point: every failure is one line on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import httpx
import msgspec

from dtq import __version__
from dtq.cli import accounts, db, queues, schedules, server, tasks, webhooks
from dtq.cli.common import HelpFormatter, UsageError
from dtq.errors import DtqError, Unauthorized


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dtq",
        description="dtq: a distributed task queue",
        formatter_class=HelpFormatter,
        epilog="Start with `dtq serve`, then `dtq login` and `dtq keys create --role worker`.",
    )
    parser.add_argument("--version", action="version", version=f"dtq {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    server.register(sub)
    tasks.register(sub)
    schedules.register(sub)
    webhooks.register(sub)
    accounts.register(sub)
    queues.register(sub)
    db.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"dtq: error: {exc}", file=sys.stderr)
        return 2
    except Unauthorized as exc:
        hint = " (the saved login: run `dtq login` again)" if _used_login(args) else ""
        print(f"dtq: error: {exc.message}{hint}", file=sys.stderr)
        return 1
    except DtqError as exc:
        print(f"dtq: error: {exc.message}", file=sys.stderr)
        return 1
    except (OSError, ValueError, msgspec.ValidationError, accounts.NoServer) as exc:
        print(f"dtq: error: {exc}", file=sys.stderr)
        return 1
    except httpx.HTTPError as exc:
        print(f"dtq: error: cannot reach the server: {exc}", file=sys.stderr)
        return 1
    except TimeoutError as exc:
        print(f"dtq: error: {exc or 'timed out'}", file=sys.stderr)
        return 1


def _used_login(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "used_saved_login", False))
