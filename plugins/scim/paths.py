"""SCIM PATCH paths (RFC 7644 §3.5.2): ``PATH = attrPath / valuePath [subAttr]``.

``userName``, ``name.givenName``, ``emails[type eq "work"].value``,
``members[value eq "2819c223"]``, ``urn:...:enterprise:2.0:User:manager.value``. The filter
inside the brackets is parsed by :mod:`userplane.plugins.scim.filters` (same tokenizer,
same limits); every error here is a :class:`PathError` (``invalidPath``).
"""

from __future__ import annotations

import attrs

from userplane.plugins.scim.filters import (
    _ATTRNAME,
    AttrPath,
    Filter,
    PathError,
    _lower,
    _Parser,
    render,
)

__all__ = ["PatchPath", "PathError", "parse_path", "render_path"]


def _check(instance: PatchPath, attribute: object, value: str | None) -> None:
    if instance.filter is None and instance.sub_attr is not None:
        raise ValueError("a sub_attr after the brackets needs a filter")
    if instance.filter is not None and instance.attr.sub_attr is not None:
        raise ValueError("a value filter applies to an attribute, not to a sub-attribute")


@attrs.frozen
class PatchPath:
    """A parsed PATCH path.

    - ``userName``: ``attr=AttrPath("userName")``.
    - ``name.givenName``: ``attr=AttrPath("name", "givenName")``.
    - ``emails[type eq "work"].value``: ``attr=AttrPath("emails")``, ``filter`` the
      ``type eq "work"`` node (its paths are sub-attributes of ``emails``, for
      ``matches(filter, value, parent=attr)``), ``sub_attr="value"``.

    Equality is case-insensitive on names, as for :class:`AttrPath`.
    """

    attr: AttrPath
    filter: Filter | None = attrs.field(default=None)
    sub_attr: str | None = attrs.field(
        default=None,
        eq=_lower,
        validator=_check,
    )

    @property
    def normalized(self) -> str:
        """The rendered path, lowercased (but for the values in the filter)."""
        if self.filter is None:
            return self.attr.normalized
        text = f"{self.attr.normalized}[{render(self.filter)}]"
        return text if self.sub_attr is None else f"{text}.{self.sub_attr.lower()}"

    def __str__(self) -> str:
        return render_path(self)


def render_path(path: PatchPath) -> str:
    """The canonical text of ``path``: ``parse_path(render_path(p)) == p``."""
    text = render(path.attr)
    if path.filter is not None:
        text = f"{text}[{render(path.filter)}]"
    return text if path.sub_attr is None else f"{text}.{path.sub_attr}"


def parse_path(text: str) -> PatchPath:
    """Parse the ``path`` of a PATCH operation (RFC 7644 §3.5.2) into a :class:`PatchPath`.

    An unknown schema URN prefix is parsed like a known one: the caller decides whether it
    supports it. Raises :class:`PathError` (``invalidPath``), with the position, for any
    malformed path, including a malformed filter inside the brackets.
    """
    parser = _Parser(text, PathError, "path")
    if parser.peek().kind == "end":
        raise PathError("empty path", 0)
    attr = parser.attr_path(None)
    opening = parser.peek()
    if not parser.is_punct(opening, "["):
        parser.end("expected '[' or the end of the path")
        return PatchPath(attr)
    parser.advance()
    node = parser.value_filter(attr, opening)
    sub_attr = None
    if parser.is_punct(parser.peek(), "."):
        parser.advance()
        token = parser.advance()
        if token.kind != "word" or not _ATTRNAME.fullmatch(token.text):
            parser.fail(token, f"expected a sub-attribute name of {render(attr)}")
        sub_attr = token.text
    parser.end("expected '.' and a sub-attribute name, or the end of the path")
    return PatchPath(attr, node, sub_attr)
