"""The logging plugin: one access line per request, JSON or console output, life without it."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from clients import client_for
from falcon import testing
from structlog.testing import capture_logs

from userplane import Registry, Settings
from userplane.plugins.logging import configure

USER_ROUTE = "/api/v1/users/{user_id:uuid}"
MISSING_ID = "12345678-1234-5678-1234-567812345678"


def _remove_userplane_handlers() -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_userplane", False)]:
        root.removeHandler(handler)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """structlog and the root logger are process-wide: start clean and put them back."""
    root = logging.getLogger()
    root_level = root.level
    yoyo_level = logging.getLogger("yoyo").level
    structlog.reset_defaults()
    _remove_userplane_handlers()
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    _remove_userplane_handlers()
    root.setLevel(root_level)
    logging.getLogger("yoyo").setLevel(yoyo_level)


def capture_access() -> Any:
    """Capture structlog events with the request context and the logger's name merged in."""
    return capture_logs(
        processors=[structlog.contextvars.merge_contextvars, structlog.stdlib.add_logger_name]
    )


def request_events(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e.get("event") == "request"]


# -- the access line --------------------------------------------------------------------------


def test_one_request_gives_exactly_one_access_event(client: testing.TestClient) -> None:
    with capture_access() as logs:
        resp = client.simulate_get(f"/api/v1/users/{MISSING_ID}", headers={"X-Request-ID": "r-1"})
    assert resp.status_code == 404
    assert resp.headers["X-Request-ID"] == "r-1"
    events = request_events(logs)
    assert len(events) == 1
    event = events[0]
    assert event["logger"] == "userplane.access"
    assert event["log_level"] == "info"
    assert event["method"] == "GET"
    assert event["route"] == USER_ROUTE
    assert event["path"] == f"/api/v1/users/{MISSING_ID}"
    assert event["status"] == 404
    assert isinstance(event["duration_ms"], float)
    assert event["duration_ms"] >= 0
    assert event["request_id"] == resp.headers["X-Request-ID"]


def test_a_generated_request_id_is_the_one_logged(client: testing.TestClient) -> None:
    with capture_access() as logs:
        resp = client.simulate_post("/api/v1/users", json={"email": "ann@example.org"})
    assert resp.status_code == 201
    [event] = request_events(logs)
    assert event["request_id"] == resp.headers["X-Request-ID"]
    assert event["request_id"]
    assert event["method"] == "POST"
    assert event["route"] == "/api/v1/users"
    assert event["status"] == 201


def test_a_malformed_request_id_is_replaced_and_the_replacement_logged(
    client: testing.TestClient,
) -> None:
    with capture_access() as logs:
        resp = client.simulate_get("/api/v1/users", headers={"X-Request-ID": "bad id\t!"})
    assert resp.status_code == 200
    assert resp.headers["X-Request-ID"] != "bad id\t!"
    [event] = request_events(logs)
    assert event["request_id"] == resp.headers["X-Request-ID"]


def test_an_unrouted_request_is_logged_without_a_route(client: testing.TestClient) -> None:
    with capture_access() as logs:
        resp = client.simulate_get("/no/such/thing")
    assert resp.status_code == 404
    [event] = request_events(logs)
    assert event["route"] is None
    assert event["path"] == "/no/such/thing"
    assert event["status"] == 404


def test_request_context_does_not_leak_between_requests(client: testing.TestClient) -> None:
    with capture_access() as logs:
        first = client.simulate_get("/api/v1/users", headers={"X-Request-ID": "one"})
        second = client.simulate_delete(f"/api/v1/users/{MISSING_ID}")
    events = request_events(logs)
    assert [e["request_id"] for e in events] == [
        first.headers["X-Request-ID"],
        second.headers["X-Request-ID"],
    ]
    assert [e["method"] for e in events] == ["GET", "DELETE"]
    assert structlog.contextvars.get_contextvars() == {}


# -- rendering ------------------------------------------------------------------------------------


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_json_format_renders_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    configure(Settings(log_format="json"))
    logging.getLogger("gunicorn.error").info("worker booted")
    structlog.get_logger("userplane.test").warning("something odd", answer=42)
    lines = _lines(capsys.readouterr().err)
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["event"] == "worker booted"
    assert first["logger"] == "gunicorn.error"
    assert first["level"] == "info"
    assert "timestamp" in first
    assert second["event"] == "something odd"
    assert second["answer"] == 42
    assert second["logger"] == "userplane.test"
    assert second["level"] == "warning"


def test_json_lines_hold_what_orjson_refuses(capsys: pytest.CaptureFixture[str]) -> None:
    # A lone surrogate (from a hostile path, say) or a non-string key still logs one line.
    configure(Settings(log_format="json"))
    structlog.get_logger("userplane.test").info("odd", path="/x\udc80", ids={1: "a"})
    [line] = _lines(capsys.readouterr().err)
    event = json.loads(line)
    assert event["path"] == "/x\udc80"
    assert event["ids"] == {"1": "a"}


def test_an_exception_in_a_json_line_is_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    configure(Settings(log_format="json"))
    try:
        raise RuntimeError("cannot reach postgresql://app:hunter22@db/users")
    except RuntimeError:
        structlog.get_logger("userplane.test").exception("failed")
    [line] = _lines(capsys.readouterr().err)
    event = json.loads(line)
    assert "hunter22" not in line
    assert event["exception"][0]["exc_type"] == "RuntimeError"
    assert "db/users" in event["exception"][0]["exc_value"]


def test_json_lines_go_whole_to_the_stderr_descriptor(capfd: pytest.CaptureFixture[str]) -> None:
    # A real descriptor: each line is one write(2), long ones completed, none interleaved.
    configure(Settings(log_format="json"))
    log = structlog.get_logger("userplane.test")
    log.info("short", n=1)
    log.info("long", text="x" * 200_000)
    logging.getLogger("gunicorn.error").info("from stdlib")
    lines = _lines(capfd.readouterr().err)
    events = [json.loads(line) for line in lines]
    assert [e["event"] for e in events] == ["short", "long", "from stdlib"]
    assert len(events[1]["text"]) == 200_000
    assert events[0]["logger"] == "userplane.test"


def test_console_format_renders_text(capsys: pytest.CaptureFixture[str]) -> None:
    configure(Settings(log_format="console"))
    logging.getLogger("gunicorn.error").info("worker booted")
    lines = _lines(capsys.readouterr().err)
    assert len(lines) == 1
    assert "worker booted" in lines[0]
    with pytest.raises(json.JSONDecodeError):
        json.loads(lines[0])


def test_a_console_traceback_is_plain_without_locals_and_masked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Frame locals hold what a function was handling: the console renderer's rich
    # tracebacks would print them, after redaction had run.
    configure(Settings(log_format="console"))

    def connect(password: str) -> None:
        dsn = f"postgresql://app:{password}@db/users"
        raise ConnectionError(f"cannot reach {dsn}")

    password = "hunter2-" + "s3cret"  # not on the line the traceback quotes
    try:
        connect(password)
    except ConnectionError:
        structlog.get_logger("userplane.test").exception("failed")
        logging.getLogger("gunicorn.error").error("worker failed", exc_info=True)
    err = capsys.readouterr().err
    assert err.count("Traceback (most recent call last)") == 2
    assert "ConnectionError: cannot reach postgresql://app:********@db/users" in err
    assert "hunter2" not in err


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_auto_format_is_json_when_not_on_a_terminal(
    capsys: pytest.CaptureFixture[str], env: str
) -> None:
    configure(Settings(env=env, log_format="auto"))  # type: ignore[arg-type]
    logging.getLogger("gunicorn.error").info("hello")
    [line] = _lines(capsys.readouterr().err)
    assert json.loads(line)["event"] == "hello"


def test_the_level_filters(capsys: pytest.CaptureFixture[str]) -> None:
    configure(Settings(log_format="json", log_level="warning"))
    logging.getLogger("gunicorn.error").info("quiet")
    structlog.get_logger("userplane.test").info("quiet too")
    logging.getLogger("gunicorn.error").warning("loud")
    lines = _lines(capsys.readouterr().err)
    assert [json.loads(line)["event"] for line in lines] == ["loud"]


def test_configuring_twice_keeps_one_handler() -> None:
    configure(Settings(log_format="json"))
    configure(Settings(log_format="console"))
    marked = [h for h in logging.getLogger().handlers if getattr(h, "_userplane", False)]
    assert len(marked) == 1


# -- without the plugin ---------------------------------------------------------------------------


def test_with_the_plugin_disabled_requests_are_still_served(tmp_path: Path) -> None:
    settings = Settings.from_mapping(
        {
            "USERPLANE_DATABASE_URL": f"sqlite:///{tmp_path / 'u.db'}",
            "USERPLANE_DISABLED_PLUGINS": "logging",
        }
    )
    with Registry(settings) as reg:
        reg.migrate()
        assert reg.pm.is_blocked("logging")
        client = client_for(reg)
        with capture_logs() as logs:
            created = client.simulate_post("/api/v1/users", json={"email": "ann@example.org"})
            listed = client.simulate_get("/api/v1/users")
            ready = client.simulate_get("/health/ready")
    assert created.status_code == 201
    assert created.headers["X-Request-ID"]
    assert listed.status_code == 200
    assert [u["email"] for u in listed.json["items"]] == ["ann@example.org"]
    assert ready.status_code == 200
    assert request_events(logs) == []
    assert not [h for h in logging.getLogger().handlers if getattr(h, "_userplane", False)]


def test_a_long_principal_id_is_bounded_in_log_lines() -> None:
    from userplane.auth import Principal, acting_as
    from userplane.plugins.logging import MAX_PRINCIPAL, add_principal, principal_for_log

    short = "key:2b1c5d0e-0000-4000-8000-000000000000"
    assert principal_for_log(short) == short
    first = "jwt:" + "a" * 10_000
    second = "jwt:" + "a" * 9_999 + "b"
    bounded = principal_for_log(first)
    assert len(bounded) <= MAX_PRINCIPAL + 40
    assert bounded.startswith("jwt:aaa")
    assert "10004 chars" in bounded
    assert principal_for_log(second) != bounded  # the digest keeps them apart
    with acting_as(Principal(id=first, kind="jwt")):
        assert add_principal(None, "info", {})["principal"] == bounded
