"""The ``/scim/v2`` routes: thin Falcon resources over ``Provisioning``.

Every provisioning route needs ``scim:provision``; the discovery documents
(``/ServiceProviderConfig``, ``/Schemas``, ``/ResourceTypes``) are public,
as RFC 7644 §4 allows: they describe the server, not its data. Bodies are
``application/scim+json`` both ways.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Final

import falcon
import orjson

from userplane.frontends.http import PUBLIC
from userplane.plugin import User
from userplane.plugins.scim import schemas
from userplane.plugins.scim.errors import PREFIX, SCIM_JSON, ScimError, bad_request
from userplane.plugins.scim.filters import CORE_GROUP, CORE_USER
from userplane.plugins.scim.projection import Projection, projection
from userplane.plugins.scim.schemas import DEFAULT_COUNT, MAX_RESULTS, SEARCH_SCHEMA
from userplane.plugins.scim.service import Listed, Page, Provisioning, etag, tag_matches

#: The action every provisioning route needs.
PROVISION: Final = "scim:provision"
_LIST_PARAMS: Final = frozenset(
    {
        "filter",
        "startindex",
        "count",
        "cursor",
        "sortby",
        "sortorder",
        "attributes",
        "excludedattributes",
    }
)
_ONE_PARAMS: Final = frozenset({"attributes", "excludedattributes"})
#: The most group members one list answer holds, all its groups together.
MAX_LISTED_MEMBERS: Final = 10_000
#: The greatest startIndex taken: beyond it every list is past its end anyway.
_LAST: Final = 2**31 - 1


def _send(resp: falcon.Response, body: Any, status: int = 200) -> None:
    resp.status = status
    resp.content_type = SCIM_JSON
    resp.data = orjson.dumps(body)


def _params(req: falcon.Request, allowed: frozenset[str]) -> dict[str, str]:
    """The query parameters, by lowercased name; each known one at most once, no other."""
    out: dict[str, str] = {}
    for name, value in req.params.items():
        key = name.lower()
        if key not in allowed:
            raise bad_request(f"{name}: unknown query parameter")
        if isinstance(value, list) or key in out:
            raise bad_request(f"{name}: must be given once")
        out[key] = value
    return out


def _whole(text: str, name: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise bad_request(f"{name}: must be a whole number") from None


def page_of(values: dict[str, Any]) -> Page:
    """``startIndex`` (below 1 is 1), ``count`` (negative is 0, above the most is the most)."""
    start = values.get("startindex")
    count = values.get("count")
    # Past any list there is (and past what JSON numbers carry): the end, said once.
    start_index = 1 if start is None else min(max(1, _whole(str(start), "startIndex")), _LAST)
    size = DEFAULT_COUNT if count is None else _whole(str(count), "count")
    order = values.get("sortorder")
    if order is not None and str(order).lower() not in ("ascending", "descending"):
        raise bad_request("sortOrder: must be ascending or descending")
    sort_by = values.get("sortby")
    if sort_by is not None and not isinstance(sort_by, str):
        raise bad_request("sortBy: must be a string")
    cursor = values.get("cursor")
    if cursor is not None and (not isinstance(cursor, str) or start is not None):
        raise bad_request("cursor: a string, and not with startIndex (RFC 9865)", "invalidCursor")
    return Page(
        start_index=start_index,
        count=min(max(size, 0), MAX_RESULTS),
        sort_by=sort_by,
        descending=order is not None and str(order).lower() == "descending",
        cursor=cursor,
    )


def _text(values: dict[str, Any], name: str) -> str | None:
    value = values.get(name)
    if value is not None and not isinstance(value, str):
        raise bad_request(f"{name}: must be a string")
    return value


def _joined(value: Any, name: str) -> str | None:
    """``attributes`` in a search body is a list of names; in a URL, names joined by commas."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ",".join(value)
    raise bad_request(f"{name}: must be a list of attribute names")


def _search_values(req: falcon.Request) -> dict[str, Any]:
    """A ``SearchRequest`` body (RFC 7644 §3.4.3) as the list's parameters."""
    body = req.get_media()
    if not isinstance(body, dict):
        raise bad_request("the body must be a SearchRequest object", "invalidSyntax")
    schemas_given = body.get("schemas")
    if not isinstance(schemas_given, list) or SEARCH_SCHEMA not in schemas_given:
        raise bad_request(f"schemas: must be [{SEARCH_SCHEMA!r}]", "invalidSyntax")
    values: dict[str, Any] = {}
    for key, value in body.items():
        name = key.lower()
        if name == "schemas":
            continue
        if name not in _LIST_PARAMS:
            raise bad_request(f"{key}: not a search request attribute")
        values[name] = _joined(value, key) if name.endswith("attributes") else value
    return values


class _Base:
    def __init__(self, provisioning: Provisioning, base_url: str | None) -> None:
        self._p = provisioning
        self._base_url = base_url

    def base(self, req: falcon.Request) -> str:
        """The absolute URL of ``/scim/v2``: the configured one, or this request's."""
        return self._base_url or f"{req.prefix}{PREFIX}"


class _Collection(_Base):
    """A list of resources (``schema``) and its creation: what Users and Groups share."""

    actions: ClassVar[dict[str, str]] = {"GET": PROVISION, "POST": PROVISION}
    schema: ClassVar[str]

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """A ``ListResponse``."""
        self.answer(req, resp, _params(req, _LIST_PARAMS))

    def answer(self, req: falcon.Request, resp: falcon.Response, values: dict[str, Any]) -> None:
        """The list for ``values`` (the query's or a search body's)."""
        page = page_of(values)
        shown = projection(
            _text(values, "attributes"), _text(values, "excludedattributes"), self.schema
        )
        listed = self.select(_text(values, "filter"), page)
        base = self.base(req)
        found: list[dict[str, Any]] = []
        members = 0
        for item in listed.items:
            resource = shown.apply(self.resource(item, base, shown))
            members += len(resource.get("members", ()))
            if members > MAX_LISTED_MEMBERS:
                # One page must not list a million memberships: ask for fewer groups, or
                # none of their members (each group's own GET lists them all).
                raise bad_request(
                    f"this page would list more than {MAX_LISTED_MEMBERS} members: ask for a "
                    "smaller count, or excludedAttributes=members",
                    "tooMany",
                )
            found.append(resource)
        _send(resp, _list_body(found, listed, page))

    def select(self, filter_text: str | None, page: Page) -> Listed:
        """The page of resources a filter selects."""
        raise NotImplementedError

    def resource(self, item: Any, base: str, shown: Projection) -> dict[str, Any]:
        """``item`` as a resource, reading only what ``shown`` returns."""
        raise NotImplementedError


class UsersResource(_Collection):
    """``/scim/v2/Users``: list (filter, sort, page) and create."""

    schema = CORE_USER

    def select(self, filter_text: str | None, page: Page) -> Listed:
        """The users a filter selects."""
        return self._p.list_users(filter_text, page)

    def resource(self, item: Any, base: str, shown: Projection) -> dict[str, Any]:
        """A user; its groups only when returned."""
        return self._p.user_resource(item, base, groups=shown.wants("groups"))

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Create a user: 201 with ``Location`` and ``ETag``."""
        shown = _one_projection(req, CORE_USER)
        user = self._p.create_user(req.get_media())
        resource = self._p.user_resource(user, self.base(req))
        resp.location = resource["meta"]["location"]
        _send_resource(resp, resource, shown, 201)


def _list_body(found: list[dict[str, Any]], listed: Listed, page: Page) -> dict[str, Any]:
    """A ``ListResponse``: by index (``startIndex``) or by cursor (``nextCursor``, RFC 9865)."""
    body = schemas.list_response(found, listed.total, page.start_index)
    if page.cursor is not None:
        del body["startIndex"]
        if listed.next_cursor is not None:
            body["nextCursor"] = listed.next_cursor
    return body


def _one_projection(req: falcon.Request, schema: str) -> Projection:
    values = _params(req, _ONE_PARAMS)
    return projection(values.get("attributes"), values.get("excludedattributes"), schema)


def _send_resource(
    resp: falcon.Response, resource: dict[str, Any], shown: Projection, status: int = 200
) -> None:
    """A user or group, as ``shown`` asks, with its version (``meta.version``) as ETag."""
    resp.set_header("ETag", resource["meta"]["version"])
    _send(resp, shown.apply(resource), status)


class Search:
    """``POST /scim/v2/Users/.search`` and ``/Groups/.search``: a list, asked for in a body."""

    actions: ClassVar[dict[str, str]] = {"POST": PROVISION}

    def __init__(self, lister: _Collection) -> None:
        self._lister = lister

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        """A ``ListResponse`` of what a ``SearchRequest`` asks for."""
        _params(req, frozenset())
        self._lister.answer(req, resp, _search_values(req))


class UserResource(_Base):
    """``/scim/v2/Users/{user_id}``: read, replace, patch, delete."""

    actions: ClassVar[dict[str, str]] = {
        "GET": PROVISION,
        "PUT": PROVISION,
        "PATCH": PROVISION,
        "DELETE": PROVISION,
    }

    def on_get(self, req: falcon.Request, resp: falcon.Response, user_id: str) -> None:
        """The user; 304 when ``If-None-Match`` names its ETag."""
        shown = _one_projection(req, CORE_USER)
        user = self._p.user(user_id)
        tag = self._p.user_etag(user)
        if _not_modified(req, resp, tag):
            return
        resource = self._p.user_resource(user, self.base(req), groups=shown.wants("groups"))
        _send_resource(resp, resource, shown)

    def _written(
        self, req: falcon.Request, resp: falcon.Response, write: Callable[[], User]
    ) -> None:
        shown = _one_projection(req, CORE_USER)
        user = write()
        _send_resource(resp, self._p.user_resource(user, self.base(req)), shown)

    def on_put(self, req: falcon.Request, resp: falcon.Response, user_id: str) -> None:
        """Replace the user (``active`` is kept when the body leaves it out)."""
        body = req.get_media()
        self._written(
            req, resp, lambda: self._p.replace_user(user_id, body, req.get_header("If-Match"))
        )

    def on_patch(self, req: falcon.Request, resp: falcon.Response, user_id: str) -> None:
        """Apply a ``PatchOp``; 200 with the user."""
        body = req.get_media()
        self._written(
            req, resp, lambda: self._p.patch_user(user_id, body, req.get_header("If-Match"))
        )

    def on_delete(self, req: falcon.Request, resp: falcon.Response, user_id: str) -> None:
        """Delete the user: 204."""
        _params(req, frozenset())
        self._p.delete_user(user_id, req.get_header("If-Match"))
        resp.status = falcon.HTTP_204


def _not_modified(req: falcon.Request, resp: falcon.Response, tag: str) -> bool:
    wanted = req.get_header("If-None-Match")
    if wanted is not None and tag_matches(wanted, tag):
        resp.status = falcon.HTTP_304
        resp.set_header("ETag", tag)
        return True
    return False


class GroupsResource(_Collection):
    """``/scim/v2/Groups``: list (filter, sort, page) and create."""

    schema = CORE_GROUP

    def select(self, filter_text: str | None, page: Page) -> Listed:
        """The groups a filter selects."""
        return self._p.list_groups(filter_text, page)

    def resource(self, item: Any, base: str, shown: Projection) -> dict[str, Any]:
        """A group; its members only when returned."""
        return self._p.group_resource(item, base, members=shown.wants("members"))

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Create a group (with members): 201 with ``Location`` and ``ETag``."""
        shown = _one_projection(req, CORE_GROUP)
        group = self._p.create_group(req.get_media())
        resource = self._p.group_resource(group, self.base(req), members=shown.wants("members"))
        resp.location = resource["meta"]["location"]
        _send_resource(resp, resource, shown, 201)


class GroupResource(_Base):
    """``/scim/v2/Groups/{group_id}``: read, replace, patch, delete."""

    actions: ClassVar[dict[str, str]] = {
        "GET": PROVISION,
        "PUT": PROVISION,
        "PATCH": PROVISION,
        "DELETE": PROVISION,
    }

    def on_get(self, req: falcon.Request, resp: falcon.Response, group_id: str) -> None:
        """The group (``excludedAttributes=members`` spares reading its members)."""
        shown = _one_projection(req, CORE_GROUP)
        group = self._p.group(group_id)
        if _not_modified(req, resp, etag(group.version)):
            return
        resource = self._p.group_resource(group, self.base(req), members=shown.wants("members"))
        _send_resource(resp, resource, shown)

    def on_put(self, req: falcon.Request, resp: falcon.Response, group_id: str) -> None:
        """Replace the group's name, external id and (when given) members."""
        shown = _one_projection(req, CORE_GROUP)
        group = self._p.replace_group(group_id, req.get_media(), req.get_header("If-Match"))
        resource = self._p.group_resource(group, self.base(req), members=shown.wants("members"))
        _send_resource(resp, resource, shown)

    def on_patch(self, req: falcon.Request, resp: falcon.Response, group_id: str) -> None:
        """Apply a ``PatchOp``: 204, or 200 with the group when ``attributes`` asks for it.

        A membership change answers without listing every member back, as
        identity providers expect (Entra ID: 204).
        """
        values = _params(req, _ONE_PARAMS)
        group = self._p.patch_group(group_id, req.get_media(), req.get_header("If-Match"))
        resp.set_header("ETag", etag(group.version))
        if not values:
            resp.status = falcon.HTTP_204
            return
        shown = projection(values.get("attributes"), values.get("excludedattributes"), CORE_GROUP)
        resource = self._p.group_resource(group, self.base(req), members=shown.wants("members"))
        _send_resource(resp, resource, shown)

    def on_delete(self, req: falcon.Request, resp: falcon.Response, group_id: str) -> None:
        """Delete the group: 204."""
        _params(req, frozenset())
        self._p.delete_group(group_id, req.get_header("If-Match"))
        resp.status = falcon.HTTP_204


class ServiceProviderConfig(_Base):
    """``/scim/v2/ServiceProviderConfig``."""

    actions: ClassVar[dict[str, str]] = {"GET": PUBLIC}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """What this server supports."""
        _params(req, frozenset())
        _send(resp, schemas.service_provider_config(self.base(req)))


class Schemas(_Base):
    """``/scim/v2/Schemas`` and ``/scim/v2/Schemas/{schema_id}``."""

    actions: ClassVar[dict[str, str]] = {"GET": PUBLIC}

    def on_get(
        self, req: falcon.Request, resp: falcon.Response, schema_id: str | None = None
    ) -> None:
        """Every schema, or one."""
        _params(req, frozenset())
        base = self.base(req)
        if schema_id is None:
            found = [schemas.schema(base, s) for s in schemas.SCHEMA_IDS]
            _send(resp, schemas.list_response(found, len(found), 1))
            return
        if schema_id not in schemas.SCHEMA_IDS:
            raise ScimError(404, f"no schema {schema_id}")
        _send(resp, schemas.schema(base, schema_id))


class ResourceTypes(_Base):
    """``/scim/v2/ResourceTypes`` and ``/scim/v2/ResourceTypes/{name}``."""

    actions: ClassVar[dict[str, str]] = {"GET": PUBLIC}

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str | None = None) -> None:
        """Every resource type, or one."""
        _params(req, frozenset())
        base = self.base(req)
        if name is None:
            found = [schemas.resource_type(base, n) for n in schemas.RESOURCE_TYPES]
            _send(resp, schemas.list_response(found, len(found), 1))
            return
        if name not in schemas.RESOURCE_TYPES:
            raise ScimError(404, f"no resource type {name}")
        _send(resp, schemas.resource_type(base, name))


class Unsupported:
    """``/Bulk``, ``/Me`` and the root ``/.search``: 501 (RFC 7644), as they are not offered."""

    actions: ClassVar[dict[str, str]] = {
        "GET": PROVISION,
        "POST": PROVISION,
        "PUT": PROVISION,
        "PATCH": PROVISION,
        "DELETE": PROVISION,
    }

    def __init__(self, what: str) -> None:
        self._what = what

    def _refuse(self, req: falcon.Request, resp: falcon.Response) -> None:
        raise ScimError(501, f"{self._what} is not supported by this server")

    on_get = on_post = on_put = on_patch = on_delete = _refuse


def add_routes(app: Any, provisioning: Provisioning, base_url: str | None) -> None:
    """Every ``/scim/v2`` route on ``app``."""
    users = UsersResource(provisioning, base_url)
    groups = GroupsResource(provisioning, base_url)
    app.add_route(f"{PREFIX}/Users", users)
    app.add_route(f"{PREFIX}/Users/.search", Search(users))
    app.add_route(f"{PREFIX}/Users/{{user_id}}", UserResource(provisioning, base_url))
    app.add_route(f"{PREFIX}/Groups", groups)
    app.add_route(f"{PREFIX}/Groups/.search", Search(groups))
    app.add_route(f"{PREFIX}/Groups/{{group_id}}", GroupResource(provisioning, base_url))
    app.add_route(f"{PREFIX}/ServiceProviderConfig", ServiceProviderConfig(provisioning, base_url))
    schema_docs = Schemas(provisioning, base_url)
    app.add_route(f"{PREFIX}/Schemas", schema_docs)
    app.add_route(f"{PREFIX}/Schemas/{{schema_id}}", schema_docs)
    types = ResourceTypes(provisioning, base_url)
    app.add_route(f"{PREFIX}/ResourceTypes", types)
    app.add_route(f"{PREFIX}/ResourceTypes/{{name}}", types)
    app.add_route(f"{PREFIX}/Bulk", Unsupported("Bulk"))
    app.add_route(f"{PREFIX}/Me", Unsupported("Me"))
    app.add_route(f"{PREFIX}/.search", Unsupported("searching every resource type at once"))
