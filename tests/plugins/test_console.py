"""The web console at ``/admin``, as a browser drives it, in process, on SQLite and PostgreSQL.

Every request goes through ``falcon.testing.TestClient`` against a real,
migrated registry (``registry`` from ``conftest.py``, over both backends),
with a ``Browser`` that keeps cookies, posts forms with the last page's CSRF
token, and checks every answer under ``/admin`` for the console's headers (its
CSP, ``Cache-Control: no-store``), for no 5xx, and, for pages, for no inline
script or style. State is always read back from the services and tables, never
from the pages alone:

- signing in (API keys, pasted ``Bearer`` values, JWTs), the cookie's
  attributes, the ``console_sessions`` row (nothing in clear), ``next``;
- how sessions end: signing out, a revoked key, expiry, tampered cookies;
- CSRF and ``Sec-Fetch-Site`` on every form, and what forms are accepted;
- each built-in role's rights, the same as the API's;
- the user pages (search, sort, keyset pages, create, edit with versions,
  delete, restore, purge, errors, the audit history panel);
- the key pages (a secret shown once, validation, revocation);
- escaping of user data, static assets.

The registry's API-key cache is off here (``USERPLANE_API_KEYS_CACHE_SECONDS=0``)
so that a revoked key ends its session at once, without sleeping.
"""

from __future__ import annotations

import base64
import hashlib
import posixpath
import re
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from html import unescape
from typing import Any

import jwt
import markupsafe
import pytest
from clients import ConsoleClient, new_key
from falcon import testing
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from userplane import NewUser, Registry, Settings, UserChanges, UserQuery
from userplane.errors import ConfigurationError
from userplane.frontends.http import create_app
from userplane.plugin import (
    KEYS_MANAGE,
    USERS_DELETE,
    USERS_PURGE,
    USERS_READ,
    USERS_READ_DELETED,
    USERS_RESTORE,
    USERS_WRITE,
    NotFound,
    User,
)
from userplane.plugins import api_keys
from userplane.plugins.audit import trail_of
from userplane.plugins.console import ConsoleState
from userplane.plugins.console.signin import safe_next

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SESSION = "userplane_console"
FORM = "userplane_console_form"
HOME = "/admin/users"
SIGN_IN = "/admin/sign-in"
SIGN_OUT = "/admin/sign-out"
KEYS = "/admin/keys"
#: The default session lifetime (USERPLANE_CONSOLE_SESSION_SECONDS).
DEFAULT_LIFETIME = 8 * 3600
FORM_TYPE = "application/x-www-form-urlencoded"
JWT_SECRET = "console-tests-" + "s" * 40

#: What each built-in role may do, as tests/frontends/test_http_auth.py and the roles plugin say.
GRANTS: dict[str, frozenset[str]] = {
    "viewer": frozenset({USERS_READ}),
    "editor": frozenset({USERS_READ, USERS_READ_DELETED, USERS_WRITE, USERS_DELETE, USERS_RESTORE}),
    "admin": frozenset(
        {
            USERS_READ,
            USERS_READ_DELETED,
            USERS_WRITE,
            USERS_DELETE,
            USERS_RESTORE,
            USERS_PURGE,
            KEYS_MANAGE,
            "audit:read",
        }
    ),
}
ROLES = sorted(GRANTS)


# ----------------------------------------------------------------------------- page checks

_INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.IGNORECASE)
_STYLE_ATTRIBUTE = re.compile(r"<[a-z][^>]*\sstyle\s*=", re.IGNORECASE)
_STYLE_ELEMENT = re.compile(r"<style\b", re.IGNORECASE)


def assert_clean_html(text: str) -> None:
    """No inline script, no ``style=`` attribute, no ``<style>``: the CSP would block them."""
    assert not _INLINE_SCRIPT.search(text), _INLINE_SCRIPT.search(text)
    assert not _STYLE_ATTRIBUTE.search(text), _STYLE_ATTRIBUTE.search(text)
    assert not _STYLE_ELEMENT.search(text)


def assert_console_answer(result: testing.Result) -> None:
    """What every answer under /admin carries, whatever its status."""
    assert result.status_code < 500, f"{result.status} {result.text[:300]}"
    assert result.headers.get("Content-Security-Policy") == CSP, result.headers
    assert result.headers.get("Cache-Control") == "no-store", result.headers
    if result.headers.get("Content-Type", "").startswith("text/html"):
        assert "Traceback" not in result.text
        assert_clean_html(result.text)


def shorten(value: Any, width: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def h1(result: testing.Result) -> str:
    found = re.search(r"<h1>(.*?)</h1>", result.text, re.DOTALL)
    assert found, result.text
    return unescape(re.sub(r"<[^>]+>", "", found.group(1))).strip()


def input_value(text: str, name: str) -> str | None:
    """The value of the (first) input named ``name`` in a page, unescaped."""
    for tag in re.findall(r"<input\b[^>]*>", text, re.DOTALL):
        if f'name="{name}"' in tag:
            found = re.search(r'\bvalue="([^"]*)"', tag)
            return unescape(found.group(1)) if found else ""
    return None


def field_error(text: str, name: str) -> str | None:
    """The error shown against field ``name`` (``id="e-<name>"``), tied to its input."""
    found = re.search(rf'<p class="error" role="alert" id="e-{name}">(.*?)</p>', text, re.DOTALL)
    return unescape(found.group(1)) if found else None


def listed(result: testing.Result) -> list[str]:
    """The ids of the users in a list page, in order."""
    return re.findall(r'<tr data-user-id="([^"]+)">', result.text)


def link(result: testing.Result, rel: str) -> str | None:
    found = re.search(rf'<a href="([^"]*)" rel="{rel}">', result.text)
    return unescape(found.group(1)) if found else None


def details(result: testing.Result) -> str:
    """The text of a user page's record (what is stored), apart from its forms."""
    found = re.search(r'<dl id="user-details".*?</dl>', result.text, re.DOTALL)
    assert found, result.text
    return found.group(0)


# ----------------------------------------------------------------------------- the browser


class Browser(ConsoleClient):
    """``ConsoleClient`` that checks every answer (``assert_console_answer``) and can post raw."""

    def _keep(self, result: testing.Result) -> testing.Result:
        assert_console_answer(result)
        return super()._keep(result)

    def post_raw(
        self,
        path: str,
        body: str | bytes,
        *,
        content_type: str = FORM_TYPE,
        headers: dict[str, str] | None = None,
        **options: Any,
    ) -> testing.Result:
        """POST ``body`` as is (no token added), with the browser's cookies."""
        all_headers = self._headers({"Content-Type": content_type, **(headers or {})})
        return self._keep(
            self.client.simulate_post(path, body=body, headers=all_headers, **options)
        )

    def sign_in_with(self, credential: str, **fields: str) -> testing.Result:
        self.get(SIGN_IN)
        return self.post(SIGN_IN, {"credential": credential, **fields})


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Keys are not cached: a revoked key fails its next request."""
    return Settings.from_mapping(
        {"USERPLANE_DATABASE_URL": database_url, "USERPLANE_API_KEYS_CACHE_SECONDS": "0"}
    )


@pytest.fixture
def app(registry: Registry) -> Any:
    return create_app(registry)


def signed_in(registry: Registry, app: Any, role: str = "admin") -> tuple[Browser, str]:
    """A browser signed in with a new key of ``role``, and that key."""
    key = new_key(registry, role)
    browser = Browser(app)
    answer = browser.sign_in_with(key)
    assert answer.status_code == 303, answer.text
    assert SESSION in browser.cookies
    return browser, key


def api(app: Any, key: str) -> testing.TestClient:
    return testing.TestClient(app, headers={"Authorization": f"Bearer {key}"})


# ----------------------------------------------------------------------------- state helpers


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}@example.org"


def make_user(
    registry: Registry, email: str | None = None, full_name: str | None = None, **extra: Any
) -> User:
    return registry.users.create(
        NewUser(email=email or unique_email(), full_name=full_name, **extra)
    )


def deleted_user(registry: Registry) -> User:
    return registry.users.delete(make_user(registry).id)


def stored(registry: Registry, user_id: uuid.UUID) -> User | None:
    """The user as stored now, deleted or not; ``None`` once purged."""
    try:
        return registry.users.get(user_id, include_deleted=True)
    except NotFound:
        return None


def current(registry: Registry, user_id: uuid.UUID) -> User:
    """The user as stored now (it must still exist)."""
    user = stored(registry, user_id)
    assert user is not None, f"user {user_id} was purged"
    return user


def all_users(registry: Registry) -> list[User]:
    return list(registry.users.list(UserQuery(limit=500, include_deleted=True)).items)


def session_rows(registry: Registry) -> list[tuple[Any, ...]]:
    rows = registry.storage.fetch_all(
        "SELECT id, credential, created_at, expires_at FROM console_sessions", {}
    )
    return [tuple(row) for row in rows]


def snapshot(registry: Registry) -> tuple[Any, ...]:
    """Everything a console form could change: users, keys, sessions."""
    users = sorted(
        (str(u.id), u.email, u.full_name, u.is_active, u.version, u.deleted_at)
        for u in all_users(registry)
    )
    keys = sorted((str(k.id), k.name, k.revoked_at) for k in api_keys.service(registry).list())
    return (users, keys, sorted(session_rows(registry)))


def sessions_of(registry: Registry) -> Any:
    return registry.services.get(ConsoleState).sessions


@dataclass
class Write:
    """One of the console's writing forms, ready to post, and how to tell it took effect."""

    name: str
    action: str
    path: str
    fields: dict[str, str]
    done: Callable[[], bool]


def writes(registry: Registry) -> list[Write]:
    """Every form that changes users or keys, each on objects of its own."""
    keys = api_keys.service(registry)
    email = unique_email("made")
    live = make_user(registry, full_name="Live")
    doomed = make_user(registry)
    gone = deleted_user(registry)
    purgeable = deleted_user(registry)
    victim, _ = keys.create("victim", "viewer")
    key_name = f"made {uuid.uuid4().hex[:6]}"

    def created() -> bool:
        return any(u.email == email for u in all_users(registry))

    return [
        Write("create user", USERS_WRITE, HOME, {"email": email, "is_active": "on"}, created),
        Write(
            "edit user",
            USERS_WRITE,
            f"{HOME}/{live.id}",
            {"email": live.email, "full_name": "Edited", "version": str(live.version)},
            lambda: current(registry, live.id).full_name == "Edited",
        ),
        Write(
            "delete user",
            USERS_DELETE,
            f"{HOME}/{doomed.id}/delete",
            {"version": str(doomed.version)},
            lambda: current(registry, doomed.id).deleted_at is not None,
        ),
        Write(
            "restore user",
            USERS_RESTORE,
            f"{HOME}/{gone.id}/restore",
            {},
            lambda: current(registry, gone.id).deleted_at is None,
        ),
        Write(
            "purge user",
            USERS_PURGE,
            f"{HOME}/{purgeable.id}/purge",
            {"confirm": "yes"},
            lambda: stored(registry, purgeable.id) is None,
        ),
        Write(
            "create key",
            KEYS_MANAGE,
            KEYS,
            {"name": key_name, "role": "viewer"},
            lambda: any(k.name == key_name for k in keys.list()),
        ),
        Write(
            "revoke key",
            KEYS_MANAGE,
            f"{KEYS}/{victim.id}/revoke",
            {},
            lambda: keys.get(victim.id).revoked_at is not None,
        ),
    ]


# ----------------------------------------------------------------------------- signing in


BAD_CREDENTIALS = ["up_" + "x" * 44, "up_nope", "not a key", "a.b.c", "Bearer ", "é" * 10]
BAD_CREDENTIALS += ["x" * 5000, "  "]


def test_sign_in_refuses_a_bad_credential(registry: Registry, app: Any) -> None:
    revoked = new_key(registry, "admin")
    keys = api_keys.service(registry)
    keys.revoke(next(k.id for k in keys.list() if revoked.startswith(f"up_{k.lookup}")))
    for credential in [*BAD_CREDENTIALS, revoked]:
        browser = Browser(app)
        page = browser.get(SIGN_IN)
        assert page.status_code == 200
        assert FORM in browser.cookies  # the pre-session cookie that keys the form's token
        answer = browser.post(SIGN_IN, {"credential": credential, "next": "/admin/keys"})
        assert answer.status_code == (401 if credential.strip() else 422), answer.text
        assert 'id="sign-in-error"' in answer.text
        assert SESSION not in answer.cookies
        assert SESSION not in browser.cookies
        assert input_value(answer.text, "next") == "/admin/keys"
        assert input_value(answer.text, "credential") in (None, "")  # never echoed back
        assert credential.strip() not in answer.text or len(credential.strip()) < 3
        assert session_rows(registry) == []
        assert browser.get(HOME).status_code == 303  # still signed out


def test_sign_in_with_a_key(registry: Registry, app: Any) -> None:
    key = new_key(registry, "admin")
    browser = Browser(app)
    browser.get(SIGN_IN)
    answer = browser.post(SIGN_IN, {"credential": key})
    assert answer.status_code == 303
    assert answer.headers["Location"] == HOME
    cookie = answer.cookies[SESSION]
    assert cookie.http_only
    assert cookie.same_site == "Strict"
    assert cookie.path == "/admin"
    assert cookie.max_age == DEFAULT_LIFETIME
    assert not cookie.secure  # plain http, no forwarded scheme
    token = cookie.value
    assert len(token) == 43

    [row] = session_rows(registry)
    values = " ".join(str(v) for v in row)
    assert key not in values
    assert key.removeprefix("up_") not in values
    assert token not in values
    raw = base64.urlsafe_b64decode(token + "=")
    assert row[0] == hashlib.sha256(raw).hexdigest()
    assert int(row[3]) - int(row[2]) == DEFAULT_LIFETIME

    page = browser.get(HOME)
    assert page.status_code == 200
    assert "tests admin" in page.text  # who is signed in
    assert 'id="sign-out"' in page.text

    # Over https, or behind a proxy that says so, the cookies are Secure.
    for options in ({"headers": {"X-Forwarded-Proto": "https"}}, {"protocol": "https"}):
        browser = Browser(app)
        form_page = browser.client.simulate_get(SIGN_IN, **options)  # type: ignore[arg-type]
        assert form_page.cookies[FORM].secure
        browser._keep(form_page)
        body = urllib.parse.urlencode({"csrf": browser.csrf, "credential": new_key(registry)})
        answer = browser.post_raw(SIGN_IN, body, **options)  # type: ignore[arg-type]
        assert answer.status_code == 303, answer.text
        cookie = answer.cookies[SESSION]
        assert cookie.secure, options
        assert cookie.http_only
        assert cookie.same_site == "Strict"
        assert cookie.path == "/admin"

    # A pasted ``Bearer`` value is accepted; ``next`` leads back to a console page.
    for pasted in ("Bearer {key}", "  bearer {key}  ", "\t{key}\n", "BEARER {key}"):
        browser = Browser(app)
        answer = browser.sign_in_with(pasted.format(key=new_key(registry, "viewer")))
        assert answer.status_code == 303, (pasted, answer.text)
        assert browser.get(HOME).status_code == 200
    for target in ("/admin/keys", "/admin/users?q=ann&sort=-email", "/admin/users/new"):
        browser = Browser(app)
        page = browser.get(f"{SIGN_IN}?" + urllib.parse.urlencode({"next": target}))
        assert input_value(page.text, "next") == target
        answer = browser.post(SIGN_IN, {"credential": new_key(registry), "next": target})
        assert answer.status_code == 303
        assert answer.headers["Location"] == target


EVIL_NEXT = [
    "//evil.example",
    "//evil.example/admin/x",
    "https://evil.example/admin/x",
    "http:/admin/x",
    "/\\evil.example",
    "/admin/..\\..\\x",
    "/admin/../api/v1/users",
    "/admin/%2e%2e/api/v1/users",
    "/admin//evil.example",
    "/api/v1/users",
    "javascript:alert(1)",
    "/admin/sign-out",
    "/admin/x\r\nSet-Cookie: a=b",
]


def test_sign_in_never_redirects_out_of_the_console(registry: Registry, app: Any) -> None:
    """Each attempt is tried; the failures are reported together."""
    key = new_key(registry)
    wrong: list[tuple[str, str]] = []
    for target in EVIL_NEXT:
        browser = Browser(app)
        try:
            answer = browser.sign_in_with(key, next=target)
            assert answer.status_code == 303
            # Signed in already, the sign-in page forwards to ``next``: the same rule.
            again = browser.get(f"{SIGN_IN}?" + urllib.parse.urlencode({"next": target}))
        except AssertionError as exc:  # wsgiref's check of a header with CR LF in it
            wrong.append((target, f"error: {exc}"))
            continue
        for result in (answer, again):
            if result.status_code != 303 or result.headers["Location"] != HOME:
                wrong.append((target, result.headers.get("Location", result.status_code)))
    assert not wrong, "\n".join(f"next={t!r} -> {where!r}" for t, where in wrong)


def _stays_in_console(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    path = urllib.parse.unquote(parts.path)
    return (
        not parts.scheme
        and not parts.netloc
        and url.startswith("/admin/")
        and all(c.isprintable() for c in url)
        and "\\" not in url
        and (posixpath.normpath(path) + "/").startswith("/admin/")
    )


@given(
    st.one_of(
        st.text(),
        st.builds("/admin/{}".format, st.text()),
        st.builds("/admin/{}".format, st.sampled_from(["..", "%2e%2e", ".%2E", "./..", "x/../.."])),
    )
)
def test_safe_next_only_names_console_paths(value: str) -> None:
    result = safe_next(value)
    assert result == HOME or _stays_in_console(result), (value, result)


@pytest.fixture
def jwt_app(database_url: str) -> Iterator[tuple[Registry, Any]]:
    settings = Settings.from_mapping(
        {
            "USERPLANE_DATABASE_URL": database_url,
            "USERPLANE_JWT_ALGORITHM": "HS256",
            "USERPLANE_JWT_KEY": JWT_SECRET,
        }
    )
    with Registry(settings) as registry:
        registry.migrate()
        yield registry, create_app(registry)


def _jwt(roles: list[str], lifetime: int = 300) -> str:
    now = int(time.time())
    claims = {"sub": "alice", "iat": now, "exp": now + lifetime, "roles": roles}
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


def test_sign_in_with_a_jwt(jwt_app: tuple[Registry, Any]) -> None:
    registry, app = jwt_app
    token = _jwt(["editor"])
    browser = Browser(app)
    answer = browser.sign_in_with(f"Bearer {token}")
    assert answer.status_code == 303, answer.text
    [row] = session_rows(registry)
    values = " ".join(str(v) for v in row)
    assert token not in values
    assert token.split(".")[1] not in values  # not even its claims
    page = browser.get(HOME)
    assert page.status_code == 200
    assert "editor" in page.text
    assert browser.get(KEYS).status_code == 403  # an editor's token, an editor's rights

    expired = Browser(app).sign_in_with(_jwt(["admin"], lifetime=-3600))
    assert expired.status_code == 401
    forged = Browser(app).sign_in_with(jwt.encode({"sub": "x"}, "wrong" * 10, algorithm="HS256"))
    assert forged.status_code == 401
    assert len(session_rows(registry)) == 1


# ----------------------------------------------------------------------------- session lifetime


def assert_sent_to_sign_in(answer: testing.Result, path: str | None = HOME) -> None:
    assert answer.status_code == 303, answer.text
    location = answer.headers["Location"]
    if path is None:
        assert location == SIGN_IN
    else:
        assert location == f"{SIGN_IN}?" + urllib.parse.urlencode({"next": path})


def assert_cookie_cleared(answer: testing.Result) -> None:
    cookie = answer.cookies[SESSION]
    assert cookie.value == ""
    assert cookie.path == "/admin"


def test_signed_out_and_signing_out(registry: Registry, app: Any) -> None:
    browser = Browser(app)
    user = make_user(registry)
    assert_sent_to_sign_in(browser.get(f"{HOME}/{user.id}"), f"{HOME}/{user.id}")
    assert_sent_to_sign_in(browser.get(f"{HOME}?q=x"), f"{HOME}?q=x")
    root = browser.get("/admin")
    assert (root.status_code, root.headers["Location"]) == (303, SIGN_IN)
    # ... and signing in from there lands on the page asked for.
    page = browser.get(f"{SIGN_IN}?" + urllib.parse.urlencode({"next": f"{HOME}/{user.id}"}))
    answer = browser.post(
        SIGN_IN, {"credential": new_key(registry), "next": input_value(page.text, "next") or ""}
    )
    assert answer.headers["Location"] == f"{HOME}/{user.id}"
    assert browser.get("/admin").headers["Location"] == HOME

    # Signing out ends the session: the row goes, and its cookie is worth nothing.
    signed_in(registry, app)  # another browser, whose session stays
    browser, key = signed_in(registry, app)
    old_cookie = browser.cookies[SESSION]
    sessions = len(session_rows(registry))
    assert sessions == 3
    browser.get(HOME)
    answer = browser.post(SIGN_OUT)
    assert answer.status_code == 303
    assert answer.headers["Location"] == SIGN_IN
    assert_cookie_cleared(answer)
    assert len(session_rows(registry)) == sessions - 1  # this one only
    page = browser.get(SIGN_IN)
    assert "You are signed out." in page.text
    assert "You are signed out." not in browser.get(SIGN_IN).text  # a flash shows once

    replay = Browser(app)
    replay.cookies[SESSION] = old_cookie
    answer = replay.get(HOME)
    assert_sent_to_sign_in(answer)
    assert_cookie_cleared(answer)
    # The key itself still works: signing out ends the session, not the key.
    assert api(app, key).simulate_get("/api/v1/users").status_code == 200


def test_revoking_the_key_ends_the_session(registry: Registry, app: Any) -> None:
    reader, key = signed_in(registry, app)
    writer = Browser(app)
    assert writer.sign_in_with(key).status_code == 303  # a second session on the same key
    user = make_user(registry)
    assert reader.get(f"{HOME}/{user.id}").status_code == 200
    writer.get(f"{HOME}/new")
    assert len(session_rows(registry)) == 2
    record = next(k for k in api_keys.service(registry).list() if key.startswith(f"up_{k.lookup}"))
    api_keys.service(registry).revoke(record.id)

    answer = reader.get(f"{HOME}/{user.id}")
    assert_sent_to_sign_in(answer, f"{HOME}/{user.id}")
    assert_cookie_cleared(answer)
    assert len(session_rows(registry)) == 1  # forgotten, not just refused
    # A form posted after the revocation changes nothing and asks to sign in again.
    before = snapshot(registry)
    answer = writer.post(HOME, {"email": unique_email()})
    assert_sent_to_sign_in(answer, None)
    assert_cookie_cleared(answer)
    assert session_rows(registry) == []
    assert snapshot(registry)[:2] == before[:2]
    # Signing in again with the revoked key is refused.
    assert Browser(app).sign_in_with(key).status_code == 401


def test_sessions_expire(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``USERPLANE_CONSOLE_SESSION_SECONDS`` sets the lifetime; the clock is moved past it."""
    settings = Settings.from_mapping(
        {"USERPLANE_DATABASE_URL": database_url, "USERPLANE_CONSOLE_SESSION_SECONDS": "300"}
    )
    with Registry(settings) as registry:
        registry.migrate()
        app = create_app(registry)
        browser = Browser(app)
        answer = browser.sign_in_with(new_key(registry))
        assert answer.cookies[SESSION].max_age == 300
        [row] = session_rows(registry)
        assert int(row[3]) - int(row[2]) == 300
        sessions = sessions_of(registry)
        start = time.time()
        monkeypatch.setattr(sessions, "_clock", lambda: start + 290)
        assert browser.get(HOME).status_code == 200
        monkeypatch.setattr(sessions, "_clock", lambda: start + 301)
        answer = browser.get(HOME)
        assert_sent_to_sign_in(answer)
        assert_cookie_cleared(answer)
        assert browser.get(HOME).status_code == 303  # and stays signed out
        # The next sign-in sweeps the dead row out.
        assert Browser(app).sign_in_with(new_key(registry)).status_code == 303
        assert len(session_rows(registry)) == 1
    for wrong in ("299", "604801"):
        bad = Settings.from_mapping(
            {"USERPLANE_DATABASE_URL": database_url, "USERPLANE_CONSOLE_SESSION_SECONDS": wrong}
        )
        with pytest.raises((ConfigurationError, ValueError), match="CONSOLE_SESSION_SECONDS"):
            Registry(bad).close()


def _one_char_changed(token: str, position: int) -> str:
    replacement = "A" if token[position] != "A" else "B"
    return token[:position] + replacement + token[position + 1 :]


def test_a_tampered_cookie_signs_out(registry: Registry, app: Any) -> None:
    browser, _ = signed_in(registry, app)
    token = browser.cookies[SESSION]
    tampered = [_one_char_changed(token, i) for i in (0, 7, 21, 35, 41)]
    tampered += [token[:-1], token + "A", token * 2, "", "x", "!" * 43, "é" * 43, "A" * 43]
    tampered += ["A" * 42 + "=", "%00" * 20, "." * 4096]
    for value in tampered:
        stranger = Browser(app)
        stranger.cookies[SESSION] = value
        answer = stranger.get(HOME)
        assert_sent_to_sign_in(answer)
        assert_cookie_cleared(answer)
        posted = stranger.post(HOME, {"email": unique_email()})
        assert posted.status_code in (303, 403), posted.text
    assert len(all_users(registry)) == 0
    assert browser.get(HOME).status_code == 200  # the real session is untouched


# ----------------------------------------------------------------------------- CSRF and forms


def test_every_form_needs_this_sessions_token(registry: Registry, app: Any) -> None:
    browser, _ = signed_in(registry, app)
    other, _ = signed_in(registry, app)
    other.get(HOME)
    browser.get(HOME)
    assert browser.csrf
    assert other.csrf != browser.csrf
    forms = writes(registry)
    posts = [(w.path, w.fields) for w in forms]
    posts += [(SIGN_OUT, {}), (SIGN_IN, {"credential": new_key(registry)})]
    before = snapshot(registry)
    for path, fields in posts:
        attempts = {
            "missing": browser.post_raw(path, urllib.parse.urlencode(fields)),
            "empty": browser.post(path, fields, csrf=""),
            "wrong": browser.post(path, fields, csrf="0" * 64),
            "another session's": browser.post(path, fields, csrf=other.csrf),
            "cross-site": browser.post(path, fields, headers={"Sec-Fetch-Site": "cross-site"}),
            "same-site": browser.post(path, fields, headers={"Sec-Fetch-Site": "same-site"}),
        }
        for what, answer in attempts.items():
            assert answer.status_code == 403, (path, what, answer.status_code, answer.text)
            assert h1(answer) == "Not allowed"
            assert snapshot(registry) == before, (path, what)
    assert not any(w.done() for w in forms)
    assert browser.get(HOME).status_code == 200  # still signed in: sign-out was refused too

    # The same forms from this console's own pages go through.
    for write in forms:
        answer = browser.post(write.path, write.fields, headers={"Sec-Fetch-Site": "same-origin"})
        assert answer.status_code in (201, 303), (write.name, answer.text)
        assert write.done(), write.name


def test_sign_in_form_and_form_encodings(registry: Registry, app: Any) -> None:
    """The sign-in form is keyed by the pre-session cookie; forms are HTML forms only."""
    key = new_key(registry)
    # Never loaded the form: no pre-session cookie, so no token can match.
    blind = Browser(app)
    answer = blind.post(SIGN_IN, {"credential": key}, csrf="0" * 64)
    assert answer.status_code == 403
    # Another browser's token, with this browser's cookie.
    first, second = Browser(app), Browser(app)
    first.get(SIGN_IN)
    second.get(SIGN_IN)
    assert first.csrf != second.csrf
    assert first.post(SIGN_IN, {"credential": key}, csrf=second.csrf).status_code == 403
    assert session_rows(registry) == []
    # Typed by hand (``Sec-Fetch-Site: none``) is a form of this console too.
    ok = first.post(SIGN_IN, {"credential": key}, headers={"Sec-Fetch-Site": "none"})
    assert ok.status_code == 303
    assert len(session_rows(registry)) == 1

    # Forms come only as HTML forms, of a bounded size, in UTF-8.
    browser, key = signed_in(registry, app)
    browser.get(HOME)
    before = snapshot(registry)
    for content_type in ("application/json", "multipart/form-data; boundary=x", "text/plain"):
        answer = browser.post_raw(
            HOME, f"csrf={browser.csrf}&email=a@example.org", content_type=content_type
        )
        assert answer.status_code == 415, (content_type, answer.text)
        assert answer.headers["Content-Type"].startswith("text/html")
    too_many = {f"f{i}": "x" for i in range(70)}
    assert browser.post(HOME, {"email": unique_email(), **too_many}).status_code == 422
    assert browser.post(HOME, {"email": unique_email(), "full_name": "x" * 9000}).status_code == 422
    not_utf8 = f"csrf={browser.csrf}&email=".encode() + b"\xff\xfe@example.org"
    assert browser.post_raw(HOME, not_utf8).status_code == 422
    assert snapshot(registry) == before
    # The API still refuses HTML forms: they are the console's only.
    answer = api(app, key).simulate_post(
        "/api/v1/users", body="email=form@example.org", headers={"Content-Type": FORM_TYPE}
    )
    assert answer.status_code == 415
    assert snapshot(registry) == before


# ----------------------------------------------------------------------------- roles


@pytest.mark.parametrize("role", ROLES)
def test_each_role_may_do_what_the_api_lets_it(registry: Registry, app: Any, role: str) -> None:
    """Every write form against the role's grants, the API's answers, and what pages offer."""
    browser, key = signed_in(registry, app, role)
    client = api(app, key)
    browser.get(HOME)
    for write in writes(registry):
        answer = browser.post(write.path, write.fields)
        if write.action in GRANTS[role]:
            assert answer.status_code in (201, 303), (role, write.name, answer.text)
            assert write.done(), (role, write.name)
        else:
            assert answer.status_code == 403, (role, write.name, answer.text)
            assert h1(answer) == "Not allowed"
            assert not write.done(), (role, write.name)
    # The API answers the same principal the same way.
    live, gone = make_user(registry), deleted_user(registry)
    api_answers = {
        USERS_WRITE: client.simulate_post("/api/v1/users", json={"email": unique_email()}),
        USERS_DELETE: client.simulate_delete(f"/api/v1/users/{live.id}"),
        USERS_RESTORE: client.simulate_post(f"/api/v1/users/{gone.id}/restore"),
        KEYS_MANAGE: client.simulate_post("/api/v1/keys", json={"name": "k", "role": "viewer"}),
    }
    for action, answer in api_answers.items():
        assert (answer.status_code == 403) == (action not in GRANTS[role]), (action, answer.text)
    for path, action in [(f"{HOME}/new", USERS_WRITE), (KEYS, KEYS_MANAGE)]:
        page = browser.get(path)
        assert page.status_code == (200 if action in GRANTS[role] else 403), (path, page.text)

    # ... and the pages offer only the forms and filters it may use.
    grants = GRANTS[role]
    live, gone = make_user(registry), deleted_user(registry)

    users = browser.get(f"{HOME}?status=all")
    assert users.status_code == 200
    assert ('id="new-user"' in users.text) == (USERS_WRITE in grants)
    assert ('<option value="all"' in users.text) == (USERS_READ_DELETED in grants)
    assert (str(gone.id) in listed(users)) == (USERS_READ_DELETED in grants)
    assert str(live.id) in listed(users)
    assert ('href="/admin/keys"' in users.text) == (KEYS_MANAGE in grants)

    page = browser.get(f"{HOME}/{live.id}")
    assert page.status_code == 200
    assert ('id="user-form"' in page.text) == (USERS_WRITE in grants)
    assert ('id="delete-user"' in page.text) == (USERS_DELETE in grants)
    assert ('id="history"' in page.text) == ("audit:read" in grants)

    page = browser.get(f"{HOME}/{gone.id}")
    if USERS_READ_DELETED not in grants:
        assert page.status_code == 404  # as GET /api/v1/users/{id} answers it
        assert h1(page) == "Not found"
        return
    assert page.status_code == 200
    assert ('id="restore-user"' in page.text) == (USERS_RESTORE in grants)
    assert ('id="purge-user"' in page.text) == (USERS_PURGE in grants)
    assert 'id="user-form"' not in page.text  # a deleted user is not edited


# ----------------------------------------------------------------------------- the user list


def test_search_filter_and_sort(registry: Registry, app: Any) -> None:
    browser, _ = signed_in(registry, app, "admin")
    alice = make_user(registry, "alice.smith@example.org", "Alice Smith")
    bob = make_user(registry, "bob@example.org", "Robert Jones")
    carol = make_user(registry, "carol@elsewhere.org", "Carol Alice")
    cases = {
        "smith": {alice.id},
        "jones": {bob.id},
        "elsewhere": {carol.id},
        "alice": {alice.id, carol.id},
        "ROBERT": {bob.id},
        "nobody-at-all": set(),
    }
    for q, expected in cases.items():
        page = browser.get(f"{HOME}?" + urllib.parse.urlencode({"q": q}))
        assert page.status_code == 200
        assert set(listed(page)) == {str(i) for i in expected}, q
        assert input_value(page.text, "q") == q
        if not expected:
            assert 'id="no-users"' in page.text

    active = make_user(registry, "state-on@example.org", is_active=True)
    inactive = make_user(registry, "state-off@example.org", is_active=False)
    gone = registry.users.delete(make_user(registry, "state-gone@example.org").id)
    by_status = {
        "": {active.id, inactive.id},
        "active": {active.id},
        "inactive": {inactive.id},
        "all": {active.id, inactive.id, gone.id},
        "bogus": {active.id, inactive.id},
    }
    for status, ids in by_status.items():
        page = browser.get(f"{HOME}?q=state-&status={status}")
        assert set(listed(page)) == {str(i) for i in ids}, status

    users = [make_user(registry, f"sort-{name}@example.org") for name in ("mia", "abe", "zed")]
    by_email = [str(u.id) for u in sorted(users, key=lambda u: u.email)]
    by_time = [str(u.id) for u in users]
    assert listed(browser.get(f"{HOME}?q=sort-&sort=email")) == by_email
    assert listed(browser.get(f"{HOME}?q=sort-&sort=-email")) == by_email[::-1]
    assert listed(browser.get(f"{HOME}?q=sort-&sort=created_at")) == by_time
    assert listed(browser.get(f"{HOME}?q=sort-&sort=-created_at")) == by_time[::-1]
    assert listed(browser.get(f"{HOME}?q=sort-&sort=bogus")) == by_time


def test_keyset_pages_carry_the_filters(registry: Registry, app: Any) -> None:
    browser, _ = signed_in(registry, app, "viewer")
    pagers = [make_user(registry, f"pager-{i:02d}@example.org") for i in range(31)]
    make_user(registry, "other@example.org")
    make_user(registry, "pager-off@example.org", is_active=False)
    first = browser.get(f"{HOME}?q=pager&status=active&sort=-email")
    assert len(listed(first)) == 25
    following = link(first, "next")
    assert following is not None
    params = urllib.parse.parse_qs(urllib.parse.urlsplit(following).query)
    assert params["q"] == ["pager"]
    assert params["status"] == ["active"]
    assert params["sort"] == ["-email"]
    assert params["after"]
    assert link(first, "first") is None
    second = browser.get(following)
    assert second.status_code == 200
    assert len(listed(second)) == 6
    assert link(second, "next") is None
    first_again = link(second, "first")
    assert first_again is not None
    assert "after" not in first_again
    assert listed(browser.get(first_again)) == listed(first)
    expected = [str(u.id) for u in sorted(pagers, key=lambda u: u.email, reverse=True)]
    assert listed(first) + listed(second) == expected

    cursor = params["after"][0]
    for bad in (cursor[:-3] + ("x" if cursor[-3] != "x" else "y") + cursor[-2:], "garbage", "%"):
        answer = browser.get(f"{HOME}?" + urllib.parse.urlencode({"q": "pager", "after": bad}))
        assert answer.status_code == 422, (bad, answer.text)
        assert 'id="e-after"' in answer.text
        assert listed(answer) == []


@hypothesis_settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    params=st.fixed_dictionaries(
        {},
        optional={
            "q": st.text(max_size=300),
            "status": st.text(max_size=10) | st.sampled_from(["", "all", "active"]),
            "sort": st.text(max_size=10) | st.sampled_from(["email", "-email"]),
            "after": st.text(max_size=80)
            | st.binary(max_size=60).map(
                lambda b: base64.urlsafe_b64encode(b).decode().rstrip("=")
            ),
        },
    )
)
def test_any_list_query_is_a_page_or_a_422(
    registry: Registry, app: Any, params: dict[str, str]
) -> None:
    """Whatever the address bar says, the list answers 200 or 422 (``Browser``: never 5xx)."""
    make_user(registry, full_name="Listed")
    browser, _ = signed_in(registry, app, "viewer")
    answer = browser.get(f"{HOME}?" + urllib.parse.urlencode(params))
    assert answer.status_code in (200, 422), (params, answer.status_code)
    if answer.status_code == 422:
        assert re.search(r'id="e-(q|after)"', answer.text), answer.text


# ----------------------------------------------------------------------------- creating users


def test_create_a_user(registry: Registry, app: Any) -> None:
    browser, _ = signed_in(registry, app, "editor")
    browser.get(f"{HOME}/new")
    answer = browser.post(
        HOME, {"email": "  new.person@example.org ", "full_name": " New Person ", "is_active": "on"}
    )
    assert answer.status_code == 303
    [user] = all_users(registry)
    assert (user.email, user.full_name, user.is_active) == (
        "new.person@example.org",
        "New Person",
        True,
    )
    assert answer.headers["Location"] == f"{HOME}/{user.id}"
    page = browser.get(answer.headers["Location"])
    assert 'id="flash"' in page.text
    assert "Created new.person@example.org." in page.text
    assert 'id="flash"' not in browser.get(answer.headers["Location"]).text  # once only

    unticked = browser.post(HOME, {"email": "off@example.org"})
    assert unticked.status_code == 303
    assert not next(u for u in all_users(registry) if u.email == "off@example.org").is_active

    # Refusals: the error tied to its field, the typed values kept, nothing created.
    before = snapshot(registry)
    browser.get(f"{HOME}/new")
    answer = browser.post(HOME, {"email": "not-an-email", "full_name": "Typed Name"})
    assert answer.status_code == 422
    assert field_error(answer.text, "email")
    assert 'aria-describedby="e-email"' in answer.text
    assert input_value(answer.text, "email") == "not-an-email"
    assert input_value(answer.text, "full_name") == "Typed Name"
    assert field_error(answer.text, "full_name") is None
    bell = browser.post(HOME, {"email": "typed@example.org", "full_name": "a\x07b"})
    assert bell.status_code == 422
    assert field_error(bell.text, "full_name")
    taken = browser.post(HOME, {"email": "new.person@example.org", "full_name": "Second"})
    assert taken.status_code == 409
    assert field_error(taken.text, "email")
    assert input_value(taken.text, "full_name") == "Second"
    assert snapshot(registry) == before
    # The page's form still posts: its token is still this session's.
    fixed = browser.post(HOME, {"email": "typed@example.org", "full_name": "Typed Name"})
    assert fixed.status_code == 303


# ----------------------------------------------------------------------------- editing users


def test_edit_a_user(registry: Registry, app: Any) -> None:
    browser, _ = signed_in(registry, app, "editor")
    user = make_user(registry, "before@example.org", "Before", is_active=True)
    page = browser.get(f"{HOME}/{user.id}")
    assert input_value(page.text, "version") == str(user.version)
    answer = browser.post(
        f"{HOME}/{user.id}",
        {"email": "after@example.org", "full_name": "After", "version": str(user.version)},
    )
    assert answer.status_code == 303
    assert answer.headers["Location"] == f"{HOME}/{user.id}"
    now = stored(registry, user.id)
    assert now is not None
    assert (now.email, now.full_name, now.is_active) == ("after@example.org", "After", False)
    assert now.version == user.version + 1
    assert "Saved after@example.org." in browser.get(f"{HOME}/{user.id}").text

    # Refusals: the same checks as the API, the typed values kept, nothing saved.
    user = make_user(registry, "edit@example.org", "Edit")
    other = make_user(registry, "other@example.org")
    browser.get(f"{HOME}/{user.id}")
    version = str(user.version)
    invalid = browser.post(f"{HOME}/{user.id}", {"email": "nope", "version": version})
    assert invalid.status_code == 422
    assert field_error(invalid.text, "email")
    assert input_value(invalid.text, "email") == "nope"
    assert input_value(invalid.text, "version") == version
    taken = browser.post(f"{HOME}/{user.id}", {"email": other.email, "version": version})
    assert taken.status_code == 409
    assert field_error(taken.text, "email")
    no_version = browser.post(f"{HOME}/{user.id}", {"email": "x@example.org"})
    assert no_version.status_code == 422
    bad_version = browser.post(f"{HOME}/{user.id}", {"email": "x@example.org", "version": "-1"})
    assert bad_version.status_code == 422
    assert stored(registry, user.id) == user


def test_edit_with_a_stale_version_shows_the_conflict(registry: Registry, app: Any) -> None:
    browser, _ = signed_in(registry, app)
    user = make_user(registry, "shared@example.org", "Original")
    browser.get(f"{HOME}/{user.id}")
    theirs = registry.users.update(user.id, UserChanges(full_name="Theirs"))
    mine = {"email": "shared@example.org", "full_name": "Mine", "is_active": "on"}
    answer = browser.post(f"{HOME}/{user.id}", {**mine, "version": str(user.version)})
    assert answer.status_code == 409
    assert 'class="error conflict"' in answer.text
    assert "Theirs" in details(answer)  # what is stored now
    assert input_value(answer.text, "full_name") == "Mine"  # what was typed, kept
    assert input_value(answer.text, "version") == str(theirs.version)
    assert current(registry, user.id).full_name == "Theirs"

    again = browser.post(
        f"{HOME}/{user.id}", {**mine, "version": input_value(answer.text, "version") or ""}
    )
    assert again.status_code == 303
    assert current(registry, user.id).full_name == "Mine"


# ------------------------------------------------------------------ delete, restore, purge


def test_delete_restore_purge(registry: Registry, app: Any) -> None:
    browser, _ = signed_in(registry, app)
    user = make_user(registry)
    page = browser.get(f"{HOME}/{user.id}")
    version = input_value(page.text.split('id="delete-user"', 1)[1], "version")
    assert version == str(user.version)

    answer = browser.post(f"{HOME}/{user.id}/delete", {"version": version})
    assert answer.status_code == 303
    assert answer.headers["Location"] == f"{HOME}/{user.id}"
    assert current(registry, user.id).deleted_at is not None
    page = browser.get(f"{HOME}/{user.id}")
    assert "Deleted" in page.text
    assert 'id="restore-user"' in page.text

    answer = browser.post(f"{HOME}/{user.id}/restore")
    assert answer.status_code == 303
    assert current(registry, user.id).deleted_at is None

    registry.users.delete(user.id)
    browser.get(f"{HOME}/{user.id}")
    unconfirmed = browser.post(f"{HOME}/{user.id}/purge")
    assert unconfirmed.status_code == 422
    assert "confirm" in unconfirmed.text
    assert stored(registry, user.id) is not None
    assert browser.post(f"{HOME}/{user.id}/purge", {"confirm": "no"}).status_code == 422
    assert stored(registry, user.id) is not None
    answer = browser.post(f"{HOME}/{user.id}/purge", {"confirm": "yes"})
    assert answer.status_code == 303
    assert answer.headers["Location"] == HOME
    assert stored(registry, user.id) is None
    assert browser.get(f"{HOME}/{user.id}").status_code == 404

    # A delete at a stale version deletes nothing and shows what changed.
    user = make_user(registry, full_name="Before")
    browser.get(f"{HOME}/{user.id}")
    registry.users.update(user.id, UserChanges(full_name="Changed meanwhile"))
    answer = browser.post(f"{HOME}/{user.id}/delete", {"version": str(user.version)})
    assert answer.status_code == 409
    assert 'class="error conflict"' in answer.text
    assert "Changed meanwhile" in details(answer)
    assert current(registry, user.id).deleted_at is None

    # Only a deleted user is purged.
    answer = browser.post(f"{HOME}/{user.id}/purge", {"confirm": "yes"})
    assert answer.status_code == 404  # purge_user: "delete it first"
    assert stored(registry, user.id) is not None


#: Versions a form may carry that name no version: the API's ``If-Match`` never matches them.
UNREADABLE_VERSIONS = ["abc", "-1", " 1", "1.0", "\u00b2", "9" * 30]


def test_versions_are_read_as_the_api_reads_if_match(registry: Registry, app: Any) -> None:
    """A version that names none is refused (409 or 422), never taken as "unconditional".

    The API answers ``If-Match: "abc"`` (or ``"01"``, ``"²"``) with 412 and
    writes nothing; the console's hidden ``version`` field stands for it. Only
    a missing field may mean unconditional, as a missing ``If-Match`` does.
    (``"01"`` and a full-width one, read as 1 by the console and refused
    by the API, are left out: lenient, not harmful.)
    """
    browser, key = signed_in(registry, app)
    client = api(app, key)
    browser.get(HOME)
    wrong = []
    for version in UNREADABLE_VERSIONS:
        api_answer = client.simulate_delete(
            f"/api/v1/users/{make_user(registry).id}", headers={"If-Match": f'"{version}"'}
        )
        assert api_answer.status_code == 412, version
        for what in ("edit", "delete"):
            victim = make_user(registry, full_name="Kept")
            path, fields = (
                (f"{HOME}/{victim.id}", {"email": victim.email, "full_name": "Changed"})
                if what == "edit"
                else (f"{HOME}/{victim.id}/delete", {})
            )
            try:
                status: Any = browser.post(path, {**fields, "version": version}).status_code
            except AssertionError:  # Browser's check: no 5xx
                status = "5xx"
            unchanged = stored(registry, victim.id) == victim
            if status not in (409, 422) or not unchanged:
                wrong.append(f"{what} at version {version!r}: {status}, unchanged: {unchanged}")
    assert not wrong, "\n".join(wrong)


def test_history_panel(registry: Registry, app: Any) -> None:
    admin, _ = signed_in(registry, app, "admin")
    admin.get(f"{HOME}/new")
    created = admin.post(HOME, {"email": "hist@example.org", "full_name": "Hist"})
    user_path = created.headers["Location"]
    user_id = uuid.UUID(user_path.rsplit("/", 1)[1])
    admin.get(user_path)
    admin.post(user_path, {"email": "hist@example.org", "full_name": "Story", "version": "1"})
    # An event is listed once every older transaction in the cluster has ended: beside
    # other suites' transactions, that may take longer than a page's own wait.
    trail_of(registry).catch_up(wait=30)
    page = admin.get(user_path)
    panel = page.text.split('id="history"', 1)[1]
    assert "user.created" in panel
    assert "user.updated" in panel
    assert panel.index("user.updated") < panel.index("user.created")  # newest first
    assert "Story" in panel

    editor, _ = signed_in(registry, app, "editor")
    assert 'id="history"' not in editor.get(f"{HOME}/{user_id}").text


# ----------------------------------------------------------------------------- API keys


def test_create_a_key_shows_its_secret_once(registry: Registry, app: Any) -> None:
    browser, _ = signed_in(registry, app, "admin")
    keys = api_keys.service(registry)
    browser.get(KEYS)
    answer = browser.post(KEYS, {"name": "billing service", "role": "viewer"})
    assert answer.status_code == 201
    found = re.search(r'<code id="new-key-secret">([^<]+)</code>', answer.text)
    assert found
    secret = found.group(1)
    assert secret.startswith("up_")
    assert answer.text.count(secret) == 1
    [record] = [k for k in keys.list() if k.name == "billing service"]
    assert record.role == "viewer"
    assert record.expires_at is None

    client = api(app, secret)
    assert client.simulate_get("/api/v1/users").status_code == 200
    assert client.simulate_post("/api/v1/users", json={"email": unique_email()}).status_code == 403

    listing = browser.get(KEYS)
    assert listing.status_code == 200
    assert f'data-key-id="{record.id}"' in listing.text
    assert secret not in listing.text
    assert secret[3:] not in listing.text
    assert record.secret_hash not in listing.text
    assert f"up_{record.lookup}" in listing.text  # only its public prefix

    dated = browser.post(KEYS, {"name": "dated", "role": "editor", "expires_in_days": "30"})
    assert dated.status_code == 201
    [record] = [k for k in keys.list() if k.name == "dated"]
    assert record.expires_at is not None
    assert abs(record.expires_at - record.created_at - timedelta(days=30)) < timedelta(minutes=1)


INVALID_KEYS = [
    ({"name": "", "role": "viewer"}, "name"),
    ({"name": "   ", "role": "viewer"}, "name"),
    ({"name": "x" * 101, "role": "viewer"}, "name"),
    ({"name": "tab\there", "role": "viewer"}, "name"),
    ({"name": "ok", "role": "superuser"}, "role"),
    ({"name": "ok", "role": ""}, "role"),
    ({"name": "ok", "role": "viewer", "expires_in_days": "0"}, "expires_in_days"),
    ({"name": "ok", "role": "viewer", "expires_in_days": "-1"}, "expires_in_days"),
    ({"name": "ok", "role": "viewer", "expires_in_days": "1.5"}, "expires_in_days"),
    ({"name": "ok", "role": "viewer", "expires_in_days": "10000"}, "expires_in_days"),
    ({"name": "ok", "role": "viewer", "expires_in_days": "9" * 40}, "expires_in_days"),
    # str.isdigit() is true of these, int() cannot read them (or will not, past 4300 digits).
    ({"name": "ok", "role": "viewer", "expires_in_days": "\u00b2"}, "expires_in_days"),
    ({"name": "ok", "role": "viewer", "expires_in_days": "9" * 5000}, "expires_in_days"),
]


def test_create_key_refuses_invalid_input(registry: Registry, app: Any) -> None:
    browser, _ = signed_in(registry, app, "admin")
    before = snapshot(registry)
    browser.get(KEYS)
    wrong = []
    for fields, field in INVALID_KEYS:
        try:
            answer = browser.post(KEYS, fields)
            assert answer.status_code == 422, answer.status_code
            assert field_error(answer.text, field), answer.text
            assert 'id="new-key-secret"' not in answer.text
            if field != "name":
                assert input_value(answer.text, "name") == fields["name"]  # kept
            assert snapshot(registry) == before
        except AssertionError as exc:
            wrong.append(f"{shorten(fields)}: {shorten(str(exc).splitlines()[-1], 100)}")
    assert not wrong, "\n".join(wrong)


def test_revoking_a_key_stops_it(registry: Registry, app: Any) -> None:
    browser, own = signed_in(registry, app, "admin")
    victim_key = new_key(registry, "editor")
    client = api(app, victim_key)
    assert client.simulate_get("/api/v1/users").status_code == 200
    victim = next(
        k for k in api_keys.service(registry).list() if victim_key.startswith(f"up_{k.lookup}")
    )
    listing = browser.get(KEYS)
    assert f'action="/admin/keys/{victim.id}/revoke"' in listing.text
    answer = browser.post(f"{KEYS}/{victim.id}/revoke")
    assert answer.status_code == 303
    assert answer.headers["Location"] == KEYS
    assert api_keys.service(registry).get(victim.id).revoked_at is not None
    assert client.simulate_get("/api/v1/users").status_code == 401
    listing = browser.get(KEYS)
    assert "Revoked the key" in listing.text
    assert f'action="/admin/keys/{victim.id}/revoke"' not in listing.text
    assert api(app, own).simulate_get("/api/v1/users").status_code == 200


def test_keys_list_with_a_bad_cursor(registry: Registry, app: Any) -> None:
    """As the user list answers it: 422, the error shown, no 500."""
    browser, _ = signed_in(registry, app, "admin")
    answer = browser.get(f"{KEYS}?after=garbage")
    assert answer.status_code == 422, answer.status_code
    assert "Page:" in answer.text


# ----------------------------------------------------------------------------- pages and escaping


def test_every_page_and_error_keeps_its_status(registry: Registry, app: Any) -> None:
    """Each kind of page and error page, through ``Browser``'s checks: CSP, no-store, no inline
    code, no 5xx; errors are HTML pages with their status kept."""
    browser, _ = signed_in(registry, app, "admin")
    viewer, _ = signed_in(registry, app, "viewer")
    user = make_user(registry)
    gone = deleted_user(registry)
    assert browser.get(HOME).status_code == 200
    assert browser.get(f"{HOME}/new").status_code == 200
    assert browser.get(f"{HOME}/{user.id}").status_code == 200
    assert browser.get(f"{HOME}/{gone.id}").status_code == 200
    assert browser.get(KEYS).status_code == 200
    assert browser.post(KEYS, {"name": "k", "role": "viewer"}).status_code == 201
    assert browser.client.simulate_head(HOME, headers=browser._headers()).status_code == 200
    assert viewer.get(KEYS).status_code == 403
    assert browser.get(SIGN_OUT).status_code == 405
    assert browser.post(HOME, {"email": "bad"}).status_code == 422
    assert browser.post(HOME, {"email": user.email}).status_code == 409
    assert Browser(app).get(SIGN_IN).status_code == 200
    assert Browser(app).get(HOME).status_code == 303

    # Unknown users and paths: 404 pages, for reading and for every form.
    before = snapshot(registry)
    nobody = uuid.uuid4()
    for path in (f"{HOME}/{nobody}", f"{HOME}/not-a-uuid", "/admin/nothing-here"):
        page = browser.get(path)
        assert page.status_code == 404, path
        assert page.headers["Content-Type"].startswith("text/html")
        assert h1(page) == "Not found"
    browser.get(HOME)
    for path, fields in [
        (f"{HOME}/{nobody}", {"email": "x@example.org", "version": "1"}),
        (f"{HOME}/{nobody}/delete", {"version": "1"}),
        (f"{HOME}/{nobody}/restore", {}),
        (f"{HOME}/{nobody}/purge", {"confirm": "yes"}),
        (f"{KEYS}/{nobody}/revoke", {}),
    ]:
        answer = browser.post(path, fields)
        assert answer.status_code == 404, (path, answer.text)
        assert h1(answer) == "Not found"
    assert snapshot(registry) == before


def test_user_data_is_escaped(registry: Registry, app: Any) -> None:
    browser, key = signed_in(registry, app, "admin")
    name = "<script>alert(1)</script>"
    created = api(app, key).simulate_post(
        "/api/v1/users", json={"email": unique_email("xss"), "full_name": name}
    )
    assert created.status_code == 201, created.text
    user_id = created.json["id"]
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    for path in (HOME, f"{HOME}/{user_id}", f"{HOME}?q=script"):
        page = browser.get(path)
        assert escaped in page.text, path
        assert name not in page.text, path
    tricky = '"><script>alert(2)</script><x a="'
    page = browser.get(f"{HOME}?" + urllib.parse.urlencode({"q": tricky}))
    assert input_value(page.text, "q") == tricky
    assert "<script>alert(2)" not in page.text
    assert '"><script' not in page.text


_NAME = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.sampled_from("éßЖ漢字—\u2019"),
    min_size=1,
    max_size=40,
).filter(lambda s: s == s.strip() and s.strip())


@hypothesis_settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(name=_NAME)
def test_full_names_round_trip_escaped(registry: Registry, app: Any, name: str) -> None:
    browser = Browser(app)
    assert browser.sign_in_with(new_key(registry)).status_code == 303
    browser.get(f"{HOME}/new")
    answer = browser.post(HOME, {"email": unique_email("rt"), "full_name": name})
    assert answer.status_code == 303, (name, answer.text)
    user_id = uuid.UUID(answer.headers["Location"].rsplit("/", 1)[1])
    assert current(registry, user_id).full_name == name
    page = browser.get(answer.headers["Location"])
    assert str(markupsafe.escape(name)) in details(page)
    assert input_value(page.text, "full_name") == name


# ----------------------------------------------------------------------------- static assets


def test_static_assets(registry: Registry, app: Any) -> None:
    anonymous = Browser(app)
    for name, kind in (("console.css", "text/css"), ("console.js", "javascript")):
        answer = anonymous.get(f"/admin/static/{name}")
        assert answer.status_code == 200, name
        assert kind in answer.headers["Content-Type"]
        assert answer.text.strip()
    for path in (
        "/admin/static/../gate.py",
        "/admin/static/%2e%2e/gate.py",
        "/admin/static/..%2fgate.py",
        "/admin/static/..%5cgate.py",
        "/admin/static/../templates/base.html",
        "/admin/static/./../__init__.py",
        "/admin/static/nothing.css",
    ):
        answer = anonymous.get(path)
        assert answer.status_code == 404, path
        assert "import" not in answer.text
        assert "{%" not in answer.text
