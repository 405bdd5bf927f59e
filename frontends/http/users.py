"""The ``/api/v1/users`` resources: plain classes over ``UserService``."""

from __future__ import annotations

import hashlib
import itertools
import uuid
from typing import Any, ClassVar
from urllib.parse import urlencode

import falcon
import orjson

from userplane import auth, convert
from userplane.auth import USERS_READ_DELETED, AuthService
from userplane.errors import FieldError, Forbidden, InvalidInput
from userplane.frontends.http.conditions import expected_version, not_modified
from userplane.frontends.http.params import single_params
from userplane.idempotency import IdempotencyService, StoredResponse
from userplane.users import DEFAULT_LIMIT, User, UserQuery, UserService, check_query

_LIST_PARAMS = frozenset(
    {
        "limit",
        "cursor",
        "is_active",
        "email",
        "q",
        "sort",
        "include_deleted",
        "external_source",
        "external_id",
    }
)
_GET_PARAMS = frozenset({"include_deleted"})
_BOOLS = {"true": True, "false": False}


def etag(user: User) -> str:
    """The strong entity tag of ``user``'s current state."""
    return f'"{user.version}"'


def _send_user(resp: falcon.Response, user: User) -> None:
    resp.media = convert.user_to_dict(user)
    resp.set_header("ETag", etag(user))


def _expected_version(req: falcon.Request, users: UserService, user_id: uuid.UUID) -> int | None:
    return expected_version(req, lambda: users.get(user_id).version, "user")


def _bool_param(values: dict[str, Any], name: str, errors: list[FieldError]) -> bool | None:
    if name not in values:
        return None
    value = _BOOLS.get(values[name].lower())
    if value is None:
        errors.append(FieldError(f"$.{name}", "must be true or false"))
    return value


def _include_deleted(req: falcon.Request) -> bool:
    values, errors = single_params(req, _GET_PARAMS)
    value = _bool_param(values, "include_deleted", errors)
    if errors:
        raise InvalidInput.from_errors(errors)
    return bool(value)


def _may_see_deleted(req: falcon.Request, auth: AuthService) -> None:
    """``include_deleted`` needs its own permission: deleted users are an admin's view."""
    principal = req.context.get("principal")
    if principal is None:  # the auth middleware always sets one: fail closed regardless
        raise Forbidden("no principal")
    auth.authorize(principal, USERS_READ_DELETED)


def _parse_list_query(req: falcon.Request) -> UserQuery:
    values, errors = single_params(req, _LIST_PARAMS)
    limit = DEFAULT_LIMIT
    if "limit" in values:
        try:
            limit = int(values["limit"])
        except ValueError:
            errors.append(FieldError("$.limit", "must be a whole number"))
    is_active = _bool_param(values, "is_active", errors)
    include_deleted = _bool_param(values, "include_deleted", errors)
    query = UserQuery(
        limit=limit,
        cursor=values.get("cursor"),
        is_active=is_active,
        email=values.get("email"),
        q=values.get("q"),
        sort=values.get("sort", "created_at"),
        include_deleted=bool(include_deleted),
        external_source=values.get("external_source"),
        external_id=values.get("external_id"),
    )
    if errors:
        # Name every parameter at fault at once, the core's checks included.
        fields = {e.field for e in errors}
        errors += [e for e in check_query(query).errors if e.field not in fields]
        raise InvalidInput.from_errors(errors)
    return query


def _created(user: User) -> StoredResponse:
    headers = (("Location", f"/api/v1/users/{user.id}"), ("ETag", etag(user)))
    return StoredResponse(201, headers, orjson.dumps(convert.user_to_dict(user)), user.id)


def _fingerprint(req: falcon.Request, media: Any) -> str:
    # The same request means the same method, path and JSON body (key order aside).
    body = orjson.dumps(media, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(f"{req.method} {req.path}\n".encode() + body).hexdigest()


class UsersResource:
    """``/api/v1/users``: create and list."""

    actions: ClassVar[dict[str, str]] = {"POST": auth.USERS_WRITE, "GET": auth.USERS_READ}

    def __init__(
        self, users: UserService, idempotency: IdempotencyService, auth: AuthService
    ) -> None:
        self._users = users
        self._idempotency = idempotency
        self._auth = auth

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Create a user: 201 with ``Location`` and ``ETag``.

        With ``Idempotency-Key``, a retry of the same request replays the first
        response (marked ``Idempotent-Replayed: true``) instead of creating again.
        """
        media = req.get_media()
        key = req.get_header("Idempotency-Key")

        def create() -> StoredResponse:
            return _created(self._users.create(convert.new_user_from(media)))

        replayed = False
        if key is None:
            response = create()
        else:
            principal = req.context.get("principal")
            scope = principal.id if principal is not None else ""
            response, replayed = self._idempotency.run(
                key, _fingerprint(req, media), create, scope=scope
            )
        resp.status = response.status
        for name, value in response.headers:
            resp.set_header(name, value)
        if replayed:
            resp.set_header("Idempotent-Replayed", "true")
        resp.content_type = falcon.MEDIA_JSON
        resp.data = response.body

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """A page of users; the next page is in ``next`` and in the ``Link`` header."""
        query = _parse_list_query(req)
        if query.include_deleted:
            _may_see_deleted(req, self._auth)
        page = self._users.list(query)
        resp.media = {
            "items": [convert.user_to_dict(u) for u in page.items],
            "next": page.next,
        }
        if page.next is not None:
            params = {k: v for k, v in req.params.items() if k != "cursor"}
            params["cursor"] = page.next
            resp.append_link(f"/api/v1/users/?{urlencode(params)}", "next")

    # RFC 9110: HEAD wherever GET; Falcon sends no body for it.
    on_head = on_get


class UserResource:
    """``/api/v1/users/{user_id}``: read, partial update, delete."""

    actions: ClassVar[dict[str, str]] = {
        "GET": auth.USERS_READ,
        "PATCH": auth.USERS_WRITE,
        "DELETE": auth.USERS_DELETE,
    }

    def __init__(self, users: UserService, auth: AuthService) -> None:
        self._users = users
        self._auth = auth

    def on_get(self, req: falcon.Request, resp: falcon.Response, user_id: uuid.UUID) -> None:
        """The user; 304 when ``If-None-Match`` names its current ETag."""
        # A deleted user is hidden, not forbidden, from whoever may not see deleted
        # users: 404 as if it never existed (a 403 would confirm that it did).
        include_deleted = _include_deleted(req) and self._auth.allows(
            req.context.principal, USERS_READ_DELETED, user_id
        )
        user = self._users.get(user_id, include_deleted=include_deleted)
        if not_modified(req, resp, user.version):
            return
        _send_user(resp, user)

    # RFC 9110: HEAD wherever GET; Falcon sends no body for it.
    on_head = on_get

    def on_patch(self, req: falcon.Request, resp: falcon.Response, user_id: uuid.UUID) -> None:
        """Merge-patch ``email``, ``full_name``, ``is_active``; ``If-Match`` makes it safe."""
        changes = convert.changes_from(req.get_media())
        expected = _expected_version(req, self._users, user_id)
        _send_user(resp, self._users.update(user_id, changes, expected))

    def on_delete(self, req: falcon.Request, resp: falcon.Response, user_id: uuid.UUID) -> None:
        """Soft delete: 204; ``If-Match`` makes it conditional."""
        expected = _expected_version(req, self._users, user_id)
        self._users.delete(user_id, expected)
        resp.status = falcon.HTTP_204


class RestoreResource:
    """``/api/v1/users/{user_id}/restore``: undo a soft delete."""

    actions: ClassVar[dict[str, str]] = {"POST": auth.USERS_RESTORE}

    def __init__(self, users: UserService) -> None:
        self._users = users

    def on_post(self, req: falcon.Request, resp: falcon.Response, user_id: uuid.UUID) -> None:
        """The restored (or already live) user: 200 with its ETag."""
        _send_user(resp, self._users.restore(user_id))


class ExportResource:
    """``/api/v1/users/export``: every user as NDJSON, streamed (``users:export``)."""

    actions: ClassVar[dict[str, str]] = {"GET": auth.USERS_EXPORT}

    def __init__(self, users: UserService, auth: AuthService) -> None:
        self._users = users
        self._auth = auth

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """One JSON object per line, oldest user first, a page read at a time.

        Memory stays flat however many users there are. The body is sent as
        it is read (chunked): a failure half-way ends the response without
        its last chunk, which an HTTP client reports as an incomplete
        transfer, never as a shorter export. ``include_deleted=true`` needs
        ``users:read-deleted`` too.
        """
        include_deleted = _include_deleted(req)
        if include_deleted:
            _may_see_deleted(req, self._auth)
        from userplane import exports

        # The first page is read here, so that an error before any byte is
        # sent (the database down) is still a problem response.
        users = exports.all_users(self._users, include_deleted)
        first = next(users, None)
        resp.content_type = "application/x-ndjson"
        resp.set_header("Cache-Control", "no-store")
        resp.stream = exports.ndjson(itertools.chain(() if first is None else (first,), users))

    on_head = on_get
