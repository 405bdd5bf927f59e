"""Text folding shared by every case-insensitive comparison in userplane, and the
characters that change how text is displayed without being seen."""

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


#: Tag characters (U+E0000 to U+E007F): invisible, and some are unassigned (not ``Cf``).
_TAGS = range(0xE0000, 0xE0080)


def is_invisible_format(char: str) -> bool:
    """Whether ``char`` changes how text is shown without being seen itself.

    Every format character (Unicode category ``Cf``): the bidirectional
    controls (U+202A to U+202E, U+2066 to U+2069, U+200E, U+200F, U+061C),
    which can show a name reversed or reordered; the zero-width characters
    (U+200B to U+200D, U+2060, U+FEFF), which make two names that look the same
    differ; the soft hyphen and the like. And every tag character, assigned or
    not. Names need none of them: Arabic and Hebrew text is laid out by the
    bidirectional algorithm without controls.
    """
    return unicodedata.category(char) == "Cf" or ord(char) in _TAGS
