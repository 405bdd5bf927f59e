"""SCIM filters (RFC 7644 §3.4.2.2): parse into an immutable AST, render back, evaluate.

Hand-written tokenizer and recursive-descent parser: the one maintained-looking PyPI option,
``scim2-filter-parser`` (last release 2024), builds an untyped SLY parse tree aimed at its
own SQL transpiler, and we need typed frozen nodes, positioned errors and bounded input.

The grammar accepted, with the leniencies real clients need (any whitespace between tokens,
keywords in any case, grouping parentheses inside brackets)::

    filter     = or-expr
    or-expr    = and-expr *("or" and-expr)            ; "not" > "and" > "or"
    and-expr   = unary *("and" unary)
    unary      = "not" "(" or-expr ")" / "(" or-expr ")" / attr-expr
    attr-expr  = attrPath "pr" / attrPath compareOp compValue / attrPath "[" val-filter "]"
    val-filter = or-expr                               ; of plain sub-attribute names, no "["
    attrPath   = [URI ":"] ATTRNAME ["." ATTRNAME]     ; the attribute follows the last ":"
    ATTRNAME   = ["$"] ALPHA *("-" / "_" / DIGIT / ALPHA)   ; "$" for "$ref" (RFC 7643)

``and`` and ``or`` chains are n-ary nodes (no deep left-nested trees from long chains);
explicit parentheses are kept as nesting, so rendering and re-parsing gives an equal AST.
"""

from __future__ import annotations

import json
import re
from collections.abc import Container, Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, NoReturn, TypeAlias

import attrs

MAX_LENGTH = 4096
"""The longest filter or PATCH path accepted, in characters."""

MAX_DEPTH = 32
"""The deepest nesting of parentheses, ``not (...)`` and brackets accepted."""

CORE_USER = "urn:ietf:params:scim:schemas:core:2.0:User"
CORE_GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE_USER = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
KNOWN_SCHEMAS: Mapping[str, str] = {
    urn.lower(): urn for urn in (CORE_USER, CORE_GROUP, ENTERPRISE_USER)
}
"""The schema URNs we recognise, by their lowercased form (URNs compare case-insensitively)."""

_CORE_SCHEMAS = frozenset({CORE_USER.lower(), CORE_GROUP.lower()})

CompareOp: TypeAlias = Literal["eq", "ne", "co", "sw", "ew", "gt", "ge", "lt", "le"]
Value: TypeAlias = str | int | float | bool | None
"""A compValue: a JSON string, number, ``true``/``false`` or ``null``."""

_OPS: Mapping[str, CompareOp] = {
    "eq": "eq",
    "ne": "ne",
    "co": "co",
    "sw": "sw",
    "ew": "ew",
    "gt": "gt",
    "ge": "ge",
    "lt": "lt",
    "le": "le",
}
_STRING_OPS = frozenset({"co", "sw", "ew"})
_ORDER_OPS = frozenset({"gt", "ge", "lt", "le"})
_EXPECTED_OP = "expected an operator (eq, ne, co, sw, ew, gt, ge, lt, le, pr)"
_EXPECTED_VALUE = "expected a value (a JSON string in double quotes, a number, true, false or null)"


class ScimSyntaxError(ValueError):
    """A malformed filter or PATCH path: a 400 with ``scimType`` :attr:`scim_type`.

    ``position`` is the 0-based offset into the text where the problem is (as the message
    says, "at character N", like :mod:`json`'s "char N").
    """

    scim_type: ClassVar[str] = "invalidValue"

    def __init__(self, message: str, position: int) -> None:
        super().__init__(message)
        self.message = message
        self.position = position


class FilterError(ScimSyntaxError):
    """A malformed ``filter`` (RFC 7644 §3.4.2.2): ``scimType`` ``invalidFilter``."""

    scim_type: ClassVar[str] = "invalidFilter"


class PathError(ScimSyntaxError):
    """A malformed PATCH ``path`` (RFC 7644 §3.5.2): ``scimType`` ``invalidPath``."""

    scim_type: ClassVar[str] = "invalidPath"


def _lower(value: str | None) -> str | None:
    return None if value is None else value.lower()


def _value_key(value: Value) -> tuple[bool, Value]:
    # True == 1 in Python: keep booleans apart from numbers in AST equality and hashing.
    return (isinstance(value, bool), value)


@attrs.frozen
class AttrPath:
    """An attribute path: ``[schema ":"] attr ["." sub_attr]``.

    The spelling is kept (for rendering), but equality and hashing are case-insensitive,
    as attribute names and schema URNs are; :attr:`normalized` is the lowercased text.
    """

    attr: str = attrs.field(eq=str.lower)
    sub_attr: str | None = attrs.field(default=None, eq=_lower)
    schema: str | None = attrs.field(default=None, eq=_lower)

    @property
    def normalized(self) -> str:
        """The rendered path, lowercased: one spelling per attribute."""
        return render(self).lower()

    @property
    def known_schema(self) -> str | None:
        """The canonical spelling of :attr:`schema` if it is one of :data:`KNOWN_SCHEMAS`."""
        return None if self.schema is None else KNOWN_SCHEMAS.get(self.schema.lower())

    def __str__(self) -> str:
        return render(self)


def _check_comparison(instance: Comparison, attribute: Any, value: Value) -> None:
    reason = _incompatible(instance.op, value)
    if reason:
        raise ValueError(reason)


def _incompatible(op: str, value: Value) -> str | None:
    """Why ``op`` cannot take ``value`` (RFC 7644 §3.4.2.2), or None."""
    if op in _STRING_OPS and not isinstance(value, str):
        return f"'{op}' needs a string value"
    if op in _ORDER_OPS and (value is None or isinstance(value, bool)):
        return f"'{op}' needs a string or number value; booleans and null take only eq and ne"
    return None


@attrs.frozen
class Comparison:
    """``path op value``, e.g. ``userName eq "bjensen"``."""

    path: AttrPath
    op: CompareOp = attrs.field(validator=attrs.validators.in_(tuple(_OPS)))
    value: Value = attrs.field(eq=_value_key, validator=_check_comparison)

    def __str__(self) -> str:
        return render(self)


@attrs.frozen
class Present:
    """``path pr``: the attribute has a value that is not null or empty."""

    path: AttrPath

    def __str__(self) -> str:
        return render(self)


def _at_least_two(instance: Any, attribute: Any, value: tuple[Filter, ...]) -> None:
    if len(value) < 2:
        raise ValueError(f"{type(instance).__name__} needs at least two operands")


@attrs.frozen
class And:
    """``a and b and ...``: a chain of two or more operands."""

    operands: tuple[Filter, ...] = attrs.field(validator=_at_least_two)

    def __str__(self) -> str:
        return render(self)


@attrs.frozen
class Or:
    """``a or b or ...``: a chain of two or more operands."""

    operands: tuple[Filter, ...] = attrs.field(validator=_at_least_two)

    def __str__(self) -> str:
        return render(self)


@attrs.frozen
class Not:
    """``not (operand)``."""

    operand: Filter

    def __str__(self) -> str:
        return render(self)


@attrs.frozen
class ValuePath:
    """``path[filter]``: some value of the multi-valued ``path`` matches ``filter``.

    The paths inside ``filter`` are plain sub-attribute names of ``path`` (``type``,
    ``value``), resolved against each value of ``path``.
    """

    path: AttrPath
    filter: Filter

    def __str__(self) -> str:
        return render(self)


Filter: TypeAlias = Comparison | Present | And | Or | Not | ValuePath
"""Any filter node."""


# --- Rendering -------------------------------------------------------------------------------


def render(node: Filter | AttrPath) -> str:
    """The canonical text of ``node``: lowercase keywords, minimal parentheses.

    ``parse_filter(render(node)) == node`` for every node the parser can produce.
    """
    if isinstance(node, AttrPath):
        text = node.attr if node.schema is None else f"{node.schema}:{node.attr}"
        return text if node.sub_attr is None else f"{text}.{node.sub_attr}"
    if isinstance(node, Comparison):
        return f"{render(node.path)} {node.op} {render_value(node.value)}"
    if isinstance(node, Present):
        return f"{render(node.path)} pr"
    if isinstance(node, Not):
        return f"not ({render(node.operand)})"
    if isinstance(node, ValuePath):
        return f"{render(node.path)}[{render(node.filter)}]"
    if isinstance(node, And):
        # A nested chain of either kind was parenthesised in the source (or must be).
        return " and ".join(_grouped(o, (And, Or)) for o in node.operands)
    return " or ".join(_grouped(o, (Or,)) for o in node.operands)


def _grouped(node: Filter, kinds: tuple[type, ...]) -> str:
    return f"({render(node)})" if isinstance(node, kinds) else render(node)


def render_value(value: Value) -> str:
    """A compValue as JSON text."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    # ensure_ascii=False: readable in logs; json still escapes quotes and control characters.
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


# --- Tokenizer -------------------------------------------------------------------------------

_WHITESPACE = frozenset(" \t\r\n")
_PUNCTUATION = frozenset("()[].")
_WORD_END = frozenset(' \t\r\n()[]"')
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_ATTRNAME = re.compile(r"\$?[A-Za-z][A-Za-z0-9_-]*")
_ATTR_PATH = re.compile(rf"(?P<attr>{_ATTRNAME.pattern})(?:\.(?P<sub>{_ATTRNAME.pattern}))?")
# A URI as SCIM uses them (RFC 3986 scheme, then ":"-separated non-empty segments).
_SCHEMA = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*(?::[A-Za-z0-9\-._~%!$&'*+,;=@/]+)+")


@attrs.frozen
class _Token:
    kind: Literal["word", "string", "number", "punct", "end"]
    text: str
    pos: int
    value: Value = None


def _tokenize(text: str, error: type[ScimSyntaxError]) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in _WHITESPACE:
            i += 1
        elif c in _PUNCTUATION:
            tokens.append(_Token("punct", c, i))
            i += 1
        elif c == '"':
            end = _string_end(text, i, error)
            tokens.append(_Token("string", text[i:end], i, _string_value(text, i, end, error)))
            i = end
        else:
            end = i
            while end < n and text[end] not in _WORD_END:
                end += 1
            word = text[i:end]
            if c == "-" or c.isdigit():
                tokens.append(_Token("number", word, i, _number_value(word, i, error)))
            else:
                tokens.append(_Token("word", word, i))
            i = end
    tokens.append(_Token("end", "", n))
    return tokens


def _string_end(text: str, start: int, error: type[ScimSyntaxError]) -> int:
    """The offset just past the closing quote of the string opened at ``start``."""
    i = start + 1
    while True:
        quote = text.find('"', i)
        backslash = text.find("\\", i, quote if quote >= 0 else len(text))
        if backslash >= 0:
            i = backslash + 2
        elif quote >= 0:
            return quote + 1
        else:
            raise error(
                f"unclosed string: the '\"' at character {start} has no closing '\"'", start
            )


def _string_value(text: str, start: int, end: int, error: type[ScimSyntaxError]) -> str:
    try:
        value = json.loads(text[start:end])
    except json.JSONDecodeError as e:
        raise error(
            f"invalid string: {e.msg} at character {start + e.pos}", start + e.pos
        ) from None
    assert isinstance(value, str)
    try:
        # A lone surrogate (from a \\uD800 escape) cannot be stored or sent as UTF-8.
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise error(
            f"invalid string at character {start}: a lone surrogate (\\uD800-\\uDFFF)", start
        ) from None
    return value


def _number_value(word: str, start: int, error: type[ScimSyntaxError]) -> int | float:
    if not _NUMBER.fullmatch(word):
        raise error(f"invalid number {_quote(word)} at character {start}", start)
    try:
        number: int | float = int(word) if word.lstrip("-").isdigit() else float(word)
    except ValueError:  # more digits than int() converts
        raise error(f"number out of range at character {start}", start) from None
    if number in (float("inf"), float("-inf")):
        raise error(f"number out of range at character {start}", start)
    return number


def _quote(text: str) -> str:
    return f"'{text}'" if len(text) <= 40 else f"'{text[:37]}...'"


# --- Parser ----------------------------------------------------------------------------------


def parse_attr_path(text: str, position: int, error: type[ScimSyntaxError]) -> AttrPath:
    """``text`` (one word, at ``position``) as an attribute path, or ``error``.

    The schema URN is everything before the last ``:`` (URNs contain ``:`` and ``.``, as in
    ``...:enterprise:2.0:User:manager.value``; attribute names contain neither).
    """
    schema, colon, rest = text.rpartition(":")
    if colon and text.lower() in KNOWN_SCHEMAS:
        raise error(
            f"{_quote(text)} at character {position} names a schema, not an attribute; "
            "add ':' and an attribute name",
            position,
        )
    match = _ATTR_PATH.fullmatch(rest)
    if match is None or (colon and not _SCHEMA.fullmatch(schema)):
        raise error(
            f"invalid attribute path {_quote(text)} at character {position}; expected "
            "[schema URN ':'] name ['.' sub-attribute name], names of letters, digits, '-', '_'",
            position,
        )
    return AttrPath(match["attr"], match["sub"], schema if colon else None)


class _Parser:
    """Recursive descent over a token list; one instance per text."""

    def __init__(self, text: str, error: type[ScimSyntaxError], noun: str) -> None:
        self.error = error
        self.noun = noun
        if len(text) > MAX_LENGTH:
            raise error(
                f"{noun} too long: {len(text)} characters, at most {MAX_LENGTH}", MAX_LENGTH
            )
        self.tokens = _tokenize(text, error)
        self.index = 0
        self.depth = 0

    def peek(self, ahead: int = 0) -> _Token:
        return self.tokens[min(self.index + ahead, len(self.tokens) - 1)]

    def advance(self) -> _Token:
        token = self.peek()
        self.index = min(self.index + 1, len(self.tokens) - 1)
        return token

    def fail(self, token: _Token, expected: str) -> NoReturn:
        found = f"end of {self.noun}" if token.kind == "end" else _quote(token.text)
        raise self.error(f"unexpected {found} at character {token.pos}; {expected}", token.pos)

    def is_punct(self, token: _Token, char: str) -> bool:
        return token.kind == "punct" and token.text == char

    def is_keyword(self, token: _Token, *words: str) -> bool:
        return token.kind == "word" and token.text.lower() in words

    def enter(self, token: _Token) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(
                f"{self.noun} nested too deeply at character {token.pos}: more than "
                f"{MAX_DEPTH} levels of parentheses and brackets",
                token.pos,
            )

    def close(self, opening: _Token, char: str) -> None:
        token = self.advance()
        if not self.is_punct(token, char):
            where = f"the '{opening.text}' at character {opening.pos}"
            self.fail(token, f"expected '{char}' to close {where}")
        self.depth -= 1

    def end(self, expected: str) -> None:
        token = self.peek()
        if token.kind != "end":
            if self.is_punct(token, ")"):
                self.fail(token, "there is no '(' to close")
            if self.is_punct(token, "]"):
                self.fail(token, "there is no '[' to close")
            self.fail(token, expected)

    def filter(self) -> Filter:
        if self.peek().kind == "end":
            raise self.error(f"empty {self.noun}", 0)
        node = self.or_expr(None)
        self.end("expected 'and', 'or' or the end of the filter")
        return node

    def or_expr(self, scope: AttrPath | None) -> Filter:
        operands = [self.and_expr(scope)]
        while self.is_keyword(self.peek(), "or"):
            self.advance()
            operands.append(self.and_expr(scope))
        return operands[0] if len(operands) == 1 else Or(tuple(operands))

    def and_expr(self, scope: AttrPath | None) -> Filter:
        operands = [self.unary(scope)]
        while self.is_keyword(self.peek(), "and"):
            self.advance()
            operands.append(self.unary(scope))
        return operands[0] if len(operands) == 1 else And(tuple(operands))

    def unary(self, scope: AttrPath | None) -> Filter:
        token = self.peek()
        if self.is_punct(token, "("):
            self.advance()
            self.enter(token)
            node = self.or_expr(scope)
            self.close(token, ")")
            return node
        if self.is_keyword(token, "not"):
            after = self.peek(1)
            if self.is_punct(after, "("):
                self.advance()
                self.advance()
                self.enter(after)
                node = self.or_expr(scope)
                self.close(after, ")")
                return Not(node)
            # "not" is also a valid attribute name: only an operator or "[" can follow that.
            if not (self.is_keyword(after, "pr", *_OPS) or self.is_punct(after, "[")):
                self.fail(after, "expected '(' after 'not'")
        if token.kind != "word":
            self.fail(token, "expected an attribute path, 'not (' or '('")
        return self.attr_expr(scope)

    def attr_path(self, scope: AttrPath | None) -> AttrPath:
        token = self.advance()
        if token.kind != "word":
            self.fail(token, "expected an attribute path")
        path = parse_attr_path(token.text, token.pos, self.error)
        if scope is not None and (path.schema is not None or path.sub_attr is not None):
            raise self.error(
                f"{_quote(token.text)} at character {token.pos}: inside "
                f"'{render(scope)}[...]' name a sub-attribute of {render(scope)} on its own "
                "(no schema, no '.')",
                token.pos,
            )
        return path

    def attr_expr_after(self, path: AttrPath) -> Comparison | Present:
        """After ``attr[...].sub``: its operator and value."""
        token = self.advance()
        if self.is_keyword(token, "pr"):
            return Present(path)
        if self.is_keyword(token, *_OPS):
            return self.comparison(path, _OPS[token.text.lower()])
        self.fail(token, _EXPECTED_OP)

    def attr_expr(self, scope: AttrPath | None) -> Filter:
        path = self.attr_path(scope)
        token = self.advance()
        if self.is_keyword(token, "pr"):
            after = self.peek()
            if after.kind in ("string", "number") or self.is_keyword(after, *_KEYWORD_VALUES):
                self.fail(after, "'pr' takes no value")
            return Present(path)
        if self.is_keyword(token, *_OPS):
            return self.comparison(path, _OPS[token.text.lower()])
        if self.is_punct(token, "["):
            if scope is not None:
                self.fail(token, "value filters cannot be nested")
            inner = self.value_filter(path, token)
            after = self.peek()
            if self.is_punct(after, ".") and self.noun == "filter":
                # Entra ID's 'emails[type eq "work"].value eq "x"': outside RFC 7644's
                # grammar, but what it means is 'emails[type eq "work" and value eq "x"]'.
                self.advance()
                name = self.advance()
                if name.kind != "word" or not _ATTRNAME.fullmatch(name.text):
                    self.fail(name, f"expected a sub-attribute name of {render(path)}")
                condition = self.attr_expr_after(AttrPath(name.text))
                parts = inner.operands if isinstance(inner, And) else (inner,)
                inner = And((*parts, condition))
            return ValuePath(path, inner)
        self.fail(token, _EXPECTED_OP)

    def value_filter(self, path: AttrPath, opening: _Token) -> Filter:
        """After ``path[``: the filter up to and including the ``]``."""
        if path.sub_attr is not None:
            raise self.error(
                f"'[' at character {opening.pos}: a value filter applies to a multi-valued "
                f"attribute, not to the sub-attribute '{render(path)}'",
                opening.pos,
            )
        self.enter(opening)
        if self.is_punct(self.peek(), "]"):
            self.fail(self.peek(), "expected a filter inside '[...]'")
        node = self.or_expr(path)
        self.close(opening, "]")
        return node

    def comparison(self, path: AttrPath, op: CompareOp) -> Comparison:
        token = self.advance()
        value: Value
        if token.kind in ("string", "number"):
            value = token.value
        elif self.is_keyword(token, *_KEYWORD_VALUES):
            value = _KEYWORD_VALUES[token.text.lower()]
        elif token.kind == "word" and token.text.startswith("'"):
            self.fail(token, f"{_EXPECTED_VALUE}; strings take double quotes")
        else:
            self.fail(token, _EXPECTED_VALUE)
        reason = _incompatible(op, value)
        if reason:
            self.fail(token, reason)
        return Comparison(path, op, value)


_KEYWORD_VALUES: Mapping[str, Value] = {"true": True, "false": False, "null": None}


def parse_filter(text: str) -> Filter:
    """Parse a SCIM ``filter`` query parameter (RFC 7644 §3.4.2.2) into its AST.

    Raises :class:`FilterError` (``invalidFilter``) with the position of the problem, for
    any malformed, too long (:data:`MAX_LENGTH`) or too deep (:data:`MAX_DEPTH`) input.
    """
    return _Parser(text, FilterError, "filter").filter()


# --- Evaluation ------------------------------------------------------------------------------

DEFAULT_CASE_EXACT: frozenset[str] = frozenset(
    {
        # caseExact per RFC 7643 §3.1.
        "id",
        "externalid",
        "meta.resourcetype",
        "meta.location",
        "meta.version",
        # Ids of other resources: compared exactly, like the "id" they refer to.
        "members.value",
        "groups.value",
        f"{ENTERPRISE_USER.lower()}:manager.value",
    }
)
"""The :func:`attribute_key` of attributes whose strings compare case-sensitively."""

DEFAULT_DATETIMES: frozenset[str] = frozenset({"meta.created", "meta.lastmodified"})
"""The :func:`attribute_key` of dateTime attributes: compared as instants."""


def attribute_key(path: AttrPath, parent: AttrPath | None = None) -> str:
    """The lowercased name of ``path`` in the ``case_exact`` and ``datetimes`` sets.

    ``name`` or ``name.sub``; for an extension schema, ``urn...:name.sub``; for the plain
    name inside ``parent[...]``, ``parent.name`` (e.g. ``emails.value``).
    """
    if parent is not None:
        return f"{attribute_key(parent)}.{path.attr.lower()}"
    name = path.attr.lower() if path.sub_attr is None else f"{path.attr}.{path.sub_attr}".lower()
    if path.schema is None or path.schema.lower() in _CORE_SCHEMAS:
        return name
    return f"{path.schema.lower()}:{name}"


def matches(
    node: Filter,
    resource: Mapping[str, Any],
    *,
    parent: AttrPath | None = None,
    case_exact: Container[str] = DEFAULT_CASE_EXACT,
    datetimes: Container[str] = DEFAULT_DATETIMES,
) -> bool:
    """Whether the SCIM JSON ``resource`` matches ``node``, by RFC 7644 §3.4.2.2.

    - Attribute names match case-insensitively; ``urn...:name`` looks in the extension
      object ``resource[urn]`` (core User and Group URNs: at the top level).
    - A multi-valued attribute matches if any of its values does; a complex value compared
      without a sub-attribute stands for its ``value`` (``members eq "id"``).
    - Strings compare case-insensitively unless :func:`attribute_key` is in ``case_exact``;
      dateTime attributes (in ``datetimes``) compare as instants (no offset: UTC).
    - ``pr``: present and not null, ``""``, ``[]`` or ``{}``. ``eq null``: not present.
      ``ne``: some value that differs (an absent attribute matches no ``ne``, as in SQL).
    - Booleans compare only by ``eq``/``ne``; values of different types never match ``eq``.

    ``parent``: evaluate the filter of ``parent[...]`` against one value of ``parent``
    (for PATCH: ``[v for v in emails if matches(f, v, parent=path)]``).
    """
    return _Evaluator(case_exact, datetimes).eval(node, resource, parent)


def _get(mapping: Mapping[str, Any], name: str) -> Any:
    if name in mapping:
        return mapping[name]
    lowered = name.lower()
    for key, value in mapping.items():
        if isinstance(key, str) and key.lower() == lowered:
            return value
    return None


def _lookup(resource: Mapping[str, Any], path: AttrPath) -> Any:
    """The raw value at ``path``; a list of sub-attribute values for a multi-valued one."""
    container = resource
    if path.schema is not None:
        extension = _get(resource, path.schema)
        if isinstance(extension, Mapping):
            container = extension
        elif path.schema.lower() not in _CORE_SCHEMAS:
            return None
    value = _get(container, path.attr)
    if path.sub_attr is None:
        return value
    if isinstance(value, list):
        return [_get(v, path.sub_attr) for v in value if isinstance(v, Mapping)]
    return _get(value, path.sub_attr) if isinstance(value, Mapping) else None


def _values(raw: Any) -> list[Any]:
    return [v for v in (raw if isinstance(raw, list) else [raw]) if v is not None]


def _empty(value: Any) -> bool:
    if value is None or value == "" or value == []:
        return True
    return isinstance(value, Mapping) and all(_empty(v) for v in value.values())


def _instant(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return None
    else:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _order(op: str, actual: Any, expected: Any) -> bool:
    if op == "eq":
        return bool(actual == expected)
    if op == "ne":
        return bool(actual != expected)
    if op == "gt":
        return bool(actual > expected)
    if op == "ge":
        return bool(actual >= expected)
    if op == "lt":
        return bool(actual < expected)
    if op == "le":
        return bool(actual <= expected)
    return False  # co, sw, ew: only on strings


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@attrs.frozen
class _Evaluator:
    case_exact: Container[str]
    datetimes: Container[str]

    def eval(self, node: Filter, obj: Mapping[str, Any], parent: AttrPath | None) -> bool:
        if isinstance(node, And):
            return all(self.eval(o, obj, parent) for o in node.operands)
        if isinstance(node, Or):
            return any(self.eval(o, obj, parent) for o in node.operands)
        if isinstance(node, Not):
            return not self.eval(node.operand, obj, parent)
        if isinstance(node, Present):
            return any(not _empty(v) for v in _values(_lookup(obj, node.path)))
        if isinstance(node, ValuePath):
            return any(
                isinstance(v, Mapping) and self.eval(node.filter, v, node.path)
                for v in _values(_lookup(obj, node.path))
            )
        return self.comparison(node, obj, parent)

    def comparison(self, node: Comparison, obj: Mapping[str, Any], parent: AttrPath | None) -> bool:
        key = attribute_key(node.path, parent)
        values: list[tuple[str, Any]] = []
        for value in _values(_lookup(obj, node.path)):
            if isinstance(value, Mapping):  # a complex value stands for its "value"
                value = _get(value, "value")
                if value is not None:
                    values.append((f"{key}.value", value))
            else:
                values.append((key, value))
        if node.value is None:
            return not values if node.op == "eq" else bool(values)
        return any(self.compare(k, v, node.op, node.value) for k, v in values)

    def compare(self, key: str, actual: Any, op: str, expected: Value) -> bool:
        if key in self.datetimes and isinstance(expected, str) and op not in _STRING_OPS:
            actual_at, expected_at = _instant(actual), _instant(expected)
            if actual_at is not None and expected_at is not None:
                return _order(op, actual_at, expected_at)
        if isinstance(expected, bool) or isinstance(actual, bool):
            same = isinstance(expected, bool) and isinstance(actual, bool) and actual == expected
            return same if op == "eq" else (op == "ne" and not same)
        if isinstance(expected, str):
            if not isinstance(actual, str):
                return op == "ne"
            a, e = actual, expected
            if key not in self.case_exact:
                # lower(), not casefold(): what SQL's lower() does, for the SQL oracle tests.
                a, e = a.lower(), e.lower()
            if op == "co":
                return e in a
            if op == "sw":
                return a.startswith(e)
            if op == "ew":
                return a.endswith(e)
            return _order(op, a, e)
        if not _is_number(actual):
            return op == "ne"
        return _order(op, actual, expected)
