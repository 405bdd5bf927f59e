"""``userplane copy --to URL``: the whole instance into another database (docs/moving.md)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import attrs
import click

from userplane.frontends.cli.app import OperationCommand, State, cli, pass_state
from userplane.frontends.cli.output import emit, format_option
from userplane.settings import mask_url


@contextlib.contextmanager
def _bar(table: str, total: int) -> Iterator[Callable[[int], object]]:
    """One progress bar per table on stderr: rows copied of the source's count."""
    from tqdm import tqdm  # here: --help must not pay for it

    with tqdm(
        total=total, desc=table, unit=" rows", file=sys.stderr, dynamic_ncols=True, leave=True
    ) as bar:
        yield bar.update


@contextlib.contextmanager
def _quiet(table: str, total: int) -> Iterator[Callable[[int], object]]:
    yield lambda rows: None


@cli.command(cls=OperationCommand)
@click.option(
    "--to",
    "to",
    required=True,
    metavar="URL",
    help="The database to copy into (sqlite:///path.db, postgresql://…): migrated, then filled.",
)
@click.option(
    "--replace",
    is_flag=True,
    help="Delete whatever the target holds first, instead of refusing a target with data.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 100_000),
    default=1000,
    show_default=True,
    help="Rows read and written per batch.",
)
@click.option(
    "--progress/--no-progress",
    default=True,
    show_default=True,
    help="Show each table's rows copied on stderr.",
)
@format_option
@pass_state
def copy(state: State, to: str, replace: bool, batch_size: int, progress: bool, fmt: str) -> None:
    """Copy this instance, every table, into the database at URL (SQLite <-> PostgreSQL).

    Users (deleted ones too, sealed values as they are), idempotency keys,
    API keys, the audit trail with its hash chain, webhooks and every other
    plugin's table. The target is migrated first and must hold no data
    (--replace deletes it); the copy is one transaction on the target.
    Rate-limit counters are not copied.
    """
    from userplane.copying import copy_instance
    from userplane.errors import ConfigurationError
    from userplane.registry import Registry

    source = state.registry
    try:
        _ = urlsplit(to).port  # a port that is no number fails here, not deep in a driver
    except ValueError:
        raise ConfigurationError(f"--to: the port of {mask_url(to)} is not a number") from None
    try:
        opened = Registry(attrs.evolve(state.settings, database_url=to))
    except ConfigurationError as exc:  # about the URL given, not the setting
        raise ConfigurationError(exc.detail.replace("USERPLANE_DATABASE_URL", "--to", 1)) from None
    with opened as target:
        result = copy_instance(
            source,
            target,
            replace=replace,
            batch=batch_size,
            progress=_bar if progress else _quiet,
        )
    summary = {
        "source": mask_url(state.settings.database_url),
        "target": mask_url(to),
        "rows": result.rows,
        "tables": {t.name: t.rows for t in result.tables},
        "skipped": list(result.skipped),
        "cleared": result.cleared,
    }
    if fmt == "json":
        emit([summary], fmt, ())
        return
    if fmt == "csv":  # one row per table copied
        emit([{"table": t.name, "rows": t.rows} for t in result.tables], fmt, ("table", "rows"))
        return
    skipped = f"; not copied: {', '.join(result.skipped)}" if result.skipped else ""
    cleared = f"; {result.cleared} row(s) of the target deleted first" if replace else ""
    click.echo(
        f"copied {result.rows} rows in {len(result.tables)} tables from "
        f"{summary['source']} to {summary['target']}{skipped}{cleared}"
    )
