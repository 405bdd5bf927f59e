"""The webhooks plugin: signed deliveries of userplane's changes, from a transactional outbox.

Subscriptions (a URL, event types, a secret) are managed over HTTP
(``/api/v1/webhooks``, action ``webhooks:manage``) and with ``userplane
webhooks …``. Every change a subscription asks for writes one outbox row in
the change's own transaction (``userplane_record_changes``): no change
without its deliveries, no delivery without its change. In each serving
process a dispatcher (``dispatcher``) claims due deliveries in batches, in
order per user, and sends each subscription's batch over one kept-alive
connection, signed by the Standard Webhooks specification (``sender``), to
public addresses only (``addresses``), retrying with
exponential backoff and full jitter until ``MAX_ATTEMPTS``, then dead
(visible, and redeliverable). Settings: ``USERPLANE_WEBHOOKS_*``. See
``docs/webhooks.md``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs

from userplane.plugin import (
    Change,
    ConfigurationError,
    Settings,
    SettingsSection,
    UserplaneError,
    hookimpl,
    section,
)

if TYPE_CHECKING:
    import click

    from userplane.plugin import Registry
    from userplane.plugins.webhooks.addresses import Resolver
    from userplane.plugins.webhooks.dispatcher import Dispatcher
    from userplane.plugins.webhooks.store import WebhookStore
    from userplane.plugins.webhooks.subscriptions import WebhookService
    from userplane.sql import SQLStorage

_MIGRATIONS = Path(__file__).parent / "migrations"
PREFIX: Final = "WEBHOOKS_"
#: The action every webhook route and command needs.
MANAGE: Final = "webhooks:manage"
#: How long a subscription's host may take to resolve when it is made.
RESOLVE_TIMEOUT_S: Final = 5.0


def _between(low: float, high: float) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def validate(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not low <= value <= high:
            name = f"USERPLANE_{PREFIX}{attribute.name.upper()}"
            raise ValueError(f"{name}: must be between {low:g} and {high:g}")

    return validate


@attrs.frozen
class WebhookSettings:
    """This plugin's settings, from ``USERPLANE_WEBHOOKS_*``."""

    #: How often a dispatcher looks for due deliveries when no change woke it.
    poll_seconds: float = attrs.field(default=1.0, validator=_between(0.01, 3600))
    #: Attempts before a delivery is dead (then only a redeliver sends it again).
    max_attempts: int = attrs.field(default=8, validator=_between(1, 100))
    #: The first retry's longest wait; each further one doubles it, up to the cap.
    backoff_base_seconds: float = attrs.field(default=5.0, validator=_between(0.001, 86400))
    backoff_cap_seconds: float = attrs.field(default=3600.0, validator=_between(0.001, 604800))
    #: The whole of one send: resolving, connecting, sending and reading the answer.
    timeout_seconds: float = attrs.field(default=10.0, validator=_between(0.1, 300))
    #: How long a claim holds a delivery: longer than a send, so none is sent twice at once.
    lease_seconds: float = attrs.field(default=60.0, validator=_between(0.2, 86400))
    #: The most of a receiver's answer that is read.
    max_response_bytes: int = attrs.field(default=65536, validator=_between(0, 16 * 2**20))
    #: Allow URLs that resolve to loopback, private, link-local or other non-public addresses.
    allow_private: bool = False
    #: Sender threads per process: how many batches (receivers) are sent to at once.
    senders: int = attrs.field(default=4, validator=_between(1, 64))
    #: The most deliveries one claim takes; each subscription's share is one batch,
    #: sent in order over one kept-alive connection.
    batch_size: int = attrs.field(default=100, validator=_between(1, 1000))
    #: After a commit (or a finished batch) wakes the dispatcher, how long it waits so
    #: that what commits meanwhile joins the same claim (0: claim at once).
    linger_seconds: float = attrs.field(default=0.05, validator=_between(0, 5))
    #: While the process is busy serving requests on a saturated machine, the most of
    #: one processor its dispatcher may use (1: no bound); otherwise it sends at full speed.
    busy_share: float = attrs.field(default=0.02, validator=_between(0.001, 1))

    def __attrs_post_init__(self) -> None:
        if self.lease_seconds <= self.timeout_seconds:
            raise ValueError(
                f"USERPLANE_{PREFIX}LEASE_SECONDS ({self.lease_seconds:g}) must exceed "
                f"USERPLANE_{PREFIX}TIMEOUT_SECONDS ({self.timeout_seconds:g}): a send must "
                "end before its claim does, or a second dispatcher sends it too"
            )


SETTINGS = SettingsSection(PREFIX, WebhookSettings)


def settings_of(settings: Settings) -> WebhookSettings:
    """This plugin's settings; ``ConfigurationError`` naming the variable at fault."""
    return section(WebhookSettings, settings, PREFIX)


class Webhooks:
    """This plugin's state in one registry: the store, management, and the dispatcher."""

    def __init__(
        self, registry: Registry, storage: SQLStorage, resolver: Resolver | None = None
    ) -> None:
        import userplane
        from userplane.plugin import utcnow
        from userplane.plugins.webhooks.addresses import system_resolver
        from userplane.plugins.webhooks.dispatcher import Backoff, Dispatcher
        from userplane.plugins.webhooks.sender import SendLimits
        from userplane.plugins.webhooks.store import WebhookStore
        from userplane.plugins.webhooks.subscriptions import WebhookService

        own = settings_of(registry.settings)
        self.settings = own
        self.resolver: Resolver = resolver or system_resolver
        self.store: WebhookStore = WebhookStore(storage)
        # The recorder is made after the plugins' services: asked for when a write needs it.
        self.service: WebhookService = WebhookService(
            self.store,
            lambda: registry.changes,
            allow_private=own.allow_private,
            resolver=lambda host, port: self.resolver(host, port),
            resolve_timeout_s=min(RESOLVE_TIMEOUT_S, own.timeout_seconds),
        )
        self.counter: Any = None
        self.dispatcher: Dispatcher = Dispatcher(
            self.store,
            limits=SendLimits(
                timeout_s=own.timeout_seconds,
                max_response_bytes=own.max_response_bytes,
                allow_private=own.allow_private,
                user_agent=f"userplane-webhooks/{userplane.__version__}",
            ),
            backoff=Backoff(own.backoff_base_seconds, own.backoff_cap_seconds, own.max_attempts),
            lease_s=own.lease_seconds,
            poll_s=own.poll_seconds,
            senders=own.senders,
            resolver=lambda host, port: self.resolver(host, port),
            clock=utcnow,
            count=self._count,
            batch_size=own.batch_size,
            linger_s=own.linger_seconds,
            busy_share=own.busy_share,
        )
        self.serving = False
        #: Whether this thread's transaction wrote deliveries: only then does its commit
        #: wake the dispatcher (a claim per commit would cost every write a statement).
        self.wrote = threading.local()

    def _count(self, outcome: str) -> None:
        if self.counter is not None:
            self.counter.add(1, {"outcome": outcome})

    def close(self) -> None:
        """Stop the dispatcher, if this process runs one."""
        if self.serving:
            self.serving = False
            self.dispatcher.stop(self.settings.timeout_seconds + 1)


def state_of(registry: Registry) -> Webhooks:
    """This plugin's state in ``registry`` (``ConfigurationError`` on a storage without it)."""
    if Webhooks not in registry.services:
        raise ConfigurationError(
            f"webhooks are not available on the {registry.storage.name} storage: the webhooks "
            "plugin has statements for SQLite and PostgreSQL only"
        )
    return registry.services.get(Webhooks)


def service(registry: Registry) -> WebhookService:
    """Subscription management over ``registry``'s storage."""
    return state_of(registry).service


@hookimpl
def userplane_settings_sections() -> SettingsSection:
    """``USERPLANE_WEBHOOKS_*``."""
    return SETTINGS


@hookimpl
def userplane_startup(settings: Settings) -> None:
    """Fail at start-up, naming the variable, on a bad setting."""
    settings_of(settings)


@hookimpl
def userplane_migrations() -> dict[str, Path]:
    """``webhook_subscriptions`` and ``webhook_deliveries``, for each dialect."""
    return {d.name: d for d in _MIGRATIONS.iterdir() if d.is_dir()}


@hookimpl
def userplane_register_services(registry: Registry) -> None:
    """The store, management and dispatcher, on a SQL storage whose dialect we speak.

    On another storage (or dialect) the plugin stays out of the way: writes
    record nothing (no subscription can exist) and management says why.
    """
    from userplane.plugins.webhooks.store import DIALECTS
    from userplane.sql import SQLStorage

    storage = registry.storage
    if not isinstance(storage, SQLStorage) or storage.dialect.name not in DIALECTS:
        return
    registry.services.register(
        Webhooks,
        lambda: Webhooks(registry, storage),
        ping=lambda state: state.store.ping(),
        close=Webhooks.close,
        name="webhooks",
    )


@hookimpl
def userplane_record_changes(changes: Sequence[Change], registry: Registry) -> None:
    """One outbox row per live subscription to each change's action, in their transaction.

    A single change is one ``INSERT … SELECT`` whose row count nobody waits
    for: a store that pipelines sends it with the transaction's ``COMMIT``.
    Whether to wake the dispatcher is then the store's ``live_hint``. A batch
    (an import) checks first that anything subscribes, then sends its
    statements as one batch.
    """
    if Webhooks not in registry.services:
        return
    from userplane.plugin import utcnow
    from userplane.plugins.webhooks.events import ordering_key, payload

    state = registry.services.get(Webhooks)
    now = utcnow()
    if len(changes) == 1:
        change = changes[0]
        state.store.record_changes([(change.action, ordering_key(change), payload(change, now))])
        wrote = state.store.live_hint(change.action)
    elif state.store.any_live_subscription():
        state.store.record_changes([(c.action, ordering_key(c), payload(c, now)) for c in changes])
        wrote = True  # most likely: the dispatcher finds out, at the cost of one claim
    else:
        wrote = False
    if wrote:
        state.wrote.any = True


@hookimpl
def userplane_changes_committed(changes: Sequence[Change], registry: Registry) -> None:
    """Wake this process's dispatcher when what just committed wrote deliveries."""
    if Webhooks in registry.services:
        state = registry.services.get(Webhooks)
        if getattr(state.wrote, "any", False):
            state.wrote.any = False
            if state.serving:
                state.dispatcher.wake()


@hookimpl
def userplane_serving(registry: Registry) -> None:
    """Start this process's dispatcher."""
    if Webhooks in registry.services:
        state = registry.services.get(Webhooks)
        if not state.serving:
            state.serving = True
            state.dispatcher.start()


@hookimpl
def userplane_shutdown(registry: Registry) -> None:
    """Stop the dispatcher (sends in flight get until their deadline) and join it."""
    if Webhooks in registry.services:
        registry.services.get(Webhooks).close()


@hookimpl
def userplane_instruments(meter: Any, registry: Registry) -> None:
    """Deliveries by outcome; queue depth and age."""
    if Webhooks in registry.services:
        from userplane.plugins.webhooks.metrics import instrument

        instrument(meter, registry.services.get(Webhooks))


@hookimpl
def userplane_http_routes(app: Any, registry: Registry) -> None:
    """``/api/v1/webhooks…``."""
    if Webhooks in registry.services:
        from userplane.plugins.webhooks.resources import add_routes

        add_routes(app, registry.services.get(Webhooks).service)


@hookimpl
def userplane_console(console: Any, registry: Registry) -> None:
    """Webhook pages in the web console: subscribe (the secret shown once), deliveries."""
    if Webhooks in registry.services:
        from userplane.plugins.webhooks.console import add_pages

        add_pages(console, registry.services.get(Webhooks).service)


@hookimpl
def userplane_openapi(document: dict[str, Any], registry: Registry) -> None:
    """The webhook routes and schemas."""
    if Webhooks in registry.services:
        from userplane.plugins.webhooks.openapi import add_paths

        add_paths(document)


@hookimpl
def userplane_describe(registry: Registry | None) -> dict[str, str]:
    """How many subscriptions receive events, and where the settings say they may go."""
    if registry is None or Webhooks not in registry.services:
        return {}
    try:
        subs = service(registry).list()
    except UserplaneError:  # describing never stops a start-up: an unmigrated table says so later
        return {}
    private = " (private addresses allowed)" if state_of(registry).settings.allow_private else ""
    return {"webhooks": f"{len(subs)} subscription(s){private}"}


@hookimpl
def userplane_cli_commands(cli: click.Group) -> None:
    """``userplane webhooks …``."""
    from userplane.plugins.webhooks.commands import add_commands

    add_commands(cli)
