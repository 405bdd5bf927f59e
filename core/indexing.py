"""The email index while personal data is sealed: which column holds which scheme.

Two unique columns can hold an email's index: ``email_normalized`` ("a") and
``email_index_next`` ("b"). A scheme is either the plain email key (a database
that never sealed anything) or the blind index under a named key. Steadily
one scheme is in force, in its home column; re-indexing (a new blind-index
key, or sealing the users of a database that held them in plaintext) moves
to a new scheme homed in the other column:

- while it runs, every write stores both the current scheme's value (in its
  home, which still decides uniqueness for users not re-indexed yet) and the
  incoming one's (in the other home), and a lookup tries both;
- the re-index (``userplane encryption backfill`` or ``rotate``) gives every
  user the incoming value in both columns, then records the incoming scheme
  ready: from then on it alone decides (its column is complete, and every
  process writes it), and processes started with only the new key serve.

A home "b" scheme keeps a copy of its value in "a", which must not be empty;
a home "a" scheme leaves "b" empty on new writes.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

#: What the plain scheme is called in records and messages.
PLAIN = "plain"


@attrs.frozen
class Scheme:
    """One way of indexing an email key: its name (a key's, or ``PLAIN``), function and column."""

    name: str
    index: Callable[[str], str] = attrs.field(eq=False, repr=False)
    #: ``"a"`` (``email_normalized``) or ``"b"`` (``email_index_next``).
    home: str


def other(home: str) -> str:
    """The other index column."""
    return "b" if home == "a" else "a"


@attrs.frozen
class IndexPlan:
    """How this process indexes emails: the scheme in force, and the incoming one if re-indexing."""

    current: Scheme
    incoming: Scheme | None = None

    def values(self, email_key: str) -> tuple[str, str | None]:
        """Columns a and b for ``email_key``: what this process writes, and looks users up by."""
        if self.incoming is None:
            value = self.current.index(email_key)
            return (value, value) if self.current.home == "b" else (value, None)
        values = {
            self.current.home: self.current.index(email_key),
            self.incoming.home: self.incoming.index(email_key),
        }
        return values["a"], values["b"]

    @property
    def target(self) -> Scheme:
        """The scheme a re-index gives every user: the incoming one, else the current."""
        return self.incoming or self.current
