"""``docs/webhooks.md`` works as written: its requests, its commands, its verifiers.

The examples are taken from the document itself: the JSON of the ``curl``
request is sent to the API, the ``userplane webhooks`` commands are run, and
both receiving-side verifiers are run against a delivery signed the way the
dispatcher signs it. Host names resolve to a public address of the test's
choosing (no DNS is needed, and the SSRF rules stay on).
"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
import shlex
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from clients import new_key
from falcon import testing

from userplane import Registry, Settings
from userplane.frontends.cli import cli
from userplane.frontends.http import create_app
from userplane.hooks import Hooks
from userplane.plugin_manager import make_plugin_manager
from userplane.plugins import webhooks
from userplane.plugins.webhooks import addresses
from userplane.plugins.webhooks.events import ALL, EVENT_TYPES
from userplane.plugins.webhooks.sender import signed_headers
from userplane.plugins.webhooks.subscriptions import new_secret

DOC = Path(__file__).resolve().parent.parent / "docs" / "webhooks.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)


@pytest.fixture(autouse=True)
def public_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every host resolves to one public address."""

    def resolve(host: str, port: int) -> list[addresses.IPAddress]:
        return [ipaddress.ip_address("93.184.216.34")]

    monkeypatch.setattr(addresses, "system_resolver", resolve)


def test_the_subscribe_request_and_its_answer_are_as_documented(database_url: str) -> None:
    curl = next(b for b in blocks("sh") if "curl" in b)
    body = json.loads(re.search(r"-d '(.*?)'", curl, re.S).group(1))  # type: ignore[union-attr]
    answer = json.loads(next(b for b in blocks("json") if '"secret"' in b))
    settings = Settings.from_mapping({"USERPLANE_DATABASE_URL": database_url})
    with Registry(settings, plugins=[webhooks]) as registry:
        registry.migrate()
        client = testing.TestClient(
            create_app(registry), headers={"Authorization": f"Bearer {new_key(registry)}"}
        )
        resp = client.simulate_post("/api/v1/webhooks", json=body)
        assert resp.status_code == 201, resp.text
        assert set(resp.json) == set(answer)
        assert resp.json["events"] == answer["events"]
        assert resp.headers["Location"] == f"/api/v1/webhooks/{resp.json['id']}"


def test_the_documented_commands_run(database_url: str, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    group = copy.copy(cli)
    group.commands = dict(cli.commands)
    pm = make_plugin_manager(extra_plugins=[webhooks])
    assert Hooks(pm).cli_commands(group) == []
    env = {"USERPLANE_DATABASE_URL": database_url, "USERPLANE_ENV_FILE": str(tmp_path / "x")}
    runner = CliRunner()
    assert runner.invoke(group, ["migrate"], obj=pm, env=env).exit_code == 0
    script = next(b for b in blocks("sh") if "userplane webhooks create" in b)
    commands = [shlex.split(line) for line in script.replace("\\\n", " ").splitlines()]
    for argv in commands:
        assert argv[:2] == ["userplane", "webhooks"]
        verb = argv[2]
        result = runner.invoke(group, argv[1:], obj=pm, env=env)
        if verb in ("create", "list", "deliveries"):
            assert result.exit_code == 0, result.output
        else:  # the example ids name nothing here: a clear error, not a crash
            assert result.exit_code != 0
            assert "no webhook" in result.output
            assert "Traceback" not in result.output
        if verb == "create":
            assert result.stdout.startswith("whsec_")


def test_the_documented_event_types_are_the_known_ones() -> None:
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("### Event types") : text.index("## The payload")]
    assert set(re.findall(r"`([a-z_]+\.[a-z_]+|\*)`", section)) == {ALL, *EVENT_TYPES}


def test_the_documented_settings_are_the_plugins_settings() -> None:
    text = DOC.read_text(encoding="utf-8")
    documented = set(re.findall(r"`(USERPLANE_WEBHOOKS_[A-Z_]+)`", text))
    assert documented == set(webhooks.SETTINGS.names())


@pytest.mark.parametrize("index", [0, 1])
def test_the_documented_verifiers_accept_a_delivery_and_refuse_a_forgery(index: int) -> None:
    namespace: dict[str, Any] = {}
    exec(blocks("python")[index], namespace)
    check = namespace["verify"] if index == 0 else namespace["signature_is_valid"]
    secret = new_secret()
    body = json.dumps({"type": "user.created", "data": {"id": str(uuid.uuid4())}}).encode()
    headers = signed_headers(secret, str(uuid.uuid4()), body, datetime.now(UTC))
    headers = {k.title(): v for k, v in headers.items()}  # as a web framework spells them

    def accepts(secret: str, body: bytes, headers: dict[str, str]) -> bool:
        try:
            result = check(secret, body, headers)
        except Exception:
            return False
        return bool(result)

    assert accepts(secret, body, headers)
    assert not accepts(secret, body + b" ", headers)
    assert not accepts(new_secret(), body, headers)
    old = signed_headers(secret, "msg", body, datetime(2020, 1, 1, tzinfo=UTC))
    assert not accepts(secret, body, old)
