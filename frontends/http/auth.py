"""Authentication, authorization and rate limits at the HTTP edge.

Every resource declares, in its ``actions`` class attribute, the action each
of its methods needs (``{"GET": "users:read"}``) or ``PUBLIC``. ``App`` refuses
a route whose resource leaves a responder undeclared, so no route can be added
without a decision, a plugin's included; a sink (``add_sink``) declares its
actions the same way and is checked by a guard wrapped around it. ``Authenticate``
then checks every request before its responder runs, counts it against the
caller's rate limit, and puts the limit's state in the ``RateLimit`` headers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import falcon
import falcon.routing

from userplane.auth import AuthService, Credentials, reset_principal, set_principal
from userplane.changes import RequestContext, reset_request_context, set_request_context
from userplane.errors import ConfigurationError, Forbidden, RateLimited
from userplane.limits import READ, WRITE, Quota
from userplane.proxies import ForwardedHeader, parse_client_certificate, trusted_proxies

#: The action of a route anyone may call (health, docs, the home page).
PUBLIC = "public"

#: The rate-limit class of each method; anything else changes state.
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _with_head(actions: Mapping[str, str]) -> dict[str, str]:
    out = dict(actions)
    if "GET" in out:
        out.setdefault("HEAD", out["GET"])  # HEAD is a GET without the body
    return out


def required_actions(resource: Any, suffix: str | None = None) -> dict[str, str]:
    """The action each of ``resource``'s methods needs; ``ConfigurationError`` on a gap.

    A resource's own ``on_options`` needs a declared action like any other
    responder; only Falcon's default OPTIONS answer (CORS preflight) is public.
    """
    actions = _with_head(getattr(resource, "actions", None) or {})
    methods = set(falcon.routing.map_http_methods(resource, suffix=suffix))
    missing = sorted(methods - set(actions))
    if missing:
        raise ConfigurationError(
            f"{type(resource).__name__} does not declare the action for {', '.join(missing)}: "
            "give it an `actions` mapping of method to action (or PUBLIC)"
        )
    return actions


def sink_actions(sink: Any) -> dict[str, str]:
    """The action each method needs of a sink; a sink without ``actions`` is refused."""
    actions = getattr(sink, "actions", None)
    if not isinstance(actions, Mapping) or not actions:
        name = getattr(sink, "__name__", type(sink).__name__)
        raise ConfigurationError(
            f"the sink {name} declares no actions: give it an `actions` mapping of method "
            "to action (or PUBLIC), as routes have"
        )
    return _with_head(actions)


class App(falcon.App):  # type: ignore[type-arg]
    """A Falcon app that refuses a route or sink without declared actions.

    ``route_actions`` maps each route's URI template to its methods' actions,
    worked out once here rather than on every request. ``guard`` is the
    ``Authenticate`` middleware that sinks are checked by (``create_app``
    sets it); a sink reached without one is refused.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.route_actions: dict[str, dict[str, str]] = {}
        self.guard: Authenticate | None = None
        #: Path prefixes under which HTML forms may be posted (``BodyPolicy``).
        self.form_prefixes: set[str] = set()

    def add_route(self, uri_template: str, resource: object, **kwargs: Any) -> None:
        actions = required_actions(resource, kwargs.get("suffix"))
        super().add_route(uri_template, resource, **kwargs)
        self.route_actions[uri_template] = actions

    def add_sink(self, sink: Callable[..., Any], prefix: Any = r"/") -> None:
        actions = sink_actions(sink)

        def guarded(req: falcon.Request, resp: falcon.Response, **params: Any) -> Any:
            # Sinks never reach process_resource with a resource, so the
            # middleware cannot check them: the guard does, before the sink runs.
            if self.guard is None:
                raise Forbidden("this route is not guarded")
            action = actions.get(req.method)
            if action is None:
                raise falcon.HTTPMethodNotAllowed(sorted(actions))
            self.guard.check(req, action, params)
            return sink(req, resp, **params)

        super().add_sink(guarded, prefix)


class _HeadersView(Mapping[str, str]):
    """A request's headers by lowercased name, built only if a plugin looks past ``Authorization``.

    Falcon builds its header dict on first access: most requests never need it.
    """

    __slots__ = ("_req",)

    def __init__(self, req: falcon.Request) -> None:
        self._req = req

    def __getitem__(self, name: str) -> str:
        value = self._req.get_header(name)
        if value is None:
            raise KeyError(name)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._req.headers_lower)

    def __len__(self) -> int:
        return len(self._req.headers_lower)


class Authenticate:
    """Falcon middleware: who is calling (401), and may they do this (403).

    Fails closed: a routed request whose route has no entry in the action
    table is refused (static files aside, which are public).
    """

    def __init__(
        self,
        auth: AuthService,
        route_actions: Mapping[str, Mapping[str, str]],
        proxies: tuple[str, ...] = (),
        forwarded_header: ForwardedHeader = "x-forwarded-for",
    ) -> None:
        self._auth = auth
        self._route_actions = route_actions
        self._proxies = trusted_proxies(tuple(proxies), forwarded_header)

    def process_resource(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, params: dict[str, Any]
    ) -> None:
        if resource is None:
            return  # no route (a 404 follows), or a sink (its guard checks it)
        actions = self._route_actions.get(req.uri_template or "")
        if actions is None:
            if isinstance(resource, falcon.routing.StaticRoute):
                return
            raise Forbidden("this route declares no action")
        action = actions.get(req.method)
        if action is None or action == PUBLIC:
            # A method the resource does not answer (Falcon's 405), Falcon's own
            # OPTIONS answer (CORS preflight), or public.
            return
        self.check(req, action, params)

    def check(self, req: falcon.Request, action: str, params: Mapping[str, Any]) -> None:
        """Authenticate ``req``, count it against its rate limit, and authorize ``action``."""
        if action == PUBLIC:
            return
        credentials = self.credentials(req)
        # Where the request came from, for the records of what it changes.
        req.context.context_token = set_request_context(
            RequestContext(req.context.get("request_id"), credentials.client_address)
        )
        try:
            principal = self._auth.authenticate(credentials)
            req.context.principal = principal
            req.context.principal_token = set_principal(principal)
            kind = READ if req.method in _READ_METHODS else WRITE
            req.context.rate_quota = self._auth.admit(principal, kind, credentials.client_address)
        except RateLimited as exc:
            req.context.rate_quota = exc.quota
            raise
        self._auth.authorize(principal, action, params.get("user_id"))

    def credentials(self, req: falcon.Request) -> Credentials:
        """What ``req`` presents, with the client address resolved through trusted proxies.

        Forwarding headers, and a forwarded client certificate, count only when
        the direct peer is a trusted proxy; without trusted proxies no header
        is even read.
        """
        peer = req.remote_addr
        client: str | None = peer
        certificate = None
        if self._proxies.trusts(peer):
            client = self._proxies.client_address(
                peer, req.get_header("Forwarded"), req.get_header("X-Forwarded-For")
            )
            forwarded_cert = req.get_header("X-Forwarded-Client-Cert")
            if forwarded_cert:
                certificate = parse_client_certificate(forwarded_cert)
        # A plugin's middleware that authenticated the request another way (the
        # console's session cookie, under /admin only) leaves the credential it
        # stands for here; the request is then checked exactly as that bearer's.
        authorization = req.context.get("authorization") or req.auth
        return Credentials.from_authorization(
            authorization,
            _HeadersView(req),
            client_address=client,
            peer_address=peer,
            client_certificate=certificate,
        )

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, req_succeeded: bool
    ) -> None:
        token = req.context.get("principal_token")
        if token is not None:
            reset_principal(token)
        context_token = req.context.get("context_token")
        if context_token is not None:
            reset_request_context(context_token)
        quota: Quota | None = req.context.get("rate_quota")
        if quota is not None:
            # draft-ietf-httpapi-ratelimit-headers: the policy, and where the caller stands.
            resp.set_header("RateLimit-Policy", quota.policy.policy_header())
            resp.set_header("RateLimit", quota.header())
