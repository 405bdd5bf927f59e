"""What the SCIM server declares (RFC 7643 §5 to §7): its configuration, resource types, schemas.

Only attributes that a user or group holds are declared, each as it
behaves: what a client writes there reads back the same. A user has one
address (of several sent, the primary one is kept); ``groups`` is
read-only (RFC 7643 §4.1.2); a group's members are users. Attributes a
client sends that are not declared here (``name``, ``phoneNumbers``, the
enterprise extension) are accepted and not kept, as RFC 7644 §3.3 allows.
"""

from __future__ import annotations

from typing import Any, Final

from userplane.plugins.scim.filters import CORE_GROUP, CORE_USER

SCHEMA_SCHEMA: Final = "urn:ietf:params:scim:schemas:core:2.0:Schema"
RESOURCE_TYPE_SCHEMA: Final = "urn:ietf:params:scim:schemas:core:2.0:ResourceType"
CONFIG_SCHEMA: Final = "urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"
LIST_SCHEMA: Final = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
PATCH_SCHEMA: Final = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
SEARCH_SCHEMA: Final = "urn:ietf:params:scim:api:messages:2.0:SearchRequest"
#: The most resources one list answers (``count`` beyond it is lowered to it).
MAX_RESULTS: Final = 200
DEFAULT_COUNT: Final = 100


def _attribute(
    name: str,
    kind: str = "string",
    *,
    required: bool = False,
    multi: bool = False,
    mutability: str = "readWrite",
    returned: str = "default",
    uniqueness: str = "none",
    case_exact: bool = False,
    description: str = "",
    sub: list[dict[str, Any]] | None = None,
    canonical: list[str] | None = None,
    references: list[str] | None = None,
) -> dict[str, Any]:
    attribute: dict[str, Any] = {
        "name": name,
        "type": kind,
        "multiValued": multi,
        "description": description,
        "required": required,
        "caseExact": case_exact,
        "mutability": mutability,
        "returned": returned,
        "uniqueness": uniqueness,
    }
    if sub is not None:
        attribute["subAttributes"] = sub
    if canonical is not None:
        attribute["canonicalValues"] = canonical
    if references is not None:
        attribute["referenceTypes"] = references
    return attribute


USER_ATTRIBUTES: Final = [
    _attribute(
        "userName",
        required=True,
        uniqueness="server",
        description="The client's name for the user; the email address unless it gave another.",
    ),
    _attribute("displayName", description="The user's name, as shown."),
    # Required: a user is always active or not; removing the value is no state it has.
    _attribute("active", "boolean", required=True, description="Whether the user may sign in."),
    _attribute(
        "emails",
        "complex",
        multi=True,
        required=True,
        description="The user's one email address.",
        sub=[
            _attribute("value", required=True, description="The address."),
            _attribute(
                "type",
                canonical=["work", "home", "other"],
                description="What the address is for (work, for a user no client wrote).",
            ),
            _attribute("primary", "boolean", description="Whether it is the primary address."),
        ],
    ),
    _attribute(
        "groups",
        "complex",
        multi=True,
        mutability="readOnly",
        description="The groups the user belongs to.",
        sub=[
            _attribute("value", mutability="readOnly", description="The group's id."),
            _attribute(
                "$ref",
                "reference",
                mutability="readOnly",
                references=["Group"],
                description="The group's URI.",
            ),
            _attribute("display", mutability="readOnly", description="The group's name."),
        ],
    ),
]

GROUP_ATTRIBUTES: Final = [
    _attribute(
        "displayName",
        required=True,
        uniqueness="server",
        description="The group's name, unique in any letter case.",
    ),
    _attribute(
        "members",
        "complex",
        multi=True,
        description="The users in the group.",
        sub=[
            _attribute(
                "value", mutability="immutable", case_exact=True, description="The user's id."
            ),
            _attribute(
                "$ref",
                "reference",
                mutability="immutable",
                references=["User"],
                description="The user's URI.",
            ),
            _attribute(
                "type",
                mutability="immutable",
                canonical=["User"],
                description="Always User.",
            ),
        ],
    ),
]


def _meta(base_url: str, kind: str, path: str) -> dict[str, str]:
    return {"resourceType": kind, "location": f"{base_url}/{path}"}


def schema(base_url: str, schema_id: str) -> dict[str, Any]:
    """The ``Schema`` resource of ``schema_id`` (core User or Group)."""
    user = schema_id == CORE_USER
    return {
        "schemas": [SCHEMA_SCHEMA],
        "id": schema_id,
        "name": "User" if user else "Group",
        "description": "User Account" if user else "Group",
        "attributes": USER_ATTRIBUTES if user else GROUP_ATTRIBUTES,
        "meta": _meta(base_url, "Schema", f"Schemas/{schema_id}"),
    }


SCHEMA_IDS: Final = (CORE_USER, CORE_GROUP)


def resource_type(base_url: str, name: str) -> dict[str, Any]:
    """The ``ResourceType`` ``User`` or ``Group``."""
    return {
        "schemas": [RESOURCE_TYPE_SCHEMA],
        "id": name,
        "name": name,
        "endpoint": f"/{name}s",
        "description": "User Account" if name == "User" else "Group",
        "schema": CORE_USER if name == "User" else CORE_GROUP,
        "schemaExtensions": [],
        "meta": _meta(base_url, "ResourceType", f"ResourceTypes/{name}"),
    }


RESOURCE_TYPES: Final = ("User", "Group")


def service_provider_config(base_url: str) -> dict[str, Any]:
    """What this server supports (RFC 7643 §5; ``pagination`` from RFC 9865)."""
    return {
        "schemas": [CONFIG_SCHEMA],
        "patch": {"supported": True},
        "bulk": {"supported": False, "maxOperations": 0, "maxPayloadSize": 0},
        "filter": {"supported": True, "maxResults": MAX_RESULTS},
        "changePassword": {"supported": False},
        "sort": {"supported": True},
        "etag": {"supported": True},
        "pagination": {
            "cursor": True,
            "index": True,
            "defaultPaginationMethod": "index",
            "defaultPageSize": DEFAULT_COUNT,
            "maxPageSize": MAX_RESULTS,
        },
        "authenticationSchemes": [
            {
                "type": "oauthbearertoken",
                "name": "Bearer token",
                "description": "An API key of a role that grants scim:provision, as a bearer token",
                "primary": True,
            }
        ],
        "meta": _meta(base_url, "ServiceProviderConfig", "ServiceProviderConfig"),
    }


def list_response(resources: list[dict[str, Any]], total: int, start_index: int) -> dict[str, Any]:
    """A ``ListResponse`` (RFC 7644 §3.4.2)."""
    return {
        "schemas": [LIST_SCHEMA],
        "totalResults": total,
        "startIndex": start_index,
        "itemsPerPage": len(resources),
        "Resources": resources,
    }
