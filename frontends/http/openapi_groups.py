"""The groups part of the OpenAPI document: ``/api/v1/groups`` and a user's groups."""

from __future__ import annotations

from typing import Any

from userplane.frontends.http.openapi import (
    _BODY_ERRORS,
    _QUERY_ERRORS,
    EXTERNAL_ID_PATTERN,
    _errors,
    _header,
    _json_body,
    _name_pattern,
    _ok,
    _query,
    _ref,
)
from userplane.groups import MAX_DISPLAY_NAME, MAX_MEMBERS_PER_CALL, MAX_ROLES
from userplane.users import DEFAULT_LIMIT, MAX_EXTERNAL_ID, MAX_LIMIT

#: A filter's text: no database can take a NUL (a 422, as the service says).
_NO_NUL = {"type": "string", "maxLength": MAX_DISPLAY_NAME, "pattern": "^[^\\u0000]*$"}


def _id_parameter(name: str, what: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string", "format": "uuid"},
        "description": what,
    }


def _paging(what: str) -> list[dict[str, Any]]:
    return [
        _query(
            "limit",
            {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
            f"{what} per page.",
        ),
        _query(
            "cursor",
            {"type": "string", "minLength": 1, "maxLength": 2400},
            "Where the page starts: `next` of the previous page.",
        ),
    ]


def _not_modified() -> dict[str, Any]:
    return {
        "description": "Not modified: the `If-None-Match` tag is current",
        "headers": {
            "ETag": _ref("headers", "ETag"),
            "X-Request-ID": _ref("headers", "X-Request-ID"),
        },
    }


def paths() -> dict[str, Any]:
    """The operations on groups and their members."""
    group_id = _id_parameter("group_id", "The group's id.")
    user_id = _ref("parameters", "user_id")
    conditional = [_header("If-Match"), _header("X-Request-ID")]
    return {
        "/api/v1/groups": {
            "post": {
                "operationId": "createGroup",
                "summary": "Create a group",
                "description": "Roles it grants must be covered by the caller's own roles.",
                "parameters": [_header("X-Request-ID")],
                "requestBody": _json_body("NewGroup"),
                "responses": {
                    "201": _ok("Created", "Group", "Location", "ETag"),
                    **_errors(*_BODY_ERRORS, 409),
                },
            },
            "get": {
                "operationId": "listGroups",
                "summary": "List groups, oldest first, one page at a time",
                "parameters": [
                    *_paging("Groups"),
                    _query(
                        "display_name",
                        _NO_NUL,
                        "Only the group of this name (any letter case).",
                    ),
                    _query(
                        "external_id",
                        {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": MAX_EXTERNAL_ID,
                            "pattern": EXTERNAL_ID_PATTERN,
                        },
                        "Only the group with this external id.",
                    ),
                    _query(
                        "member",
                        {"type": "string", "format": "uuid"},
                        "Only the groups this user belongs to.",
                    ),
                    _query(
                        "q",
                        _NO_NUL,
                        "Substring of the name, any letter case.",
                    ),
                    _header("X-Request-ID"),
                ],
                "responses": {
                    "200": _ok("A page of groups", "GroupPage", "Link"),
                    **_errors(*_QUERY_ERRORS, 422),
                },
            },
        },
        "/api/v1/groups/{group_id}": {
            "parameters": [group_id],
            "get": {
                "operationId": "getGroup",
                "summary": "Read a group",
                "parameters": [_header("If-None-Match"), _header("X-Request-ID")],
                "responses": {
                    "200": _ok("The group", "Group", "ETag"),
                    "304": _not_modified(),
                    **_errors(*_QUERY_ERRORS, 404, 422),
                },
            },
            "patch": {
                "operationId": "updateGroup",
                "summary": "Rename a group, set its roles or external id (JSON merge patch)",
                "parameters": conditional,
                "requestBody": _json_body("GroupChanges", "application/merge-patch+json"),
                "responses": {
                    "200": _ok("The updated group", "Group", "ETag"),
                    **_errors(*_BODY_ERRORS, 404, 409, 412),
                },
            },
            "delete": {
                "operationId": "deleteGroup",
                "summary": "Delete a group for good (its members stay users)",
                "parameters": conditional,
                "responses": {"204": _ok("Deleted", None), **_errors(404, 412)},
            },
        },
        "/api/v1/groups/{group_id}/members": {
            "parameters": [group_id],
            "get": {
                "operationId": "listGroupMembers",
                "summary": "List a group's live members, by id",
                "parameters": [*_paging("Members"), _header("X-Request-ID")],
                "responses": {
                    "200": _ok("A page of users", "UserPage", "Link"),
                    **_errors(*_QUERY_ERRORS, 404, 422),
                },
            },
            "post": {
                "operationId": "addGroupMembers",
                "summary": "Add users to a group (members already in it stay)",
                "parameters": conditional,
                "requestBody": _json_body("UserIds"),
                "responses": {
                    "200": _ok("The group", "Group", "ETag"),
                    **_errors(*_BODY_ERRORS, 404, 412),
                },
            },
            "put": {
                "operationId": "setGroupMembers",
                "summary": "Make a group's members exactly these users",
                "parameters": conditional,
                "requestBody": _json_body("UserIds"),
                "responses": {
                    "200": _ok("The group", "Group", "ETag"),
                    **_errors(*_BODY_ERRORS, 404, 412),
                },
            },
        },
        "/api/v1/groups/{group_id}/members/{user_id}": {
            "parameters": [group_id, user_id],
            "put": {
                "operationId": "addGroupMember",
                "summary": "Add one user to a group (a member already: nothing changes)",
                "parameters": conditional,
                "responses": {"204": _ok("A member", None, "ETag"), **_errors(404, 412, 422)},
            },
            "delete": {
                "operationId": "removeGroupMember",
                "summary": "Remove one user from a group (not a member: nothing changes)",
                "parameters": conditional,
                "responses": {"204": _ok("Not a member", None, "ETag"), **_errors(404, 412)},
            },
        },
        "/api/v1/users/{user_id}/groups": {
            "parameters": [user_id],
            "get": {
                "operationId": "listUserGroups",
                "summary": "List the groups a user belongs to, oldest first",
                "parameters": [*_paging("Groups"), _header("X-Request-ID")],
                "responses": {
                    "200": _ok("A page of groups", "GroupPage", "Link"),
                    **_errors(*_QUERY_ERRORS, 404, 422),
                },
            },
        },
    }


def schemas() -> dict[str, Any]:
    """The schemas of groups."""
    display_name = {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_DISPLAY_NAME,
        "allOf": [{"pattern": _name_pattern()}, {"pattern": "^\\S(?:.*\\S)?$"}],
        "description": "Unique, compared case-insensitively; no whitespace first or last, "
        "no control or invisible formatting characters.",
    }
    external_id = {
        "type": ["string", "null"],
        "minLength": 1,
        "maxLength": MAX_EXTERNAL_ID,
        # No control character; no whitespace first or last.
        "pattern": EXTERNAL_ID_PATTERN,
        "description": "The identity provider's id for the group; unique.",
    }
    roles = {
        "type": "array",
        "items": _ref("schemas", "RoleName"),
        "maxItems": MAX_ROLES,
        "uniqueItems": True,
        "description": "Roles the group grants its members; each must be a known role, "
        "covered by the caller's own roles.",
    }
    return {
        "RoleName": {
            "type": "string",
            "description": "A role the service knows (`enum`, once the service has read them).",
        },
        "Group": {
            "type": "object",
            "additionalProperties": False,
            "required": [
                "id",
                "display_name",
                "external_id",
                "roles",
                "created_at",
                "updated_at",
                "version",
            ],
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "display_name": display_name,
                "external_id": external_id,
                "roles": roles,
                "created_at": {"type": "string", "format": "date-time"},
                "updated_at": {"type": "string", "format": "date-time"},
                "version": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "Grows with every write, membership included.",
                },
            },
        },
        "NewGroup": {
            "type": "object",
            "additionalProperties": False,
            "required": ["display_name"],
            "properties": {
                "display_name": display_name,
                "external_id": external_id,
                "roles": {**roles, "default": []},
            },
        },
        "GroupChanges": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "display_name": display_name,
                "external_id": external_id,
                "roles": roles,
            },
        },
        "GroupPage": {
            "type": "object",
            "additionalProperties": False,
            "required": ["items", "next"],
            "properties": {
                "items": {"type": "array", "items": _ref("schemas", "Group")},
                "next": {
                    "type": ["string", "null"],
                    "description": "The cursor of the next page; null on the last.",
                },
            },
        },
        "UserIds": {
            "type": "object",
            "additionalProperties": False,
            "required": ["user_ids"],
            "properties": {
                "user_ids": {
                    "type": "array",
                    "items": {"type": "string", "format": "uuid"},
                    "maxItems": MAX_MEMBERS_PER_CALL,
                }
            },
        },
    }
