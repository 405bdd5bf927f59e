"""The Registry: the one composition root, with an explicit lifetime.

Frontends build a ``Registry`` from ``Settings`` and take everything from it;
they never construct plugins or connections themselves.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from types import TracebackType
from urllib.parse import urlsplit

import pluggy

from userplane.auth import AuthService
from userplane.errors import ConfigurationError
from userplane.idempotency import IdempotencyService
from userplane.plugin_manager import make_plugin_manager
from userplane.settings import Settings
from userplane.storage import Storage
from userplane.users import UserService, utcnow


class Registry:
    """Settings, the plugin manager, the open storage and the services, for one process.

    Use as a context manager, or call ``close()``: it releases connections
    and lets plugins flush (``userplane_shutdown``).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        plugins: Iterable[object] = (),
        plugin_manager: pluggy.PluginManager | None = None,
    ) -> None:
        self.settings = settings
        self.pm = plugin_manager or make_plugin_manager(settings.disabled_plugins, plugins)
        self.hook = self.pm.hook
        self.hook.userplane_startup.call_historic(kwargs={"settings": settings})
        storage = self.hook.userplane_open_storage(settings=settings)
        if storage is None:
            scheme = urlsplit(settings.database_url).scheme or "(none)"
            raise ConfigurationError(
                f"USERPLANE_DATABASE_URL: no storage plugin serves the {scheme!r} scheme "
                "(is its plugin installed and not disabled?)"
            )
        self.storage: Storage = storage
        try:
            self.hook.userplane_storage_opened(storage=storage, settings=settings)
        except BaseException:
            storage.close()
            raise
        self.users = UserService(storage, self.hook)
        self.auth = AuthService(self, settings)
        self.idempotency = IdempotencyService(
            storage, timedelta(seconds=settings.idempotency_ttl_s), utcnow
        )
        self._closed = False

    @classmethod
    def from_env(cls) -> Registry:
        """A registry for the settings in the environment and ``.env``."""
        return cls(Settings.from_env())

    def ping(self) -> None:
        """Check every dependency answers; raises ``Unavailable`` otherwise."""
        self.storage.ping()

    def close(self) -> None:
        """Close storage and tell plugins to shut down; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self.storage.close()
        finally:
            self.hook.userplane_shutdown()

    def __enter__(self) -> Registry:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
