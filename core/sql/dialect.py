"""``Dialect``: how one SQL database spells what the kit's statements need, and what it can do."""

from __future__ import annotations

import functools
import re
from typing import Literal

import attrs

# ``:name`` outside a ``::cast`` and not preceded by a word character (``a:b`` in text).
_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


@attrs.frozen
class Dialect:
    """A SQL dialect: spelling (parameters, substring tests) and capabilities.

    The capabilities tell the kit, and the contract suite's report, how the
    store's statements are written:

    - ``returning``: ``INSERT``/``UPDATE … RETURNING`` returns the written row.
      Without it, ``SQLStorage`` runs each write and then reads the row back,
      inside ``transaction()``, which such a store must implement.
    - ``upsert``: the form of ``claim_idempotency_key``: ``"on-conflict"``
      (``INSERT … ON CONFLICT … DO UPDATE … WHERE``) or ``"on-duplicate-key"``
      (``INSERT … ON DUPLICATE KEY UPDATE`` with conditional assignments).
    - ``locking``: ``"database"`` when one writer holds the whole database at
      a time (SQLite), ``"row"`` when writers lock rows (PostgreSQL, MariaDB).
    """

    #: Selects the migration folders of the core and of plugins: "sqlite", "postgresql", "mysql".
    name: str
    #: A named parameter, from ``{name}``: ``":{name}"`` or ``"%({name})s"``.
    param: str
    #: True when ``{needle}`` occurs in ``{haystack}``, without wildcards.
    contains: str
    returning: bool = True
    upsert: Literal["on-conflict", "on-duplicate-key"] = "on-conflict"
    locking: Literal["database", "row"] = "row"

    def placeholder(self, name: str) -> str:
        """The parameter ``name`` as this dialect spells it."""
        return self.param.format(name=name)

    def compile(self, sql: str) -> str:
        """``sql`` written with ``:name`` parameters, in this dialect's spelling.

        For plugins that ship one statement for every dialect; ``::`` casts
        are left alone.
        """
        return _compile(self.param, sql)

    def capabilities(self) -> dict[str, object]:
        """The capability flags, for reports."""
        return {"returning": self.returning, "upsert": self.upsert, "locking": self.locking}


@functools.lru_cache(maxsize=1024)
def _compile(param: str, sql: str) -> str:
    if param == ":{name}":
        return sql
    escaped = sql.replace("%", "%%") if "%(" in param or "%s" in param else sql
    return _PARAM.sub(lambda m: param.format(name=m.group(1)), escaped)
