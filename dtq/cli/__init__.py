"""The `dtq` command line.

One module per group of commands, each adding its own subcommands to the parser:
`server` (serve, openapi, postman, backup), `tasks` (submit, tasks, workers, worker),
`accounts` (login, logout, keys, users). `config` keeps the saved login and works out which
server and credentials a command uses; `output` prints for people or for programs.
"""

from dtq.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
