"""The saved login (`dtq login`) and the order in which credentials are taken."""

from __future__ import annotations

import argparse
import stat
from pathlib import Path

import pytest

from dtq.cli.config import (
    SavedLogin,
    config_dir,
    forget_login,
    load_login,
    login_path,
    resolve_remote,
    save_login,
)


def args(**kw: str | None) -> argparse.Namespace:
    return argparse.Namespace(**{"url": None, "api_key": None, "token": None, **kw})


@pytest.fixture
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    for name in ("DTQ_URL", "DTQ_API_KEY", "DTQ_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "cfg"


def test_config_dir_follows_xdg_else_home(tmp_path: Path) -> None:
    assert config_dir({"XDG_CONFIG_HOME": "/x"}) == Path("/x/dtq")
    home = Path.home()
    assert config_dir({}) == home / ".config" / "dtq"


def test_the_saved_login_is_private(config_home: Path) -> None:
    path = save_login(SavedLogin("http://127.0.0.1:5001", "tok", "admin", 2e9))
    assert path == config_home / "dtq" / "login.json" == login_path()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_login() == SavedLogin("http://127.0.0.1:5001", "tok", "admin", 2e9)
    save_login(SavedLogin("http://127.0.0.1:5001", "tok2", "admin"))  # replaced, still 0600
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["login.json"]  # no temporary left
    assert forget_login() is not None
    assert load_login() is None and forget_login() is None


def test_flags_then_environment_then_the_saved_login(
    config_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = resolve_remote(args())
    assert (default.url, default.url_known, default.token) == ("http://127.0.0.1:5000", False, None)

    save_login(SavedLogin("http://10.0.0.1:5000", "saved", "admin"))
    r = resolve_remote(args())
    assert (r.url, r.url_known, r.token, r.from_login) == (
        "http://10.0.0.1:5000",
        True,
        "saved",
        True,
    )

    monkeypatch.setenv("DTQ_API_KEY", "dtq_env")
    r = resolve_remote(args())
    assert (r.url, r.api_key, r.token, r.from_login) == (
        "http://10.0.0.1:5000",
        "dtq_env",
        None,
        False,
    )
    r = resolve_remote(args(token="flag"))  # a flag beats the environment, whatever its kind
    assert (r.api_key, r.token) == (None, "flag")
    monkeypatch.delenv("DTQ_API_KEY")

    monkeypatch.setenv("DTQ_URL", "http://10.0.0.2:5000")
    r = resolve_remote(args())
    assert (r.url, r.token) == ("http://10.0.0.2:5000", None)  # never sent to another server
    r = resolve_remote(args(url="http://10.0.0.1:5000/"))
    assert (r.url, r.token) == ("http://10.0.0.1:5000", "saved")


def test_an_expired_login_says_so(config_home: Path) -> None:
    save_login(SavedLogin("http://10.0.0.1:5000", "old", "admin", expires_at=1.0))
    with pytest.raises(ValueError, match="has expired: run `dtq login`"):
        resolve_remote(args())
    assert resolve_remote(args(api_key="dtq_k")).api_key == "dtq_k"  # other credentials: fine
