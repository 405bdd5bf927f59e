"""Secrets never reach a log line: not from settings, headers, messages or stdlib loggers."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
import structlog.tracebacks
from clients import client_for, new_key
from falcon import testing

from userplane import Registry, Settings
from userplane.frontends.http import create_app, problems
from userplane.plugins import api_keys
from userplane.plugins import logging as logging_plugin

PASSWORD = "s3cr3t-Pa55"
API_KEY = "up_9f8e7d6c5b4a39281706f5e4d3c2b1a0"


def test_secrets_are_masked_in_every_kind_of_line(capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings.from_mapping(
        {
            "USERPLANE_DATABASE_URL": f"postgresql://app:{PASSWORD}@db.internal:5432/users",
            "USERPLANE_LOG_FORMAT": "json",
            "USERPLANE_SOME_API_KEY": API_KEY,
        }
    )
    logging_plugin.configure(settings)
    log = structlog.get_logger("test")
    log.info("settings", database_url=settings.database_url, extra=dict(settings.extra))
    log.info("headers", headers={"Authorization": f"Bearer {API_KEY}", "Accept": "*/*"})
    log.warning("retrying", error=f"could not connect to {settings.database_url}")
    log.info("client said", text=f"Authorization: Bearer {API_KEY}", password=PASSWORD)
    logging.getLogger("gunicorn.error").error("bad url %s", settings.database_url)
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert len(lines) == 5
    for line in lines:
        assert PASSWORD not in line, line
        assert API_KEY not in line, line
    assert all("********" in line for line in lines)
    assert "db.internal:5432/users" in lines[0]  # the rest of the URL stays useful


def test_an_authorization_header_never_reaches_the_access_log(
    tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings.from_mapping(
        {"USERPLANE_DATABASE_URL": f"sqlite:///{tmp_path}/r.db", "USERPLANE_LOG_FORMAT": "json"}
    )
    with Registry(settings) as registry:
        registry.migrate()
        client = client_for(registry)
        client.simulate_get(
            "/api/v1/users/", headers={"Authorization": f"Bearer {API_KEY}"}, params={"q": API_KEY}
        )
    err = capsys.readouterr().err
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert [e["event"] for e in events if e.get("logger") == "userplane.access"] == ["request"]
    assert f"Bearer {API_KEY}" not in err


# -- an unexpected error while a key is checked --------------------------------------------------


def _forget_cached_configuration() -> None:
    # A module's logger keeps the configuration it first logged with
    # (cache_logger_on_first_use), so the stream of an earlier test's capture:
    # the HTTP error handler's must write where this test's configuration says.
    vars(problems._log).pop("bind", None)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """structlog and the root logger are process-wide: put them back after the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    _forget_cached_configuration()
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    _forget_cached_configuration()
    root.handlers[:] = handlers
    root.setLevel(level)


def _failing_key_check(registry: Registry, where: str) -> None:
    """Make key checking fail with a bug's exception (not a userplane error), at ``where``."""
    state = api_keys.state_of(registry)
    if where == "store":
        # The database driver, say: the key is in the caller's frame locals only.
        def get_api_key(lookup: str) -> None:
            raise RuntimeError("the driver lost its connection")

        state.store.get_api_key = get_api_key  # type: ignore[method-assign]
    else:
        # A bug whose message quotes its argument: the key is in the exception's text.
        def lookup_of(key: str) -> str:
            raise ValueError(f"cannot parse {key!r}")

        state.authenticator._lookup_of = lookup_of  # type: ignore[assignment]


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("log_format", ["json", "console"])
@pytest.mark.parametrize("where", ["store", "message"])
def test_an_unexpected_error_while_checking_a_key_never_logs_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], log_format: str, where: str
) -> None:
    settings = Settings.from_mapping(
        {"USERPLANE_DATABASE_URL": f"sqlite:///{tmp_path}/k.db", "USERPLANE_LOG_FORMAT": log_format}
    )
    with Registry(settings) as registry:
        registry.migrate()
        key = new_key(registry)
        _failing_key_check(registry, where)
        client = testing.TestClient(create_app(registry))
        resp = client.simulate_get("/api/v1/users", headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code == 500
    err = capsys.readouterr().err
    assert "unhandled error" in err  # the failure is logged, with its traceback
    assert "Traceback" in err or '"exception"' in err
    assert key not in err
    # Not one run of the secret part either, in a line cut by a renderer or not.
    secret = key[len("up_") + 12 :]
    assert all(secret[i : i + 8] not in err for i in range(len(secret) - 7)), err
    if where == "message":
        # The non-secret lookup id stays, to tell which key it was.
        assert key[: len("up_") + 12] in err


def test_a_traceback_rendered_with_locals_does_not_carry_the_key() -> None:
    # Were frame locals ever rendered (a host's configuration, a future structlog),
    # redaction masks them by name and by shape.
    key = "up_" + "AbCdEfGhIjKl" + "x7" * 16

    def check(key: str, token: str, password: str) -> None:
        raise RuntimeError("failed")

    try:
        check(key, token=f"eyJhbGciOiJIUzI1NiJ9.{'e' * 20}.sig", password="hunter2-s3cret")
    except RuntimeError:
        exc_info = sys.exc_info()
    rendered = structlog.tracebacks.ExceptionDictTransformer(show_locals=True)(exc_info)
    frame_locals = rendered[0]["frames"][-1]["locals"]
    assert key in str(frame_locals)  # it is there to mask
    line = json.dumps(logging_plugin.redact(None, "error", {"exception": rendered}))
    assert key not in line
    assert "hunter2-s3cret" not in line
    assert "eyJhbGciOiJIUzI1NiJ9" not in line


# -- by shape, anywhere in a line ------------------------------------------------------------------

KEY = "up_" + "Lookup012345" + "S3cretS3cretS3cretS3cretS3cretAb"
JWT = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWJ5dGVz"
BASIC = "dXNlcjpodW50ZXIy"


@pytest.mark.parametrize(
    ("text", "secrets", "kept"),
    [
        (f"rejected key {KEY} from 10.0.0.1", [KEY[15:]], ["up_Lookup012345", "10.0.0.1"]),
        (f"path=/api/v1/users/{KEY}", [KEY[15:]], ["up_Lookup012345"]),
        (f"token was {JWT}.", ["eyJzdWIiOiJhbGljZSJ9", "c2lnbmF0dXJl"], ["token was"]),
        (f"Authorization: Basic {BASIC}", [BASIC], ["Authorization"]),
        (f"sent 'Bearer {KEY}'", [KEY[15:]], ["Bearer"]),
        ("cannot reach postgresql://app:hX7#qP2?zR9@db/users", ["hX7", "qP2", "zR9"], ["db/users"]),
        ("cannot reach postgresql://app:hX7/qP2@db/users", ["hX7/qP2"], ["db/users"]),
        ("GET http://collector:4318/v1/traces?token=tok-9f8e7d&x=1", ["tok-9f8e7d"], ["x=1"]),
        ("dsn host=db password=hunter2-s3cret dbname=users", ["hunter2"], ["dbname=users"]),
        ("{'password': 'hunter2-s3cret', 'user': 'ann'}", ["hunter2"], ["'ann'"]),
        ('{"api_key":"k-9f8e7d6c5b4a","id":7}', ["k-9f8e7d6c5b4a"], ['"id":7']),
        ("key = 'k-9f8e7d6c5b4a'", ["k-9f8e7d6c5b4a"], []),
        ("Authorization: Bearer sometoken", ["sometoken"], ["Authorization"]),
        ("{'Authorization': 'Bearer sometoken', 'Accept': '*/*'}", ["sometoken"], ["'*/*'}"]),
        # Prose about the schemes is not a credential.
        ("HS256 bearer tokens, basic auth off", [], ["bearer tokens, basic auth off"]),
        # A quoted value goes to its matching unescaped quote, spaces and escapes included.
        ('{"password": "correct horse battery staple"}', ["horse", "battery", "staple"], []),
        ('login password="hun\\"ter2" user=ann', ["hun", "ter2"], ["user=ann"]),
        # An unquoted one to the end of the value: ";", "&" and "," may be part of it.
        ("dsn password=p&ss;w,rd host=db", ["p&ss", "ss;w", "w,rd"], ["host=db"]),
        # But a query string's parameters end at "&".
        ("GET /x?token=tok-9f8e7d&page=2", ["tok-9f8e7d"], ["page=2"]),
        # A cookie header is masked whole: any of its pairs may be the session.
        ("Cookie: theme=dark; session=abcdef1234567890", ["abcdef1234567890"], ["Cookie: "]),
        ("Set-Cookie: sid=abcdef1234567890; Path=/; HttpOnly", ["abcdef1234567890"], []),
        # Names read as whole parts: these hold data, not credentials.
        ("idempotency_key=ik-42 cache_key=u:1 tokens_used=5", [], ["ik-42", "u:1", "=5"]),
    ],
)
def test_secrets_are_masked_by_shape_in_any_text(
    text: str, secrets: list[str], kept: list[str]
) -> None:
    event = {
        "event": text,
        "detail": text,
        "nested": {"errors": [text], "deeper": {"why": (text,)}},
        "error": RuntimeError(text),
    }
    redacted = logging_plugin.redact(None, "info", event)
    line = json.dumps(redacted, default=repr)
    for secret in secrets:
        assert secret not in line, line
    for part in kept:  # the rest of the text stays useful
        assert part in redacted["event"], redacted["event"]


@pytest.mark.parametrize(
    "name",
    [
        "key",
        "api_key",
        "apiKey",
        "X-Api-Key",
        "secret_key",
        "token",
        "access_token",
        "password",
        "Authorization",
        "Cookie",
        "set-cookie",
        "credentials",
        "client_secret",
        "keys",
        "private_key",
        "signing_key",
        "refresh_token",
        "accessToken",
        "new_password",
    ],
)
def test_secrets_are_masked_by_name_at_any_depth(name: str) -> None:
    value = "plain-looking-value"
    event = {name: value, "request": {"headers": {name: value}, "items": [{name: value}]}}
    line = json.dumps(logging_plugin.redact(None, "info", event))
    assert value not in line


@pytest.mark.parametrize(
    "name",
    [
        "idempotency_key",
        "cache_key",
        "sort_key",
        "primary_key",
        "tokens_used",
        "max_tokens",
        "api_key_id",
        "token_count",
        "token_type",
        "monkey",
    ],
)
def test_names_that_only_contain_a_secrets_word_are_not_masked(name: str) -> None:
    event = {"event": "done", name: "plain-looking-value", "nested": {name: 3}}
    assert logging_plugin.redact(None, "info", event) == event


def test_what_is_not_secret_is_left_alone() -> None:
    line = {
        "event": "request",
        "principal": "key:3f2a9c1e-8d4b-4b5e-9f0a-1c2d3e4f5a6b",
        "key_id": "3f2a9c1e-8d4b-4b5e-9f0a-1c2d3e4f5a6b",
        "route": "/api/v1/users/{user_id:uuid}",
        "path": "/api/v1/users/12345678-1234-5678-1234-567812345678",
        "status": 200,
        "bytes": 312,
        "duration_ms": 1.5,
        "request_id": "9223f3490b7ef6a278d9316ef7959250",
        "timestamp": "2026-01-01T00:00:00.000000Z",
    }
    # The fast path: nothing in an ordinary access line can be a secret, and it is
    # handed back as it is, not copied.
    assert logging_plugin.redact(None, "info", line) is line
    # The slow path (a space in the event) masks nothing either.
    slower = {**line, "event": "a request was served"}
    assert logging_plugin.redact(None, "info", slower) == slower
    # An "@" outside a URL (a token's subject) keeps a line on the fast path.
    by_email = {**line, "principal": "jwt:alice@example.com"}
    assert logging_plugin.redact(None, "info", by_email) is by_email


def test_a_stdlib_records_exception_is_masked_too(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    # gunicorn's and yoyo's lines: their tracebacks are rendered by our formatter.
    logging_plugin.configure(Settings(log_format="json"))
    try:
        raise RuntimeError(f"cannot reach postgresql://app:{PASSWORD}@db/users with {KEY}")
    except RuntimeError:
        logging.getLogger("gunicorn.error").exception("worker failed")
    err = capsys.readouterr().err
    assert "worker failed" in err
    assert "RuntimeError" in err
    assert PASSWORD not in err
    assert KEY not in err


def test_the_database_password_is_masked_outside_urls_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    # A driver's message may quote a piece of a password it misread ("#" ends a
    # URL's authority for a URL parser): the pieces are masked wherever they are.
    url = f"sqlite:///{tmp_path}/p.db?password=Zq8wXy3kPm7v"
    settings = Settings.from_mapping(
        {
            "USERPLANE_DATABASE_URL": f"sqlite:///{tmp_path}/p.db",
            "USERPLANE_LOG_FORMAT": "json",
            "USERPLANE_OTEL_ENDPOINT": "http://otel:Rk4#Tn8wQx2z@collector:4318",
            "USERPLANE_SOME_WEBHOOK": url,
        }
    )
    with Registry(settings):
        log = structlog.get_logger("test")
        log.warning("failed to resolve host 'Tn8wQx2z@collector'")
        log.warning("bad port 'otel:Rk4'", detail="password Zq8wXy3kPm7v rejected")
        # No space, quote or "://": only the "@" says a piece may be there.
        log.warning("unresolved", host="Tn8wQx2z@collector:4318")
    err = capsys.readouterr().err
    for secret in ("Tn8wQx2z", "Zq8wXy3kPm7v"):
        assert secret not in err


@pytest.mark.parametrize(
    ("password", "quoted"),
    [
        ("Vh7!kP2$mQ9^zR4&wT1*yB6(nC3)pL5+sD8#Lx8", "Vh7!kP2$mQ9^zR4&wT1*yB6(nC3)pL5+sD8"),
        ("a&b&c&d&e&f&g&h&i&Tail99#x", "a&b&c&d&e&f&g&h&i&Tail99"),
    ],
)
def test_every_piece_of_a_long_malformed_password_is_masked_in_log_lines(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    restore_logging: None,
    password: str,
    quoted: str,
) -> None:
    settings = Settings.from_mapping(
        {
            "USERPLANE_DATABASE_URL": f"sqlite:///{tmp_path}/p.db",
            "USERPLANE_LOG_FORMAT": "json",
            "USERPLANE_OTEL_ENDPOINT": f"http://otel:{password}@collector:4318",
        }
    )
    with Registry(settings):
        structlog.get_logger("test").warning(
            "exporter failed", error=f"Port could not be cast to integer value as '{quoted}'"
        )
    err = capsys.readouterr().err
    assert "integer value as '********'" in err, err
    assert quoted[-3:] not in err


def test_secrets_in_keys_pairs_dataclasses_and_self_containing_values_are_masked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import dataclasses

    @dataclasses.dataclass
    class Connection:
        host: str
        password: str = dataclasses.field(repr=False)

    key = "up_" + "K" * 12 + "s" * 32
    loop: list[object] = []
    loop.append(loop)
    settings = Settings.from_mapping({"USERPLANE_LOG_FORMAT": "json"})
    logging_plugin.configure(settings)
    log = structlog.get_logger("test")
    log.info("per key", per_key={key: 3})
    log.info("headers", headers=[("X-Api-Key", "s3cr3tv4lue9"), ("Accept", "*/*")])
    log.info("connection", conn=Connection("db", "hunter2hunter2"))
    log.info("loop", value=loop)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 4
    text = "\n".join(lines)
    for secret in (key, "s3cr3tv4lue9", "hunter2hunter2"):
        assert secret not in text
    assert "up_KKKKKKKKKKKK" in lines[0]  # the lookup id stays, to tell keys apart
    assert "Accept" in lines[1]
    assert "db" in lines[2]
    assert "nested too deep" in lines[3]
