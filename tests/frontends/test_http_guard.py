"""Fail-closed routing: sinks and a resource's own OPTIONS responder are guarded like routes.

A plugin's ``userplane_http_routes`` may add sinks (``app.add_sink``) and
resources that answer OPTIONS themselves; neither may become a public door
by accident. Through falcon's TestClient against a real, migrated database.
"""

from __future__ import annotations

from typing import Any, ClassVar

import falcon
import pytest
from clients import new_key
from falcon import testing

from userplane import Registry, hookimpl
from userplane.errors import ConfigurationError
from userplane.frontends.http import PUBLIC, create_app


class Sink:
    """A sink answering every path under its prefix, as a plugin might proxy."""

    actions: ClassVar[dict[str, str]] = {"GET": "users:read", "POST": "users:write"}

    def __call__(self, req: falcon.Request, resp: falcon.Response, **params: Any) -> None:
        resp.media = {"sink": req.path}


class Options:
    """A resource that answers OPTIONS itself and declares it protected."""

    actions: ClassVar[dict[str, str]] = {"GET": "users:read", "OPTIONS": "users:write"}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"ok": True}

    def on_options(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"secret": "capabilities"}


class Routes:
    __name__ = "guard_routes"

    @hookimpl
    def userplane_http_routes(self, app: Any) -> None:
        app.add_sink(Sink(), "/plugin/sink")
        app.add_route("/plugin/options", Options())


@pytest.fixture
def guarded(settings: Any) -> Any:
    with Registry(settings, plugins=[Routes()]) as registry:
        registry.migrate()
        yield registry


def test_a_sink_needs_credentials_and_the_action(guarded: Registry) -> None:
    client = testing.TestClient(create_app(guarded))
    anonymous = client.simulate_get("/plugin/sink/anything")
    assert anonymous.status_code == 401
    assert anonymous.headers["Content-Type"] == "application/problem+json"
    viewer = {"Authorization": f"Bearer {new_key(guarded, 'viewer')}"}
    assert client.simulate_get("/plugin/sink/x", headers=viewer).json == {"sink": "/plugin/sink/x"}
    assert client.simulate_post("/plugin/sink/x", headers=viewer).status_code == 403
    refused = client.simulate_delete("/plugin/sink/x", headers=viewer)
    assert refused.status_code == 405  # a method the sink does not declare


def test_a_sink_without_actions_is_refused_when_added(guarded: Registry) -> None:
    app = create_app(guarded)

    def bare(req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {}

    with pytest.raises(ConfigurationError, match="declares no actions"):
        app.add_sink(bare, "/bare")


def test_a_declared_options_responder_is_protected(guarded: Registry) -> None:
    client = testing.TestClient(create_app(guarded))
    assert client.simulate_options("/plugin/options").status_code == 401
    viewer = {"Authorization": f"Bearer {new_key(guarded, 'viewer')}"}
    assert client.simulate_options("/plugin/options", headers=viewer).status_code == 403
    admin = {"Authorization": f"Bearer {new_key(guarded, 'admin')}"}
    answered = client.simulate_options("/plugin/options", headers=admin)
    assert answered.json == {"secret": "capabilities"}


def test_an_undeclared_options_responder_is_refused_when_added(guarded: Registry) -> None:
    class Undeclared:
        actions: ClassVar[dict[str, str]] = {"GET": PUBLIC}

        def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
            resp.media = {}

        def on_options(self, req: falcon.Request, resp: falcon.Response) -> None:
            resp.media = {}

    with pytest.raises(ConfigurationError, match="OPTIONS"):
        create_app(guarded).add_route("/undeclared", Undeclared())


def test_cors_preflight_stays_public(guarded: Registry) -> None:
    """Falcon's own OPTIONS answer (no responder of ours) needs no credentials."""
    client = testing.TestClient(create_app(guarded))
    preflight = client.simulate_options(
        "/api/v1/users",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "GET"},
    )
    assert preflight.status_code == 200
