"""A user's custom attributes: a bounded JSON object of the caller's own metadata.

Bounded so that no client can make a user row, a list page or an audit
record arbitrarily large or deep: the limits below hold for the whole object
as stored. Changes apply as a JSON merge patch (RFC 7396), the semantics of
``PATCH /api/v1/users/{id}``: a key set to ``null`` is removed, an object
merges into the object it replaces, anything else replaces.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Mapping
from typing import Any, Final

import orjson

from userplane.errors import FieldError

#: The most bytes the object takes as compact UTF-8 JSON.
MAX_BYTES: Final = 16384
#: The deepest nesting of objects and arrays (the object itself is depth 1).
MAX_DEPTH: Final = 4
#: The most keys of one object, items of one array.
MAX_ENTRIES: Final = 100
#: The longest key and string value, in characters.
MAX_KEY: Final = 64
MAX_STRING: Final = 2048
#: Integers beyond this lose precision in JavaScript clients: refused, not rounded;
#: numbers with a fraction are held to the same bounds.
MAX_SAFE_INTEGER: Final = 2**53 - 1

FIELD: Final = "$.attributes"


def _key_error(key: str) -> str | None:
    if not key or len(key) > MAX_KEY:
        return f"keys must be 1 to {MAX_KEY} characters"
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in key):
        return "keys must not contain control characters"
    return None


def _string_error(value: str) -> str | None:
    if len(value) > MAX_STRING:
        return f"must be at most {MAX_STRING} characters"
    if "\x00" in value or any(unicodedata.category(c) == "Cs" for c in value):
        return "must not contain NUL or lone surrogates"
    return None


def _check(value: Any, path: str, depth: int, errors: list[FieldError]) -> None:
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            errors.append(FieldError(path, f"must be an integer within ±{MAX_SAFE_INTEGER}"))
        return
    if isinstance(value, float):
        # Within the integers' bounds too: what the document promises of every number,
        # and what a JavaScript client reads back as it was written.
        if not math.isfinite(value) or abs(value) > MAX_SAFE_INTEGER:
            errors.append(FieldError(path, f"must be a finite number within ±{MAX_SAFE_INTEGER}"))
        return
    if isinstance(value, str):
        problem = _string_error(value)
        if problem:
            errors.append(FieldError(path, problem))
        return
    if isinstance(value, list | dict):
        if depth >= MAX_DEPTH:
            errors.append(FieldError(path, f"nests deeper than {MAX_DEPTH} levels"))
            return
        if len(value) > MAX_ENTRIES:
            errors.append(FieldError(path, f"must hold at most {MAX_ENTRIES} entries"))
            return
        if isinstance(value, list):
            for i, item in enumerate(value):
                _check(item, f"{path}[{i}]", depth + 1, errors)
            return
        for key, item in value.items():
            if not isinstance(key, str):
                errors.append(FieldError(path, "keys must be strings"))
                continue
            problem = _key_error(key)
            if problem:
                errors.append(FieldError(path, problem))
                continue
            _check(item, f"{path}.{key}", depth + 1, errors)
        return
    errors.append(FieldError(path, "must be a JSON value"))


def check_attributes(value: Any, field: str = FIELD) -> list[FieldError]:
    """Every way ``value`` breaks the rules of custom attributes (none: it is fine)."""
    if not isinstance(value, dict):
        return [FieldError(field, "must be a JSON object")]
    errors: list[FieldError] = []
    _check(value, field, 1, errors)
    if errors:
        return errors[:20]
    if len(orjson.dumps(value)) > MAX_BYTES:
        return [FieldError(field, f"must take at most {MAX_BYTES} bytes as JSON")]
    return []


def merge_patch(target: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """``target`` with ``patch`` applied as a JSON merge patch (RFC 7396); neither changes."""
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict):
            current = out.get(key)
            out[key] = merge_patch(current if isinstance(current, dict) else {}, value)
        else:
            out[key] = value
    return out


def same_json(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two objects are the same JSON: ``true`` is not ``1``, nor ``1`` ``1.0``."""
    return orjson.dumps(a, option=orjson.OPT_SORT_KEYS) == orjson.dumps(
        b, option=orjson.OPT_SORT_KEYS
    )
