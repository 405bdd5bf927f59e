"""``GET /api/v1/audit`` and ``GET /api/v1/audit/{event_id}`` (action ``audit:read``)."""

from __future__ import annotations

import uuid
from typing import Any, ClassVar, Final
from urllib.parse import urlencode

import falcon

from userplane.frontends.http import query_params
from userplane.plugins.audit import AUDIT_READ
from userplane.plugins.audit.query import PARAMS, parse_query
from userplane.plugins.audit.trail import AuditTrail

LIST_PATH: Final = "/api/v1/audit"


class AuditEventsResource:
    """``/api/v1/audit``: a page of events, oldest first (``sort=-seq``: newest first)."""

    actions: ClassVar[dict[str, str]] = {"GET": AUDIT_READ}

    def __init__(self, trail: AuditTrail) -> None:
        self._trail = trail

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """The page, with ``next`` in the body and a ``Link: <…>; rel="next"`` header."""
        page = self._trail.list(parse_query(query_params(req, PARAMS)))
        resp.media = {"items": list(page.items), "next": page.next}
        if page.next is not None:
            params: dict[str, Any] = {k: v for k, v in req.params.items() if k != "cursor"}
            params["cursor"] = page.next
            resp.append_link(f"{LIST_PATH}?{urlencode(params)}", "next")

    # RFC 9110: HEAD wherever GET; Falcon sends no body for it.
    on_head = on_get


class AuditEventResource:
    """``/api/v1/audit/{event_id}``: one event."""

    actions: ClassVar[dict[str, str]] = {"GET": AUDIT_READ}

    def __init__(self, trail: AuditTrail) -> None:
        self._trail = trail

    def on_get(self, req: falcon.Request, resp: falcon.Response, event_id: uuid.UUID) -> None:
        """The event; 404 if there is none (or it was pruned)."""
        query_params(req, frozenset())
        resp.media = self._trail.get(event_id)

    on_head = on_get
