"""``/api/v1/keys`` and ``/api/v1/keys/{key_id}``: API keys over HTTP (action ``keys:manage``).

The routes call the same ``ApiKeyService`` as ``userplane keys``: the same
checks, the same records of changes (``api_key.created``, ``api_key.revoked``).
Beyond ``keys:manage``, a caller may create or revoke only keys whose role
grants nothing its own roles do not (``keys.check_grantable``): no minting an
``admin`` key without being one. The secret of a new key is in the ``201``
answer and nowhere else, ever; so ``Idempotency-Key`` is refused here, as a
replay would have to keep that answer, secret included, in the database.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Final
from urllib.parse import urlencode

import falcon

from userplane.frontends.http import query_params
from userplane.plugin import (
    KEYS_MANAGE,
    FieldError,
    Forbidden,
    InvalidInput,
    Principal,
    current_principal,
)
from userplane.plugins.api_keys.keys import ApiKey, ApiKeyService

LIST_PATH: Final = "/api/v1/keys"
DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 500
#: The fields of a new key's request body.
FIELDS: Final = frozenset({"name", "role", "expires_in"})
#: A lifetime, as ``userplane keys create --expires`` takes it, from 1 to 99999 of one unit
#: (seconds, minutes, hours, days, weeks): every one of them ends inside the calendar.
LIFETIME_PATTERN: Final = "^([1-9][0-9]{0,4})([smhdw])$"
#: A page's cursor: the place of the last key shown, its ``created_at`` (microseconds since
#: 1970) and id. Any text of this shape is a place in the list, so none is refused.
CURSOR_PATTERN: Final = "^[0-9]{1,16}\\.[0-9a-f]{32}$"

_LIFETIME = re.compile(LIFETIME_PATTERN.strip("^$"))
_CURSOR = re.compile(CURSOR_PATTERN.strip("^$"))
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
#: The service's names of a new key's fields, as the request body spells them.
_BODY_FIELDS = {"name": "$.name", "role": "$.role", "expires": "$.expires_in"}


def encode_cursor(key: ApiKey) -> str:
    """Where the page after ``key`` starts."""
    return f"{(key.created_at - _EPOCH) // _MICROSECOND}.{key.id.hex}"


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The place a cursor names; ``InvalidInput`` naming ``$.cursor`` for any other text."""
    match = _CURSOR.fullmatch(cursor)
    if match is None:
        raise InvalidInput.for_field("$.cursor", "must be the `next` of a previous page")
    micros, _, hex_id = cursor.partition(".")
    return _EPOCH + timedelta(microseconds=int(micros)), uuid.UUID(hex=hex_id)


def parse_lifetime(value: object) -> timedelta:
    """A lifetime (``90d``, ``12h``, ``30m``, ``45s``, ``2w``); ``ValueError`` for anything else."""
    match = _LIFETIME.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError("must be a lifetime like 90d, 12h, 30m, 45s or 2w: 1 to 99999 of one unit")
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


def _principal() -> Principal:
    """Who is asking: the auth middleware always sets one; fail closed regardless."""
    principal = current_principal()
    if principal is None:
        raise Forbidden("no principal")
    return principal


def _new_key(media: object, service: ApiKeyService) -> tuple[str, str, timedelta | None]:
    """Name, role and lifetime from a request body; ``InvalidInput`` naming every field at fault."""
    if not isinstance(media, Mapping):
        raise InvalidInput.for_field("$", "must be a JSON object")
    errors = [FieldError(f"$.{k}", "unknown field") for k in media if k not in FIELDS]
    texts: dict[str, str | None] = {}
    for field in ("name", "role"):
        value = media.get(field)
        texts[field] = value if isinstance(value, str) else None
        if field not in media:
            errors.append(FieldError(f"$.{field}", "is required"))
        elif not isinstance(value, str):
            errors.append(FieldError(f"$.{field}", "must be a string"))
    expires_in = None
    if media.get("expires_in") is not None:
        try:
            expires_in = parse_lifetime(media["expires_in"])
        except ValueError as exc:
            errors.append(FieldError("$.expires_in", str(exc)))
    # The service's own checks of the values, named as the body names them.
    errors += [
        FieldError(_BODY_FIELDS.get(e.field, e.field), e.message)
        for e in service.input_errors(texts["name"], texts["role"], expires_in)
    ]
    if errors:
        raise InvalidInput.from_errors(errors)
    name, role = texts["name"], texts["role"]
    assert name is not None
    assert role is not None
    return name, role, expires_in


class KeysResource:
    """``/api/v1/keys``: create a key, and list them (a page at a time)."""

    actions: ClassVar[dict[str, str]] = {"POST": KEYS_MANAGE, "GET": KEYS_MANAGE}

    def __init__(self, service: ApiKeyService) -> None:
        self._service = service

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        """201 with ``Location`` and the key's record and secret: the only time it is shown."""
        query_params(req, frozenset())
        if req.get_header("Idempotency-Key") is not None:
            raise InvalidInput.for_field(
                "Idempotency-Key",
                "is not taken here: a replay would need the new key's secret kept, and it never "
                "is; after a failed attempt, list the keys and revoke any you did not receive",
            )
        name, role, expires_in = _new_key(req.get_media(), self._service)
        record, key = self._service.create(name, role, expires_in, by=_principal())
        resp.status = falcon.HTTP_201
        resp.set_header("Location", f"{LIST_PATH}/{record.id}")
        resp.set_header("Cache-Control", "no-store")
        resp.media = {"key": key, **record.public()}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """A page of keys, oldest first, revoked ones included; never a secret or its hash.

        The next page is in ``next`` and in a ``Link: <…>; rel="next"`` header.
        """
        values = query_params(req, frozenset({"limit", "cursor"}))
        errors = []
        limit = DEFAULT_LIMIT
        if "limit" in values:
            text = values["limit"]
            if not re.fullmatch(r"[0-9]{1,9}", text) or not 1 <= int(text) <= MAX_LIMIT:
                errors.append(FieldError("$.limit", f"must be a whole number, 1 to {MAX_LIMIT}"))
            else:
                limit = int(text)
        after = None
        if "cursor" in values:
            try:
                after = decode_cursor(values["cursor"])
            except InvalidInput as exc:
                errors.extend(exc.errors)
        if errors:
            raise InvalidInput.from_errors(errors)
        items, last = self._service.page(limit, after)
        following = None if last is None else encode_cursor(last)
        resp.media = {"items": [k.public() for k in items], "next": following}
        if following is not None:
            params: dict[str, Any] = {**values, "cursor": following}
            resp.append_link(f"{LIST_PATH}?{urlencode(params)}", "next")

    # RFC 9110: HEAD wherever GET; Falcon sends no body for it.
    on_head = on_get


class KeyResource:
    """``/api/v1/keys/{key_id}``: read a key; revoke it."""

    actions: ClassVar[dict[str, str]] = {"GET": KEYS_MANAGE, "DELETE": KEYS_MANAGE}

    def __init__(self, service: ApiKeyService) -> None:
        self._service = service

    def on_get(self, req: falcon.Request, resp: falcon.Response, key_id: uuid.UUID) -> None:
        """The key's record (never its secret); 404 if there is none."""
        query_params(req, frozenset())
        resp.media = self._service.get(key_id).public()

    on_head = on_get

    def on_delete(self, req: falcon.Request, resp: falcon.Response, key_id: uuid.UUID) -> None:
        """Revoke: 200 with the record, ``revoked_at`` set; again, the same record unchanged.

        Revoking a revoked key changes nothing (it keeps its first ``revoked_at``,
        and no second ``api_key.revoked`` is recorded). 404 for an unknown id.
        """
        query_params(req, frozenset())
        resp.media = self._service.revoke(key_id, by=_principal()).public()


def add_routes(app: Any, service: ApiKeyService) -> None:
    """Add the key routes to ``app``."""
    app.add_route(LIST_PATH, KeysResource(service))
    app.add_route(f"{LIST_PATH}/{{key_id:uuid}}", KeyResource(service))
