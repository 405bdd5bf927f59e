"""The audit plugin's panel in the console: a user's history on the user's page.

Added through ``userplane_console`` with the console's public methods only.
Shown to principals allowed ``audit:read``; the events are those the trail
holds for the user (newest first), read as ``GET /api/v1/audit?user_id=…``
reads them: sealed values opened, erased ones marked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from userplane.plugin import Principal, User
from userplane.plugins.audit.query import AuditQuery, EventFilter
from userplane.plugins.audit.trail import AuditTrail

#: Events shown on a user's page; the API pages through the rest.
SHOWN = 20
TEMPLATES = Path(__file__).parent / "templates"


def add_panel(console: Any, trail: AuditTrail, action: str) -> None:
    """A history panel on every user's page, for those allowed ``action``."""

    def load(user: User, principal: Principal | None) -> dict[str, Any]:
        page = trail.list(AuditQuery(EventFilter(user_id=user.id), limit=SHOWN, descending=True))
        return {
            "events": page.items,
            "more": page.next is not None,
            "api": f"/api/v1/audit?user_id={user.id}&sort=-seq",
        }

    console.add_templates(TEMPLATES)
    console.add_user_panel("audit/history.html", load, action)
