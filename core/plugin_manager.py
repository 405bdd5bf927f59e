"""The plugin manager: hook specifications, entry-point discovery, disabled plugins."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import attrs
import pluggy

from userplane import hookspecs

ENTRY_POINT_GROUP = "userplane"

#: Marks a plugin's hook implementations: ``@hookimpl def userplane_…``.
hookimpl = pluggy.HookimplMarker("userplane")


class _CoreHooks:
    """The core's own implementations: the innermost layer of wrapped hooks."""

    @hookimpl(trylast=True)
    def userplane_operation(self, operation: str, call: Callable[[], Any]) -> Any:
        return call()


CORE_PLUGIN_NAME = "userplane.core"


def make_plugin_manager(
    disabled: Iterable[str] = (), extra_plugins: Iterable[object] = ()
) -> pluggy.PluginManager:
    """A plugin manager with userplane's hookspecs and every ``userplane`` entry point loaded.

    Names in ``disabled`` are blocked before discovery, so those plugins are
    never imported. ``extra_plugins`` are registered too (tests, embedding).
    ``check_pending`` then fails on any ``userplane_*`` implementation that
    matches no hookspec, which catches misspelt hook names.
    """
    pm = pluggy.PluginManager("userplane")
    pm.add_hookspecs(hookspecs)
    pm.register(_CoreHooks(), name=CORE_PLUGIN_NAME)
    for name in disabled:
        pm.set_blocked(name)
    pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    for plugin in extra_plugins:
        pm.register(plugin)
    pm.check_pending()
    return pm


@attrs.frozen
class PluginInfo:
    """What ``userplane plugins`` shows for one plugin."""

    name: str
    module: str
    hooks: tuple[str, ...]
    blocked: bool = False


def describe_plugins(pm: pluggy.PluginManager) -> list[PluginInfo]:
    """Every registered plugin with the hooks it implements, then the blocked ones."""
    infos = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None or name == CORE_PLUGIN_NAME:
            continue
        hooks = tuple(sorted(h.name for h in pm.get_hookcallers(plugin) or ()))
        module = getattr(plugin, "__name__", type(plugin).__module__)
        infos.append(PluginInfo(name=name, module=module, hooks=hooks))
    for name, plugin in pm.list_name_plugin():
        if plugin is None and pm.is_blocked(name):
            infos.append(PluginInfo(name=name, module="", hooks=(), blocked=True))
    return sorted(infos, key=lambda i: (i.blocked, i.name))
