"""What `dtq serve` tells its user at start: one short block, and the admin's first password.

On a terminal (stderr is a tty) the block is printed as text, and a generated admin password is
shown in it, once. Otherwise (a container, a service manager, JSON logs) the block is one log
event, `server_started`, and a generated password goes to `<data-dir>/admin-password.txt`
(mode 0600), whose path is logged: a password never enters the logs, which are shipped and kept.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit, urlunsplit

import msgspec

from dtq import __version__
from dtq.logs import get_logger
from dtq.settings import MEMORY_STORE, Durability, Settings, local_url

__all__ = [
    "ADMIN_PASSWORD_FILE",
    "StartupReport",
    "banner_fields",
    "check_can_listen",
    "listen_failure",
    "write_secret_file",
]

log = get_logger(__name__)

ADMIN_PASSWORD_FILE = "admin-password.txt"

_DURABILITY = {
    Durability.FSYNC: "a 2xx for a write means it is on disk",
    Durability.OS: "survives a process crash, not a power loss",
}


def write_secret_file(path: Path, secret: str) -> None:
    """Write `secret` to `path`, readable by this user only (0600 from the first byte)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT: set it
        os.write(fd, (secret + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def redact_url(url: str) -> str:
    """A database URL fit for a log: its password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def banner_fields(
    settings: Settings, *, url: str, sign_in: str, protocol_url: str | None = None
) -> dict[str, str]:
    """The start block, label -> text, in order. `url` is where the server answers locally."""
    listening = f", listening on {settings.host}" if settings.host not in url else ""
    fields = {
        "URL": f"{url}  (API {url}/api/v1{listening})",
        "Docs": f"{url}/docs (Swagger UI), {url}/redoc (ReDoc)",
    }
    if protocol_url is not None:  # the fast-lane protocol port, once `dtq serve` opens one
        fields["Protocol"] = protocol_url
    if settings.store == MEMORY_STORE:
        fields["Store"] = "memory: NOTHING SURVIVES A STOP (tasks, users, keys are lost)"
    elif settings.store.startswith(("postgresql://", "postgres://")):
        fields["Store"] = (
            f"postgresql {redact_url(settings.store)} (shared by every server on it; "
            "synchronous_commit on)"
        )
    else:
        data_dir = str(settings.data_path.resolve())
        fields["Store"] = (
            f"lmdb, durability {settings.durability.value} ({_DURABILITY[settings.durability]})"
        )
        fields["Data dir"] = data_dir
    fields["Sign in"] = sign_in
    return fields


class StartupReport:
    """Collects what happened at start (a generated admin password) and announces the server.

    `terminal`: the stream to print the block on when a person is watching (stderr when it is a
    tty), else None for the log event and the password file.
    """

    def __init__(self, settings: Settings, *, terminal: TextIO | None) -> None:
        self._settings = settings
        self._terminal = terminal
        kept = settings.data_path.resolve() / ADMIN_PASSWORD_FILE
        if kept.exists():  # generated at an earlier start, and not yet deleted
            self._sign_in = f"admin, with the generated password in {kept}"
        else:
            self._sign_in = (
                "POST /api/v1/auth/login as admin (the password set at first start, "
                "DTQ_ADMIN_PASSWORD), or use an API key (X-API-Key)"
            )

    def admin_password_generated(self, password: str) -> None:
        """The first start made the `admin` user with a random `password`."""
        if self._terminal is not None:
            self._sign_in = f"admin / {password}  (generated: shown only this once, keep it)"
            return
        path = self._settings.data_path.resolve() / ADMIN_PASSWORD_FILE
        path.parent.mkdir(parents=True, exist_ok=True)  # the memory store makes no data dir
        write_secret_file(path, password)
        self._sign_in = f"admin, with the generated password in {path} (mode 0600)"
        log.warning(
            "admin_password_generated",
            username="admin",
            password_file=str(path),
            hint="read it, sign in, then delete the file",
        )

    def started(self, port: int, *, protocol_url: str | None = None) -> None:
        """The server is listening on `port` (the real one, when the settings say 0)."""
        fields = banner_fields(
            self._settings,
            url=local_url(msgspec.structs.replace(self._settings, port=port)),
            sign_in=self._sign_in,
            protocol_url=protocol_url,
        )
        if self._terminal is None:
            log.info("server_started", version=__version__, **_snake(fields))
            return
        width = max(len(label) for label in fields)
        lines = [f"dtq {__version__} is running (Ctrl+C stops it)"]
        lines += [f"  {label.ljust(width)}  {text}" for label, text in fields.items()]
        self._terminal.write("\n".join(lines) + "\n")
        self._terminal.flush()


def _snake(fields: Mapping[str, str]) -> dict[str, str]:
    return {label.lower().replace(" ", "_"): text for label, text in fields.items()}


# Errors only bind() raises, so none is mistaken for, say, a data directory it cannot write.
_LISTEN_ERRORS = (errno.EADDRINUSE, errno.EADDRNOTAVAIL)


def listen_failure(exc: BaseException, settings: Settings) -> str | None:
    """One line for a failure to open the listening socket, or None when `exc` is not one.

    trio and hypercorn deliver it as an OSError inside (possibly nested) exception groups.
    """
    error = _find_os_error(exc)
    if error is None:
        return None
    if error.errno == errno.EADDRNOTAVAIL:
        return (
            f"dtq: cannot listen on {settings.host}: not an address of this machine; "
            "choose another with --host or DTQ_HOST"
        )
    return (
        f"dtq: port {settings.port} on {settings.host} is already in use; "
        "choose another with --port or DTQ_PORT"
    )


def _find_os_error(exc: BaseException) -> OSError | None:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := _find_os_error(inner)) is not None:
                return found
        return None
    if isinstance(exc, OSError) and exc.errno in _LISTEN_ERRORS:
        return exc
    return None


def check_can_listen(settings: Settings) -> None:
    """Bind and release the serving address now, before the store is opened, so a busy port is
    reported before anything is created. hypercorn's own bind still decides (a port can be
    taken in between); this only makes the common case quick and quiet."""
    if settings.port == 0:
        return
    infos = socket.getaddrinfo(settings.host, settings.port, type=socket.SOCK_STREAM)
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        # As hypercorn binds: SO_REUSEADDR, so a port in TIME_WAIT is not "in use".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
