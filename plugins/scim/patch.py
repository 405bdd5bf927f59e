"""SCIM PATCH (RFC 7644 §3.5.2): operations read from a ``PatchOp`` and applied to a resource.

A user is patched as JSON: its SCIM resource is read, every operation
applied to it here, and the result written as a replace would be, at the
version that was read. So a PATCH means what the same change made by PUT
means, and an operation on an attribute we do not keep changes nothing.

What identity providers send, beyond the RFC's letter, is accepted:
capitalised ``op`` values (Entra ID's ``"Replace"``), path-less values whose
keys are paths (``"name.givenName"``, an extension URN and attribute, with
Entra's ``aadOptscim062020``), a ``remove`` carrying the values to remove
(Entra's member removal), and a filtered path with a sub-attribute that no
value matches yet (``emails[type eq "work"].value``), which adds that value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Literal

import attrs

from userplane.plugins.scim import filters
from userplane.plugins.scim.errors import bad_request
from userplane.plugins.scim.paths import PatchPath, PathError, parse_path
from userplane.plugins.scim.schemas import PATCH_SCHEMA

#: The most operations one PATCH holds.
MAX_OPERATIONS: Final = 1000

Op = Literal["add", "remove", "replace"]


@attrs.frozen
class Operation:
    """One operation: ``path`` ``None`` when it has none (its value names the attributes)."""

    op: Op
    path: PatchPath | None
    value: Any


def operations(body: Any) -> list[Operation]:
    """The operations of a ``PatchOp`` body; ``ScimError`` for a malformed one."""
    if not isinstance(body, Mapping):
        raise bad_request("the body must be a PatchOp object", "invalidSyntax")
    schemas = _get(body, "schemas")
    if not isinstance(schemas, list) or not any(
        isinstance(s, str) and s.lower() == PATCH_SCHEMA.lower() for s in schemas
    ):
        raise bad_request(f"schemas: must be [{PATCH_SCHEMA!r}]", "invalidSyntax")
    raw = _get(body, "Operations")
    if not isinstance(raw, list) or not raw:
        raise bad_request("Operations: must be a list of one operation or more", "invalidSyntax")
    if len(raw) > MAX_OPERATIONS:
        raise bad_request(f"Operations: at most {MAX_OPERATIONS} in one request", "tooMany")
    out = []
    for index, item in enumerate(raw):
        where = f"Operations[{index}]"
        if not isinstance(item, Mapping):
            raise bad_request(f"{where}: must be an object", "invalidSyntax")
        op = _get(item, "op")
        if not isinstance(op, str) or op.lower() not in ("add", "remove", "replace"):
            raise bad_request(f"{where}.op: must be add, remove or replace", "invalidSyntax")
        text = _get(item, "path")
        path = None
        if text is not None:
            if not isinstance(text, str):
                raise bad_request(f"{where}.path: must be a string", "invalidPath")
            try:
                path = parse_path(text)
            except PathError as exc:
                raise bad_request(f"{where}.path: {exc.message}", "invalidPath") from None
        value = _get(item, "value")
        kind: Op = op.lower()  # type: ignore[assignment]
        if kind == "remove" and path is None:
            raise bad_request(f"{where}: remove needs a path", "noTarget")
        if kind != "remove" and "value" not in {str(k).lower() for k in item}:
            raise bad_request(f"{where}: {kind} needs a value", "invalidValue")
        if kind != "remove" and path is None and not isinstance(value, Mapping):
            raise bad_request(f"{where}: without a path, the value must be an object")
        out.append(Operation(kind, path, value))
    return out


def apply(
    resource: dict[str, Any], ops: list[Operation], multi_valued: frozenset[str]
) -> dict[str, Any]:
    """``resource`` with ``ops`` applied, in order (a copy; ``resource`` is left as it was).

    ``multi_valued`` names (lowercased) the resource's multi-valued attributes.
    """
    patched: dict[str, Any] = _copy(resource)
    for op in ops:
        if op.path is None:
            for key, value in op.value.items():
                _apply_key(patched, op.op, str(key), value, multi_valued)
        else:
            _apply_path(patched, op.op, op.path, op.value, multi_valued)
    return patched


def _apply_key(
    resource: dict[str, Any], op: Op, key: str, value: Any, multi: frozenset[str]
) -> None:
    """One key of a path-less value: an attribute, a dotted path, an extension, or a URN:attr."""
    if filters.KNOWN_SCHEMAS.get(key.lower()) is not None and isinstance(value, Mapping):
        if key.lower() in (filters.CORE_USER.lower(), filters.CORE_GROUP.lower()):
            for sub_key, sub_value in value.items():
                _apply_key(resource, op, str(sub_key), sub_value, multi)
            return
        container = _container(resource, key)
        for sub_key, sub_value in value.items():
            _apply_key(container, op, str(sub_key), sub_value, frozenset())
        return
    try:
        path = parse_path(key)
    except PathError as exc:
        raise bad_request(f"{key}: {exc.message}", "invalidPath") from None
    _apply_path(resource, op, path, value, multi)


def _apply_path(
    resource: dict[str, Any], op: Op, path: PatchPath, value: Any, multi: frozenset[str]
) -> None:
    attr = path.attr
    target = resource
    schema = attr.schema
    if schema is not None and schema.lower() not in (
        filters.CORE_USER.lower(),
        filters.CORE_GROUP.lower(),
    ):
        target = _container(resource, schema)
    name = _key(target, attr.attr)
    is_multi = attr.attr.lower() in multi
    if path.filter is not None:
        _apply_filtered(target, name, op, path, value)
        return
    if attr.sub_attr is not None:
        _apply_sub(target, name, op, attr.sub_attr, value, is_multi)
        return
    current = target.get(name)
    if op == "remove":
        if is_multi and value is not None and isinstance(current, list):
            # Entra ID: remove these values (members) rather than the attribute.
            doomed = {_value_of(v) for v in (value if isinstance(value, list) else [value])}
            kept = [v for v in current if _value_of(v) not in doomed]
            _set(target, name, kept)
        else:
            target.pop(name, None)
        return
    if is_multi:
        values = value if isinstance(value, list) else [value]
        if op == "add" and isinstance(current, list):
            present = {_value_of(v) for v in current}
            kept = current
            if any(_is_primary(v) for v in values):
                # RFC 7644 §3.5.2: a value added as primary makes the others not primary.
                kept = [_not_primary(v) for v in current]
            values = kept + [v for v in values if _value_of(v) not in present]
        _set(target, name, values)
        return
    if isinstance(value, Mapping) and isinstance(current, Mapping):
        merged = dict(current)  # a complex attribute: the sub-attributes given replace theirs
        for key, sub in value.items():
            merged[_key(merged, str(key))] = sub
        target[name] = merged
        return
    _set(target, name, value)


def _apply_sub(
    target: dict[str, Any], name: str, op: Op, sub: str, value: Any, is_multi: bool
) -> None:
    current = target.get(name)
    if is_multi:
        items = current if isinstance(current, list) else []
        if not items and op != "remove":
            target[name] = [{sub: value}]
            return
        for item in items:
            if isinstance(item, dict):
                _change(item, op, sub, value)
        return
    holder = current if isinstance(current, dict) else {}
    _change(holder, op, sub, value)
    if holder:
        target[name] = holder
    else:
        target.pop(name, None)


def _apply_filtered(target: dict[str, Any], name: str, op: Op, path: PatchPath, value: Any) -> None:
    assert path.filter is not None
    current = target.get(name)
    items = current if isinstance(current, list) else []
    chosen = [
        i
        for i, item in enumerate(items)
        if isinstance(item, Mapping) and filters.matches(path.filter, item, parent=path.attr)
    ]
    if not chosen:
        if op == "remove":
            return  # nothing matches: nothing to remove
        if path.sub_attr is None:
            raise bad_request(f"{path}: no value matches the filter", "noTarget")
        # Entra ID: replace emails[type eq "work"].value where none is work adds one.
        created = _from_filter(path.filter)
        created[path.sub_attr] = value
        target[name] = [*items, created]
        return
    if path.sub_attr is not None:
        for i in chosen:
            _change(items[i], op, path.sub_attr, value)
        return
    if op == "remove":
        target[name] = [item for i, item in enumerate(items) if i not in chosen]
    elif isinstance(value, Mapping):
        for i in chosen:
            merged = dict(items[i])
            merged.update(value)
            items[i] = merged
    else:
        raise bad_request(f"{path}: the value must be an object")


def _is_primary(item: Any) -> bool:
    if not isinstance(item, Mapping):
        return False
    flag = _get(item, "primary")
    return flag is True or (isinstance(flag, str) and flag.lower() == "true")


def _not_primary(item: Any) -> Any:
    if not _is_primary(item):
        return item
    return {k: (False if k.lower() == "primary" else v) for k, v in item.items()}


def _from_filter(node: filters.Filter) -> dict[str, Any]:
    """The value a filter's equalities describe (``type eq "work"`` is ``{"type": "work"}``)."""
    if isinstance(node, filters.Comparison) and node.op == "eq":
        return {node.path.attr: node.value}
    if isinstance(node, filters.And):
        out: dict[str, Any] = {}
        for part in node.operands:
            out.update(_from_filter(part))
        return out
    return {}


def _change(item: dict[str, Any], op: Op, sub: str, value: Any) -> None:
    key = _key(item, sub)
    if op == "remove":
        item.pop(key, None)
    else:
        item[key] = value


def _set(target: dict[str, Any], name: str, value: Any) -> None:
    if value is None or value == []:
        target.pop(name, None)  # null or no values: the attribute is unassigned
    else:
        target[name] = value


def _container(resource: dict[str, Any], schema: str) -> dict[str, Any]:
    key = _key(resource, schema)
    holder = resource.get(key)
    if not isinstance(holder, dict):
        holder = resource[key] = {}
    return holder


def _value_of(item: Any) -> Any:
    """What identifies one value of a multi-valued attribute: its ``value``, or itself."""
    if isinstance(item, Mapping):
        found = _get(item, "value")
        return found if found is not None else repr(sorted(item.items(), key=str))
    return item


def _key(mapping: Mapping[str, Any], name: str) -> str:
    """The key ``mapping`` spells ``name`` with (names match in any letter case), or ``name``."""
    if name in mapping:
        return name
    lowered = name.lower()
    return next((k for k in mapping if k.lower() == lowered), name)


def _get(mapping: Mapping[str, Any], name: str) -> Any:
    return mapping.get(_key(mapping, name))


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value
