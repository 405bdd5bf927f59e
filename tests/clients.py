"""Falcon test clients that authenticate, for tests that build their own registry."""

from __future__ import annotations

from typing import Any

from falcon import testing

from userplane import Registry
from userplane.frontends.http import create_app
from userplane.plugins import api_keys


def new_key(registry: Registry, role: str = "admin") -> str:
    """A fresh API key with ``role`` in ``registry``'s (migrated) storage."""
    _, key = api_keys.service(registry).create(f"tests {role}", role)
    return key


def client_for(registry: Registry, role: str = "admin", app: Any = None) -> testing.TestClient:
    """A client of ``app`` (default: a new app over ``registry``) sending a ``role`` key."""
    key = new_key(registry, role)
    return testing.TestClient(
        app if app is not None else create_app(registry),
        headers={"Authorization": f"Bearer {key}"},
    )
