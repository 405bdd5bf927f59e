"""The Falcon application: ``create_app(registry)`` wires it, ``get_app()`` is for gunicorn."""

from __future__ import annotations

from typing import Any

import falcon

from userplane.frontends.http import media, problems
from userplane.frontends.http.auth import App, Authenticate
from userplane.frontends.http.docs import Docs, OpenApi, SwaggerAssets
from userplane.frontends.http.groups import (
    GroupResource,
    GroupsResource,
    MemberResource,
    MembersResource,
    UserGroupsResource,
)
from userplane.frontends.http.middleware import (
    JSON_TYPES,
    BodyPolicy,
    Cors,
    ReplicaReads,
    RequestId,
    SecurityHeaders,
    ShedLoad,
)
from userplane.frontends.http.openapi import document, tag_operations
from userplane.frontends.http.pages import STATIC, Home, Live, Ready
from userplane.frontends.http.users import (
    ExportResource,
    RestoreResource,
    UserResource,
    UsersResource,
)
from userplane.registry import Registry
from userplane.replicas import POSITION_HEADER, RecentWriters

#: Headers a browser script may read on a cross-origin response.
EXPOSED_HEADERS = [
    "ETag",
    "Location",
    "Link",
    "RateLimit",
    "RateLimit-Policy",
    "Retry-After",
    "X-Request-ID",
    POSITION_HEADER,
]


def create_app(registry: Registry) -> falcon.App[Any, Any]:
    """A WSGI app serving ``registry``'s services; the caller owns the registry's lifetime."""
    settings = registry.settings
    middleware: list[Any] = [RequestId()]
    origins = settings.allowed_origins
    if origins:
        middleware.append(
            Cors(
                allow_origins="*" if "*" in origins else list(origins),
                expose_headers=EXPOSED_HEADERS,
            )
        )
    middleware.extend(registry.hooks.http_middleware(settings, registry))
    route_actions: dict[str, dict[str, str]] = {}
    form_prefixes: set[str] = set()
    middleware += [
        # Inside the plugins' layers, so a refused request is still logged and
        # traced; before everything else of ours, so refusing it costs little.
        ShedLoad(settings.queue_timeout_ms / 1000),
        SecurityHeaders(),
        BodyPolicy(settings.max_body_bytes, settings.body_timeout_ms / 1000, form_prefixes),
        guard := Authenticate(
            registry.auth, route_actions, settings.trusted_proxies, settings.forwarded_header
        ),
    ]

    replicas = getattr(registry.storage, "read_replicas", None)
    if replicas is not None:
        writers = RecentWriters(settings.db_read_your_writes_ms / 1000)
        # The very set: the console's prefix joins it as its routes are added.
        middleware.append(ReplicaReads(replicas, writers, form_prefixes))

    app = App(middleware=middleware)
    app.guard = guard
    app.route_actions = route_actions
    # Where a plugin's pages take HTML form posts (the console adds /admin); JSON elsewhere.
    app.form_prefixes = form_prefixes
    app.req_options.strip_url_path_trailing_slash = True
    # Query strings are parsed strictly: repeated keys stay lists, blanks are kept.
    app.req_options.auto_parse_qs_csv = False
    app.req_options.keep_blank_qs_values = True
    handlers = media.handlers()
    # Requests are read in the JSON types only (BodyPolicy refuses others before a
    # handler runs); a plugin's routes may add theirs (SCIM's application/scim+json).
    app.req_options.media_handlers = falcon.media.Handlers(
        {t: h for t, h in handlers.items() if t in JSON_TYPES}
    )
    app.resp_options.media_handlers = falcon.media.Handlers(handlers)
    problems.install(app, registry.auth.challenges)

    app.add_route("/", home := Home(registry))
    doc = document(registry.auth.roles)
    registry.hooks.openapi(doc, registry)
    tag_operations(doc)
    app.add_route("/docs", Docs())
    app.add_sink(SwaggerAssets(), SwaggerAssets.prefix)
    app.add_route("/api/v1/openapi.json", OpenApi(doc))
    app.add_route("/health/live", Live())
    app.add_route("/health/ready", Ready(registry))
    app.add_route(
        "/api/v1/users", UsersResource(registry.users, registry.idempotency, registry.auth)
    )
    app.add_route("/api/v1/users/export", ExportResource(registry.users, registry.auth))
    app.add_route("/api/v1/users/{user_id:uuid}", UserResource(registry.users, registry.auth))
    app.add_route("/api/v1/users/{user_id:uuid}/restore", RestoreResource(registry.users))
    app.add_route(
        "/api/v1/users/{user_id:uuid}/groups", UserGroupsResource(registry.groups, registry.users)
    )
    app.add_route("/api/v1/groups", GroupsResource(registry.groups))
    app.add_route("/api/v1/groups/{group_id:uuid}", GroupResource(registry.groups))
    app.add_route("/api/v1/groups/{group_id:uuid}/members", MembersResource(registry.groups))
    app.add_route(
        "/api/v1/groups/{group_id:uuid}/members/{user_id:uuid}",
        MemberResource(registry.groups, registry.users),
    )
    app.add_static_route("/static", str(STATIC))
    registry.hooks.http_routes(app, registry)
    # The route table, not falcon.inspect: that reads every responder's source (280 ms).
    home.link_console("/admin" in route_actions)
    return app


def get_app() -> falcon.App[Any, Any]:
    """The app for the settings in the environment, for plain gunicorn.

    ``gunicorn 'userplane.frontends.http:get_app()'``

    Called in each gunicorn worker (unless ``--preload``), so every worker has
    its own registry and connections.
    """
    registry = Registry.from_env()
    app = create_app(registry)
    registry.hooks.serving(registry)
    return app
