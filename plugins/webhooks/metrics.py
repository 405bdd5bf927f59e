"""The webhooks plugin's OpenTelemetry metrics (only when telemetry is on).

- ``userplane.webhooks.deliveries``: attempts by ``outcome`` (``delivered``,
  ``failed``; a failure that gives up counts as ``failed`` and ``dead``);
- ``userplane.webhooks.queue.depth``: deliveries pending (gauge);
- ``userplane.webhooks.queue.age``: seconds the longest-due pending delivery
  has waited past its due time (gauge; 0 when none is due): a dispatcher
  that falls behind, or none running, shows here first.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from userplane.plugins.webhooks import Webhooks

_log = logging.getLogger("userplane.webhooks")


def instrument(meter: Any, state: Webhooks) -> None:
    """Make the counter and the gauges on ``meter`` for ``state``'s outbox."""
    from opentelemetry.metrics import CallbackOptions, Observation

    state.counter = meter.create_counter(
        "userplane.webhooks.deliveries",
        unit="{delivery}",
        description="Webhook delivery attempts, by outcome (delivered, failed, dead).",
    )

    def queue() -> tuple[int, float] | None:
        try:
            return state.store.queue()
        except Exception as exc:  # a metric read must never raise into the exporter
            _log.debug("the webhook queue could not be read for metrics: %s", exc)
            return None

    def depth(options: CallbackOptions) -> Iterable[Observation]:
        seen = queue()
        return [] if seen is None else [Observation(seen[0])]

    def age(options: CallbackOptions) -> Iterable[Observation]:
        seen = queue()
        return [] if seen is None else [Observation(seen[1])]

    meter.create_observable_gauge(
        "userplane.webhooks.queue.depth",
        callbacks=[depth],
        unit="{delivery}",
        description="Webhook deliveries pending (due now or waiting for a retry).",
    )
    meter.create_observable_gauge(
        "userplane.webhooks.queue.age",
        callbacks=[age],
        unit="s",
        description="Seconds the longest-due pending webhook delivery has waited.",
    )
