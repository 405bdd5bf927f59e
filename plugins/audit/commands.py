"""``userplane audit list|verify|export|prune``."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

import click

from userplane.frontends.cli import Duration, OperationGroup, State, emit, format_option, pass_state
from userplane.plugins.audit import trail_of
from userplane.plugins.audit.chain import Break, Head, check_end, check_expected, walk
from userplane.plugins.audit.events import AuditEvent, canonical
from userplane.plugins.audit.query import MAX_LIMIT, parse_query

if TYPE_CHECKING:
    from userplane.plugins.audit.trail import Verification

# The trail (and through it the store and the SQL kit) is imported inside the commands:
# `userplane --help` must not pay for them.

#: The exit code of ``audit verify`` when the chain does not hold (the CLI's others are 1 to 12).
EXIT_BROKEN: Final = 13
_COLUMNS = ("seq", "occurred_at", "actor", "action", "target", "user_id", "changed")


def _row(item: dict[str, Any]) -> dict[str, Any]:
    target = item["target"]
    return {
        **item,
        "target": f"{target['type']}:{target['id']}",
        "changed": sorted(item["changes"]),
    }


def _expected(value: str | None) -> Head | None:
    if value is None:
        return None
    try:
        return Head.parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--expect") from None


def _export_lines(stream: IO[str]) -> Iterator[dict[str, Any]]:
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except ValueError:
            raise click.ClickException(f"line {number} of the export is not JSON") from None
        if not isinstance(data, dict):
            raise click.ClickException(f"line {number} of the export is not a JSON object")
        yield data


def verify_export(stream: IO[str], expect: Head | None) -> Verification:
    """Verify an export (``audit export``) offline, as ``verify`` checks the database."""
    from userplane.plugins.audit.trail import Verification

    lines = _export_lines(stream)
    header = next(lines, None)
    if header is None or header.get("format") != "userplane-audit-export/1":
        raise click.ClickException("not an export of `userplane audit export` (no header line)")
    try:
        start = Head(int(header["start"]["seq"]), str(header["start"]["hash"]))
        head = Head(int(header["head"]["seq"]), str(header["head"]["hash"]))
    except (KeyError, TypeError, ValueError):
        raise click.ClickException("the export's header is damaged") from None
    seen: dict[int, str] = {}

    def events() -> Iterator[AuditEvent]:
        for number, data in enumerate(lines, 2):
            try:
                event = AuditEvent.from_stored(data)
            except (ValueError, TypeError) as exc:
                raise click.ClickException(f"line {number} of the export: {exc}") from None
            if expect is not None and event.seq == expect.seq:
                seen[event.seq] = event.hash
            yield event

    walked = walk(start, events())
    broken: Break | None = walked.broken or check_end(walked, head)
    if broken is None and expect is not None:
        broken = check_expected(expect, start, walked, seen.get(expect.seq))
    return Verification(walked.count, start, head, broken)


def add_commands(cli: click.Group) -> None:
    """Add the ``audit`` group to ``cli``."""

    @cli.group(cls=OperationGroup)
    def audit() -> None:
        """Read, verify, export and prune the audit trail."""

    @audit.command("list")
    @click.option("--target-type", help="Only events on this kind of target (user, api_key).")
    @click.option("--target-id", help="Only events on the target with this id.")
    @click.option("--user-id", help="Only events about this user (a UUID).")
    @click.option("--actor", help="Only events by this principal (key:<uuid>, local:<login>).")
    @click.option("--action", help="Only events of this action (user.updated).")
    @click.option("--since", help="Only events at or after this RFC 3339 time.")
    @click.option("--until", help="Only events before this RFC 3339 time.")
    @click.option(
        "--sort",
        type=click.Choice(["seq", "-seq"]),
        default="seq",
        show_default=True,
        help="seq: oldest first; -seq: newest first.",
    )
    @click.option(
        "--limit",
        type=click.IntRange(1, MAX_LIMIT),
        default=50,
        show_default=True,
        help="Events per page.",
    )
    @click.option("--cursor", help="Continue from this cursor (printed after a page).")
    @click.option("--all", "every", is_flag=True, help="Follow every page to the end.")
    @format_option
    @pass_state
    def list_(
        state: State,
        target_type: str | None,
        target_id: str | None,
        user_id: str | None,
        actor: str | None,
        action: str | None,
        since: str | None,
        until: str | None,
        sort: str,
        limit: int,
        cursor: str | None,
        every: bool,
        fmt: str,
    ) -> None:
        """Events, filtered, one page (or with --all every page).

        Personal values are opened, or shown as {"erased": true} once their
        user was erased. Without --all, the cursor of the next page is printed
        on stderr.
        """
        options = {
            "target_type": target_type,
            "target_id": target_id,
            "user_id": user_id,
            "actor": actor,
            "action": action,
            "since": since,
            "until": until,
            "sort": sort,
            "limit": str(limit),
            "cursor": cursor,
        }
        values = {k: v for k, v in options.items() if v is not None}
        audit_trail = trail_of(state.registry)
        rows: list[dict[str, Any]] = []
        while True:
            page = audit_trail.list(parse_query(values))
            if fmt == "json":  # lines as they come: a long trail need not fit in memory
                emit(page.items, fmt, _COLUMNS)
            else:
                rows += [_row(item) for item in page.items]
            if page.next is None:
                break
            if not every:
                click.echo(f"more: --cursor {page.next}", err=True)
                break
            values["cursor"] = page.next
        if fmt != "json":
            emit(rows, fmt, _COLUMNS)

    @audit.command()
    @click.option(
        "--expect",
        metavar="SEQ:HASH",
        help="A head logged earlier (audit.head): fail if that event is gone or differs.",
    )
    @click.option(
        "--input",
        "source",
        type=click.File("r", encoding="utf-8"),
        help="Verify this export (audit export) instead of the database.",
    )
    @pass_state
    def verify(state: State, expect: str | None, source: IO[str] | None) -> None:
        """Walk the chain, recomputing every hash; exit 13 naming the first broken link."""
        expected = _expected(expect)
        if source is not None:
            result = verify_export(source, expected)
        else:
            result = trail_of(state.registry).verify(expected)
        if not result.ok:
            click.echo(result.summary(), err=True)
            click.get_current_context().exit(EXIT_BROKEN)
        click.echo(result.summary())
        if source is None:
            from userplane.plugins.audit.trail import log_head

            log_head(result.head, command="verify")

    @audit.command()
    @click.option(
        "--output",
        type=click.Path(dir_okay=False, writable=True, path_type=Path),
        help="Write to this file instead of stdout.",
    )
    @pass_state
    def export(state: State, output: Path | None) -> None:
        """Every stored event as JSON Lines, sealed values sealed: verifiable offline.

        The first line says where the chain starts (the checkpoint of the last
        prune, or the genesis) and its head; each other line is one event.
        """
        lines = trail_of(state.registry).export()
        count = -1
        if output is None:
            for count, line in enumerate(lines):  # noqa: B007 (the count is the last index)
                sys.stdout.write(canonical(line).decode("utf-8") + "\n")
            sys.stdout.flush()
            return
        with output.open("w", encoding="utf-8", newline="\n") as out:
            for count, line in enumerate(lines):  # noqa: B007
                out.write(canonical(line).decode("utf-8") + "\n")
        click.echo(f"exported {max(count, 0)} events to {output}", err=True)

    @audit.command()
    @click.option(
        "--older-than",
        type=Duration(),
        required=True,
        help="Remove events older than this: 90d, 12w …",
    )
    @click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
    @format_option
    @pass_state
    def prune(state: State, older_than: timedelta, yes: bool, fmt: str) -> None:
        """Remove the oldest events, leaving a checkpoint so that the rest still verifies."""
        if not yes:
            click.confirm(f"Remove audit events older than {older_than} for good?", abort=True)
        audit_trail = trail_of(state.registry)
        pruned = audit_trail.prune(older_than)
        checkpoint = pruned.checkpoint
        if fmt == "json":
            emit(
                [
                    {
                        "pruned": pruned.count,
                        "checkpoint": None
                        if checkpoint is None
                        else {"seq": checkpoint.seq, "hash": checkpoint.hash},
                    }
                ],
                fmt,
                (),
            )
        elif checkpoint is None:
            click.echo("pruned 0 events: none is that old")
        else:
            click.echo(
                f"pruned {pruned.count} events; checkpoint at seq {checkpoint.seq} "
                f"{checkpoint.hash}"
            )
        from userplane.plugins.audit.trail import log_head

        log_head(audit_trail.head(), command="prune")
