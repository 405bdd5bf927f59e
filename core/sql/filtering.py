"""Filters (``userplane.filtering``) as SQL: one ``WHERE`` condition, composed per expression.

Composed from fixed fragments and the field's own column, never from input:
every value is a parameter. Each comparison is written never to be NULL
(``col IS NOT NULL AND …``), so that ``NOT`` means what ``matches`` says: a
user without a value matches no comparison, and the negation of one.

The values reach storage as the service prepared them: an email as its
normalised key (``eq``, ``ne``) or folded (``co``, ``sw``, ``ew``), a name
folded. A sealed store passes an email's ``eq``/``ne`` value as the pair of
its blind-index values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from userplane.filtering import (
    FIELD_KINDS,
    GROUP_FIELD_KINDS,
    And,
    Compare,
    Expr,
    Linked,
    Not,
    Or,
    Present,
)

if TYPE_CHECKING:
    from userplane.sql.dialect import Dialect

#: The column a field is compared on.
COLUMNS = {
    "id": "id",
    "email": "email_normalized",
    "full_name": "full_name_folded",
    "is_active": "is_active",
    "external_source": "external_source",
    "external_id": "external_id",
    "created_at": "created_at",
    "updated_at": "updated_at",
}
#: The column whose NULL says a field has no value (``Present``).
_PRESENT = {
    "full_name": "full_name",
    "external_source": "external_source",
    "external_id": "external_id",
}
#: The columns of a group's fields (``user_groups``), and of its optional ones.
GROUP_COLUMNS = {
    "id": "id",
    "display_name": "display_name_folded",
    "external_id": "external_id",
    "created_at": "created_at",
    "updated_at": "updated_at",
}
_GROUP_PRESENT = {"external_id": "external_id"}
_SQL_OPS = {"eq": "=", "ne": "<>", "gt": ">", "ge": ">=", "lt": "<", "le": "<="}
#: Membership, from each side: a user in a group; a group with a live member.
_USER_IN_GROUP = "(id IN (SELECT user_id FROM group_members WHERE group_id = {value}))"
_GROUP_WITH_MEMBER = (
    "(id IN (SELECT gm.group_id FROM group_members gm JOIN users mu ON mu.id = gm.user_id "
    "WHERE gm.user_id = {value} AND mu.deleted_at IS NULL))"
)


class Compiler:
    """Builds one condition and its parameters (``p0``, ``p1`` …) for ``dialect``.

    Over users by default; ``groups=True`` over groups (``GROUP_FIELD_KINDS``).
    """

    def __init__(self, dialect: Dialect, *, groups: bool = False) -> None:
        self.dialect = dialect
        self.params: dict[str, Any] = {}
        self._kinds = GROUP_FIELD_KINDS if groups else FIELD_KINDS
        self._columns = GROUP_COLUMNS if groups else COLUMNS
        self._present = _GROUP_PRESENT if groups else _PRESENT
        self._member = _GROUP_WITH_MEMBER if groups else _USER_IN_GROUP

    def _param(self, value: Any) -> str:
        name = f"f{len(self.params)}"
        self.params[name] = value
        return self.dialect.placeholder(name)

    def compile(self, expr: Expr) -> str:
        """The condition ``expr`` is, with its parameters added to ``params``."""
        if isinstance(expr, And):
            return "(" + " AND ".join(self.compile(p) for p in expr.parts) + ")"
        if isinstance(expr, Or):
            return "(" + " OR ".join(self.compile(p) for p in expr.parts) + ")"
        if isinstance(expr, Not):
            return f"(NOT {self.compile(expr.part)})"
        if isinstance(expr, Present):
            if isinstance(expr.field, Linked):
                table, column = expr.field.table, expr.field.column
                return f"(id IN (SELECT user_id FROM {table} WHERE {table}.{column} IS NOT NULL))"
            # A missing name, external id or source is stored as NULL.
            return f"({self._present[expr.field]} IS NOT NULL)"
        if isinstance(expr.field, Linked):
            # The plugin's table, by its key: the comparison runs inside it.
            table = expr.field.table
            column = f"{table}.{expr.field.column}"
            inner = self._text_compare(expr, column, f"{column} IS NOT NULL")
            return f"(id IN (SELECT user_id FROM {table} WHERE {inner}))"
        return self._compare(expr)

    def _compare(self, node: Compare) -> str:
        assert isinstance(node.field, str)
        kind = self._kinds[node.field]
        if kind == "member":
            return self._member.format(value=self._param(node.value))
        column = self._columns[node.field]
        # The folded name is '' for no name: a comparison sees only users with one.
        guard = f"{'full_name' if node.field == 'full_name' else column} IS NOT NULL"
        if node.field == "email" and isinstance(node.value, tuple):
            return self._sealed_email(node.op, node.value)
        return self._text_compare(node, column, guard)

    def _text_compare(self, node: Compare, column: str, guard: str) -> str:
        """``column op value``, never NULL: ``guard`` holds only where it has a value."""
        if node.op in _SQL_OPS:
            return f"({guard} AND {column} {_SQL_OPS[node.op]} {self._param(node.value)})"
        text = str(node.value)
        if text == "":
            return f"({guard})"  # every text contains, starts and ends with nothing
        if node.op == "co":
            found = self.dialect.contains.format(haystack=column, needle=self._param(text))
            return f"({guard} AND {found})"
        size = self._param(len(text))
        value = self._param(text)
        if node.op == "sw":
            return f"({guard} AND substr({column}, 1, {size}) = {value})"
        # Ends with: PostgreSQL's substr takes no negative start; its right() does.
        if self.dialect.name == "postgresql":
            return f"({guard} AND right({column}, {size}) = {value})"
        return f"({guard} AND substr({column}, -{size}) = {value})"

    def _sealed_email(self, op: str, keys: tuple[Any, ...]) -> str:
        """``eq``/``ne`` of a sealed address: either of its two blind-index values."""
        first, second = keys
        same = f"email_normalized = {self._param(first)}"
        if second is not None:
            # A row not yet re-indexed holds NULL there: never NULL, so that NOT is false.
            second_same = f"email_index_next = {self._param(second)}"
            same = f"({same} OR (email_index_next IS NOT NULL AND {second_same}))"
        return f"({same})" if op == "eq" else f"(NOT {same})"


def where(dialect: Dialect, expr: Expr) -> tuple[str, dict[str, Any]]:
    """The condition of ``expr`` in ``dialect`` and its parameters (values not yet ``to_db``)."""
    compiler = Compiler(dialect)
    return compiler.compile(expr), compiler.params


def where_groups(dialect: Dialect, expr: Expr) -> tuple[str, dict[str, Any]]:
    """``where`` for a filter over groups (``user_groups``)."""
    compiler = Compiler(dialect, groups=True)
    return compiler.compile(expr), compiler.params
