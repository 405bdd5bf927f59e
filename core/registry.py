"""The Registry: the one composition root, with an explicit lifetime.

Frontends build a ``Registry`` from ``Settings`` and take everything from it;
they never construct plugins or connections themselves.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from datetime import timedelta
from types import TracebackType
from urllib.parse import urlsplit

import pluggy

from userplane.auth import AuthService
from userplane.changes import ChangeRecorder
from userplane.errors import ConfigurationError, Unavailable, UserplaneError
from userplane.groups import GroupService
from userplane.hooks import Hooks
from userplane.idempotency import IdempotencyService
from userplane.plugin_manager import make_plugin_manager
from userplane.sealed_storage import SealedStorage
from userplane.sealing import Sealer
from userplane.services import ServiceCheck, Services
from userplane.settings import Settings
from userplane.storage import GroupStorage, MigrationState, Storage
from userplane.users import UserService, utcnow

_log = logging.getLogger("userplane.registry")


class Registry:
    """Settings, the plugin manager, the open storage, plugin services and the use-cases.

    Use as a context manager, or call ``close()``: it lets plugins flush
    (``userplane_shutdown``), closes their services and releases connections.
    A constructor that fails part-way closes what it had opened.
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
        broken = getattr(self.pm, "broken", ())
        if broken:
            raise broken[0].error()
        self.hooks = Hooks(self.pm)
        #: Per-registry plugin state (``userplane_register_services``).
        self.services = Services()
        self._closed = False
        self._storage: Storage | None = None
        self.hooks.startup(settings)
        keyring = self.hooks.encryption_keys(settings)
        storage = self.hooks.open_storage(settings)
        if storage is None:
            scheme = urlsplit(settings.database_url).scheme or "(none)"
            raise ConfigurationError(
                f"USERPLANE_DATABASE_URL: no storage plugin serves the {scheme!r} scheme "
                "(is its plugin installed and not disabled?)"
            )
        self._storage = storage
        if settings.database_replica_urls and getattr(storage, "read_replicas", None) is None:
            storage.close()
            raise ConfigurationError(
                f"USERPLANE_DATABASE_REPLICA_URLS: the {storage.name} storage has no read "
                "replicas (PostgreSQL has)"
            )
        try:
            self.hooks.register_services(self)
            self.hooks.storage_opened(storage, settings, self)
            self.auth = AuthService(self)
            #: What the services use: personal fields sealed when a keyring is configured.
            sealer = None if keyring is None else Sealer(keyring)
            self.sealed = SealedStorage(storage, sealer, utcnow)
            #: Records of changes, handed to plugins in each write's transaction.
            self.changes = ChangeRecorder(self, storage, self.sealed)
            self.users = UserService(
                self.sealed, self.hooks, registry=self, encrypted=keyring is not None
            )
            #: Groups, when the storage keeps them (``GroupStorage``).
            self.groups = GroupService(
                self.sealed if isinstance(storage, GroupStorage) else None, registry=self
            )
            self.idempotency = IdempotencyService(
                self.sealed,
                timedelta(seconds=settings.idempotency_ttl_s),
                utcnow,
                keyed=None if sealer is None else sealer.keyed_digests,
            )
        except BaseException:
            with contextlib.suppress(Exception):
                self.close()
            raise

    @property
    def encrypted(self) -> bool:
        """Whether personal data is sealed (a keyring is configured)."""
        return self.sealed.sealer is not None

    @property
    def storage(self) -> Storage:
        """The open storage, as its plugin made it (values in their stored form)."""
        assert self._storage is not None
        return self._storage

    @classmethod
    def from_env(cls) -> Registry:
        """A registry for the settings in the environment and ``.env``."""
        return cls(Settings.from_env())

    def check(self) -> list[ServiceCheck]:
        """Ping storage and every plugin service; one check each, failures included."""
        try:
            self.storage.ping()
        except Unavailable as exc:
            storage = ServiceCheck("storage", exc.detail, exc.public_detail)
            return [storage, *self.services.ping()]
        try:
            # The keyring still fits the database (or there is none over sealed data).
            self.sealed.verify()
        except UserplaneError as exc:
            encryption = ServiceCheck("encryption", exc.detail)
        else:
            encryption = ServiceCheck("encryption")
        return [ServiceCheck("storage"), encryption, *self.services.ping()]

    def ping(self) -> None:
        """Check every dependency answers; raises ``Unavailable`` naming the first that does not."""
        for check in self.check():
            if not check.ok:
                raise check.unavailable()

    def migrate(self) -> list[str]:
        """Apply the core's and every plugin's pending migrations; their ids."""
        return self.storage.migrate(self.hooks.migrations())

    def migration_status(self) -> list[MigrationState]:
        """Every migration, the core's and the plugins', and whether it is applied."""
        return list(self.storage.migration_status(self.hooks.migrations()))

    def close(self) -> None:
        """Tell plugins, close their services, then storage; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self.hooks.shutdown(self)
        finally:
            try:
                for error in self.services.close():
                    _log.error("a service failed to close: %s: %s", type(error).__name__, error)
            finally:
                if self._storage is not None:
                    self._storage.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
