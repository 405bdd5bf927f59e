"""Properties of email normalisation (``userplane.emails``) and folding (``userplane.text``)."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from userplane.emails import EMAIL_FIELD, normalize_email
from userplane.errors import InvalidInput
from userplane.testing import emails
from userplane.text import fold

FAST = settings(max_examples=50, deadline=None)

_ASCII_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def full_width(text: str) -> str:
    """``text`` with every ASCII letter and digit replaced by its full-width form."""
    return "".join(chr(ord(c) + 0xFEE0) if c in _ASCII_ALNUM else c for c in text)


ascii_emails = st.builds(
    "{}@{}.{}".format,
    st.text(alphabet=_ASCII_ALNUM + "._+-", min_size=1, max_size=20).filter(
        lambda s: not s.startswith(".") and not s.endswith(".") and ".." not in s
    ),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=12),
    st.sampled_from(["org", "com", "net", "io"]),
)


# -- normalisation ---------------------------------------------------------------


@FAST
@given(emails())
def test_normalize_is_idempotent(address: str) -> None:
    key = normalize_email(address)
    assert normalize_email(key) == key


@FAST
@given(emails())
def test_the_key_is_already_folded(address: str) -> None:
    key = normalize_email(address)
    assert fold(key) == key


@FAST
@given(emails(), st.sampled_from([str.swapcase, str.upper, str.lower]))
def test_case_does_not_change_the_key(address: str, change: Any) -> None:
    assert normalize_email(change(address)) == normalize_email(address)


@FAST
@given(ascii_emails)
def test_full_width_letters_give_the_ascii_key(address: str) -> None:
    wide = full_width(address)
    assert wide != address
    assert normalize_email(wide) == normalize_email(address)


@FAST
@given(emails())
def test_full_width_letters_give_the_same_key_for_mixed_addresses(address: str) -> None:
    assert normalize_email(full_width(address)) == normalize_email(address)


@pytest.mark.parametrize(
    ("spelling", "key"),
    [
        ("Ann@Example.ORG", "ann@example.org"),
        ("ANN@x.org", "ann@x.org"),
        (full_width("ANN@example.org"), "ann@example.org"),
        ("Straße@example.org", "strasse@example.org"),
        ("ZOË@EXAMPLE.ORG", "zoë@example.org"),
    ],
)
def test_known_keys(spelling: str, key: str) -> None:
    assert normalize_email(spelling) == key


@FAST
@given(st.text(max_size=80))
def test_arbitrary_text_is_a_key_or_invalid_input(text: str) -> None:
    error: InvalidInput | None = None
    try:
        key = normalize_email(text)
    except InvalidInput as exc:
        error = exc
    if error is None:
        assert normalize_email(key) == key
    else:
        assert error.errors
        assert error.errors[0].field == EMAIL_FIELD


# -- fold --------------------------------------------------------------------------


@FAST
@given(st.text())
def test_fold_is_idempotent(text: str) -> None:
    once = fold(text)
    assert fold(once) == once


@pytest.mark.parametrize(
    "text",
    [
        "ß",
        "ﬃ",
        "ǅ",
        "ΐ",
        "ẞ",
        "İ",
        "\u0345",  # combining ypogegrammeni: casefold and NFKC disagree
        "\u210c",  # black-letter H
        "㎒",
        "Å",
    ],
)
def test_fold_is_idempotent_on_tricky_code_points(text: str) -> None:
    once = fold(text)
    assert fold(once) == once


def test_fold_ignores_case_and_compatibility_forms() -> None:
    assert fold("Ann") == fold("ANN") == fold(full_width("ann")) == "ann"


# -- invalid addresses ------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        pytest.param("ann.example.org", id="no-at"),
        pytest.param("ann@@example.org", id="two-ats-together"),
        pytest.param("ann@bob@example.org", id="two-ats"),
        pytest.param("", id="empty"),
        pytest.param("ann example@example.org", id="space-in-local"),
        pytest.param(" ann@example.org", id="leading-space"),
        pytest.param("ann@exa mple.org", id="space-in-domain"),
        pytest.param("a@b", id="no-dot-in-domain"),
        pytest.param("a" * 288 + "@example.org", id="300-chars"),
        pytest.param("@example.org", id="empty-local"),
        pytest.param("ann@", id="empty-domain"),
    ],
)
def test_invalid_addresses_name_the_email_field(address: str) -> None:
    with pytest.raises(InvalidInput) as info:
        normalize_email(address)
    assert info.value.errors
    assert info.value.errors[0].field == "$.email"
    assert info.value.errors[0].message
    assert info.value.detail.startswith("$.email: ")


def test_the_300_char_address_is_300_chars() -> None:
    assert len("a" * 288 + "@example.org") == 300


def test_invalid_address_names_the_given_field() -> None:
    with pytest.raises(InvalidInput) as info:
        normalize_email("nope", field="$.filter.email")
    assert [e.field for e in info.value.errors] == ["$.filter.email"]


@FAST
@given(emails())
def test_an_address_with_a_second_at_is_invalid(address: str) -> None:
    local, _, domain = address.partition("@")
    with pytest.raises(InvalidInput) as info:
        normalize_email(f"{local}@{local}@{domain}")
    assert info.value.errors[0].field == "$.email"


# -- no DNS -------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every resolver entry point fail loudly, and record attempts."""
    attempts: list[str] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(repr(args))
        raise AssertionError(f"DNS lookup attempted: {args!r}")

    for name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "create_connection"):
        monkeypatch.setattr(socket, name, refuse)
    try:
        import dns.resolver
    except ImportError:  # pragma: no cover - dnspython is a dependency of email-validator
        pass
    else:
        monkeypatch.setattr(dns.resolver.Resolver, "resolve", refuse)
        monkeypatch.setattr(dns.resolver, "resolve", refuse)
    return attempts


def test_an_unknown_but_well_formed_domain_validates_without_dns(no_network: list[str]) -> None:
    key = normalize_email("X@No-Such-Domain-4f1c9e2b7a.org")
    assert key == "x@no-such-domain-4f1c9e2b7a.org"
    assert no_network == []


def test_reserved_names_are_refused_offline(no_network: list[str]) -> None:
    # email-validator refuses special-use names (RFC 6761) by syntax alone.
    with pytest.raises(InvalidInput) as info:
        normalize_email("x@no-such-domain.invalid")
    assert info.value.errors[0].field == "$.email"
    assert no_network == []


@FAST
@given(emails())
def test_generated_addresses_never_touch_the_network(address: str) -> None:
    # Hypothesis forbids function-scoped fixtures here; patch around each example instead.
    with pytest.MonkeyPatch.context() as mp:

        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("DNS lookup attempted")

        mp.setattr(socket, "getaddrinfo", refuse)
        mp.setattr(socket, "gethostbyname", refuse)
        normalize_email(address)


# -- the fast path agrees with the validator ---------------------------------------------

_ATEXT_CHARS = _ASCII_ALNUM + "!#$%&'*+/=?^_`{|}~-"


def _full_path(address: str) -> str:
    """What ``normalize_email`` answers when it takes the validator's full parse."""
    import email_validator

    try:
        checked = email_validator.validate_email(
            address, check_deliverability=False, allow_smtputf8=True
        )
    except email_validator.EmailNotValidError as exc:
        raise InvalidInput.for_field(EMAIL_FIELD, str(exc)) from None
    key = fold(checked.normalized)
    if len(key) > 320:
        raise InvalidInput.for_field(EMAIL_FIELD, "is too long once Unicode-normalised")
    return key


def _outcome(call: Any, address: str) -> tuple[str, str]:
    try:
        return ("key", call(address))
    except InvalidInput as exc:
        return ("error", exc.detail)


#: Addresses near the fast path's edges: dots, lengths, odd domains, non-ASCII, quotes.
edgy_addresses = st.builds(
    "{}{}{}".format,
    st.text(alphabet=_ATEXT_CHARS + '."\\ é', min_size=0, max_size=70),
    st.sampled_from(["@", "@", "@", "", "@@"]),
    st.one_of(
        st.sampled_from(
            [
                "example.com",
                "Example.COM",
                "localhost",
                "x.local",
                "a.test",
                "b.invalid",
                "x-.org",
                "-x.org",
                "x..org",
                "x.org.",
                "1.2.3.4",
                "[127.0.0.1]",
                "xn--bcher-kva.example",
                "bücher.example",
                "a" * 64 + ".com",
                ("a" * 60 + ".") * 4 + "com",
                "co",
                "",
            ]
        ),
        st.text(alphabet="abcXYZ019.-_", min_size=0, max_size=30),
    ),
)


@settings(max_examples=1500, deadline=None)
@given(st.one_of(edgy_addresses, ascii_emails, emails()))
def test_the_fast_path_answers_as_the_validator_does(address: str) -> None:
    """Key or error, the same for every address as the validator's full parse gives."""
    assert _outcome(normalize_email, address) == _outcome(_full_path, address)
