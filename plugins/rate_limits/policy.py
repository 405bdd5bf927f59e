"""``USERPLANE_RATE_LIMITS``: which classes of requests are limited, and how much.

The form is ``read=600/60s,write=120/60s,auth-failure=20/300s``: per class,
requests per window per subject; a window is seconds, or a number with
``s``, ``m`` or ``h``. Every class is optional (one not named has no limit),
and ``off`` disables limits altogether.
"""

from __future__ import annotations

import re

from userplane.plugin import AUTH_FAILURE, READ, WRITE, RateLimit

#: The limits in force in prod when ``USERPLANE_RATE_LIMITS`` is not set.
DEFAULT = "read=600/60s,write=120/60s,auth-failure=20/300s"
_ITEM = re.compile(r"\s*([a-z][a-z0-9-]*)\s*=\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}
#: The classes userplane checks; naming another is a typo, refused.
KNOWN = frozenset({READ, WRITE, AUTH_FAILURE})
#: The longest window: a day. Longer ones are a mistake more often than a policy.
MAX_WINDOW_S = 86400.0


def parse(text: str, variable: str = "USERPLANE_RATE_LIMITS") -> dict[str, RateLimit]:
    """The policies ``text`` names, by class; ``ValueError`` naming ``variable`` if malformed."""
    if text.strip().lower() == "off":
        return {}
    policies: dict[str, RateLimit] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        match = _ITEM.fullmatch(item)
        if match is None:
            raise ValueError(
                f"{variable}: {item.strip()!r} is not of the form class=N/window "
                "(e.g. read=600/60s), nor is the whole value `off`"
            )
        name, limit, amount, unit = match.groups()
        if name not in KNOWN:
            raise ValueError(
                f"{variable}: unknown class {name!r}; the classes are {', '.join(sorted(KNOWN))}"
            )
        if name in policies:
            raise ValueError(f"{variable}: the class {name!r} is given twice")
        window = float(amount) * _UNITS[unit]
        if int(limit) < 1 or not 0 < window <= MAX_WINDOW_S:
            raise ValueError(
                f"{variable}: {item.strip()!r} needs at least 1 request per window, "
                f"and a window of more than 0 s and at most {MAX_WINDOW_S:.0f} s"
            )
        policies[name] = RateLimit(name=name, limit=int(limit), window_s=window)
    return policies


def describe(policies: dict[str, RateLimit]) -> str:
    """``policies`` in the setting's own form, for the start-up line and ``config``."""
    if not policies:
        return "off"
    return ",".join(f"{p.name}={p.limit}/{p.window_s:g}s" for p in policies.values())
