"""``userplane encryption``: keys for field-level encryption, rotation and status."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import click
from click._termui_impl import ProgressBar

from userplane.errors import ConfigurationError
from userplane.frontends.cli.app import OperationGroup, State, cli, pass_state
from userplane.frontends.cli.output import emit, format_option


@cli.group(cls=OperationGroup)
def encryption() -> None:
    """Field-level encryption of personal data: keys, rotation (docs/encryption.md)."""


# A plain command: it needs no settings, storage or keyring (it makes the first key).
@encryption.command("new-key", cls=click.Command)
@click.option("--name", default=None, help="The key's name [default: k and the UTC date and time].")
def new_key(name: str | None) -> None:
    """Print a fresh random key as a keyring entry (name:base64), for USERPLANE_ENCRYPTION_*."""
    from userplane.keyring import new_key as make

    name = name or datetime.now(UTC).strftime("k%Y%m%d%H%M%S")
    try:
        key = make(name)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--name") from None
    click.echo(key.entry())


def _sealed(state: State) -> None:
    registry = state.registry
    if not registry.encrypted:
        raise ConfigurationError(
            "nothing is encrypted: set the keyring first (USERPLANE_ENCRYPTION_KEYS, "
            "docs/encryption.md)"
        )
    registry.sealed.verify()


_BATCH = click.option(
    "--batch-size",
    type=click.IntRange(1, 10_000),
    default=500,
    show_default=True,
    help="Users read per statement.",
)


def _run(state: State, batch_size: int, fmt: str, label: str) -> None:
    from userplane.rotation import rotate as run
    from userplane.users import utcnow

    _sealed(state)
    registry = state.registry
    sealer = registry.sealed.sealer
    assert sealer is not None
    total = registry.storage.count_users()
    # On stderr: stdout carries the report, which scripts read (--format json).
    bar: ProgressBar[int] = click.progressbar(length=max(total, 1), label=label, file=sys.stderr)
    with bar:
        report = run(
            registry.storage,
            sealer,
            utcnow,
            batch=batch_size,
            progress=bar.update,
            plan=registry.sealed.plan,
            changes=registry.changes,
        )
    row = {
        "scanned": report.scanned,
        "rewritten": report.rewrapped,
        "sealed": report.sealed,
        "passes": report.passes,
        "tidied": report.tidied,
        "active_key": sealer.keyring.active.name,
        "index_key": report.indexed or sealer.keyring.index_key.name,
        "retired": list(report.retired),
    }
    if fmt == "json":
        emit([row], fmt, ())
        return
    click.echo(
        f"rewrote {report.rewrapped} of {report.scanned} users in {report.passes} pass"
        f"{'es' if report.passes != 1 else ''}: data keys wrapped by "
        f"{sealer.keyring.active.name!r}" + (f", {report.sealed} sealed" if report.sealed else "")
    )
    if report.tidied:
        click.echo(f"replaced a stale index value of {report.tidied} users")
    if report.indexed:
        click.echo(f"the blind index is now under {report.indexed!r} for every user")
        click.echo(
            "once every instance runs without the old entry of "
            "USERPLANE_ENCRYPTION_INDEX_KEYS, run this again: it replaces the index values "
            "that instances still on it wrote meanwhile"
        )
    if report.retired:
        names = ", ".join(repr(n) for n in report.retired)
        click.echo(f"retired {names}: it may now leave the keyring")


@encryption.command()
@_BATCH
@format_option
@pass_state
def rotate(state: State, batch_size: int, fmt: str) -> None:
    """Bring every user under the active keys, online; then retire the others.

    Re-wraps data keys under the first key of USERPLANE_ENCRYPTION_KEYS and,
    when USERPLANE_ENCRYPTION_INDEX_KEYS is new,old, moves the blind index to
    the new key. Safe while the service runs and to run again after an
    interruption. Start it once every instance runs with the new keyring;
    remove an old key only after it was retired.
    """
    _run(state, batch_size, fmt, "rotating keys")


@encryption.command()
@_BATCH
@format_option
@pass_state
def backfill(state: State, batch_size: int, fmt: str) -> None:
    """Seal the users of a database that held them in plaintext, online.

    With USERPLANE_ENCRYPTION_INDEX_KEYS=<key>,plain on every instance, seals
    every user and moves the email index to the blind index. Safe while the
    service runs and to run again after an interruption; afterwards drop
    ,plain from the setting.
    """
    _run(state, batch_size, fmt, "sealing users")


@encryption.command()
@format_option
@pass_state
def status(state: State, fmt: str) -> None:
    """The keys this database knows (by name and fingerprint), their state, which are configured."""
    from userplane.sealed_storage import verify_keys
    from userplane.storage import KeyRecord
    from userplane.users import utcnow

    registry = state.registry
    # Read only: status is what an operator reads when the keyring is refused, and
    # must not record a key itself. Configured keys not recorded yet are shown too.
    ring = registry.sealed.sealer.keyring if registry.sealed.sealer else None
    records = registry.storage.key_records()
    unseen: list[KeyRecord] = []
    if ring is not None:
        known = {r.name for r in records}
        for purpose, key in (("kek", ring.active), ("index", ring.index_key)):
            if key.name not in known:
                unseen.append(KeyRecord(key.name, purpose, "", utcnow()))
    rows = []
    for record in [*records, *unseen]:
        configured = "no"
        if ring is not None and record.name in (ring.active.name, ring.index_key.name):
            configured = "active"
        elif ring is not None and record.name in {k.name for k in (*ring.keys, *ring.index_keys)}:
            configured = "yes"
        if record in unseen:
            condition = "not recorded"
        elif record.retired_at is not None:
            condition = "retired"
        elif record.purpose == "index" and record.ready_at is None:
            condition = "re-indexing"
        else:
            condition = "in use"
        rows.append(
            {
                "name": record.name,
                "purpose": record.purpose,
                "configured": configured,
                "state": condition,
                "created_at": None if record in unseen else record.created_at.isoformat(),
                "retired_at": None if record.retired_at is None else record.retired_at.isoformat(),
            }
        )
    if not rows and fmt != "json":
        click.echo("encryption is off: no key has sealed anything in this database")
    else:
        emit(rows, fmt, ("name", "purpose", "configured", "state", "created_at", "retired_at"))
    # Then whether this keyring may serve the database: the refusal, if any, as the
    # command's error (exit 11), after the keys it is about.
    verify_keys(registry.storage, ring, utcnow(), write=False)
