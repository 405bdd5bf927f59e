"""The SCIM plugin's parsing layer: filters (RFC 7644 §3.4.2.2), PATCH paths (§3.5.2), matching.

Pure functions, no database: tables of the grammar and of real clients' filters, positioned
errors, fuzzing (any text parses or raises the SCIM error, nothing else), round-trips of
generated ASTs through the renderer, and the evaluator's RFC semantics.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from userplane.plugins.scim.filters import (
    CORE_GROUP,
    CORE_USER,
    ENTERPRISE_USER,
    MAX_DEPTH,
    MAX_LENGTH,
    And,
    AttrPath,
    CompareOp,
    Comparison,
    Filter,
    FilterError,
    Not,
    Or,
    PathError,
    Present,
    ScimSyntaxError,
    Value,
    ValuePath,
    attribute_key,
    matches,
    parse_filter,
    render,
)
from userplane.plugins.scim.paths import PatchPath, parse_path, render_path

P = AttrPath


def eq(name: str, value: Value, sub: str | None = None, schema: str | None = None) -> Comparison:
    return Comparison(P(name, sub, schema), "eq", value)


def pr(name: str) -> Present:
    return Present(P(name))


# --- Parsing: the grammar --------------------------------------------------------------------

PARSED: list[tuple[str, Filter]] = [
    # Every comparison operator, and pr.
    *[
        (f'title {op} "x"', Comparison(P("title"), op, "x"))
        for op in ("eq", "ne", "co", "sw", "ew")
    ],
    *[(f"age {op} 3", Comparison(P("age"), op, 3)) for op in ("gt", "ge", "lt", "le")],
    ("title pr", pr("title")),
    # Keywords in any case; names keep their spelling.
    ('userName EQ "x"', eq("userName", "x")),
    ('userName Eq "x"', eq("userName", "x")),
    ("title PR", pr("title")),
    ("a pr AND b pr Or c pr", Or((And((pr("a"), pr("b"))), pr("c")))),
    ("NOT (a pr)", Not(pr("a"))),
    ("a eq TRUE", eq("a", True)),
    ("a eq False", eq("a", False)),
    ("a eq NULL", eq("a", None)),
    # Precedence: not > and > or; chains are n-ary; parentheses are kept as nesting.
    ("a pr or b pr and c pr", Or((pr("a"), And((pr("b"), pr("c")))))),
    ("a pr and b pr or c pr", Or((And((pr("a"), pr("b"))), pr("c")))),
    ("(a pr or b pr) and c pr", And((Or((pr("a"), pr("b"))), pr("c")))),
    ("a pr and b pr and c pr", And((pr("a"), pr("b"), pr("c")))),
    ("a pr or b pr or c pr", Or((pr("a"), pr("b"), pr("c")))),
    ("a pr and (b pr and c pr)", And((pr("a"), And((pr("b"), pr("c")))))),
    ("((a pr))", pr("a")),
    ("not (a pr) and b pr", And((Not(pr("a")), pr("b")))),
    ("not(a pr or b pr)", Not(Or((pr("a"), pr("b"))))),
    ("not (not (a pr))", Not(Not(pr("a")))),
    # Sub-attributes and schema URNs (the attribute follows the last ':').
    ('name.givenName eq "Barbara"', eq("name", "Barbara", "givenName")),
    ('emails.value co "@example.com"', Comparison(P("emails", "value"), "co", "@example.com")),
    (
        'meta.lastModified gt "2011-05-13T04:42:34Z"',
        Comparison(P("meta", "lastModified"), "gt", "2011-05-13T04:42:34Z"),
    ),
    (
        f'{ENTERPRISE_USER}:employeeNumber eq "701984"',
        eq("employeeNumber", "701984", None, ENTERPRISE_USER),
    ),
    (f'{CORE_USER}:userName sw "J"', Comparison(P("userName", None, CORE_USER), "sw", "J")),
    (
        f'{ENTERPRISE_USER}:manager.value eq "26118915"',
        eq("manager", "26118915", "value", ENTERPRISE_USER),
    ),
    (
        "urn:acme:custom:1.0:Thing:shoeSize ge 42",
        Comparison(P("shoeSize", None, "urn:acme:custom:1.0:Thing"), "ge", 42),
    ),
    (
        'members[$ref eq "https://x/Users/1"]',
        ValuePath(P("members"), eq("$ref", "https://x/Users/1")),
    ),
    ("x-y_z1 pr", pr("x-y_z1")),
    # Value paths.
    ('emails[type eq "work"]', ValuePath(P("emails"), eq("type", "work"))),
    (
        'emails[type eq "work" and value co "@example.com"]',
        ValuePath(
            P("emails"), And((eq("type", "work"), Comparison(P("value"), "co", "@example.com")))
        ),
    ),
    (
        'emails[type eq "work" and value co "@example.com"]'
        ' or ims[type eq "xmpp" and value co "@foo.com"]',
        Or(
            (
                ValuePath(
                    P("emails"),
                    And((eq("type", "work"), Comparison(P("value"), "co", "@example.com"))),
                ),
                ValuePath(
                    P("ims"), And((eq("type", "xmpp"), Comparison(P("value"), "co", "@foo.com")))
                ),
            )
        ),
    ),
    ('emails[not (type eq "work")]', ValuePath(P("emails"), Not(eq("type", "work")))),
    (
        'emails[(type eq "work" or primary eq true)]',
        ValuePath(P("emails"), Or((eq("type", "work"), eq("primary", True)))),
    ),
    (
        'userType eq "Employee" and emails[type eq "work"]',
        And((eq("userType", "Employee"), ValuePath(P("emails"), eq("type", "work")))),
    ),
    (
        f'{ENTERPRISE_USER}:manager[value eq "1"]',
        ValuePath(P("manager", None, ENTERPRISE_USER), eq("value", "1")),
    ),
    # Values: JSON strings with every escape, numbers, booleans, null.
    (r'a eq "q\"b\\s\/f\bf\fn\nr\rt\t"', eq("a", 'q"b\\s/f\bf\fn\nr\rt\t')),
    (r'a eq "\u00e9\u20AC\ud83d\ude00"', eq("a", "é€😀")),
    ('a eq "é€😀 x"', eq("a", "é€😀 x")),
    ('a eq ""', eq("a", "")),
    ('a eq "and or not ) ( ] ["', eq("a", "and or not ) ( ] [")),
    ("a eq 0", eq("a", 0)),
    ("a eq -12", eq("a", -12)),
    ("a eq 1.5", eq("a", 1.5)),
    ("a eq -1.5e3", eq("a", -1500.0)),
    ("a eq 2E-2", eq("a", 0.02)),
    ("a eq 12345678901234567890123", eq("a", 12345678901234567890123)),
    ("a eq true", eq("a", True)),
    ("a eq false", eq("a", False)),
    ("a ne null", Comparison(P("a"), "ne", None)),
    # Whitespace: extra, tabs, newlines, none where unambiguous.
    ('  userName   eq \t "x"  \n', eq("userName", "x")),
    ('(userName eq"x")and(title pr)', And((eq("userName", "x"), pr("title")))),
    ('emails [ type eq "work" ]', ValuePath(P("emails"), eq("type", "work"))),
    # Keywords are valid attribute names where an attribute is expected.
    ("not pr", pr("not")),
    ('not eq "x"', eq("not", "x")),
    ("and pr and or pr", And((pr("and"), pr("or")))),
    ("pr pr", pr("pr")),
    ("not[x pr]", ValuePath(P("not"), pr("x"))),
]

REAL_CLIENTS: list[tuple[str, Filter]] = [
    # Microsoft Entra ID (Azure AD) provisioning.
    (
        'userName eq "test_user_dac3d6d7-3f50-4a6d-a1c2-6bb1a1a1a1a1"',
        eq("userName", "test_user_dac3d6d7-3f50-4a6d-a1c2-6bb1a1a1a1a1"),
    ),
    (
        'externalId eq "0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef"',
        eq("externalId", "0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef"),
    ),
    ('displayName eq "Group1DisplayName"', eq("displayName", "Group1DisplayName")),
    (
        'id eq "9a3a2b2b-1e2d-4b9a" and members eq "3c5d6e7f"',
        And((eq("id", "9a3a2b2b-1e2d-4b9a"), eq("members", "3c5d6e7f"))),
    ),
    # Okta.
    ('userName eq "isaac.brock@example.com"', eq("userName", "isaac.brock@example.com")),
    ('displayName eq "Okta Group"', eq("displayName", "Okta Group")),
    # OneLogin, Google and others: the RFC's own examples.
    ('userName Eq "john"', eq("userName", "john")),
    ('Username eq "john"', eq("Username", "john")),
    ('title pr and userType eq "Employee"', And((pr("title"), eq("userType", "Employee")))),
    ('title pr or userType eq "Intern"', Or((pr("title"), eq("userType", "Intern")))),
    (
        'schemas eq "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"',
        eq("schemas", "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"),
    ),
    (
        'userType eq "Employee" and (emails co "example.com" or emails.value co "example.org")',
        And(
            (
                eq("userType", "Employee"),
                Or(
                    (
                        Comparison(P("emails"), "co", "example.com"),
                        Comparison(P("emails", "value"), "co", "example.org"),
                    )
                ),
            )
        ),
    ),
    (
        'userType ne "Employee" and not (emails co "example.com" or emails.value co "example.org")',
        And(
            (
                Comparison(P("userType"), "ne", "Employee"),
                Not(
                    Or(
                        (
                            Comparison(P("emails"), "co", "example.com"),
                            Comparison(P("emails", "value"), "co", "example.org"),
                        )
                    )
                ),
            )
        ),
    ),
    (
        'userType eq "Employee" and emails[type eq "work" and value co "@example.com"]',
        And(
            (
                eq("userType", "Employee"),
                ValuePath(
                    P("emails"),
                    And((eq("type", "work"), Comparison(P("value"), "co", "@example.com"))),
                ),
            )
        ),
    ),
    # Entra ID's uniqueness check: a value path with a sub-attribute, outside RFC 7644's
    # filter grammar, read as the condition inside the brackets.
    (
        'emails[type eq "work"].value eq "user@contoso.com"',
        ValuePath(P("emails"), And((eq("type", "work"), eq("value", "user@contoso.com")))),
    ),
    (
        'emails[type eq "work" and primary eq true].value pr',
        ValuePath(
            P("emails"),
            And((eq("type", "work"), eq("primary", True), Present(P("value")))),
        ),
    ),
]


@pytest.mark.parametrize(("text", "expected"), PARSED + REAL_CLIENTS)
def test_parses(text: str, expected: Filter) -> None:
    node = parse_filter(text)
    assert node == expected
    # The canonical text parses back to the same tree.
    assert parse_filter(render(node)) == node


def test_names_compare_case_insensitively_but_keep_their_spelling() -> None:
    node = parse_filter(f'{ENTERPRISE_USER.upper()}:EmployeeNUMBER eq "1"')
    assert node == eq("employeenumber", "1", None, ENTERPRISE_USER.lower())
    assert hash(node) == hash(eq("employeeNumber", "1", None, ENTERPRISE_USER))
    assert isinstance(node, Comparison)
    assert node.path.attr == "EmployeeNUMBER"
    assert node.path.normalized == f"{ENTERPRISE_USER.lower()}:employeenumber"
    assert node.path.known_schema == ENTERPRISE_USER
    assert P("name", "GivenName").normalized == "name.givenname"
    assert P("x", None, "urn:acme:x").known_schema is None


def test_values_are_not_names() -> None:
    # String values stay case-sensitive in the AST; the evaluator decides how to compare.
    assert parse_filter('a eq "X"') != parse_filter('a eq "x"')
    # True == 1 in Python; not in the AST.
    assert parse_filter("a eq true") != parse_filter("a eq 1")
    assert parse_filter("a eq 1") == parse_filter("a eq 1.0")


RENDERED = [
    ('userName Eq "john"', 'userName eq "john"'),
    ("A PR  AND  (b pr OR c pr)", "A pr and (b pr or c pr)"),
    ("a pr or (b pr and c pr)", "a pr or b pr and c pr"),
    ("(a pr or b pr) or c pr", "(a pr or b pr) or c pr"),
    ("NOT(a eq TRUE)", "not (a eq true)"),
    (r'a eq "\u00e9\/"', 'a eq "é/"'),
    ('a eq "\\u0001"', 'a eq "\\u0001"'),
    ("a eq 1E3", "a eq 1000.0"),
    ('emails[ type eq "work" ]', 'emails[type eq "work"]'),
]


@pytest.mark.parametrize(("text", "canonical"), RENDERED)
def test_renders_canonical_text(text: str, canonical: str) -> None:
    node = parse_filter(text)
    assert render(node) == canonical == str(node)


# --- Parsing: errors -------------------------------------------------------------------------

ERRORS: list[tuple[str, int, str]] = [
    (
        'userName eqq "x"',
        9,
        "unexpected 'eqq' at character 9; "
        "expected an operator (eq, ne, co, sw, ew, gt, ge, lt, le, pr)",
    ),
    ('userName "x"', 9, "expected an operator"),
    ("userName", 8, "unexpected end of filter at character 8; expected an operator"),
    ('userName eq "x', 12, "unclosed string"),
    ('userName eq "x\\"', 12, "unclosed string"),
    ('userName eq "x" and title eq "y', 29, "unclosed string"),
    ('a eq "\\x"', 6, "invalid string: Invalid \\escape"),
    ('a eq "\\u12"', 7, "invalid string: Invalid \\uXXXX escape"),
    ('a eq "tab\there"', 9, "invalid string: Invalid control character"),
    ('a eq "\\ud800"', 5, "lone surrogate"),
    ('a eq "\\udc00x"', 5, "lone surrogate"),
    ('emails[type eq "work"', 21, "expected ']' to close the '[' at character 6"),
    ('emails[type eq "work" and', 25, "expected an attribute path"),
    ("(a pr", 5, "expected ')' to close the '(' at character 0"),
    ("((a pr) and (b pr)", 18, "expected ')' to close the '(' at character 0"),
    ("not (a pr", 9, "expected ')' to close the '(' at character 4"),
    ('emails[type eq "work")', 21, "expected ']' to close the '[' at character 6"),
    ("a pr)", 4, "there is no '(' to close"),
    ("a pr]", 4, "there is no '[' to close"),
    (
        "userName eq",
        11,
        "expected a value (a JSON string in double quotes, a number, true, false or null)",
    ),
    ("userName eq and b pr", 12, "expected a value"),
    ("userName eq )", 12, "expected a value"),
    ("userName eq 'x'", 12, "strings take double quotes"),
    ("userName eq x", 12, "expected a value"),
    ("userName eq tru", 12, "expected a value"),
    ('userName pr "x"', 12, "'pr' takes no value"),
    ("userName pr true", 12, "'pr' takes no value"),
    ("userName pr 1", 12, "'pr' takes no value"),
    ("a gt true", 5, "booleans and null take only eq and ne"),
    ("a le null", 5, "booleans and null take only eq and ne"),
    ("a co 1", 5, "'co' needs a string value"),
    ("a sw null", 5, "'sw' needs a string value"),
    ("a ew false", 5, "'ew' needs a string value"),
    ("a eq 01", 5, "invalid number '01'"),
    ("a eq 1.", 5, "invalid number"),
    ("a eq 1e", 5, "invalid number"),
    ("a eq -", 5, "invalid number"),
    ("a eq 12abc", 5, "invalid number"),
    ("a eq 1e999", 5, "number out of range"),
    ("a eq -1e999", 5, "number out of range"),
    ('emails[type[value eq "x"]]', 11, "value filters cannot be nested"),
    ('emails[type eq "work" and ims[type pr]]', 29, "value filters cannot be nested"),
    ('emails[value.x eq "a"]', 7, "name a sub-attribute of emails on its own"),
    (f'emails[{CORE_USER}:value eq "a"]', 7, "name a sub-attribute of emails on its own"),
    ('name.givenName[value eq "a"]', 14, "not to the sub-attribute 'name.givenName'"),
    ('emails[type eq "work"].value', 28, "expected an operator"),
    ('emails[type eq "work"].1 eq "x"', 23, "expected a sub-attribute name of emails"),
    ("emails[]", 7, "expected a filter inside '[...]'"),
    ("", 0, "empty filter"),
    ("   \t ", 0, "empty filter"),
    ("()", 1, "expected an attribute path"),
    ("and", 3, "expected an operator"),
    ("a pr and", 8, "unexpected end of filter at character 8; expected an attribute path"),
    ("a pr or or b pr", 11, "unexpected 'b' at character 11; expected an operator"),
    ("a pr b pr", 5, "expected 'and', 'or' or the end of the filter"),
    ('a eq "x" "y"', 9, "expected 'and', 'or' or the end of the filter"),
    ("not a pr", 4, "expected '(' after 'not'"),
    ("not", 3, "expected '(' after 'not'"),
    ("1a pr", 0, "invalid number"),
    ("_a pr", 0, "invalid attribute path '_a'"),
    ("a..b pr", 0, "invalid attribute path"),
    ("a.b.c pr", 0, "invalid attribute path"),
    ("a. pr", 0, "invalid attribute path"),
    (".a pr", 0, "expected an attribute path"),
    ("urn::a pr", 0, "invalid attribute path"),
    (":a pr", 0, "invalid attribute path"),
    ("urn:acme: pr", 0, "invalid attribute path"),
    ("user=name pr", 0, "invalid attribute path"),
    (f"{ENTERPRISE_USER} pr", 0, "names a schema, not an attribute"),
    (f"{CORE_GROUP.upper()} pr", 0, "names a schema, not an attribute"),
    ('userName eq "x" )', 16, "there is no '(' to close"),
    ("a pr [", 5, "expected 'and', 'or' or the end of the filter"),
]


@pytest.mark.parametrize(("text", "position", "message"), ERRORS)
def test_rejects(text: str, position: int, message: str) -> None:
    with pytest.raises(FilterError) as caught:
        parse_filter(text)
    error = caught.value
    assert error.scim_type == "invalidFilter"
    assert isinstance(error, ValueError)
    assert error.position == position
    assert message in str(error)
    if "at character" in str(error):
        assert f"at character {position}" in str(error)


def test_rejects_too_deep() -> None:
    ok = "(" * MAX_DEPTH + "a pr" + ")" * MAX_DEPTH
    assert parse_filter(ok) == pr("a")
    for text, position in [
        ("(" * (MAX_DEPTH + 1) + "a pr" + ")" * (MAX_DEPTH + 1), MAX_DEPTH),
        ("not (" * (MAX_DEPTH + 1) + "a pr" + ")" * (MAX_DEPTH + 1), 5 * MAX_DEPTH + 4),
        ("(" * MAX_DEPTH + "emails[a pr]" + ")" * MAX_DEPTH, MAX_DEPTH + 6),
        # Unclosed: the depth is what stops it, never Python's recursion limit.
        ("(" * 2000, MAX_DEPTH),
        ("not (" * 800, 5 * MAX_DEPTH + 4),
    ]:
        with pytest.raises(FilterError, match="nested too deeply") as caught:
            parse_filter(text)
        assert caught.value.position == position


def test_rejects_too_long() -> None:
    longest = 'a eq "' + "x" * (MAX_LENGTH - 7) + '"'
    assert len(longest) == MAX_LENGTH
    assert parse_filter(longest) == eq("a", "x" * (MAX_LENGTH - 7))
    with pytest.raises(FilterError, match="too long: 4097 characters") as caught:
        parse_filter(longest + " ")
    assert caught.value.position == MAX_LENGTH


def test_long_chains_are_flat() -> None:
    # About as many terms as MAX_LENGTH allows: one n-ary node, no recursion per term.
    text = " and ".join(["a pr"] * 450)
    node = parse_filter(text)
    assert isinstance(node, And)
    assert len(node.operands) == 450
    assert matches(node, {"a": 1})
    assert render(node) == text


def test_errors_share_a_base() -> None:
    assert issubclass(FilterError, ScimSyntaxError)
    assert issubclass(PathError, ScimSyntaxError)
    assert FilterError("x", 0).scim_type == "invalidFilter"
    assert PathError("x", 0).scim_type == "invalidPath"


# Fragments that make up SCIM filters, to fuzz the parser deeper than random text reaches.
FRAGMENTS = st.sampled_from(
    [
        "(", ")", "[", "]", ".", " ", "\t", '"', "\\", "not", "NOT", "and", "or", "pr",
        "eq", "gt", "co", "true", "null", "1", "-", "1.5e3", "01", '"x"', '"\\u00e9"',
        '"\\ud800"', "a", "emails", "name.givenName", "value", "urn:acme:x:", CORE_USER, ":",
        "$ref", "'", "é", "\x00",
    ]
)  # fmt: skip


@given(st.text(max_size=200) | st.lists(FRAGMENTS, max_size=40).map("".join))
def test_any_text_parses_or_raises_filter_error(text: str) -> None:
    try:
        node = parse_filter(text)
    except FilterError as e:
        error: FilterError | None = e
    else:
        error = None
        assert parse_filter(render(node)) == node
    if error is not None:
        assert 0 <= error.position <= len(text)
        assert error.scim_type == "invalidFilter"


@given(st.text(max_size=200) | st.lists(FRAGMENTS, max_size=40).map("".join))
def test_any_text_parses_as_a_path_or_raises_path_error(text: str) -> None:
    try:
        path = parse_path(text)
    except PathError as e:
        error: PathError | None = e
    else:
        error = None
        assert parse_path(render_path(path)) == path
    if error is not None:
        assert 0 <= error.position <= len(text)
        assert error.scim_type == "invalidPath"


# --- Round-trips of generated trees ----------------------------------------------------------

NAMES = st.sampled_from(
    ["userName", "emails", "value", "type", "not", "and", "or", "pr", "eq", "true", "$ref"]
) | st.from_regex(r"\$?[A-Za-z][A-Za-z0-9_-]{0,6}", fullmatch=True)
SCHEMAS = st.sampled_from(
    [None, CORE_USER, ENTERPRISE_USER, "urn:acme:custom:1.0:Thing", "http://acme.example/s"]
)
PATHS = st.builds(AttrPath, NAMES, st.none() | NAMES, SCHEMAS)
PLAIN_PATHS = st.builds(AttrPath, NAMES)
MULTI_VALUED = st.builds(AttrPath, NAMES, st.none(), SCHEMAS)
NUMBERS = st.integers() | st.floats(allow_nan=False, allow_infinity=False)
ANY_VALUE = st.none() | st.booleans() | NUMBERS | st.text(max_size=20)
ORDERED = NUMBERS | st.text(max_size=20)
# What each operator may take (a Comparison checks it).
VALUES_FOR: dict[CompareOp, st.SearchStrategy[Value]] = {
    "eq": ANY_VALUE,
    "ne": ANY_VALUE,
    "co": st.text(max_size=20),
    "sw": st.text(max_size=20),
    "ew": st.text(max_size=20),
    "gt": ORDERED,
    "ge": ORDERED,
    "lt": ORDERED,
    "le": ORDERED,
}


@st.composite
def comparisons(draw: st.DrawFn, paths: st.SearchStrategy[AttrPath]) -> Comparison:
    op = draw(st.sampled_from(sorted(VALUES_FOR)))
    return Comparison(draw(paths), op, draw(VALUES_FOR[op]))


def trees(leaves: st.SearchStrategy[Filter]) -> st.SearchStrategy[Filter]:
    def extend(children: st.SearchStrategy[Filter]) -> st.SearchStrategy[Filter]:
        chains = st.lists(children, min_size=2, max_size=3).map(tuple)
        return st.builds(Not, children) | chains.map(And) | chains.map(Or)

    return st.recursive(leaves, extend, max_leaves=8)


INNER = trees(comparisons(PLAIN_PATHS) | st.builds(Present, PLAIN_PATHS))
FILTERS = trees(
    comparisons(PATHS) | st.builds(Present, PATHS) | st.builds(ValuePath, MULTI_VALUED, INNER)
)


@given(FILTERS)
def test_rendered_trees_parse_back_equal(node: Filter) -> None:
    text = render(node)
    assume(len(text) <= MAX_LENGTH)
    assert parse_filter(text) == node
    assert render(parse_filter(text)) == text


PATCH_PATHS = st.builds(PatchPath, PATHS) | st.builds(
    PatchPath, MULTI_VALUED, INNER, st.none() | NAMES
)


@given(PATCH_PATHS)
def test_rendered_patch_paths_parse_back_equal(path: PatchPath) -> None:
    text = render_path(path)
    assume(len(text) <= MAX_LENGTH)
    assert parse_path(text) == path


def test_ast_nodes_are_immutable_and_checked() -> None:
    node = eq("a", "x")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        node.value = "y"  # type: ignore[misc]
    with pytest.raises(ValueError, match="at least two"):
        And((node,))
    with pytest.raises(ValueError, match="booleans and null"):
        Comparison(P("a"), "gt", True)
    with pytest.raises(ValueError, match="needs a string"):
        Comparison(P("a"), "co", 1)
    with pytest.raises(ValueError, match="'op' must be in"):
        Comparison(P("a"), "like", "x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a filter"):
        PatchPath(P("emails"), None, "value")
    with pytest.raises(ValueError, match="not to a sub-attribute"):
        PatchPath(P("name", "givenName"), pr("x"))


# --- PATCH paths -----------------------------------------------------------------------------

PATCH_PARSED: list[tuple[str, PatchPath]] = [
    ("userName", PatchPath(P("userName"))),
    ("name.givenName", PatchPath(P("name", "givenName"))),
    ("  name.givenName ", PatchPath(P("name", "givenName"))),
    ("members", PatchPath(P("members"))),
    ('emails[type eq "work"].value', PatchPath(P("emails"), eq("type", "work"), "value")),
    ('emails[type eq "work"]', PatchPath(P("emails"), eq("type", "work"))),
    (
        'addresses[type eq "work" and primary eq true].streetAddress',
        PatchPath(P("addresses"), And((eq("type", "work"), eq("primary", True))), "streetAddress"),
    ),
    (
        'members[value eq "2819c223-7f76-453a-919d-413861904646"]',
        PatchPath(P("members"), eq("value", "2819c223-7f76-453a-919d-413861904646")),
    ),
    (f"{ENTERPRISE_USER}:manager.value", PatchPath(P("manager", "value", ENTERPRISE_USER))),
    (f"{ENTERPRISE_USER}:employeeNumber", PatchPath(P("employeeNumber", None, ENTERPRISE_USER))),
    (f"{ENTERPRISE_USER}:manager", PatchPath(P("manager", None, ENTERPRISE_USER))),
    (f"{CORE_USER}:name.familyName", PatchPath(P("name", "familyName", CORE_USER))),
    (f"{CORE_GROUP}:displayName", PatchPath(P("displayName", None, CORE_GROUP))),
    (
        "urn:acme:custom:1.0:Thing:shoeSize",
        PatchPath(P("shoeSize", None, "urn:acme:custom:1.0:Thing")),
    ),
    ('EMAILS[TYPE EQ "work"].VALUE', PatchPath(P("emails"), eq("type", "work"), "value")),
]


@pytest.mark.parametrize(("text", "expected"), PATCH_PARSED)
def test_parses_patch_paths(text: str, expected: PatchPath) -> None:
    path = parse_path(text)
    assert path == expected
    assert parse_path(render_path(path)) == path == parse_path(str(path))


def test_patch_path_spelling_and_normal_form() -> None:
    path = parse_path('Emails[Type eq "Work"].Value')
    assert render_path(path) == 'Emails[Type eq "Work"].Value'
    assert path.normalized == 'emails[Type eq "Work"].value'
    assert (
        parse_path(f"{ENTERPRISE_USER}:Manager.Value").normalized
        == f"{ENTERPRISE_USER.lower()}:manager.value"
    )


PATH_ERRORS: list[tuple[str, int, str]] = [
    ("", 0, "empty path"),
    ("  ", 0, "empty path"),
    ("emails[", 7, "expected an attribute path"),
    ('emails[type eq "work"', 21, "expected ']' to close the '[' at character 6"),
    (
        'emails[type eq "work"].',
        23,
        "unexpected end of path at character 23; expected a sub-attribute name of emails",
    ),
    ('emails[type eq "work"].value.x', 23, "expected a sub-attribute name"),
    ('emails[type eq "work"].1', 23, "expected a sub-attribute name"),
    (
        'emails[type eq "work"]value',
        22,
        "expected '.' and a sub-attribute name, or the end of the path",
    ),
    ('emails[type eq "work"][value pr]', 22, "expected '.' and a sub-attribute name"),
    ('emails[type eqq "work"]', 12, "expected an operator"),
    ('emails[type eq "work]', 15, "unclosed string"),
    ("emails[type[value pr]]", 11, "value filters cannot be nested"),
    ('name.givenName[value eq "a"]', 14, "not to the sub-attribute 'name.givenName'"),
    ("name.givenName.x", 0, "invalid attribute path"),
    ("userName eq", 9, "expected '[' or the end of the path"),
    ("userName userName", 9, "expected '[' or the end of the path"),
    ("emails]", 6, "there is no '[' to close"),
    ('"userName"', 0, "expected an attribute path"),
    ("[type pr]", 0, "expected an attribute path"),
    (ENTERPRISE_USER, 0, "names a schema, not an attribute"),
    ("urn:acme::x", 0, "invalid attribute path"),
    ("emails[" * 40, 13, "value filters cannot be nested"),
]


@pytest.mark.parametrize(("text", "position", "message"), PATH_ERRORS)
def test_rejects_patch_paths(text: str, position: int, message: str) -> None:
    with pytest.raises(PathError) as caught:
        parse_path(text)
    assert caught.value.scim_type == "invalidPath"
    assert caught.value.position == position
    assert message in str(caught.value)


def test_rejects_too_long_patch_paths() -> None:
    with pytest.raises(PathError, match="path too long"):
        parse_path("a" * (MAX_LENGTH + 1))


# --- Evaluation ------------------------------------------------------------------------------

# RFC 7643 §8.2's full User (trimmed), with the enterprise extension.
BJENSEN: dict[str, Any] = {
    "schemas": [CORE_USER, ENTERPRISE_USER],
    "id": "2819c223-7f76-453a-919d-413861904646",
    "externalId": "701984",
    "userName": "bjensen@example.com",
    "name": {"familyName": "Jensen", "givenName": "Barbara", "middleName": ""},
    "displayName": "Babs Jensen",
    "nickName": None,
    "title": "Tour Guide",
    "userType": "Employee",
    "active": True,
    "loginCount": 12,
    "score": 4.5,
    "emails": [
        {"value": "bjensen@example.com", "type": "work", "primary": True},
        {"value": "babs@jensen.org", "type": "home"},
    ],
    "phoneNumbers": [],
    "ims": [{"value": "someaimhandle", "type": "aim"}],
    "photos": [{}],
    "groups": [{"value": "e9e30dba-f08f-4109-8486-d5c6a331660a", "display": "Tour Guides"}],
    "roles": ["guide", "admin"],
    "meta": {
        "resourceType": "User",
        "created": "2010-01-23T04:56:22Z",
        "lastModified": "2011-05-13T04:42:34+02:00",
    },
    ENTERPRISE_USER: {
        "employeeNumber": "701984",
        "manager": {"value": "26118915-6090-4610-87e4-49d8ca9f808d", "displayName": "John Smith"},
    },
}

EVALUATED: list[tuple[str, bool]] = [
    # Case-insensitive names; case-insensitive strings unless caseExact.
    ('userName eq "bjensen@example.com"', True),
    ('USERNAME eq "BJensen@Example.COM"', True),
    ('userName ne "bjensen@example.com"', False),
    ('userName ne "other"', True),
    ('id eq "2819c223-7f76-453a-919d-413861904646"', True),
    ('id eq "2819C223-7F76-453A-919D-413861904646"', False),
    ('externalId eq "701984"', True),
    ('name.givenName eq "barbara"', True),
    ('NAME.GIVENNAME sw "BAR"', True),
    ('name.familyName ew "SEN"', True),
    ('displayName co "bs je"', True),
    ('displayName co "xyz"', False),
    # Ordering on strings: lexicographic (after lowering, for caseExact=false).
    ('userName gt "a"', True),
    ('userName gt "B"', True),
    ('userName lt "bjensen@example.com"', False),
    ('userName le "bjensen@example.com"', True),
    ('userName ge "BJENSEN@EXAMPLE.COM"', True),
    # Numbers and booleans.
    ("loginCount eq 12", True),
    ("loginCount eq 12.0", True),
    ("loginCount gt 11", True),
    ("loginCount lt 12", False),
    ("score ge 4.5", True),
    ('loginCount eq "12"', False),
    ('loginCount ne "12"', True),
    ("active eq true", True),
    ("active eq TRUE", True),
    ("active ne true", False),
    ("active eq 1", False),
    ('active eq "true"', False),
    ("loginCount eq true", False),
    # dateTime attributes: instants, whatever the offset or precision.
    ('meta.created eq "2010-01-23T05:56:22+01:00"', True),
    ('meta.created eq "2010-01-23T04:56:22.000Z"', True),
    ('meta.created gt "2010-01-23T04:56:21Z"', True),
    ('meta.created gt "2010-01-23T04:56:22Z"', False),
    ('meta.created ge "2010-01-23T04:56:22Z"', True),
    ('meta.lastModified lt "2011-05-13T03:00:00Z"', True),  # 02:42:34Z
    ('meta.lastModified gt "2011-05-13T04:00:00Z"', False),  # lexicographically it would be
    ('meta.lastModified gt "2011-05-13T02:42:34"', False),  # no offset: UTC
    ('meta.lastModified ge "2011-05-13T02:42:34"', True),
    ('meta.created sw "2010-01"', True),
    ('meta.created gt "not a date"', False),  # compared as strings: "2" < "n"
    ('meta.resourceType eq "user"', False),
    ('meta.resourceType eq "User"', True),
    # Multi-valued: any value matches; a complex value stands for its "value".
    ('emails eq "babs@jensen.org"', True),
    ('emails co "jensen.org"', True),
    ('emails.value ew "@example.com"', True),
    ('emails.type eq "home"', True),
    ('emails.type ne "work"', True),
    ('emails.type eq "other"', False),
    ("emails.primary eq true", True),
    ('roles eq "ADMIN"', True),
    ('roles sw "g"', True),
    ('roles eq "guest"', False),
    ('groups eq "e9e30dba-f08f-4109-8486-d5c6a331660a"', True),
    ('groups eq "E9E30DBA-F08F-4109-8486-D5C6A331660A"', False),  # ids: caseExact
    ('groups.display eq "tour guides"', True),
    # Value paths: one value must match the whole inner filter.
    ('emails[type eq "work" and value co "@example.com"]', True),
    ('emails[type eq "home" and value co "@example.com"]', False),
    ('emails[type eq "home" or value co "@example.com"]', True),
    ('emails[not (type eq "work")]', True),
    ("emails[primary eq true]", True),
    ("emails[primary pr]", True),
    ('ims[type eq "aim"]', True),
    ('phoneNumbers[type eq "work"]', False),
    ('missing[type eq "work"]', False),
    ('EMAILS[TYPE EQ "WORK"]', True),
    # pr: present, and not null, "", [] or {}.
    ("title pr", True),
    ("nickName pr", False),
    ("missing pr", False),
    ("name.middleName pr", False),
    ("name pr", True),
    ("phoneNumbers pr", False),
    ("photos pr", False),
    ("emails pr", True),
    ("emails.display pr", False),
    ("active pr", True),
    ("loginCount pr", True),
    # null: eq null is "not present"; an absent attribute matches no ne.
    ("nickName eq null", True),
    ("missing eq null", True),
    ("title eq null", False),
    ("title ne null", True),
    ("missing ne null", False),
    ('missing ne "x"', False),
    ('missing eq "x"', False),
    ('not (missing eq "x")', True),
    # Logic.
    ('title pr and userType eq "Employee"', True),
    ('title pr and userType eq "Intern"', False),
    ('title pr or userType eq "Intern"', True),
    ('missing pr or userType eq "Intern"', False),
    ('not (userType eq "Intern")', True),
    ('userType eq "Intern" or title pr and active eq true', True),
    ('(userType eq "Intern" or title pr) and active eq false', False),
    # Schema URNs: core at the top level, extensions in their object.
    (f'{CORE_USER}:userName eq "bjensen@example.com"', True),
    (f'{CORE_USER.upper()}:username eq "bjensen@example.com"', True),
    (f'{ENTERPRISE_USER}:employeeNumber eq "701984"', True),
    (f'{ENTERPRISE_USER.lower()}:EMPLOYEENUMBER eq "701984"', True),
    (f'{ENTERPRISE_USER}:manager.value eq "26118915-6090-4610-87e4-49d8ca9f808d"', True),
    (f'{ENTERPRISE_USER}:manager.value eq "26118915-6090-4610-87E4-49D8CA9F808D"', False),
    (f'{ENTERPRISE_USER}:manager eq "26118915-6090-4610-87e4-49d8ca9f808d"', True),
    (f'{ENTERPRISE_USER}:manager.displayName eq "JOHN SMITH"', True),
    (f"{ENTERPRISE_USER}:userName pr", False),
    ("employeeNumber pr", False),
    ("urn:acme:custom:1.0:Thing:userName pr", False),
    # Real clients.
    ('userName eq "bjensen@example.com"', True),
    ('externalId eq "701984"', True),
    ('externalId eq "701984 "', False),
]


@pytest.mark.parametrize(("text", "expected"), EVALUATED)
def test_matches(text: str, expected: bool) -> None:
    assert matches(parse_filter(text), BJENSEN) is expected


GROUP: dict[str, Any] = {
    "schemas": [CORE_GROUP],
    "id": "e9e30dba-f08f-4109-8486-d5c6a331660a",
    "displayName": "Tour Guides",
    "members": [
        {"value": "2819c223-7f76-453a-919d-413861904646", "display": "Babs Jensen", "type": "User"},
        {"value": "902c246b-6245-4190-8e05-00816be7344a", "display": "Mandy Pepperidge"},
    ],
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Entra ID's membership check.
        (
            'id eq "e9e30dba-f08f-4109-8486-d5c6a331660a"'
            ' and members eq "902c246b-6245-4190-8e05-00816be7344a"',
            True,
        ),
        (
            'id eq "e9e30dba-f08f-4109-8486-d5c6a331660a"'
            ' and members eq "00000000-6245-4190-8e05-00816be7344a"',
            False,
        ),
        ('members[value eq "2819c223-7f76-453a-919d-413861904646"]', True),
        ('members.display eq "mandy pepperidge"', True),
        ('displayName eq "tour guides"', True),
        (f'{CORE_GROUP}:displayName eq "Tour Guides"', True),
    ],
)
def test_matches_groups(text: str, expected: bool) -> None:
    assert matches(parse_filter(text), GROUP) is expected


def test_case_exact_and_datetimes_are_parameters() -> None:
    node = parse_filter('userName eq "BJENSEN@example.com"')
    assert matches(node, BJENSEN)
    assert not matches(node, BJENSEN, case_exact={"username"})
    created = parse_filter('meta.created lt "2010-01-23T05:00:00+01:00"')  # 04:00Z
    assert not matches(created, BJENSEN)
    assert matches(created, BJENSEN, datetimes=frozenset())  # as strings: "...T04" < "...T05"
    assert attribute_key(P("userName")) == "username"
    assert attribute_key(P("userName", None, CORE_USER)) == "username"
    assert (
        attribute_key(P("manager", "Value", ENTERPRISE_USER))
        == f"{ENTERPRISE_USER.lower()}:manager.value"
    )
    assert attribute_key(P("Value"), parent=P("Emails")) == "emails.value"


def test_matches_values_for_patch() -> None:
    # PATCH selects values of a multi-valued attribute by the filter of its path.
    path = parse_path('emails[type eq "WORK"].value')
    assert path.filter is not None
    selected = [v for v in BJENSEN["emails"] if matches(path.filter, v, parent=path.attr)]
    assert selected == [BJENSEN["emails"][0]]
    members = parse_path('members[value eq "2819c223-7f76-453a-919d-413861904646"]')
    assert members.filter is not None
    kept = [m for m in GROUP["members"] if not matches(members.filter, m, parent=members.attr)]
    assert [m["value"] for m in kept] == ["902c246b-6245-4190-8e05-00816be7344a"]
    # The parent's caseExact keys apply to the plain names inside the brackets.
    assert not matches(
        parse_filter('value eq "2819C223-7F76-453A-919D-413861904646"'),
        GROUP["members"][0],
        parent=P("members"),
    )


def test_matches_real_datetimes_and_naive_values() -> None:
    from datetime import UTC, datetime

    resource = {"meta": {"lastModified": datetime(2011, 5, 13, 4, 42, 34, tzinfo=UTC)}}
    assert matches(parse_filter('meta.lastModified eq "2011-05-13T04:42:34Z"'), resource)
    naive = {"meta": {"lastModified": "2011-05-13T04:42:34"}}
    assert matches(parse_filter('meta.lastModified eq "2011-05-13T06:42:34+02:00"'), naive)


JSON = st.recursive(
    st.none()
    | st.booleans()
    | NUMBERS
    | st.text(max_size=8)
    | st.sampled_from(["2011-05-13T04:42:34Z", "work"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(NAMES, children, max_size=3),
    max_leaves=12,
)
RESOURCES = st.dictionaries(NAMES | SCHEMAS.filter(bool).map(str), JSON, max_size=6)


@given(FILTERS, RESOURCES)
def test_matching_never_raises_and_follows_logic(node: Filter, resource: dict[str, Any]) -> None:
    result = matches(node, resource)
    assert isinstance(result, bool)
    assert matches(Not(node), resource) is not result
    assert matches(And((node, node)), resource) is result
    assert matches(Or((node, Not(node))), resource)
