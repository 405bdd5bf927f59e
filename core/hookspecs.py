"""The hook specifications: every way a plugin can take part in userplane.

Implement them with ``userplane.hookimpl``. Hooks marked *firstresult* stop
at the first implementation that returns something other than ``None``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from userplane.auth import Credentials, Principal
    from userplane.registry import Registry
    from userplane.settings import Settings
    from userplane.storage import Storage
    from userplane.users import User

hookspec = pluggy.HookspecMarker("userplane")


@hookspec(firstresult=True)
def userplane_open_storage(settings: Settings) -> Storage | None:
    """Return a ``Storage`` for ``settings.database_url``, or ``None`` if not your scheme.

    Called once per process by the ``Registry``. firstresult.
    """


@hookspec
def userplane_storage_opened(storage: Storage, settings: Settings) -> None:
    """The Registry opened ``storage``; called once, before it runs a statement.

    A plugin may use the storage's optional capabilities here: report its pool
    (``userplane.storage.PooledStorage``) or wrap its connections
    (``userplane.storage.InstrumentableStorage``).
    """


@hookspec(historic=True)
def userplane_startup(settings: Settings) -> None:
    """Configure process-wide concerns (logging, telemetry) from ``settings``.

    Called once when a ``Registry`` opens. Historic: a plugin registered later
    is called too, with the same settings.
    """


@hookspec
def userplane_describe(settings: Settings, registry: Registry | None) -> Mapping[str, str] | None:
    """Facts for an operator at start-up: where this plugin sends what (``{"traces": …}``).

    ``userplane serve`` prints them in its start-up line. ``registry`` is open
    (``None`` when described without one), for facts that need storage.
    """


@hookspec
def userplane_shutdown() -> None:
    """Flush and release what ``userplane_startup`` set up; called when the Registry closes."""


@hookspec(firstresult=True)
def userplane_operation(operation: str, call: Callable[[], Any]) -> Any:
    """Run one service operation (``"users.create"`` …) by calling ``call()``.

    The core implements this (it just calls ``call``). Plugins implement it with
    ``@hookimpl(wrapper=True)`` to wrap every operation: spans, audit, rate
    limits. A wrapper ``yield``s to run the operation and gets its result (or
    its exception raised at the ``yield``). firstresult.
    """


@hookspec(firstresult=True)
def userplane_authenticate(credentials: Credentials, registry: Registry) -> Principal | None:
    """Who presented ``credentials``; ``None`` when they are not yours to judge.

    Return a ``userplane.auth.Principal`` for credentials you verified. Raise
    ``userplane.errors.Unauthenticated`` when they are yours and wrong (unknown
    key, bad signature, expired): no other plugin gets to try them. Called on
    every authenticated request, so do not reach a database each time: cache
    briefly. ``registry`` gives settings and storage. firstresult.
    """


@hookspec
def userplane_authorize(principal: Principal, action: str, resource: Any) -> bool | None:
    """Whether ``principal`` may do ``action`` (``"users:delete"``) on ``resource``.

    ``True`` allows, ``False`` denies, ``None`` has no opinion. Any deny wins;
    with no allow the action is denied. The core's role policy already allows
    what the principal's roles grant, so implement this to deny more (network
    rules, suspended accounts) or to allow by other means (a policy engine).
    ``resource`` is what the action is on, when known (a user id), else ``None``.
    """


# The user-event hooks receive ``principal``: who acted (``None`` when no
# frontend set one, as when the core is embedded). Implementations may omit it.


@hookspec
def userplane_user_created(user: User, principal: Principal | None) -> None:
    """A user was created; ``user`` is as stored. Called after the write committed."""


@hookspec
def userplane_user_updated(
    user: User, changed: frozenset[str], principal: Principal | None
) -> None:
    """A user was updated; ``changed`` names the fields the caller set."""


@hookspec
def userplane_user_deleted(user: User, principal: Principal | None) -> None:
    """A user was (softly) deleted; ``user`` is as stored, with ``deleted_at`` set."""


@hookspec
def userplane_user_restored(user: User, principal: Principal | None) -> None:
    """A deleted user was restored; ``user`` is as stored, live again."""


@hookspec
def userplane_users_purged(
    count: int, deleted_before: datetime, principal: Principal | None
) -> None:
    """``count`` users deleted before ``deleted_before`` were removed for good."""


@hookspec
def userplane_cli_commands(cli: Any) -> None:
    """Add commands to the ``userplane`` CLI; ``cli`` is its root ``click.Group``."""


@hookspec
def userplane_http_middleware(settings: Settings) -> Sequence[Any] | None:
    """Return Falcon middleware components to install, outermost first.

    Called once per app. Components see every request, including failed ones.
    """


@hookspec
def userplane_http_routes(app: Any, registry: Any) -> None:
    """Add routes to the Falcon ``app``; ``registry`` gives the services."""
