"""Conditional requests (RFC 9110 section 13) on versioned resources.

A resource's strong ``ETag`` is its version in quotes (``"3"``): users and
groups alike.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import falcon

from userplane.errors import PreconditionFailed

#: The ETags we issue: a version, 1 to 2**31 - 1 (the column's range), no leading zero.
_VERSION_TAG = re.compile(r"[1-9][0-9]{0,9}")


def expected_version(
    req: falcon.Request, current_version: Callable[[], int], what: str
) -> int | None:
    """The version ``If-Match`` allows a write at, or ``None`` when unconditional.

    A single tag maps straight to ``WHERE version = ?``. With several, the
    current version is read (``current_version()``, which raises ``NotFound``
    for a missing resource) and, if listed, used as the condition, so the
    write still fails if someone else writes in between. ``what`` names the
    resource in the error ("user").
    """
    tags = req.if_match
    if tags is None:
        return None
    # The wildcard is the bare ``*``; a quoted "*" is an entity tag (Falcon's ETag).
    if any(t == "*" and not isinstance(t, falcon.ETag) for t in tags):
        current_version()  # "*" means: only if it exists
        return None
    versions = []
    for tag in tags:
        # Strong comparison (RFC 9110 13.1.1), character by character: a weak tag,
        # "01" or "²" never matches "1"; a tag past any version we issue neither.
        strong = isinstance(tag, falcon.ETag) and not tag.is_weak
        if strong and _VERSION_TAG.fullmatch(tag) and int(tag) < 2**31:
            versions.append(int(tag))
    if len(versions) == 1 and len(tags) == 1:
        return versions[0]
    current = current_version()
    if current in versions:
        return current
    raise PreconditionFailed(f"the {what} has changed since that version")


def not_modified(req: falcon.Request, resp: falcon.Response, version: int) -> bool:
    """Answer 304 when ``If-None-Match`` names ``version`` (weak comparison, RFC 9110 13.1.2)."""
    tags = req.if_none_match
    if tags is not None and any(t == "*" or t == str(version) for t in tags):
        resp.status = falcon.HTTP_304
        resp.set_header("ETag", f'"{version}"')
        return True
    return False
