"""One frozen Settings object, units in the names. Only the CLI reads the environment."""

from __future__ import annotations

import enum
import ipaddress
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from dtq.models import DEFAULT_LEASE_S


class Durability(enum.StrEnum):
    FSYNC = "fsync"  # a 2xx means the data is on disk and survives power loss
    OS = "os"  # survives a process crash (kill -9), not power loss


MEMORY_STORE = "memory://"


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 5000
    # The fast lane (docs/protocol.md) on its own port: unset = 5001 (any free port when `port`
    # is 0), 0 = off.
    protocol_port: int | None = None
    data_dir: str = "./dtq-data"
    # Where the state lives: "" = LMDB in data_dir; "memory://" = in memory (nothing survives
    # a stop; for tests and trying things out).
    store: str = ""
    durability: Durability = Durability.FSYNC
    env: str = "production"
    debug: bool = False
    log_format: str = "auto"  # auto | json | console
    log_level: str = "info"
    admin_password: str | None = None
    jwt_secret: str | None = None
    jwt_ttl_s: int = 3600
    rate_limit_per_hour: int = 1000
    rate_limit_per_minute: int = 100
    # Principals with the worker role poll and heartbeat all day: limits meant for API clients
    # would throttle them, so they have their own defaults (0 = no limit).
    worker_rate_limit_per_hour: int = 0
    worker_rate_limit_per_minute: int = 0
    cors_origins: tuple[str, ...] = ()
    certfile: str | None = None
    keyfile: str | None = None
    forwarded_allow_ips: tuple[str, ...] = ()
    worker_timeout_s: float = 30.0
    lease_default_s: float = DEFAULT_LEASE_S
    # A lease that runs out without a result puts the task back without using a retry; after
    # this many such deliveries the task fails with `lease_expired` (a poison-task guard).
    max_deliveries: int = 10
    retry_backoff_base_s: float = 1.0
    retry_backoff_max_s: float = 3600.0
    max_body_bytes: int = 10 * 1024 * 1024
    map_size_bytes: int = 256 * 1024 * 1024
    graceful_timeout_s: float = 5.0
    keep_alive_timeout_s: float = 5.0
    # hypercorn's protocol pings (0 = off): its ping task outlives a closed socket and holds up
    # shutdown, so dtq sends an application-level {"event": "ping"} on idle sockets instead.
    websocket_ping_interval_s: float = 0.0
    ws_idle_ping_s: float = 20.0
    ws_min_send_interval_s: float = 0.1  # per /ws/tasks socket: batches events under load
    ws_recheck_s: float = 5.0  # open WebSockets check their credentials again this often (0: no)
    ws_buffer_events: int = 10_000  # events kept for /ws/tasks readers; further behind: "lagged"
    backlog: int = 4096
    keep_alive_max_requests: int = 1_000_000
    metrics_require_auth: bool = False
    webhook_timeout_s: float = 10.0  # one delivery attempt, connect to last byte
    webhook_concurrency: int = 16  # attempts in flight at once, over all webhooks
    webhook_max_attempts: int = 8  # then the delivery is marked failed
    webhook_backoff_base_s: float = 1.0  # wait after the first failed attempt; doubles, jittered
    webhook_backoff_max_s: float = 300.0
    webhook_retention_s: float = 7 * 86400.0  # finished deliveries are kept this long
    webhook_allow_private_networks: bool = False  # true: loopback/private targets (local setups)
    # Finished tasks are pruned this long after they finished (0 keeps them for ever).
    retention_completed_s: float = 7 * 86400.0
    retention_failed_s: float = 30 * 86400.0  # failed and cancelled ones
    retention_interval_s: float = 60.0  # how often the pruner looks for expired tasks
    # Test only, honoured only with env "test": the server's clock runs this many times as fast,
    # from test_clock_start_s (epoch seconds; default now). See dtq.clock.ScaledClock.
    test_clock_speed: float = 1.0
    test_clock_start_s: float | None = None
    # Shared stores (several servers on one database): parked long polls and the reaper look
    # at the database at least this often, whatever the cross-server signal says.
    shared_poll_s: float = 1.0
    # PostgreSQL: "on" (LISTEN/NOTIFY wake-ups between servers) or "off" (poll mode, for
    # PgBouncer in transaction mode and engines without LISTEN/NOTIFY such as CockroachDB).
    pg_notify: str = "on"

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)


_TUPLE_FIELDS = {"cors_origins", "forwarded_allow_ips"}
# Secrets that can also come from a file named by DTQ_<NAME>_FILE (Docker/Kubernetes secrets).
_SECRET_FILE_FIELDS = ("admin_password", "jwt_secret")


def local_url(settings: Settings) -> str:
    """The URL that reaches the server from the machine it runs on.

    A wildcard bind (0.0.0.0, ::) listens on every address but is not one to connect to: use the
    loopback address of the same family.
    """
    host = settings.host
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        pass  # a host name, e.g. localhost
    else:
        if address.is_unspecified:
            host = "127.0.0.1" if address.version == 4 else "::1"
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if settings.certfile else "http"
    return f"{scheme}://{host}:{settings.port}"


def _from_env_value(name: str, raw: str) -> Any:
    if name in _TUPLE_FIELDS:
        return [part.strip() for part in raw.split(",") if part.strip()]
    return raw


def load_settings(
    overrides: dict[str, Any] | None = None,
    *,
    environ: dict[str, str] | None = None,
    config_file: str | None = None,
) -> Settings:
    """Defaults < TOML file (`DTQ_CONFIG` or `config_file`) < `DTQ_<NAME>` env < overrides.

    `DTQ_ADMIN_PASSWORD_FILE` / `DTQ_JWT_SECRET_FILE` name a file holding the secret (one
    trailing newline is dropped); setting both the variable and its `_FILE` is an error, since
    which one was meant is a guess.
    """
    env = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    path = config_file or env.get("DTQ_CONFIG")
    if path:
        with open(path, "rb") as fh:
            merged.update(tomllib.load(fh))
    for name in Settings.__struct_fields__:
        raw = env.get(f"DTQ_{name.upper()}")
        if raw is not None and raw != "":
            merged[name] = _from_env_value(name, raw)
    for name in _SECRET_FILE_FIELDS:
        secret = _secret_from_file(name, env)
        if secret is not None:
            merged[name] = secret
    merged.update({k: v for k, v in (overrides or {}).items() if v is not None})
    # strict=False lets "5000" and "true" from the environment become int and bool.
    return msgspec.convert(merged, Settings, strict=False)


def _secret_from_file(name: str, env: Mapping[str, str]) -> str | None:
    variable = f"DTQ_{name.upper()}"
    path = env.get(f"{variable}_FILE")
    if not path:
        return None
    if env.get(variable):
        raise ValueError(f"{variable} and {variable}_FILE are both set; set only one of them")
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ValueError(f"{variable}_FILE: cannot read {path}: {exc.strerror}") from None
    # `echo secret > file` and most editors end the file with a newline that is not the secret.
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise ValueError(f"{variable}_FILE: {path} is empty")
    return text
