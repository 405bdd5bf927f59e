"""The webhooks plugin on a real database (SQLite and PostgreSQL): outbox, claims, sending.

Deliveries are written in the transaction of the change (so a failed write
leaves none), claimed by one dispatcher at a time and in order per user,
retried with backoff until dead, redelivered on request, signed so that
``standardwebhooks`` verifies them, and sent only where the SSRF rules
allow, to the address that was checked. The receiver is a local HTTP
server (``test_webhooks_receiver``), so these tests allow private addresses
unless they test that rule.
"""

from __future__ import annotations

import http.server
import ipaddress
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from clients import new_key
from falcon import testing
from test_webhooks_receiver import Received, Receiver, answer

from userplane import (
    Conflict,
    NewUser,
    PreconditionFailed,
    Registry,
    Settings,
    UserChanges,
    hookimpl,
)
from userplane.errors import ConfigurationError, InvalidInput, NotFound
from userplane.frontends.cli import cli
from userplane.frontends.http import create_app
from userplane.hooks import Hooks
from userplane.plugin_manager import make_plugin_manager
from userplane.plugins import webhooks
from userplane.plugins.webhooks.addresses import IPAddress, is_public
from userplane.plugins.webhooks.dispatcher import Backoff
from userplane.plugins.webhooks.records import Delivery

PROBLEM = "application/problem+json"


def unique_email(prefix: str = "hook") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}@example.org"


class Resolver:
    """A DNS of the test's own: names to addresses, changeable (rebinding), or failing."""

    def __init__(self) -> None:
        self.names: dict[str, list[str]] = {}
        self.asked: list[str] = []

    def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.asked.append(host)
        if host not in self.names:
            raise OSError(f"{host} does not resolve")
        return [ipaddress.ip_address(a) for a in self.names[host]]


MakeRegistry = Callable[..., Registry]


@pytest.fixture
def make_registry(database_url: str) -> Iterator[MakeRegistry]:
    """Registries over the test's database with the webhooks plugin; ``key=value`` sets
    ``USERPLANE_WEBHOOKS_<KEY>`` (private addresses are allowed unless said otherwise)."""
    made: list[Registry] = []

    def make(resolver: Resolver | None = None, **own: Any) -> Registry:
        values = {"allow_private": "true", "backoff_base_seconds": "0.001", **own}
        mapping = {f"USERPLANE_WEBHOOKS_{k.upper()}": str(v).lower() for k, v in values.items()}
        settings = Settings.from_mapping({"USERPLANE_DATABASE_URL": database_url, **mapping})
        registry = Registry(settings, plugins=[webhooks])
        made.append(registry)
        registry.migrate()
        if resolver is not None:
            webhooks.state_of(registry).resolver = resolver
        return registry

    yield make
    for registry in made:
        registry.close()


@pytest.fixture
def registry(make_registry: MakeRegistry) -> Registry:
    return make_registry()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def subscribe(registry: Registry, url: str, *events: str) -> webhooks.records.Subscription:
    return webhooks.service(registry).create({"url": url, "events": list(events or ("*",))})


def outbox(
    registry: Registry, subscription: Any = None, status: str | None = None
) -> list[Delivery]:
    """Every delivery (newest first), of one subscription or all, in one status or any."""
    sub_id = None if subscription is None else subscription.id
    page = webhooks.service(registry).deliveries(sub_id, status, None, 200)
    assert page.next is None
    return page.items


def run_until_settled(registry: Registry, rounds: int = 20) -> list[str | None]:
    """Claim and send (here, not in a thread) until nothing is due."""
    outcomes: list[str | None] = []
    dispatcher = webhooks.state_of(registry).dispatcher
    for _ in range(rounds):
        done = dispatcher.run_once()
        if not done:
            return outcomes
        outcomes += done
        time.sleep(0.01)  # retries are due after at most backoff_base_seconds
    return outcomes


def make_due(registry: Registry) -> None:
    """Time travel: every pending delivery's next attempt is due now."""
    storage: Any = registry.storage
    past = datetime.now(UTC) - timedelta(seconds=1)
    sql = storage.dialect.compile(
        "UPDATE webhook_deliveries SET next_attempt_at = :past WHERE status = 'pending'"
    )
    storage.execute(sql, storage.params({"past": past}))


# -- the outbox: one row per matching subscription, in the write's transaction ----------------


def test_a_change_writes_one_delivery_per_matching_subscription(
    registry: Registry, receiver: Receiver
) -> None:
    created = subscribe(registry, receiver.url(), "user.created")
    everything = subscribe(registry, receiver.url(), "*")
    deleted_only = subscribe(registry, receiver.url(), "user.deleted", "user.restored")
    gone = subscribe(registry, receiver.url(), "*")
    webhooks.service(registry).delete(gone.id)
    before = {s.id: len(outbox(registry, s)) for s in (created, everything, deleted_only)}

    user = registry.users.create(NewUser(unique_email(), "Ada"))

    assert len(outbox(registry, created)) == before[created.id] + 1
    assert len(outbox(registry, everything)) == before[everything.id] + 1
    assert len(outbox(registry, deleted_only)) == before[deleted_only.id]
    [delivery] = [d for d in outbox(registry, created) if d.event_type == "user.created"]
    [same] = [d for d in outbox(registry, everything) if d.event_type == "user.created"]
    assert delivery.id != same.id  # each subscription's own webhook-id
    assert delivery.payload == same.payload  # the same event
    assert delivery.status == "pending"
    assert delivery.attempts == 0
    body = json.loads(delivery.payload)
    assert body["type"] == "user.created"
    assert body["data"]["id"] == str(user.id)
    assert body["data"]["user_id"] == str(user.id)
    assert body["data"]["target_type"] == "user"
    assert body["data"]["is_active"] is True
    assert body["data"]["version"] == 1
    assert set(body["data"]["changed"]) >= {"email", "full_name", "is_active", "version"}
    # Thin: no personal value is in the outbox, only the names of the changed fields.
    assert user.email not in delivery.payload
    assert "Ada" not in delivery.payload

    registry.users.delete(user.id)
    [deletion] = outbox(registry, deleted_only)
    assert deletion.event_type == "user.deleted"
    assert json.loads(deletion.payload)["data"]["deleted_at"] is not None


def test_an_erased_user_leaves_nothing_of_theirs_in_the_outbox(
    registry: Registry, receiver: Receiver
) -> None:
    sub = subscribe(registry, receiver.url(), "*")
    user = registry.users.create(NewUser(unique_email("erased"), "Erased Person"))
    registry.users.update(user.id, UserChanges(email=unique_email("moved"), full_name="Other"))
    registry.users.delete(user.id)
    registry.users.purge_user(user.id)
    mine = [d for d in outbox(registry, sub) if json.loads(d.payload)["data"]["user_id"]]
    assert [d.event_type for d in mine] == [
        "user.purged",
        "user.deleted",
        "user.updated",
        "user.created",
    ]
    purged = json.loads(mine[0].payload)["data"]
    assert purged["changed"] == []
    assert purged["id"] == str(user.id)
    for delivery in mine:
        assert "erased-" not in delivery.payload
        assert "moved-" not in delivery.payload
        assert "Person" not in delivery.payload
        assert "Other" not in delivery.payload


def test_a_subscription_sees_every_change_committed_after_it(
    make_registry: MakeRegistry, receiver: Receiver
) -> None:
    """No per-process cache: a subscription made through another registry counts at once."""
    writer, manager = make_registry(), make_registry()
    registry_user = writer.users.create(NewUser(unique_email()))  # before: nothing to write
    sub = subscribe(manager, receiver.url(), "user.updated")
    writer.users.update(registry_user.id, UserChanges(full_name="Later"))
    [delivery] = outbox(writer, sub)
    assert delivery.event_type == "user.updated"
    assert json.loads(delivery.payload)["data"]["changed"] == ["full_name", "version"]


def test_a_failed_write_leaves_no_delivery(registry: Registry, receiver: Receiver) -> None:
    subscribe(registry, receiver.url(), "*")
    user = registry.users.create(NewUser(unique_email(), "First"))
    count = len(outbox(registry))

    with pytest.raises(Conflict):
        registry.users.create(NewUser(user.email.upper()))
    with pytest.raises(PreconditionFailed):
        registry.users.update(user.id, UserChanges(full_name="Stale"), expected_version=7)
    with pytest.raises(PreconditionFailed):
        registry.users.delete(user.id, expected_version=7)
    assert len(outbox(registry)) == count

    # The same over HTTP: 409 and 412 write nothing, neither the change nor its delivery.
    client = testing.TestClient(
        create_app(registry), headers={"Authorization": f"Bearer {new_key(registry)}"}
    )
    count = len(outbox(registry))  # the key's creation is an event too
    assert client.simulate_post("/api/v1/users", json={"email": user.email}).status_code == 409
    stale = client.simulate_patch(
        f"/api/v1/users/{user.id}", json={"full_name": "Stale"}, headers={"If-Match": '"9"'}
    )
    assert stale.status_code == 412
    assert len(outbox(registry)) == count
    assert registry.users.get(user.id).full_name == "First"

    ok = client.simulate_patch(
        f"/api/v1/users/{user.id}", json={"full_name": "Fresh"}, headers={"If-Match": '"1"'}
    )
    assert ok.status_code == 200
    assert next(d.event_type for d in outbox(registry)) == "user.updated"
    assert len(outbox(registry)) == count + 1


def test_a_failing_outbox_fails_the_write(
    registry: Registry, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No change without its deliveries: when the outbox cannot be written, nothing is."""
    subscribe(registry, receiver.url(), "*")
    store = webhooks.state_of(registry).store
    original = store.record_changes

    def broken(*args: Any) -> None:
        raise RuntimeError("the outbox is gone")

    monkeypatch.setattr(store, "record_changes", broken)
    email = unique_email()
    with pytest.raises(RuntimeError):
        registry.users.create(NewUser(email))
    monkeypatch.setattr(store, "record_changes", original)
    with pytest.raises(NotFound):
        registry.users.get_by_email(email)


# -- claims: one dispatcher per delivery, in order per user ------------------------------------


def test_two_dispatchers_never_claim_the_same_delivery(
    make_registry: MakeRegistry, receiver: Receiver
) -> None:
    """Two registries (two processes' worth of pools) claiming at once split the outbox."""
    first, second = make_registry(), make_registry()
    subscribe(first, receiver.url(), "user.created")
    for _ in range(40):
        first.users.create(NewUser(unique_email()))
    claimed: dict[str, list[uuid.UUID]] = {"first": [], "second": []}
    start = threading.Barrier(2)

    def claim(name: str, registry: Registry) -> None:
        store = webhooks.state_of(registry).store
        start.wait()
        while batch := store.claim(f"worker-{name}", 3, 60):
            claimed[name] += [c.id for c in batch]

    threads = [
        threading.Thread(target=claim, args=("first", first)),
        threading.Thread(target=claim, args=("second", second)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not set(claimed["first"]) & set(claimed["second"])
    assert len(claimed["first"]) + len(claimed["second"]) == 40
    assert len(set(claimed["first"]) | set(claimed["second"])) == 40


def test_a_users_next_event_waits_until_the_one_before_is_settled(
    registry: Registry, receiver: Receiver
) -> None:
    subscribe(registry, receiver.url(), "user.created", "user.updated", "user.deleted")
    user = registry.users.create(NewUser(unique_email()))
    registry.users.update(user.id, UserChanges(full_name="Second"))
    registry.users.delete(user.id)
    registry.users.create(NewUser(unique_email()))
    store = webhooks.state_of(registry).store

    heads = store.claim("a", 10, 60)
    # One head per user: this user's creation, and the other user's.
    assert sorted(c.event_type for c in heads) == ["user.created", "user.created"]
    [head] = [c for c in heads if json.loads(c.payload)["data"]["id"] == str(user.id)]
    [other_head] = [c for c in heads if c is not head]
    assert store.claim("b", 10, 60) == []  # claimed: nobody else takes them, nor what follows

    # A failed head stays the head: retried before anything after it.
    assert store.mark_failed(head.id, "a", dead=False, delay_s=0, status=500, error="HTTP 500")
    [again] = store.claim("b", 10, 60)
    assert again.id == head.id
    assert again.attempts == 1
    # Only the dispatcher holding the claim may record a failure.
    assert not store.mark_failed(head.id, "a", dead=False, delay_s=0, status=500, error="x")

    assert store.mark_delivered(head.id, 204)
    [second] = store.claim("b", 10, 60)
    assert second.event_type == "user.updated"
    # A dead head no longer blocks: the user's next event goes out.
    assert store.mark_failed(second.id, "b", dead=True, delay_s=0, status=None, error="gone")
    [third] = store.claim("c", 10, 60)
    assert third.event_type == "user.deleted"
    assert store.mark_delivered(third.id, 200)
    assert store.mark_delivered(other_head.id, 200)
    assert store.claim("c", 10, 60) == []
    statuses = {d.event_type: d.status for d in outbox(registry) if d.event_type.startswith("user")}
    assert statuses == {
        "user.created": "delivered",
        "user.updated": "dead",
        "user.deleted": "delivered",
    }


def test_a_lapsed_claim_is_taken_by_another_dispatcher(
    registry: Registry, receiver: Receiver
) -> None:
    """A dispatcher that died keeps its claims only until its lease ends: at-least-once."""
    subscribe(registry, receiver.url(), "user.created")
    registry.users.create(NewUser(unique_email()))
    store = webhooks.state_of(registry).store
    [claimed] = store.claim("crashed", 10, 0.3)
    assert store.claim("survivor", 10, 60) == []
    time.sleep(0.4)
    [taken] = store.claim("survivor", 10, 60)
    assert taken.id == claimed.id


# -- retries, dead letters, redelivery ----------------------------------------------------------


def test_the_backoff_doubles_up_to_its_cap_with_full_jitter() -> None:
    backoff = Backoff(base_s=5, cap_s=3600, max_attempts=8)
    assert [backoff.bound(n) for n in range(1, 12)] == [
        5,
        10,
        20,
        40,
        80,
        160,
        320,
        640,
        1280,
        2560,
        3600,
    ]
    assert backoff.bound(10_000) == 3600  # no overflow however many attempts
    drawn = [backoff.delay(3) for _ in range(200)]
    assert all(0 <= d <= 20 for d in drawn)
    assert max(drawn) - min(drawn) > 5  # spread out: receivers are not hit in lockstep
    assert backoff.delay(4, rng=lambda low, high: high) == 40
    assert not backoff.gives_up(7)
    assert backoff.gives_up(8)


def test_a_failing_receiver_is_retried_later_then_the_delivery_is_dead(
    make_registry: MakeRegistry, receiver: Receiver
) -> None:
    registry = make_registry(max_attempts=3, backoff_base_seconds=30, backoff_cap_seconds=60)
    receiver.respond = lambda handler, _: answer(handler, 503, b"down")
    sub = subscribe(registry, receiver.url(), "user.created")
    registry.users.create(NewUser(unique_email()))
    dispatcher = webhooks.state_of(registry).dispatcher

    assert dispatcher.run_once() == ["failed"]
    [delivery] = outbox(registry, sub)
    assert delivery.status == "pending"
    assert delivery.attempts == 1
    assert delivery.last_status == 503
    assert delivery.last_error == "HTTP 503"
    wait = (delivery.next_attempt_at - delivery.created_at).total_seconds()
    assert 0 <= wait <= 31  # full jitter under the first bound (base 30 s)
    if wait > 0.5:
        assert dispatcher.run_once() == []  # not due yet

    make_due(registry)
    assert dispatcher.run_once() == ["failed"]
    make_due(registry)
    assert dispatcher.run_once() == ["dead"]
    [dead] = outbox(registry, sub)
    assert dead.status == "dead"
    assert dead.attempts == 3
    assert dead.last_error == "HTTP 503"
    assert len(receiver.requests) == 3
    assert {r.webhook_id for r in receiver.requests} == {str(dead.id)}  # one id on every retry
    assert dispatcher.run_once() == []  # dead: never sent again by itself

    receiver.respond = lambda handler, _: answer(handler, 204, b"")
    again = webhooks.service(registry).redeliver(dead.id)
    assert again.status == "pending"
    assert again.attempts == 0
    assert again.last_error is None
    assert dispatcher.run_once() == ["delivered"]
    [delivered] = outbox(registry, sub)
    assert delivered.status == "delivered"
    assert delivered.last_status == 204
    assert delivered.delivered_at is not None
    assert receiver.requests[-1].webhook_id == str(dead.id)

    # Delivered may be redelivered too; pending may not (it is on its way).
    webhooks.service(registry).redeliver(dead.id)
    with pytest.raises(Conflict, match="pending already"):
        webhooks.service(registry).redeliver(dead.id)
    with pytest.raises(NotFound):
        webhooks.service(registry).redeliver(uuid.uuid4())


def test_a_deleted_subscription_gets_nothing_more(registry: Registry, receiver: Receiver) -> None:
    sub = subscribe(registry, receiver.url(), "user.created")
    registry.users.create(NewUser(unique_email()))
    service = webhooks.service(registry)
    service.delete(sub.id)
    [buried] = outbox(registry, sub)
    assert buried.status == "dead"
    assert buried.last_error == "the subscription was deleted"
    registry.users.create(NewUser(unique_email()))
    assert len(outbox(registry, sub)) == 1
    assert webhooks.state_of(registry).dispatcher.run_once() == []
    assert receiver.requests == []
    with pytest.raises(Conflict, match="deleted"):
        service.redeliver(buried.id)
    with pytest.raises(NotFound):
        service.get(sub.id)
    with pytest.raises(NotFound):
        service.delete(sub.id)
    assert sub.id not in {s.id for s in service.list()}


# -- sending: signed, bounded, never redirected ---------------------------------------------------


def test_deliveries_are_signed_so_that_standardwebhooks_verifies_them(
    registry: Registry, receiver: Receiver
) -> None:
    sub = subscribe(registry, receiver.url("/in?team=7"), "user.created")
    user = registry.users.create(NewUser(unique_email()))
    assert webhooks.state_of(registry).dispatcher.run_once() == ["delivered"]
    [seen] = receiver.requests
    payload = seen.verify(sub.secret)
    assert payload["type"] == "user.created"
    assert payload["data"]["id"] == str(user.id)
    [delivery] = outbox(registry, sub)
    assert seen.webhook_id == str(delivery.id)
    assert seen.body == delivery.payload.encode()  # byte for byte what the outbox holds
    assert seen.path == "/in?team=7"
    assert seen.headers["content-type"] == "application/json"
    assert seen.headers["user-agent"].startswith("userplane-webhooks/")
    assert abs(int(seen.headers["webhook-timestamp"]) - time.time()) < 60
    assert seen.headers["webhook-signature"].startswith("v1,")
    # Another secret, or a changed body, does not verify.
    other = webhooks.service(registry).create({"url": receiver.url(), "events": ["*"]})
    with pytest.raises(Exception, match="signature"):
        seen.verify(other.secret)
    tampered = Received(seen.path, seen.headers, seen.body.replace(b"user", b"User"), seen.at)
    with pytest.raises(Exception, match="signature"):
        tampered.verify(sub.secret)
    assert sub.secret.startswith("whsec_")
    assert len(__import__("base64").b64decode(sub.secret.removeprefix("whsec_"))) == 32


def test_a_redirect_is_a_failure_and_is_not_followed(
    registry: Registry, receiver: Receiver
) -> None:
    def redirect(handler: http.server.BaseHTTPRequestHandler, seen: Received) -> None:
        if seen.path == "/hook":
            handler.send_response(307)
            handler.send_header("Location", receiver.url("/elsewhere"))
            handler.send_header("Content-Length", "0")
            handler.end_headers()
        else:
            answer(handler, 200)

    receiver.respond = redirect
    sub = subscribe(registry, receiver.url(), "user.created")
    registry.users.create(NewUser(unique_email()))
    assert webhooks.state_of(registry).dispatcher.run_once() == ["failed"]
    assert [r.path for r in receiver.requests] == ["/hook"]
    [delivery] = outbox(registry, sub)
    assert delivery.last_status == 307
    assert delivery.last_error == "HTTP 307: a redirect, not followed"


def test_at_most_max_response_bytes_of_an_answer_are_read(
    make_registry: MakeRegistry, receiver: Receiver
) -> None:
    written: list[int] = []

    def flood(handler: http.server.BaseHTTPRequestHandler, _: Received) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(1 << 30))  # a gigabyte, announced
        handler.end_headers()
        chunk = b"x" * 65536
        try:
            for _chunk in range(1 << 14):
                handler.wfile.write(chunk)
                written.append(len(chunk))
        finally:
            handler.close_connection = True

    receiver.respond = flood
    registry = make_registry(max_response_bytes=1024)
    subscribe(registry, receiver.url(), "user.created")
    registry.users.create(NewUser(unique_email()))
    started = time.monotonic()
    assert webhooks.state_of(registry).dispatcher.run_once() == ["delivered"]
    assert time.monotonic() - started < 5
    time.sleep(0.2)
    # The sender hung up after its kilobyte: the receiver could not write its gigabyte.
    assert sum(written) < 64 << 20


def test_a_receiver_that_stalls_is_cut_off_at_the_timeout(
    make_registry: MakeRegistry, receiver: Receiver
) -> None:
    release = threading.Event()

    def stall(handler: http.server.BaseHTTPRequestHandler, _: Received) -> None:
        release.wait(10)
        answer(handler, 200)

    receiver.respond = stall
    registry = make_registry(timeout_seconds=0.5, lease_seconds=5)
    sub = subscribe(registry, receiver.url(), "user.created")
    registry.users.create(NewUser(unique_email()))
    started = time.monotonic()
    try:
        assert webhooks.state_of(registry).dispatcher.run_once() == ["failed"]
        assert time.monotonic() - started < 2.5
    finally:
        release.set()
    [delivery] = outbox(registry, sub)
    assert delivery.last_error == "timed out after 0.5s"


def test_a_header_trickle_cannot_stretch_the_timeout(
    make_registry: MakeRegistry, receiver: Receiver
) -> None:
    """The deadline bounds the whole exchange, not each read."""
    stop = threading.Event()

    def trickle(handler: http.server.BaseHTTPRequestHandler, _: Received) -> None:
        handler.wfile.write(b"HTTP/1.1 200 OK\r\n")
        while not stop.wait(0.1):
            handler.wfile.write(b"X-Slow: 1\r\n")
            handler.wfile.flush()

    receiver.respond = trickle
    registry = make_registry(timeout_seconds=0.8, lease_seconds=5)
    subscribe(registry, receiver.url(), "user.created")
    registry.users.create(NewUser(unique_email()))
    started = time.monotonic()
    try:
        assert webhooks.state_of(registry).dispatcher.run_once() == ["failed"]
        assert time.monotonic() - started < 3
    finally:
        stop.set()


def test_a_refused_connection_is_a_failure_to_retry(registry: Registry) -> None:
    with Receiver() as gone:
        url = gone.url()
    sub = subscribe(registry, url, "user.created")  # nothing listens there any more
    registry.users.create(NewUser(unique_email()))
    assert webhooks.state_of(registry).dispatcher.run_once() == ["failed"]
    [delivery] = outbox(registry, sub)
    assert delivery.status == "pending"
    assert delivery.last_status is None
    assert delivery.last_error is not None
    assert "connection refused" in delivery.last_error


# -- no SSRF ---------------------------------------------------------------------------------------

NOT_PUBLIC = [
    "127.0.0.1",
    "127.8.9.10",
    "::1",
    "10.1.2.3",
    "172.16.0.1",
    "172.31.255.254",
    "192.168.1.1",
    "169.254.169.254",
    "169.254.0.1",
    "100.64.0.1",
    "100.127.255.254",
    "0.0.0.0",
    "::",
    "::ffff:127.0.0.1",
    "::ffff:169.254.169.254",
    "::ffff:10.0.0.1",
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "fc00::1",
    "fd12:3456::1",
    "fe80::1",
    "febf::1",
    "224.0.0.1",
    "239.255.255.250",
    "ff02::1",
    "240.0.0.1",
    "255.255.255.255",
    "192.0.2.10",
    "198.18.0.1",
    "2001:db8::1",
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]


@pytest.mark.parametrize("address", NOT_PUBLIC)
def test_an_address_that_is_not_public_is_refused(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", PUBLIC)
def test_a_public_address_is_allowed(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["127.0.0.1", "169.254.169.254", "10.0.0.7", "::1", "fd00::5"])
def test_a_url_resolving_to_a_private_address_is_refused_at_subscription(
    make_registry: MakeRegistry, address: str
) -> None:
    dns = Resolver()
    dns.names["hooks.example.com"] = ["93.184.216.34", address]  # one bad answer is enough
    registry = make_registry(resolver=dns, allow_private=False)
    with pytest.raises(InvalidInput) as caught:
        subscribe(registry, "https://hooks.example.com/in", "user.created")
    [error] = caught.value.errors
    assert error.field == "$.url"
    assert address in error.message
    assert "USERPLANE_WEBHOOKS_ALLOW_PRIVATE" in error.message
    literal = f"http://[{address}]/x" if ":" in address else f"http://{address}/x"
    with pytest.raises(InvalidInput, match=r"\$\.url: resolves to"):
        subscribe(registry, literal, "user.created")
    assert webhooks.service(registry).list() == []


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://hooks.example.com/x", "http or https"),
        ("file:///etc/passwd", "http or https"),
        ("gopher://hooks.example.com/", "http or https"),
        ("hooks.example.com/x", "http or https"),
        ("https://user:pw@hooks.example.com/x", "credentials"),
        ("https://token@hooks.example.com/x", "credentials"),
        ("https:///x", "must name a host"),
        ("https://hooks.example.com/x#frag", "fragment"),
        ("https://hooks.example.com:99999/x", "not a valid URL"),
        ("https://hooks.example.com/a b", "spaces"),
        ("https://hooks.example.com:0/x", "port 0"),
        ("https://hooks.example.com/caf\u00e9", "percent-encode"),
        ("https://nowhere.invalid/x", "does not resolve"),
        ("", "1 to 2048"),
        ("https://hooks.example.com/" + "a" * 2100, "1 to 2048"),
    ],
)
def test_a_url_that_is_no_http_url_or_does_not_resolve_is_refused(
    make_registry: MakeRegistry, url: str, message: str
) -> None:
    dns = Resolver()
    dns.names["hooks.example.com"] = ["93.184.216.34"]
    registry = make_registry(resolver=dns, allow_private=False)
    with pytest.raises(InvalidInput) as caught:
        subscribe(registry, url, "user.created")
    [error] = caught.value.errors
    assert error.field == "$.url"
    assert message in error.message


def test_a_public_url_is_accepted_and_checked_again_at_every_send(
    make_registry: MakeRegistry, receiver: Receiver
) -> None:
    """DNS rebinding: public when subscribed, loopback when sent: refused at the send."""
    dns = Resolver()
    dns.names["hooks.example.com"] = ["93.184.216.34"]
    registry = make_registry(resolver=dns, allow_private=False)
    sub = subscribe(registry, f"http://hooks.example.com:{receiver.port}/hook", "user.created")
    dns.names["hooks.example.com"] = ["127.0.0.1"]
    registry.users.create(NewUser(unique_email()))
    assert webhooks.state_of(registry).dispatcher.run_once() == ["failed"]
    assert receiver.requests == []
    [delivery] = outbox(registry, sub)
    assert delivery.last_error is not None
    assert delivery.last_error.startswith("refused: resolves to 127.0.0.1")


def test_the_connection_goes_to_the_checked_address_with_the_host_name_kept(
    make_registry: MakeRegistry, receiver: Receiver
) -> None:
    """Pinned: the socket connects to the resolved address, Host still names the host."""
    dns = Resolver()
    dns.names["hooks.internal.test"] = ["127.0.0.1"]
    registry = make_registry(resolver=dns)
    sub = subscribe(registry, f"http://hooks.internal.test:{receiver.port}/hook", "user.created")
    registry.users.create(NewUser(unique_email()))
    assert webhooks.state_of(registry).dispatcher.run_once() == ["delivered"]
    [seen] = receiver.requests
    assert seen.headers["host"] == f"hooks.internal.test:{receiver.port}"
    seen.verify(sub.secret)
    assert dns.asked.count("hooks.internal.test") == 2  # at subscription, at the send


def test_the_resolution_of_a_slow_host_is_bounded(make_registry: MakeRegistry) -> None:
    def slow(host: str, port: int) -> list[IPAddress]:
        time.sleep(3)
        return [ipaddress.ip_address("93.184.216.34")]

    registry = make_registry(allow_private=False, timeout_seconds=0.5, lease_seconds=5)
    webhooks.state_of(registry).resolver = slow
    started = time.monotonic()
    with pytest.raises(InvalidInput, match=r"did not resolve within 0\.5s"):
        subscribe(registry, "https://slow.example.com/x", "user.created")
    assert time.monotonic() - started < 2


# -- the HTTP API ----------------------------------------------------------------------------------


def admin_client(registry: Registry, role: str = "admin") -> testing.TestClient:
    return testing.TestClient(
        create_app(registry), headers={"Authorization": f"Bearer {new_key(registry, role)}"}
    )


def problem(resp: testing.Result, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].startswith(PROBLEM)
    body: dict[str, Any] = resp.json
    assert body["status"] == status
    assert "Traceback" not in resp.text
    return body


def fields_of(resp: testing.Result) -> dict[str, str]:
    return {e["field"]: e["detail"] for e in problem(resp, 422)["errors"]}


def test_subscriptions_over_http(registry: Registry, receiver: Receiver) -> None:
    client = admin_client(registry)
    created = client.simulate_post(
        "/api/v1/webhooks",
        json={
            "url": receiver.url(),
            "events": ["user.created", "user.deleted", "user.created"],
            "description": "CRM sync",
        },
    )
    assert created.status_code == 201, created.text
    body = created.json
    assert body["events"] == ["user.created", "user.deleted"]  # duplicates dropped
    assert body["description"] == "CRM sync"
    assert body["url"] == receiver.url()
    assert body["secret"].startswith("whsec_")
    assert created.headers["Location"] == f"/api/v1/webhooks/{body['id']}"
    public = {k: v for k, v in body.items() if k != "secret"}

    listed = client.simulate_get("/api/v1/webhooks")
    assert listed.status_code == 200
    assert listed.json == {"items": [public]}
    assert body["secret"] not in listed.text
    got = client.simulate_get(created.headers["Location"])
    assert got.status_code == 200
    assert got.json == public

    user = registry.users.create(NewUser(unique_email()))
    registry.users.delete(user.id)
    deliveries = client.simulate_get(f"/api/v1/webhooks/{body['id']}/deliveries")
    assert deliveries.status_code == 200
    items = deliveries.json["items"]
    assert [d["type"] for d in items] == ["user.deleted", "user.created"]  # newest first
    assert all(d["status"] == "pending" for d in items)
    assert items[0]["payload"]["data"]["id"] == str(user.id)
    assert deliveries.json["next"] is None

    assert webhooks.state_of(registry).dispatcher.run_once() == ["delivered"]
    pending = client.simulate_get(
        f"/api/v1/webhooks/{body['id']}/deliveries", params={"status": "pending"}
    )
    assert [d["type"] for d in pending.json["items"]] == ["user.deleted"]
    delivered = client.simulate_get(
        f"/api/v1/webhooks/{body['id']}/deliveries", params={"status": "delivered"}
    )
    [done] = delivered.json["items"]
    assert done["type"] == "user.created"
    assert done["last_status"] == 200
    assert done["next_attempt_at"] is None

    redelivered = client.simulate_post(f"/api/v1/webhooks/deliveries/{done['id']}/redeliver")
    assert redelivered.status_code == 200
    assert redelivered.json["status"] == "pending"
    assert redelivered.json["attempts"] == 0
    again = client.simulate_post(f"/api/v1/webhooks/deliveries/{done['id']}/redeliver")
    assert problem(again, 409)["detail"].startswith("the delivery is pending already")
    problem(client.simulate_post(f"/api/v1/webhooks/deliveries/{uuid.uuid4()}/redeliver"), 404)

    assert client.simulate_delete(created.headers["Location"]).status_code == 204
    problem(client.simulate_get(created.headers["Location"]), 404)
    problem(client.simulate_delete(created.headers["Location"]), 404)
    assert client.simulate_get("/api/v1/webhooks").json == {"items": []}
    # A deleted subscription's deliveries stay readable (they went dead).
    history = client.simulate_get(f"/api/v1/webhooks/{body['id']}/deliveries")
    assert {d["status"] for d in history.json["items"]} == {"dead"}
    problem(client.simulate_get(f"/api/v1/webhooks/{uuid.uuid4()}/deliveries"), 404)


def test_deliveries_are_paged_by_keyset(registry: Registry, receiver: Receiver) -> None:
    client = admin_client(registry)
    sub = subscribe(registry, receiver.url(), "user.created")
    for _ in range(5):
        registry.users.create(NewUser(unique_email()))
    seen: list[str] = []
    path = f"/api/v1/webhooks/{sub.id}/deliveries"
    params: dict[str, str] = {"limit": "2"}
    pages = 0
    while True:
        resp = client.simulate_get(path, params=params)
        assert resp.status_code == 200, resp.text
        pages += 1
        seen += [d["id"] for d in resp.json["items"]]
        if resp.json["next"] is None:
            assert "Link" not in resp.headers
            break
        assert f"cursor={resp.json['next']}" in resp.headers["Link"]
        params = {"limit": "2", "cursor": resp.json["next"]}
    assert pages == 3
    assert seen == [str(d.id) for d in outbox(registry, sub)]
    assert len(set(seen)) == 5


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, {"$.url", "$.events"}),
        ({"url": "ftp://x.example/", "events": ["*"]}, {"$.url"}),
        ({"url": 7, "events": ["*"]}, {"$.url"}),
        ({"url": "http://127.0.0.1/", "events": "user.created"}, {"$.events"}),
        ({"url": "http://127.0.0.1/", "events": []}, {"$.events"}),
        (
            {"url": "http://127.0.0.1/", "events": ["user.created", "user.exploded"]},
            {"$.events[1]"},
        ),
        ({"url": "http://127.0.0.1/", "events": [3]}, {"$.events[0]"}),
        (
            {"url": "http://127.0.0.1/", "events": ["*"], "description": "x" * 201},
            {"$.description"},
        ),
        ({"url": "http://127.0.0.1/", "events": ["*"], "description": "a\nb"}, {"$.description"}),
        ({"url": "http://127.0.0.1/", "events": ["*"], "secret": "mine"}, {"$.secret"}),
    ],
)
def test_every_bad_input_is_a_422_naming_its_field(
    registry: Registry, body: dict[str, Any], expected: set[str]
) -> None:
    resp = admin_client(registry).simulate_post("/api/v1/webhooks", json=body)
    assert set(fields_of(resp)) == expected
    assert webhooks.service(registry).list() == []


def test_an_unknown_event_type_is_refused_with_the_known_ones(registry: Registry) -> None:
    resp = admin_client(registry).simulate_post(
        "/api/v1/webhooks", json={"url": "http://127.0.0.1/", "events": ["user.exploded"]}
    )
    message = fields_of(resp)["$.events[0]"]
    assert "unknown event type 'user.exploded'" in message
    for known in ("*", "user.created", "user.updated", "user.deleted", "user.purged"):
        assert known in message


def test_bad_queries_and_bodies_are_422s(registry: Registry, receiver: Receiver) -> None:
    client = admin_client(registry)
    sub = subscribe(registry, receiver.url(), "*")
    path = f"/api/v1/webhooks/{sub.id}/deliveries"
    assert set(fields_of(client.simulate_get(path, params={"status": "lost"}))) == {"$.status"}
    assert set(fields_of(client.simulate_get(path, params={"cursor": "abc"}))) == {"$.cursor"}
    assert set(fields_of(client.simulate_get(path, params={"limit": "0"}))) == {"$.limit"}
    assert set(fields_of(client.simulate_get(path, params={"limit": "201"}))) == {"$.limit"}
    both = client.simulate_get(path, params={"limit": "x", "status": "x"})
    assert set(fields_of(both)) == {"$.limit", "$.status"}
    assert set(fields_of(client.simulate_get(path, params={"colour": "red"}))) == {"$.colour"}
    repeated = client.simulate_get(path, query_string="status=dead&status=pending")
    assert set(fields_of(repeated)) == {"$.status"}
    assert set(fields_of(client.simulate_get("/api/v1/webhooks", params={"x": "1"}))) == {"$.x"}
    assert set(fields_of(client.simulate_post("/api/v1/webhooks", json=["*"]))) == {"$"}
    problem(
        client.simulate_post(
            "/api/v1/webhooks", body=b"{nope", headers={"Content-Type": "application/json"}
        ),
        400,
    )


def test_managing_webhooks_needs_webhooks_manage(registry: Registry, receiver: Receiver) -> None:
    sub = subscribe(registry, receiver.url(), "*")
    editor = admin_client(registry, "editor")  # every users:* action, not webhooks:manage
    routes = [
        ("POST", "/api/v1/webhooks", {"url": receiver.url(), "events": ["*"]}),
        ("GET", "/api/v1/webhooks", None),
        ("GET", f"/api/v1/webhooks/{sub.id}", None),
        ("DELETE", f"/api/v1/webhooks/{sub.id}", None),
        ("GET", f"/api/v1/webhooks/{sub.id}/deliveries", None),
        ("POST", f"/api/v1/webhooks/deliveries/{uuid.uuid4()}/redeliver", None),
    ]
    anonymous = testing.TestClient(create_app(registry))
    for method, path, body in routes:
        problem(editor.simulate_request(method, path, json=body), 403)
        problem(anonymous.simulate_request(method, path, json=body), 401)
    assert [s.id for s in webhooks.service(registry).list()] == [sub.id]


def test_the_openapi_document_describes_the_webhook_routes(registry: Registry) -> None:
    import re

    from falcon import inspect
    from openapi_spec_validator import validate

    client = admin_client(registry)
    doc = client.simulate_get("/api/v1/openapi.json").json
    validate(doc)
    methods = {"GET", "POST", "PUT", "PATCH", "DELETE"}
    served = {
        (re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path), method.method)
        for route in inspect.inspect_routes(client.app)
        if route.path.startswith("/api/v1/webhooks")
        for method in route.methods
        if method.method in methods and not method.internal
    }
    documented = {
        (path, method.upper())
        for path, item in doc["paths"].items()
        if path.startswith("/api/v1/webhooks")
        for method in item
        if method.upper() in methods
    }
    assert served == documented
    assert len(served) == 6
    assert set(doc["paths"]["/api/v1/webhooks"]) == {"get", "post"}
    assert set(doc["paths"]["/api/v1/webhooks/{webhook_id}"]) == {"parameters", "get", "delete"}
    assert "get" in doc["paths"]["/api/v1/webhooks/{webhook_id}/deliveries"]
    assert "post" in doc["paths"]["/api/v1/webhooks/deliveries/{delivery_id}/redeliver"]
    events = doc["components"]["schemas"]["NewWebhookSubscription"]["properties"]["events"]
    assert "user.created" in events["items"]["enum"]


# -- records of our own writes --------------------------------------------------------------------


def test_managing_subscriptions_is_recorded_as_changes_without_the_secret(
    registry: Registry, receiver: Receiver
) -> None:
    watcher = subscribe(registry, receiver.url(), "webhook.created", "webhook.deleted")
    other = subscribe(registry, receiver.url("/other"), "user.created")
    webhooks.service(registry).delete(other.id)
    # Its own creation is one: the row it inserted is seen by the statement after it.
    own, *records = reversed(outbox(registry, watcher))
    assert json.loads(own.payload)["data"]["id"] == str(watcher.id)
    assert watcher.secret not in own.payload
    records.reverse()
    assert [d.event_type for d in records] == ["webhook.deleted", "webhook.created"]
    for delivery in records:
        assert other.secret not in delivery.payload
        assert json.loads(delivery.payload)["data"]["id"] == str(other.id)
        assert json.loads(delivery.payload)["data"]["target_type"] == "webhook"
    created = json.loads(records[1].payload)["data"]
    assert created["changed"] == ["url", "events", "description"]


# -- the CLI ---------------------------------------------------------------------------------------


@pytest.fixture
def run_cli(database_url: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``userplane …`` in-process, with the webhooks plugin, over the test's database."""
    import copy

    monkeypatch.chdir(tmp_path)  # no stray .env
    group = copy.copy(cli)
    group.commands = dict(cli.commands)
    pm = make_plugin_manager(extra_plugins=[webhooks])
    assert Hooks(pm).cli_commands(group) == []
    env = {
        "USERPLANE_DATABASE_URL": database_url,
        "USERPLANE_WEBHOOKS_ALLOW_PRIVATE": "true",
        "USERPLANE_ENV_FILE": str(tmp_path / "none.env"),
    }
    runner = CliRunner()
    assert runner.invoke(group, ["migrate"], obj=pm, env=env).exit_code == 0

    def run(*args: str) -> Any:
        return runner.invoke(group, list(args), obj=pm, env=env)

    return run


def test_the_cli_manages_subscriptions_and_deliveries(run_cli: Any, receiver: Receiver) -> None:
    made = run_cli(
        "webhooks", "create", "--url", receiver.url(), "--event", "user.created",
        "--event", "user.deleted", "--description", "CRM", "--format", "json",
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    sub = json.loads(made.stdout)
    assert sub["secret"].startswith("whsec_")
    assert sub["events"] == ["user.created", "user.deleted"]

    shown = run_cli("webhooks", "create", "--url", receiver.url("/2"), "--event", "*")
    assert shown.exit_code == 0, shown.output
    assert shown.stdout.startswith("whsec_")
    assert "not shown again" in shown.stderr

    listed = run_cli("webhooks", "list", "--format", "json")
    assert listed.exit_code == 0
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert next(r["id"] for r in rows) == sub["id"]
    assert all("secret" not in r for r in rows)
    table = run_cli("webhooks", "list")
    assert table.stdout.splitlines()[0].split() == [
        "ID",
        "URL",
        "EVENTS",
        "DESCRIPTION",
        "CREATED_AT",
    ]
    assert "user.created, user.deleted" in table.stdout

    assert run_cli("users", "create", "--email", unique_email()).exit_code == 0
    pending = run_cli("webhooks", "deliveries", "--subscription", sub["id"], "--format", "json")
    assert pending.exit_code == 0, pending.output
    [delivery] = [json.loads(line) for line in pending.stdout.splitlines()]
    assert delivery["type"] == "user.created"
    assert delivery["status"] == "pending"
    assert run_cli("webhooks", "deliveries", "--status", "dead").stdout.splitlines()[1:] == []

    busy = run_cli("webhooks", "redeliver", delivery["id"])
    assert busy.exit_code != 0
    assert "pending already" in busy.output

    deleted = run_cli("webhooks", "delete", sub["id"])
    assert deleted.exit_code == 0, deleted.output
    dead = run_cli("webhooks", "deliveries", "--status", "dead", "--format", "json")
    assert [json.loads(line)["id"] for line in dead.stdout.splitlines()] == [delivery["id"]]
    gone = run_cli("webhooks", "delete", sub["id"])
    assert gone.exit_code != 0
    assert "no webhook subscription" in gone.output


def test_the_cli_names_what_is_wrong(run_cli: Any) -> None:
    unknown = run_cli("webhooks", "create", "--url", "http://127.0.0.1/", "--event", "user.nope")
    assert unknown.exit_code != 0
    assert "unknown event type 'user.nope'" in unknown.output
    assert "Traceback" not in unknown.output
    bad_url = run_cli("webhooks", "create", "--url", "ftp://x/", "--event", "*")
    assert bad_url.exit_code != 0
    assert "$.url" in bad_url.output
    bad_status = run_cli("webhooks", "deliveries", "--status", "lost")
    assert bad_status.exit_code == 2
    # Bytes argv could not decode arrive as lone surrogates: named, never a traceback.
    undecodable = run_cli(
        "webhooks",
        "create",
        "--url",
        "http://127.0.0.1/",
        "--event",
        "*",
        "--description",
        "\udcff",
    )
    assert undecodable.exit_code != 0
    assert "$.description" in undecodable.output
    assert "Traceback" not in undecodable.output
    assert undecodable.exception is None or isinstance(undecodable.exception, SystemExit)


def test_the_record_of_a_subscription_keeps_no_query_string(registry: Registry) -> None:
    """A receiver's URL often carries a token in its query: its audit record shows "?…"."""
    seen: list[Any] = []

    class Recorder:
        __name__ = "recorder"

        @hookimpl
        def userplane_record_change(self, change: Any) -> None:
            seen.append(change)

    registry.pm.register(Recorder())
    sub = subscribe(registry, "http://127.0.0.1:9/hook?token=s3cr3t&x=1", "user.created")
    assert sub.url == "http://127.0.0.1:9/hook?token=s3cr3t&x=1"  # kept for sending
    (created,) = [c for c in seen if c.action == "webhook.created"]
    assert created.fields["url"].after == "http://127.0.0.1:9/hook?…"
    assert "s3cr3t" not in json.dumps([f.as_json() for f in created.fields.values()])


# -- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"POLL_SECONDS": "0"}, "USERPLANE_WEBHOOKS_POLL_SECONDS"),
        ({"POLL_SECONDS": "often"}, "USERPLANE_WEBHOOKS_POLL_SECONDS"),
        ({"MAX_ATTEMPTS": "0"}, "USERPLANE_WEBHOOKS_MAX_ATTEMPTS"),
        ({"BACKOFF_BASE_SECONDS": "-1"}, "USERPLANE_WEBHOOKS_BACKOFF_BASE_SECONDS"),
        ({"BACKOFF_CAP_SECONDS": "0"}, "USERPLANE_WEBHOOKS_BACKOFF_CAP_SECONDS"),
        ({"TIMEOUT_SECONDS": "0"}, "USERPLANE_WEBHOOKS_TIMEOUT_SECONDS"),
        ({"TIMEOUT_SECONDS": "90"}, "USERPLANE_WEBHOOKS_LEASE_SECONDS"),  # over the 60 s lease
        ({"LEASE_SECONDS": "10"}, "USERPLANE_WEBHOOKS_LEASE_SECONDS"),
        ({"MAX_RESPONSE_BYTES": "-5"}, "USERPLANE_WEBHOOKS_MAX_RESPONSE_BYTES"),
        ({"ALLOW_PRIVATE": "perhaps"}, "USERPLANE_WEBHOOKS_ALLOW_PRIVATE"),
    ],
)
def test_a_bad_setting_fails_at_start_up_naming_the_variable(
    tmp_path: Any, variables: dict[str, str], named: str
) -> None:
    mapping = {f"USERPLANE_WEBHOOKS_{k}": v for k, v in variables.items()}
    settings = Settings.from_mapping(
        {"USERPLANE_DATABASE_URL": f"sqlite:///{tmp_path}/s.db", **mapping}
    )
    with pytest.raises(ConfigurationError, match=named):
        Registry(settings, plugins=[webhooks])


def test_the_settings_have_their_documented_defaults(registry: Registry) -> None:
    own = webhooks.settings_of(Settings.from_mapping({}))
    assert (own.poll_seconds, own.max_attempts) == (1.0, 8)
    assert (own.backoff_base_seconds, own.backoff_cap_seconds) == (5.0, 3600.0)
    assert (own.timeout_seconds, own.lease_seconds) == (10.0, 60.0)
    assert (own.max_response_bytes, own.allow_private) == (65536, False)


# -- the dispatcher thread, metrics ----------------------------------------------------------------


def dispatcher_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("userplane-webhooks")]


def test_a_serving_process_sends_a_change_as_soon_as_it_commits(
    make_registry: MakeRegistry, receiver: Receiver
) -> None:
    registry = make_registry(poll_seconds=60)  # only the commit can wake it this soon
    sub = subscribe(registry, receiver.url(), "user.created", "user.updated")
    before = set(dispatcher_threads())
    registry.hooks.serving(registry)
    try:
        assert len(set(dispatcher_threads()) - before) == 5  # the claimer and 4 senders
        time.sleep(0.2)  # its first look found nothing: it waits now
        started = time.time()
        user = registry.users.create(NewUser(unique_email()))
        registry.users.update(user.id, UserChanges(full_name="Next"))
        first, second = receiver.wait_for(2, timeout=5)
        assert first.at - started < 2
        assert [first.verify(sub.secret)["type"], second.verify(sub.secret)["type"]] == [
            "user.created",
            "user.updated",
        ]
    finally:
        registry.close()
    assert not set(dispatcher_threads()) - before


def test_a_serving_process_finds_other_processes_changes_by_polling(
    make_registry: MakeRegistry, receiver: Receiver
) -> None:
    serving, writer = make_registry(poll_seconds=0.2), make_registry()
    subscribe(writer, receiver.url(), "user.created")
    serving.hooks.serving(serving)
    writer.users.create(NewUser(unique_email()))  # commits in the other registry: no wake here
    [seen] = receiver.wait_for(1, timeout=5)
    assert json.loads(seen.body)["type"] == "user.created"
    serving.close()
    [delivery] = outbox(writer)
    assert delivery.status == "delivered"


def test_shutting_down_is_bounded_by_the_send_timeout(
    make_registry: MakeRegistry, receiver: Receiver
) -> None:
    release = threading.Event()

    def stall(handler: http.server.BaseHTTPRequestHandler, _: Received) -> None:
        release.wait(20)
        answer(handler, 200)

    receiver.respond = stall
    registry = make_registry(timeout_seconds=1, lease_seconds=5)
    subscribe(registry, receiver.url(), "user.created")
    registry.hooks.serving(registry)
    registry.users.create(NewUser(unique_email()))
    receiver.wait_for(1)  # the send is in flight, and the receiver stalls
    started = time.monotonic()
    registry.close()
    release.set()
    assert time.monotonic() - started < 4


def test_metrics_count_outcomes_and_show_the_queue(database_url: str, receiver: Receiver) -> None:
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from userplane.plugins import telemetry

    reader = InMemoryMetricReader()
    settings = Settings.from_mapping(
        {
            "USERPLANE_DATABASE_URL": database_url,
            "USERPLANE_OTEL_ENABLED": "true",
            "USERPLANE_OTEL_EXPORTER": "none",
            "USERPLANE_WEBHOOKS_ALLOW_PRIVATE": "true",
            "USERPLANE_WEBHOOKS_MAX_ATTEMPTS": "2",
        }
    )
    exporters = telemetry.Exporters(metrics=reader)
    with Registry(settings, plugins=[webhooks, exporters]) as registry:
        registry.migrate()
        receiver.respond = lambda handler, _: answer(handler, 500)
        subscribe(registry, receiver.url(), "user.created")
        registry.users.create(NewUser(unique_email()))
        registry.users.create(NewUser(unique_email()))
        dispatcher = webhooks.state_of(registry).dispatcher
        assert dispatcher.run_once() == ["failed", "failed"]
        make_due(registry)
        time.sleep(0.05)

        def points(name: str) -> dict[Any, float]:
            data = reader.get_metrics_data()
            assert data is not None
            out: dict[Any, float] = {}
            for resource in data.resource_metrics:
                for scope in resource.scope_metrics:
                    for metric in scope.metrics:
                        if metric.name == name:
                            for point in metric.data.data_points:
                                out[point.attributes.get("outcome")] = point.value  # type: ignore[union-attr]
            return out

        assert points("userplane.webhooks.deliveries") == {"failed": 2}
        assert points("userplane.webhooks.queue.depth") == {None: 2}
        assert points("userplane.webhooks.queue.age")[None] > 0.5  # due a second ago
        assert dispatcher.run_once() == ["dead", "dead"]
        assert points("userplane.webhooks.deliveries") == {"failed": 4, "dead": 2}
        assert points("userplane.webhooks.queue.depth") == {None: 0}
        assert points("userplane.webhooks.queue.age") == {None: 0}


def test_only_a_commit_that_wrote_deliveries_wakes_the_dispatcher(
    make_registry: MakeRegistry, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = make_registry(poll_seconds=60)
    subscribe(registry, receiver.url(), "user.deleted")
    state = webhooks.state_of(registry)
    woken: list[bool] = []
    monkeypatch.setattr(state.dispatcher, "wake", lambda: woken.append(True))
    state.serving = True  # as if serving, without the threads
    user = registry.users.create(NewUser(unique_email()))  # nobody subscribed to this
    assert woken == []
    registry.users.delete(user.id)
    assert woken == [True]
    state.serving = False


def test_a_redelivery_is_recorded_as_a_change(registry: Registry, receiver: Receiver) -> None:
    sub = subscribe(registry, receiver.url(), "user.created")
    watcher = subscribe(registry, receiver.url("/audit"), "webhook_delivery.redelivered")
    registry.users.create(NewUser(unique_email()))
    assert webhooks.state_of(registry).dispatcher.run_once() == ["delivered"]
    [delivery] = outbox(registry, sub)
    webhooks.service(registry).redeliver(delivery.id)
    [record] = outbox(registry, watcher)
    body = json.loads(record.payload)
    assert body["type"] == "webhook_delivery.redelivered"
    assert body["data"]["id"] == str(delivery.id)
    assert body["data"]["changed"] == ["status", "attempts"]


def test_a_delivery_queued_for_a_subscription_deleted_meanwhile_is_buried(
    registry: Registry, receiver: Receiver
) -> None:
    """A write and a deletion that commit in either order leave nothing pending for ever."""
    sub = subscribe(registry, receiver.url(), "user.created")
    state = webhooks.state_of(registry)
    webhooks.service(registry).delete(sub.id)
    # As a write that read the subscription live, and committed after the deletion, leaves it:
    ann = registry.users.create(NewUser("ann@example.org"))
    storage = registry.storage  # the row such a write inserts
    storage.execute(
        storage.dialect.compile(
            "INSERT INTO webhook_deliveries (id, subscription_id, event_type, ordering_key, "
            "payload, status, attempts, next_attempt_at, created_at) VALUES (:id, :sub, "
            "'user.created', :key, '{}', 'pending', 0, :now, :now)"
        ),
        storage.params(
            {"id": uuid.uuid4(), "sub": sub.id, "key": str(ann.id), "now": datetime.now(UTC)}
        ),
    )
    assert [d.status for d in outbox(registry, sub)] == ["pending"]
    assert state.dispatcher.queue_state()[0] == 0  # not counted: it can never be sent
    state.dispatcher._sweep()
    (buried,) = outbox(registry, sub)
    assert (buried.status, buried.last_error) == ("dead", "the subscription was deleted")
    assert receiver.requests == []
