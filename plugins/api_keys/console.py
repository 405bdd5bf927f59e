"""The api-keys plugin's console pages: list keys, create one (its secret shown once), revoke.

Added through ``userplane_console`` with the console's public methods only,
as a third party's plugin would add its own. The pages call the same
``ApiKeyService`` as ``/api/v1/keys`` and ``userplane keys``, under the
signed-in principal: the same checks, records and escalation rule.
"""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import falcon

from userplane.plugin import KEYS_MANAGE, Forbidden, InvalidInput, current_principal, utcnow
from userplane.plugins.api_keys.keys import ApiKeyService
from userplane.plugins.api_keys.resources import decode_cursor, encode_cursor

#: Keys per page.
PAGE_SIZE = 50
#: The longest lifetime the form offers, in days (about 27 years).
MAX_DAYS = 9999
TEMPLATES = Path(__file__).parent / "templates"


class KeysPage:
    """``/admin/keys``: the list and the new-key form (GET); create a key (POST)."""

    actions: ClassVar[dict[str, str]] = {"GET": KEYS_MANAGE, "POST": KEYS_MANAGE}

    def __init__(self, console: Any, service: ApiKeyService) -> None:
        self._console = console
        self._service = service

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.show(req, resp, {"name": "", "role": "", "expires_in_days": ""}, {}, 200)

    on_head = on_get

    def show(
        self,
        req: falcon.Request,
        resp: falcon.Response,
        values: dict[str, str],
        errors: dict[str, str],
        status: int,
    ) -> None:
        """The list of keys, a page at a time, with the form (and any errors in it)."""
        after = None
        cursor = req.get_param("after")
        if cursor:
            try:
                after = decode_cursor(cursor)
            except InvalidInput:
                errors = {**errors, "after": "is not a page of this list"}
                status = 422
        keys, last = self._service.page(PAGE_SIZE, after)
        self._console.render(
            req,
            resp,
            "api_keys/keys.html",
            status=status,
            keys=keys,
            now=utcnow(),
            next_url=None if last is None else f"/admin/keys?after={encode_cursor(last)}",
            roles=sorted(self._console.registry.auth.roles),
            values=values,
            errors=errors,
        )

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        form = dict(self._console.form(req))
        name = form.get("name", "").strip()
        role = form.get("role", "")
        days_text = form.get("expires_in_days", "").strip()
        errors: dict[str, str] = {}
        expires_in = None
        if days_text:
            if not re.fullmatch(r"[0-9]{1,4}", days_text) or not 1 <= int(days_text) <= MAX_DAYS:
                errors["expires_in_days"] = f"must be a whole number of days, 1 to {MAX_DAYS}"
            else:
                expires_in = timedelta(days=int(days_text))
        for error in self._service.input_errors(name, role):
            errors.setdefault(error.field, error.message)
        if errors:
            self.show(req, resp, form, errors, 422)
            return
        try:
            record, secret = self._service.create(name, role, expires_in, by=current_principal())
        except Forbidden as exc:
            self.show(req, resp, form, {"role": exc.detail}, 403)
            return
        self._console.render(
            req, resp, "api_keys/created.html", status=201, key=record, secret=secret
        )


class RevokeKey:
    """``/admin/keys/{key_id}/revoke``: revoke a key; it stops working within the key cache."""

    actions: ClassVar[dict[str, str]] = {"POST": KEYS_MANAGE}

    def __init__(self, console: Any, service: ApiKeyService) -> None:
        self._console = console
        self._service = service

    def on_post(self, req: falcon.Request, resp: falcon.Response, key_id: uuid.UUID) -> None:
        record = self._service.revoke(key_id, by=current_principal())
        self._console.redirect(req, resp, "/admin/keys", f"Revoked the key {record.name!r}.")


def add_pages(console: Any, service: ApiKeyService) -> None:
    """The key pages, under ``/admin/keys``."""
    console.add_templates(TEMPLATES)
    console.add_section(
        "/admin/keys",
        "API keys",
        KEYS_MANAGE,
        {
            "/admin/keys": KeysPage(console, service),
            "/admin/keys/{key_id:uuid}/revoke": RevokeKey(console, service),
        },
    )
