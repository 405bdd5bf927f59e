"""Per-registry plugin state: services registered by type, each with a ping and a close.

In the spirit of svcs: a plugin registers, in ``userplane_register_services``,
a factory for each thing it keeps per registry (a verifier, a key cache, a
tracer provider). The first ``get`` builds it; ``Registry.ping`` pings every
service that has a ping; ``Registry.close`` closes what was built, newest
first. Nothing per registry lives in module globals, so two registries in one
process never see each other's state.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar, cast

import attrs

from userplane.errors import ConfigurationError, Unavailable

T = TypeVar("T")
_log = logging.getLogger("userplane.services")
#: Marks a service not built yet (a service may be ``None``).
_MISSING: Any = object()


@attrs.frozen
class ServiceCheck:
    """The outcome of one health ping: ``error`` is ``None`` when it answered."""

    name: str
    error: str | None = None
    #: What a remote client may be told of ``error`` (``Unavailable.public_detail``).
    public_error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the ping answered."""
        return self.error is None

    def unavailable(self) -> Unavailable:
        """The failure as an error: storage speaks for itself, a plugin's service is named."""
        error = self.error or "did not answer"
        if self.name == "storage":
            return Unavailable(error, public_detail=self.public_error)
        return Unavailable(f"{self.name}: {error}")


@attrs.define
class _Entry(Generic[T]):
    name: str
    factory: Callable[[], T]
    ping: Callable[[T], None] | None
    close: Callable[[T], None] | None


class Services:
    """A registry's services, keyed by type."""

    def __init__(self) -> None:
        self._entries: dict[type[Any], _Entry[Any]] = {}
        self._built: dict[type[Any], Any] = {}
        self._order: list[type[Any]] = []
        self._lock = threading.RLock()
        self._closed = False

    def register(
        self,
        key: type[T],
        factory: Callable[[], T],
        *,
        ping: Callable[[T], None] | None = None,
        close: Callable[[T], None] | None = None,
        name: str | None = None,
    ) -> None:
        """Register ``factory`` for ``key``: called once, on the first ``get(key)``.

        ``ping(service)`` raises ``Unavailable`` when what it depends on does not
        answer; ``close(service)`` releases it when the registry closes.
        ``name`` is how health checks report it (default: the type's name).
        A key registered twice is a ``ConfigurationError``.
        """
        with self._lock:
            if key in self._entries:
                raise ConfigurationError(f"the service {key.__qualname__} is registered twice")
            self._entries[key] = _Entry(name or key.__name__, factory, ping, close)

    def register_value(
        self,
        key: type[T],
        value: T,
        *,
        ping: Callable[[T], None] | None = None,
        close: Callable[[T], None] | None = None,
        name: str | None = None,
    ) -> None:
        """Register an already built ``value`` for ``key``."""
        self.register(key, lambda: value, ping=ping, close=close, name=name)
        self.get(key)

    def __contains__(self, key: type[Any]) -> bool:
        return key in self._entries

    def get(self, key: type[T]) -> T:
        """The service for ``key``, built on first use; ``LookupError`` if none is registered."""
        built = self._built.get(key, _MISSING)  # one dict read: no lock on the hot path
        if built is not _MISSING:
            return cast(T, built)
        with self._lock:
            if key in self._built:
                return cast(T, self._built[key])
            if self._closed:
                raise RuntimeError("the registry is closed")
            entry = self._entries.get(key)
            if entry is None:
                raise LookupError(f"no service {key.__qualname__} is registered")
            value = entry.factory()
            self._built[key] = value
            self._order.append(key)
            return cast(T, value)

    def ping(self) -> list[ServiceCheck]:
        """Ping every service that has a ping (building it if need be); one check each."""
        from userplane.errors import UserplaneError

        checks = []
        for key, entry in list(self._entries.items()):
            if entry.ping is None:
                continue
            try:
                entry.ping(self.get(key))
            except UserplaneError as exc:
                checks.append(ServiceCheck(entry.name, exc.detail))
            except Exception as exc:  # a ping's bug is a failed check, not a 500
                _log.exception("the ping of service %s failed", entry.name)
                checks.append(ServiceCheck(entry.name, f"{type(exc).__name__}: {exc}"))
            else:
                checks.append(ServiceCheck(entry.name))
        return checks

    def close(self) -> list[BaseException]:
        """Close every built service, newest first; returns what their closes raised."""
        with self._lock:
            self._closed = True
            order, self._order = self._order, []
            built = self._built
        errors: list[BaseException] = []
        for key in reversed(order):
            entry = self._entries[key]
            if entry.close is not None:
                try:
                    entry.close(built[key])
                except Exception as exc:
                    errors.append(exc)
        built.clear()
        return errors
