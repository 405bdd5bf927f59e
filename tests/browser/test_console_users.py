"""The console's users pages, driven as an administrator would, on SQLite and on PostgreSQL.

Searching by part of an email shows only the matching rows, the status filter
only the users in that state, sorting by email orders them, and the next-page
link walks the whole result once; a user made
in the new-user form opens on its page, an invalid email is named and the
typed values kept; an edit that lost a race with another writer shows the
conflict and the current values, and goes through when sent again; a user is
deleted, restored and purged from its page.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from selenium.webdriver.support.ui import Select
from serving import Server, running_server

from browser.browsing import SERVER_ENV, Browser, create_user, get_user, row_ids, unique
from userplane.plugins.console.users import PAGE_SIZE

pytestmark = pytest.mark.browser

USER_PAGE = re.compile(r"/admin/users/[0-9a-f-]{36}")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """This module's own server, on each backend (PostgreSQL from USERPLANE_TEST_POSTGRESQL_URL)."""
    directory = tmp_path_factory.mktemp("console")
    if request.param == "sqlite":
        database_url = f"sqlite:///{directory}/console.db"
    else:
        database_url = request.getfixturevalue("create_postgresql_database")()
    with running_server(directory, database_url, request.param, SERVER_ENV) as srv:
        yield srv


@pytest.fixture
def admin(browser: Browser, server: Server) -> Browser:
    """The browser, signed in with the server's admin key."""
    browser.sign_in(server.key)
    return browser


def _search(browser: Browser, q: str, sort: str | None = None) -> None:
    browser.fill("form#user-search input[name=q]", q)
    if sort is not None:
        Select(browser.find("form#user-search select[name=sort]")).select_by_value(sort)
    browser.submit("form#user-search")
    browser.wait_for("table#users")


def _emails(browser: Browser) -> list[str]:
    return [
        row.find_element("css selector", "a").text.strip()
        for row in browser.find_all("table#users tr[data-user-id]")
    ]


def test_searching_by_part_of_an_email_shows_only_the_matching_users(
    admin: Browser, server: Server
) -> None:
    token = unique("find")
    alice = create_user(server, f"alice.{token}@example.org", "Alice Search")
    bob = create_user(server, f"bob.{token}@example.org", "Bob Search")
    create_user(server, f"{unique('other')}@example.org", "Someone Else")

    _search(admin, f"alice.{token}")

    assert row_ids(admin) == [alice["id"]]
    admin.shot("search-one")
    _search(admin, token, sort="email")
    assert row_ids(admin) == [alice["id"], bob["id"]]
    assert _emails(admin) == [alice["email"], bob["email"]]
    assert admin.query.get("sort") == ["email"]
    _search(admin, token, sort="-email")
    assert row_ids(admin) == [bob["id"], alice["id"]]
    admin.shot("search-sorted")


#: What each choice of the status filter shows, of an active, an inactive and a deleted user.
STATUS_FILTER = {
    "": {"active", "inactive"},
    "active": {"active"},
    "inactive": {"inactive"},
    # Deleted users are listed with everyone else, marked, for those who may see them.
    "all": {"active", "inactive", "deleted"},
}


def test_the_status_filter_shows_the_users_in_that_state(admin: Browser, server: Server) -> None:
    token = unique("state")
    users = {
        state: create_user(server, f"{state}.{token}@example.org", f"{state.title()} User")
        for state in ("active", "inactive", "deleted")
    }
    made_inactive = server.request(
        "PATCH", f"/api/v1/users/{users['inactive']['id']}", {"is_active": False}
    )
    assert made_inactive.status == 200, made_inactive.body
    deleted = server.request("DELETE", f"/api/v1/users/{users['deleted']['id']}")
    assert deleted.status == 204, deleted.body
    names = {user["id"]: state for state, user in users.items()}
    wrong: dict[str, object] = {}

    for status, expected in STATUS_FILTER.items():
        admin.open("/admin/users")
        admin.fill("form#user-search input[name=q]", token)
        options = [
            option.get_attribute("value")
            for option in admin.find_all("form#user-search select[name=status] option")
        ]
        if status not in options:
            wrong[status] = f"no such option among {options}"
            continue
        Select(admin.find("form#user-search select[name=status]")).select_by_value(status)
        admin.submit("form#user-search")
        admin.wait_for("form#user-search")
        shown = {names.get(i, i) for i in row_ids(admin)}
        if shown != expected:
            wrong[status] = f"shows {sorted(shown)}, not {sorted(expected)}"

    assert not wrong, wrong


def test_a_users_email_links_to_their_page(admin: Browser, server: Server) -> None:
    user = create_user(server, f"{unique('link')}@example.org", "Linked User")
    _search(admin, user["email"])

    admin.find(f'tr[data-user-id="{user["id"]}"] a[href="/admin/users/{user["id"]}"]').click()

    admin.wait_path(f"/admin/users/{user['id']}")
    details = admin.wait_for("dl#user-details").text
    assert user["email"] in details
    assert "Linked User" in details
    admin.shot("user")


def test_the_next_page_link_walks_every_match_once(admin: Browser, server: Server) -> None:
    token = unique("page")
    count = PAGE_SIZE + 1
    made = [create_user(server, f"{token}.{i:03d}@example.org")["id"] for i in range(count)]

    _search(admin, token, sort="email")
    pages = [row_ids(admin)]
    admin.shot("page-1")
    while admin.has("a[rel=next]"):
        assert len(pages) <= count, "the next-page link never ends"
        admin.follow("a[rel=next]")
        admin.wait_for("table#users")
        pages.append(row_ids(admin))
        assert admin.query.get("q") == [token], "the search is lost on the next page"
        assert admin.query.get("sort") == ["email"], "the order is lost on the next page"

    admin.shot("page-last")
    assert [len(ids) for ids in pages] == [PAGE_SIZE, 1]
    assert [i for ids in pages for i in ids] == made, "each match once, in email order"


def test_a_user_made_in_the_form_opens_on_their_page(admin: Browser) -> None:
    email = f"{unique('new')}@example.org"
    admin.follow("a#new-user")
    admin.wait_path("/admin/users/new")
    admin.wait_for("form#user-form")
    assert admin.find("form#user-form input[name=is_active]").is_selected()
    admin.shot("new-user")

    admin.fill("form#user-form input[name=email]", email)
    admin.fill("form#user-form input[name=full_name]", "Made In Browser")
    admin.submit("form#user-form")

    admin.wait_path(USER_PAGE)
    flash = admin.wait_for("#flash")
    assert "Created" in flash.text
    assert flash.get_attribute("role") == "status"
    details = admin.text("dl#user-details")
    assert email in details
    assert "Made In Browser" in details
    user_id = admin.path.rsplit("/", 1)[1]
    assert user_id in details
    stored = get_user(admin.server, user_id)
    assert stored.status == 200
    assert stored.json()["email"] == email
    assert stored.json()["full_name"] == "Made In Browser"
    admin.shot("created")


def test_an_invalid_email_is_named_and_the_typed_values_kept(admin: Browser) -> None:
    admin.expect_http_errors(422)
    admin.open("/admin/users/new")
    admin.wait_for("form#user-form")

    admin.fill("form#user-form input[name=email]", "not an email")
    admin.fill("form#user-form input[name=full_name]", "Kept Name")
    admin.submit("form#user-form")

    error = admin.wait_for('.error[role="alert"]')
    assert "email" in error.text.lower()
    assert admin.statuses_loaded() == [422]
    assert admin.value("form#user-form input[name=email]") == "not an email"
    assert admin.value("form#user-form input[name=full_name]") == "Kept Name"
    admin.shot("invalid")


def test_an_edit_that_lost_a_race_shows_the_conflict_then_goes_through(
    admin: Browser, server: Server
) -> None:
    user = create_user(server, f"{unique('race')}@example.org", "Before Anyone")
    admin.open(f"/admin/users/{user['id']}")
    admin.wait_for("form#user-form")
    loaded_version = admin.value("form#user-form input[name=version]")
    assert loaded_version == str(user["version"])

    # Someone else changes the user while the page is open.
    changed = server.request(
        "PATCH",
        f"/api/v1/users/{user['id']}",
        {"full_name": "Changed Meanwhile"},
        headers={"If-Match": f'"{user["version"]}"'},
    )
    assert changed.status == 200, changed.body
    admin.fill("form#user-form input[name=full_name]", "Typed In Browser")
    admin.expect_http_errors(409)
    admin.submit("form#user-form")

    conflict = admin.wait_for('.error.conflict[role="alert"]')
    assert conflict.text.strip()
    assert admin.statuses_loaded() == [409]
    assert "Changed Meanwhile" in admin.text("dl#user-details")
    assert admin.value("form#user-form input[name=full_name]") == "Typed In Browser"
    assert admin.value("form#user-form input[name=version]") == str(changed.json()["version"])
    assert get_user(server, user["id"]).json()["full_name"] == "Changed Meanwhile"
    admin.shot("conflict")

    admin.submit("form#user-form")

    admin.wait_path(f"/admin/users/{user['id']}")
    assert not admin.has(".error.conflict")
    assert "Typed In Browser" in admin.wait_for("dl#user-details").text
    assert get_user(server, user["id"]).json()["full_name"] == "Typed In Browser"


def test_a_user_is_deleted_restored_and_purged_from_their_page(
    admin: Browser, server: Server
) -> None:
    user = create_user(server, f"{unique('gone')}@example.org", "Short Lived")
    page = f"/admin/users/{user['id']}"
    admin.open(page)
    admin.wait_for("form#delete-user")

    admin.submit("form#delete-user")

    admin.wait_path(page)
    assert admin.wait_for("#flash").text.strip()
    admin.wait_for("form#restore-user")
    assert admin.has("form#purge-user")
    assert not admin.has("form#user-form")
    assert not admin.has("form#delete-user")
    assert get_user(server, user["id"]).status == 404
    admin.shot("deleted")

    admin.submit("form#restore-user")

    admin.wait_path(page)
    admin.wait_for("form#delete-user")
    assert admin.has("form#user-form")
    assert get_user(server, user["id"]).status == 200

    admin.submit("form#delete-user")
    admin.wait_for("form#purge-user")
    for confirm in admin.find_all("form#purge-user input[type=checkbox]"):
        confirm.click()  # the page asks to confirm that a purge cannot be undone
    admin.submit("form#purge-user")

    admin.wait_path("/admin/users")
    assert admin.wait_for("#flash").text.strip()
    assert user["id"] not in row_ids(admin)
    assert get_user(server, user["id"], include_deleted=True).status == 404
    admin.shot("purged")


def test_an_edit_in_the_console_shows_in_the_users_history(admin: Browser, server: Server) -> None:
    user = create_user(server, f"{unique('history')}@example.org", "Old Name")
    page = f"/admin/users/{user['id']}"
    admin.open(page)
    admin.wait_for("form#user-form")

    admin.fill("form#user-form input[name=full_name]", "New Name")
    admin.submit("form#user-form")

    admin.wait_path(page)
    history = admin.wait_for("section#history table#history-events")
    actions = [cell.text for cell in admin.find_all("tbody tr td code", history)]
    assert actions[:2] == ["user.updated", "user.created"], actions
    newest = admin.find("tbody tr", history).text
    assert "full_name" in newest
    assert "New Name" in newest
    admin.shot("history")
