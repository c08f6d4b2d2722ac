"""The saved login, and which server and credentials a client-side command uses.

Order: flags, then the environment (`DTQ_URL`, `DTQ_API_KEY`, `DTQ_TOKEN`), then what
`dtq login` saved in `$XDG_CONFIG_HOME/dtq/login.json` (else `~/.config/dtq/login.json`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dtq.client import DEFAULT_URL

LOGIN_FILE = "login.json"


def config_dir(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "dtq"


def login_path(environ: Mapping[str, str] | None = None) -> Path:
    return config_dir(environ) / LOGIN_FILE


@dataclass(frozen=True)
class SavedLogin:
    url: str
    token: str
    username: str
    expires_at: float | None = None

    @property
    def expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= time.time()


def load_login(path: Path | None = None) -> SavedLogin | None:
    path = path or login_path()
    try:
        data: Any = json.loads(path.read_text())
        return SavedLogin(
            url=str(data["url"]),
            token=str(data["token"]),
            username=str(data.get("username", "")),
            expires_at=data.get("expires_at"),
        )
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a saved login ({exc}); run `dtq logout`") from None


def save_login(login: SavedLogin, path: Path | None = None) -> Path:
    """Written to a 0600 temporary file and renamed, so no one else can ever read the token
    and a crash never leaves half a file; the directory is made 0700."""
    path = path or login_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".login-", suffix=".tmp")  # 0600
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(login.__dict__, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def forget_login(path: Path | None = None) -> SavedLogin | None:
    """Delete the saved login; returns what it was (None: there was none)."""
    path = path or login_path()
    try:
        saved = load_login(path)
    except ValueError:
        saved = None
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return saved


@dataclass(frozen=True)
class Remote:
    """Where a client-side command sends its requests, and with what."""

    url: str
    api_key: str | None
    token: str | None
    url_known: bool  # from a flag, the environment or a login (not just the default)
    from_login: bool  # the credentials are the saved login's


def resolve_remote(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Remote:
    env = os.environ if environ is None else environ
    saved = load_login()
    url = getattr(args, "url", None) or env.get("DTQ_URL") or (saved.url if saved else None)
    # Credentials come from one place as a whole: a --token flag beats a DTQ_API_KEY.
    api_key, token = getattr(args, "api_key", None), getattr(args, "token", None)
    if api_key is None and token is None:
        api_key, token = env.get("DTQ_API_KEY") or None, env.get("DTQ_TOKEN") or None
    from_login = False
    # The saved token goes only to the server it came from, never to another --url.
    if (
        api_key is None
        and token is None
        and saved is not None
        and (url is None or _same_server(url, saved.url))
    ):
        if saved.expired:
            raise ValueError(f"the saved login to {saved.url} has expired: run `dtq login`")
        token, from_login = saved.token, True
    return Remote(
        url=(url or DEFAULT_URL).rstrip("/"),
        api_key=api_key,
        token=token,
        url_known=url is not None,
        from_login=from_login,
    )


def _same_server(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")
