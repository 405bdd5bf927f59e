"""The plugin manager: hook specifications, entry-point discovery, disabled and broken plugins."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import attrs
import pluggy

from userplane import hookspecs
from userplane.errors import ConfigurationError

ENTRY_POINT_GROUP = "userplane"

#: Marks a plugin's hook implementations: ``@hookimpl def userplane_…``.
hookimpl = pluggy.HookimplMarker("userplane")


class _CoreHooks:
    """The core's own implementations: the innermost layer of wrapped hooks."""

    @hookimpl(trylast=True)
    def userplane_operation(self, operation: str, call: Callable[[], Any]) -> Any:
        return call()


CORE_PLUGIN_NAME = "userplane.core"


@attrs.frozen
class BrokenPlugin:
    """A plugin that could not be loaded, and why (one line)."""

    name: str
    reason: str

    def error(self) -> ConfigurationError:
        """The start-up error it causes."""
        return ConfigurationError(f"plugin {self.name!r} is broken: {self.reason}")


class PluginManager(pluggy.PluginManager):
    """pluggy's manager, remembering the plugins that failed to load (``broken``)."""

    def __init__(self) -> None:
        super().__init__("userplane")
        self.broken: list[BrokenPlugin] = []
        #: Entry-point name -> "distribution version", for listings.
        self.distributions: dict[str, str] = {}

    def check(self) -> None:
        """Raise the first broken plugin's ``ConfigurationError``, if any."""
        if self.broken:
            raise self.broken[0].error()


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _name_of(pm: PluginManager, plugin: object) -> str:
    """A readable, unique name for a plugin registered without one (tests, embedding).

    pluggy would name an instance by its ``id()``; logs and listings name
    plugins, so use the module and class (or module) name.
    """
    base = getattr(plugin, "__name__", None) or (
        f"{type(plugin).__module__}.{type(plugin).__qualname__}"
    )
    name, n = base, 1
    while pm.has_plugin(name) or pm.is_blocked(name):
        n += 1
        name = f"{base}#{n}"
    return name


def _register(pm: PluginManager, plugin: object, name: str | None) -> None:
    name = name or _name_of(pm, plugin)
    try:
        pm.register(plugin, name=name)
    except (pluggy.PluginValidationError, ValueError) as exc:
        # pluggy keeps the hooks it added before the one that failed: drop them all.
        if pm.get_plugin(name) is not None:
            pm.unregister(name=name)
        pm.broken.append(BrokenPlugin(name, _one_line(exc)))


def _load_entry_points(pm: PluginManager) -> None:
    from importlib.metadata import entry_points

    # A distribution's name and version, read once: each read parses its METADATA
    # file, and the built-in plugins are a dozen entry points of one distribution.
    labels: dict[int, str] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if pm.is_blocked(ep.name) or pm.has_plugin(ep.name):
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # a plugin's bug must not take the CLI's --help down
            pm.broken.append(BrokenPlugin(ep.name, f"cannot be imported: {_one_line(exc)}"))
            continue
        dist = ep.dist
        if dist is not None:
            label = labels.get(id(dist))
            if label is None:
                metadata = dist.metadata
                label = labels[id(dist)] = f"{metadata['Name']} {metadata['Version']}"
            pm.distributions[ep.name] = label
        _register(pm, plugin, ep.name)


def _check_hooks(pm: PluginManager) -> None:
    """Unregister, as broken, plugins with a hook no spec names or an event wrapper.

    pluggy's ``check_pending`` raises at the first; here every plugin is
    judged and named, and the healthy ones stay.
    """
    bad: dict[str, str] = {}
    for name in dir(pm.hook):
        caller = getattr(pm.hook, name)
        if not isinstance(caller, pluggy.HookCaller):
            continue
        for impl in caller.get_hookimpls():
            if not caller.has_spec() and not impl.optionalhook:
                bad.setdefault(
                    impl.plugin_name,
                    f"{name} is not a userplane hook (misspelt? see docs/hooks.md)",
                )
            elif name in hookspecs.ONE_BY_ONE_HOOKS and (impl.wrapper or impl.hookwrapper):
                bad.setdefault(
                    impl.plugin_name, f"{name} calls each plugin on its own and takes no wrapper"
                )
    for plugin_name, reason in bad.items():
        plugin = pm.get_plugin(plugin_name)
        if plugin is not None:
            pm.unregister(plugin)
        pm.broken.append(BrokenPlugin(plugin_name, reason))


def make_plugin_manager(
    disabled: Iterable[str] = (), extra_plugins: Iterable[object] = ()
) -> PluginManager:
    """A plugin manager with userplane's hookspecs and every ``userplane`` entry point loaded.

    Names in ``disabled`` are blocked before discovery, so those plugins are
    never imported. ``extra_plugins`` are registered too (tests, embedding).
    A plugin that cannot be imported, whose hook matches no specification
    (a misspelt name) or whose arguments do not fit its hook is left out and
    recorded in ``broken``: listing plugins and ``--help`` still work, and a
    ``Registry`` refuses to open.
    """
    pm = PluginManager()
    pm.add_hookspecs(hookspecs)
    pm.register(_CoreHooks(), name=CORE_PLUGIN_NAME)
    for name in disabled:
        pm.set_blocked(name)
    _load_entry_points(pm)
    for plugin in extra_plugins:
        # Passing an installed plugin again (a test's ``plugins=[module]``) is no error.
        if not pm.is_registered(plugin):
            _register(pm, plugin, None)
    _check_hooks(pm)
    return pm


@attrs.frozen
class PluginInfo:
    """What ``userplane plugins`` shows for one plugin."""

    name: str
    module: str
    hooks: tuple[str, ...]
    blocked: bool = False
    #: Why it did not load (``None`` when it did).
    broken: str | None = None
    #: The distribution that ships it, "name version", when it came from an entry point.
    distribution: str | None = None


def describe_plugins(pm: pluggy.PluginManager) -> list[PluginInfo]:
    """Every registered plugin with the hooks it implements, then the broken and blocked ones."""
    dists = getattr(pm, "distributions", {})
    infos = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None or name == CORE_PLUGIN_NAME:
            continue
        hooks = tuple(sorted(h.name for h in pm.get_hookcallers(plugin) or ()))
        module = getattr(plugin, "__name__", type(plugin).__module__)
        infos.append(
            PluginInfo(name=name, module=module, hooks=hooks, distribution=dists.get(name))
        )
    for broken in getattr(pm, "broken", ()):
        infos.append(
            PluginInfo(
                name=broken.name,
                module="",
                hooks=(),
                broken=broken.reason,
                distribution=dists.get(broken.name),
            )
        )
    for name, plugin in pm.list_name_plugin():
        if plugin is None and pm.is_blocked(name):
            infos.append(PluginInfo(name=name, module="", hooks=(), blocked=True))
    return sorted(infos, key=lambda i: (i.blocked, i.broken is not None, i.name))
