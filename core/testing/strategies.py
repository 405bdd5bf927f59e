"""Hypothesis strategies for userplane's domain: addresses and new users."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from userplane.text import is_invisible_format
from userplane.users import NewUser

# -- hypothesis strategies ------------------------------------------------------

_local = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._+-",
    min_size=1,
    max_size=20,
).filter(lambda s: not s.startswith(".") and not s.endswith(".") and ".." not in s)
_label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=12)


@st.composite
def emails(draw: Any) -> str:
    """Valid addresses in mixed case, including some with non-ASCII letters."""
    local = draw(st.one_of(_local, st.sampled_from(["zoë", "JÜRGEN", "straße", "ÅSA"])))
    domain = ".".join(draw(st.lists(_label, min_size=1, max_size=3)))
    tld = draw(st.sampled_from(["org", "COM", "net", "Io"]))
    return f"{local}@{domain}.{tld}"


def new_users() -> st.SearchStrategy[NewUser]:
    """``NewUser`` values the service accepts."""
    names = st.one_of(
        st.none(),
        st.text(
            # No control, surrogate or format characters (bidi controls, zero-width and
            # tag characters spoof what a name displays): the service refuses them.
            alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Cf")),
            min_size=1,
            max_size=60,
        ).filter(lambda s: s.strip() != "" and not any(is_invisible_format(c) for c in s)),
    )
    return st.builds(NewUser, email=emails(), full_name=names, is_active=st.booleans())
