"""The SCIM server against ``scim2-tester``, the conformance checker, over a live ``/scim/v2``.

A real ``userplane serve`` (two workers) on each backend, a key of the
``provisioner`` role made through the CLI, and every check of the checker:
discovery, then create, read, list, replace, delete and PATCH add, remove and
replace of every declared attribute of Users and Groups. No check may end in
ERROR or CRITICAL. SKIPPED is allowed only for what the server declares it does
not offer (searching every resource type at once); our own tests
(tests/plugins/test_scim_*.py) cover what the checker does not: filters,
paging, sorting, ETags, concurrency, and the shapes real identity providers send.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from httpx2 import Client
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_tester import Status, check_server
from serving import Server, create_key, running_server

pytestmark = pytest.mark.e2e

BAD = (Status.ERROR, Status.CRITICAL)
#: Skips the server may answer with: the root ``/.search`` is 501 (not offered).
ALLOWED_SKIPS = ("searching several resource types at once is not supported",)


@pytest.fixture(params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Server]:
    if request.param == "sqlite":
        database_url = f"sqlite:///{tmp_path}/scim.db"
    else:
        database_url = request.getfixturevalue("create_postgresql_database")()
    with running_server(tmp_path, database_url, request.param, with_key=False) as srv:
        yield srv


def test_scim2_tester_finds_no_error(server: Server) -> None:
    key = create_key(server.env, server.directory, role="provisioner")
    base = f"http://127.0.0.1:{server.port}/scim/v2"
    with Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
        client = SyncSCIMClient(http)
        client.discover()
        results = check_server(client)

    failures = [f"{r.status.name} {r.title}: {r.reason}" for r in results if r.status in BAD]
    assert not failures, "\n".join(failures)
    skipped = [r for r in results if r.status == Status.SKIPPED]
    unexpected = [r for r in skipped if not any(a in (r.reason or "") for a in ALLOWED_SKIPS)]
    assert not unexpected, [f"{r.title}: {r.reason}" for r in unexpected]
    # Not vacuous: every family of checks ran, on both resource types.
    passed = {(r.title, r.resource_type) for r in results if r.status == Status.SUCCESS}
    for title in (
        "object_creation",
        "object_query",
        "object_query_without_id",
        "object_replacement",
        "object_deletion",
        "check_add_attribute",
        "check_remove_attribute",
        "check_replace_attribute",
    ):
        for kind in ("User", "Group"):
            assert (title, kind) in passed, (title, kind)
    assert len([r for r in results if r.status == Status.SUCCESS]) >= 55
