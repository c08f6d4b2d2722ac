"""What the command modules share: the help formatter, common flags, usage errors, settings."""

from __future__ import annotations

import argparse
from typing import Any

from dtq.settings import Settings, load_settings

ROLES = ["admin", "operator", "worker", "viewer"]


class UsageError(Exception):
    """A flag's value is wrong: one line naming the flag, exit code 2 (as argparse's own)."""

    def __init__(self, flag: str, message: str) -> None:
        super().__init__(f"{flag}: {message}")
        self.flag = flag


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's "(default: X)" after each help text, but not for flags without a real
    default (None: the setting comes from the environment or the server; False: a switch;
    "": an optional positional)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, "", argparse.SUPPRESS) or "%(default)" in (
            action.help or ""
        ):
            return action.help
        return super()._get_help_string(action)


def add_parser(sub: Any, name: str, help: str, **kw: Any) -> argparse.ArgumentParser:
    """A subcommand with the shared formatter (argparse does not pass it down by itself)."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help, description=kw.pop("description", help), formatter_class=HelpFormatter,
        **kw,
    )  # fmt: skip
    return parser


def add_json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--json", action="store_true", help="print JSON (the default when not on a terminal)"
    )


def add_remote_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url", help="server URL (else DTQ_URL, else the saved login, else http://127.0.0.1:5000)"
    )
    p.add_argument("--api-key", help="API key (else DTQ_API_KEY)")
    p.add_argument("--token", help="bearer token (else DTQ_TOKEN, else the saved login)")


def add_store_flags(p: argparse.ArgumentParser, *, explicit: bool = False) -> None:
    help = (
        "work on this data directory instead of through the server's API (it must exist)"
        if explicit
        else "data directory (else DTQ_DATA_DIR, else ./dtq-data)"
    )
    p.add_argument("--data-dir", help=help)
    p.add_argument("--config", help="TOML settings file (else DTQ_CONFIG)")


def settings_from(args: argparse.Namespace) -> Settings:
    overrides = {
        name: getattr(args, name, None)
        for name in (
            "host",
            "port",
            "protocol_port",
            "data_dir",
            "store",
            "durability",
            "certfile",
            "keyfile",
            "log_format",
        )
    }
    if getattr(args, "forwarded_allow_ips", None):
        overrides["forwarded_allow_ips"] = args.forwarded_allow_ips.split(",")
    return load_settings(overrides, config_file=getattr(args, "config", None))
