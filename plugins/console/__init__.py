"""The console plugin: a web console for administrators at ``/admin``.

Server-rendered pages (Jinja2 templates, one small script, no build step)
over the same services and permissions as the API: sign in with an API key
or a token (``signin``, ``sessions``), then list, search, create, edit,
delete, restore and purge users (``users``); other plugins add their pages
through ``userplane_console`` (the api-keys plugin adds key management).
``gate`` is its middleware: sessions, CSRF, and error pages. Sessions live
in a table of this plugin's own (``migrations/``) in any
``userplane.sql.SQLStorage``. See docs/console.md.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from userplane.plugin import (
    GROUPS_READ,
    USERS_READ,
    ConfigurationError,
    Settings,
    SettingsSection,
    hookimpl,
    section,
)

if TYPE_CHECKING:
    from userplane.plugin import Registry
    from userplane.plugins.console.gate import ConsoleGate
    from userplane.plugins.console.sessions import Sessions

_HERE = Path(__file__).parent
_MIGRATIONS = _HERE / "migrations"


def _lifetime(_: Any, attribute: attrs.Attribute[int], value: int) -> None:
    if not 300 <= value <= 7 * 86400:
        raise ValueError("USERPLANE_CONSOLE_SESSION_SECONDS: must be between 300 and 604800")


@attrs.frozen
class ConsoleSettings:
    """This plugin's settings, from ``USERPLANE_CONSOLE_*``."""

    #: How long a session lasts after signing in (it ends sooner with its credential).
    session_seconds: int = attrs.field(default=8 * 3600, validator=_lifetime)


SETTINGS = SettingsSection("CONSOLE_", ConsoleSettings)


class ConsoleState:
    """This plugin's state in one registry: the session table, and the gate awaiting its console.

    ``create_app`` calls ``userplane_http_middleware`` (which makes the app's
    gate) and then ``userplane_http_routes`` (which mounts the console and hands
    it to that gate) in one thread: the gate waits in a thread-local slot, so
    apps built at once in other threads never swap gates, and a slot left by a
    middleware call without routes is replaced by the next app's.
    """

    def __init__(self, sessions: Sessions) -> None:
        self.sessions = sessions
        self._pending = threading.local()

    def hold(self, gate: ConsoleGate) -> None:
        """Keep ``gate`` for the console this thread mounts next."""
        self._pending.gate = gate

    def take(self) -> ConsoleGate | None:
        """The gate this thread's app installed, once."""
        gate: ConsoleGate | None = getattr(self._pending, "gate", None)
        self._pending.gate = None
        return gate


@hookimpl
def userplane_settings_sections() -> SettingsSection:
    """``USERPLANE_CONSOLE_*``."""
    return SETTINGS


@hookimpl
def userplane_startup(settings: Settings) -> None:
    """Fail at start-up, naming the variable, on a bad setting."""
    section(ConsoleSettings, settings, "CONSOLE_")


@hookimpl
def userplane_migrations() -> dict[str, Path]:
    """The ``console_sessions`` table, for each dialect this plugin speaks."""
    return {d.name: d for d in _MIGRATIONS.iterdir() if d.is_dir()}


@hookimpl
def userplane_register_services(registry: Registry) -> None:
    """The session table, on a SQL storage; the console stays away from any other."""
    from userplane.sql import SQLStorage

    storage = registry.storage
    if not isinstance(storage, SQLStorage) or not (_MIGRATIONS / storage.dialect.name).is_dir():
        return
    lifetime = section(ConsoleSettings, registry.settings, "CONSOLE_").session_seconds

    def build() -> ConsoleState:
        # Here, not at the top: sessions need cryptography, which commands that
        # never serve a page must not pay for.
        from userplane.plugins.console.sessions import Sessions

        return ConsoleState(Sessions(storage, lifetime))

    registry.services.register(
        ConsoleState, build, ping=lambda state: state.sessions.ping(), name="console"
    )


@hookimpl
def userplane_http_middleware(registry: Registry) -> list[Any]:
    """Sessions, form checks and error pages under ``/admin``."""
    if ConsoleState not in registry.services:
        return []
    from userplane.plugins.console.gate import ConsoleGate

    state = registry.services.get(ConsoleState)
    gate = ConsoleGate(state.sessions)
    state.hold(gate)
    return [gate]


@hookimpl
def userplane_http_routes(app: Any, registry: Registry) -> None:
    """``/admin``: sign-in, the user pages, and every plugin's pages."""
    if ConsoleState not in registry.services:
        return
    from userplane.plugins.console import groups, users
    from userplane.plugins.console.signin import Root, SignIn, SignOut
    from userplane.plugins.console.site import PREFIX, Console

    state = registry.services.get(ConsoleState)
    gate = state.take()
    if gate is None or getattr(app, "guard", None) is None:
        # Without its gate, no page would check a session or a form: fail closed.
        raise ConfigurationError("the console needs the app made by create_app")
    console = Console(app, registry, static=f"{PREFIX}/static")
    app.form_prefixes.add(PREFIX)
    app.add_static_route(f"{PREFIX}/static", str(_HERE / "static"))
    app.add_route(PREFIX, Root(console))
    app.add_route(f"{PREFIX}/sign-in", SignIn(console, state.sessions))
    app.add_route(f"{PREFIX}/sign-out", SignOut(console, state.sessions))
    console.add_section(f"{PREFIX}/users", "Users", USERS_READ, users.routes(console))
    if registry.groups.available:
        console.add_section(f"{PREFIX}/groups", "Groups", GROUPS_READ, groups.routes(console))
        console.add_user_panel("_user_groups.html", groups.user_groups(console), GROUPS_READ)
    registry.hooks.console(console, registry)
    gate.console = console


@hookimpl
def userplane_describe(registry: Registry | None) -> dict[str, str]:
    """Where the console is served."""
    if registry is None:
        return {}
    if ConsoleState not in registry.services:
        return {"console": "not served: it keeps its sessions in a SQL storage"}
    hours = section(ConsoleSettings, registry.settings, "CONSOLE_").session_seconds / 3600
    return {"console": f"/admin (sign in with an API key or a token; sessions last {hours:g} h)"}
