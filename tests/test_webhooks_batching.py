"""Batched delivery: one claim for many deliveries, one kept-alive connection per
subscription's batch, outcomes recorded together, and a lease that covers the batch.

On both backends (``database_url``), with the local receiver of
``test_webhooks_receiver``; the dispatcher runs here (``run_once``) unless a
test says otherwise.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from typing import Any

import pytest
from test_webhooks import (
    MakeRegistry,
    Resolver,
    make_registry,
    outbox,
    receiver,
    subscribe,
    unique_email,
)
from test_webhooks_receiver import Received, Receiver, answer

from userplane import NewUser, Registry, Settings, UserChanges
from userplane.errors import ConfigurationError
from userplane.plugins import webhooks
from userplane.plugins.webhooks import dispatcher as dispatching
from userplane.plugins.webhooks.dispatcher import DELIVERED, RELEASED
from userplane.plugins.webhooks.sender import Channel, SendLimits, Watchdog

__all__ = ["make_registry", "receiver"]  # the fixtures, shared with test_webhooks


def create_users(registry: Registry, n: int) -> list[Any]:
    return [registry.users.create(NewUser(unique_email())) for _ in range(n)]


def claimed_by(registry: Registry) -> list[tuple[str | None, int]]:
    storage: Any = registry.storage
    rows = storage.fetch_all(
        storage.dialect.compile(
            "SELECT claimed_by, attempts FROM webhook_deliveries WHERE status = 'pending' "
            "ORDER BY seq"
        ),
        {},
    )
    return [(r[0], int(r[1])) for r in rows]


def test_one_claim_sends_a_batch_in_order_over_one_connection(
    make_registry: MakeRegistry, receiver: Receiver
) -> None:
    registry = make_registry()
    sub = subscribe(registry, receiver.url(), "user.created")
    users = create_users(registry, 12)
    dispatcher = webhooks.state_of(registry).dispatcher
    assert dispatcher.run_once() == [DELIVERED] * 12
    assert dispatcher.claims == 1
    assert receiver.connections == 1  # kept alive for the whole batch
    seen = receiver.wait_for(12)
    # Outbox order within the batch: the users in the order they were made.
    assert [s.verify(sub.secret)["data"]["id"] for s in seen] == [str(u.id) for u in users]
    assert {d.status for d in outbox(registry)} == {"delivered"}
    assert {d.last_status for d in outbox(registry)} == {200}


def test_a_claim_takes_at_most_the_batch_size(
    make_registry: MakeRegistry, receiver: Receiver
) -> None:
    registry = make_registry(batch_size=5)
    subscribe(registry, receiver.url(), "user.created")
    create_users(registry, 12)
    dispatcher = webhooks.state_of(registry).dispatcher
    assert [len(dispatcher.run_once()) for _ in range(4)] == [5, 5, 2, 0]


def test_each_subscription_is_a_batch_of_its_own(
    make_registry: MakeRegistry, receiver: Receiver
) -> None:
    registry = make_registry()
    first = subscribe(registry, receiver.url("/first"), "user.created")
    second = subscribe(registry, receiver.url("/second"), "user.created")
    create_users(registry, 3)
    dispatcher = webhooks.state_of(registry).dispatcher
    batches = dispatcher.claim_batches(100)
    assert sorted(b.subscription.id for b in batches if b.subscription) == sorted(
        [first.id, second.id]
    )
    assert all(len(b.items) == 3 for b in batches)
    assert all([c.seq for c in b.items] == sorted(c.seq for c in b.items) for b in batches)
    for batch in batches:
        assert dispatcher.send_batch(batch) == [DELIVERED] * 3
    assert receiver.connections == 2  # one per subscription's batch
    assert len(receiver.wait_for(6)) == 6


def test_a_users_events_stay_in_order_across_batches(
    make_registry: MakeRegistry, receiver: Receiver
) -> None:
    registry = make_registry()
    sub = subscribe(registry, receiver.url(), "user.created", "user.updated")
    user = registry.users.create(NewUser(unique_email()))
    for i in range(3):
        user = registry.users.update(user.id, UserChanges(full_name=f"N{i}"))
    dispatcher = webhooks.state_of(registry).dispatcher
    # Only the head of a user's events is claimed: one per round, in order.
    rounds = [dispatcher.run_once() for _ in range(5)]
    assert rounds == [[DELIVERED]] * 4 + [[]]
    seen = receiver.wait_for(4)
    assert [s.verify(sub.secret)["type"] for s in seen] == ["user.created"] + ["user.updated"] * 3
    assert [json.loads(s.body)["data"]["version"] for s in seen] == [1, 2, 3, 4]


def test_deliveries_that_arrived_are_recorded_with_one_statement(
    make_registry: MakeRegistry, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = make_registry()
    subscribe(registry, receiver.url(), "user.created")
    create_users(registry, 6)
    store = webhooks.state_of(registry).store
    calls: list[int] = []
    original = store.mark_delivered_many

    def counted(ids: Any, status: int) -> int:
        ids = list(ids)
        calls.append(len(ids))
        return original(ids, status)

    monkeypatch.setattr(store, "mark_delivered_many", counted)
    assert webhooks.state_of(registry).dispatcher.run_once() == [DELIVERED] * 6
    assert calls == [6]
    assert [d.status for d in outbox(registry)] == ["delivered"] * 6


def test_outcomes_are_recorded_by_status_and_failures_one_by_one(
    make_registry: MakeRegistry, receiver: Receiver
) -> None:
    registry = make_registry()
    subscribe(registry, receiver.url(), "user.created")
    create_users(registry, 4)
    answers = iter([200, 500, 204, 200])
    receiver.respond = lambda handler, _: answer(
        handler, status := next(answers), b"" if status == 204 else b"ok"
    )
    outcomes = webhooks.state_of(registry).dispatcher.run_once()
    assert outcomes == ["delivered", "failed", "delivered", "delivered"]
    oldest_first = outbox(registry)[::-1]
    assert [(d.status, d.last_status, d.attempts) for d in oldest_first] == [
        ("delivered", 200, 1),
        ("pending", 500, 1),
        ("delivered", 204, 1),
        ("delivered", 200, 1),
    ]
    assert receiver.connections == 1  # an HTTP error answer does not cost the connection


def test_a_connection_the_receiver_closes_is_made_again(
    make_registry: MakeRegistry, receiver: Receiver
) -> None:
    def close_after(handler: http.server.BaseHTTPRequestHandler, _: Received) -> None:
        answer(handler, 200)
        handler.close_connection = True  # silently: no Connection: close header

    receiver.respond = close_after
    registry = make_registry()
    subscribe(registry, receiver.url(), "user.created")
    create_users(registry, 3)
    assert webhooks.state_of(registry).dispatcher.run_once() == [DELIVERED] * 3
    assert len(receiver.wait_for(3)) == 3
    assert receiver.connections == 3


def test_what_a_bad_answer_leaves_on_a_connection_does_not_fail_the_next(
    make_registry: MakeRegistry, receiver: Receiver
) -> None:
    # A body after a 204 (which has none): the bytes are still there at the next answer.
    receiver.respond = lambda handler, _: answer(handler, 204, b"stray")
    registry = make_registry()
    subscribe(registry, receiver.url(), "user.created")
    create_users(registry, 3)
    assert webhooks.state_of(registry).dispatcher.run_once() == [DELIVERED] * 3
    # A delivery that met the stray bytes was sent again on a new connection.
    seen = receiver.wait_for(3)
    assert {s.webhook_id for s in seen} == {str(d.id) for d in outbox(registry)}
    assert len(seen) - 3 == receiver.connections - 1


def test_a_connection_closing_answer_is_honoured(
    make_registry: MakeRegistry, receiver: Receiver
) -> None:
    def last_word(handler: http.server.BaseHTTPRequestHandler, _: Received) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "0")
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.close_connection = True

    receiver.respond = last_word
    registry = make_registry()
    subscribe(registry, receiver.url(), "user.created")
    create_users(registry, 3)
    assert webhooks.state_of(registry).dispatcher.run_once() == [DELIVERED] * 3
    assert receiver.connections == 3


def test_an_answer_longer_than_the_limit_closes_the_connection(
    make_registry: MakeRegistry, receiver: Receiver
) -> None:
    receiver.respond = lambda handler, _: answer(handler, 200, b"x" * 5000)
    registry = make_registry(max_response_bytes=100)
    subscribe(registry, receiver.url(), "user.created")
    create_users(registry, 3)
    assert webhooks.state_of(registry).dispatcher.run_once() == [DELIVERED] * 3
    assert receiver.connections == 3  # unread answers are never left on a reused one


def test_the_host_is_checked_per_connection_not_per_delivery(
    make_registry: MakeRegistry, receiver: Receiver
) -> None:
    resolver = Resolver()
    resolver.names["hooks.example"] = ["127.0.0.1"]
    registry = make_registry(resolver)
    subscribe(registry, receiver.url(host="hooks.example"), "user.created")
    resolver.asked.clear()
    create_users(registry, 5)
    assert webhooks.state_of(registry).dispatcher.run_once() == [DELIVERED] * 5
    assert resolver.asked == ["hooks.example"]
    assert {r.headers["host"] for r in receiver.wait_for(5)} == {f"hooks.example:{receiver.port}"}
    # The next batch connects anew, and checks anew: a changed answer is refused.
    resolver.names["hooks.example"] = ["10.0.0.1"]
    registry2 = make_registry(resolver, allow_private=False)
    create_users(registry2, 2)
    assert webhooks.state_of(registry2).dispatcher.run_once() == ["failed", "failed"]
    assert "refused" in (outbox(registry2)[0].last_error or "")


def test_a_kept_alive_send_keeps_its_deadline(receiver: Receiver) -> None:
    release = threading.Event()
    answers = iter(["ok", "stall", "ok"])

    def respond(handler: http.server.BaseHTTPRequestHandler, _: Received) -> None:
        if next(answers) == "stall":
            release.wait(10)
        answer(handler, 200)

    receiver.respond = respond
    limits = SendLimits(
        timeout_s=0.5, max_response_bytes=1024, allow_private=True, user_agent="test"
    )
    watchdog = Watchdog()
    try:
        with Channel(receiver.url(), limits, lambda h, p: [], watchdog) as channel:
            assert channel.send(b"{}", {}).ok
            started = time.monotonic()
            late = channel.send(b"{}", {})
            assert (late.ok, late.error) == (False, "timed out after 0.5s")
            assert time.monotonic() - started < 2
            release.set()
            assert channel.send(b"{}", {}).ok  # on a new connection: the cut one is closed
            assert channel.connections == 2
    finally:
        release.set()
        watchdog.stop()


def test_a_batch_sends_only_what_its_lease_has_room_for(
    make_registry: MakeRegistry, receiver: Receiver
) -> None:
    def slow(handler: http.server.BaseHTTPRequestHandler, _: Received) -> None:
        time.sleep(0.4)
        answer(handler, 200)

    receiver.respond = slow
    # A send may take 0.5 s; the lease is 1.2 s: room for the first send only, since a
    # send must end, and be recorded, before the lease does.
    registry = make_registry(timeout_seconds=0.5, lease_seconds=1.2)
    subscribe(registry, receiver.url(), "user.created")
    create_users(registry, 4)
    dispatcher = webhooks.state_of(registry).dispatcher
    assert dispatcher.run_once() == [DELIVERED, RELEASED, RELEASED, RELEASED]
    # Released: pending, nobody's, no attempt counted, and claimable at once.
    assert claimed_by(registry) == [(None, 0)] * 3
    assert len(webhooks.state_of(registry).store.claim("other", 10, 60)) == 3


def test_stopping_releases_what_no_sender_took(
    make_registry: MakeRegistry, receiver: Receiver
) -> None:
    registry = make_registry()
    subscribe(registry, receiver.url(), "user.created")
    create_users(registry, 3)
    dispatcher = webhooks.state_of(registry).dispatcher
    batches = dispatcher.claim_batches(100)
    assert claimed_by(registry) == [(dispatcher.worker, 0)] * 3
    for batch in batches:
        dispatcher._work.put(batch)  # queued, as if every sender were busy
    dispatcher.stop(1)
    assert claimed_by(registry) == [(None, 0)] * 3


def test_a_serving_dispatcher_batches_a_burst(
    make_registry: MakeRegistry, receiver: Receiver
) -> None:
    registry = make_registry(poll_seconds=60, linger_seconds=0.2)
    subscribe(registry, receiver.url(), "user.created")
    registry.hooks.serving(registry)
    try:
        dispatcher = webhooks.state_of(registry).dispatcher
        time.sleep(0.1)  # its first look found nothing
        before = dispatcher.claims
        create_users(registry, 10)  # ten commits within the linger: one claim
        receiver.wait_for(10)
        assert dispatcher.claims - before <= 3
        assert receiver.connections <= 3
    finally:
        registry.close()


def test_a_busy_process_holds_its_dispatcher_to_its_share(
    make_registry: MakeRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Where the machine's load is unknown, the process's own decides.
    monkeypatch.setattr(dispatching, "machine_times", lambda: None)
    registry = make_registry(busy_share=0.01)
    dispatcher = webhooks.state_of(registry).dispatcher
    dispatcher._machine = None
    dispatcher._throttle()  # idle: never waits
    assert not dispatcher.busy
    # Busy serving, and a batch used 5 ms more than the share had left: 0.5 s to pay.
    burn = time.process_time() + 0.2
    while time.process_time() < burn:
        pass
    dispatcher._window = (time.monotonic() - 0.5, dispatcher._window[1], dispatcher._window[2])
    with dispatcher._lock:
        dispatcher._tokens = -0.005
        dispatcher._refilled = time.monotonic()
    started = time.monotonic()
    dispatcher._throttle()
    assert 0.4 < time.monotonic() - started < 2
    assert not dispatcher.busy  # it waited: idle since, it claims at once again


def test_the_dispatcher_does_not_hold_back_an_idle_process(make_registry: MakeRegistry) -> None:
    registry = make_registry(busy_share=0.01)
    dispatcher = webhooks.state_of(registry).dispatcher
    time.sleep(0.6)  # a window in which the process did nothing
    with dispatcher._lock:
        dispatcher._tokens = -1.0  # deep in debt: no matter, nobody else needs the processor
    started = time.monotonic()
    dispatcher._throttle()
    assert not dispatcher.busy
    assert time.monotonic() - started < 0.1


def test_a_busy_process_on_a_machine_with_processors_to_spare_is_not_held_back(
    make_registry: MakeRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dispatching, "machine_times", lambda: (180.0, 300.0))
    registry = make_registry(busy_share=0.01)
    dispatcher = webhooks.state_of(registry).dispatcher
    dispatcher._machine = (100.0, 200.0)  # 80 % idle since
    burn = time.process_time() + 0.2
    while time.process_time() < burn:
        pass
    dispatcher._window = (time.monotonic() - 0.5, dispatcher._window[1], dispatcher._window[2])
    with dispatcher._lock:
        dispatcher._tokens = -1.0
    started = time.monotonic()
    dispatcher._throttle()
    assert not dispatcher.busy
    assert time.monotonic() - started < 0.1


def test_saturation_is_read_from_the_machines_idle_time() -> None:
    assert dispatching._saturated((100, 200), (105, 300))  # 5 % idle
    assert not dispatching._saturated((100, 200), (150, 300))  # 50 % idle
    assert dispatching._saturated(None, (150, 300))  # unknown: the process decides
    times = dispatching.machine_times()
    assert times is None or 0 <= times[0] <= times[1]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("USERPLANE_WEBHOOKS_BATCH_SIZE", "0"),
        ("USERPLANE_WEBHOOKS_BATCH_SIZE", "1001"),
        ("USERPLANE_WEBHOOKS_LINGER_SECONDS", "-1"),
        ("USERPLANE_WEBHOOKS_LINGER_SECONDS", "6"),
        ("USERPLANE_WEBHOOKS_BUSY_SHARE", "0"),
        ("USERPLANE_WEBHOOKS_BUSY_SHARE", "2"),
    ],
)
def test_batch_settings_are_checked(variable: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=variable):
        webhooks.settings_of(Settings.from_mapping({variable: value}))


def test_batch_settings_defaults() -> None:
    own = webhooks.settings_of(Settings.from_mapping({}))
    assert (own.batch_size, own.linger_seconds, own.busy_share) == (100, 0.05, 0.02)
