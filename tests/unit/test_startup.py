"""Start-up pieces without a server: secrets from files, the health URL, the banner, bind errors."""

from __future__ import annotations

import errno
import io
import stat
from pathlib import Path

import pytest

from dtq.cli.healthcheck import local_url
from dtq.net.banner import StartupReport, banner_fields, listen_failure, write_secret_file
from dtq.settings import Settings, load_settings


def test_secret_files_are_read_without_the_trailing_newline(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret-pass\n")
    (tmp_path / "jwt").write_text("a-long-jwt-secret\r\n")
    settings = load_settings(
        environ={
            "DTQ_ADMIN_PASSWORD_FILE": str(tmp_path / "pw"),
            "DTQ_JWT_SECRET_FILE": str(tmp_path / "jwt"),
        }
    )
    assert settings.admin_password == "s3cret-pass"
    assert settings.jwt_secret == "a-long-jwt-secret"


def test_secret_file_keeps_inner_whitespace(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text(" two words \n\n")
    settings = load_settings(environ={"DTQ_ADMIN_PASSWORD_FILE": str(tmp_path / "pw")})
    assert settings.admin_password == " two words \n"  # only one trailing newline goes


def test_secret_and_its_file_together_are_refused(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("from-file\n")
    environ = {"DTQ_ADMIN_PASSWORD": "inline", "DTQ_ADMIN_PASSWORD_FILE": str(tmp_path / "pw")}
    with pytest.raises(ValueError, match="DTQ_ADMIN_PASSWORD and DTQ_ADMIN_PASSWORD_FILE"):
        load_settings(environ=environ)


@pytest.mark.parametrize("content", [None, ""])
def test_missing_or_empty_secret_file_names_the_variable(
    tmp_path: Path, content: str | None
) -> None:
    path = tmp_path / "jwt"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match="DTQ_JWT_SECRET_FILE"):
        load_settings(environ={"DTQ_JWT_SECRET_FILE": str(path)})


@pytest.mark.parametrize(
    ("settings", "url"),
    [
        (Settings(), "http://127.0.0.1:5000"),
        (Settings(host="0.0.0.0", port=8080), "http://127.0.0.1:8080"),
        (Settings(host="::", port=8080), "http://[::1]:8080"),
        (Settings(host="::1"), "http://[::1]:5000"),
        (Settings(host="localhost"), "http://localhost:5000"),
        (Settings(host="0.0.0.0", certfile="c.pem", keyfile="k.pem"), "https://127.0.0.1:5000"),
    ],
)
def test_local_url(settings: Settings, url: str) -> None:
    assert local_url(settings) == url


def test_listen_failure_finds_the_bind_error_in_nested_groups() -> None:
    busy = OSError(errno.EADDRINUSE, "Address already in use")
    group = BaseExceptionGroup("outer", [BaseExceptionGroup("inner", [busy])])
    settings = Settings(port=5000)
    assert listen_failure(group, settings) == (
        "dtq: port 5000 on 127.0.0.1 is already in use; choose another with --port or DTQ_PORT"
    )
    assert "--host" in (listen_failure(OSError(errno.EADDRNOTAVAIL, "x"), settings) or "")
    # Other errors are not mistaken for it.
    assert listen_failure(PermissionError(errno.EACCES, "data dir"), settings) is None
    assert listen_failure(ExceptionGroup("g", [ValueError("x")]), settings) is None


def test_banner_on_a_terminal_shows_a_generated_password(tmp_path: Path) -> None:
    terminal = io.StringIO()
    report = StartupReport(Settings(data_dir=str(tmp_path)), terminal=terminal)
    report.admin_password_generated("pw-123456")
    report.started(5055)
    text = terminal.getvalue()
    assert text.startswith("dtq ")
    assert "  URL       http://127.0.0.1:5055  (API http://127.0.0.1:5055/api/v1)\n" in text
    assert "http://127.0.0.1:5055/docs (Swagger UI), http://127.0.0.1:5055/redoc (ReDoc)" in text
    assert "admin / pw-123456" in text
    assert f"  Data dir  {tmp_path.resolve()}\n" in text
    assert not (tmp_path / "admin-password.txt").exists()


def test_banner_fields_have_a_place_for_the_protocol_port() -> None:
    fields = banner_fields(
        Settings(host="0.0.0.0"),
        url="http://127.0.0.1:5000",
        sign_in="admin",
        protocol_url="dtq://127.0.0.1:5001",
    )
    assert list(fields) == ["URL", "Docs", "Protocol", "Store", "Data dir", "Sign in"]
    assert "listening on 0.0.0.0" in fields["URL"]
    assert "Protocol" not in banner_fields(Settings(), url="http://x", sign_in="admin")


def test_without_a_terminal_the_password_goes_to_a_0600_file(tmp_path: Path) -> None:
    report = StartupReport(Settings(data_dir=str(tmp_path)), terminal=None)
    report.admin_password_generated("pw-abcdef")
    path = tmp_path / "admin-password.txt"
    assert path.read_text() == "pw-abcdef\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_secret_file_mode_is_0600_even_when_it_existed(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("old")
    path.chmod(0o644)
    write_secret_file(path, "new")
    assert path.read_text() == "new\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_kept_password_file_is_named_at_the_next_start(tmp_path: Path) -> None:
    write_secret_file(tmp_path / "admin-password.txt", "pw-kept")
    terminal = io.StringIO()
    StartupReport(Settings(data_dir=str(tmp_path)), terminal=terminal).started(5000)
    assert f"admin, with the generated password in {tmp_path.resolve()}" in terminal.getvalue()
    assert "pw-kept" not in terminal.getvalue()
