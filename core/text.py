"""Text folding shared by every case-insensitive comparison in userplane."""

from __future__ import annotations

import unicodedata


def fold(text: str) -> str:
    """Unicode NFKC plus full case folding, iterated to a fixed point.

    ``fold(fold(s)) == fold(s)`` for every string: NFKC and casefold do not
    commute for a few code points, so one pass of each is not always enough.
    """
    for _ in range(4):
        folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
        if folded == text:
            break
        text = folded
    return text
