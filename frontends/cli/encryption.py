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


@encryption.command()
@click.option(
    "--batch-size",
    type=click.IntRange(1, 10_000),
    default=500,
    show_default=True,
    help="Users read per statement.",
)
@format_option
@pass_state
def rotate(state: State, batch_size: int, fmt: str) -> None:
    """Re-wrap every user's data key under the active key, online; then retire the others.

    Safe while the service runs and to run again after an interruption.
    Start it once every instance runs with the new key first in
    USERPLANE_ENCRYPTION_KEYS; remove the old key only after it succeeded.
    """
    from userplane.rotation import rotate as run
    from userplane.users import utcnow

    _sealed(state)
    registry = state.registry
    sealer = registry.sealed.sealer
    assert sealer is not None
    total = registry.storage.count_users()
    # On stderr: stdout carries the report, which scripts read (--format json).
    bar: ProgressBar[int] = click.progressbar(
        length=max(total, 1), label="re-wrapping data keys", file=sys.stderr
    )
    with bar:
        report = run(registry.storage, sealer, utcnow, batch=batch_size, progress=bar.update)
    row = {
        "scanned": report.scanned,
        "rewrapped": report.rewrapped,
        "passes": report.passes,
        "active_key": sealer.keyring.active.name,
        "retired": list(report.retired),
    }
    if fmt == "json":
        emit([row], fmt, ())
        return
    click.echo(
        f"re-wrapped {report.rewrapped} of {report.scanned} users under "
        f"{sealer.keyring.active.name!r} in {report.passes} pass"
        f"{'es' if report.passes != 1 else ''}"
    )
    if report.retired:
        names = ", ".join(repr(n) for n in report.retired)
        click.echo(f"retired {names}: it may now leave USERPLANE_ENCRYPTION_KEYS")


@encryption.command()
@format_option
@pass_state
def status(state: State, fmt: str) -> None:
    """The keys this database knows (by name and fingerprint) and which are configured."""
    registry = state.registry
    registry.sealed.verify()
    ring = registry.sealed.sealer.keyring if registry.sealed.sealer else None
    rows = []
    for record in registry.storage.key_records():
        if ring is None:
            configured = "no"
        elif record.name in (ring.active.name, ring.index_key.name):
            configured = "active"
        elif ring.key(record.name) is not None:
            configured = "yes"
        else:
            configured = "no"
        rows.append(
            {
                "name": record.name,
                "purpose": record.purpose,
                "configured": configured,
                "created_at": record.created_at.isoformat(),
                "retired_at": None if record.retired_at is None else record.retired_at.isoformat(),
            }
        )
    if not rows and fmt != "json":
        click.echo("encryption is off: no key has sealed anything in this database")
        return
    emit(rows, fmt, ("name", "purpose", "configured", "created_at", "retired_at"))
