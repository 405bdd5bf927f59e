"""Event isolation (``Hooks._notify``): a listener that raises changes no answer and no write.

For every user-event hook, on SQLite and PostgreSQL: the change is answered as
if nothing had failed (through HTTP; purge, which has no route, through the
service), the listeners after the failing one still hear it, and the failure
is logged on ``userplane.events`` with the plugin's name. And the one hook that
may refuse: a ``userplane_operation`` wrapper raising before its ``yield``
refuses the operation, and nothing is written.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from falcon import testing

from userplane import Registry, Settings
from userplane.frontends.http.testing import PrincipalTokens
from userplane.hookspecs import EVENT_HOOKS
from userplane.plugin import (
    NewUser,
    NotFound,
    Principal,
    RateLimited,
    acting_as,
    hookimpl,
)

USERS = "/api/v1/users"
#: Heard events: (listener, hook, what it was about), in the order they were called.
Heard = list[tuple[str, str, Any]]


class Listener:
    """Hears every user event; the ``failing`` one raises after noting it."""

    def __init__(self, name: str, heard: Heard, *, failing: bool = False) -> None:
        # A plugin passed as ``plugins=`` is named by its ``__name__`` (else by its id).
        self.__name__ = name
        self.heard = heard
        self.failing = failing

    def _hear(self, hook: str, subject: Any) -> None:
        self.heard.append((self.__name__, hook, subject))
        if self.failing:
            raise RuntimeError(f"{self.__name__} fails on {hook}")

    @hookimpl
    def userplane_user_created(self, user: Any) -> None:
        self._hear("userplane_user_created", str(user.id))

    @hookimpl
    def userplane_user_updated(self, user: Any, changed: frozenset[str]) -> None:
        self._hear("userplane_user_updated", str(user.id))

    @hookimpl
    def userplane_user_deleted(self, user: Any) -> None:
        self._hear("userplane_user_deleted", str(user.id))

    @hookimpl
    def userplane_user_restored(self, user: Any) -> None:
        self._hear("userplane_user_restored", str(user.id))

    @hookimpl
    def userplane_users_purged(self, count: int) -> None:
        self._hear("userplane_users_purged", count)

    @hookimpl
    def userplane_user_purged(self, user_id: Any) -> None:
        self._hear("userplane_user_purged", str(user_id))

    @hookimpl
    def userplane_record_change(self, change: Any) -> None:
        """Records nothing: implemented so that every write is recorded and announced."""

    @hookimpl
    def userplane_changes_committed(self, changes: Any) -> None:
        if changes[0].target_type == "user":  # not the API keys the client is given
            self._hear("userplane_changes_committed", changes[0].target_id)


class Gatekeeper:
    """A ``userplane_operation`` wrapper refusing the operations in ``refused`` (a rate limit)."""

    __name__ = "gatekeeper"

    def __init__(self) -> None:
        self.refused: set[str] = set()

    @hookimpl(wrapper=True)
    def userplane_operation(self, operation: str) -> Any:
        if operation in self.refused:
            raise RateLimited(f"{operation} is refused for now", retry_after=7)
        return (yield)


@pytest.fixture
def heard() -> Heard:
    return []


@pytest.fixture
def gatekeeper() -> Gatekeeper:
    return Gatekeeper()


@pytest.fixture
def registry(settings: Settings, heard: Heard, gatekeeper: Gatekeeper) -> Iterator[Registry]:
    """The conftest's registry (SQLite, PostgreSQL) with the listeners and the gatekeeper.

    pluggy calls the last registered first: "early", then "failing", then "late".
    """
    plugins = [
        Listener("late", heard),
        Listener("failing", heard, failing=True),
        Listener("early", heard),
        gatekeeper,
        PrincipalTokens(),
    ]
    with Registry(settings, plugins=plugins) as reg:
        reg.migrate()
        yield reg


def failures(caplog: pytest.LogCaptureFixture, hook: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "userplane.events" and getattr(r, "hook", None) == hook
    ]


def create(client: testing.TestClient, email: str = "ann@example.org") -> dict[str, Any]:
    created = client.simulate_post(USERS, json={"email": email, "full_name": "Ann"})
    assert created.status_code == 201, created.text
    body: dict[str, Any] = created.json
    return body


# -- every event hook: the answer stands, the others hear, the failure is logged -----------------


def created(client: testing.TestClient, registry: Registry) -> tuple[str, str]:
    answer = client.simulate_post(USERS, json={"email": "ann@example.org"})
    assert answer.status_code == 201, answer.text
    assert answer.headers["Location"] == f"{USERS}/{answer.json['id']}"
    return "userplane_user_created", answer.json["id"]


def updated(client: testing.TestClient, registry: Registry) -> tuple[str, str]:
    user = create(client)
    answer = client.simulate_patch(f"{USERS}/{user['id']}", json={"full_name": "Ann E."})
    assert answer.status_code == 200, answer.text
    assert answer.json["full_name"] == "Ann E."
    return "userplane_user_updated", user["id"]


def deleted(client: testing.TestClient, registry: Registry) -> tuple[str, str]:
    user = create(client)
    answer = client.simulate_delete(f"{USERS}/{user['id']}")
    assert answer.status_code == 204, answer.text
    return "userplane_user_deleted", user["id"]


def restored(client: testing.TestClient, registry: Registry) -> tuple[str, str]:
    user = create(client)
    assert client.simulate_delete(f"{USERS}/{user['id']}").status_code == 204
    answer = client.simulate_post(f"{USERS}/{user['id']}/restore")
    assert answer.status_code == 200, answer.text
    assert answer.json["deleted_at"] is None
    return "userplane_user_restored", user["id"]


def purged(client: testing.TestClient, registry: Registry) -> tuple[str, int]:
    # No HTTP route purges (the CLI does, through the service): the service it is.
    user = create(client)
    assert client.simulate_delete(f"{USERS}/{user['id']}").status_code == 204
    with acting_as(Principal(id="local:ops", kind="local", roles=frozenset({"admin"}))):
        count = registry.users.purge(timedelta(0))
    assert count == 1
    return "userplane_users_purged", 1


def purged_one(client: testing.TestClient, registry: Registry) -> tuple[str, str]:
    # `userplane users shred`, through the service.
    user = create(client)
    assert client.simulate_delete(f"{USERS}/{user['id']}").status_code == 204
    with acting_as(Principal(id="local:ops", kind="local", roles=frozenset({"admin"}))):
        registry.users.purge_user(uuid.UUID(user["id"]))
    return "userplane_user_purged", user["id"]


def committed(client: testing.TestClient, registry: Registry) -> tuple[str, str]:
    answer = client.simulate_post(USERS, json={"email": "ann@example.org"})
    assert answer.status_code == 201, answer.text
    return "userplane_changes_committed", answer.json["id"]


SCENARIOS: dict[str, Callable[[testing.TestClient, Registry], tuple[str, Any]]] = {
    "userplane_user_created": created,
    "userplane_user_updated": updated,
    "userplane_user_deleted": deleted,
    "userplane_user_restored": restored,
    "userplane_users_purged": purged,
    "userplane_user_purged": purged_one,
    "userplane_changes_committed": committed,
}


def test_every_event_hook_is_covered() -> None:
    assert set(SCENARIOS) == EVENT_HOOKS


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_a_failing_listener_changes_no_answer(
    scenario: str,
    registry: Registry,
    client: testing.TestClient,
    heard: Heard,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="userplane.events"):
        hook, subject = SCENARIOS[scenario](client, registry)
    assert hook == scenario
    # Every listener heard it once, in plugin order: the one after the failure too.
    calls = [(name, about) for name, h, about in heard if h == hook]
    assert calls == [("early", subject), ("failing", subject), ("late", subject)]
    # The failure is logged, once, naming the plugin and the hook, with its traceback.
    (record,) = failures(caplog, hook)
    assert record.levelno == logging.ERROR
    assert "'failing'" in record.getMessage()
    assert record.plugin == "failing"  # type: ignore[attr-defined]
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)
    # And the change stands.
    if hook not in ("userplane_users_purged", "userplane_user_purged"):
        expected = 404 if hook == "userplane_user_deleted" else 200
        assert client.simulate_get(f"{USERS}/{subject}").status_code == expected


def test_a_replay_answers_the_original_201_and_tells_no_one_again(
    registry: Registry, client: testing.TestClient, heard: Heard
) -> None:
    key = {"Idempotency-Key": str(uuid.uuid4())}
    body = {"email": "ann@example.org", "full_name": "Ann"}
    first = client.simulate_post(USERS, json=body, headers=key)
    again = client.simulate_post(USERS, json=body, headers=key)
    assert first.status_code == again.status_code == 201
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json == first.json
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["ETag"] == first.headers["ETag"]
    assert [u["id"] for u in client.simulate_get(USERS).json["items"]] == [first.json["id"]]
    # The event was sent for the write, not for the replay.
    assert [name for name, hook, _ in heard if hook == "userplane_user_created"] == [
        "early",
        "failing",
        "late",
    ]


# -- an operation wrapper that raises before its yield refuses, and nothing is written ----------


def test_a_refused_create_writes_nothing(
    registry: Registry, client: testing.TestClient, gatekeeper: Gatekeeper, heard: Heard
) -> None:
    gatekeeper.refused.add("users.create")
    key = {"Idempotency-Key": str(uuid.uuid4())}
    body = {"email": "ann@example.org"}
    refused = client.simulate_post(USERS, json=body, headers=key)
    assert refused.status_code == 429, refused.text
    assert refused.headers["Retry-After"] == "7"
    with pytest.raises(NotFound):
        registry.users.get_by_email("ann@example.org")
    with pytest.raises(RateLimited):
        registry.users.create(NewUser(email="bob@example.org"))
    gatekeeper.refused.clear()
    with pytest.raises(NotFound):
        registry.users.get_by_email("bob@example.org")
    assert heard == []
    # Nothing was kept for the key either: the retry runs (not a replay of the 429).
    retried = client.simulate_post(USERS, json=body, headers=key)
    assert retried.status_code == 201, retried.text
    assert "Idempotent-Replayed" not in retried.headers


@pytest.mark.parametrize(
    ("operation", "method", "suffix"),
    [
        ("users.update", "PATCH", ""),
        ("users.delete", "DELETE", ""),
        ("users.restore", "POST", "/restore"),
    ],
)
def test_a_refused_change_changes_nothing(
    operation: str,
    method: str,
    suffix: str,
    registry: Registry,
    client: testing.TestClient,
    gatekeeper: Gatekeeper,
    heard: Heard,
) -> None:
    user = create(client)
    if operation == "users.restore":
        assert client.simulate_delete(f"{USERS}/{user['id']}").status_code == 204
    before = registry.users.get(uuid.UUID(user["id"]), include_deleted=True)
    heard.clear()
    gatekeeper.refused.add(operation)
    body = {"full_name": "Changed"} if method == "PATCH" else None
    answer = client.simulate_request(method, f"{USERS}/{user['id']}{suffix}", json=body)
    assert answer.status_code == 429, answer.text
    assert registry.users.get(uuid.UUID(user["id"]), include_deleted=True) == before
    assert heard == []
