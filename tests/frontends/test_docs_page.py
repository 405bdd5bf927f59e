"""The pages for people: ``/docs`` (Swagger UI, offline, under its own CSP) and ``/``."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

import falcon
import pytest
from falcon import testing

from userplane import Registry
from userplane.frontends.http import create_app
from userplane.frontends.http.docs import ASSETS
from userplane.frontends.http.middleware import SecurityHeaders

#: Pinned here rather than imported: a change to either policy should be a decision.
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
DEFAULT_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)

#: Elements without an end tag.
VOID = frozenset({"meta", "link", "br", "hr", "img", "input", "source", "wbr"})

#: What a same-origin asset must be served as, by its suffix.
CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


class Page(HTMLParser):
    """The parts of an HTML page these tests look at."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.inline_scripts = 0
        self._in: list[str] = []
        self.texts: dict[str, list[str]] = {}
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))
        if tag not in VOID:
            self._in.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in self._in:
            del self._in[len(self._in) - 1 - self._in[::-1].index(tag) :]

    def handle_data(self, data: str) -> None:
        for tag in self._in:
            self.texts.setdefault(tag, []).append(data)
        if self._in and self._in[-1] == "script" and data.strip():
            self.inline_scripts += 1

    def attrs(self, tag: str) -> list[dict[str, str]]:
        return [attrs for name, attrs in self.tags if name == tag]

    def text(self, tag: str) -> str:
        return "".join(self.texts.get(tag, []))

    @property
    def hrefs(self) -> list[str]:
        return [a["href"] for a in self.attrs("a")]

    @property
    def subresources(self) -> list[str]:
        """What the browser loads with the page: scripts, stylesheets, icons."""
        return [s["src"] for s in self.attrs("script") if "src" in s] + [
            link["href"] for link in self.attrs("link")
        ]


def assert_no_inline_code(page: Page) -> None:
    """Nothing a Content-Security-Policy without 'unsafe-inline' would block."""
    assert page.inline_scripts == 0
    assert all(s.get("src") for s in page.attrs("script")), "a <script> without src"
    assert page.attrs("style") == [], "a <style> element"
    for tag, attrs in page.tags:
        assert "style" not in attrs, f"a style attribute on <{tag}>"
        assert not [a for a in attrs if a.startswith("on")], f"an event handler on <{tag}>"
        for value in attrs.values():
            assert not value.strip().lower().startswith("javascript:"), tag


@pytest.fixture
def anonymous(registry: Registry) -> testing.TestClient:
    """The pages are public: a browser sends no credentials for them."""
    return testing.TestClient(create_app(registry))


@pytest.fixture
def docs(anonymous: testing.TestClient) -> testing.Result:
    return anonymous.simulate_get("/docs")


# ------------------------------------------------------------------------------------ /docs


def test_the_docs_page_is_html_under_its_own_policy(docs: testing.Result) -> None:
    assert docs.status_code == 200
    assert docs.headers["Content-Type"] == "text/html; charset=utf-8"
    assert docs.headers["Content-Security-Policy"] == DOCS_CSP
    assert docs.headers["X-Frame-Options"] == "DENY"
    assert docs.headers["X-Content-Type-Options"] == "nosniff"


def test_the_docs_page_loads_swagger_ui_and_our_initializer(docs: testing.Result) -> None:
    page = Page(docs.text)
    scripts = [s["src"] for s in page.attrs("script")]
    assert scripts == [f"{ASSETS}/swagger-ui-bundle.js", "/static/docs.js"]
    # defer keeps their order and runs them once the page (and #swagger-ui) is parsed.
    assert all("defer" in s for s in page.attrs("script"))
    stylesheets = [x["href"] for x in page.attrs("link") if x.get("rel") == "stylesheet"]
    assert f"{ASSETS}/swagger-ui.css" in stylesheets
    assert [d for d in page.attrs("div") if d.get("id") == "swagger-ui"]


def test_the_docs_page_loads_only_same_origin_files_and_each_is_served(
    anonymous: testing.TestClient, docs: testing.Result
) -> None:
    page = Page(docs.text)
    assert len(page.subresources) >= 4
    for url in page.subresources:
        # A path on this server: not another origin, not scheme-relative, not data.
        assert url.startswith("/"), url
        assert not url.startswith("//"), url
        resp = anonymous.simulate_get(url)
        assert resp.status_code == 200, url
        suffix = url[url.rindex(".") :]
        assert resp.headers["Content-Type"].split(";")[0] == CONTENT_TYPES[suffix], url
        assert resp.headers["X-Content-Type-Options"] == "nosniff", url
    assert "http://" not in docs.text
    assert "https://" not in docs.text


def test_the_docs_page_has_no_inline_script_or_style(docs: testing.Result) -> None:
    assert_no_inline_code(Page(docs.text))


def test_the_initializer_reads_our_document_and_nothing_off_site(
    anonymous: testing.TestClient,
) -> None:
    script = anonymous.simulate_get("/static/docs.js").text
    assert 'url: "/api/v1/openapi.json"' in script
    assert 'dom_id: "#swagger-ui"' in script
    assert "validatorUrl: null" in script  # else swagger.io is sent the document
    assert "persistAuthorization: false" in script  # keys stay out of localStorage
    assert "://" not in script  # no other origin


def test_the_docs_page_says_how_to_authenticate_and_links_home(docs: testing.Result) -> None:
    page = Page(docs.text)
    header = page.text("header")
    assert "Authorize" in header
    assert "up_…" in header
    assert "userplane keys create --name me --role admin" in header
    assert "/api/v1/openapi.json" in page.hrefs
    assert "/" in page.hrefs
    # Without JavaScript, the way to the document.
    assert '<a href="/api/v1/openapi.json">' in docs.text.split("<noscript>")[1]


def test_swagger_ui_files_are_cached_for_a_year(anonymous: testing.TestClient) -> None:
    url = f"{ASSETS}/swagger-ui-bundle.js"
    resp = anonymous.simulate_get(url)
    assert resp.status_code == 200
    assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert "SwaggerUIBundle" in resp.text
    again = anonymous.simulate_get(url, headers={"If-None-Match": resp.headers["ETag"]})
    assert again.status_code == 304
    assert again.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    head = anonymous.simulate_head(f"{ASSETS}/swagger-ui.css")
    assert head.status_code == 200
    assert head.content == b""


@pytest.mark.parametrize(
    "path",
    [
        "/docs/assets/../../x",
        "/docs/assets/../../../pyproject.toml",
        f"{ASSETS}/../../__init__.py",
        f"{ASSETS}/..%2f..%2f__init__.py",
        f"{ASSETS}/%2e%2e/%2e%2e/__init__.py",
        f"{ASSETS}/swagger-ui.css/../../../__init__.py",
        f"{ASSETS}//etc/passwd",
        # In the bundle's directory, but not what /docs needs: the demo page and its
        # initializer would open Swagger's pet store from the internet.
        f"{ASSETS}/index.html",
        f"{ASSETS}/swagger-initializer.js",
        f"{ASSETS}/oauth2-redirect.html",
        f"{ASSETS}/",
        f"{ASSETS}",
        "/docs/assets/swagger-ui-0.0.0/swagger-ui.css",
        "/docs/assets",
    ],
)
def test_asset_paths_cannot_leave_the_listed_files(
    anonymous: testing.TestClient, path: str
) -> None:
    resp = anonymous.simulate_get(path)
    assert resp.status_code == 404
    assert resp.headers["Content-Type"] == "application/problem+json"
    assert "import" not in resp.text


# ------------------------------------------------------------------------------------ /


def test_the_home_page_links_where_a_browser_can_go(
    anonymous: testing.TestClient, registry: Registry
) -> None:
    resp = anonymous.simulate_get("/")
    page = Page(resp.text)
    hrefs = page.hrefs
    for target in ("/admin", "/docs", "/api/v1/openapi.json", "/health/live", "/health/ready"):
        assert target in hrefs
    # An API route answers a browser with a 401: the home page does not send people there.
    assert not [h for h in hrefs if h.startswith("/api/v1/users")]
    assert [a for a in page.attrs("a") if a["href"] == "/admin" and "button" in a.get("class", "")]
    assert registry.storage.name in page.text("dd")


def test_the_home_page_shows_how_to_call_the_api(anonymous: testing.TestClient) -> None:
    resp = anonymous.simulate_get("/")
    page = Page(resp.text)
    usage = page.text("code")
    assert "userplane keys create --name me --role admin" in usage
    assert 'curl -H "Authorization: Bearer up_…" https://<this host>/api/v1/users/' in usage
    # Text, not markup: the placeholder host is escaped in the page.
    assert "&lt;this host&gt;" in resp.text


def test_the_home_page_fits_a_phone_and_keeps_the_strict_policy(
    anonymous: testing.TestClient,
) -> None:
    resp = anonymous.simulate_get("/")
    assert resp.headers["Content-Security-Policy"] == DEFAULT_CSP
    assert resp.headers["X-Frame-Options"] == "DENY"
    page = Page(resp.text)
    viewports = [m for m in page.attrs("meta") if m.get("name") == "viewport"]
    assert viewports == [{"name": "viewport", "content": "width=device-width, initial-scale=1"}]
    assert page.attrs("script") == []
    assert_no_inline_code(page)
    for url in page.subresources:
        assert anonymous.simulate_get(url).status_code == 200, url


# ------------------------------------------------------------------ the middleware's CSP


class _Page:
    """An HTML page; with ``csp``, one that states its own policy."""

    def __init__(self, csp: str | None = None) -> None:
        self._csp = csp

    def on_get(self, req: falcon.Request, resp: falcon.Response, **params: Any) -> None:
        resp.content_type = "text/html; charset=utf-8"
        if self._csp is not None:
            resp.set_header("Content-Security-Policy", self._csp)
        resp.text = "<!doctype html><title>t</title>"


def test_a_page_that_sets_its_own_policy_keeps_it() -> None:
    app = falcon.App(middleware=[SecurityHeaders()])
    app.add_route("/own", _Page("default-src 'none'; script-src 'self'"))
    app.add_route("/plain", _Page())
    client = testing.TestClient(app)
    own = client.simulate_get("/own")
    assert own.headers["Content-Security-Policy"] == "default-src 'none'; script-src 'self'"
    assert own.headers["X-Frame-Options"] == "DENY"
    plain = client.simulate_get("/plain")
    assert plain.headers["Content-Security-Policy"] == DEFAULT_CSP
    assert plain.headers["X-Frame-Options"] == "DENY"
