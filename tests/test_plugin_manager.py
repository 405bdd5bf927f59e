"""The plugin manager: entry points, blocked plugins, hookspec hygiene, the Registry's lifetime."""

from __future__ import annotations

import inspect
import re
from datetime import timedelta
from pathlib import Path

import pytest

from userplane import ConfigurationError, NewUser, Registry, Settings, hookimpl, hookspecs
from userplane.hooks import Hooks
from userplane.plugin_manager import (
    CORE_PLUGIN_NAME,
    ENTRY_POINT_GROUP,
    PluginInfo,
    describe_plugins,
    make_plugin_manager,
)
from userplane.plugins import logging as logging_plugin
from userplane.plugins import sqlite as sqlite_plugin
from userplane.users import UserService

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIRS = [ROOT / "core", ROOT / "frontends", ROOT / "plugins"]
DAY = timedelta(days=1)


def sqlite_settings(tmp_path: Path, **variables: str) -> Settings:
    return Settings.from_mapping(
        {"USERPLANE_DATABASE_URL": f"sqlite:///{tmp_path / 'u.db'}", **variables}
    )


# -- discovery -----------------------------------------------------------------------------


def test_entry_points_are_declared() -> None:
    from importlib.metadata import entry_points

    names = {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    assert {"sqlite", "postgresql", "logging", "telemetry"} <= names


def test_loads_the_builtin_plugins() -> None:
    pm = make_plugin_manager()
    assert pm.get_plugin("sqlite") is sqlite_plugin
    assert pm.get_plugin("logging") is logging_plugin
    assert pm.get_plugin(CORE_PLUGIN_NAME) is not None
    # The core's own hooks are not listed (nor third-party plugins installed beside).
    assert builtin(describe_plugins(pm)) == BUILTINS


#: The built-in plugins, as listed.
BUILTINS = [
    "api_keys",
    "audit",
    "console",
    "encryption_keys",
    "jwt",
    "logging",
    "postgresql",
    "rate_limits",
    "roles",
    "scim",
    "sqlite",
    "telemetry",
    "webhooks",
]


def builtin(infos: list[PluginInfo]) -> list[str]:
    """The names of the built-in plugins among ``infos``, in listing order."""
    return [i.name for i in infos if i.module.startswith("userplane.") or i.blocked]


def test_describe_plugins_lists_their_hooks() -> None:
    from importlib.metadata import version

    infos = {i.name: i for i in describe_plugins(make_plugin_manager())}
    assert infos["sqlite"] == PluginInfo(
        name="sqlite",
        module="userplane.plugins.sqlite",
        hooks=("userplane_describe", "userplane_open_storage"),
        distribution=f"userplane {version('userplane')}",
    )
    assert "userplane_startup" in infos["logging"].hooks
    assert "userplane_http_middleware" in infos["logging"].hooks
    assert not infos["logging"].blocked


def test_a_disabled_plugin_is_blocked() -> None:
    pm = make_plugin_manager(disabled=["logging"])
    assert pm.get_plugin("logging") is None
    assert not pm.has_plugin("logging")
    assert pm.is_blocked("logging")
    assert pm.get_plugin("sqlite") is not None
    infos = describe_plugins(pm)
    assert infos[-1] == PluginInfo(name="logging", module="", hooks=(), blocked=True)
    assert builtin(infos) == [*(n for n in BUILTINS if n != "logging"), "logging"]
    assert [i.name for i in infos if i.blocked] == ["logging"]


def test_disabling_an_unknown_name_is_harmless() -> None:
    pm = make_plugin_manager(disabled=["no-such-plugin"])
    assert pm.get_plugin("sqlite") is not None
    assert pm.get_plugin("logging") is not None


def test_extra_plugins_are_registered() -> None:
    class Extra:
        @hookimpl
        def userplane_shutdown(self) -> None:
            return None

    extra = Extra()
    pm = make_plugin_manager(extra_plugins=[extra])
    assert pm.is_registered(extra)
    assert any(i.hooks == ("userplane_shutdown",) for i in describe_plugins(pm))


def assert_broken(plugin: object, hook: str, tmp_path: Path) -> None:
    """``plugin`` is left out as broken, named with ``hook``; a Registry refuses to open."""
    pm = make_plugin_manager(extra_plugins=[plugin])
    assert not pm.is_registered(plugin)
    assert len(pm.broken) == 1, pm.broken
    assert hook in pm.broken[0].reason
    # The healthy plugins stay, so listings still work.
    assert pm.get_plugin("sqlite") is not None
    listed = [i for i in describe_plugins(pm) if i.broken]
    assert [(i.name, hook in (i.broken or "")) for i in listed] == [(pm.broken[0].name, True)]
    with pytest.raises(ConfigurationError) as info:
        Registry(sqlite_settings(tmp_path), plugin_manager=pm)
    message = info.value.detail
    assert "\n" not in message
    assert pm.broken[0].name in message
    assert hook in message


def test_a_misspelt_hook_leaves_the_plugin_out_as_broken(tmp_path: Path) -> None:
    class Misspelt:
        @hookimpl
        def userplane_user_creatd(self, user: object) -> None:
            return None

    assert_broken(Misspelt(), "userplane_user_creatd", tmp_path)


def test_a_wrong_argument_name_leaves_the_plugin_out_as_broken(tmp_path: Path) -> None:
    class WrongArgs:
        @hookimpl
        def userplane_user_created(self, person: object) -> None:
            return None

    assert_broken(WrongArgs(), "userplane_user_created", tmp_path)


def test_an_event_wrapper_leaves_the_plugin_out_as_broken(tmp_path: Path) -> None:
    class Wrapper:
        @hookimpl(wrapper=True)
        def userplane_user_created(self, user: object) -> object:
            return (yield)

    assert_broken(Wrapper(), "userplane_user_created", tmp_path)


class SoftDeleteListener:
    """A plugin of the soft-delete events, taking exactly their arguments."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    @hookimpl
    def userplane_user_restored(self, user: object) -> None:
        self.events.append(("restored", user))

    @hookimpl
    def userplane_users_purged(self, count: int, deleted_before: object) -> None:
        self.events.append(("purged", (count, deleted_before)))


def test_a_plugin_of_the_restore_and_purge_hooks_validates_and_is_listed() -> None:
    listener = SoftDeleteListener()
    pm = make_plugin_manager(extra_plugins=[listener])
    assert pm.is_registered(listener)
    assert any(
        i.hooks == ("userplane_user_restored", "userplane_users_purged")
        for i in describe_plugins(pm)
    )
    hooks = Hooks(pm)
    hooks.users_purged(2, "t", None, None)  # type: ignore[arg-type]
    hooks.user_restored("u", None, None)  # type: ignore[arg-type]
    assert listener.events == [("purged", (2, "t")), ("restored", "u")]


def test_a_purge_listener_may_take_only_the_count() -> None:
    class CountOnly:
        def __init__(self) -> None:
            self.counts: list[int] = []

        @hookimpl
        def userplane_users_purged(self, count: int) -> None:
            self.counts.append(count)

    plugin = CountOnly()
    pm = make_plugin_manager(extra_plugins=[plugin])
    Hooks(pm).users_purged(3, "t", None, None)  # type: ignore[arg-type]
    assert plugin.counts == [3]


class RestoredWithAWrongArgument:
    @hookimpl
    def userplane_user_restored(self, person: object) -> None:
        return None


class PurgedWithAWrongArgument:
    @hookimpl
    def userplane_users_purged(self, count: int, before: object) -> None:
        return None


class PurgedMisspelt:
    @hookimpl
    def userplane_user_purged(self, count: int) -> None:
        return None


@pytest.mark.parametrize(
    "plugin_class", [RestoredWithAWrongArgument, PurgedWithAWrongArgument, PurgedMisspelt]
)
def test_wrong_restore_and_purge_hooks_leave_the_plugin_out(
    plugin_class: type, tmp_path: Path
) -> None:
    hook = "userplane_user_purged" if plugin_class is PurgedMisspelt else "userplane_user"
    assert_broken(plugin_class(), hook, tmp_path)


# -- the registry and storage ---------------------------------------------------------------------


def test_an_unknown_database_scheme_names_the_variable() -> None:
    settings = Settings.from_mapping({"USERPLANE_DATABASE_URL": "nosuchdb://x"})
    with pytest.raises(ConfigurationError) as info:
        Registry(settings)
    assert "USERPLANE_DATABASE_URL" in info.value.detail
    assert "nosuchdb" in info.value.detail


def test_disabling_sqlite_leaves_the_default_url_unserved() -> None:
    settings = Settings.from_mapping({"USERPLANE_DISABLED_PLUGINS": "sqlite"})
    assert settings.database_url.startswith("sqlite:")
    with pytest.raises(ConfigurationError) as info:
        Registry(settings)
    assert "USERPLANE_DATABASE_URL" in info.value.detail
    assert "sqlite" in info.value.detail


def test_a_registry_without_the_logging_plugin_serves(tmp_path: Path) -> None:
    settings = sqlite_settings(tmp_path, USERPLANE_DISABLED_PLUGINS="logging")
    with Registry(settings) as reg:
        reg.migrate()
        reg.ping()
        assert reg.storage.name == "sqlite"
        assert reg.pm.is_blocked("logging")


class Lifecycle:
    def __init__(self) -> None:
        self.started: list[Settings] = []
        self.shutdowns = 0

    @hookimpl
    def userplane_startup(self, settings: Settings) -> None:
        self.started.append(settings)

    @hookimpl
    def userplane_shutdown(self) -> None:
        self.shutdowns += 1


def test_close_is_idempotent_and_shuts_plugins_down_once(tmp_path: Path) -> None:
    plugin = Lifecycle()
    settings = sqlite_settings(tmp_path)
    reg = Registry(settings, plugins=[plugin])
    assert plugin.started == [settings]
    assert plugin.shutdowns == 0
    reg.close()
    assert plugin.shutdowns == 1
    reg.close()
    reg.close()
    assert plugin.shutdowns == 1


def test_the_context_manager_closes_once_even_after_close(tmp_path: Path) -> None:
    plugin = Lifecycle()
    with Registry(sqlite_settings(tmp_path), plugins=[plugin]) as reg:
        reg.close()
        assert plugin.shutdowns == 1
    assert plugin.shutdowns == 1


def test_a_registry_tells_plugins_of_restores_and_purges(tmp_path: Path) -> None:
    listener = SoftDeleteListener()
    with Registry(sqlite_settings(tmp_path), plugins=[listener]) as reg:
        reg.migrate()
        user = reg.users.create(NewUser("ann@example.org"))
        reg.users.delete(user.id)
        restored = reg.users.restore(user.id)
        deleted = reg.users.delete(user.id)
        assert deleted.deleted_at is not None
        # A clock a day on, so that the purge does not depend on the real clock advancing.
        later = UserService(
            reg.storage, reg.hooks, registry=reg, clock=lambda: deleted.deleted_at + DAY
        )
        count = later.purge(timedelta(hours=1))
    assert count == 1
    assert [kind for kind, _ in listener.events] == ["restored", "purged"]
    assert listener.events[0] == ("restored", restored)
    purged = listener.events[1][1]
    assert isinstance(purged, tuple)
    assert purged == (1, deleted.deleted_at + DAY - timedelta(hours=1))


def test_a_registry_can_take_a_ready_plugin_manager(tmp_path: Path) -> None:
    plugin = Lifecycle()
    pm = make_plugin_manager(extra_plugins=[plugin])
    with Registry(sqlite_settings(tmp_path), plugin_manager=pm) as reg:
        assert reg.pm is pm
        assert len(plugin.started) == 1
    assert plugin.shutdowns == 1


# -- hookspec hygiene (as datasette checks its own) -----------------------------------------------


def _hookspecs() -> list[str]:
    return sorted(
        name
        for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if name.startswith("userplane_") and hasattr(fn, "userplane_spec")
    )


def _source() -> str:
    texts = []
    for directory in SOURCE_DIRS:
        texts += [p.read_text(encoding="utf-8") for p in sorted(directory.rglob("*.py"))]
    return "\n".join(texts)


#: The events a plugin hears about users, and the arguments each passes.
USER_EVENTS = {
    "userplane_user_created": ("user", "principal", "registry"),
    "userplane_user_updated": ("user", "changed", "principal", "registry"),
    "userplane_user_deleted": ("user", "principal", "registry"),
    "userplane_user_restored": ("user", "principal", "registry"),
    "userplane_users_purged": ("count", "deleted_before", "principal", "registry"),
}


def test_there_are_hookspecs() -> None:
    names = _hookspecs()
    assert "userplane_operation" in names
    assert "userplane_open_storage" in names
    assert set(USER_EVENTS) <= set(names)
    assert len(names) >= 12


@pytest.mark.parametrize(("name", "argnames"), USER_EVENTS.items(), ids=list(USER_EVENTS))
def test_user_events_are_plain_broadcasts_with_their_arguments(
    name: str, argnames: tuple[str, ...]
) -> None:
    caller = getattr(make_plugin_manager().hook, name)
    assert caller.spec is not None
    assert caller.spec.argnames == argnames
    # Every listener hears every event: none may stop the others.
    assert not caller.spec.opts.get("firstresult")
    assert not caller.spec.opts.get("historic")


@pytest.mark.parametrize("name", _hookspecs())
def test_every_hookspec_has_a_docstring(name: str) -> None:
    doc = inspect.getdoc(getattr(hookspecs, name))
    assert doc
    assert doc.strip()


def test_every_hookspec_is_called_through_the_facade_only() -> None:
    facade = (ROOT / "core" / "hooks.py").read_text(encoding="utf-8")
    uncalled = [name for name in _hookspecs() if not re.search(rf"\b{name}\b", facade)]
    assert uncalled == [], f"hookspecs the Hooks façade never calls: {uncalled}"
    raw = [
        str(path.relative_to(ROOT))
        for directory in SOURCE_DIRS
        for path in sorted(directory.rglob("*.py"))
        if path.name != "hooks.py"
        and re.search(r"\.hook\.userplane_\w+", path.read_text(encoding="utf-8"))
    ]
    assert raw == [], f"raw hook calls outside userplane.hooks: {raw}"


def test_every_hookspec_is_in_the_plugin_manager() -> None:
    pm = make_plugin_manager()
    for name in _hookspecs():
        caller = getattr(pm.hook, name)
        assert caller.spec is not None, name
