"""Secrets never reach a log line: not from settings, headers, messages or stdlib loggers."""

from __future__ import annotations

import json
import logging

import pytest
import structlog
from clients import client_for

from userplane import Registry, Settings
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
