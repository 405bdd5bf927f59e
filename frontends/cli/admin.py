"""Operating commands: ``serve``, ``migrate``, ``plugins``, ``config``."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import attrs
import click

import userplane
from userplane.frontends.cli.app import OperationCommand, State, cli, pass_state
from userplane.frontends.cli.output import emit, format_option
from userplane.plugin_manager import describe_plugins, make_plugin_manager
from userplane.settings import (
    MASK,
    PREFIX,
    Settings,
    SettingsSection,
    mask_text,
    mask_url,
    secret_values,
)


@cli.command()
@click.option(
    "--host", default=None, help="Interface to bind [default: USERPLANE_HOST or 127.0.0.1]."
)
@click.option(
    "--port", type=click.IntRange(0, 65535), default=None, help="[default: USERPLANE_PORT or 8000]."
)
@click.option(
    "--workers", type=click.IntRange(min=1), default=None, help="gunicorn worker processes."
)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Threads per worker.")
@click.option("--reload", is_flag=True, help="Restart workers when code changes (development).")
@click.option(
    "--migrate/--no-migrate",
    default=None,
    help="Apply pending migrations first [default: only for an embedded database].",
)
@pass_state
def serve(
    state: State,
    host: str | None,
    port: int | None,
    workers: int | None,
    threads: int | None,
    reload: bool,
    migrate: bool | None,
) -> None:
    """Serve the HTTP API under gunicorn."""
    # Imported here: every other command, --help included, must not pay for
    # structlog, falcon and gunicorn.
    import structlog

    from userplane.frontends.http.server import Server

    options = {"host": host, "port": port, "workers": workers, "threads": threads}
    state.overrides.update({k: v for k, v in options.items() if v is not None})
    settings = state.settings
    registry = state.registry
    if migrate if migrate is not None else registry.storage.embedded:
        registry.migrate()
    # A wrong or missing encryption key stops the start, not a request later.
    registry.sealed.verify()
    registry.ping()
    storage = registry.storage.name
    facts = registry.hooks.describe(settings, registry)
    # Connections must not cross gunicorn's fork: each worker opens its own.
    state.close()
    log = structlog.get_logger("userplane.serve")
    if not registry.auth.enabled:
        log.warning(
            "authentication is DISABLED: every caller acts as an administrator",
            detail="USERPLANE_AUTH=disabled is for local development only",
        )
    # A log line, not a bare print: in prod an operator sees only JSON lines.
    log.info(
        "serving",
        url=f"http://{settings.host}:{settings.port}/",
        version=userplane.__version__,
        storage=storage,
        env=settings.env,
        workers=settings.workers,
        threads=settings.threads,
        **facts,
    )
    Server(settings, reload=reload).run()


@cli.command(cls=OperationCommand)
@click.option("--status", is_flag=True, help="Only show which migrations are applied.")
@format_option
@pass_state
def migrate(state: State, status: bool, fmt: str) -> None:
    """Apply pending schema migrations (safe to run from several instances at once)."""
    registry = state.registry
    if status:
        rows = [
            {"id": m.id, "source": m.source, "applied": m.applied}
            for m in registry.migration_status()
        ]
        emit(rows, fmt, ("id", "source", "applied"))
        return
    applied = registry.migrate()
    if fmt == "json":
        emit([{"applied": applied}], fmt, ())
    elif applied:
        click.echo(f"applied: {', '.join(applied)}")
    else:
        click.echo("nothing to apply: the schema is up to date")


@cli.command()
@format_option
@pass_state
def plugins(state: State, fmt: str) -> None:
    """List plugins, the hooks each implements, and the blocked and broken ones."""
    # Without opening storage: listing plugins must work when storage cannot.
    pm = state.plugin_manager or make_plugin_manager(state.settings.disabled_plugins)
    rows = []
    for p in describe_plugins(pm):
        # Why a plugin broke is an exception's text, which may quote a setting.
        broken = state.mask(p.broken) if p.broken else p.broken
        rows.append(
            {
                "name": p.name,
                "module": p.module,
                "distribution": p.distribution,
                "hooks": list(p.hooks),
                "blocked": p.blocked,
                "broken": broken,
                "status": "blocked" if p.blocked else f"broken: {broken}" if broken else "ok",
            }
        )
    if fmt == "json":
        for row in rows:
            del row["status"]
    emit(rows, fmt, ("name", "module", "distribution", "status", "hooks"))


@cli.command()
@format_option
@pass_state
def config(state: State, fmt: str) -> None:
    """Show the effective settings, plugins' included, secrets masked."""
    from userplane.hooks import Hooks

    pm = state.plugin_manager or make_plugin_manager(state.settings.disabled_plugins)
    sections = Hooks(pm).settings_sections()
    values = _masked_settings(state.settings, sections)
    if fmt == "json":
        emit([values], fmt, ())
        return
    emit(({"name": k, "value": v} for k, v in values.items()), fmt, ("name", "value"))


@cli.command()
@format_option
@pass_state
def check(state: State, fmt: str) -> None:
    """Ping storage and every plugin's services; exit 10 if any does not answer."""
    checks = state.registry.check()
    # An error is a plugin's or a driver's text about its connection, which may quote a URL.
    rows = [
        {"name": c.name, "ok": c.ok, "error": state.mask(c.error) if c.error else c.error}
        for c in checks
    ]
    emit(rows, fmt, ("name", "ok", "error"))
    failed = [c for c in checks if not c.ok]
    if failed:
        raise failed[0].unavailable()


#: A value that starts as a URL does: the whole value is that one URL.
_URL_START = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def _masked_settings(settings: Settings, sections: Sequence[SettingsSection]) -> dict[str, Any]:
    """``Settings.redacted``, with each URL-valued setting masked as one URL, then all masked.

    ``redacted`` finds URLs in text, where a URL ends at whitespace: a
    password holding a space (``postgresql://app:correct horse@db/users``)
    would be shown from it on. A setting's whole value is one URL, so it is
    masked as one (``mask_url``); and every value then goes through the
    masking every message gets, with the secrets the settings hold.
    """
    values = settings.redacted(sections)
    raw: dict[str, Any] = {
        f"{PREFIX}{a.name.upper()}": getattr(settings, a.name)
        for a in attrs.fields(type(settings))
        if a.name != "extra"
    }
    raw.update({n: d for s in sections for n, d in s.defaults().items()})
    raw.update(settings.extra)
    secrets = secret_values(settings, sections)
    for name, shown in values.items():
        if not isinstance(shown, str) or shown == MASK:
            continue
        value = raw.get(name)
        items = value if isinstance(value, tuple) else (value,)
        if any(isinstance(v, str) and _URL_START.match(v) for v in items):
            shown = ",".join(
                mask_url(v) if isinstance(v, str) and _URL_START.match(v) else str(v) for v in items
            )
        values[name] = mask_text(shown, secrets)
    return values
