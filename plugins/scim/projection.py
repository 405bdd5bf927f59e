"""``attributes`` and ``excludedAttributes`` (RFC 7644 §3.4.2.5): the part of a resource returned.

``id`` and ``schemas`` are always returned. Names match in any letter case,
with or without their schema URN; ``emails.value`` keeps only that
sub-attribute of each value, ``meta.created`` only that of ``meta``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import attrs

from userplane.plugins.scim import filters
from userplane.plugins.scim.errors import bad_request

#: Returned whatever is asked (RFC 7643 §7 ``returned: always``).
ALWAYS: Final = frozenset({"id", "schemas"})


@attrs.frozen
class Projection:
    """What to return: only ``attributes`` (when given), less ``excluded``."""

    attributes: frozenset[str] | None = None
    excluded: frozenset[str] = frozenset()

    def wants(self, name: str) -> bool:
        """Whether the top-level attribute ``name`` (lowercased) is returned at all."""
        if name in ALWAYS:
            return True
        if name in self.excluded:
            return False
        return self.attributes is None or any(
            a == name or a.startswith(name + ".") for a in self.attributes
        )

    def apply(self, resource: Mapping[str, Any]) -> dict[str, Any]:
        """``resource`` cut down to what is asked for."""
        out: dict[str, Any] = {}
        for key, value in resource.items():
            name = key.lower()
            if not self.wants(name):
                continue
            if name not in ALWAYS:
                value = self._sub(name, value)
            out[key] = value
        return out

    def _sub(self, name: str, value: Any) -> Any:
        keep = None
        if self.attributes is not None and name not in self.attributes:
            keep = {a.split(".", 1)[1] for a in self.attributes if a.startswith(name + ".")}
        drop = {a.split(".", 1)[1] for a in self.excluded if a.startswith(name + ".")}
        if keep is None and not drop:
            return value

        def cut(item: Any) -> Any:
            if not isinstance(item, Mapping):
                return item
            return {
                k: v
                for k, v in item.items()
                if (keep is None or k.lower() in keep) and k.lower() not in drop
            }

        return [cut(v) for v in value] if isinstance(value, list) else cut(value)


def _names(text: str | None, schema: str, parameter: str) -> frozenset[str] | None:
    if text is None:
        return None
    out = set()
    for position, part in enumerate(text.split(",")):
        part = part.strip()
        if not part:
            continue
        try:
            path = filters.parse_attr_path(part, position, filters.PathError)
        except filters.PathError as exc:
            raise bad_request(f"{parameter}: {exc.message}", "invalidValue") from None
        name = (
            path.attr.lower() if path.sub_attr is None else f"{path.attr}.{path.sub_attr}".lower()
        )
        if path.schema is not None and path.schema.lower() != schema.lower():
            continue  # an extension we have no attributes of
        out.add(name)
    return frozenset(out)


def projection(attributes: str | None, excluded: str | None, schema: str) -> Projection:
    """The projection the query parameters ask for, on resources of ``schema``."""
    if attributes is not None and excluded is not None:
        raise bad_request("attributes and excludedAttributes: give one of the two, not both")
    return Projection(
        _names(attributes, schema, "attributes"),
        _names(excluded, schema, "excludedAttributes") or frozenset(),
    )
