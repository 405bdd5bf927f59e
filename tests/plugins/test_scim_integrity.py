"""What keeps provisioned data whole: writers that queue, lookups that find one account,
one primary address, cursors that belong to one list, and writes announced only once
they have committed.

Each case is a defect a review of the SCIM server found (a lost group member under
concurrent PATCHes, a NUL address type that made PostgreSQL fail, a primary address
silently ignored, a userName lookup answering an address given over /api/v1 too, a filter on an
unknown attribute run as members, a group cursor taken for a place among users, hooks
told of a user a rolled-back request never stored), kept here so it stays fixed. On
both backends, through the app.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from clients import client_for, new_key
from test_scim_http import (
    GROUPS,
    USERS,
    Scim,
    assert_scim_error,
    patch_op,
)

from userplane.frontends.http import create_app
from userplane.plugin import Conflict, NewUser, Registry, User, hookimpl
from userplane.testing import run_concurrently


@pytest.fixture
def scim(registry: Registry) -> Scim:
    return Scim(create_app(registry), new_key(registry, "provisioner"))


def test_concurrent_member_additions_without_if_match_all_land(scim: Scim) -> None:
    group = scim.create_group("Crowd")["id"]
    users = [scim.create_user(f"crowd{n}@example.org")["id"] for n in range(24)]

    def add(index: int) -> int:
        op = {"op": "add", "path": "members", "value": [{"value": users[index]}]}
        http = scim.new_client()
        return scim.send("PATCH", f"{GROUPS}/{group}", patch_op(op), http=http).status_code

    statuses = run_concurrently(len(users), add)
    assert statuses == [204] * len(users)  # a 412 is only ever for a stale If-Match
    assert scim.members(group) == set(users)


def test_concurrent_user_patches_without_if_match_all_land(scim: Scim) -> None:
    user = scim.create_user("busy@example.org")["id"]
    names = [f"Name {n}" for n in range(12)]

    def rename(index: int) -> int:
        op = {"op": "replace", "path": "displayName", "value": names[index]}
        http = scim.new_client()
        return scim.send("PATCH", f"{USERS}/{user}", patch_op(op), http=http).status_code

    assert run_concurrently(len(names), rename) == [200] * len(names)
    final = scim.http.simulate_get(f"{USERS}/{user}").json
    assert final["displayName"] in names
    assert final["meta"]["version"] == f'W/"{1 + len(names)}"'  # each write, one version


@pytest.mark.parametrize("kind", ["\u0000", "home\n", "x" * 65, "", 7])
def test_an_address_type_is_a_short_word(scim: Scim, kind: Any) -> None:
    body = {
        "userName": "typed@example.org",
        "emails": [{"value": "typed@example.org", "type": kind}],
    }
    assert_scim_error(scim.send("POST", USERS, body), 400, "invalidValue")
    assert scim.listing(filter='userName eq "typed@example.org"')["totalResults"] == 0


def test_two_primary_addresses_are_refused(scim: Scim) -> None:
    emails = [
        {"value": "one@example.org", "primary": True},
        {"value": "two@example.org", "primary": "True"},
    ]
    resp = scim.send("POST", USERS, {"userName": "two.primaries", "emails": emails})
    assert_scim_error(resp, 400, "invalidValue")


@pytest.mark.parametrize("with_path", [True, False])
def test_adding_a_primary_address_makes_it_the_address(scim: Scim, with_path: bool) -> None:
    user = scim.create_user("mover", "old@example.org")["id"]
    value = [{"value": "new@example.org", "primary": True}]
    op = (
        {"op": "add", "path": "emails", "value": value}
        if with_path
        else {"op": "add", "value": {"emails": value}}
    )
    resp = scim.send("PATCH", f"{USERS}/{user}", patch_op(op))
    assert resp.status_code == 200, resp.text
    assert resp.json["emails"] == [{"value": "new@example.org", "primary": True}]
    assert resp.json["userName"] == "mover"


def test_an_address_given_elsewhere_never_shadows_a_user_name(
    scim: Scim, registry: Registry
) -> None:
    """The lookup before every create finds the account the provider named, alone."""
    named = scim.create_user("dave@example.org", "d2@example.org")["id"]  # no address
    admin = client_for(registry, "admin")
    other = admin.simulate_post("/api/v1/users", json={"email": "Dave@example.org"})
    assert other.status_code == 201, other.text  # an address is the API's to give
    for text in ('userName eq "dave@example.org"', 'userName eq "DAVE@example.org"'):
        assert scim.ids(filter=text) == [named], text
    # Over SCIM, the reverse is refused: a userName that is someone's address.
    resp = scim.send(
        "POST", USERS, {"userName": "Dave@example.org", "emails": [{"value": "x@example.org"}]}
    )
    assert_scim_error(resp, 409, "uniqueness")
    with pytest.raises(Conflict):
        registry.users.create(NewUser("d2@example.org"))  # the named user's address


@pytest.mark.parametrize(
    "text", ['xmembers[value eq "{u}"]', 'notmembers[value eq "{u}"]', 'members.x eq "{u}"']
)
def test_only_members_is_members(scim: Scim, text: str) -> None:
    user = scim.create_user("m@example.org")["id"]
    scim.create_group("G", [user])
    resp = scim.http.simulate_get(GROUPS, params={"filter": text.format(u=user)})
    assert_scim_error(resp, 400, "invalidFilter")


def test_a_cursor_belongs_to_its_list(scim: Scim) -> None:
    for n in range(3):
        scim.create_user(f"c{n}@example.org")
        scim.create_group(f"C{n}")
    groups = scim.listing(GROUPS, cursor="", count="1")["nextCursor"]
    users = scim.listing(USERS, cursor="", count="1")["nextCursor"]
    for path, cursor in ((USERS, groups), (GROUPS, users)):
        resp = scim.http.simulate_get(path, params={"cursor": cursor, "count": "1"})
        assert_scim_error(resp, 400, "invalidCursor")


class Heard:
    """Records what the user hooks announce."""

    def __init__(self) -> None:
        self.created: list[str] = []
        self.updated: list[str] = []
        self.lock = threading.Lock()

    @hookimpl
    def userplane_user_created(self, user: User) -> None:
        with self.lock:
            self.created.append(user.email)

    @hookimpl
    def userplane_user_updated(self, user: User) -> None:
        with self.lock:
            self.updated.append(user.email)


def test_a_write_rolled_back_is_never_announced(registry: Registry) -> None:
    heard = Heard()
    registry.pm.register(heard)

    def failing_request() -> None:
        with registry.changes.writing(), registry.storage.transaction():
            registry.users.create(NewUser("ghost@example.org"))
            raise RuntimeError("the request fails after the write")

    with pytest.raises(RuntimeError):
        failing_request()
    assert heard.created == []
    assert registry.users.select(_everyone()).total == 0
    with registry.changes.writing(), registry.storage.transaction():
        registry.users.create(NewUser("real@example.org"))
        assert heard.created == []  # not before the block has committed
    assert heard.created == ["real@example.org"]


def test_a_refused_scim_request_changes_and_announces_nothing(
    scim: Scim, registry: Registry
) -> None:
    heard = Heard()
    registry.pm.register(heard)
    scim.create_user("taken", "t1@example.org")
    second = scim.create_user("free", "t2@example.org")
    ops = [
        {"op": "replace", "path": "displayName", "value": "Renamed"},
        {"op": "replace", "path": "userName", "value": "TAKEN"},
    ]
    resp = scim.send("PATCH", f"{USERS}/{second['id']}", patch_op(*ops))
    assert_scim_error(resp, 409, "uniqueness")
    assert heard.updated == []
    after = scim.http.simulate_get(f"{USERS}/{second['id']}").json
    assert (after["userName"], after.get("displayName")) == ("free", None)
    assert after["meta"]["version"] == second["meta"]["version"]


def _everyone() -> Any:
    from userplane.plugin import Compare, Or

    return Or((Compare("is_active", "eq", True), Compare("is_active", "eq", False)))


def test_a_page_of_groups_lists_a_bounded_number_of_members(
    scim: Scim, monkeypatch: pytest.MonkeyPatch
) -> None:
    from userplane.plugins.scim import resources

    monkeypatch.setattr(resources, "MAX_LISTED_MEMBERS", 3)  # 10,000 in earnest
    users = [scim.create_user(f"many{n}@example.org")["id"] for n in range(4)]
    scim.create_group("Two", users[:2])
    scim.create_group("Also two", users[2:])
    resp = scim.http.simulate_get(GROUPS)
    body = assert_scim_error(resp, 400, "tooMany")
    assert "excludedAttributes=members" in body["detail"]
    # What the error says to do answers: fewer groups, or no members.
    assert len(scim.listing(GROUPS, count="1")["Resources"][0]["members"]) == 2
    listed = scim.listing(GROUPS, excludedAttributes="members")["Resources"]
    assert [("members" in g) for g in listed] == [False, False]
