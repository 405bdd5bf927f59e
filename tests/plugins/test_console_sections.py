"""The console's group and webhook sections, and the console switched off.

The user and key pages, sessions and CSRF are in ``test_console.py``; these
are the sections that came with groups and webhooks, driven in process on
each backend through the same forms a browser posts.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from clients import ConsoleClient, console_for, new_key

from userplane import Registry
from userplane.frontends.http import create_app
from userplane.plugin import GroupQuery, NewGroup, NewUser, Settings, UserQuery
from userplane.plugins.console.sessions import Sessions


def _version(page: str) -> str:
    found = re.search(r'name="version" value="(\d+)"', page)
    assert found is not None
    return found.group(1)


def _alerts(page: str) -> list[str]:
    return re.findall(r'role="alert"[^>]*>([^<]*)<', page)


@pytest.fixture
def webhook_registry(database_url: str) -> Iterator[Registry]:
    """A registry whose webhooks may point at this machine (no delivery is awaited)."""
    settings = Settings.from_mapping(
        {"USERPLANE_DATABASE_URL": database_url, "USERPLANE_WEBHOOKS_ALLOW_PRIVATE": "true"}
    )
    with Registry(settings) as registry:
        registry.migrate()
        yield registry


# -- groups -------------------------------------------------------------------------------------


def test_an_admin_creates_a_group_adds_and_removes_a_member_and_deletes_it(
    registry: Registry,
) -> None:
    ann = registry.users.create(NewUser("ann@example.org", "Ann"))
    admin = console_for(registry, "admin")
    listing = admin.get("/admin/groups")
    assert listing.status_code == 200
    assert 'id="group-form"' in listing.text
    made = admin.post("/admin/groups", {"display_name": "Support", "role:viewer": "on"})
    assert made.status_code == 303
    path = made.headers["Location"]
    group_id = uuid.UUID(path.rsplit("/", 1)[1])
    group = registry.groups.get(group_id)
    assert (group.display_name, group.roles) == ("Support", frozenset({"viewer"}))
    assert "Created the group Support." in admin.get(path).text

    assert admin.post(f"{path}/members", {"member": "ann@example.org"}).status_code == 303
    assert [u.id for u in registry.groups.members(group_id).items] == [ann.id]
    page = admin.get(path)
    assert f'data-user-id="{ann.id}"' in page.text
    # The user's page shows the group it is in now.
    assert f'href="/admin/groups/{group_id}"' in admin.get(f"/admin/users/{ann.id}").text

    unknown = admin.post(f"{path}/members", {"member": "nobody@example.org"})
    assert unknown.status_code == 422
    assert any("nobody@example.org" in a for a in _alerts(unknown.text))
    admin.get(path)
    assert admin.post(f"{path}/members/{ann.id}/remove").status_code == 303
    assert registry.groups.members(group_id).items == ()

    version = _version(admin.get(path).text)
    assert admin.post(f"{path}/delete", {"version": version}).status_code == 303
    assert registry.groups.list(GroupQuery()).items == ()
    assert admin.get(path).status_code == 404


def test_a_stale_group_edit_is_a_conflict_that_keeps_what_was_typed(registry: Registry) -> None:
    admin = console_for(registry, "admin")
    path = admin.post("/admin/groups", {"display_name": "Ops"}).headers["Location"]
    group_id = uuid.UUID(path.rsplit("/", 1)[1])
    stale = _version(admin.get(path).text)
    registry.groups.add_members(group_id, [registry.users.create(NewUser("b@example.org")).id])

    clash = admin.post(path, {"display_name": "Operations", "version": stale})
    assert clash.status_code == 409
    assert 'class="error conflict"' in clash.text
    assert 'value="Operations"' in clash.text  # what was typed is kept
    assert registry.groups.get(group_id).display_name == "Ops"
    again = admin.post(path, {"display_name": "Operations", "version": _version(clash.text)})
    assert again.status_code == 303
    assert registry.groups.get(group_id).display_name == "Operations"


def test_groups_follow_the_api_permissions(registry: Registry) -> None:
    admin = console_for(registry, "admin")
    path = admin.post("/admin/groups", {"display_name": "Admins", "role:admin": "on"}).headers[
        "Location"
    ]
    # A viewer may not read groups: no section in its navigation, a 403 page at the URL.
    viewer = console_for(registry, "viewer", app=admin.client.app)
    users = viewer.get("/admin/users")
    assert 'href="/admin/groups"' not in users.text
    refused = viewer.get(path)
    assert refused.status_code == 403
    assert "Not allowed" in refused.text
    assert viewer.post("/admin/groups", {"display_name": "Mine"}).status_code == 403
    assert [g.display_name for g in registry.groups.list(GroupQuery()).items] == ["Admins"]


def test_a_duplicate_or_empty_group_name_is_shown_beside_the_field(registry: Registry) -> None:
    admin = console_for(registry, "admin")
    admin.post("/admin/groups", {"display_name": "Ops"})
    admin.get("/admin/groups")
    taken = admin.post("/admin/groups", {"display_name": "ops"})
    assert taken.status_code == 409
    assert 'aria-describedby="e-display_name"' in taken.text
    admin.get("/admin/groups")
    empty = admin.post("/admin/groups", {"display_name": ""})
    assert empty.status_code == 422
    assert 'id="e-display_name"' in empty.text


# -- webhooks -----------------------------------------------------------------------------------


def test_an_admin_subscribes_sees_the_secret_once_and_deletes(webhook_registry: Registry) -> None:
    admin = console_for(webhook_registry, "admin")
    assert 'href="/admin/webhooks"' in admin.get("/admin/users").text
    admin.get("/admin/webhooks")
    made = admin.post(
        "/admin/webhooks",
        {"url": "http://127.0.0.1:9/hook", "events": "user.created, user.deleted"},
    )
    assert made.status_code == 201
    secret = re.search(r'id="new-webhook-secret">([^<]+)<', made.text)
    assert secret is not None
    assert secret.group(1).startswith("whsec_")
    listing = admin.get("/admin/webhooks")
    assert secret.group(1) not in listing.text
    found = re.search(r'data-webhook-id="([0-9a-f-]{36})"', listing.text)
    assert found is not None
    webhook_id = found.group(1)

    webhook_registry.users.create(NewUser("ann@example.org"))
    detail = admin.get(f"/admin/webhooks/{webhook_id}")
    assert detail.status_code == 200
    assert detail.text.count("data-delivery-id") == 1
    assert admin.get(f"/admin/webhooks/{webhook_id}?status=bogus").status_code == 422

    admin.get(f"/admin/webhooks/{webhook_id}")
    assert admin.post(f"/admin/webhooks/{webhook_id}/delete").status_code == 303
    assert admin.get(f"/admin/webhooks/{webhook_id}").status_code == 404


def test_a_bad_subscription_names_each_field(webhook_registry: Registry) -> None:
    admin = console_for(webhook_registry, "admin")
    admin.get("/admin/webhooks")
    bad = admin.post("/admin/webhooks", {"url": "ftp://example.org/x", "events": "nope"})
    assert bad.status_code == 422
    assert 'id="e-url"' in bad.text
    assert 'id="e-events"' in bad.text
    assert 'value="ftp://example.org/x"' in bad.text


def test_an_editor_has_no_webhook_pages(webhook_registry: Registry) -> None:
    editor = console_for(webhook_registry, "editor")
    assert 'href="/admin/webhooks"' not in editor.get("/admin/users").text
    assert editor.get("/admin/webhooks").status_code == 403


# -- the console switched off -------------------------------------------------------------------


def test_without_the_console_plugin_there_is_no_admin_and_no_link_to_it(database_url: str) -> None:
    settings = Settings.from_mapping(
        {"USERPLANE_DATABASE_URL": database_url, "USERPLANE_DISABLED_PLUGINS": "console"}
    )
    with Registry(settings) as registry:
        registry.migrate()
        browser = ConsoleClient(create_app(registry))
        assert browser.get("/admin/sign-in").status_code == 404
        home = browser.get("/")
        assert home.status_code == 200
        assert 'href="/admin"' not in home.text
        assert 'href="/docs"' in home.text


def test_the_home_page_leads_to_the_console_when_it_is_served(registry: Registry) -> None:
    home = ConsoleClient(create_app(registry)).get("/")
    assert 'href="/admin"' in home.text


# -- what the review found ----------------------------------------------------------------------


def _registry_with(database_url: str, **env: str) -> Registry:
    settings = Settings.from_mapping({"USERPLANE_DATABASE_URL": database_url, **env})
    registry = Registry(settings)
    registry.migrate()
    return registry


def test_an_editor_renames_a_member_of_an_admin_group_as_the_api_lets_it(
    registry: Registry,
) -> None:
    """The form sends only what changed: an unchanged address is not judged a change."""
    ann = registry.users.create(NewUser("ann@example.org", "Ann"))
    admins = registry.groups.create(NewGroup("Admins", frozenset({"admin"})))
    registry.groups.add_members(admins.id, [ann.id])
    editor = console_for(registry, "editor")
    page = editor.get(f"/admin/users/{ann.id}")
    saved = editor.post(
        f"/admin/users/{ann.id}",
        {"version": _version(page.text), "email": "ann@example.org", "full_name": "Ann B"},
    )
    assert saved.status_code == 303, saved.text
    stored = registry.users.get(ann.id)
    assert (stored.full_name, stored.is_active) == ("Ann B", False)


def test_signing_in_over_a_dead_session_cookie_keeps_the_new_session(registry: Registry) -> None:
    browser = ConsoleClient(create_app(registry))
    browser.cookies["userplane_console"] = "A" * 43  # a token of the right shape, unknown
    browser.get("/admin/sign-in")
    signed_in = browser.post("/admin/sign-in", {"credential": new_key(registry)})
    assert signed_in.status_code == 303
    assert browser.get("/admin/users").status_code == 200


def test_sessions_survive_clocks_minutes_apart(registry: Registry) -> None:
    """One instance seals a session, another whose clock is 90 s behind opens it."""
    sql_storage: Any = registry.storage
    ahead = Sessions(sql_storage, 3600, clock=lambda: time.time() + 90)
    behind = Sessions(sql_storage, 3600, clock=time.time)
    token = ahead.start("up_secret")
    assert behind.credential(token) == "up_secret"


def test_badly_encoded_form_text_is_refused_not_stored(registry: Registry) -> None:
    admin = console_for(registry, "admin")
    admin.get("/admin/users/new")
    body = f"csrf={admin.csrf}&email=%ff%fe@example.org&full_name=%c3%28&is_active=on"
    answer = admin._keep(
        admin.client.simulate_post(
            "/admin/users",
            body=body,
            headers=admin._headers({"Content-Type": "application/x-www-form-urlencoded"}),
        )
    )
    assert answer.status_code == 422
    assert "UTF-8" in answer.text
    assert registry.users.list(UserQuery()).items == ()


def test_adding_a_member_by_email_needs_the_right_to_read_users(database_url: str) -> None:
    roles = json.dumps({"grouper": ["groups:read", "groups:write"]})
    with _registry_with(database_url, USERPLANE_ROLES=roles) as registry:
        ann = registry.users.create(NewUser("ann@example.org"))
        group = registry.groups.create(NewGroup("Ops"))
        grouper = console_for(registry, "grouper")
        path = f"/admin/groups/{group.id}"
        grouper.get(path)
        by_email = grouper.post(f"{path}/members", {"member": "ann@example.org"})
        assert by_email.status_code == 422
        assert "must be a user id" in by_email.text
        grouper.get(path)
        assert grouper.post(f"{path}/members", {"member": str(ann.id)}).status_code == 303
        assert [u.id for u in registry.groups.members(group.id).items] == [ann.id]


def test_purging_needs_the_right_to_see_deleted_users(database_url: str) -> None:
    roles = json.dumps({"purger": ["users:read", "users:purge"]})
    with _registry_with(database_url, USERPLANE_ROLES=roles) as registry:
        ann = registry.users.create(NewUser("ann@example.org"))
        registry.users.delete(ann.id)
        purger = console_for(registry, "purger")
        refused = purger.post(f"/admin/users/{ann.id}/purge", {"confirm": "yes"})
        assert refused.status_code == 403
        assert registry.users.get(ann.id, include_deleted=True).deleted_at is not None


def test_a_group_rename_keeps_a_role_no_longer_defined(database_url: str) -> None:
    with _registry_with(database_url, USERPLANE_ROLES=json.dumps({"ops": ["users:read"]})) as old:
        group = old.groups.create(NewGroup("Ops", frozenset({"ops"})))
    with _registry_with(database_url) as registry:
        admin = console_for(registry, "admin")
        path = f"/admin/groups/{group.id}"
        page = admin.get(path)
        renamed = admin.post(path, {"display_name": "Operations", "version": _version(page.text)})
        assert renamed.status_code == 303, renamed.text
        stored = registry.groups.get(group.id)
        assert (stored.display_name, stored.roles) == ("Operations", frozenset({"ops"}))


def test_error_pages_cannot_be_framed(registry: Registry) -> None:
    admin = console_for(registry, "admin")
    missing = admin.get(f"/admin/users/{uuid.uuid4()}")
    assert missing.status_code == 404
    assert missing.headers["X-Frame-Options"] == "DENY"


def test_a_delivery_is_sent_again_only_from_its_own_webhook(webhook_registry: Registry) -> None:
    admin = console_for(webhook_registry, "admin")
    hooks = []
    for port in (9, 10):
        admin.get("/admin/webhooks")
        made = admin.post(
            "/admin/webhooks", {"url": f"http://127.0.0.1:{port}/hook", "events": "*"}
        )
        assert made.status_code == 201
    listing = admin.get("/admin/webhooks")
    hooks = re.findall(r'data-webhook-id="([0-9a-f-]{36})"', listing.text)
    webhook_registry.users.create(NewUser("ann@example.org"))
    page = admin.get(f"/admin/webhooks/{hooks[0]}")
    delivery = re.search(r'data-delivery-id="([0-9a-f-]{36})"', page.text)
    assert delivery is not None
    other = admin.post(f"/admin/webhooks/{hooks[1]}/deliveries/{delivery.group(1)}/redeliver")
    assert other.status_code == 404
