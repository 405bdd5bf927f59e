"""``userplane webhooks create|list|delete|deliveries|redeliver``."""

from __future__ import annotations

import uuid
from typing import Any

import click

from userplane.frontends.cli import OperationGroup, State, emit, format_option, pass_state
from userplane.plugins.webhooks import service
from userplane.plugins.webhooks.records import STATUSES

_SUBSCRIPTION_COLUMNS = ("id", "url", "events", "description", "created_at")
_DELIVERY_COLUMNS = (
    "id",
    "subscription_id",
    "type",
    "status",
    "attempts",
    "last_status",
    "last_error",
    "created_at",
    "delivered_at",
)


def _deliveries(rows: list[dict[str, Any]], fmt: str) -> None:
    emit(rows, fmt, _DELIVERY_COLUMNS)


def add_commands(cli: click.Group) -> None:
    """Add the ``webhooks`` group to ``cli``."""

    @cli.group(cls=OperationGroup)
    def webhooks() -> None:
        """Subscribe URLs to changes; see and redeliver what was sent."""

    @webhooks.command()
    @click.option("--url", required=True, help="Where to POST events (http or https).")
    @click.option(
        "--event",
        "events",
        multiple=True,
        required=True,
        help="An event type (user.created …), or '*' for all; repeat for more.",
    )
    @click.option("--description", default="", help="What it is for (shown in listings).")
    @format_option
    @pass_state
    def create(state: State, url: str, events: tuple[str, ...], description: str, fmt: str) -> None:
        """Subscribe URL and print its signing secret, once: it is not shown again."""
        sub = service(state.registry).create(
            {"url": url, "events": list(events), "description": description}
        )
        if fmt == "json":
            emit([{**sub.public(), "secret": sub.secret}], fmt, _SUBSCRIPTION_COLUMNS)
            return
        click.echo(sub.secret)
        click.echo(
            f"Webhook {sub.id} created for {', '.join(sub.events)}. Keep the secret now: "
            "receivers verify signatures with it, and it is not shown again.",
            err=True,
        )

    @webhooks.command("list")
    @format_option
    @pass_state
    def list_(state: State, fmt: str) -> None:
        """Every subscription (never its secret)."""
        emit([s.public() for s in service(state.registry).list()], fmt, _SUBSCRIPTION_COLUMNS)

    @webhooks.command()
    @click.argument("webhook_id", type=click.UUID)
    @pass_state
    def delete(state: State, webhook_id: uuid.UUID) -> None:
        """Delete a subscription: nothing more is sent to it, its pending deliveries go dead."""
        service(state.registry).delete(webhook_id)
        click.echo(f"Webhook {webhook_id} deleted.", err=True)

    @webhooks.command()
    @click.option("--subscription", type=click.UUID, default=None, help="Only this subscription's.")
    @click.option("--status", type=click.Choice(STATUSES), default=None, help="Only these.")
    @click.option(
        "--limit", type=click.IntRange(1, 200), default=50, show_default=True, help="How many."
    )
    @format_option
    @pass_state
    def deliveries(
        state: State, subscription: uuid.UUID | None, status: str | None, limit: int, fmt: str
    ) -> None:
        """Deliveries, newest first: what was sent, what waits, what is dead."""
        page = service(state.registry).deliveries(subscription, status, None, limit)
        _deliveries([d.public() for d in page.items], fmt)

    @webhooks.command()
    @click.argument("delivery_id", type=click.UUID)
    @format_option
    @pass_state
    def redeliver(state: State, delivery_id: uuid.UUID, fmt: str) -> None:
        """Send a dead or delivered delivery again: attempts reset, due now."""
        _deliveries([service(state.registry).redeliver(delivery_id).public()], fmt)
