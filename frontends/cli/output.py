"""Rendering for the CLI: tables for people, JSON lines and CSV for scripts, human durations.

A table fits the terminal it is shown on: the widest columns are cut, with
an ellipsis, down to a readable minimum (ids are never cut). Printed to a pipe or a file it is
never cut (``shutil.get_terminal_size`` only decides on a terminal), so
nothing is lost to ``grep`` or ``less -S``; ``--format csv`` and ``--format
json`` always carry every value whole.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any

import click

FORMATS = ("table", "json", "csv")

#: Where ``format_option`` leaves the format a command was given (``click.Context.meta``,
#: shared by every context of a run): errors are then printed in it.
FORMAT_META = "userplane.format"

#: A cut column keeps at least this many characters (or its header's, if longer).
MIN_WIDTH = 10
#: What a cut value ends with.
ELLIPSIS = "…"
#: Between two columns.
GAP = "  "


def _remember_format(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if value is not None:
        ctx.meta[FORMAT_META] = value
    return value


format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="table",
    show_default=True,
    callback=_remember_format,
    help="table for people (fits the terminal), json (one object per line) or csv for scripts.",
)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, Mapping):
        import orjson

        return orjson.dumps(value).decode()
    if isinstance(value, str):
        # A name beginning with "=" must not run as a formula in a spreadsheet.
        from userplane.imports import escape_cell

        return escape_cell(value)
    return str(value)


def terminal_width() -> int | None:
    """The width of the terminal stdout is, or ``None`` when it is a pipe or a file."""
    stream = sys.stdout
    try:
        if not stream.isatty():
            return None
    except (AttributeError, ValueError):  # a closed or odd stream: not a terminal
        return None
    return shutil.get_terminal_size().columns


def fit(widths: Sequence[int], floors: Sequence[int], width: int) -> list[int]:
    """``widths`` cut, widest first, so that the columns and their gaps fit ``width``.

    No column goes below its floor: if even the floors do not fit, the line is
    left longer than ``width`` (the terminal wraps it) rather than unreadable.
    """
    out = list(widths)
    budget = width - len(GAP) * (len(out) - 1)
    while sum(out) > budget:
        cuttable = [i for i, w in enumerate(out) if w > floors[i]]
        if not cuttable:
            break
        widest = max(out[i] for i in cuttable)
        for i in cuttable:
            if out[i] == widest and sum(out) > budget:
                out[i] -= 1
    return out


def _is_id(column: str) -> bool:
    """Ids are never cut: a cut id is of no use to copy into the next command."""
    return column == "id" or column.endswith("_id")


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + ELLIPSIS


def emit(rows: Iterable[Mapping[str, Any]], fmt: str, columns: Sequence[str]) -> None:
    """Print ``rows``: JSON lines (every key), CSV, or a table of ``columns``.

    CSV has a header of ``columns`` (of the first row's keys when there are
    none), then one line per row, values whole. A table fits the terminal
    when stdout is one (see the module's docstring).
    """
    if fmt == "json":
        import orjson  # here, not above: --help and tables must not pay for it (and json)

        for row in rows:
            click.echo(orjson.dumps(row).decode())
        return
    if fmt == "csv":
        _emit_csv(rows, columns)
        return
    table = [[_cell(row.get(c)) for c in columns] for row in rows]
    headers = [c.upper() for c in columns]
    widths = [max([len(h), *(len(r[i]) for r in table)]) for i, h in enumerate(headers)]
    width = terminal_width()
    if width is not None and columns:
        floors = [
            w if _is_id(c) else min(w, max(MIN_WIDTH, len(h)))
            for w, h, c in zip(widths, headers, columns, strict=True)
        ]
        widths = fit(widths, floors, width)
    for line in [headers, *table]:
        cells = [_cut(v, w).ljust(w) for v, w in zip(line, widths, strict=True)]
        click.echo(GAP.join(cells).rstrip())


def _csv_text(lines: Iterable[Sequence[str]]) -> str:
    import csv
    import io

    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(lines)
    return buffer.getvalue()


def _emit_csv(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> None:
    header = list(columns) or None
    started = False
    for row in rows:  # row by row: a long listing streams
        if header is None:
            header = list(row)
        lines = [] if started else [header]
        started = True
        lines.append([_csv_cell(row.get(c)) for c in header])
        click.echo(_csv_text(lines), nl=False)
    if not started and header is not None:
        click.echo(_csv_text([header]), nl=False)


_UNITS = (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))
_WEEK = 7 * 86400


def _plural(count: int, unit: str) -> str:
    return f"{count} {unit}{'' if count == 1 else 's'}"


def human_duration(delta: timedelta) -> str:
    """``30 days``, ``12 hours``, ``1 week``, ``1 day, 12 hours``: a duration for people.

    Whole weeks are said in weeks, anything else in days and smaller units
    (``30d`` stays ``30 days``); fractions of a second are left out.
    """
    seconds = int(abs(delta.total_seconds()))
    sign = "-" if delta < timedelta(0) else ""
    if seconds and seconds % _WEEK == 0:
        return sign + _plural(seconds // _WEEK, "week")
    parts = []
    for unit, size in _UNITS:
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(_plural(count, unit))
    return sign + (", ".join(parts) or "0 seconds")


class HumanDuration(timedelta):
    """A ``timedelta`` whose ``str()`` is what people say: ``30 days``, not ``30 days, 0:00:00``.

    What ``Duration`` gives commands, so that every message quoting an option's
    value (a confirmation prompt, a plugin's too) reads humanly.
    """

    def __str__(self) -> str:
        return human_duration(self)

    @classmethod
    def of(cls, delta: timedelta) -> HumanDuration:
        """``delta`` as a ``HumanDuration``."""
        return cls(days=delta.days, seconds=delta.seconds, microseconds=delta.microseconds)
