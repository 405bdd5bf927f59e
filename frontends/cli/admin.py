"""Operating commands: ``serve``, ``migrate``, ``plugins``, ``config``, ``check``."""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Sequence
from typing import Any

import attrs
import click

import userplane
from userplane.errors import ConfigurationError, Unavailable, UserplaneError
from userplane.frontends.cli.app import OperationCommand, State, cli, pass_state
from userplane.frontends.cli.output import emit, format_option
from userplane.plugin_manager import describe_plugins, make_plugin_manager
from userplane.settings import (
    ENV_FILE_VARIABLE,
    MASK,
    PREFIX,
    Settings,
    SettingsSection,
    check_sections,
    disabled_plugins_from_env,
    env_file_path,
    mask_text,
    mask_url,
    read_env_file,
    secret_values,
    unknown_names,
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
    if fmt != "table":
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
    # Without opening storage: listing plugins must work when storage cannot. A bad
    # setting fails it as it fails every command (main() built the manager without them).
    settings = state.settings
    pm = state.plugin_manager or make_plugin_manager(settings.disabled_plugins)
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
    """Show the effective settings, plugins' included, secrets masked.

    A value a setting cannot take (the core's or a plugin's) is an error
    naming it (exit code 11), as for every other command.
    """
    from userplane.hooks import Hooks

    settings = state.settings
    pm = state.plugin_manager or make_plugin_manager(settings.disabled_plugins)
    sections = Hooks(pm).settings_sections()
    check_sections(settings, sections)
    values = _masked_settings(settings, sections)
    if fmt == "json":
        emit([values], fmt, ())
        return
    emit(({"name": k, "value": v} for k, v in values.items()), fmt, ("name", "value"))


@attrs.frozen
class _Check:
    """One line of ``check``: ``error`` when it failed, ``skipped`` when it could not run."""

    name: str
    error: UserplaneError | None = None
    detail: str | None = None
    skipped: bool = False

    def row(self, state: State) -> dict[str, Any]:
        # An error or a detail may be a driver's text about its connection, quoting a URL.
        error = None
        if self.error is not None:
            error = state.mask(self.error.detail)
        elif self.skipped:
            error = self.detail
        detail = None if self.skipped or self.detail is None else state.mask(self.detail)
        return {
            "name": self.name,
            "ok": None if self.skipped else self.error is None,
            "error": error,
            "detail": detail,
        }


@cli.command()
@format_option
@pass_state
def check(state: State, fmt: str) -> None:
    """Check settings, plugins, storage, plugins' services and migrations.

    One line per check (one per problem found). The exit code is the first
    failure's: 11 for settings and plugins, 10 for storage, services and
    pending migrations (see docs/cli.md).
    """
    checks = _run_checks(state)
    rows = [c.row(state) for c in checks]
    if fmt == "table":
        emit(
            ({**r, "detail": r["error"] or r["detail"]} for r in rows),
            fmt,
            ("name", "ok", "detail"),
        )
    else:
        emit(rows, fmt, ("name", "ok", "error", "detail"))
    failed = next((c for c in checks if c.error is not None), None)
    if failed is not None and failed.error is not None:
        # Storage speaks for itself ("the database is not migrated"); others are named.
        error = copy.copy(failed.error)
        if failed.name != "storage":
            error.detail = f"{failed.name}: {error.detail}"
            error.args = (error.detail,)
        raise error


def _run_checks(state: State) -> list[_Check]:
    from userplane.hooks import Hooks

    settings_checks: list[_Check] = []
    settings: Settings | None = None
    try:
        settings = state.settings
    except ConfigurationError as exc:
        settings_checks.append(_Check("settings", exc))
    pm = state.plugin_manager or make_plugin_manager(
        settings.disabled_plugins
        if settings is not None
        else disabled_plugins_from_env(env_file=state.env_file)
    )
    try:
        sections = Hooks(pm).settings_sections()
    except Exception:  # a plugin's bug: its own broken entry says so
        sections = []
    variables, where = _variables(state)
    for name, suggestion in unknown_names(variables, sections):
        hint = f" (did you mean {suggestion}?)" if suggestion else ""
        settings_checks.append(
            _Check("settings", ConfigurationError(f"unknown {name}{where.get(name, '')}{hint}"))
        )
    env_file = env_file_path(env_file=state.env_file)
    named = os.environ.get(ENV_FILE_VARIABLE)
    if state.env_file is None and named and not env_file.is_file():
        settings_checks.append(
            _Check(
                "settings",
                ConfigurationError(
                    f"{ENV_FILE_VARIABLE} names {named!r}, which does not exist: "
                    "no env file was read"
                ),
            )
        )
    invalid = settings is None
    if settings is not None:
        try:
            check_sections(settings, sections)
        except ConfigurationError as exc:
            settings_checks.append(_Check("settings", exc))
            invalid = True
    plugin_checks = _plugin_checks(pm)
    broken = any(c.error is not None for c in plugin_checks)
    if invalid or broken:
        why = "the settings are invalid" if invalid else "a plugin is broken"
        later = [
            _Check(name, detail=f"skipped: {why}", skipped=True)
            for name in ("storage", "migrations")
        ]
        return [*_settings_ok(settings_checks, env_file), *plugin_checks, *later]
    try:
        registry = state.registry
    except ConfigurationError as exc:  # a plugin's start-up check (USERPLANE_ROLES, JWT keys…)
        settings_checks.append(_Check("settings", exc))
        later = [
            _Check(name, detail="skipped: the settings are invalid", skipped=True)
            for name in ("storage", "migrations")
        ]
        return [*_settings_ok(settings_checks, env_file), *plugin_checks, *later]
    except UserplaneError as exc:
        later = [
            _Check("storage", exc),
            _Check("migrations", detail="skipped: storage did not open", skipped=True),
        ]
        return [*_settings_ok(settings_checks, env_file), *plugin_checks, *later]
    storage = _storage_checks(registry)
    if any(c.name == "storage" and c.error is not None for c in storage):
        migrations = _Check("migrations", detail="skipped: storage did not answer", skipped=True)
    else:
        migrations = _migrations_check(registry)
    return [*_settings_ok(settings_checks, env_file), *plugin_checks, *storage, migrations]


def _variables(state: State) -> tuple[set[str], dict[str, str]]:
    """The ``USERPLANE_*`` names set, and where each set only by the env file comes from."""
    environ = {k for k in os.environ if k.startswith(PREFIX)}
    try:
        from_file = set(read_env_file(env_file_path(env_file=state.env_file)))
    except Exception:  # an unreadable file: reading the settings says so
        from_file = set()
    where = {n: f" in {env_file_path(env_file=state.env_file)}" for n in from_file - environ}
    return environ | from_file, where


def _settings_ok(checks: list[_Check], env_file: Any) -> list[_Check]:
    if checks:
        return checks
    read = f"env file {env_file}" if env_file.is_file() else f"no env file ({env_file})"
    return [_Check("settings", detail=f"valid; {read}")]


def _plugin_checks(pm: Any) -> list[_Check]:
    infos = describe_plugins(pm)
    broken = [
        _Check("plugins", ConfigurationError(f"plugin {p.name!r} is broken: {p.broken}"))
        for p in infos
        if p.broken
    ]
    if broken:
        return broken
    loaded = [p.name for p in infos if not p.blocked]
    blocked = [p.name for p in infos if p.blocked]
    detail = f"{len(loaded)} loaded" + (f"; blocked: {', '.join(blocked)}" if blocked else "")
    return [_Check("plugins", detail=detail)]


def _storage_checks(registry: Any) -> list[_Check]:
    """``Registry.check``'s lines, each failure with its kind (a wrong key is not an outage)."""
    out = []
    try:
        results = registry.check()
    except UserplaneError as exc:
        return [_Check("storage", exc)]
    for result in results:
        if result.ok:
            detail = registry.storage.name if result.name == "storage" else None
            out.append(_Check(result.name, detail=detail))
            continue
        error: UserplaneError = Unavailable(result.error or "did not answer")
        if result.name == "encryption":
            try:
                registry.sealed.verify()
            except UserplaneError as exc:
                error = exc
        out.append(_Check(result.name, error))
    return out


def _migrations_check(registry: Any) -> _Check:
    try:
        states = registry.migration_status()
    except UserplaneError as exc:
        return _Check("migrations", exc)
    pending = [m.id for m in states if not m.applied]
    if pending:
        return _Check(
            "migrations",
            Unavailable(f"pending: {', '.join(pending)} (run `userplane migrate`)"),
        )
    return _Check("migrations", detail=f"{len(states)} applied, none pending")


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
