"""Server-side commands: serve, healthcheck, openapi, postman, backup."""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from typing import Any

import trio

from dtq.cli.common import UsageError, add_parser, add_store_flags, settings_from
from dtq.cli.output import progress_bytes


def cmd_serve(args: argparse.Namespace) -> int:
    from dtq.logs import configure_logging
    from dtq.net.banner import StartupReport, check_can_listen, listen_failure
    from dtq.server import serve, store_problem

    settings = settings_from(args)
    if (problem := store_problem(settings)) is not None:
        print(problem, file=sys.stderr)  # a usage error: one line, exit 2
        return 2
    configure_logging(settings)
    report = StartupReport(settings, terminal=sys.stderr if sys.stderr.isatty() else None)
    from dtq.net.protocol.listener import protocol_port_problem

    try:
        check_can_listen(settings)
        if (problem := protocol_port_problem(settings)) is not None:
            print(problem, file=sys.stderr)  # a usage error too: one line, exit 2
            return 2
        trio.run(partial(serve, settings, freeze_gc=True, report=report))
    except KeyboardInterrupt:  # a second Ctrl+C: stop now
        return 130
    except (OSError, BaseExceptionGroup) as exc:
        if (message := listen_failure(exc, settings)) is None:
            raise
        print(message, file=sys.stderr)  # a busy port is a usage error: one line, exit 2
        return 2
    return 0


def cmd_healthcheck(args: argparse.Namespace) -> int:
    from dtq.cli.healthcheck import check_health

    return check_health(settings_from(args), timeout_s=args.timeout)


def cmd_openapi(args: argparse.Namespace) -> int:
    from dtq.net.app import build_openapi

    print(json.dumps(build_openapi(), indent=2))
    return 0


def cmd_postman(args: argparse.Namespace) -> int:
    from dtq.net.postman_walkthrough import postman_collection

    collection = postman_collection()
    text = json.dumps(collection, indent=2) + "\n"
    if args.output == "-":
        sys.stdout.write(text)
    else:
        with open(args.output, "w") as fh:
            fh.write(text)
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    from dtq.storage.backup import backup

    settings = settings_from(args)
    if settings.store.startswith(("postgresql://", "postgres://")):
        raise UsageError(
            "--store",
            "dtq backup copies an LMDB data directory; for a PostgreSQL store use pg_dump "
            "(e.g. pg_dump --format=custom --file dtq.dump DBNAME)",
        )
    size = backup(settings.data_dir, args.dest, progress=progress_bytes)
    print(f"backup of {settings.data_dir} written to {args.dest} ({size / 1e6:.1f} MB)")
    return 0


def register(sub: Any) -> None:
    p = add_parser(sub, "serve", "run the server")
    p.add_argument("--host", help="address to bind (else DTQ_HOST, else 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (else DTQ_PORT, else 5000)")
    p.add_argument(
        "--protocol-port", type=int,
        help="the fast lane (persistent-connection protocol, docs/protocol.md) on --host: "
        "else DTQ_PROTOCOL_PORT, else 5001; 0 turns it off",
    )  # fmt: skip
    p.add_argument("--data-dir", help="data directory (else DTQ_DATA_DIR, else ./dtq-data)")
    p.add_argument(
        "--store",
        help="where the state lives: memory:// keeps it in memory only (nothing survives a "
        "stop); else DTQ_STORE, else LMDB in --data-dir",
    )
    p.add_argument(
        "--durability",
        choices=["fsync", "os"],
        help="fsync: a write survives power loss; os: a process crash (else DTQ_DURABILITY, "
        "else fsync)",
    )
    p.add_argument("--certfile", help="TLS certificate, PEM (else DTQ_CERTFILE)")
    p.add_argument("--keyfile", help="TLS private key, PEM (else DTQ_KEYFILE)")
    p.add_argument(
        "--forwarded-allow-ips",
        help="comma-separated proxy addresses trusted for X-Forwarded-For "
        "(else DTQ_FORWARDED_ALLOW_IPS, else none)",
    )
    p.add_argument(
        "--log-format",
        choices=["auto", "json", "console"],
        help="auto: console on a terminal, else JSON lines (else DTQ_LOG_FORMAT, else auto)",
    )
    p.add_argument("--config", help="TOML settings file (else DTQ_CONFIG)")
    p.set_defaults(func=cmd_serve)

    p = add_parser(
        sub, "healthcheck", "exit 0 if the server (same settings as serve) answers /health"
    )
    p.add_argument("--host", help="the server's --host (DTQ_HOST); 0.0.0.0 checks 127.0.0.1")
    p.add_argument("--port", type=int, help="the server's --port (DTQ_PORT, else 5000)")
    p.add_argument("--certfile", help="the server's TLS certificate: check over https")
    p.add_argument("--config", help="TOML settings file (DTQ_CONFIG)")
    p.add_argument("--timeout", type=float, default=4.0, help="seconds to wait for an answer")
    p.set_defaults(func=cmd_healthcheck)

    p = add_parser(sub, "openapi", "print the OpenAPI document")
    p.set_defaults(func=cmd_openapi)

    p = add_parser(sub, "postman", "write the Postman collection")
    p.add_argument(
        "output", nargs="?", default="postman-collection.json", help="file to write, - for stdout"
    )
    p.set_defaults(func=cmd_postman)

    p = add_parser(sub, "backup", "hot, consistent copy of the data directory")
    p.add_argument("dest", help="destination directory (must not exist or be empty)")
    add_store_flags(p)
    p.add_argument(
        "--store", help="the server's store URL (else DTQ_STORE); PostgreSQL: use pg_dump"
    )
    p.set_defaults(func=cmd_backup)
