"""Settings from ``USERPLANE_*`` variables and ``.env``: parsing, errors, precedence, redaction."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from userplane.errors import ConfigurationError
from userplane.settings import MASK, Settings, _env_converter, is_secret_name, mask_url

FAST = settings(max_examples=50, deadline=None)

PG_URL = "postgresql://bob:hunter2-s3cret@db.example.org:5432/app"


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No ``USERPLANE_*`` variables and an empty working directory; returns it."""
    for name in list(os.environ):
        if name.startswith("USERPLANE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# -- defaults ------------------------------------------------------------------------


def test_defaults() -> None:
    s = Settings()
    assert s.database_url == "sqlite:///userplane.db"
    assert s.env == "dev"
    assert s.port == 8000
    assert s.host == "127.0.0.1"
    assert s.log_level == "info"
    assert s.log_format == "auto"
    assert s.cors_origins == ()
    assert s.disabled_plugins == ()
    assert s.extra == {}


@pytest.mark.parametrize(("cpus", "workers"), [(1, 2), (2, 4), (3, 6), (4, 8), (64, 8)])
def test_default_workers_are_two_per_cpu_within_bounds(
    monkeypatch: pytest.MonkeyPatch, cpus: int, workers: int
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)))
    assert Settings().workers == workers
    assert Settings().threads == 2
    assert Settings.from_mapping({"USERPLANE_WORKERS": "3"}).workers == 3


def test_an_empty_mapping_gives_the_defaults() -> None:
    assert Settings.from_mapping({}) == Settings()


def test_from_env_with_nothing_set_gives_the_defaults(clean_environ: Path) -> None:
    assert Settings.from_env() == Settings()


# -- parsing ---------------------------------------------------------------------------


def test_ints_are_parsed() -> None:
    s = Settings.from_mapping(
        {
            "USERPLANE_PORT": "9000",
            "USERPLANE_WORKERS": " 3 ",
            "USERPLANE_THREADS": "8",
            "USERPLANE_GRACEFUL_TIMEOUT": "5",
            "USERPLANE_MAX_BODY_BYTES": "1024",
            "USERPLANE_SQLITE_BUSY_TIMEOUT_MS": "0",
        }
    )
    assert (s.port, s.workers, s.threads, s.graceful_timeout) == (9000, 3, 8, 5)
    assert s.max_body_bytes == 1024
    assert s.sqlite_busy_timeout_ms == 0


@FAST
@given(st.integers(min_value=0, max_value=65535))
def test_every_valid_port_is_accepted(port: int) -> None:
    assert Settings.from_mapping({"USERPLANE_PORT": str(port)}).port == port


def test_choices_are_case_insensitive() -> None:
    s = Settings.from_mapping(
        {"USERPLANE_ENV": "PROD", "USERPLANE_LOG_LEVEL": "Debug", "USERPLANE_LOG_FORMAT": "json"}
    )
    assert (s.env, s.log_level, s.log_format) == ("prod", "debug", "json")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", True),
        ("true", True),
        ("TRUE", True),
        ("yes", True),
        (" on ", True),
        ("0", False),
        ("false", False),
        ("No", False),
        ("off", False),
    ],
)
def test_bool_ish_values(text: str, value: bool) -> None:
    # No field is a bool yet; the converter every bool setting would go through is checked.
    assert _env_converter.structure(text, bool) is value


@pytest.mark.parametrize("text", ["", "2", "y", "enabled", "tru"])
def test_bad_bools_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="true/false"):
        _env_converter.structure(text, bool)


def test_comma_lists() -> None:
    s = Settings.from_mapping(
        {
            "USERPLANE_CORS_ORIGINS": "https://a.example, https://b.example,,",
            "USERPLANE_DISABLED_PLUGINS": " logging ,sqlite",
        }
    )
    assert s.cors_origins == ("https://a.example", "https://b.example")
    assert s.disabled_plugins == ("logging", "sqlite")


def test_an_empty_list_is_empty() -> None:
    s = Settings.from_mapping({"USERPLANE_CORS_ORIGINS": "", "USERPLANE_DISABLED_PLUGINS": " , "})
    assert s.cors_origins == ()
    assert s.disabled_plugins == ()


@FAST
@given(
    st.lists(
        st.text(alphabet="abcdefghijklmnopqrstuvwxyz-_.", min_size=1, max_size=10),
        max_size=5,
    )
)
def test_comma_lists_round_trip(names: list[str]) -> None:
    s = Settings.from_mapping({"USERPLANE_DISABLED_PLUGINS": ",".join(names)})
    assert s.disabled_plugins == tuple(names)


# -- bad values ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("USERPLANE_WORKERS", "abc"),
        ("USERPLANE_WORKERS", "0"),
        ("USERPLANE_WORKERS", "1.5"),
        ("USERPLANE_THREADS", "-1"),
        ("USERPLANE_PORT", "70000"),
        ("USERPLANE_PORT", "-1"),
        ("USERPLANE_PORT", ""),
        ("USERPLANE_GRACEFUL_TIMEOUT", "0"),
        ("USERPLANE_MAX_BODY_BYTES", "0"),
        ("USERPLANE_SQLITE_BUSY_TIMEOUT_MS", "-5"),
        ("USERPLANE_ENV", "staging"),
        ("USERPLANE_LOG_LEVEL", "loud"),
        ("USERPLANE_LOG_FORMAT", "xml"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_mapping({name: value})
    assert name in str(info.value)
    assert name in info.value.detail


@FAST
@given(st.integers().filter(lambda n: not 0 <= n <= 65535))
def test_every_port_out_of_range_is_refused(port: int) -> None:
    with pytest.raises(ConfigurationError, match="USERPLANE_PORT"):
        Settings.from_mapping({"USERPLANE_PORT": str(port)})


@FAST
@given(st.text(max_size=20).filter(lambda t: t.strip().lower() not in {"dev", "prod"}))
def test_every_unknown_env_is_refused(value: str) -> None:
    with pytest.raises(ConfigurationError, match="USERPLANE_ENV"):
        Settings.from_mapping({"USERPLANE_ENV": value})


def test_several_bad_values_are_all_named() -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_mapping({"USERPLANE_WORKERS": "abc", "USERPLANE_ENV": "staging"})
    assert "USERPLANE_WORKERS" in info.value.detail
    assert "USERPLANE_ENV" in info.value.detail


# -- from_env and .env -------------------------------------------------------------------


def test_from_env_reads_the_env_file(clean_environ: Path) -> None:
    (clean_environ / ".env").write_text(
        "USERPLANE_PORT=9100\n"
        "USERPLANE_ENV=prod\n"
        'USERPLANE_CORS_ORIGINS="https://a.example,https://b.example"\n'
        "OTHER_VARIABLE=ignored\n",
        encoding="utf-8",
    )
    s = Settings.from_env()
    assert s.port == 9100
    assert s.env == "prod"
    assert s.cors_origins == ("https://a.example", "https://b.example")
    assert "OTHER_VARIABLE" not in s.extra


def test_from_env_with_an_explicit_environ(tmp_path: Path) -> None:
    env_file = tmp_path / "my.env"
    env_file.write_text("USERPLANE_PORT=9100\nUSERPLANE_WORKERS=7\n", encoding="utf-8")
    s = Settings.from_env({"USERPLANE_PORT": "9200", "HOME": "/x"}, env_file=env_file)
    assert s.port == 9200  # the environment wins
    assert s.workers == 7  # the file fills in the rest
    assert s.extra == {}


def test_the_environment_wins_over_the_env_file(
    clean_environ: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (clean_environ / ".env").write_text(
        "USERPLANE_PORT=9100\nUSERPLANE_LOG_LEVEL=debug\n", encoding="utf-8"
    )
    monkeypatch.setenv("USERPLANE_PORT", "9300")
    s = Settings.from_env()
    assert s.port == 9300
    assert s.log_level == "debug"


def test_userplane_env_file_chooses_the_file(
    clean_environ: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    (clean_environ / ".env").write_text("USERPLANE_PORT=9100\n", encoding="utf-8")
    other = tmp_path_factory.mktemp("elsewhere") / "userplane.env"
    other.write_text("USERPLANE_PORT=9400\nUSERPLANE_HOST=0.0.0.0\n", encoding="utf-8")
    monkeypatch.setenv("USERPLANE_ENV_FILE", str(other))
    s = Settings.from_env()
    assert s.port == 9400
    assert s.host == "0.0.0.0"
    # The variable that names the file is not a setting of its own.
    assert "USERPLANE_ENV_FILE" not in s.extra


def test_userplane_env_file_in_an_explicit_environ(tmp_path: Path) -> None:
    chosen = tmp_path / "chosen.env"
    chosen.write_text("USERPLANE_WORKERS=5\n", encoding="utf-8")
    s = Settings.from_env({"USERPLANE_ENV_FILE": str(chosen)})
    assert s.workers == 5


def test_a_missing_env_file_is_fine_unless_named(tmp_path: Path) -> None:
    missing = tmp_path / "does-not-exist.env"
    assert Settings.from_env({"USERPLANE_ENV_FILE": str(missing)}) == Settings()
    # Named explicitly (the CLI's --env-file), it must exist.
    with pytest.raises(ConfigurationError, match=r"does-not-exist\.env"):
        Settings.from_env({}, env_file=missing)


def test_a_bad_value_in_the_env_file_names_the_variable(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("USERPLANE_WORKERS=many\n", encoding="utf-8")
    with pytest.raises(ConfigurationError, match="USERPLANE_WORKERS"):
        Settings.from_env({}, env_file=env_file)


def test_unknown_userplane_variables_land_in_extra(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("USERPLANE_FROM_FILE=f\n", encoding="utf-8")
    s = Settings.from_env(
        {"USERPLANE_AUDIT_SINK": "stdout", "USERPLANE_OTEL_TOKEN": "t", "PATH": "/bin"},
        env_file=env_file,
    )
    assert s.extra == {
        "USERPLANE_AUDIT_SINK": "stdout",
        "USERPLANE_OTEL_TOKEN": "t",
        "USERPLANE_FROM_FILE": "f",
    }


def test_from_mapping_puts_unknown_names_in_extra() -> None:
    s = Settings.from_mapping({"USERPLANE_PORT": "1", "USERPLANE_WHATEVER": "x"})
    assert s.extra == {"USERPLANE_WHATEVER": "x"}


# -- redaction -------------------------------------------------------------------------------


def test_redacted_masks_the_database_password() -> None:
    s = Settings.from_mapping({"USERPLANE_DATABASE_URL": PG_URL})
    out = s.redacted()
    assert out["USERPLANE_DATABASE_URL"] == f"postgresql://bob:{MASK}@db.example.org:5432/app"
    assert "hunter2" not in str(out)


def test_redacted_leaves_a_url_without_password_alone() -> None:
    url = "postgresql://bob@db.example.org/app"
    assert (
        Settings.from_mapping({"USERPLANE_DATABASE_URL": url}).redacted()["USERPLANE_DATABASE_URL"]
        == url
    )
    assert Settings().redacted()["USERPLANE_DATABASE_URL"] == "sqlite:///userplane.db"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://:hunter2-s3cret@db.example.org/app",
        "postgresql://bob:hunter2-s3cret@db.example.org/app",
        "postgresql://bob:hunter2-s3cret%40x@db.example.org/app",
        "postgresql://bob:hunter2-s3cret@/app?host=/run/postgresql",
    ],
)
def test_the_password_never_appears_in_the_redacted_url(url: str) -> None:
    out = Settings.from_mapping({"USERPLANE_DATABASE_URL": url}).redacted()
    assert "hunter2" not in out["USERPLANE_DATABASE_URL"]
    assert MASK in out["USERPLANE_DATABASE_URL"]


def test_a_password_given_as_a_query_parameter_is_masked_too() -> None:
    # libpq takes every connection parameter, the password too, from the query string.
    url = "postgresql://bob@db.example.org/app?password=hunter2-s3cret&sslmode=require"
    out = Settings.from_mapping({"USERPLANE_DATABASE_URL": url}).redacted()
    assert "hunter2" not in out["USERPLANE_DATABASE_URL"]


def test_masking_keeps_an_ipv6_host_a_valid_url() -> None:
    url = "postgresql://bob:hunter2-s3cret@[::1]:5432/app"
    masked = mask_url(url)
    assert "hunter2" not in masked
    parts = urlsplit(masked)
    assert parts.hostname == "::1"
    assert parts.port == 5432
    assert masked == f"postgresql://bob:{MASK}@[::1]:5432/app"


def fragments(secret: str, longer_than: int = 2) -> set[str]:
    """Every piece of ``secret`` longer than ``longer_than`` characters."""
    return {
        secret[i:j] for i in range(len(secret)) for j in range(i + longer_than + 1, len(secret) + 1)
    }


#: Passwords a URL parser misreads when they are not percent-encoded.
MALFORMED_PASSWORDS = [
    "pa#ss",
    "p?ss",
    "hX7#qP2?zR9",
    "hX7/qP2kW",
    "hX7@qP2kW",
    "hX7:qP2#kW",
    "#?/@",
]


@pytest.mark.parametrize("password", MALFORMED_PASSWORDS)
def test_a_password_with_an_unencoded_delimiter_is_masked_whole(password: str) -> None:
    # urlsplit ends the authority at the first "#", "?" or "/": the user info runs
    # to the last "@" instead, so no piece of the password is left in sight.
    url = f"postgresql://u:{password}@db.example.org:5432/app"
    masked = mask_url(url)
    assert masked == f"postgresql://u:{MASK}@db.example.org:5432/app"
    out = Settings.from_mapping({"USERPLANE_DATABASE_URL": url}).redacted()
    assert out["USERPLANE_DATABASE_URL"] == masked
    text = str(out)
    assert not [f for f in fragments(password) if f in text]


@FAST
@given(
    st.text(alphabet=st.sampled_from("abcXYZ0129#?/@:%&=+!$;,'[]"), min_size=1, max_size=24).filter(
        lambda p: p.strip()
    )
)
def test_any_password_is_masked_whole(password: str) -> None:
    url = f"postgresql://u:{password}@db.example.org:5432/app?sslmode=require"
    assert mask_url(url) == f"postgresql://u:{MASK}@db.example.org:5432/app?sslmode=require"


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://otel:hX7#qP2kW@collector:4318",
        "http://collector:4318/?token=hX7qP2kW",
        "https://collector:4318/v1?api_key=hX7qP2kW&x=1",
    ],
)
def test_redacted_masks_credentials_in_any_url_setting(endpoint: str) -> None:
    settings = Settings.from_mapping(
        {"USERPLANE_OTEL_ENDPOINT": endpoint, "USERPLANE_CORS_ORIGINS": "https://a:hX7qP2kW@b"}
    )
    out = settings.redacted()
    assert "collector:4318" in out["USERPLANE_OTEL_ENDPOINT"]
    assert MASK in out["USERPLANE_OTEL_ENDPOINT"]
    assert MASK in out["USERPLANE_CORS_ORIGINS"]
    text = str(out)
    assert "hX7" not in text
    assert "qP2" not in text


def test_redacted_masks_secret_extras_only() -> None:
    s = Settings.from_mapping(
        {
            "USERPLANE_OIDC_CLIENT_SECRET": "s1",
            "USERPLANE_SMTP_PASSWORD": "s2",
            "USERPLANE_API_TOKEN": "s3",
            "USERPLANE_SIGNING_KEY": "s4",
            "USERPLANE_api_key_file": "/etc/userplane/api.key",
            "USERPLANE_AUDIT_SINK": "stdout",
        }
    )
    out = s.redacted()
    for name in (
        "USERPLANE_OIDC_CLIENT_SECRET",
        "USERPLANE_SMTP_PASSWORD",
        "USERPLANE_API_TOKEN",
        "USERPLANE_SIGNING_KEY",
    ):
        assert out[name] == MASK
    assert out["USERPLANE_AUDIT_SINK"] == "stdout"
    for secret in ("s1", "s2", "s3", "s4"):
        assert secret not in out.values()
    # Where a key is, not the key: shown, so that an operator can tell which file.
    assert out["USERPLANE_api_key_file"] == "/etc/userplane/api.key"


def test_redacted_names_every_setting_by_its_variable() -> None:
    out = Settings.from_mapping({"USERPLANE_CORS_ORIGINS": "https://a,https://b"}).redacted()
    assert out["USERPLANE_PORT"] == 8000
    assert out["USERPLANE_ENV"] == "dev"
    assert out["USERPLANE_CORS_ORIGINS"] == "https://a,https://b"
    assert "extra" not in out
    assert all(k.startswith("USERPLANE_") for k in out)


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("USERPLANE_X_PASSWORD", True),
        ("USERPLANE_SECRET", True),
        ("USERPLANE_token", True),
        ("USERPLANE_PRIVATE_KEY", True),
        ("USERPLANE_AUDIT_SINK", False),
        ("USERPLANE_HOST", False),
        ("USERPLANE_SMTP_PASSWD", True),
        ("USERPLANE_SMTP_PWD", True),
        ("USERPLANE_IDP_CREDENTIALS", True),
        ("USERPLANE_WEBHOOK_AUTHORIZATION", True),
        ("USERPLANE_SESSION_COOKIE", True),
        ("USERPLANE_PASSPHRASE", True),
        ("sig", True),
        ("USERPLANE_PASSAGE", False),
        ("USERPLANE_SIGNAL", False),
        # Whole parts of the name, not substrings.
        ("USERPLANE_JWT_KEY", True),
        ("USERPLANE_JWT_KEYS", True),
        ("USERPLANE_MONKEY", False),
        ("USERPLANE_KEYBOARD_LAYOUT", False),
        ("USERPLANE_MAX_TOKENS", False),
        ("USERPLANE_REFRESH_TOKEN", True),
        ("accessToken", True),
        ("apiKey", True),
        ("sslpassword", True),
        ("X-Amz-Credential", True),
        # A duration, a size, a count or a location is never a secret by its name.
        ("USERPLANE_API_KEYS_CACHE_SECONDS", False),
        ("USERPLANE_JWT_KEY_FILE", False),
        ("USERPLANE_SIGNING_KEY_PATH", False),
        ("USERPLANE_SECRETS_DIR", False),
        ("USERPLANE_TOKEN_TTL", False),
        ("USERPLANE_TOKEN_MS", False),
        ("USERPLANE_KEY_S", False),
        ("USERPLANE_PASSWORD_MIN_SIZE", False),
        ("USERPLANE_API_KEY_COUNT", False),
        ("USERPLANE_OIDC_CLIENT_ID", False),
    ],
)
def test_is_secret_name(name: str, secret: bool) -> None:
    assert is_secret_name(name) is secret


def test_repr_never_shows_the_database_password_or_extras() -> None:
    s = Settings.from_mapping(
        {"USERPLANE_DATABASE_URL": PG_URL, "USERPLANE_API_TOKEN": "tok-abc123"}
    )
    assert "hunter2" not in repr(s)
    assert "hunter2" not in str(s)
    assert "tok-abc123" not in repr(s)


# -- CORS defaults ----------------------------------------------------------------------------


def test_allowed_origins_default_to_any_in_dev() -> None:
    assert Settings.from_mapping({"USERPLANE_ENV": "dev"}).allowed_origins == ("*",)


def test_allowed_origins_default_to_none_in_prod() -> None:
    assert Settings.from_mapping({"USERPLANE_ENV": "prod"}).allowed_origins == ()


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_configured_origins_win_in_either_env(env: str) -> None:
    s = Settings.from_mapping({"USERPLANE_ENV": env, "USERPLANE_CORS_ORIGINS": "https://a.org"})
    assert s.allowed_origins == ("https://a.org",)
