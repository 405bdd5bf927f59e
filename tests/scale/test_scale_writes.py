"""Concurrent writes over three instances on one database: the database decides, once.

- many creates of one email at once, through the balancer and directly on
  every instance: one 201, every other a 409 problem, one row;
- many PATCHes with one ``If-Match`` at once: one 200, every other a 412
  problem, the winner's state everywhere and in the database;
- each of those through PgBouncer in transaction mode as well;
- one ``Idempotency-Key`` create retried on every instance, in turn and all
  at once: one user, the same answer (status, body, ``Location``, ``ETag``)
  everywhere, every answer but the first marked ``Idempotent-Replayed``; the
  key with another body is the documented 422 on every instance.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from serving import Response, Server, assert_problem, unique_email

from scale.cluster import Cluster, StartCluster, race, served_by, targets

pytestmark = pytest.mark.scale

USERS = "/api/v1/users/"
MERGE_PATCH = "application/merge-patch+json"
#: Requests sent at once in a race: more than the 12 worker threads of the cluster.
RACERS = 24


@pytest.fixture(scope="module", params=["direct", "pgbouncer"])
def cluster(start_cluster: StartCluster, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """The cluster on PostgreSQL directly, then through PgBouncer in transaction mode."""
    port = request.getfixturevalue("pgbouncer") if request.param == "pgbouncer" else None
    with start_cluster("writes", {"USERPLANE_RATE_LIMITS": "off"}, port) as running:
        yield running


@pytest.fixture
def live(cluster: Cluster) -> Cluster:
    cluster.check_alive()
    return cluster


def rows_with_email(cluster: Cluster, email: str) -> list[tuple[Any, ...]]:
    return cluster.query(
        "SELECT id::text, full_name, version FROM users WHERE email_normalized = %s",
        email.casefold(),
    )


@pytest.mark.parametrize("via", ["balancer", "instances"])
def test_one_email_raced_everywhere_makes_exactly_one_user(live: Cluster, via: str) -> None:
    email = unique_email("race")
    servers = targets(live, via, RACERS)
    # The same address, in two letter cases: one normalised key.
    bodies = [
        {"email": email if i % 2 else email.upper(), "full_name": f"racer {i}"}
        for i in range(RACERS)
    ]
    responses = race(
        [
            functools.partial(server.request, "POST", USERS, body)
            for server, body in zip(servers, bodies, strict=True)
        ]
    )

    statuses = Counter(r.status for r in responses)
    assert statuses == {201: 1, 409: RACERS - 1}, [(r.status, r.body) for r in responses]
    for resp in responses:
        if resp.status == 409:
            assert_problem(resp, 409, "conflict")
    if via == "balancer":
        assert served_by(responses) == set(live.names)
    [winner] = [r.json() for r in responses if r.status == 201]

    assert rows_with_email(live, email) == [(winner["id"], winner["full_name"], 1)]
    for server in live.everyone():
        listed = server.request("GET", f"{USERS}?email={email}")
        assert listed.status == 200
        assert listed.json() == {"items": [winner], "next": None}


def test_one_if_match_raced_over_the_instances_lets_exactly_one_patch_win(live: Cluster) -> None:
    created = live.balancer.request("POST", USERS, {"email": unique_email("if-match")})
    assert created.status == 201, created.body
    path = created.headers["Location"]
    etag = created.headers["ETag"]
    assert etag == '"1"'

    servers = targets(live, "everyone", RACERS)
    responses = race(
        [
            functools.partial(
                server.request,
                "PATCH",
                path,
                {"full_name": f"writer {i}"},
                {"If-Match": etag},
                MERGE_PATCH,
            )
            for i, server in enumerate(servers)
        ]
    )

    winners = [r for r in responses if r.status == 200]
    assert len(winners) == 1, [(r.status, r.body) for r in responses]
    for resp in responses:
        if resp.status != 200:
            assert_problem(resp, 412, "precondition-failed")
    [winner] = winners
    won = winner.json()
    assert winner.headers["ETag"] == '"2"'
    assert won["version"] == 2
    assert won["full_name"].startswith("writer ")

    for server in live.everyone():
        now = server.request("GET", path)
        assert now.status == 200
        assert now.headers["ETag"] == '"2"'
        assert now.json() == won
    assert live.query(
        "SELECT full_name, version FROM users WHERE id = %s", uuid.UUID(won["id"])
    ) == [(won["full_name"], 2)]


def _post_once(server: Server, key: str, body: dict[str, Any]) -> Response:
    return server.request("POST", USERS, body, {"Idempotency-Key": key})


def _same_answer(replies: list[Response]) -> dict[str, Any]:
    """Every reply is the one 201, byte for byte; exactly one is not a replay."""
    first = replies[0]
    for reply in replies:
        assert reply.status == 201, reply.body
        assert reply.body == first.body
        assert reply.headers["Location"] == first.headers["Location"]
        assert reply.headers["ETag"] == first.headers["ETag"]
        assert reply.content_type == "application/json"
    originals = [r for r in replies if r.headers.get("Idempotent-Replayed") is None]
    assert len(originals) == 1, [r.headers.get("Idempotent-Replayed") for r in replies]
    for reply in replies:
        if reply is not originals[0]:
            assert reply.headers["Idempotent-Replayed"] == "true"
    user: dict[str, Any] = first.json()
    assert first.headers["Location"] == f"/api/v1/users/{user['id']}"
    return user


def _one_user_for(cluster: Cluster, email: str, user: dict[str, Any]) -> None:
    assert rows_with_email(cluster, email) == [(user["id"], user["full_name"], 1)]
    stored = cluster.query(
        "SELECT status FROM idempotency_keys WHERE user_id = %s", uuid.UUID(user["id"])
    )
    assert stored == [(201,)]


def test_an_idempotent_create_retried_on_every_instance_in_turn_is_made_once(
    live: Cluster,
) -> None:
    key = f"scale-seq-{uuid.uuid4().hex}"
    email = unique_email("idem-seq")
    body = {"email": email, "full_name": "Made once"}
    # Through the balancer (round robin: every instance in turn), then each instance directly.
    servers = [live.balancer] * 4 + live.instances
    replies = [_post_once(server, key, body) for server in servers]

    assert replies[0].headers.get("Idempotent-Replayed") is None
    user = _same_answer(replies)
    assert served_by(replies[:4]) == set(live.names)
    _one_user_for(live, email, user)


def test_an_idempotent_create_sent_everywhere_at_once_is_made_once(live: Cluster) -> None:
    key = f"scale-race-{uuid.uuid4().hex}"
    email = unique_email("idem-race")
    body = {"email": email, "full_name": "Made once, at once"}
    servers = targets(live, "everyone", RACERS)
    first = race([functools.partial(_post_once, server, key, body) for server in servers])

    # While the first request runs, the others are told so (409, "retry shortly"):
    # a client retries them, and then gets the first answer.
    in_progress = 0
    replies: list[Response] = []
    for server, reply in zip(servers, first, strict=True):
        deadline = time.monotonic() + 10
        while reply.status == 409:
            problem = assert_problem(reply, 409, "conflict")
            assert "in progress" in problem["detail"], problem
            in_progress += 1
            assert time.monotonic() < deadline, "the first request never finished"
            time.sleep(0.05)
            reply = _post_once(server, key, body)
        replies.append(reply)
    print(f"\nidempotent race: {RACERS} at once, {in_progress} answers 'still in progress'")

    user = _same_answer(replies)
    _one_user_for(live, email, user)


def test_an_idempotency_key_with_another_body_is_refused_on_every_instance(
    live: Cluster,
) -> None:
    key = f"scale-other-{uuid.uuid4().hex}"
    email = unique_email("idem-first")
    body = {"email": email}
    made = _post_once(live.balancer, key, body)
    assert made.status == 201, made.body
    user = made.json()

    other_email = unique_email("idem-other")
    for server in [*live.everyone(), live.balancer, live.balancer]:
        refused = _post_once(server, key, {"email": other_email})
        problem = assert_problem(refused, 422, "invalid-input")
        assert [e["field"] for e in problem["errors"]] == ["Idempotency-Key"], problem
        # ... and the key still replays its own request there.
        again = _post_once(server, key, body)
        assert again.status == 201
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.body == made.body
    assert rows_with_email(live, other_email) == []
    _one_user_for(live, email, user)
