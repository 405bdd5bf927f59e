"""The rate-limits plugin: the setting, GCRA in the database, the fast path, and the HTTP edge.

Every limiter test runs against a real, migrated database (SQLite and
PostgreSQL): the state is a table, decided by one statement per check. The
two-instance test on real processes is in ``tests/test_rate_limits_e2e.py``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from clients import new_key
from falcon import testing
from hypothesis import given
from hypothesis import strategies as st

from userplane import Registry, Settings
from userplane.errors import ConfigurationError
from userplane.frontends.http import create_app
from userplane.limits import AUTH_FAILURE, READ, WRITE, RateLimit, RateLimitCounters
from userplane.plugins.rate_limits import policy
from userplane.plugins.rate_limits.limiter import Limiter
from userplane.plugins.rate_limits.store import RateStore, state_key
from userplane.testing import StatementCounter

USERS = "/api/v1/users"
PROBLEM_JSON = "application/problem+json"

MakeRegistry = Callable[..., Registry]


@pytest.fixture
def make_registry(database_url: str) -> Iterator[MakeRegistry]:
    """Registries over this test's database, with extra settings; all closed afterwards."""
    opened: list[Registry] = []

    def make(plugins: tuple[object, ...] = (), **env: str) -> Registry:
        settings = Settings.from_mapping({"USERPLANE_DATABASE_URL": database_url, **env})
        registry = Registry(settings, plugins=plugins)
        opened.append(registry)
        registry.migrate()
        return registry

    yield make
    for registry in opened:
        registry.close()


def limiter_of(registry: Registry) -> Limiter:
    return registry.services.get(Limiter)


def admitted_by_threads(limiter: Limiter, kind: str, threads: int, each: int) -> int:
    """How many of ``threads`` x ``each`` requests by one subject, made at once, were admitted."""
    admitted: list[bool] = []
    lock = threading.Lock()

    def hammer() -> None:
        for _ in range(each):
            quota = limiter.check(kind, "principal:threads", True)
            with lock:
                admitted.append(quota is not None and quota.allowed)

    running = [threading.Thread(target=hammer) for _ in range(threads)]
    for thread in running:
        thread.start()
    for thread in running:
        thread.join()
    return sum(admitted)


# --------------------------------------------------------------------------------- the setting


def test_the_setting_names_each_class_with_requests_per_window() -> None:
    parsed = policy.parse("read=600/60s, write=120/1m,auth-failure=20/300")
    assert parsed == {
        READ: RateLimit(READ, 600, 60.0),
        WRITE: RateLimit(WRITE, 120, 60.0),
        AUTH_FAILURE: RateLimit(AUTH_FAILURE, 20, 300.0),
    }
    assert policy.parse("write=5/2h") == {WRITE: RateLimit(WRITE, 5, 7200.0)}
    assert policy.parse("off") == {} == policy.parse(" OFF ")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("read=600", "class=N/window"),
        ("read=0/60s", "at least 1 request"),
        ("read=10/0s", "more than 0 s"),
        ("read=10/2d", "class=N/window"),
        ("reads=10/60s", "unknown class 'reads'"),
        ("read=1/1s,read=2/1s", "given twice"),
        ("read=10/100000s", "at most 86400 s"),
    ],
)
def test_a_malformed_setting_is_refused_naming_the_variable(text: str, says: str) -> None:
    with pytest.raises(ValueError, match="USERPLANE_RATE_LIMITS") as caught:
        policy.parse(text)
    assert says in str(caught.value)


@given(
    st.dictionaries(
        st.sampled_from(sorted(policy.KNOWN)),
        st.tuples(st.integers(1, 10**6), st.integers(1, 86400)),
        min_size=1,
    )
)
def test_the_setting_reads_back_what_describe_writes(limits: dict[str, tuple[int, int]]) -> None:
    parsed = policy.parse(",".join(f"{k}={n}/{w}s" for k, (n, w) in limits.items()))
    assert policy.parse(policy.describe(parsed)) == parsed
    assert {k: (p.limit, p.window_s) for k, p in parsed.items()} == limits


def test_limits_are_on_by_default_in_prod_and_off_in_dev(make_registry: MakeRegistry) -> None:
    prod = make_registry(USERPLANE_ENV="prod")
    assert limiter_of(prod).policies == policy.parse(policy.DEFAULT)
    dev = make_registry()
    assert Limiter not in dev.services
    assert dev.hooks.describe(dev.settings, dev)["rate limits"] == "off"
    dev_on = make_registry(USERPLANE_RATE_LIMITS="write=3/60s")
    assert limiter_of(dev_on).policies == {WRITE: RateLimit(WRITE, 3, 60.0)}
    off = make_registry(USERPLANE_ENV="prod", USERPLANE_RATE_LIMITS="off")
    assert Limiter not in off.services
    assert "rate_limits" not in [check.name for check in off.check()]
    assert "rate_limits" in [check.name for check in prod.check()]


def test_a_bad_setting_stops_start_up(database_url: str) -> None:
    for name, value in [
        ("USERPLANE_RATE_LIMITS", "read=lots"),
        ("USERPLANE_RATE_LIMIT_SLACK", "0.9"),
        ("USERPLANE_RATE_LIMIT_SYNC_MS", "-1"),
    ]:
        settings = Settings.from_mapping({"USERPLANE_DATABASE_URL": database_url, name: value})
        with pytest.raises(ConfigurationError, match=name):
            Registry(settings)


# ------------------------------------------------------------------------- GCRA in the database


def exact(make_registry: MakeRegistry, limits: str) -> Limiter:
    """A limiter that asks the database about every request (no fast path)."""
    registry = make_registry(USERPLANE_RATE_LIMITS=limits, USERPLANE_RATE_LIMIT_SLACK="0")
    return limiter_of(registry)


def test_a_burst_of_the_limit_passes_and_the_next_is_refused(make_registry: MakeRegistry) -> None:
    limiter = exact(make_registry, "write=5/60s")
    quotas = [limiter.check(WRITE, "principal:a", True) for _ in range(5)]
    assert all(q is not None and q.allowed for q in quotas)
    assert [q.remaining for q in quotas if q is not None] == [4, 3, 2, 1, 0]
    refused = limiter.check(WRITE, "principal:a", True)
    assert refused is not None
    assert not refused.allowed
    # One request's share comes back after window / limit = 12 s.
    assert 10 < refused.retry_after_s <= 12.5
    assert refused.retry_after == math.ceil(refused.retry_after_s)
    assert 55 < refused.reset_s <= 60.5
    # Another subject, and another class of the same subject, have quotas of their own.
    other = limiter.check(WRITE, "principal:b", True)
    assert other is not None
    assert other.allowed
    assert limiter.check(READ, "principal:a", True) is None  # no read limit set
    assert limiter.counters.refused >= 1


def test_the_quota_comes_back_with_time(make_registry: MakeRegistry) -> None:
    limiter = exact(make_registry, "write=4/1s")
    for _ in range(4):
        assert limiter.check(WRITE, "principal:a", True).allowed  # type: ignore[union-attr]
    refused = limiter.check(WRITE, "principal:a", True)
    assert refused is not None
    assert not refused.allowed
    time.sleep(refused.retry_after_s + 0.05)
    again = limiter.check(WRITE, "principal:a", True)
    assert again is not None
    assert again.allowed


def test_a_refusal_is_held_locally_without_a_statement(make_registry: MakeRegistry) -> None:
    limiter = exact(make_registry, "write=2/60s")
    for _ in range(3):
        limiter.check(WRITE, "principal:a", True)
    sent = limiter.counters.store_checks
    for _ in range(50):
        quota = limiter.check(WRITE, "principal:a", True)
        assert quota is not None
        assert not quota.allowed
        assert quota.retry_after >= 1
    assert limiter.counters.store_checks == sent


def test_a_peek_counts_nothing(make_registry: MakeRegistry) -> None:
    limiter = exact(make_registry, "auth-failure=3/60s")
    for _ in range(10):
        quota = limiter.check(AUTH_FAILURE, "address:192.0.2.1", False)
        assert quota is not None
        assert quota.allowed
    for _ in range(3):
        limiter.check(AUTH_FAILURE, "address:192.0.2.1", True)
    peek = limiter.check(AUTH_FAILURE, "address:192.0.2.1", False)
    assert peek is not None
    assert not peek.allowed


def test_two_limiters_on_one_database_enforce_one_limit(make_registry: MakeRegistry) -> None:
    """Two registries stand for two instances: the state is the database's, not theirs."""
    first = exact(make_registry, "write=10/60s")
    second = exact(make_registry, "write=10/60s")
    admitted = 0
    for i in range(30):
        quota = (first if i % 2 else second).check(WRITE, "principal:shared", True)
        admitted += quota is not None and quota.allowed
    assert admitted == 10


def test_concurrent_checks_admit_exactly_the_limit(make_registry: MakeRegistry) -> None:
    limiter = exact(make_registry, "write=20/60s")
    assert admitted_by_threads(limiter, WRITE, threads=6, each=10) == 20


def test_the_fast_path_stays_within_the_stated_accuracy(make_registry: MakeRegistry) -> None:
    """Slack 0.1 of 100 is a batch of 10: each of P processes over-admits at most that."""
    registry = make_registry(
        USERPLANE_RATE_LIMITS="read=100/60s",
        USERPLANE_RATE_LIMIT_SLACK="0.1",
        USERPLANE_RATE_LIMIT_SYNC_MS="60000",
    )
    limiters = [limiter_of(registry)] + [
        limiter_of(
            make_registry(
                USERPLANE_RATE_LIMITS="read=100/60s",
                USERPLANE_RATE_LIMIT_SLACK="0.1",
                USERPLANE_RATE_LIMIT_SYNC_MS="60000",
            )
        )
        for _ in range(2)
    ]
    admitted = 0
    for i in range(400):
        quota = limiters[i % 3].check(READ, "principal:shared", True)
        admitted += quota is not None and quota.allowed
    assert 100 <= admitted <= 100 * (1 + 3 * 0.1)
    # Far under the limit, most checks needed no statement.
    assert sum(limiter.counters.store_checks for limiter in limiters) < 400


def test_state_keys_are_bounded_hashes_never_the_subject() -> None:
    subject = "principal:jwt:" + "x" * 10_000
    key = state_key(READ, subject)
    assert len(key) == 64
    assert "x" not in key
    assert state_key(READ, subject) != state_key(WRITE, subject)


# --------------------------------------------------------------------------------- the HTTP edge


def test_responses_carry_the_ratelimit_headers(make_registry: MakeRegistry) -> None:
    registry = make_registry(USERPLANE_RATE_LIMITS="read=3/60s,write=2/60s")
    client = testing.TestClient(
        create_app(registry), headers={"Authorization": f"Bearer {new_key(registry)}"}
    )
    first = client.simulate_get(USERS)
    assert first.status_code == 200
    assert first.headers["RateLimit-Policy"] == '"read";q=3;w=60'
    assert first.headers["RateLimit"].startswith('"read";r=2;t=')
    client.simulate_get(USERS)
    client.simulate_get(USERS)
    refused = client.simulate_get(USERS)
    assert refused.status_code == 429
    assert refused.headers["Content-Type"] == PROBLEM_JSON
    assert refused.json["type"] == "urn:userplane:problem:rate-limited"
    assert refused.json["status"] == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 20
    assert refused.headers["RateLimit"].startswith('"read";r=0;t=')
    assert refused.headers["RateLimit-Policy"] == '"read";q=3;w=60'
    # Writes have a quota of their own.
    created = client.simulate_post(USERS, json={"email": "ann@example.org"})
    assert created.status_code == 201
    assert created.headers["RateLimit-Policy"] == '"write";q=2;w=60'
    # Health checks and docs are not limited.
    for _ in range(5):
        assert client.simulate_get("/health/live").status_code == 200
        assert "RateLimit" not in client.simulate_get("/health/live").headers


def test_each_principal_has_a_quota_of_its_own(make_registry: MakeRegistry) -> None:
    registry = make_registry(USERPLANE_RATE_LIMITS="read=1/60s")
    app = create_app(registry)
    for _ in range(2):
        client = testing.TestClient(app, headers={"Authorization": f"Bearer {new_key(registry)}"})
        assert client.simulate_get(USERS).status_code == 200
        assert client.simulate_get(USERS).status_code == 429


def wrong_key() -> str:
    import secrets
    import string

    alphabet = string.ascii_letters + string.digits
    return "up_" + "".join(secrets.choice(alphabet) for _ in range(44))


def test_guessing_keys_is_refused_before_any_lookup_past_the_threshold(tmp_path: Any) -> None:
    """Counted on SQLite, whose connections the statement counter can trace."""
    counter = StatementCounter()
    settings = Settings.from_mapping(
        {
            "USERPLANE_DATABASE_URL": f"sqlite:///{tmp_path / 'guess.db'}",
            "USERPLANE_RATE_LIMITS": "auth-failure=5/300s",
        }
    )
    registry = Registry(settings, plugins=(counter,))
    registry.migrate()
    client = testing.TestClient(create_app(registry))
    for _ in range(5):
        answer = client.simulate_get(USERS, headers={"Authorization": f"Bearer {wrong_key()}"})
        assert answer.status_code == 401
    before = counter.count
    for _ in range(100):
        answer = client.simulate_get(USERS, headers={"Authorization": f"Bearer {wrong_key()}"})
        assert answer.status_code == 429
        assert answer.headers["Content-Type"] == PROBLEM_JSON
        assert int(answer.headers["Retry-After"]) >= 1
    assert counter.traced
    assert counter.count == before, "a refused guess must cost no statement"
    registry.close()


def test_guessing_keys_is_throttled_per_address(make_registry: MakeRegistry) -> None:
    registry = make_registry(
        USERPLANE_RATE_LIMITS="auth-failure=3/300s", USERPLANE_TRUSTED_PROXIES="127.0.0.1"
    )
    client = testing.TestClient(create_app(registry))
    key = new_key(registry)

    def get(address: str, token: str) -> int:
        headers = {"Authorization": f"Bearer {token}", "X-Forwarded-For": address}
        return client.simulate_get(USERS, headers=headers, remote_addr="127.0.0.1").status_code

    assert [get("198.51.100.7", wrong_key()) for _ in range(4)] == [401, 401, 401, 429]
    # Even the right key waits, from that address: the address is what is throttled...
    assert get("198.51.100.7", key) == 429
    # ...and another address is not.
    assert get("198.51.100.8", key) == 200
    assert get("198.51.100.8", wrong_key()) == 401


def test_a_failing_store_serves_the_request_and_says_so(
    make_registry: MakeRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    registry = make_registry(USERPLANE_RATE_LIMITS="read=100/60s", USERPLANE_RATE_LIMIT_SLACK="0")
    client = testing.TestClient(
        create_app(registry), headers={"Authorization": f"Bearer {new_key(registry)}"}
    )
    assert client.simulate_get(USERS).status_code == 200
    # A real failure: the table is gone (a bad migration, a restored backup...). Renamed,
    # not dropped: the PostgreSQL database is shared by the run's tests.
    store: Any = registry.storage
    store.execute("ALTER TABLE rate_limits RENAME TO rate_limits_away", {})
    try:
        with caplog.at_level("WARNING", logger="userplane.rate_limits"):
            for _ in range(3):
                answer = client.simulate_get(USERS)
                assert answer.status_code == 200
                assert "RateLimit" not in answer.headers
        # Readiness says so too: the limiter's state does not answer.
        assert [c.ok for c in registry.check() if c.name == "rate_limits"] == [False]
    finally:
        store.execute("ALTER TABLE rate_limits_away RENAME TO rate_limits", {})
    counters = registry.services.get(RateLimitCounters)
    assert counters.store_failures == 3
    warnings = [r for r in caplog.records if r.name == "userplane.rate_limits"]
    assert len(warnings) == 1, "one warning per interval, not one per request"
    assert "rate limits not enforced" in warnings[0].getMessage()


def test_the_store_refuses_a_dialect_it_has_no_statements_for(
    make_registry: MakeRegistry,
) -> None:
    registry = make_registry()
    storage: Any = registry.storage

    class Other:
        dialect = type("D", (), {"name": "mysql"})()

    with pytest.raises(ConfigurationError, match="USERPLANE_RATE_LIMITS=off"):
        RateStore(Other())  # type: ignore[arg-type]
    assert RateStore(storage) is not None


def test_guesses_at_one_key_count_against_its_id_from_any_address(
    make_registry: MakeRegistry,
) -> None:
    registry = make_registry(
        USERPLANE_RATE_LIMITS="auth-failure=4/300s", USERPLANE_TRUSTED_PROXIES="127.0.0.1"
    )
    client = testing.TestClient(create_app(registry))
    key = new_key(registry)
    # The same key id (the first 15 characters), a wrong secret, a new address each time.
    guesses = [key[:15] + wrong_key()[15:] for _ in range(6)]

    def get(address: str, token: str) -> int:
        headers = {"Authorization": f"Bearer {token}", "X-Forwarded-For": address}
        return client.simulate_get(USERS, headers=headers, remote_addr="127.0.0.1").status_code

    statuses = [get(f"203.0.113.{i}", guess) for i, guess in enumerate(guesses)]
    assert statuses[:3] == [401, 401, 401]
    assert statuses[-1] == 429
    # The holder of the right secret is verified in memory and still served.
    assert get("203.0.113.200", key) == 200


def test_guesses_never_lock_out_the_holder_even_uncached(make_registry: MakeRegistry) -> None:
    """The key id is no secret: refusals come only after the secret was checked."""
    registry = make_registry(
        USERPLANE_RATE_LIMITS="auth-failure=3/300s",
        USERPLANE_TRUSTED_PROXIES="127.0.0.1",
        USERPLANE_API_KEYS_CACHE_SECONDS="0",  # every request looks the key up
    )
    client = testing.TestClient(create_app(registry))
    key = new_key(registry)

    def get(address: str, token: str) -> int:
        headers = {"Authorization": f"Bearer {token}", "X-Forwarded-For": address}
        return client.simulate_get(USERS, headers=headers, remote_addr="127.0.0.1").status_code

    guesses = [get(f"203.0.113.{i}", key[:15] + wrong_key()[15:]) for i in range(8)]
    assert guesses[-1] == 429
    assert [get(f"198.51.100.{i}", key) for i in range(3)] == [200, 200, 200]


def test_threads_of_one_process_stay_within_the_batch(make_registry: MakeRegistry) -> None:
    """Statements in flight are counted: threads cannot spend one batch twice."""
    registry = make_registry(
        USERPLANE_RATE_LIMITS="read=100/60s",
        USERPLANE_RATE_LIMIT_SLACK="0.1",
        USERPLANE_RATE_LIMIT_SYNC_MS="60000",
    )
    admitted = admitted_by_threads(limiter_of(registry), READ, threads=8, each=40)
    assert 100 <= admitted <= 100 + 10  # one process: at most one batch over


@pytest.mark.parametrize("limits", ["write=14/60s", "write=19/300s", "write=21/1s"])
def test_a_burst_of_exactly_the_limit_is_never_cut_short_by_rounding(
    make_registry: MakeRegistry, limits: str
) -> None:
    limiter = exact(make_registry, limits)
    limit = int(limits.split("=")[1].split("/")[0])
    for round_ in range(5):
        subject = f"principal:burst-{round_}"
        admitted = [limiter.check(WRITE, subject, True) for _ in range(limit)]
        assert all(q is not None and q.allowed for q in admitted), limits


def test_failures_made_in_parallel_are_all_counted(make_registry: MakeRegistry) -> None:
    """A failure already happened: counted even past the limit, pushing the quota back."""
    limiter = exact(make_registry, "auth-failure=3/60s")
    for _ in range(9):
        limiter.check(AUTH_FAILURE, "address:192.0.2.9", True)
    refused = limiter.check(AUTH_FAILURE, "address:192.0.2.9", False)
    assert refused is not None
    assert not refused.allowed
    # Nine failures of a 20 s interval: the next fits only some 120 s from now.
    assert refused.retry_after_s > 100


def test_an_unknown_address_is_counted_not_skipped_and_ipv6_by_its_64() -> None:
    from userplane.auth import Credentials, address_subject

    assert address_subject(Credentials(client_address=None, peer_address="192.0.2.1")) == (
        "address:192.0.2.1"
    )
    assert address_subject(Credentials()) == "address:unknown"
    one = address_subject(Credentials(client_address="2001:db8:1:2::1"))
    other = address_subject(Credentials(client_address="2001:db8:1:2:ffff::9"))
    assert one == other == "address:2001:db8:1:2::/64"
    assert address_subject(Credentials(client_address="2001:db8:1:3::1")) != one


def test_forgetting_subjects_never_drops_unreported_requests(
    make_registry: MakeRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    from userplane.plugins.rate_limits import limiter as limiter_module

    monkeypatch.setattr(limiter_module, "MAX_SUBJECTS", 3)
    registry = make_registry(
        USERPLANE_RATE_LIMITS="read=100/60s",
        USERPLANE_RATE_LIMIT_SLACK="0.1",
        USERPLANE_RATE_LIMIT_SYNC_MS="60000",
    )
    limiter = limiter_of(registry)
    admitted = 0
    for i in range(330):
        quota = limiter.check(READ, "principal:kept", True)
        admitted += quota is not None and quota.allowed
        limiter.check(READ, f"principal:passer-by-{i}", True)  # pushes others out
    assert admitted <= 100 + 10


@pytest.mark.parametrize(
    ("name", "limit", "window"),
    [('re"ad', 1, 1.0), ("", 1, 1.0), ("read", 0, 1.0), ("read", 1, 0.0)],
)
def test_a_policy_a_header_could_not_carry_is_refused(name: str, limit: int, window: float) -> None:
    with pytest.raises(ValueError, match=r"name|limit|window"):
        RateLimit(name, limit, window)


def test_guessing_stays_limited_per_process_while_the_store_fails(
    make_registry: MakeRegistry,
) -> None:
    registry = make_registry(USERPLANE_RATE_LIMITS="auth-failure=3/300s")
    client = testing.TestClient(create_app(registry))
    store: Any = registry.storage
    store.execute("ALTER TABLE rate_limits RENAME TO rate_limits_away", {})
    try:
        statuses = [
            client.simulate_get(USERS, headers={"Authorization": f"Bearer {wrong_key()}"})
            for _ in range(5)
        ]
    finally:
        store.execute("ALTER TABLE rate_limits_away RENAME TO rate_limits", {})
    assert [s.status_code for s in statuses] == [401, 401, 401, 429, 429]
    assert registry.services.get(RateLimitCounters).store_failures > 0


# ------------------------------------------------------------------------------- the reporter

#: One request is a second of quota; a batch of 30 is admitted without a statement.
SECONDS = {"USERPLANE_RATE_LIMITS": "read=100/100s", "USERPLANE_RATE_LIMIT_SLACK": "0.3"}


def tat_of(limiter: Limiter, subject: str) -> float:
    """The subject's theoretical arrival time in the database (epoch seconds)."""
    tat, _ = limiter._store.peek(state_key(READ, subject))
    assert tat is not None
    return tat


def test_many_subjects_cost_one_statement_per_report_not_one_each(
    make_registry: MakeRegistry,
) -> None:
    """256 principals: each is asked about once, then one statement reports them all."""
    limiter = limiter_of(make_registry(USERPLANE_RATE_LIMIT_SYNC_MS="60000", **SECONDS))
    subjects = [f"principal:key-{i}" for i in range(256)]
    for subject in subjects:
        assert limiter.check(READ, subject, True).allowed  # type: ignore[union-attr]
    first_sight = limiter.counters.store_checks
    assert first_sight == 256  # a subject this process never heard of: asked once
    before = {subject: tat_of(limiter, subject) for subject in subjects}
    for _ in range(5):
        for subject in subjects:
            quota = limiter.check(READ, subject, True)
            assert quota is not None
            assert quota.allowed
    assert limiter.counters.store_checks == first_sight  # no statement on the request path
    assert limiter.report() == 256
    assert limiter.counters.store_checks == first_sight + 1
    # Every subject's five requests admitted here are now counted in the database.
    for subject in subjects:
        assert tat_of(limiter, subject) - before[subject] == pytest.approx(5.0, abs=1e-3)
    assert limiter.report() == 0  # nothing unreported: no statement
    assert limiter.counters.store_checks == first_sight + 1


def test_the_reporter_reports_within_the_sync_interval(make_registry: MakeRegistry) -> None:
    limiter = limiter_of(make_registry(USERPLANE_RATE_LIMIT_SYNC_MS="100", **SECONDS))
    limiter.check(READ, "principal:reported", True)
    before = tat_of(limiter, "principal:reported")
    for _ in range(10):
        limiter.check(READ, "principal:reported", True)
    deadline = time.monotonic() + 5
    while tat_of(limiter, "principal:reported") - before < 9.5:
        assert time.monotonic() < deadline, "the reporter never reported"
        time.sleep(0.05)
    assert tat_of(limiter, "principal:reported") - before == pytest.approx(10.0, abs=1e-3)


def test_a_report_refreshes_the_view_and_a_subject_spent_elsewhere_is_refused(
    make_registry: MakeRegistry,
) -> None:
    """Another instance spends the quota: this one learns it from its next report."""
    settings = {"USERPLANE_RATE_LIMITS": "write=40/60s", "USERPLANE_RATE_LIMIT_SLACK": "0.25"}
    here = limiter_of(make_registry(USERPLANE_RATE_LIMIT_SYNC_MS="60000", **settings))
    elsewhere = limiter_of(make_registry(**{**settings, "USERPLANE_RATE_LIMIT_SLACK": "0"}))
    assert here.check(WRITE, "principal:shared", True).allowed  # type: ignore[union-attr]
    assert here.check(WRITE, "principal:shared", True).allowed  # type: ignore[union-attr]
    while elsewhere.check(WRITE, "principal:shared", True).allowed:  # type: ignore[union-attr]
        pass
    assert here.report() == 1
    quota = here.check(WRITE, "principal:shared", True)
    assert quota is not None
    assert not quota.allowed
    assert quota.retry_after >= 1


def test_closing_reports_what_is_unreported(make_registry: MakeRegistry) -> None:
    registry = make_registry(USERPLANE_RATE_LIMIT_SYNC_MS="60000", **SECONDS)
    limiter = limiter_of(registry)
    limiter.check(READ, "principal:closing", True)
    before = tat_of(limiter, "principal:closing")
    for _ in range(19):
        limiter.check(READ, "principal:closing", True)
    reader = limiter_of(make_registry(**SECONDS))
    assert tat_of(reader, "principal:closing") == before
    registry.close()
    assert tat_of(reader, "principal:closing") - before == pytest.approx(19.0, abs=1e-3)


def test_a_failed_report_is_sent_again_with_the_next(
    make_registry: MakeRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    limiter = limiter_of(make_registry(USERPLANE_RATE_LIMIT_SYNC_MS="60000", **SECONDS))
    limiter.check(READ, "principal:retried", True)
    before = tat_of(limiter, "principal:retried")
    for _ in range(9):
        limiter.check(READ, "principal:retried", True)
    store = limiter._store
    real = store.report

    def unreachable(served: Any) -> Any:
        raise ConnectionError("the database went away")

    monkeypatch.setattr(store, "report", unreachable)
    assert limiter.report() == 0
    assert limiter.counters.store_failures == 1
    assert tat_of(limiter, "principal:retried") == before
    monkeypatch.setattr(store, "report", real)
    assert limiter.report() == 1
    assert tat_of(limiter, "principal:retried") - before == pytest.approx(9.0, abs=1e-3)


def test_no_sync_interval_means_every_check_is_a_statement(make_registry: MakeRegistry) -> None:
    limiter = limiter_of(make_registry(USERPLANE_RATE_LIMIT_SYNC_MS="0", **SECONDS))
    for _ in range(10):
        limiter.check(READ, "principal:exact", True)
    assert limiter.counters.store_checks == 10
