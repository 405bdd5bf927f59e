"""``Hooks``: one typed method per hook, the only way the core and frontends call plugins.

Callers never touch ``pm.hook`` directly: here each hook's calling rules live
once (historic, firstresult, collected results, isolated listeners), and the
types of what comes back are checked.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import pluggy

from userplane.errors import ConfigurationError
from userplane.plugin_manager import CORE_PLUGIN_NAME as _CORE

if TYPE_CHECKING:
    from userplane.auth import Credentials, Principal
    from userplane.changes import Change
    from userplane.keyring import Keyring
    from userplane.limits import Quota
    from userplane.plugin_manager import BrokenPlugin
    from userplane.registry import Registry
    from userplane.settings import Settings, SettingsSection
    from userplane.storage import Storage
    from userplane.users import User

T = TypeVar("T")

_events = logging.getLogger("userplane.events")
_log = logging.getLogger("userplane.plugins")


@attrs.frozen
class PluginMigrations:
    """The migration folders one plugin contributes, by dialect."""

    plugin: str
    folders: Mapping[str, Path]


class Hooks:
    """The plugin manager's hooks as typed methods."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self._hook = pm.hook

    # -- life cycle -------------------------------------------------------------

    def startup(self, settings: Settings) -> None:
        """``userplane_startup``, historic: plugins registered later are called too."""
        self._hook.userplane_startup.call_historic(kwargs={"settings": settings})

    def settings_sections(self) -> list[SettingsSection]:
        """Every section of settings the plugins declare."""
        out: list[SettingsSection] = []
        for result in self._hook.userplane_settings_sections():
            if result is None:
                continue
            out.extend(result if isinstance(result, list | tuple) else [result])
        return out

    def open_storage(self, settings: Settings) -> Storage | None:
        """The one storage that serves ``settings.database_url``.

        Every storage plugin is asked: two that answer is a ``ConfigurationError``
        naming both (and neither storage is kept).
        """
        offers: list[tuple[str, Storage]] = []
        try:
            for impl in reversed(self._hook.userplane_open_storage.get_hookimpls()):
                storage: Storage | None = _call(impl, {"settings": settings})
                if storage is not None:
                    offers.append((impl.plugin_name, storage))
        except BaseException:
            for _, offered in offers:  # a later plugin failed: close what was offered
                offered.close()
            raise
        if len(offers) > 1:
            for _, storage in offers:
                storage.close()
            names = " and ".join(repr(name) for name, _ in offers)
            raise ConfigurationError(
                f"USERPLANE_DATABASE_URL: the plugins {names} both serve this URL's scheme; "
                "disable one of them (USERPLANE_DISABLED_PLUGINS)"
            )
        return offers[0][1] if offers else None

    def encryption_keys(self, settings: Settings) -> Keyring | None:
        """``userplane_encryption_keys``: the keyring, or ``None`` (encryption off)."""
        from userplane.keyring import Keyring

        keyring = self._hook.userplane_encryption_keys(settings=settings)
        if keyring is not None and not isinstance(keyring, Keyring):
            raise ConfigurationError(
                f"userplane_encryption_keys returned a {type(keyring).__name__}, not a Keyring"
            )
        return keyring

    def register_services(self, registry: Registry) -> None:
        """``userplane_register_services``."""
        self._hook.userplane_register_services(registry=registry)

    def instruments(self, meter: Any, registry: Registry) -> None:
        """``userplane_instruments``: every plugin makes its metrics on ``meter``."""
        self._hook.userplane_instruments(meter=meter, registry=registry)

    def storage_opened(self, storage: Storage, settings: Settings, registry: Registry) -> None:
        """``userplane_storage_opened``."""
        self._hook.userplane_storage_opened(storage=storage, settings=settings, registry=registry)

    def migrations(self) -> list[PluginMigrations]:
        """Each plugin's migration folders, in registration order."""
        out = []
        for impl in self._hook.userplane_migrations.get_hookimpls():
            folders: Mapping[str, str | Path] | None = _call(impl, {})
            if folders:
                out.append(
                    PluginMigrations(impl.plugin_name, {d: Path(f) for d, f in folders.items()})
                )
        return out

    def describe(self, settings: Settings, registry: Registry | None) -> dict[str, str]:
        """Every plugin's start-up facts, merged."""
        facts: dict[str, str] = {}
        for described in self._hook.userplane_describe(settings=settings, registry=registry):
            facts.update(described or {})
        return facts

    def shutdown(self, registry: Registry) -> None:
        """``userplane_shutdown``, each plugin on its own: one that raises is logged.

        A failing flush must not keep the other plugins from flushing theirs.
        """
        for impl in reversed(self._hook.userplane_shutdown.get_hookimpls()):
            try:
                _call(impl, {"registry": registry})
            except Exception:
                _log.exception(
                    "the shutdown of plugin %r failed",
                    impl.plugin_name,
                    extra={"plugin": impl.plugin_name, "hook": "userplane_shutdown"},
                )

    # -- operations and auth ----------------------------------------------------

    # The hooks below run on every request: one without implementations is not
    # dispatched at all (pluggy would build its arguments and walk an empty list).

    def operation(self, operation: str, call: Callable[[], T], registry: Registry) -> T:
        """Run ``call`` as ``operation`` inside every ``userplane_operation`` wrapper."""
        hook = self._hook.userplane_operation
        impls = hook.get_hookimpls()
        if len(impls) == 1 and impls[0].plugin_name == _CORE:
            return call()  # the core's own implementation, and no wrapper
        result: T = hook(operation=operation, call=call, registry=registry)
        return result

    def authenticate(self, credentials: Credentials, registry: Registry) -> Principal | None:
        """The first plugin's principal for ``credentials``, or ``None``."""
        hook = self._hook.userplane_authenticate
        if not hook.get_hookimpls():
            return None
        principal: Principal | None = hook(credentials=credentials, registry=registry)
        return principal

    @property
    def limits_rates(self) -> bool:
        """Whether any plugin implements ``userplane_rate_limit``.

        Asked once by the auth service, so that without a limiter a request
        pays for no hook dispatch at all.
        """
        return bool(self._hook.userplane_rate_limit.get_hookimpls())

    def rate_limit(
        self, kind: str, subject: str, consume: bool, registry: Registry
    ) -> Quota | None:
        """The first limiter's ``Quota`` for one request of ``kind`` by ``subject``, or ``None``."""
        quota: Quota | None = self._hook.userplane_rate_limit(
            kind=kind, subject=subject, consume=consume, registry=registry
        )
        return quota

    def authorize(
        self, principal: Principal, action: str, resource: Any, registry: Registry
    ) -> list[bool | None]:
        """Every plugin's vote on ``action``."""
        hook = self._hook.userplane_authorize
        if not hook.get_hookimpls():
            return []
        votes: list[bool | None] = hook(
            principal=principal, action=action, resource=resource, registry=registry
        )
        return votes

    def roles(self, settings: Settings) -> dict[str, frozenset[str]]:
        """Every role the plugins define; two plugins defining one role is an error."""
        roles: dict[str, frozenset[str]] = {}
        owner: dict[str, str] = {}
        for impl in reversed(self._hook.userplane_roles.get_hookimpls()):
            defined: Mapping[str, frozenset[str]] = _call(impl, {"settings": settings}) or {}
            for name, actions in defined.items():
                if name in roles and roles[name] != frozenset(actions):
                    raise ConfigurationError(
                        f"role {name!r} is defined twice, differently (by {owner[name]!r} "
                        f"and {impl.plugin_name!r})"
                    )
                roles[name] = frozenset(actions)
                owner.setdefault(name, impl.plugin_name)
        return roles

    def auth_challenges(self, settings: Settings) -> tuple[str, ...]:
        """Every distinct ``WWW-Authenticate`` challenge, in plugin order."""
        out: list[str] = []
        for result in self._hook.userplane_auth_challenges(settings=settings):
            for challenge in [result] if isinstance(result, str) else result or ():
                if challenge not in out:
                    out.append(challenge)
        return tuple(out)

    # -- events ---------------------------------------------------------------

    def _notify(self, name: str, kwargs: dict[str, Any]) -> None:
        """Call each listener of ``name`` on its own: one that raises is logged, not raised.

        The write the event reports has committed: a listener's failure must
        neither turn the answer into an error nor keep later listeners from
        hearing of it.
        """
        for impl in reversed(getattr(self._hook, name).get_hookimpls()):
            try:
                _call(impl, kwargs)
            except Exception:
                _events.exception(
                    "the %s listener of plugin %r failed; the write stands",
                    name,
                    impl.plugin_name,
                    extra={"plugin": impl.plugin_name, "hook": name},
                )

    def user_created(self, user: User, principal: Principal | None, registry: Registry) -> None:
        """``userplane_user_created``, listeners isolated."""
        self._notify(
            "userplane_user_created", {"user": user, "principal": principal, "registry": registry}
        )

    def user_updated(
        self,
        user: User,
        changed: frozenset[str],
        principal: Principal | None,
        registry: Registry,
    ) -> None:
        """``userplane_user_updated``, listeners isolated."""
        kwargs = {"user": user, "changed": changed, "principal": principal, "registry": registry}
        self._notify("userplane_user_updated", kwargs)

    def user_deleted(self, user: User, principal: Principal | None, registry: Registry) -> None:
        """``userplane_user_deleted``, listeners isolated."""
        self._notify(
            "userplane_user_deleted", {"user": user, "principal": principal, "registry": registry}
        )

    def user_restored(self, user: User, principal: Principal | None, registry: Registry) -> None:
        """``userplane_user_restored``, listeners isolated."""
        self._notify(
            "userplane_user_restored", {"user": user, "principal": principal, "registry": registry}
        )

    def users_purged(
        self, count: int, deleted_before: datetime, principal: Principal | None, registry: Registry
    ) -> None:
        """``userplane_users_purged``, listeners isolated."""
        kwargs = {
            "count": count,
            "deleted_before": deleted_before,
            "principal": principal,
            "registry": registry,
        }
        self._notify("userplane_users_purged", kwargs)

    def user_purged(
        self, user_id: uuid.UUID, principal: Principal | None, registry: Registry
    ) -> None:
        """``userplane_user_purged``, listeners isolated."""
        kwargs = {"user_id": user_id, "principal": principal, "registry": registry}
        self._notify("userplane_user_purged", kwargs)

    # -- records of changes ------------------------------------------------------

    @property
    def records_changes(self) -> bool:
        """Whether any plugin records changes, one by one or by the batch (asked once, at start)."""
        return bool(
            self._hook.userplane_record_change.get_hookimpls()
            or self._hook.userplane_record_changes.get_hookimpls()
        )

    def record_changes(self, changes: Sequence[Change], registry: Registry) -> None:
        """``userplane_record_changes`` then ``userplane_record_change`` for each change.

        Not isolated: an exception fails (and rolls back) the write.
        """
        batch = tuple(changes)
        if self._hook.userplane_record_changes.get_hookimpls():
            self._hook.userplane_record_changes(changes=batch, registry=registry)
        single = self._hook.userplane_record_change
        if single.get_hookimpls():
            for change in batch:
                single(change=change, registry=registry)

    def record_change(self, change: Change, registry: Registry) -> None:
        """``record_changes`` of one change: every recorder sees it, batch or single.

        Not isolated: an exception fails (and rolls back) the write.
        """
        self.record_changes((change,), registry)

    def changes_committed(self, changes: Sequence[Change], registry: Registry) -> None:
        """``userplane_changes_committed``, listeners isolated."""
        self._notify(
            "userplane_changes_committed", {"changes": tuple(changes), "registry": registry}
        )

    # -- frontends ---------------------------------------------------------------

    def cli_commands(self, cli: Any) -> list[BrokenPlugin]:
        """``userplane_cli_commands``, each plugin on its own: those that fail are returned.

        A plugin whose commands cannot be added must not take the CLI down
        (``--help`` and ``userplane plugins`` still work and name it).
        """
        from userplane.plugin_manager import BrokenPlugin

        failed = []
        for impl in reversed(self._hook.userplane_cli_commands.get_hookimpls()):
            try:
                _call(impl, {"cli": cli})
            except Exception as exc:
                reason = " ".join(f"its commands failed: {type(exc).__name__}: {exc}".split())
                failed.append(BrokenPlugin(impl.plugin_name, reason))
        return failed

    def http_middleware(self, settings: Settings, registry: Registry) -> list[Any]:
        """Every plugin's middleware components, outermost first."""
        out: list[Any] = []
        for components in self._hook.userplane_http_middleware(
            settings=settings, registry=registry
        ):
            out.extend(components or ())
        return out

    def openapi(self, document: dict[str, Any], registry: Registry) -> None:
        """``userplane_openapi``: every plugin adds its paths to ``document``."""
        self._hook.userplane_openapi(document=document, registry=registry)

    def serving(self, registry: Registry) -> None:
        """``userplane_serving``: this process serves now."""
        self._hook.userplane_serving(registry=registry)

    def http_routes(self, app: Any, registry: Registry) -> None:
        """``userplane_http_routes``."""
        self._hook.userplane_http_routes(app=app, registry=registry)

    def console(self, console: Any, registry: Registry) -> None:
        """``userplane_console``: every plugin adds its pages to the web console."""
        self._hook.userplane_console(console=console, registry=registry)


def _call(impl: pluggy.HookImpl, kwargs: Mapping[str, Any]) -> Any:
    """Call one implementation with the arguments it takes, from a hook call's keywords."""
    return impl.function(*[kwargs[name] for name in impl.argnames])


def hook_names() -> Sequence[str]:
    """Every hook's name, from the specifications."""
    from userplane import hookspecs

    return sorted(n for n in vars(hookspecs) if n.startswith("userplane_"))
