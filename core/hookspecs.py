"""The hook specifications: every way a plugin can take part in userplane.

Implement them with ``userplane.plugin.hookimpl``; an implementation may take
any subset of a hook's arguments, by name. Hooks marked *firstresult* stop at
the first implementation that returns something other than ``None``. The
reference (when each is called, ordering, exceptions, examples) is
``docs/hooks.md``; callers go through ``userplane.hooks.Hooks``, never
``pm.hook`` directly.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from userplane.auth import Credentials, Principal
    from userplane.changes import Change
    from userplane.keyring import Keyring
    from userplane.limits import Quota
    from userplane.registry import Registry
    from userplane.settings import Settings, SettingsSection
    from userplane.storage import Storage
    from userplane.users import User

hookspec = pluggy.HookspecMarker("userplane")

#: The user-event hooks: called one by one after the write committed, each
#: implementation isolated from the others (an exception is logged, never raised).
EVENT_HOOKS = frozenset(
    {
        "userplane_user_created",
        "userplane_user_updated",
        "userplane_user_deleted",
        "userplane_user_restored",
        "userplane_users_purged",
        "userplane_user_purged",
        "userplane_changes_committed",
    }
)

#: Hooks the façade calls implementation by implementation (to isolate them, or to
#: name the plugin that answered): a wrapper cannot take part in them.
ONE_BY_ONE_HOOKS = EVENT_HOOKS | {
    "userplane_open_storage",
    "userplane_roles",
    "userplane_migrations",
    "userplane_cli_commands",
    "userplane_shutdown",
}

# -- life cycle ----------------------------------------------------------------------


@hookspec(historic=True)
def userplane_startup(settings: Settings) -> None:
    """Configure process-wide concerns (logging) and check your settings.

    Called when a ``Registry`` opens, before storage. Historic: a plugin
    registered later is called too. Raise ``ConfigurationError`` for a bad setting.
    """


@hookspec
def userplane_settings_sections() -> Sequence[SettingsSection] | SettingsSection | None:
    """Declare your settings (``SettingsSection``): ``config`` lists them and masks secrets."""


@hookspec
def userplane_open_storage(settings: Settings) -> Storage | None:
    """Return a ``Storage`` for ``settings.database_url``, or ``None`` if not your scheme.

    Called once per ``Registry``; do not connect yet (connections are opened
    lazily, in each worker after the fork). Two plugins answering one URL is a
    start-up error naming both.
    """


@hookspec(firstresult=True)
def userplane_encryption_keys(settings: Settings) -> Keyring | None:
    """The keys personal data is sealed with (``userplane.keyring.Keyring``), or ``None``.

    Called once per ``Registry``, before storage opens. ``None`` from every
    plugin leaves encryption off. The built-in ``encryption_keys`` plugin
    reads ``USERPLANE_ENCRYPTION_KEYS`` and ``USERPLANE_ENCRYPTION_INDEX_KEYS``;
    a key-management plugin answers instead (register it, or block the
    built-in one) and fetches or unwraps the keys here. Raise
    ``ConfigurationError`` when keys are configured but cannot be had: never
    start without them. firstresult.
    """


@hookspec
def userplane_instruments(meter: Any, registry: Registry) -> None:
    """Telemetry is on: create your metrics on ``meter``, this registry's OpenTelemetry meter.

    Called once per registry by the telemetry plugin, after the storage
    opened. Without telemetry it is never called: keep your instruments
    optional (``None`` until then) and record nothing without them.
    """


@hookspec
def userplane_register_services(registry: Registry) -> None:
    """Register this plugin's per-registry state with ``registry.services.register``.

    Called once per ``Registry``, after storage is open and before
    ``userplane_storage_opened``. Keep per-registry state here, never in
    module globals: two registries in one process must not share it.
    """


@hookspec
def userplane_storage_opened(storage: Storage, settings: Settings, registry: Registry) -> None:
    """The Registry opened ``storage``; called once, before it runs a statement.

    Use its optional capabilities: report its pool (``PooledStorage``) or wrap
    its connections (``InstrumentableStorage``).
    """


@hookspec
def userplane_migrations() -> Mapping[str, str | Path] | None:
    """Your schema: a folder of yoyo SQL migrations per dialect (``{"sqlite": path, …}``).

    ``userplane migrate`` applies them after the core's; ``migrate --status``
    lists them under your plugin's name. File names must be unique across
    plugins: prefix them with your plugin's name.
    """


@hookspec
def userplane_describe(settings: Settings, registry: Registry | None) -> Mapping[str, str] | None:
    """Facts for an operator at start-up: where this plugin sends what (``{"traces": …}``).

    ``userplane serve`` prints them in its start-up line. ``registry`` is open
    (``None`` when described without one), for facts that need storage.
    """


@hookspec
def userplane_shutdown(registry: Registry) -> None:
    """``registry`` is closing: flush what you buffered. Its services close after this."""


# -- operations and auth --------------------------------------------------------------


@hookspec(firstresult=True)
def userplane_operation(operation: str, call: Callable[[], Any], registry: Registry) -> Any:
    """Run one service operation (``"users.create"`` …) by calling ``call()``.

    The core implements this (it just calls ``call``). Plugins implement it with
    ``@hookimpl(wrapper=True)`` to wrap every operation: spans, audit, rate
    limits. A wrapper ``yield``s to run the operation and gets its result (or
    its exception raised at the ``yield``). A wrapper that raises *before* its
    ``yield`` refuses the operation; one that raises *after* it replaces the
    answer although any write already committed (and its events were sent):
    do not. firstresult.
    """


@hookspec(firstresult=True)
def userplane_authenticate(credentials: Credentials, registry: Registry) -> Principal | None:
    """Who presented ``credentials``; ``None`` when they are not yours to judge.

    Return a ``Principal`` for credentials you verified. Raise
    ``Unauthenticated`` when they are yours and wrong (unknown key, bad
    signature, expired): no other plugin gets to try them. Called on every
    authenticated request, so do not reach a database each time: cache
    briefly. firstresult.
    """


@hookspec(firstresult=True)
def userplane_rate_limit(
    kind: str, subject: str, consume: bool, registry: Registry
) -> Quota | None:
    """Check (and with ``consume``, count) one request of class ``kind`` by ``subject``.

    ``kind`` is ``"read"``, ``"write"`` or ``"auth-failure"``
    (``userplane.limits``), or a class of a plugin's own; ``subject`` names
    who is counted (``"principal:key:…"``, ``"address:203.0.113.7"``,
    ``"key-id:…"``). With ``consume`` false, say only whether one more would
    be allowed, counting nothing: the auth service asks so before it looks a
    credential up. Return a ``Quota`` (``allowed`` false refuses: the caller
    raises ``RateLimited``), or ``None`` when ``kind`` has no limit.

    Called on every authenticated request: answer most from memory. Never
    raise for a failing store: serve (return ``None``), log and count the
    failure, so a limiter outage costs no request. firstresult.
    """


@hookspec
def userplane_authorize(
    principal: Principal, action: str, resource: Any, registry: Registry
) -> bool | None:
    """Whether ``principal`` may do ``action`` (``"users:delete"``) on ``resource``.

    ``True`` allows, ``False`` denies, ``None`` has no opinion. Any deny wins;
    with no allow the action is denied. The built-in ``roles`` plugin allows
    what the principal's roles grant; block it to replace the policy.
    ``resource`` is what the action is on, when known (a user id), else ``None``.
    """


@hookspec
def userplane_roles(settings: Settings) -> Mapping[str, frozenset[str]] | None:
    """Roles this plugin defines, each to the actions it grants (``"*"``: all).

    Key creation and token mapping accept only known roles.
    """


@hookspec
def userplane_auth_challenges(settings: Settings) -> Sequence[str] | str | None:
    """The ``WWW-Authenticate`` challenges a 401 offers for your scheme.

    For example ``'Bearer realm="userplane"'``; the same challenge from two
    plugins is sent once.
    """


# -- events (after commit) -------------------------------------------------------------


@hookspec
def userplane_user_created(user: User, principal: Principal | None, registry: Registry) -> None:
    """A user was created; ``user`` is as stored. Called after the write committed.

    ``principal`` is who acted (``None`` when the core is embedded without one).
    An exception is logged with your plugin's name and does not change the answer.
    """


@hookspec
def userplane_user_updated(
    user: User, changed: frozenset[str], principal: Principal | None, registry: Registry
) -> None:
    """A user was updated (after commit); ``changed`` names the fields the caller set."""


@hookspec
def userplane_user_deleted(user: User, principal: Principal | None, registry: Registry) -> None:
    """A user was (softly) deleted (after commit); ``user`` has ``deleted_at`` set."""


@hookspec
def userplane_user_restored(user: User, principal: Principal | None, registry: Registry) -> None:
    """A deleted user was restored (after commit); ``user`` is as stored, live again."""


@hookspec
def userplane_users_purged(
    count: int, deleted_before: datetime, principal: Principal | None, registry: Registry
) -> None:
    """``count`` users deleted before ``deleted_before`` were removed for good (after commit)."""


@hookspec
def userplane_user_purged(
    user_id: uuid.UUID, principal: Principal | None, registry: Registry
) -> None:
    """The deleted user ``user_id`` was removed for good, by itself (after commit).

    ``UserService.purge_user`` (``userplane users shred``): its row, and with it
    its data key when personal data is sealed, are gone.
    """


# -- records of changes (in the transaction, then after commit) ---------------------------


@hookspec
def userplane_record_change(change: Change, registry: Registry) -> None:
    """Write what must commit with ``change``: an audit event, a webhook's outbox row.

    Called inside the storage transaction of the write ``change`` describes,
    after every write of that transaction and just before it commits (so
    what you lock is locked last): statements run on ``registry.storage``
    (on this thread) join that transaction. Raising fails the write: it rolls back,
    with your records, and the caller gets the error. Keep it short: the
    write's locks are held meanwhile. Personal values arrive sealed while
    personal data is encrypted (``FieldChange.sealed``).
    """


@hookspec
def userplane_record_changes(changes: Sequence[Change], registry: Registry) -> None:
    """``userplane_record_change`` for every change of a transaction at once.

    Called where ``userplane_record_change`` is (in the transaction, just
    before it commits), once, with its changes in order, before any
    ``userplane_record_change``. Implement it instead of that hook to write
    a batch in one statement (``SQLStorage.execute_many``): an import of a
    thousand users is one transaction of a thousand changes. Raising fails
    the write as there.
    """


@hookspec
def userplane_changes_committed(changes: Sequence[Change], registry: Registry) -> None:
    """The ``changes`` of one transaction have committed (each was recorded, in order).

    For what may lag the write: waking a webhook dispatcher, dropping a
    cache. Each implementation is isolated: an exception is logged with your
    plugin's name and does not change the answer.
    """


# -- frontends ----------------------------------------------------------------------


@hookspec
def userplane_cli_commands(cli: Any) -> None:
    """Add commands to the ``userplane`` CLI; ``cli`` is its root ``click.Group``."""


@hookspec
def userplane_http_middleware(settings: Settings, registry: Registry) -> Sequence[Any] | None:
    """Return Falcon middleware components to install, outermost first.

    Called once per app. Components see every request, including failed ones.
    """


@hookspec
def userplane_openapi(document: dict[str, Any], registry: Registry) -> None:
    """Add your routes to the OpenAPI ``document`` (a JSON-ready dict), changing it in place.

    Called once per app, after the core's paths and components are in
    (``document["paths"]``, ``document["components"]["schemas"]``,
    ``["responses"]``): add your paths, and schemas under names of your own.
    ``/api/v1/openapi.json`` and ``/docs`` show the result.
    """


@hookspec
def userplane_serving(registry: Registry) -> None:
    """This process now serves requests with ``registry`` (a ``userplane serve`` worker).

    Called once per serving process, after the fork and after the app was
    built: start background work here (a queue's dispatcher), and stop it
    in ``userplane_shutdown``. Not called in tests that build an app
    without serving it, nor by CLI commands.
    """


@hookspec
def userplane_http_routes(app: Any, registry: Registry) -> None:
    """Add routes to the Falcon ``app``; each resource declares its ``actions``."""


@hookspec
def userplane_console(console: Any, registry: Registry) -> None:
    """Add pages to the web console (``/admin``); ``console`` is its ``Console``.

    Called once per app, when the console plugin mounts it. Add a section
    with ``console.add_section(path, title, action, routes)`` (its routes
    declare their actions as every route does), your templates with
    ``console.add_templates(folder)``, and a panel on each user's page with
    ``console.add_user_panel(template, load)``. Render with
    ``console.render(req, resp, template, **context)``; a form's fields,
    its CSRF token already checked, are ``console.form(req)``. See
    ``docs/console.md``.
    """
