"""Secrets never shown: the masking helpers, and the ``userplane`` command as a real process.

``userplane.settings`` masks URLs (``mask_url``, ``mask_urls_in``) and finds
what to mask elsewhere (``url_secrets``, ``password_pieces``,
``secret_values``); the CLI masks every message it prints with them. The
process tests run the installed console script against a PostgreSQL that
refuses, and against none at all, with passwords a URL parser misreads.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from userplane import settings as settings_module
from userplane.errors import Unavailable
from userplane.settings import MASK, Settings

SCRIPT = Path(sys.executable).parent / "userplane"
#: A safety limit for one CLI run, not a performance expectation.
TIMEOUT = 60

#: Not percent-encoded: "#", "?" and "/" end a URL's authority for urllib (and
#: yoyo), "?" starts libpq's query, the last "@" is where the host starts.
PASSWORDS = ["Zq8#w?X3/kPm", "Zq8@wX3kPm"]
OTEL_PASSWORD = "Rk4tN8wQx2"
#: Random-looking: the check below refuses any 3 characters of it, "ret" of "retry" too.
JWT_SECRET = "hQ9vKz2WmX7pLr4TnB8cYd3GfJ6sVx1Ze5Ua0Nb"


def leaked(secret: str, *outputs: str) -> list[str]:
    """The pieces of ``secret`` longer than 2 characters found in ``outputs``."""
    text = "\n".join(outputs)
    pieces = {secret[i:j] for i in range(len(secret)) for j in range(i + 3, len(secret) + 1)}
    return sorted(p for p in pieces if p in text)


# -- the helpers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "secrets"),
    [
        ("postgresql://u:pa#ss@h/db", {"pa#ss"}),
        ("postgresql://u:p%23ss@h/db", {"p%23ss", "p#ss"}),
        ("postgresql://u@h/db?password=s3cret&sslmode=require", {"s3cret"}),
        ("http://collector:4318/v1?token=t0k3n#access_token=fr4g", {"t0k3n", "fr4g"}),
        ("postgresql://bob@h/db", set()),
        ("sqlite:///userplane.db", set()),
        # The user name is shown; a password equal to it gives nothing more away.
        ("postgresql://postgres:postgres@localhost/db", set()),
    ],
)
def test_url_secrets(url: str, secrets: set[str]) -> None:
    assert settings_module.url_secrets(url) == secrets


def test_password_pieces_are_every_run_between_cut_points() -> None:
    pieces = settings_module.password_pieces("postgresql://u:Zq8#w?X3/kPm@h/db")
    # What urllib reports as a port, what libpq reports as a query parameter, …
    for piece in ("Zq8", "X3/kPm", "w?X3/kPm", "kPm", "#w?", "Zq8#w?X3/kPm"):
        assert piece in pieces
    assert all(len(p) >= 3 for p in pieces)
    # A password of unreserved characters only is never cut.
    assert settings_module.password_pieces("postgresql://u:Zq8-w.X3_kPm~@h/db") == frozenset()


def test_mask_urls_in_masks_every_url_of_a_text() -> None:
    text = (
        "tried postgresql://app:hX7#qP2@db/users, then http://otel:Rk4@collector:4318 "
        "and https://example.org/a@b"
    )
    assert settings_module.mask_urls_in(text) == (
        f"tried postgresql://app:{MASK}@db/users, then http://otel:{MASK}@collector:4318 "
        "and https://example.org/a@b"
    )


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (
            "to http://o:pw@h:1/?token=abc, sampling 1",
            f"to http://o:{MASK}@h:1/?token={MASK}, sampling 1",
        ),
        ("see http://h/?token=abc.", f"see http://h/?token={MASK}."),
        ("(postgresql://u:p)w@h/db)", f"(postgresql://u:{MASK}@h/db)"),
    ],
)
def test_punctuation_after_a_url_in_a_text_stays(text: str, masked: str) -> None:
    assert settings_module.mask_urls_in(text) == masked


def test_mask_text_masks_secrets_longest_first() -> None:
    text = "Port could not be cast to integer value as 'Zq8' (Zq8#w?X3/kPm)"
    secrets = settings_module.password_pieces("postgresql://u:Zq8#w?X3/kPm@h/db")
    masked = settings_module.mask_text(text, secrets)
    assert masked == f"Port could not be cast to integer value as '{MASK}' ({MASK})"


def test_secret_values_of_settings() -> None:
    settings = Settings.from_mapping(
        {
            "USERPLANE_DATABASE_URL": "postgresql://u:Zq8#wX3kPm@h/db",
            "USERPLANE_OTEL_ENDPOINT": f"http://otel:{OTEL_PASSWORD}@collector:4318",
            "USERPLANE_SMTP_PASSWORD": "smtp-pw-123",
            "USERPLANE_FEATURE_FLAG": "on",
            "USERPLANE_JWT_KEY_FILE": "/etc/userplane/idp.pem",
        }
    )
    values = settings_module.secret_values(settings)
    assert {"Zq8#wX3kPm", "Zq8", "wX3kPm", OTEL_PASSWORD, "smtp-pw-123"} <= values
    assert "on" not in values
    # Where a key is, not the key: an error about the file must be able to name it.
    assert "/etc/userplane/idp.pem" not in values
    # Nor does `config` mask it: its name says where a key is, not that it is one.
    assert settings.redacted()["USERPLANE_JWT_KEY_FILE"] == "/etc/userplane/idp.pem"
    # Log lines look for the pieces separately (``pieces=False``).
    assert "Zq8" not in settings_module.secret_values(settings, pieces=False)


def _port_error(url: str) -> str:
    """What urllib says of a URL whose password it cut at a delimiter (a driver quotes it)."""
    from urllib.parse import urlsplit

    with pytest.raises(ValueError, match="Port could not be cast") as raised:
        urlsplit(url).port  # noqa: B018 (the property raises)
    return str(raised.value)


@pytest.mark.parametrize(
    ("password", "quoted"),
    [
        # A generated password with more special characters than any fixed cap.
        ("Vh7!kP2$mQ9^zR4&wT1*yB6(nC3)pL5+sD8#Lx8", "Vh7!kP2$mQ9^zR4&wT1*yB6(nC3)pL5+sD8"),
        ("a&b&c&d&e&f&g&h&i&Tail99#x", "a&b&c&d&e&f&g&h&i&Tail99"),
    ],
)
def test_password_pieces_count_every_cut_point(password: str, quoted: str) -> None:
    url = f"postgresql://app:{password}@db:5432/users"
    message = _port_error(url)
    assert f"'{quoted}'" in message  # what urllib quotes: all of it up to the "#"
    masked = settings_module.mask_text(message, settings_module.password_pieces(url))
    assert masked == f"Port could not be cast to integer value as '{MASK}'"


def test_a_piece_also_in_the_visible_url_is_masked() -> None:
    # "postgres" is in the scheme too, but a message quoting it alone quotes the password.
    url = "postgresql://app:postgres#Xy9@db:5432/users"
    pieces = settings_module.password_pieces(url)
    assert "postgres" in pieces
    masked = settings_module.mask_text(_port_error(url), pieces)
    assert masked == f"Port could not be cast to integer value as '{MASK}'"
    # A password that is a word of the URL (its database) is one all the same.
    assert settings_module.url_secrets("postgresql://app:users@db/users") == {"users"}
    # Only the user name, which the masked URL shows anyway, is left out.
    assert "app" not in settings_module.password_pieces("postgresql://app:app#app@db/users")


def test_counts_and_file_names_are_not_secret_values() -> None:
    settings = Settings.from_mapping(
        {
            "USERPLANE_API_KEYS_CACHE_SECONDS": "120",
            "USERPLANE_JWT_KEY_FILE": "/etc/userplane/idp.pem",
            "USERPLANE_JWT_KEY": JWT_SECRET,
        }
    )
    values = settings_module.secret_values(settings)
    assert JWT_SECRET in values  # an HS secret, by its name
    assert "120" not in values  # else every "120" in a message would be masked
    out = settings.redacted()
    assert out["USERPLANE_API_KEYS_CACHE_SECONDS"] == "120"
    assert out["USERPLANE_JWT_KEY"] == MASK


def test_cli_messages_are_masked() -> None:
    from userplane.frontends.cli.errors import internal_error, message

    secrets = settings_module.password_pieces("postgresql://u:Zq8#wX3kPm@h/db")
    bug = ValueError("Port could not be cast to integer value as 'Zq8'")
    assert internal_error(bug, secrets) == (
        "userplane: internal error: ValueError: "
        f"Port could not be cast to integer value as '{MASK}'"
    )
    down = Unavailable("cannot reach postgresql://u:Zq8#wX3kPm@h/db:\n retrying")
    assert message(down, secrets) == (
        f"userplane: unavailable: cannot reach postgresql://u:{MASK}@h/db: retrying"
    )


# -- the console script as a real process ---------------------------------------------------------


class Proc:
    """Runs the installed ``userplane`` script with nothing but this test's settings."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("USERPLANE_")}
        self.env.update(
            USERPLANE_LOG_FORMAT="json",
            USERPLANE_LOG_LEVEL="debug",
            USERPLANE_ENV_FILE=str(tmp_path / "no-such.env"),
            USERPLANE_DB_POOL_TIMEOUT_MS="300",
            USERPLANE_OTEL_ENDPOINT=f"http://otel:{OTEL_PASSWORD}@collector:4318",
            USERPLANE_JWT_ALGORITHM="HS256",
            USERPLANE_JWT_KEY=JWT_SECRET,
        )

    def __call__(self, *args: str, database_url: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SCRIPT), *args],
            env={**self.env, "USERPLANE_DATABASE_URL": database_url},
            cwd=self.tmp_path,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )


@pytest.fixture
def proc(tmp_path: Path) -> Proc:
    assert SCRIPT.is_file(), SCRIPT
    return Proc(tmp_path)


def assert_nothing_leaked(result: subprocess.CompletedProcess[str], password: str) -> None:
    for secret in (password, OTEL_PASSWORD, JWT_SECRET):
        assert not leaked(secret, result.stdout, result.stderr), (result.stdout, result.stderr)


@pytest.mark.e2e
@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize("fmt", ["table", "json"])
def test_config_in_a_process_shows_no_password(proc: Proc, password: str, fmt: str) -> None:
    result = proc("config", "--format", fmt, database_url=f"postgresql://u:{password}@db:5432/x")
    assert result.returncode == 0, result.stderr
    assert "db:5432/x" in result.stdout
    assert "collector:4318" in result.stdout
    assert_nothing_leaked(result, password)


@pytest.mark.e2e
@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize(
    "command", [("migrate",), ("check",), ("serve", "--migrate")], ids=" ".join
)
def test_failing_commands_in_a_process_show_no_password(
    proc: Proc, database_address: str, password: str, command: tuple[str, ...]
) -> None:
    url = f"postgresql://userplane_no_such_role:{password}@{database_address}/no_such_db"
    result = proc(*command, database_url=url)
    assert result.returncode != 0, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("userplane: "), result.stderr
    assert_nothing_leaked(result, password)


@pytest.mark.e2e
def test_a_key_typed_as_an_argument_is_masked_in_usage_errors(proc: Proc) -> None:
    # click quotes a bad argument back; an API key pasted where an id belongs is still a key.
    key = "up_" + "AbCdEfGhIjKl" + "S3cretS3cretS3cretS3cretS3cretAb"
    result = proc("keys", "revoke", key, database_url=f"sqlite:///{proc.tmp_path}/k.db")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: Invalid value for 'KEY_ID':"), lines
    assert "up_AbCdEfGhIjKl" in lines[0]  # the lookup id, to tell which key it was
    assert "S3cret" not in result.stderr
