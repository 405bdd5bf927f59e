"""Real identity providers' SCIM requests, replayed against ``/scim/v2`` in-process.

Every sample in ``tests/scim_requests/entra/*.json`` and
``tests/scim_requests/okta/*.json`` (method, path, query, body, and what a
conforming answer is) is sent through the Falcon app with a ``provisioner``
key, on SQLite and on PostgreSQL. The samples name users and groups of the
providers' documentation: each handler below first builds the world the
request expects (users and groups that exist here), substitutes the sample's
ids and names with the real ones, sends it, and then checks both the status
and the effect: what the user or group is afterwards, read back over SCIM and
from the registry itself (a 2xx that changed nothing, or changed the wrong
thing, fails).

Where a sample's own id is not a UUID and that is its point (an unknown user,
a member that is none), it is sent as it is. Samples about attributes we do
not keep (``name``, ``nickName``, the enterprise extension's ``manager`` and
``employeeNumber``) must be accepted and ignored (RFC 7644 §3.3): 2xx, and
nothing we keep changed. Every error is checked to be a SCIM ``Error``
(RFC 7644 §3.12). A sample file without a handler fails, so a new sample
cannot go unreplayed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from clients import client_for
from falcon import testing

from userplane.plugin import NewGroup, NewUser, NotFound, Registry

SAMPLES = Path(__file__).parent.parent / "scim_requests"
FILES = sorted(
    f"{p.parent.name}/{p.name}" for d in ("entra", "okta") for p in (SAMPLES / d).glob("*.json")
)
PREFIX = "/scim/v2"
SCIM_JSON = "application/scim+json"
USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
LIST_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
ERROR_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:Error"

# -- the ids and names the samples use (from the providers' docs) --------------------------------

# Entra
E_USER_GET = "5d48a0a8e9f04aa38008"
E_USER = "5171a35d82074e068ce2"
E_USER_EMAILS = "6764549bef60420686bc"
E_MANAGED = "a0a0a0a0-bbbb-cccc-dddd-e1e1e1e1e1e1"
E_MANAGER = "00aa00aa-bb11-cc22-dd33-44ee44ee44ee"
E_GROUP_READ = "40734ae655284ad3abcc"
E_GROUP_RENAME = "fa2ce26709934589afc5"
E_GROUP_MEMBERS = "a99962b9f99d4c4fac67"
E_GROUP_DELETE = "cdb1ce18f65944079d37"
E_MEMBER = "f648f8d5ea4e4cd38e9c"
E_MEMBER_UUID = "7f4bc1a3-285e-48ae-8202-5accb43efb0e"
E_GROUP_REFCODE = "{groupid}"
# Okta
O_USER = "23a35c27-23d3-4c03-b4c5-6443c09e7173"
O_OTHER = "89bb1940-b905-4575-9e7f-6f887cfb368e"
O_GROUP = "abf4dd94-a4c0-4f67-89c9-76b03340cb9b"
# Okta's docs write their user at okta.local: the core refuses addresses at a
# special-use domain (.local is mDNS), so every sample is sent with a domain
# an address may have. What the samples test does not depend on the domain.
OKTA_ADDRESS = "test.user@okta.example.org"
EVERYWHERE = {"test.user@okta.local": OKTA_ADDRESS}


# -- sending samples -----------------------------------------------------------------------------


def load(name: str) -> dict[str, Any]:
    sample: dict[str, Any] = json.loads((SAMPLES / name).read_text())
    return sample


def substitute(value: Any, mapping: dict[str, str]) -> Any:
    """``value`` with every placeholder of ``mapping`` replaced, in every string it holds."""
    if isinstance(value, str):
        for old, new in mapping.items():
            value = value.replace(old, new)
        return value
    if isinstance(value, list):
        return [substitute(v, mapping) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, mapping) for k, v in value.items()}
    return value


def expected_statuses(sample: dict[str, Any]) -> set[int]:
    """The statuses a sample accepts.

    Where a PATCH sample says 204, 200 with the resource is accepted too:
    RFC 7644 §3.5.2 lets the server answer either (our Users PATCH answers 200
    with the user, our Groups PATCH 204).
    """
    status = sample["expect"]["status"]
    statuses = set(status) if isinstance(status, list) else {status}
    if sample["method"] == "PATCH" and 204 in statuses:
        statuses.add(200)
    return statuses


class World:
    """The client, the registry, and what a handler builds before replaying a sample."""

    def __init__(self, registry: Registry, client: testing.TestClient) -> None:
        self.registry = registry
        self.client = client

    # requests

    def request(
        self,
        method: str,
        path: str,
        query: dict[str, str] | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> testing.Result:
        sent = {"Content-Type": SCIM_JSON, **(headers or {})}
        return self.client.simulate_request(
            method,
            PREFIX + path,
            params=query or None,
            headers=sent,
            body=None if body is None else json.dumps(body),
        )

    def replay(
        self, sample: dict[str, Any], mapping: dict[str, str] | None = None
    ) -> testing.Result:
        """Send ``sample`` with ``mapping`` applied; its status must be one it expects."""
        mapping = {**EVERYWHERE, **(mapping or {})}
        result = self.request(
            sample["method"],
            substitute(sample["path"], mapping),
            substitute(sample["query"], mapping),
            substitute(sample["body"], mapping),
            substitute(sample["headers"], mapping),
        )
        wanted = expected_statuses(sample)
        assert result.status_code in wanted, (result.status_code, wanted, result.text)
        if result.status_code == 204:
            assert not result.content
        elif result.status_code < 300:
            assert result.headers["content-type"].startswith(SCIM_JSON), result.headers
        return result

    # the world

    def user(self, email: str, name: str | None = None, active: bool = True) -> uuid.UUID:
        """A user made by the core (not by a SCIM client)."""
        return self.registry.users.create(NewUser(email, name, is_active=active)).id

    def scim_user(self, body: dict[str, Any]) -> uuid.UUID:
        """A user made over SCIM (a userName other than the address needs it)."""
        result = self.request("POST", "/Users", body={"schemas": [USER_SCHEMA], **body})
        assert result.status_code == 201, result.text
        return uuid.UUID(result.json["id"])

    def group(self, name: str, members: Sequence[uuid.UUID] = ()) -> uuid.UUID:
        group = self.registry.groups.create(NewGroup(name))
        if members:
            self.registry.groups.add_members(group.id, members)
        return group.id

    # reading back

    def get_user(self, user_id: uuid.UUID | str) -> dict[str, Any]:
        result = self.request("GET", f"/Users/{user_id}")
        assert result.status_code == 200, result.text
        body: dict[str, Any] = result.json
        return body

    def kept(self, user_id: uuid.UUID | str) -> dict[str, Any]:
        """What we keep of a user, as SCIM shows it (``meta`` changes with any write)."""
        return {k: v for k, v in self.get_user(user_id).items() if k != "meta"}

    def get_group(self, group_id: uuid.UUID | str) -> dict[str, Any]:
        result = self.request("GET", f"/Groups/{group_id}")
        assert result.status_code == 200, result.text
        body: dict[str, Any] = result.json
        return body

    def members(self, group_id: uuid.UUID) -> set[uuid.UUID]:
        """The group's members as the registry holds them, and SCIM must show the same."""
        held = {u.id for u in self.registry.groups.members(group_id, limit=500).items}
        shown = {uuid.UUID(m["value"]) for m in self.get_group(group_id).get("members", [])}
        assert shown == held
        return held

    def find_users(self, filter_text: str) -> list[str]:
        """The ids ``filter`` selects (all of them: one page holds every test's users)."""
        result = self.request("GET", "/Users", {"filter": filter_text})
        assert result.status_code == 200, result.text
        listed = assert_list(result.json)
        return [r["id"] for r in listed["Resources"]]


def assert_list(body: dict[str, Any]) -> dict[str, Any]:
    """A ``ListResponse`` whose numbers are integers and whose page is consistent."""
    assert body["schemas"] == [LIST_SCHEMA]
    for key in ("totalResults", "startIndex", "itemsPerPage"):
        # Okta: these are integers, never strings.
        assert type(body[key]) is int, (key, body[key])
    assert body["itemsPerPage"] == len(body.get("Resources", []))
    assert body["totalResults"] >= body["itemsPerPage"]
    return body


def assert_scim_error(result: testing.Result, status: int) -> dict[str, Any]:
    """A SCIM ``Error`` (RFC 7644 §3.12): its media type, schema, and status as a string."""
    assert result.status_code == status, result.text
    assert result.headers["content-type"].startswith(SCIM_JSON), result.headers
    body: dict[str, Any] = result.json
    assert body["schemas"] == [ERROR_SCHEMA]
    assert body["status"] == str(status)
    assert isinstance(body.get("detail"), str)
    assert body["detail"]
    return body


def email_of(resource: dict[str, Any]) -> str:
    emails = resource["emails"]
    assert len(emails) == 1  # a user has one address
    value: str = emails[0]["value"]
    return value


def same_address(a: str, b: str) -> bool:
    """Addresses are equal when they are, the domain's letter case aside."""
    local_a, _, domain_a = a.rpartition("@")
    local_b, _, domain_b = b.rpartition("@")
    return local_a == local_b and domain_a.lower() == domain_b.lower()


# -- handlers: one per sample file ---------------------------------------------------------------

Handler = Callable[[World, dict[str, Any]], None]
HANDLERS: dict[str, Handler] = {}


def handles(*names: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        for name in names:
            assert name not in HANDLERS, name
            HANDLERS[name] = handler
        return handler

    return register


def _some_users(world: World) -> list[uuid.UUID]:
    """Users the filters must not select: a filter that matches nothing finds none of them."""
    return [
        world.user("ann@example.org", "Ann Lee"),
        world.user("bob@example.com", "Bob Stone", active=False),
        world.scim_user({"userName": "cid", "emails": [{"value": "cid@example.org"}]}),
    ]


@handles(
    "entra/01-test-connection-filter-random-guid.json",
    "entra/03-get-user-by-username-zero-results.json",
)
def _filter_finds_nobody(world: World, sample: dict[str, Any]) -> None:
    # Entra's Test Connection and its lookup before a create: a userName no one
    # has finds zero users, never the unfiltered list (there are users here).
    _some_users(world)
    body = assert_list(world.replay(sample).json)
    assert body["totalResults"] == 0
    assert body["Resources"] == []
    assert body["startIndex"] == 1
    assert body["itemsPerPage"] == 0  # the doc's 20 is its page size, not what it returned


@handles("entra/02-get-user-by-username.json")
def _filter_by_user_name(world: World, sample: dict[str, Any]) -> None:
    # The userName is the sample's own (not an address): created as Entra creates it.
    _some_users(world)
    wanted = world.scim_user(
        {
            "userName": "Test_User_00aa00aa-bb11-cc22-dd33-44ee44ee44ee",
            "emails": [{"value": "test.user@testuser.com", "type": "work", "primary": True}],
        }
    )
    world.scim_user(  # the same name with more to it is another user
        {
            "userName": "Test_User_00aa00aa-bb11-cc22-dd33-44ee44ee44ee-2",
            "emails": [{"value": "test.user2@testuser.com"}],
        }
    )
    body = assert_list(world.replay(sample).json)
    assert body["totalResults"] == 1
    assert [r["id"] for r in body["Resources"]] == [str(wanted)]
    assert body["Resources"][0]["userName"] == "Test_User_00aa00aa-bb11-cc22-dd33-44ee44ee44ee"


@handles("entra/04-get-user-by-externalid.json")
def _filter_by_external_id(world: World, sample: dict[str, Any]) -> None:
    _some_users(world)
    wanted = world.scim_user(
        {"userName": "jyoung@testuser.com", "externalId": "jyoung", "emails": []}
    )
    # Another provider's "jyoung" is not this client's externalId: not found by it.
    world.registry.users.create(
        NewUser("other.jyoung@example.org", external_source="okta", external_id="jyoung")
    )
    body = assert_list(world.replay(sample).json)
    assert [r["id"] for r in body["Resources"]] == [str(wanted)]
    assert body["totalResults"] == 1
    assert body["Resources"][0]["externalId"] == "jyoung"
    # The doc's literal URL leaves the value unquoted (externalId eq jyoung): not
    # RFC 7644 syntax, so the user, or invalidFilter; never another answer.
    loose = world.request("GET", "/Users", {"filter": "externalId eq jyoung"})
    if loose.status_code == 200:
        assert [r["id"] for r in assert_list(loose.json)["Resources"]] == [str(wanted)]
    else:
        assert assert_scim_error(loose, 400).get("scimType") == "invalidFilter"


@handles("entra/05-get-user-by-work-email.json")
def _filter_by_work_email(world: World, sample: dict[str, Any]) -> None:
    _some_users(world)
    wanted = world.scim_user(
        {"userName": "user", "emails": [{"value": "user@contoso.com", "type": "work"}]}
    )
    world.scim_user(  # a home address is not a work one
        {"userName": "user2", "emails": [{"value": "user2@contoso.com", "type": "home"}]}
    )
    body = assert_list(world.replay(sample).json)
    assert [r["id"] for r in body["Resources"]] == [str(wanted)]
    # and the same lookup of a home address finds nobody
    assert world.find_users('emails[type eq "work"].value eq "user2@contoso.com"') == []


@handles("entra/06-create-user.json", "entra/31-refcode-post-user-capitalised-subattrs.json")
def _create_user_entra(world: World, sample: dict[str, Any]) -> None:
    # 31 sends a Postman variable as its externalId: a real value stands for it.
    external = str(uuid.uuid4())
    result = world.replay(sample, {"${__UUID}": external})
    sent = substitute(sample["body"], {"${__UUID}": external})
    created = result.json
    assert USER_SCHEMA in created["schemas"]
    assert result.headers["location"].endswith(f"/Users/{created['id']}")
    # The primary address is the one kept ("Primary": attribute names match in any case).
    primary = next(e for e in sent["emails"] if e.get("primary", e.get("Primary")))
    user = world.kept(created["id"])
    assert {k: v for k, v in created.items() if k != "meta"} == user
    assert user["userName"] == sent["userName"]
    assert same_address(email_of(user), primary["value"])
    assert user["emails"][0]["type"] == "work"
    assert user["active"] is True
    assert user["externalId"] == sent["externalId"]
    assert user.get("displayName") == sent.get("displayName")
    # name, roles and the enterprise extension are not kept, and are not made up either
    for absent in ("name", "roles", "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"):
        assert absent not in user
    core = world.registry.users.get(uuid.UUID(created["id"]))
    assert same_address(core.email, primary["value"])
    assert core.is_active is True
    assert core.external_id == sent["externalId"]
    # Entra's lookup before its next create finds it, by userName and by externalId.
    assert world.find_users(f'userName eq "{sent["userName"]}"') == [created["id"]]
    assert world.find_users(f'externalId eq "{sent["externalId"]}"') == [created["id"]]


@handles("entra/07-create-user-with-nulls.json")
def _create_user_with_nulls(world: World, sample: dict[str, Any]) -> None:
    # Nulls are unassigned attributes; top-level department/manager and the
    # malformed extension URN name nothing we keep: all accepted, none kept.
    result = world.replay(sample)
    user = world.kept(result.json["id"])
    assert user["userName"] == "jyoung@testuser.com"
    assert same_address(email_of(user), "jyoung@Contoso.com")
    assert user["displayName"] == "Joy Young"
    assert user["externalId"] == "jyoung"
    assert user["active"] is True
    for absent in ("addresses", "phoneNumbers", "title", "department", "manager", "name"):
        assert absent not in user
    assert world.find_users('userName eq "jyoung@testuser.com"') == [result.json["id"]]


@handles("entra/08-get-user.json", "okta/07-get-user.json")
def _get_user(world: World, sample: dict[str, Any]) -> None:
    _some_users(world)
    wanted = world.scim_user(
        {
            "userName": "Test_User_get",
            "displayName": "Get Me",
            "externalId": "get-me",
            "emails": [{"value": "get.me@example.org", "type": "work", "primary": True}],
        }
    )
    result = world.replay(sample, {E_USER_GET: str(wanted), O_USER: str(wanted)})
    user = result.json
    assert user["id"] == str(wanted)
    assert user["schemas"] == [USER_SCHEMA]
    assert user["userName"] == "Test_User_get"
    assert user["displayName"] == "Get Me"
    assert user["externalId"] == "get-me"
    assert email_of(user) == "get.me@example.org"
    assert user["active"] is True
    assert user["meta"]["resourceType"] == "User"
    assert user["meta"]["location"].endswith(f"/Users/{wanted}")
    assert result.headers["etag"] == user["meta"]["version"]


@handles("entra/09-get-user-not-found.json", "okta/08-get-user-invalid-id.json")
def _get_user_not_found(world: World, sample: dict[str, Any]) -> None:
    # The sample's id is not one of ours (nor a UUID): that is its point, sent as it is.
    _some_users(world)
    assert_scim_error(world.replay(sample), 404)
    # A UUID that is no user's is as unknown.
    assert_scim_error(world.request("GET", f"/Users/{uuid.uuid4()}"), 404)


@handles("entra/10-patch-user-multivalued-replace.json")
def _patch_work_email(world: World, sample: dict[str, Any]) -> None:
    others = _some_users(world)
    before = {o: world.kept(o) for o in others}
    target = world.scim_user(
        {
            "userName": "Test_User_emails",
            "displayName": "Emails",
            "emails": [{"value": "old@microsoft.com", "type": "work", "primary": True}],
        }
    )
    was = world.kept(target)
    world.replay(sample, {E_USER_EMAILS: str(target)})
    user = world.kept(target)
    assert same_address(email_of(user), "updatedEmail@microsoft.com")
    assert user["emails"][0]["type"] == "work"
    assert same_address(world.registry.users.get(target).email, "updatedEmail@microsoft.com")
    # name.familyName is not kept; everything else stays as it was
    assert "name" not in user
    assert {k: v for k, v in user.items() if k != "emails"} == {
        k: v for k, v in was.items() if k != "emails"
    }
    assert {o: world.kept(o) for o in others} == before


def _entra_user(world: World) -> uuid.UUID:
    """The user the Entra PATCH samples change (5171a35d82074e068ce2 in the docs)."""
    return world.scim_user(
        {
            "userName": "Test_User_patched",
            "displayName": "Before",
            "externalId": "before",
            "emails": [{"value": "before@test.microsoft.com", "type": "work", "primary": True}],
        }
    )


@handles("entra/11-patch-user-replace-username.json")
def _patch_user_name(world: World, sample: dict[str, Any]) -> None:
    target = _entra_user(world)
    was = world.kept(target)
    world.replay(sample, {E_USER: str(target)})
    new_name = sample["body"]["Operations"][0]["value"]
    user = world.kept(target)
    assert user["userName"] == new_name
    assert {k: v for k, v in user.items() if k != "userName"} == {
        k: v for k, v in was.items() if k != "userName"
    }
    # The address is not the userName: it stays.
    assert world.registry.users.get(target).email == "before@test.microsoft.com"
    assert world.find_users(f'userName eq "{new_name}"') == [str(target)]
    assert world.find_users('userName eq "Test_User_patched"') == []


@handles(
    "entra/12-disable-user-default-string-bool.json",
    "entra/13-disable-user-aadOptscim062020.json",
    "entra/13b-disable-user-use-scim-doc.json",
)
def _disable_user(world: World, sample: dict[str, Any]) -> None:
    # "Replace" capitalised, and in 12 the boolean as the string "False": the user is disabled.
    target = _entra_user(world)
    bystander = world.user("bystander@example.org")
    was = world.kept(target)
    world.replay(sample, {E_USER: str(target)})
    user = world.kept(target)
    assert user["active"] is False
    assert world.registry.users.get(target).is_active is False
    assert {k: v for k, v in user.items() if k != "active"} == {
        k: v for k, v in was.items() if k != "active"
    }
    assert world.registry.users.get(bystander).is_active is True
    assert world.find_users("active eq false") == [str(target)]


@handles(
    "entra/14-add-single-value-default.json",
    "entra/14b-add-single-value-aadOptscim062020.json",
)
def _add_undeclared_attribute(world: World, sample: dict[str, Any]) -> None:
    # nickName is not kept: accepted (RFC 7644 §3.3), and nothing we keep changes.
    target = _entra_user(world)
    was = world.kept(target)
    world.replay(sample, {E_USER: str(target)})
    user = world.kept(target)
    assert user == was
    assert "nickName" not in user


@handles("entra/15-replace-multiple-default.json")
def _replace_many_with_paths(world: World, sample: dict[str, Any]) -> None:
    target = _entra_user(world)
    was = world.kept(target)
    world.replay(sample, {E_USER: str(target)})
    user = world.kept(target)
    assert user["displayName"] == "Pvlo"
    assert same_address(email_of(user), "TestBcwqnm@test.microsoft.com")
    assert user["emails"][0]["type"] == "work"
    assert user["externalId"] == "Eqpj"
    # name and the enterprise employeeNumber are not kept
    assert "name" not in user
    assert not any(k.startswith("urn:") for k in user)
    assert user["userName"] == was["userName"]
    assert user["active"] is was["active"]
    assert world.find_users('externalId eq "Eqpj"') == [str(target)]
    assert world.find_users('externalId eq "before"') == []
    assert world.registry.users.get(target).full_name == "Pvlo"


@handles("entra/16-replace-multiple-pathless-aadOptscim062020.json")
def _replace_many_pathless(world: World, sample: dict[str, Any]) -> None:
    # Dotted keys (name.givenName) and an extension URN key are accepted, and
    # displayName in the same path-less operation is applied.
    target = _entra_user(world)
    was = world.kept(target)
    world.replay(sample, {E_USER: str(target)})
    user = world.kept(target)
    assert user["displayName"] == "Bjfe"
    assert same_address(email_of(user), "TestMhvaes@test.microsoft.com")
    assert "name" not in user
    assert not any(k.startswith("urn:") for k in user)
    for key in ("userName", "externalId", "active", "schemas", "id"):
        assert user[key] == was[key], key
    core = world.registry.users.get(target)
    assert core.full_name == "Bjfe"


@handles("entra/17-patch-user-add-manager.json")
def _add_manager(world: World, sample: dict[str, Any]) -> None:
    # manager (enterprise extension) is not kept: accepted, nothing else changes.
    managed = _entra_user(world)
    manager = world.user("manager@example.org", "The Manager")
    was = {u: world.kept(u) for u in (managed, manager)}
    world.replay(sample, {E_MANAGED: str(managed), E_MANAGER: str(manager)})
    assert {u: world.kept(u) for u in (managed, manager)} == was
    assert "manager" not in world.get_user(managed)


@handles("entra/18-check-user-manager.json")
def _filter_by_manager(world: World, sample: dict[str, Any]) -> None:
    # Entra checks the manager it set (17). We keep no manager, so a filter on it
    # cannot be run: 400 invalidFilter naming it (RFC 7644 §3.4.2.2, and the issue's
    # rule), never an unfiltered list nor a guess. Entra then reports the attribute
    # as not kept, which is the truth; an administrator removes its mapping.
    managed = _entra_user(world)
    manager = world.user("manager@example.org", "The Manager")
    mapping = {E_MANAGED: str(managed), E_MANAGER: str(manager)}
    patch = load("entra/17-patch-user-add-manager.json")
    world.replay(patch, mapping)
    query = substitute(sample["query"], {**EVERYWHERE, **mapping})
    body = assert_scim_error(world.request("GET", "/Users", query), 400)
    assert body["scimType"] == "invalidFilter"
    assert "manager" in body["detail"]


@handles("entra/19-delete-user.json")
def _delete_user(world: World, sample: dict[str, Any]) -> None:
    target = _entra_user(world)
    bystander = world.user("bystander@example.org")
    group = world.group("Team", [target, bystander])
    world.replay(sample, {E_USER: str(target)})
    assert_scim_error(world.request("GET", f"/Users/{target}"), 404)
    with pytest.raises(NotFound):
        world.registry.users.get(target)
    assert world.find_users('userName eq "Test_User_patched"') == []
    # The others stay, and the group keeps them (and no longer lists the deleted one).
    assert world.registry.users.get(bystander).is_active is True
    assert world.members(group) == {bystander}
    # Deleting again: it is gone.
    assert_scim_error(world.request("DELETE", f"/Users/{target}"), 404)


@handles("entra/20-create-group.json", "okta/12-create-group-push.json")
def _create_group(world: World, sample: dict[str, Any]) -> None:
    # Entra lists a schema URN of its own in schemas: tolerated. Both create
    # the group without members (they come by PATCH).
    result = world.replay(sample)
    created = result.json
    sent = sample["body"]
    assert created["schemas"] == [GROUP_SCHEMA]
    assert created["displayName"] == sent["displayName"]
    assert created.get("externalId") == sent.get("externalId")
    assert "members" not in created
    assert result.headers["location"].endswith(f"/Groups/{created['id']}")
    group_id = uuid.UUID(created["id"])
    group = world.registry.groups.get(group_id)
    assert group.display_name == sent["displayName"]
    assert group.external_id == sent.get("externalId")
    assert world.members(group_id) == set()
    assert world.get_group(group_id)["displayName"] == sent["displayName"]


@handles("entra/21-get-group-excluding-members.json")
def _get_group_without_members(world: World, sample: dict[str, Any]) -> None:
    ann, bob, _ = _some_users(world)
    group = world.group("With members", [ann, bob])
    assert len(world.get_group(group)["members"]) == 2  # so leaving them out is a choice
    body = world.replay(sample, {E_GROUP_READ: str(group)}).json
    assert "members" not in body
    assert body["id"] == str(group)
    assert body["schemas"] == [GROUP_SCHEMA]
    assert body["displayName"] == "With members"


@handles("entra/22-get-group-by-displayname.json")
def _filter_groups_by_name(world: World, sample: dict[str, Any]) -> None:
    ann, bob, _ = _some_users(world)
    wanted = world.group("displayName", [ann, bob])
    world.group("displayName2", [ann])
    world.group("other")
    body = assert_list(world.replay(sample).json)
    assert body["totalResults"] == 1
    assert [g["id"] for g in body["Resources"]] == [str(wanted)]
    assert "members" not in body["Resources"][0]


@handles("entra/23-check-group-membership.json")
def _filter_group_by_member(world: World, sample: dict[str, Any]) -> None:
    member, other, _ = _some_users(world)
    group = world.group("Checked", [member])
    world.group("Elsewhere", [member, other])
    # The sample's own ids are no group's nor user's: no group, not every group.
    body = assert_list(world.replay(sample).json)
    assert body["totalResults"] == 0
    # The group, when the user is a member...
    body = assert_list(world.replay(sample, {E_GROUP_READ: str(group), E_MEMBER: str(member)}).json)
    assert [g["id"] for g in body["Resources"]] == [str(group)]
    assert "members" not in body["Resources"][0]
    # ...and none when not.
    body = assert_list(world.replay(sample, {E_GROUP_READ: str(group), E_MEMBER: str(other)}).json)
    assert body["totalResults"] == 0
    assert body["Resources"] == []


@handles("entra/24-patch-group-displayname.json")
def _rename_group(world: World, sample: dict[str, Any]) -> None:
    ann, bob, _ = _some_users(world)
    group = world.group("Before", [ann, bob])
    bystander = world.group("Bystander", [ann])
    world.replay(sample, {E_GROUP_RENAME: str(group)})
    new_name = sample["body"]["Operations"][0]["value"]
    assert world.get_group(group)["displayName"] == new_name
    assert world.registry.groups.get(group).display_name == new_name
    assert world.members(group) == {ann, bob}
    assert world.registry.groups.get(bystander).display_name == "Bystander"


@handles("entra/25-patch-group-add-members.json")
def _add_member(world: World, sample: dict[str, Any]) -> None:
    # "$ref": null is accepted; the member is added and the others stay.
    ann, bob, cid = _some_users(world)
    group = world.group("Team", [ann])
    world.replay(sample, {E_GROUP_MEMBERS: str(group), E_MEMBER: str(bob)})
    assert world.members(group) == {ann, bob}
    # Adding again changes nothing.
    world.replay(sample, {E_GROUP_MEMBERS: str(group), E_MEMBER: str(bob)})
    assert world.members(group) == {ann, bob}
    assert cid not in world.members(group)


@handles("entra/26-patch-group-remove-members-default.json")
def _remove_member_by_value(world: World, sample: dict[str, Any]) -> None:
    # "Remove" with a value list removes those members only, not every member.
    ann, bob, cid = _some_users(world)
    group = world.group("Team", [ann, bob, cid])
    # The sample's own value is no user of ours: nothing to remove, nothing removed.
    world.replay(sample, {E_GROUP_MEMBERS: str(group)})
    assert world.members(group) == {ann, bob, cid}
    world.replay(sample, {E_GROUP_MEMBERS: str(group), E_MEMBER: str(bob)})
    assert world.members(group) == {ann, cid}
    # The user is gone from the group, not from the service.
    assert world.registry.users.get(bob).email == "bob@example.com"


@handles("entra/27-patch-group-remove-member-aadOptscim062020.json")
def _remove_member_by_filter(world: World, sample: dict[str, Any]) -> None:
    ann, bob, cid = _some_users(world)
    group = world.group("Team", [ann, bob, cid])
    # The sample's own UUID is no member: removing it removes nothing.
    world.replay(sample, {E_GROUP_MEMBERS: str(group)})
    assert world.members(group) == {ann, bob, cid}
    world.replay(sample, {E_GROUP_MEMBERS: str(group), E_MEMBER_UUID: str(bob)})
    assert world.members(group) == {ann, cid}


@handles("entra/28-delete-group.json", "okta/20-delete-group.json")
def _delete_group(world: World, sample: dict[str, Any]) -> None:
    ann, bob, _ = _some_users(world)
    group = world.group("Doomed", [ann, bob])
    kept = world.group("Kept", [ann])
    world.replay(sample, {E_GROUP_DELETE: str(group), O_GROUP: str(group)})
    assert_scim_error(world.request("GET", f"/Groups/{group}"), 404)
    with pytest.raises(NotFound):
        world.registry.groups.get(group)
    # Its members stay, as does every other group.
    assert world.registry.users.get(ann).is_active is True
    assert world.registry.users.get(bob).is_active is False  # as made
    assert world.members(kept) == {ann}
    assert [g["value"] for g in world.get_user(ann)["groups"]] == [str(kept)]


@handles("entra/29-get-schemas.json")
def _get_schemas(world: World, sample: dict[str, Any]) -> None:
    ann, _, _ = _some_users(world)
    was = world.kept(ann)
    body = assert_list(world.replay(sample).json)
    ids = {s["id"] for s in body["Resources"]}
    assert {USER_SCHEMA, GROUP_SCHEMA} <= ids
    assert body["totalResults"] == len(body["Resources"])
    user_schema = next(s for s in body["Resources"] if s["id"] == USER_SCHEMA)
    declared = {a["name"] for a in user_schema["attributes"]}
    assert {"userName", "active", "emails", "displayName"} <= declared
    assert world.kept(ann) == was


@handles("entra/30-refcode-paginate.json", "okta/01-list-users-connection-check.json")
def _page_of_two(world: World, sample: dict[str, Any]) -> None:
    users = {str(u) for u in _some_users(world)}
    users.add(str(world.user("dee@example.org")))
    body = assert_list(world.replay(sample).json)
    assert body["totalResults"] == 4  # every user, the page being two of them
    assert body["startIndex"] == 1
    assert body["itemsPerPage"] == 2
    first = [r["id"] for r in body["Resources"]]
    rest = world.request("GET", "/Users", {"startIndex": "3", "count": "2"}).json
    second = [r["id"] for r in assert_list(rest)["Resources"]]
    assert set(first) | set(second) == users
    assert len(first + second) == 4  # no user on both pages


@handles("entra/32-refcode-patch-remove-all-members.json")
def _remove_all_members(world: World, sample: dict[str, Any]) -> None:
    ann, bob, cid = _some_users(world)
    group = world.group("Emptied", [ann, bob, cid])
    other = world.group("Other", [ann])
    world.replay(sample, {E_GROUP_REFCODE: str(group)})
    assert world.members(group) == set()
    assert world.registry.groups.get(group).display_name == "Emptied"
    assert world.members(other) == {ann}
    assert world.registry.users.get(cid).is_active is True


@handles("entra/33-refcode-get-users-attributes.json")
def _users_some_attributes(world: World, sample: dict[str, Any]) -> None:
    users = _some_users(world)
    world.group("Team", users)
    body = assert_list(world.replay(sample).json)
    assert body["totalResults"] == 3
    for resource in body["Resources"]:
        # what was asked, and what is always returned (id, schemas): nothing else
        assert set(resource) == {"id", "schemas", "userName", "emails"}, resource
        assert resource["emails"][0]["value"]


@handles("okta/02-spec-test-get-first-user.json")
def _first_user(world: World, sample: dict[str, Any]) -> None:
    users = _some_users(world)
    body = assert_list(world.replay(sample).json)
    assert body["totalResults"] == len(users)
    assert body["itemsPerPage"] == 1
    (first,) = body["Resources"]
    assert first["id"]
    assert first["userName"]
    assert email_of(first)
    assert isinstance(first["active"], bool)
    # Okta's test also wants name.givenName/familyName: name is not an attribute
    # we keep (not declared in /Schemas), so it is not there to check.


@handles("okta/03-import-users-page.json")
def _import_page(world: World, sample: dict[str, Any]) -> None:
    users = {str(u) for u in _some_users(world)}
    body = assert_list(world.replay(sample).json)
    listed = [r["id"] for r in body["Resources"]]
    assert set(listed) == users
    assert len(listed) == len(users)
    # Import pages through: the order is stable, page by page as at once.
    assert [r["id"] for r in world.replay(sample).json["Resources"]] == listed
    paged = [
        world.request("GET", "/Users", {"startIndex": str(i), "count": "1"}).json["Resources"][0][
            "id"
        ]
        for i in range(1, len(users) + 1)
    ]
    assert paged == listed


@handles("okta/04-find-user-by-username.json")
def _find_before_create(world: World, sample: dict[str, Any]) -> None:
    _some_users(world)
    body = world.replay(sample).json
    assert body == sample["expect"]["body"]
    # Once created, it is found, in any letter case (userName is caseExact false).
    created = world.scim_user({"userName": OKTA_ADDRESS})
    body = assert_list(world.replay(sample).json)
    assert [r["id"] for r in body["Resources"]] == [str(created)]
    upper = world.find_users(f'userName eq "{OKTA_ADDRESS.upper()}"')
    assert upper == [str(created)]


@handles("okta/05-create-user.json", "okta/06-spec-test-create-user.json")
def _create_user_okta(world: World, sample: dict[str, Any]) -> None:
    result = world.replay(sample)
    created = result.json
    sent = substitute(sample["body"], EVERYWHERE)
    assert USER_SCHEMA in created["schemas"]
    assert created["id"]
    user = world.kept(created["id"])
    assert user["userName"] == sent["userName"]
    assert email_of(user) == sent["emails"][0]["value"]
    assert user["displayName"] == sent["displayName"]
    assert user["active"] is True
    assert user.get("externalId") == sent.get("externalId")
    # the password (writeOnly) is never returned; groups (readOnly) were not set
    assert "password" not in created
    assert "password" not in user
    assert "groups" not in user
    assert world.registry.users.get(uuid.UUID(created["id"])).email == sent["emails"][0]["value"]
    assert world.find_users(f'userName eq "{sent["userName"]}"') == [created["id"]]
    # The same POST again: 409 uniqueness (Okta's CreateDuplicate), and still one user.
    again = world.request("POST", "/Users", body=sent)
    assert assert_scim_error(again, 409).get("scimType") == "uniqueness"
    assert world.find_users(f'userName eq "{sent["userName"]}"') == [created["id"]]


def _okta_user(world: World, active: bool = True) -> uuid.UUID:
    """Okta's test.user (23a35c27-… in the docs), made as Okta makes it."""
    return world.scim_user(
        {
            "userName": OKTA_ADDRESS,
            "displayName": "Test User",
            "emails": [{"value": OKTA_ADDRESS, "type": "work", "primary": True}],
            "active": active,
        }
    )


@handles("okta/09-put-user.json")
def _put_user(world: World, sample: dict[str, Any]) -> None:
    target = _okta_user(world, active=False)
    team = world.group("Team", [target])
    mapping = {**EVERYWHERE, O_USER: str(target)}
    result = world.replay(sample, mapping)
    user = world.kept(target)
    assert {k: v for k, v in result.json.items() if k != "meta"} == user
    assert user["id"] == str(target)
    assert user["userName"] == OKTA_ADDRESS
    assert email_of(user) == OKTA_ADDRESS
    assert user["active"] is True  # the body says active: true
    # "groups": [] is read only: the user stays in its group.
    assert world.members(team) == {target}
    assert [g["value"] for g in user["groups"]] == [str(team)]
    # Okta's PUT without active keeps the user's: deactivated, it stays so.
    world.replay(load("okta/10-deactivate-user-patch.json"), mapping)
    without = {k: v for k, v in substitute(sample["body"], mapping).items() if k != "active"}
    replaced = world.request("PUT", f"/Users/{target}", body=without)
    assert replaced.status_code == 200, replaced.text
    assert replaced.json["active"] is False
    assert world.registry.users.get(target).is_active is False
    # and active, it stays active (a missing active is not false either)
    world.replay(load("okta/11-reactivate-user-patch.json"), mapping)
    replaced = world.request("PUT", f"/Users/{target}", body=without)
    assert replaced.status_code == 200, replaced.text
    assert world.registry.users.get(target).is_active is True


@handles("okta/10-deactivate-user-patch.json", "okta/11-reactivate-user-patch.json")
def _set_active_pathless(world: World, sample: dict[str, Any]) -> None:
    # A path-less replace of {"active": …}: the user is (de)activated, nothing else.
    wanted = sample["body"]["Operations"][0]["value"]["active"]
    target = _okta_user(world, active=not wanted)
    bystander = world.user("bystander@example.org", active=not wanted)
    was = world.kept(target)
    world.replay(sample, {O_USER: str(target)})
    user = world.kept(target)
    assert user["active"] is wanted
    assert world.registry.users.get(target).is_active is wanted
    assert {k: v for k, v in user.items() if k != "active"} == {
        k: v for k, v in was.items() if k != "active"
    }
    assert world.registry.users.get(bystander).is_active is (not wanted)


def _okta_groups(world: World) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID, uuid.UUID]:
    """Users u1 (23a35c27-…), u2 (89bb1940-…), u3; group g (abf4dd94-…) of u2 and u3."""
    u1 = _okta_user(world)
    u2 = world.user("u2@okta.example.org", "U Two")
    u3 = world.user("u3@okta.example.org", "U Three")
    g = world.group("Old name", [u2, u3])
    return u1, u2, u3, g


def _okta_mapping(u1: uuid.UUID, u2: uuid.UUID, g: uuid.UUID) -> dict[str, str]:
    return {O_USER: str(u1), O_OTHER: str(u2), O_GROUP: str(g)}


@handles("okta/13-list-groups.json", "okta/21-spec-test-get-groups.json")
def _list_groups(world: World, sample: dict[str, Any]) -> None:
    _, u2, u3, g = _okta_groups(world)
    empty = world.group("Empty")
    body = assert_list(world.replay(sample).json)
    assert body["totalResults"] == 2
    found = {r["id"]: r for r in body["Resources"]}
    assert set(found) == {str(g), str(empty)}
    assert {m["value"] for m in found[str(g)]["members"]} == {str(u2), str(u3)}
    assert found[str(g)]["displayName"] == "Old name"
    assert "members" not in found[str(empty)]


@handles("okta/14-get-group.json")
def _get_group(world: World, sample: dict[str, Any]) -> None:
    u1, u2, u3, g = _okta_groups(world)
    result = world.replay(sample, _okta_mapping(u1, u2, g))
    body = result.json
    assert body["id"] == str(g)
    assert body["schemas"] == [GROUP_SCHEMA]
    assert body["displayName"] == "Old name"
    assert {m["value"] for m in body["members"]} == {str(u2), str(u3)}
    assert result.headers["etag"] == body["meta"]["version"]


@handles("okta/15-rename-group-patch.json")
def _rename_group_pathless(world: World, sample: dict[str, Any]) -> None:
    # The value carries the group's id (read only, the same): ignored, not refused.
    u1, u2, u3, g = _okta_groups(world)
    world.replay(sample, _okta_mapping(u1, u2, g))
    body = world.get_group(g)
    assert body["id"] == str(g)
    assert body["displayName"] == "Test SCIMv2"
    assert world.members(g) == {u2, u3}


@handles("okta/16-group-members-remove-and-add.json")
def _members_remove_and_add(world: World, sample: dict[str, Any]) -> None:
    u1, u2, u3, g = _okta_groups(world)
    world.replay(sample, _okta_mapping(u1, u2, g))
    assert world.members(g) == {u1, u3}
    assert world.registry.groups.get(g).display_name == "Old name"


@handles("okta/17-group-members-replace-with-path.json")
def _members_replace(world: World, sample: dict[str, Any]) -> None:
    u1, u2, u3, g = _okta_groups(world)
    world.replay(sample, _okta_mapping(u1, u2, g))
    assert world.members(g) == {u1, u2}  # exactly the list: u3 is out
    assert world.get_user(u3).get("groups") is None


@handles("okta/18-group-members-replace-pathless.json")
def _members_replace_pathless(world: World, sample: dict[str, Any]) -> None:
    u1, u2, u3, g = _okta_groups(world)
    world.replay(sample, _okta_mapping(u1, u2, g))
    assert world.members(g) == {u1}  # u2 and u3 are out
    assert world.get_user(u3).get("groups") is None
    assert world.registry.groups.get(g).display_name == "Test SCIMv2"


@handles("okta/19-put-group-aiw.json")
def _put_group(world: World, sample: dict[str, Any]) -> None:
    u1, u2, u3, g = _okta_groups(world)
    result = world.replay(sample, _okta_mapping(u1, u2, g))
    assert result.json["id"] == str(g)
    assert result.json["displayName"] == "Test SCIMv20"
    assert {m["value"] for m in result.json["members"]} == {str(u1)}
    assert world.members(g) == {u1}
    assert world.registry.groups.get(g).display_name == "Test SCIMv20"
    # the users who left the group are still users
    assert world.registry.users.get(u2).email == "u2@okta.example.org"
    assert world.registry.users.get(u3).is_active is True


# -- the tests -----------------------------------------------------------------------------------


def test_every_sample_has_a_handler() -> None:
    # A handler for a file that is gone is as wrong as a file without one.
    assert len(FILES) >= 50
    assert set(HANDLERS) == set(FILES)


@pytest.mark.parametrize("name", FILES, ids=FILES)
def test_replay(registry: Registry, name: str) -> None:
    handler = HANDLERS.get(name)
    assert handler is not None, f"{name}: a sample no handler replays"
    sample = load(name)
    assert sample["path"].startswith("/")
    handler(World(registry, client_for(registry, "provisioner")), sample)
