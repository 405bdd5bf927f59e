"""Email addresses: validation and the one normalisation that decides identity."""

from __future__ import annotations

import functools
import re

import email_validator

from userplane.errors import InvalidInput
from userplane.text import fold

EMAIL_FIELD = "$.email"
#: RFC 5321's limits: within them an address may take the fast path (the validator
#: enforces the total; a longer local part simply takes the full parse).
MAX_LOCAL = 64
MAX_ADDRESS = 254
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
#: An ASCII address whose local part is a dot-atom (RFC 5322): no quotes, no comments.
_DOT_ATOM = re.compile(rf"({_ATEXT}(?:\.{_ATEXT})*)@([A-Za-z0-9.-]+)")
#: The longest an email key may be: RFC 5321's 254, with room for folding.
MAX_KEY = 320


def normalize_email(address: str, field: str = EMAIL_FIELD) -> str:
    """Validate ``address`` and return the key that decides whether two addresses are one.

    Syntax is checked by ``email-validator`` (no DNS lookups: a user service must
    not block on, or leak addresses to, a resolver). The key is the validator's
    normalised form, then Unicode NFKC and full case folding, repeated until it
    no longer changes, so that ``Ann@X.org``, ``ANN@x.org`` and the same address
    in full-width letters share one key. The local part is folded too: RFC 5321 lets
    it be case-sensitive, but no mailbox provider in use treats it so, and two
    accounts that differ only by case are a support and phishing hazard.

    This is the only place that normalises an address: storage uniqueness,
    lookups and filters all go through it. Raises ``InvalidInput`` naming
    ``field``.
    """
    # The common case, an ASCII dot-atom address, skips the full parse: its key
    # is the address in lower case (what the validator's normal form folds to),
    # once its domain has passed the validator. Anything else takes the full path
    # (tests/test_emails.py proves the two agree on every address).
    simple = _DOT_ATOM.fullmatch(address)
    if (
        simple is not None
        and len(simple[1]) <= MAX_LOCAL
        and len(address) <= MAX_ADDRESS
        and _valid_domain(simple[2].lower())
    ):
        return address.lower()
    try:
        checked = email_validator.validate_email(
            address, check_deliverability=False, allow_smtputf8=True
        )
    except email_validator.EmailNotValidError as exc:
        raise InvalidInput.for_field(field, str(exc)) from None
    key = fold(checked.normalized)
    # Folding can lengthen an address; the key must still fit what a cursor carries.
    if len(key) > MAX_KEY:
        raise InvalidInput.for_field(field, "is too long once Unicode-normalised")
    return key


@functools.lru_cache(maxsize=4096)
def _valid_domain(domain: str) -> bool:
    """Whether the validator accepts ``domain`` (lower case) as it is, after a plain local part.

    As it is: a domain the validator rewrites (``xn--`` labels become Unicode)
    takes the full path. Cached: an import of a million users names few domains.
    """
    try:
        checked = email_validator.validate_email(
            "a@" + domain, check_deliverability=False, allow_smtputf8=True
        )
    except email_validator.EmailNotValidError:
        return False
    return bool(checked.domain == domain)
